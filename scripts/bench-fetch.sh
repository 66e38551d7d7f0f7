#!/usr/bin/env bash
# End-to-end lazy fetch throughput (issue 4): read every file of an image through a cold
# `strata mount` (ranged GETs, inflate from checkpoints, sha256 per span, FUSE) and compare the
# compressed bytes per second with `curl` downloading the same layer blobs, in the same run.
#   scripts/bench-fetch.sh [--image NAME] [--runs N]      (default: big, 3 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 name=big
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --image) name=$2; shift 2 ;;
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
build_image "$name" >/dev/null
start_registry "$work/registry"
push_image "$name" "$REGISTRY_HOST" >/dev/null
ref=$(image_ref "$name" "$REGISTRY_HOST")
STRATA_ROOT="$work/publisher" "$strata" index "$ref" --push >/dev/null
layers=$(jq -r '.layers[].digest' "$(image_layout "$name")/blobs/sha256/$(jq -r '.manifests[0].digest' "$(image_layout "$name")/index.json" | cut -d: -f2)")
size=0
for d in $layers; do size=$((size + $(stat -c %s "$(image_layout "$name")/blobs/sha256/${d#sha256:}"))); done
mkdir -p "$work/mnt"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
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
