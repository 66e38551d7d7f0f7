# A docker-registry behind an emulated slow link. Source after scripts/lib/common.sh.
#
# This kernel has no netem qdisc (see shared PLATFORM.md), so the link is emulated in user space:
# the registry runs inside a network namespace this script creates (its own loopback only; no
# host interface is touched), and a throttling TCP forwarder (lib/shaper.py) listens on the
# host's 127.0.0.1 and connects into that namespace, limiting the rate and adding a one-way delay
# in each direction. "unshaped" runs the registry directly on the host loopback.
#
#   parse_profile NAME            -> "RATE_MBIT DELAY_MS" (unshaped -> "0 0"; 200mbit-10ms -> "200 10")
#   start_bench_registry DIR DATA PROFILE
#        sets REGISTRY_HOST (127.0.0.1:PORT, what clients use), REGISTRY_LOG (access log);
#        DATA is the registry storage directory (shared between profiles, so images are pushed once)
#   stop_bench_registry           kills what start_bench_registry started, deletes the namespace
#   registry_bytes_written LOG [FROM_BYTE]  sum of http.response.written= from byte offset FROM_BYTE
#
# Callers: trap stop_bench_registry EXIT.

BENCH_NETNS=""
BENCH_REG_PIDS=()

parse_profile() {
  case $1 in
    unshaped|loopback) echo "0 0" ;;
    *mbit-*ms)
      local r=${1%%mbit-*} d=${1#*mbit-}; d=${d%ms}
      [[ $r =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ ]] || die "bad profile '$1' (want e.g. 200mbit-10ms)"
      echo "$r $d" ;;
    *) die "bad profile '$1' (want unshaped or RATEmbit-DELAYms, e.g. 200mbit-10ms)" ;;
  esac
}

# _registry_config FILE DATA ADDR
_registry_config() {
  cat > "$1" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $2
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $3
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
YML
}

_wait_registry() {
  local host=$1 log=$2
  for _ in $(seq 1 100); do
    curl -fs "http://$host/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "registry at $host did not start; log:" >&2; tail -20 "$log" >&2; return 1
}

start_bench_registry() {
  local dir=$1 data=$2 profile=$3 rate delay port
  read -r rate delay < <(parse_profile "$profile")
  mkdir -p "$dir" "$data"
  REGISTRY_LOG=$dir/registry.log
  : > "$REGISTRY_LOG"
  if [ "$rate" = 0 ] && [ "$delay" = 0 ]; then
    port=$(free_port)
    _registry_config "$dir/config.yml" "$data" "127.0.0.1:$port"
    docker-registry serve "$dir/config.yml" >> "$REGISTRY_LOG" 2>&1 &
    BENCH_REG_PIDS+=($!)
    REGISTRY_HOST=127.0.0.1:$port
    _wait_registry "$REGISTRY_HOST" "$REGISTRY_LOG"
    return
  fi
  BENCH_NETNS=strata-bench-$$-$RANDOM
  ip netns add "$BENCH_NETNS"
  ip -n "$BENCH_NETNS" link set lo up
  _registry_config "$dir/config.yml" "$data" "127.0.0.1:5000"
  ip netns exec "$BENCH_NETNS" docker-registry serve "$dir/config.yml" >> "$REGISTRY_LOG" 2>&1 &
  BENCH_REG_PIDS+=($!)
  # wait for the registry inside the namespace
  local ok=0
  for _ in $(seq 1 100); do
    if ip netns exec "$BENCH_NETNS" curl -fs http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || { tail -20 "$REGISTRY_LOG" >&2; die "registry in netns did not start"; }
  rm -f "$dir/shaper.port"
  python3 "$(dirname "${BASH_SOURCE[0]}")/shaper.py" --netns "$BENCH_NETNS" --target 127.0.0.1:5000 \
    --rate-mbit "$rate" --delay-ms "$delay" --port-file "$dir/shaper.port" > "$dir/shaper.log" 2>&1 &
  BENCH_REG_PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$dir/shaper.port" ] && break; sleep 0.05; done
  [ -s "$dir/shaper.port" ] || { cat "$dir/shaper.log" >&2; die "shaper did not start"; }
  REGISTRY_HOST=127.0.0.1:$(cat "$dir/shaper.port")
  _wait_registry "$REGISTRY_HOST" "$REGISTRY_LOG"
}

stop_bench_registry() {
  local p
  for p in "${BENCH_REG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BENCH_REG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  BENCH_REG_PIDS=()
  if [ -n "$BENCH_NETNS" ]; then
    # anything still running inside (should be nothing) goes with the namespace's last reference
    local left; left=$(ip netns pids "$BENCH_NETNS" 2>/dev/null || true)
    [ -z "$left" ] || kill $left 2>/dev/null || true
    ip netns del "$BENCH_NETNS" 2>/dev/null || true
    BENCH_NETNS=""
  fi
}

# registry_bytes_written LOG [FROM_BYTE]: bytes the registry sent (sum of http.response.written)
registry_bytes_written() {
  local log=$1 from=${2:-0}
  tail -c +"$((from + 1))" "$log" | grep -o 'http\.response\.written=[0-9]*' \
    | awk -F= '{s+=$2} END {printf "%d\n", s}'
}

log_size() { stat -c %s "$1"; }

# link_probe HOST REPO DIGEST: prints "RTT_S BYTES_PER_S" from a tiny and a large blob GET.
link_probe() {
  local host=$1 repo=$2 digest=$3 rtt bw
  rtt=$(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_starttransfer} %{time_connect}\n' \
          "http://$host/v2/"; done | awk '{print $1-$2}' | sort -n | sed -n 3p)
  bw=$(curl -s -o /dev/null -w '%{speed_download}' "http://$host/v2/$repo/blobs/$digest")
  echo "$rtt $bw"
}
