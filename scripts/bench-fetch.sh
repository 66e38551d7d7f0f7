#!/usr/bin/env bash
# End-to-end fetch throughput (issue 4), two modes, each compared with curl of the same blobs
# from the same local registry in the same run (page cache dropped before every measurement):
#
#   scripts/bench-fetch.sh [--image NAME] [--runs N]      (default: big, 3 runs)
#     read every file of an image through a cold `strata mount --no-prefetch` (ranged GETs,
#     inflate from checkpoints, verify, FUSE) vs `curl` of its layer blobs.
#   scripts/bench-fetch.sh --layer [--size-mb 500] [--runs N]
#     one generated gzip layer of about SIZE MB (a sorted tar of files under /usr, gzip -6,
#     cached as an OCI layout in $STRATA_IMAGE_CACHE/layerSIZE): `strata cache fetch REF`
#     (manifest, sidecar index, then every span: runs of 16 spans fetched 8 at a time and
#     inflated in parallel from their checkpoints, every 64 KiB block sha256-verified, written
#     to the disk cache) vs `curl blob > /dev/null` and `curl blob | gzip -dc > /dev/null`
#     (download + one core of decompression, no verification, nothing stored).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 name=big mode=image size_mb=500
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --image) name=$2; shift 2 ;;
    --layer) mode=layer; shift ;;
    --size-mb) size_mb=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
