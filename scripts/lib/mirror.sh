# Registry mirrors for the benchmarks: the nginx lazy-pull mirror of contrib/nginx and
# distribution's pull-through cache. Source after scripts/lib/common.sh.
#
#   render_nginx_mirror DIR LISTEN UPSTREAM SLICE     -> DIR/nginx.conf (a standalone main config
#        around contrib/nginx/strata-mirror.conf; access log DIR/access.log with the bytes sent)
#   start_nginx_mirror DIR [NETNS]                     starts it (inside NETNS when given); MIRROR_PIDS
#   start_dist_mirror DIR LISTEN UPSTREAM_URL [NETNS]   docker-registry in proxy mode; its log DIR/registry.log
#   stop_mirrors                                       kills what the two started
#   nginx_bytes_sent LOG                               sum of $body_bytes_sent in an access log
#
# Both mirrors are started with `nsenter --net` only (no mount namespace games), so their
# files are where the script says.

MIRROR_PIDS=()

render_nginx_mirror() {
  local dir=$1 listen=$2 upstream=$3 slice=$4
  mkdir -p "$dir/cache" "$dir/tmp"
  sed -e "s#@LISTEN@#$listen#g; s#@UPSTREAM@#$upstream#g; s#@SCHEME@#http#g" \
      -e "s#@CACHE@#$dir/cache#g; s#@SLICE@#$slice#g; s#@MAXSIZE@#20g#g" \
      "$STRATA_REPO_ROOT/contrib/nginx/strata-mirror.conf" > "$dir/mirror.conf"
  cat > "$dir/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  log_format strata '\$request_method \$uri "\$http_range" \$status \$body_bytes_sent \$upstream_cache_status \$request_time';
  access_log $dir/access.log strata;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  include $dir/mirror.conf;
}
EOF
}

# _in_netns NETNS CMD...: run CMD in NETNS's network namespace (or here when NETNS is empty)
_in_netns() {
  local ns=$1; shift
  if [ -n "$ns" ]; then nsenter --net="/run/netns/$ns" -- "$@"; else "$@"; fi
}

start_nginx_mirror() {
  local dir=$1 ns=${2:-}
  _in_netns "$ns" nginx -t -q -c "$dir/nginx.conf" -p "$dir" 2>"$dir/test.log" \
    || { cat "$dir/test.log" >&2; die "nginx mirror config does not load"; }
  # (nsenter execs nginx: $! is the master's pid)
  if [ -n "$ns" ]; then
    nsenter --net="/run/netns/$ns" -- nginx -c "$dir/nginx.conf" -p "$dir" > "$dir/nginx.out" 2>&1 &
  else
    nginx -c "$dir/nginx.conf" -p "$dir" > "$dir/nginx.out" 2>&1 &
  fi
  MIRROR_PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$dir/nginx.pid" ] && return 0; sleep 0.05; done
  cat "$dir/nginx.out" "$dir/error.log" >&2 2>/dev/null; die "nginx mirror did not start"
}

start_dist_mirror() {
  local dir=$1 listen=$2 upstream=$3 ns=${4:-}
  mkdir -p "$dir/data"
  cat > "$dir/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  cache:
    blobdescriptor: inmemory
http:
  addr: $listen
proxy:
  remoteurl: $upstream
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
YML
  if [ -n "$ns" ]; then
    nsenter --net="/run/netns/$ns" -- docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  else
    docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  fi
  MIRROR_PIDS+=($!)
  for _ in $(seq 1 100); do
    _in_netns "$ns" curl -fs "http://$listen/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$dir/registry.log" >&2; die "distribution mirror did not start"
}

stop_mirrors() {
  local p
  for p in "${MIRROR_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${MIRROR_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  MIRROR_PIDS=()
}

nginx_bytes_sent() {
  awk '{s+=$(NF-2)} END {printf "%d\n", s}' "$1" 2>/dev/null || echo 0
}
