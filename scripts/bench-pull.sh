#!/usr/bin/env bash
# `strata pull` vs `skopeo copy` (to an OCI dir) of the same multi-layer image from a local
# registry; medians of N runs, each into an empty destination.
#   scripts/bench-pull.sh [--runs N] [--image NAME]   (NAME from scripts/lib/images.sh, default big)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5 name=big
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
work=$(mktemp -d /tmp/strata-bench-pull.XXXXXX)
trap 'kill $REGISTRY_PID 2>/dev/null || true; rm -rf "$work"' EXIT
build_image "$name" >/dev/null
start_registry "$work/registry"
push_image "$name" "$REGISTRY_HOST" >/dev/null
ref=$(image_ref "$name" "$REGISTRY_HOST")
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
: > "$work/strata.t"; : > "$work/skopeo.t"
for i in $(seq 1 "$runs"); do
  rm -rf "$work/root" "$work/oci"; sync
  t env STRATA_ROOT="$work/root" "$strata" pull "$ref" >> "$work/strata.t"
  t skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/oci:latest" >> "$work/skopeo.t"
done
size=$(du -sb "$(image_layout "$name")/blobs" | cut -f1)
echo "image $name ($((size / 1000000)) MB compressed), $runs runs, $(nproc) CPUs, $(uname -r), $(date -u +%F)"
echo "strata pull  median $(median < "$work/strata.t") s  (min $(sort -n "$work/strata.t" | head -1), max $(sort -n "$work/strata.t" | tail -1))"
echo "skopeo copy  median $(median < "$work/skopeo.t") s  (min $(sort -n "$work/skopeo.t" | head -1), max $(sort -n "$work/skopeo.t" | tail -1))"
