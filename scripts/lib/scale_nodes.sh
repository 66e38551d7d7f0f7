# bench-scale.sh --nodes N: N nodes (network namespaces, each its own strata root and daemon)
# cold-start one image at once, with no mirror, through the nginx lazy-pull mirror
# (contrib/nginx) and through distribution's pull-through cache; one registry behind one
# shaped link (lib/nodes.sh). Sourced by bench-scale.sh after its libraries; call
# scale_nodes_main.
#
# Per round: upstream bytes (the registry's access log) when the last node exits, and
# "settled" (after distribution's cache has ended the fills it started, or 120 s, and has
# been stopped: every byte the round cost), mirror bytes (what the mirror sent to the
# nodes), every node's cold-start time (start of `strata run --rm` to its exit).
# Results: bench-results/scale-nodes.csv and scale-nodes.md. NODES_FILL_WAIT=S sets the nodes'
# mirror-fill-wait (seconds; unset: strata's default).

# _node_config K MODE: the node's config.json
_node_config() {
  local k=$1 mode=$2 hub up mirrors="" slice=0 fill=""
  [ -z "${NODES_FILL_WAIT:-}" ] || fill=" \"mirror-fill-wait\": $NODES_FILL_WAIT,"
  hub=$(node_hub_ip "$k")
  up="$hub:5002"
  case $mode in
    nginx) mirrors="\"http://$hub:5000\""; slice=$NODES_SLICE ;;
    distribution) mirrors="\"http://$hub:5001\"" ;;
  esac
  cat <<EOF
{
  "registry-mirrors-by-host": {"$up": [$mirrors]},
  "insecure-registries": ["$up", "$hub:5000", "$hub:5001"],
  "prefetch": false,$fill${NODES_EXTRA:+
  $NODES_EXTRA,}
  "mirror-slice-size": "$slice"
}
EOF
}

# _nodes_round MODE COUNT: COUNT nodes (1..COUNT) cold-start the image at once
_nodes_round() {
  local mode=$1 count=$2 k pids=() fails=0
  local mdir="$NODES_WORK/mirror-$mode-$count"
  rm -rf "$mdir"; mkdir -p "$mdir"
  case $mode in
    nginx)
      render_nginx_mirror "$mdir" "0.0.0.0:5000" "127.0.0.1:5002" "$NODES_NGINX_SLICE"
      start_nginx_mirror "$mdir" "$NODES_PREFIX-hub" ;;
    distribution)
      start_dist_mirror "$mdir" "0.0.0.0:5001" "http://127.0.0.1:5002" "$NODES_PREFIX-hub" ;;
  esac
  for k in $(seq 1 "$count"); do
    local root=$NODES_WORK/node$k
    rm -rf "$root"; mkdir -p "$root"
    _node_config "$k" "$mode" > "$root/config.json"
  done
  drop_caches
  sleep 0.5
  local off; off=$(log_size "$UPSTREAM_LOG")
  for k in $(seq 1 "$count"); do
    local root=$NODES_WORK/node$k ref
    ref="$(node_hub_ip "$k"):5002/bench/$NODES_IMG:latest"
    (
      s=$(now_s)
      STRATA_ROOT=$root nsenter --net="/run/netns/$(node_ns "$k")" -- \
        "$STRATA_BIN" run --rm "$ref" "${NODES_ARGV[@]}" > "$root.out" 2>&1
      rc=$?
      e=$(now_s)
      echo "$(awk -v a="$s" -v b="$e" 'BEGIN{printf "%.3f", b-a}') $rc" > "$root.time"
      exit $rc
    ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  sleep 0.5
  local up_bytes mirror_bytes times="" worst=0 k
  up_bytes=$(registry_bytes_written "$UPSTREAM_LOG" "$off")
  case $mode in
    nginx) mirror_bytes=$(nginx_bytes_sent "$mdir/access.log") ;;
    distribution) mirror_bytes=$(registry_bytes_written "$mdir/registry.log") ;;
    *) mirror_bytes=0 ;;
  esac
  for k in $(seq 1 "$count"); do
    local t; t=$(cut -d' ' -f1 "$NODES_WORK/node$k.time")
    times="$times${times:+ }$t"
    [ "$(cut -d' ' -f2 "$NODES_WORK/node$k.time")" = 0 ] || { log "node $k failed:"; tail -5 "$NODES_WORK/node$k.out" >&2; }
    worst=$(awk -v a="$worst" -v b="$t" 'BEGIN{print (b>a)?b:a}')
    STRATA_ROOT=$NODES_WORK/node$k "$STRATA_BIN" daemon --stop > /dev/null 2>&1 || true
    if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
      mkdir -p "$BENCH_KEEP_LOGS"
      cp "$NODES_WORK/node$k/daemon.log" "$BENCH_KEEP_LOGS/$mode-x$count-node$k.log" 2>/dev/null || true
    fi
  done
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  # A pull-through cache may still be filling blobs the nodes read from the upstream: let its
  # storage stop growing (at most 120 s), then stop it; the upstream's log then holds every
  # byte the round cost, fills and dropped streams included ("settled").
  if [ "$mode" = distribution ]; then
    local prev=-1 cur waited=0
    while [ "$waited" -lt 120 ]; do
      cur=$(du -sb "$mdir/data" 2>/dev/null | cut -f1)
      [ "$cur" = "$prev" ] && break
      prev=$cur; sleep 2; waited=$((waited + 2))
    done
  fi
  stop_mirrors
  sleep 0.5
  local settled; settled=$(registry_bytes_written "$UPSTREAM_LOG" "$off")
  echo "$NODES_PROFILE,$mode,$count,$up_bytes,$mirror_bytes,$worst,\"$times\",$fails,$load,$settled" >> "$NODES_CSV"
  log "$mode x$count: upstream $(awk -v b="$up_bytes" 'BEGIN{printf "%.1f", b/1e6}') MB ($(awk -v b="$settled" 'BEGIN{printf "%.1f", b/1e6}') MB settled), mirror sent $(awk -v b="$mirror_bytes" 'BEGIN{printf "%.1f", b/1e6}') MB, slowest node $worst s (all: $times), $fails failed, load $load"
  [ -z "${BENCH_KEEP_LOGS:-}" ] || cp "$UPSTREAM_LOG" "$BENCH_KEEP_LOGS/$mode-x$count-upstream.log" 2>/dev/null || true
  rm -rf "$mdir/cache" "$mdir/data"
}

