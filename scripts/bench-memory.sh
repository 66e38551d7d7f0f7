#!/usr/bin/env bash
# One daemon, many different images: the server's memory with N mounts of N distinct images.
#
#   scripts/bench-memory.sh [--n 20] [--files 4000] [--read 600]
#
# Pushes N synthetic images (scripts/lib/push-synthetic.py: one gzip layer each, FILES files
# of 1-24 KiB in 40 directories, all different) to a local registry, indexes each
# (`strata index --push`), then on ONE fresh root mounts all N through the daemon and reads
# READ files of every mount (all N mounts read at once). Measured: the server's peak RSS
# (sampled every 100 ms from /proc/PID/status, PID from ROOT/daemon.pid) and its RSS at the
# end with every mount still up. Goal (issue 15): < 200 MiB with 20 mounts of different
# images. Needs target/release/strata (or $STRATA). Results: bench-results/memory.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (FUSE mounts)"
n=20 files=4000 nread=600
while [ $# -gt 0 ]; do
  case $1 in
    --n) n=$2; shift ;;
    --files) files=$2; shift ;;
    --read) nread=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
ensure_pkgs docker-registry curl python3
STRATA_BIN=$(strata_bin)
[ -n "$STRATA_BIN" ] || die "no strata binary (build with cargo build --release or set STRATA)"
WORK=$(mktemp -d "${BENCH_WORK:-/var/tmp}/strata-mem.XXXXXX")
RES=$(bench_results_dir)
root=$WORK/root
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  cp "$root/daemon.log" "$RES/memory-daemon.log" 2>/dev/null || true
  STRATA_ROOT=$root "$STRATA_BIN" daemon --stop > /dev/null 2>&1 || true
  sleep 1
  for m in "$WORK"/mnt/*; do umount -l "$m" 2>/dev/null || true; done
  [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
start_registry "$WORK/registry"
log "pushing $n synthetic images ($files files each) to $REGISTRY_HOST"
python3 "$here/lib/push-synthetic.py" "$REGISTRY_HOST" "$n" --files "$files" > "$WORK/images.txt"
idx=$WORK/index-root
while read -r ref _; do
  STRATA_ROOT=$idx "$STRATA_BIN" index "$ref" --push > /dev/null
done < "$WORK/images.txt"
rm -rf "$idx"
mkdir -p "$WORK/mnt" "$root"
i=0
while read -r ref _; do
  mkdir -p "$WORK/mnt/$i"
  STRATA_ROOT=$root "$STRATA_BIN" mount --no-prefetch "$ref" "$WORK/mnt/$i" > /dev/null
  i=$((i + 1))
done < "$WORK/images.txt"
pid=$(cat "$root/daemon.pid")
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
after_mounts=$(rss)
peak=0
( while [ ! -e "$WORK/stop" ]; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$peak" ] && peak=$v && echo "$peak" > "$WORK/peak"
    sleep 0.1
  done ) &
sampler=$!
t0=$(now_s)
readers=()
for m in "$WORK"/mnt/*; do
  ( set +o pipefail; find "$m" -type f | head -n "$nread" | xargs cat | wc -c > "$m.bytes" ) &
  readers+=($!)
done
for j in "${readers[@]}"; do wait "$j"; done
t1=$(now_s)
touch "$WORK/stop"; wait "$sampler" || true
end=$(rss)
peak=$(cat "$WORK/peak" 2>/dev/null || echo 0)
read_mb=$(cat "$WORK"/mnt/*.bytes | awk '{s+=$1} END {printf "%.1f", s/1e6}')
fetched=$(STRATA_ROOT=$root "$STRATA_BIN" stats "$WORK/mnt/0" 2>/dev/null | awk '/fetched/ {print; exit}' || true)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
log "$n mounts of $n images: server RSS after mounting $((after_mounts / 1024)) MiB, peak while reading $((peak / 1024)) MiB, at the end $((end / 1024)) MiB ($read_mb MB read in $secs s)"
{
  echo "| mounts (distinct images) | files per image | files read per mount | RSS after mounting | peak RSS while reading | RSS at the end | bytes read | read time |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| $n | $files | $nread | $((after_mounts / 1024)) MiB | $((peak / 1024)) MiB | $((end / 1024)) MiB | $read_mb MB | $secs s |"
} > "$RES/memory.md"
cat "$RES/memory.md"
