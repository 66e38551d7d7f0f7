#!/usr/bin/env bash
# The hardware floor of bench-scale.sh: N containers of one workload started at once with every
# byte on local disk (no strata, no registry, no network), against one alone.
#
#   scripts/bench-floor.sh [--n 20] [--image big] [--runs 2] [-- CMD...]
#
# Unpacks IMAGE (from scripts/build-images.sh's cache) once with `umoci raw unpack`, writes one
# runc bundle per container pointing at that read-only rootfs, then per run: drop the page
# cache, `runc run` one container alone, drop the page cache, start N at once and wait for all.
# Default command: python3 -c 'import numpy' (bench-scale.sh's). Prints the wall times and the
# ratio N/1: the best `bench-scale.sh` can do on this machine for its wall-time ratio (issue 15).
# Results: bench-results/floor.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/images.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (runc)"
n=20 image=big runs=2
while [ $# -gt 0 ]; do
  case $1 in
    --n) n=$2; shift ;;
    --image) image=$2; shift ;;
    --runs) runs=$2; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[ $# -gt 0 ] || set -- python3 -c 'import numpy'
ensure_pkgs runc umoci jq bc
image_built "$image" || die "image $image not built: scripts/build-images.sh $image"
work=$(mktemp -d /var/tmp/strata-floor.XXXXXX)
ids=()
cleanup() {
  for id in "${ids[@]}"; do runc delete -f "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
log "unpacking $image"
umoci raw unpack --image "$(image_layout "$image"):latest" "$work/rootfs" > "$work/unpack.log" 2>&1
umoci raw runtime-config --image "$(image_layout "$image"):latest" --rootfs "$work/rootfs" "$work/cfg.tmp"
argv=$(printf '%s\n' "$@" | jq -R . | jq -s .)
jq --argjson a "$argv" --arg r "$work/rootfs" '.process.args = $a | .process.terminal = false
    | .root.path = $r | .root.readonly = true | del(.process.rlimits)' "$work/cfg.tmp" > "$work/cfg.json"
for i in $(seq 1 "$n"); do mkdir -p "$work/b$i"; cp "$work/cfg.json" "$work/b$i/config.json"; done

# start COUNT containers at once (bundles b1..bCOUNT), wait for all; prints the wall seconds
start_all() {
  local count=$1 tag=$2 t0 t1 i pids=() rc=0
  drop_caches
  t0=$(now_s)
  for i in $(seq 1 "$count"); do
    ids+=("floor-$$-$tag-$i")
    runc run -b "$work/b$i" "floor-$$-$tag-$i" < /dev/null > "$work/out-$tag-$i" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  t1=$(now_s)
  for i in $(seq 1 "$count"); do runc delete -f "floor-$$-$tag-$i" >/dev/null 2>&1 || true; done
  [ $rc = 0 ] || { log "a container failed: $(cat "$work/out-$tag-"* | tail -3)"; return 1; }
  echo "$t1 - $t0" | bc
}

out=$(bench_results_dir)/floor.md
{
  echo "Command: \`scripts/bench-floor.sh --n $n --image $image --runs $runs -- $*\` ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "| run | 1 alone | $n at once | ratio |"
  echo "|---|---|---|---|"
  for r in $(seq 1 "$runs"); do
    one=$(start_all 1 "r$r-one")
    many=$(start_all "$n" "r$r-many")
    printf '| %s | %.2f s | %.2f s | %.2fx |\n' "$r" "$one" "$many" "$(echo "$many / $one" | bc -l)"
  done
} | tee "$out"
