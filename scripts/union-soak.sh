#!/usr/bin/env bash
# Soak the randomised union differential tests (fuse-tests/union_random.rs): run seed after
# seed against kernel overlayfs until the time is up or a seed fails.
#
#   scripts/union-soak.sh [SECONDS] [dirs|lazy|both]      (default: 600 dirs)
#
# Env: STRATA_OPS (operations per seed, default 400), SOAK_FIRST_SEED (default: time-based).
# A failing seed's full output (operation log with both sides' results) is kept in
# target/union-soak/seed-<N>.log; replay it with
#   STRATA_SEED=<N> cargo test --test union_random -- --nocapture
# Needs root (FUSE and overlay mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
which=${2:-dirs}
case $which in
  dirs) filter=random_operations_match_kernel_overlayfs_with_directory_lowers ;;
  lazy) filter=random_operations_match_kernel_overlayfs_with_lazy_registry_layers ;;
  both) filter=random_operations_match_kernel_overlayfs ;;
  *) echo "usage: $0 [SECONDS] [dirs|lazy|both]" >&2; exit 2 ;;
esac
export STRATA_OPS=${STRATA_OPS:-400}
exe=$(cargo test --test union_random --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "could not build the union_random test binary" >&2; exit 1; }
out=target/union-soak
mkdir -p "$out"
seed=${SOAK_FIRST_SEED:-$(( $(date +%s%N) % 1000000007 ))}
end=$(( $(date +%s) + secs ))
n=0
while [ "$(date +%s)" -lt "$end" ]; do
  if ! STRATA_SEED=$seed "$exe" "$filter" --test-threads=1 >"$out/seed-$seed.log" 2>&1; then
    echo "seed $seed FAILED after $n good seeds; log: $out/seed-$seed.log" >&2
    grep -m3 -A3 'panicked' "$out/seed-$seed.log" >&2 || true
    exit 1
  fi
  rm -f "$out/seed-$seed.log"
  n=$((n + 1))
  seed=$((seed + 1))
done
echo "$n seeds x $STRATA_OPS ops passed ($which, ${secs}s)"
