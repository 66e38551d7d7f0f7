#!/usr/bin/env bash
# Daemon restarts under load: the pause readers of a lazy mount see when the server is killed
# with SIGKILL, restarted (`strata daemon restart`) and upgraded (`strata daemon upgrade`).
#
#   scripts/bench-restart.sh [--rounds 3] [--profile 200mbit-10ms] [--files 600]
#
# One synthetic image (scripts/lib/push-synthetic.py) behind the (shaped) bench registry,
# indexed; a fresh root mounts it with an upper; 8 readers (scripts/lib/readers.py) loop over
# 48 files of it (read once first, so cached; 2 of the readers hold a file open), while a 9th
# reads 100 files not read before, one after the other, so fetches are under way at the event. Per round and event: readers run
# 2 s, the event, 6 s more; reported: failed reads and the longest operation started around
# the event. Goals (issue 15): 0 failed reads; longest pause <= 2 s after kill -9, <= 200 ms
# for upgrade. Needs target/release/strata (or $STRATA). Results: bench-results/restart.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/netns.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (FUSE mounts, network namespaces)"
rounds=3 profile=200mbit-10ms files=600
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --profile) profile=$2; shift ;;
    --files) files=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
ensure_pkgs docker-registry curl python3 iproute2
STRATA_BIN=$(strata_bin)
[ -n "$STRATA_BIN" ] || die "no strata binary (build with cargo build --release or set STRATA)"
WORK=$(mktemp -d "${BENCH_WORK:-/var/tmp}/strata-restart.XXXXXX")
RES=$(bench_results_dir)
BENCH_REG_PIDS=() BENCH_NETNS=""
cleanup() {
  [ -n "${root:-}" ] && STRATA_ROOT=$root "$STRATA_BIN" daemon --stop > /dev/null 2>&1 || true
  sleep 1
  umount -l "$WORK/mnt" 2>/dev/null || true
  stop_bench_registry
  rm -rf "$WORK"
}
trap cleanup EXIT
start_bench_registry "$WORK/reg" "$WORK/regdata" "$profile"
python3 "$here/lib/push-synthetic.py" "$REGISTRY_HOST" 1 --files "$files" --prefix bench/restart > "$WORK/images.txt"
ref=$(awk '{print $1; exit}' "$WORK/images.txt")
STRATA_ROOT=$WORK/index-root "$STRATA_BIN" index "$ref" --push > /dev/null
echo "round,event,failed,longest_pause_ms,operations" > "$RES/restart.csv"
for r in $(seq 1 "$rounds"); do
  root=$WORK/root-$r
  mkdir -p "$WORK/mnt"
  STRATA_ROOT=$root "$STRATA_BIN" mount --no-prefetch --upper "$WORK/upper-$r" "$ref" "$WORK/mnt" > /dev/null
  mapfile -t all < <(find "$WORK/mnt" -type f -name '*.txt' | sort)
  k=0
  for ev in kill-9 restart upgrade; do
    rm -f "$WORK/stop" "$WORK/event"
    # 48 warm files, and 100 not read before (different ones at each event).
    cold=("${all[@]:$((48 + k * 100)):100}")
    k=$((k + 1))
    python3 "$here/lib/readers.py" "$WORK/stop" "$WORK/event" "${all[@]:0:48}" -- "${cold[@]}" \
      > "$WORK/res.json" &
    rp=$!
    sleep 2
    touch "$WORK/event"
    case $ev in
      kill-9) kill -9 "$(cat "$root/daemon.pid")" ;;
      restart) STRATA_ROOT=$root "$STRATA_BIN" daemon restart > /dev/null ;;
      upgrade) STRATA_ROOT=$root "$STRATA_BIN" daemon upgrade > /dev/null ;;
    esac
    sleep 6
    touch "$WORK/stop"; wait "$rp"
    python3 - "$r" "$ev" "$WORK/res.json" >> "$RES/restart.csv" <<'PY'
import json, sys
d = json.load(open(sys.argv[3]))
print(f"{sys.argv[1]},{sys.argv[2]},{d['failed']},{d['longest_pause_ms']},{d['operations']}")
if d["failed"]:
    print(d["first_failures"], file=sys.stderr)
PY
    log "round $r $ev: $(tail -1 "$RES/restart.csv")"
  done
  STRATA_ROOT=$root "$STRATA_BIN" daemon --stop > /dev/null 2>&1 || true
  sleep 1
done
python3 - "$RES/restart.csv" > "$RES/restart.md" <<'PY'
import csv, sys, statistics as st
rows = list(csv.DictReader(open(sys.argv[1])))
print("| event | rounds | failed reads | longest pause: median | longest pause: max |")
print("|---|---|---|---|---|")
for ev in ("kill-9", "restart", "upgrade"):
    rs = [r for r in rows if r["event"] == ev]
    p = [float(r["longest_pause_ms"]) for r in rs]
    print(f"| {ev} | {len(rs)} | {sum(int(r['failed']) for r in rs)} | {st.median(p):.0f} ms | {max(p):.0f} ms |")
PY
cat "$RES/restart.md"
