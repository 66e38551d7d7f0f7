#!/usr/bin/env bash
# Many containers at once on one node: N concurrent cold `strata run` of one image on ONE
# STRATA_ROOT (so one strata daemon serves them all from one cache), against one cold run.
#
#   scripts/bench-scale.sh [--n 20] [--image big] [--profiles unshaped,200mbit-10ms] [--runs 1]
#
# For each link profile: a fresh root and one `strata run --rm` (the single-run reference),
# then a fresh root and N of them started together. Measured: wall time (first start to last
# exit), registry bytes (the registry's access log, `http.response.written`), the daemon's
# peak RSS while the N run (sampled every 100 ms from /proc). Goals (issue 15): bytes <= 1.1x
# one run, wall <= 2x one run, daemon RSS < 200 MiB with 20 mounts.
# Needs the bench images (scripts/build-images.sh) and target/release/strata (or $STRATA).
# Results: bench-results/scale.csv and scale.md.
#
# Many nodes, one upstream (issue 22): --nodes N makes N nodes as network namespaces (each its
# own strata root, daemon and address), one registry behind a shaped link (the first profile;
# default 200mbit-10ms) and a mirror in between, and has 1 then N nodes cold-start the image
# at once, for each mode: no mirror, the nginx lazy-pull mirror (contrib/nginx, slice
# $NODES_NGINX_SLICE, default 128k; strata's mirror-slice-size $NODES_SLICE, default 128KiB),
# distribution's pull-through cache. Reports upstream bytes (at the last node's exit and
# settled: after the cache's fills), mirror bytes, per-node times (lib/scale_nodes.sh;
# bench-results/scale-nodes.md). NODES_FILL_WAIT=S sets the nodes' mirror-fill-wait.
# NODES_EXTRA adds raw JSON keys to every node's config.json (an A/B of a setting, e.g.
# NODES_EXTRA='"fetch-siblings": 0').
# NODES_INDEX_ARGS adds words to the `strata index --push` of the image (e.g. "--span-size 2MiB").
#
#   scripts/bench-scale.sh --nodes 10 [--image big] [--profiles 200mbit-10ms]
#                          [--modes none,nginx,distribution]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/images.sh"
. "$here/lib/netns.sh"
. "$here/lib/mirror.sh"
. "$here/lib/nodes.sh"
. "$here/lib/scale_nodes.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (drop_caches, runc, network namespaces)"
n=20 img=big profiles=unshaped,200mbit-10ms runs=1 nodes=0 modes=none,nginx,distribution
while [ $# -gt 0 ]; do
  case $1 in
    --n) n=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --modes) modes=$2; shift ;;
    --image) img=$2; shift ;;
    --profiles) profiles=$2; shift ;;
    --runs) runs=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
ensure_pkgs runc docker-registry jq iproute2 curl
STRATA_BIN=$(strata_bin)
[ -n "$STRATA_BIN" ] || die "no strata binary (build with cargo build --release or set STRATA)"
image_built "$img" || die "image $img not built: scripts/build-images.sh $img"
WORK=${BENCH_WORK:-/var/tmp/strata-bench}
REGDATA=$WORK/registry-data
RES=$(bench_results_dir)
CSV=$RES/scale.csv
mkdir -p "$WORK"
if [ "$nodes" -gt 0 ]; then
  [ "$profiles" != unshaped,200mbit-10ms ] || profiles=200mbit-10ms
  ensure_pkgs util-linux
  scale_nodes_main "$nodes"
  exit 0
fi
case $img in
  big) argv=(python3 -c 'import numpy') ;;
  python) argv=(python3 -c 'import json') ;;
  *) argv=(sh -c 'echo hi') ;;
esac

# Push the image and its sidecar index once (unshaped).
start_bench_registry "$WORK/scale-reg-setup" "$REGDATA" unshaped
push_image "$img" "$REGISTRY_HOST" > /dev/null
r=$(mktemp -d "$WORK/scale-index.XXXXXX")
STRATA_ROOT=$r "$STRATA_BIN" index "$REGISTRY_HOST/bench/$img:latest" --push > /dev/null
rm -rf "$r"
stop_bench_registry

