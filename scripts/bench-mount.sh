#!/usr/bin/env bash
# Mount time and daemon memory for an image with 100k files (issue 5).
#
#   scripts/bench-mount.sh [--runs N]        (default 5)
#
# Image "smallfiles" (debian minbase + a layer with 100k small files, scripts/lib/images.sh),
# pushed to a local registry on loopback with its strata sidecar index.
#   strata-cold     `strata mount` with an empty STRATA_ROOT: manifest, config and the sidecar
#                   indexes come from the registry, then the merged tree is built
#   strata-cached   the same root mounted again (indexes on disk, the merged tree stored),
#                   page cache dropped first
#   strata-warm     mounted once more without dropping the page cache
#   strata-overlay  `strata overlay` over the layers extracted to directories (walks them)
#   fuse-overlayfs  fuse-overlayfs over the same directories
# Every system except strata-warm starts with the page cache dropped.
# mount = from exec until the mount point answers (`mountpoint -q` polled every 5 ms), ms.
# rss-mounted / rss-walked = the serving daemon's VmRSS right after the mount and after
# `find /data -printf '%s %u %m'` over the whole tree (lookup + getattr of every entry), MiB.
# Results: bench-results/mount-raw.csv, mount-summary.csv, mount.json, mount.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/images.sh"
. "$here/lib/netns.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (mounts, drop_caches)"
runs=5
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
ensure_pkgs fuse-overlayfs fuse3 umoci skopeo jq docker-registry
STRATA_BIN=$(strata_bin)
[ -n "$STRATA_BIN" ] || die "no strata binary (cargo build --release)"
WORK=${BENCH_WORK:-/var/tmp/strata-bench}
MW=$WORK/mount
RES=$(bench_results_dir)
RAW=$RES/mount-raw.csv
BENCH_REG_PIDS=()
MP=$MW/mnt
DAEMON=""

cleanup() {
  local rc=$?
  set +e
  mountpoint -q "$MP" 2>/dev/null && umount "$MP"
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  stop_bench_registry 2>/dev/null
  exit $rc
}
trap cleanup EXIT
mkdir -p "$MW" "$MP"

# layers extracted to directories (top first) for the directory-lower systems
mapfile -t hexes < <(python3 - "$(image_layout smallfiles)" <<'PY'
import json, os, sys
lay = sys.argv[1]
idx = json.load(open(os.path.join(lay, "index.json")))
m = [d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
man = json.load(open(os.path.join(lay, "blobs", *m["digest"].split(":"))))
for l in man["layers"]:
    print(l["digest"].split(":")[1])
PY
)
LOWERS=()
for h in "${hexes[@]}"; do
  d=$MW/layers/$h
  if [ ! -f "$d.done" ]; then
    rm -rf "$d"; mkdir -p "$d"
    tar -C "$d" -xzf "$(image_layout smallfiles)/blobs/sha256/$h" --numeric-owner
    # OCI whiteouts -> overlay whiteouts (as scripts/bench-fs.sh)
    python3 - "$d" <<'PY'
import os, sys
for dp, dns, fns in os.walk(sys.argv[1]):
    for f in fns:
        if f.startswith(".wh."):
            os.unlink(os.path.join(dp, f))
            if f == ".wh..wh..opq":
                os.setxattr(dp, "trusted.overlay.opaque", b"y")
            else:
                os.mknod(os.path.join(dp, f[4:]), 0o600 | 0o020000, os.makedev(0, 0))
PY
    touch "$d.done"
  fi
  LOWERS=("$d" "${LOWERS[@]+"${LOWERS[@]}"}")
done
LOWERDIR=$(IFS=:; echo "${LOWERS[*]}")

start_bench_registry "$MW/reg" "$WORK/registry-data-mount" unshaped
push_image smallfiles "$REGISTRY_HOST"
REF=$(image_ref smallfiles "$REGISTRY_HOST")
r=$(mktemp -d "$MW/sidx.XXXXXX")
STRATA_ROOT=$r "$STRATA_BIN" index "$REF" --push > "$MW/index.log" 2>&1 || { cat "$MW/index.log"; die "strata index --push failed"; }
rm -rf "$r"

echo "system,test,run,value,unit,ok" > "$RAW"
rec() { echo "$1,$2,$3,$4,$5,1" >> "$RAW"; }
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
ms_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN{printf "%.1f", (b-a)*1000}'; }
wait_mounted() {
  for _ in $(seq 1 6000); do mountpoint -q "$MP" && return 0; sleep 0.005; done
  return 1
}
daemon_pid() {  # the process serving $MP (foreground strata, or a daemonised one)
  local p
  for p in $(pgrep -f -- "$MP" || true); do
    [ "$p" = "$$" ] && continue
    grep -q "fuse" "/proc/$p/cmdline" 2>/dev/null || [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$STRATA_BIN")" ] || continue
    echo "$p"; return
  done
}
measure() {  # measure SYSTEM RUN T0
  local s=$1 run=$2 t0=$3 pid
  wait_mounted || die "$s: not mounted"
  rec "$s" mount "$run" "$(ms_since "$t0")" ms
  pid=${DAEMON:-$(daemon_pid)}
  [ -n "$pid" ] || die "$s: no daemon process found"
  rec "$s" rss-mounted "$run" "$(rss_mib "$pid")" MiB
  n=$(find "$MP/data" -printf '%s %u %m\n' | wc -l)
  [ "$n" -ge 100000 ] || die "$s: walk saw only $n entries"
  rec "$s" rss-walked "$run" "$(rss_mib "$pid")" MiB
  umount "$MP"
  if [ -n "$DAEMON" ]; then wait "$DAEMON" 2>/dev/null || true; DAEMON=""; fi
  sleep 0.2
}

ROOT=$MW/strata-root
for run in $(seq 1 "$runs"); do
  log "run $run/$runs"
  rm -rf "$ROOT" "$MW/upper" "$MW/work"; mkdir -p "$ROOT" "$MW/upper" "$MW/work"
  for s in strata-cold strata-cached strata-warm; do
    [ $s = strata-warm ] || drop_caches
    t0=$(now_s)
    STRATA_ROOT=$ROOT "$STRATA_BIN" mount --foreground --no-prefetch "$REF" "$MP" >> "$MW/strata.log" 2>&1 &
    DAEMON=$!
    measure "$s" "$run" "$t0"
  done
  drop_caches
  rm -rf "$MW/upper" "$MW/work"; mkdir -p "$MW/upper" "$MW/work"
  t0=$(now_s)
  STRATA_ROOT=$ROOT "$STRATA_BIN" overlay -o "lowerdir=$LOWERDIR,upperdir=$MW/upper,workdir=$MW/work" "$MP"
  measure strata-overlay "$run" "$t0"
  drop_caches
  rm -rf "$MW/upper" "$MW/work"; mkdir -p "$MW/upper" "$MW/work"
  t0=$(now_s)
  fuse-overlayfs -o "lowerdir=$LOWERDIR,upperdir=$MW/upper,workdir=$MW/work" "$MP"
  measure fuse-overlayfs "$run" "$t0"
done

python3 "$here/lib/summarize.py" mount "$RES" "$(machine_json)" "scripts/bench-mount.sh --runs $runs"
cat "$RES/mount.md"
