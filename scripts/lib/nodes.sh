# N nodes, one hub, one upstream registry behind a shaped link, all in network namespaces this
# script creates (no host interface is touched). Source after common.sh and netns.sh.
#
#   nodes_up N PROFILE REGDATA DIR
#        namespaces: $NODES_PREFIX-up (the registry on its 127.0.0.1:5000), $NODES_PREFIX-hub (the
#        shaper: 0.0.0.0:5002 in the hub -> the registry, rate/delay of PROFILE, one shared
#        link; the mirrors run here too), $NODES_PREFIX-nK for K in 1..N, each joined to the hub
#        by a veth pair created directly inside the two namespaces: node 10.77.K.2/24, hub side
#        10.77.K.1/24. Sets UPSTREAM_LOG (the registry's log).
#   node_ns K / node_hub_ip K                  namespace name / the hub's address seen from node K
#   nodes_down                                 kills what nodes_up started, deletes the namespaces
#
# Callers: trap nodes_down EXIT.

NODES_PREFIX=sbn$$
NODES_N=0
NODES_PIDS=()

node_ns() { echo "$NODES_PREFIX-n$1"; }
node_hub_ip() { echo "10.77.$1.1"; }

nodes_up() {
  local n=$1 profile=$2 data=$3 dir=$4 rate delay k
  read -r rate delay < <(parse_profile "$profile")
  mkdir -p "$dir"
  local up=$NODES_PREFIX-up hub=$NODES_PREFIX-hub
  ip netns add "$up"; ip netns add "$hub"
  ip -n "$up" link set lo up; ip -n "$hub" link set lo up
  NODES_N=$n
  for k in $(seq 1 "$n"); do
    local ns; ns=$(node_ns "$k")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "h$k" netns "$hub" type veth peer name eth0 netns "$ns"
    ip -n "$hub" addr add "10.77.$k.1/24" dev "h$k"
    ip -n "$ns" addr add "10.77.$k.2/24" dev eth0
    ip -n "$hub" link set "h$k" up
    ip -n "$ns" link set eth0 up
  done
  _registry_config "$dir/registry.yml" "$data" "127.0.0.1:5000"
  UPSTREAM_LOG=$dir/registry.log
  : > "$UPSTREAM_LOG"
  nsenter --net="/run/netns/$up" -- docker-registry serve "$dir/registry.yml" >> "$UPSTREAM_LOG" 2>&1 &
  NODES_PIDS+=($!)
  local ok=0
  for _ in $(seq 1 100); do
    nsenter --net="/run/netns/$up" -- curl -fs http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && { ok=1; break; }
    sleep 0.1
  done
  [ $ok = 1 ] || { tail -20 "$UPSTREAM_LOG" >&2; die "registry in $up did not start"; }
  rm -f "$dir/shaper.port"
  nsenter --net="/run/netns/$hub" -- python3 "$(dirname "${BASH_SOURCE[0]}")/shaper.py" \
    --netns "$up" --target 127.0.0.1:5000 --rate-mbit "$rate" --delay-ms "$delay" \
    --listen-addr 0.0.0.0 --port 5002 --port-file "$dir/shaper.port" > "$dir/shaper.log" 2>&1 &
  NODES_PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$dir/shaper.port" ] && break; sleep 0.05; done
  [ -s "$dir/shaper.port" ] || { cat "$dir/shaper.log" >&2; die "shaper did not start"; }
  nsenter --net="/run/netns/$(node_ns 1)" -- curl -fs "http://$(node_hub_ip 1):5002/v2/" >/dev/null \
    || die "node 1 cannot reach the registry through the hub"
}

nodes_down() {
  local p k
  for p in "${NODES_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODES_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  NODES_PIDS=()
  for k in $(seq 1 "$NODES_N"); do ip netns del "$(node_ns "$k")" 2>/dev/null || true; done
  ip netns del "$NODES_PREFIX-hub" 2>/dev/null || true
  ip netns del "$NODES_PREFIX-up" 2>/dev/null || true
  NODES_N=0
}