. scripts/lib/common.sh
. scripts/lib/images.sh
. scripts/lib/registry.sh
strata=${STRATA:-$PWD/target/release/strata}
[ -x "$strata" ] || cargo build --release --bins
work=$(mktemp -d /tmp/strata-bench-fetch.XXXXXX)
cleanup() {
  umount -l "$work/mnt" 2>/dev/null || true
  kill "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# make_layer_image SIZE_MB -> OCI layout dir (tag latest) with one gzip layer of ~SIZE_MB MB.
make_layer_image() {
  local mb=$1 dir="$STRATA_IMAGE_CACHE/layer$1"
  if [ -f "$dir/.built" ]; then echo "$dir"; return; fi
  rm -rf "$dir"; mkdir -p "$dir/blobs/sha256"
  log "generating a ~$mb MB gzip layer from /usr (once; cached in $dir)"
  # /usr compresses to ~31% with gzip -6 here: take files (sorted, < 64 MiB each) up to 3.2x SIZE.
  (cd / && find usr -xdev -type f -size -64M -readable -printf '%s %p\n' | LC_ALL=C sort -k2 \
     | awk -v max=$((mb * 32 / 10 * 1000000)) '{t += $1; if (t <= max) print $2}') > "$dir/files"
  tar -C / --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -T "$dir/files" \
    | tee >(sha256sum | cut -d' ' -f1 > "$dir/diffid") | gzip -6 -n > "$dir/layer.tar.gz"
  sleep 1  # the tee'd sha256sum finishes after the pipeline
  local lhex lsize chex csize mhex msize
  lhex=$(sha256sum "$dir/layer.tar.gz" | cut -d' ' -f1); lsize=$(stat -c %s "$dir/layer.tar.gz")
  mv "$dir/layer.tar.gz" "$dir/blobs/sha256/$lhex"
  printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(cat "$dir/diffid")" > "$dir/config.json"
  chex=$(sha256sum "$dir/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$dir/config.json")
  mv "$dir/config.json" "$dir/blobs/sha256/$chex"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$chex" "$csize" "$lhex" "$lsize" > "$dir/manifest.json"
  mhex=$(sha256sum "$dir/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$dir/manifest.json")
  mv "$dir/manifest.json" "$dir/blobs/sha256/$mhex"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
    "$mhex" "$msize" > "$dir/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
  echo "sha256:$lhex" > "$dir/layer-digest"
  touch "$dir/.built"
  echo "$dir"
}

if [ $mode = layer ]; then
  layout=$(make_layer_image "$size_mb")
  layer=$(cat "$layout/layer-digest")
  size=$(stat -c %s "$layout/blobs/sha256/${layer#sha256:}")
  start_registry "$work/registry"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:latest" "docker://$REGISTRY_HOST/bench/layer:latest"
  ref=$REGISTRY_HOST/bench/layer:latest
  STRATA_ROOT="$work/publisher" "$strata" index "$ref" --push >/dev/null
  url="http://$REGISTRY_HOST/v2/bench/layer/blobs/$layer"
  : > "$work/strata.t"; : > "$work/curl.t"; : > "$work/gunzip.t"
  for i in $(seq 1 "$runs"); do
    rm -rf "$work/root"; drop_caches
    s=$(now_s); STRATA_ROOT="$work/root" "$strata" cache fetch "$ref" > "$work/fetch.out"; e=$(now_s)
    echo "$e - $s" | bc >> "$work/strata.t"
    log "strata run $i: $(echo "$e - $s" | bc) s; $(cat "$work/fetch.out")"
    rm -rf "$work/root"; drop_caches
    s=$(now_s); curl -fs -o /dev/null "$url"; e=$(now_s)
    echo "$e - $s" | bc >> "$work/curl.t"
    drop_caches
    s=$(now_s); curl -fs "$url" | gzip -dc > /dev/null; e=$(now_s)
    echo "$e - $s" | bc >> "$work/gunzip.t"
    log "curl run $i: $(tail -1 "$work/curl.t") s, curl | gzip -dc: $(tail -1 "$work/gunzip.t") s"
  done
  ts=$(median < "$work/strata.t"); tc=$(median < "$work/curl.t"); tg=$(median < "$work/gunzip.t")
  mbps() { echo "$size / $1 / 1000000" | bc; }
  echo "layer of $((size / 1000000)) MB (gzip), $runs runs, $(nproc) CPUs, $(uname -r), $(date -u +%FT%H:%MZ)"
  echo "strata cache fetch:       median $ts s = $(mbps "$ts") MB/s ($(tr '\n' ' ' < "$work/strata.t"))"
  echo "curl > /dev/null:         median $tc s = $(mbps "$tc") MB/s ($(tr '\n' ' ' < "$work/curl.t"))"
  echo "curl | gzip -dc:          median $tg s = $(mbps "$tg") MB/s ($(tr '\n' ' ' < "$work/gunzip.t"))"
  echo "strata / (curl | gzip -dc) throughput: $(echo "scale=2; $tg / $ts" | bc)x; strata / curl: $(echo "scale=2; $tc / $ts" | bc)x"
  exit 0
fi
build_image "$name" >/dev/null
start_registry "$work/registry"
push_image "$name" "$REGISTRY_HOST" >/dev/null
ref=$(image_ref "$name" "$REGISTRY_HOST")
STRATA_ROOT="$work/publisher" "$strata" index "$ref" --push >/dev/null
layers=$(jq -r '.layers[].digest' "$(image_layout "$name")/blobs/sha256/$(jq -r '.manifests[0].digest' "$(image_layout "$name")/index.json" | cut -d: -f2)")
size=0
for d in $layers; do size=$((size + $(stat -c %s "$(image_layout "$name")/blobs/sha256/${d#sha256:}"))); done
mkdir -p "$work/mnt"
: > "$work/strata.t"; : > "$work/curl.t"
for i in $(seq 1 "$runs"); do
  rm -rf "$work/root"; drop_caches
  STRATA_ROOT="$work/root" "$strata" mount --no-prefetch "$ref" "$work/mnt" >/dev/null
  s=$(now_s); tar -C "$work/mnt" -cf - . | cat > /dev/null; e=$(now_s)
  echo "$e - $s" | bc >> "$work/strata.t"
  fetched=$(STRATA_ROOT="$work/root" "$strata" stats --json "$work/mnt" | jq .cache.bytes_fetched)
  STRATA_ROOT="$work/root" "$strata" umount "$work/mnt"
  drop_caches
  s=$(now_s)
  for d in $layers; do curl -fs -o /dev/null "http://$REGISTRY_HOST/v2/bench/$name/blobs/$d"; done
  e=$(now_s)
  echo "$e - $s" | bc >> "$work/curl.t"
done
ts=$(median < "$work/strata.t"); tc=$(median < "$work/curl.t")
echo "image $name: $((size / 1000000)) MB of layers, $runs runs, $(nproc) CPUs, $(uname -r), $(date -u +%F)"
echo "strata cold read of every file: median $ts s = $(echo "$size / $ts / 1000000" | bc) MB/s compressed (last run fetched $((fetched / 1000000)) MB)"
echo "curl of the layer blobs:        median $tc s = $(echo "$size / $tc / 1000000" | bc) MB/s"
echo "ratio strata/curl throughput: $(echo "scale=2; $tc / $ts" | bc)"