echo "profile,run,containers,seconds,registry_bytes,daemon_peak_rss_kib,failures" > "$CSV"

# peak_rss PIDFILE STOPFILE: max VmRSS (KiB) of the pid in PIDFILE until STOPFILE exists
peak_rss() {
  local peak=0 pid v
  while [ ! -e "$2" ]; do
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
      v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      [ "${v:-0}" -gt "$peak" ] && peak=$v
    fi
    sleep 0.1
  done
  echo "$peak"
}

# one_round PROFILE RUN COUNT
one_round() {
  local profile=$1 run=$2 count=$3 root off t0 t1 i fails=0 peak
  root=$(mktemp -d "$WORK/scale-root.XXXXXX")
  drop_caches
  off=$(log_size "$REGISTRY_LOG")
  rm -f "$root.stop"
  peak_rss "$root/daemon.pid" "$root.stop" > "$root.peak" &
  local sampler=$!
  t0=$(now_s)
  pids=()
  for i in $(seq 1 "$count"); do
    STRATA_ROOT=$root "$STRATA_BIN" run --rm "$REGISTRY_HOST/bench/$img:latest" "${argv[@]}" \
      > "$root.out.$i" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  t1=$(now_s)
  touch "$root.stop"; wait "$sampler"; peak=$(cat "$root.peak")
  sleep 0.3
  local by; by=$(registry_bytes_written "$REGISTRY_LOG" "$off")
  [ $fails = 0 ] || { log "$fails of $count runs failed:"; tail -3 "$root.out.1" >&2 || true; }
  echo "$profile,$run,$count,$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'),$by,$peak,$fails" >> "$CSV"
  log "$profile run $run: $count container(s) in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s, registry $(awk -v b="$by" 'BEGIN{printf "%.1f", b/1e6}') MB, daemon peak RSS $((peak / 1024)) MiB, $fails failed"
  STRATA_ROOT=$root "$STRATA_BIN" daemon --stop > /dev/null 2>&1 || true
  sleep 0.5
  rm -rf "$root" "$root".*
}

IFS=, read -r -a PROFILES <<< "$profiles"
for profile in "${PROFILES[@]}"; do
  start_bench_registry "$WORK/scale-reg-$profile" "$REGDATA" "$profile"
  for run in $(seq 1 "$runs"); do
    one_round "$profile" "$run" 1
    one_round "$profile" "$run" "$n"
  done
  stop_bench_registry
done

python3 - "$CSV" "$n" > "$RES/scale.md" <<'EOF'
import csv, sys, statistics as st
rows = list(csv.DictReader(open(sys.argv[1]))); n = int(sys.argv[2])
print("| profile | 1 run: wall | 1 run: registry | %d runs: wall | %d runs: registry | wall ratio | bytes ratio | daemon peak RSS | failed |" % (n, n))
print("|---|---|---|---|---|---|---|---|---|")
for p in dict.fromkeys(r["profile"] for r in rows):
    one = [r for r in rows if r["profile"] == p and r["containers"] == "1"]
    many = [r for r in rows if r["profile"] == p and r["containers"] == str(n)]
    m = lambda rs, k: st.median(float(r[k]) for r in rs)
    w1, wn, b1, bn = m(one, "seconds"), m(many, "seconds"), m(one, "registry_bytes"), m(many, "registry_bytes")
    rss = max(int(r["daemon_peak_rss_kib"]) for r in many) / 1024
    fails = sum(int(r["failures"]) for r in many + one)
    print(f"| {p} | {w1:.2f} s | {b1/1e6:.1f} MB | {wn:.2f} s | {bn/1e6:.1f} MB | {wn/w1:.2f}x | {bn/max(b1,1):.2f}x | {rss:.0f} MiB | {fails} |")
EOF
cat "$RES/scale.md"
