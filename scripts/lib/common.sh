# Shared helpers for the benchmark scripts. Source this file.
# Defines: log, die, ensure_pkgs, debian_mirror, drop_caches, now_s, bench_results_dir,
#          machine_json, strata_bin.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_pkgs PKG... : install the Debian packages that are missing (idempotent, quiet when all there).
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# debian_mirror: the Debian archive URI this machine's apt uses (never hard-coded in the repo).
# Override with $DEBIAN_MIRROR.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local u=""
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    # first URIs: of a stanza that is not the security archive
    u=$(awk 'tolower($1)=="uris:" { for (i=2;i<=NF;i++) if ($i !~ /security/) { print $i; exit } }' \
          /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$u" ] && [ -f /etc/apt/sources.list ]; then
    u=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^https?:/ && $i !~ /security/) { print $i; exit } }' \
          /etc/apt/sources.list)
  fi
  [ -n "$u" ] || die "no Debian mirror found in the apt configuration (set DEBIAN_MIRROR)"
  echo "${u%/}"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

now_s() { date +%s.%N; }

# repo root (scripts/lib/..)
STRATA_REPO_ROOT=${STRATA_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

bench_results_dir() {
  local d=${BENCH_RESULTS:-$STRATA_REPO_ROOT/bench-results}
  mkdir -p "$d"; echo "$d"
}

# strata_bin: absolute path of the strata binary ($STRATA, default target/release/strata) or empty.
strata_bin() {
  local b=${STRATA:-$STRATA_REPO_ROOT/target/release/strata}
  case $b in /*) ;; *) b=$STRATA_REPO_ROOT/$b ;; esac
  [ -x "$b" ] && echo "$b" || true
}

# strata_has_cmd SUBCOMMAND: true when the binary exists and knows the subcommand.
strata_has_cmd() {
  local b; b=$(strata_bin); [ -n "$b" ] || return 1
  "$b" "$1" --help >/dev/null 2>&1
}

machine_json() {
  python3 - <<'PY'
import json, os, platform, subprocess, datetime
cpu = ""
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip(); break
except OSError:
    pass
mem = 0
for l in open("/proc/meminfo"):
    if l.startswith("MemTotal"):
        mem = int(l.split()[1]) * 1024
print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
                  "mem_bytes": mem}))
PY
}