scale_nodes_main() {
  local n=$1
  ensure_pkgs nginx
  nginx -V 2>&1 | grep -q http_slice_module || die "this nginx lacks the slice module (Debian's nginx package has it)"
  NODES_IMG=$img NODES_PROFILE=${profiles%%,*}
  NODES_SLICE=${NODES_SLICE:-128KiB}
  NODES_NGINX_SLICE=${NODES_NGINX_SLICE:-128k}
  case $img in
    big) NODES_ARGV=(python3 -c 'import numpy, scipy') ;;
    python) NODES_ARGV=(python3 -c 'import json') ;;
    *) NODES_ARGV=(sh -c 'echo hi') ;;
  esac
  NODES_WORK=$WORK/nodes
  NODES_CSV=$RES/scale-nodes.csv
  rm -rf "$NODES_WORK"; mkdir -p "$NODES_WORK"
  # Push the image and its sidecar index once (unshaped, host loopback), into REGDATA.
  start_bench_registry "$WORK/scale-reg-setup" "$REGDATA" unshaped
  push_image "$img" "$REGISTRY_HOST" > /dev/null
  local r; r=$(mktemp -d "$WORK/scale-index.XXXXXX")
  # shellcheck disable=SC2086 # NODES_INDEX_ARGS: extra words, e.g. "--span-size 2MiB"
  STRATA_ROOT=$r "$STRATA_BIN" index "$REGISTRY_HOST/bench/$img:latest" --push ${NODES_INDEX_ARGS:-} > /dev/null
  rm -rf "$r"
  stop_bench_registry
  trap 'stop_mirrors; nodes_down' EXIT
  nodes_up "$n" "$NODES_PROFILE" "$REGDATA" "$NODES_WORK/net"
  echo "profile,mode,nodes,upstream_bytes,mirror_bytes,slowest_s,node_seconds,failures,load1,settled_bytes" > "$NODES_CSV"
  local m
  IFS=, read -r -a MODES <<< "$modes"
  for m in "${MODES[@]}"; do
    case $m in none|nginx|distribution) ;; *) die "unknown mode $m (none, nginx, distribution)" ;; esac
    _nodes_round "$m" 1
    _nodes_round "$m" "$n"
  done
  nodes_down
  trap - EXIT
  rm -rf "$NODES_WORK"/node*/ "$NODES_WORK"/mirror-*/cache "$NODES_WORK"/mirror-*/data
  python3 - "$NODES_CSV" "$n" > "$RES/scale-nodes.md" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]))); n = sys.argv[2]
lone = {r["mode"]: r for r in rows if r["nodes"] == "1"}
base = lone.get("none")
print("| mirror | nodes | upstream | settled | x one node's lazy bytes (settled) | mirror sent | slowest node | x lone node (no mirror) | node times (s) | failed | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    ub = int(r["upstream_bytes"]); lazy = int(base["upstream_bytes"]) if base else 0
    t = float(r["slowest_s"]); t1 = float(base["slowest_s"]) if base else 0
    sb = int(r["settled_bytes"])
    # Without a lone node of mode `none` in this run there is nothing to divide by.
    xb = f"{sb/lazy:.2f}x" if lazy else "—"
    xt = f"{t/t1:.2f}x" if t1 else "—"
    print(f"| {r['mode']} | {r['nodes']} | {ub/1e6:.1f} MB | {sb/1e6:.1f} MB | {xb} | {int(r['mirror_bytes'])/1e6:.1f} MB | {t:.2f} s | {xt} | {r['node_seconds']} | {r['failures']} | {r['load1']} |")
EOF
  cat "$RES/scale-nodes.md"
}
