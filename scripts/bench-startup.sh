#!/usr/bin/env bash
# Cold-start benchmark (HelloBench style): time from "start" to the workload's exit, caches dropped
# before every run, registry behind an emulated link (scripts/lib/netns.sh).
#
#   scripts/bench-startup.sh [--quick] [--runs N] [--images a,b] [--profiles unshaped,200mbit-10ms]
#                            [--workloads w1,w2] [--methods m1,m2]
#
# Methods (per image x workload x link profile):
#   classic       skopeo copy docker://REF -> OCI dir; umoci raw unpack; umoci raw runtime-config;
#                 runc run  (tool-independent reference for "pull everything first")
#   local         runc run of the already unpacked bundle (page cache dropped): the workload's own
#                 cost with every byte on local disk
#   strata-pull   strata pull REF; strata run REF CMD   (empty STRATA_ROOT; needs `strata run`)
#   strata-lazy   strata run REF CMD with an empty STRATA_ROOT, after `strata index REF --push`
#                 published the sidecar index once
#   strata-profiled  as strata-lazy, after a publisher machine ran the workload once and published
#                 its access profile (`strata profile push`): the fresh root prefetches those files
#                 first (the strata-lazy runs set prefetch-profile=local so they never use it)
#   (--methods picks some of the above, default all, --quick all but strata-estargz; without classic the traced run and the
#   local runs unpack the image from its local OCI layout instead of the classic run's pull)
#   strata-estargz   strata run of the image converted to eStargz (examples/estargz_convert.rs,
#                 strata's own eStargz writer; pushed as bench/NAME-estargz) with an empty
#                 STRATA_ROOT: the index comes from each layer's TOC, no sidecar. Needs
#                 target/release/examples/estargz_convert (cargo build --release --example
#                 estargz_convert) or $ESTARGZ_CONVERT; skipped with a note otherwise
#   ideal         computed lower bound for a lazy loader: local + gzip(bytes the workload opens) /
#                 link bandwidth + 3 round trips (connect, manifest, data)
# Results: bench-results/startup-raw.csv (every run), startup-summary.csv, startup.json,
#          startup.md (markdown table). Defaults: 5 runs, images debian-minbase,python,big, profiles
#          unshaped,200mbit-10ms; --quick: 2 runs, first workload per image, profile 200mbit-10ms
#          (about 4-5 minutes on 2 vCPUs; explicit --runs/--profiles/--workloads still apply).
# Environment: STRATA (binary, default target/release/strata), STRATA_RUN_ARGS (default: --rm when
#   `strata run --help` mentions it), BENCH_WORK (scratch, default /var/tmp/strata-bench),
#   STRATA_IMAGE_CACHE, BENCH_STRATA_CONFIG (JSON object merged into each measured root's
#   config.json, e.g. '{"fetch-ahead-spans": 0}' for an A/B), BENCH_INDEX_ARGS (extra words for
#   `strata index --push`, e.g. "--span-size 64KiB"), BENCH_RESULTS, BENCH_KEEP_LOGS (a directory: each strata run's CLI and daemon
#   log is kept there; set RUST_LOG too for detail).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/images.sh"
. "$here/lib/netns.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (drop_caches, runc, network namespaces)"

quick=0 runs="" images="debian-minbase,python,big" profiles="" only_wl="" methods=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --images) images=$2; shift ;;
    --profiles) profiles=$2; shift ;;
    --workloads) only_wl=$2; shift ;;
    --methods) methods=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[ -n "$runs" ] || { [ $quick = 1 ] && runs=2 || runs=5; }
ALL_METHODS=classic,local,strata-pull,strata-lazy,strata-profiled,strata-estargz
# --quick leaves out the eStargz variant (its conversion and runs take the quick run past 5
# minutes: 5m33s measured with it, 19:21 UTC); --methods ... strata-estargz adds it back.
[ -n "$methods" ] || { [ $quick = 1 ] && methods=${ALL_METHODS%,strata-estargz} || methods=$ALL_METHODS; }
for m in ${methods//,/ }; do [[ ",$ALL_METHODS," == *",$m,"* ]] || die "unknown method $m"; done
want() { [[ ",$methods," == *",$1,"* ]]; }
[ -n "$profiles" ] || { [ $quick = 1 ] && profiles=200mbit-10ms || profiles=unshaped,200mbit-10ms; }
IFS=, read -r -a IMAGES <<< "$images"
IFS=, read -r -a PROFILES <<< "$profiles"
for p in "${PROFILES[@]}"; do parse_profile "$p" >/dev/null; done

ensure_pkgs skopeo umoci runc docker-registry strace jq iproute2 curl
WORK=${BENCH_WORK:-/var/tmp/strata-bench}
mkdir -p "$WORK"
REGDATA=$WORK/registry-data
RES=$(bench_results_dir)
RAW=$RES/startup-raw.csv
TRACES=$RES/startup-traces.json
LINKS=$RES/startup-links.json
STRATA_BIN=$(strata_bin)
notes=()

# workloads: NAME<TAB>JSON argv. read-most reads more than half of the image (every file under
# /usr): no lazy loader may be slower than pulling first there (issue 16's "no cliff").
READ_MOST='["sh","-c","tar cf - /usr 2>/dev/null | wc -c"]'
workloads_for() {
  case $1 in
    debian-minbase) printf 'echo\t["sh","-c","echo hi"]\n'
                    printf 'read-most\t%s\n' "$READ_MOST" ;;
    python) printf 'import-json\t["python3","-c","import json"]\n'
            printf 'echo\t["sh","-c","echo hi"]\n'
            printf 'read-most\t%s\n' "$READ_MOST" ;;
    big) printf 'import-numpy\t["python3","-c","import numpy"]\n'
         printf 'gcc-hello\t["sh","-c","printf %s > /tmp/h.c && gcc -o /tmp/h /tmp/h.c && /tmp/h"]\n' \
           "'int main(void){return 0;}\\\\n'"
         printf 'import-json\t["python3","-c","import json"]\n'
         printf 'read-most\t%s\n' "$READ_MOST" ;;
    smallfiles) printf 'echo\t["sh","-c","echo hi"]\n' ;;
    *) die "no workloads for image $1" ;;
  esac
}

cleanup() {
  local rc=$?
  { runc list -q 2>/dev/null | grep "^sbench-$$-" || true; } | while read -r c; do runc delete -f "$c" >/dev/null 2>&1 || true; done
  stop_bench_registry
  rm -rf "$WORK/run-$$"
  exit $rc
}
trap cleanup EXIT INT TERM

# ---- images: build (cached) and push once into the persistent registry storage ----
for img in "${IMAGES[@]}"; do build_image "$img"; done
start_bench_registry "$WORK/reg-push-$$" "$REGDATA" unshaped
for img in "${IMAGES[@]}"; do
  want=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="latest") | .digest' \
         "$(image_layout "$img")/index.json")
  have=$(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
         "http://$REGISTRY_HOST/v2/bench/$img/manifests/latest" 2>/dev/null \
         | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}' | tr -d '\r' || true)
  if [ "$want" != "$have" ]; then log "pushing $img"; push_image "$img" "$REGISTRY_HOST"; fi
done
# eStargz variants (converted once per source image, cached next to it)
estargz_ok=0
if want strata-estargz; then
  conv=${ESTARGZ_CONVERT:-$STRATA_REPO_ROOT/target/release/examples/estargz_convert}
  if [ -x "$conv" ]; then
    estargz_ok=1
    for img in "${IMAGES[@]}"; do
      src=$(image_layout "$img") dst=$(image_layout "$img")-estargz
      stamp=$(sha256sum "$src/index.json" | cut -d' ' -f1)
      if [ "$(cat "$dst/.built-from" 2>/dev/null)" != "$stamp" ]; then
        log "converting $img to eStargz"
        rm -rf "$dst.tmp"
        "$conv" "$src" "$dst.tmp" > "$WORK/estargz-$img.log" 2>&1 || { tail -3 "$WORK/estargz-$img.log" >&2; die "eStargz conversion of $img failed"; }
        echo "$stamp" > "$dst.tmp/.built-from"
        rm -rf "$dst"; mv "$dst.tmp" "$dst"
      fi
      want_d=$(jq -r '.manifests[0].digest' "$dst/index.json")
      have_d=$(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
         "http://$REGISTRY_HOST/v2/bench/$img-estargz/manifests/latest" 2>/dev/null \
         | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}' | tr -d '\r' || true)
      if [ "$want_d" != "$have_d" ]; then
        log "pushing $img-estargz"
        skopeo copy -q --dest-tls-verify=false "oci:$dst:latest" "docker://$REGISTRY_HOST/bench/$img-estargz:latest"
      fi
    done
  else
    notes+=("strata-estargz skipped: no converter at $conv (cargo build --release --example estargz_convert)")
  fi
fi
# strata sidecar indexes (once; stored in the same registry storage)
strata_run_ok=0 strata_index_ok=0
if strata_has_cmd run; then strata_run_ok=1; else
  notes+=("strata-pull/strata-lazy skipped: ${STRATA_BIN:-no strata binary at \$STRATA (default target/release/strata)}${STRATA_BIN:+ has no 'run' command yet}")
fi
if [ $strata_run_ok = 1 ] && strata_has_cmd index; then
  for img in "${IMAGES[@]}"; do
    r=$(mktemp -d "$WORK/strata-index.XXXXXX")
    # shellcheck disable=SC2086 # BENCH_INDEX_ARGS: extra words, e.g. "--span-size 64KiB"
    if STRATA_ROOT=$r "$STRATA_BIN" index "$REGISTRY_HOST/bench/$img:latest" --push ${BENCH_INDEX_ARGS:-} > "$WORK/index-$img.log" 2>&1; then
      strata_index_ok=1
    else
      notes+=("strata index --push failed for $img: $(tail -1 "$WORK/index-$img.log")")
    fi
    rm -rf "$r"
  done
fi
STRATA_RUN_ARGS=${STRATA_RUN_ARGS-}
if [ $strata_run_ok = 1 ] && [ -z "${STRATA_RUN_ARGS}" ] && "$STRATA_BIN" run --help 2>&1 | grep -q -- '--rm'; then
  STRATA_RUN_ARGS=--rm
fi
stop_bench_registry

echo "image,profile,workload,method,run,seconds,bytes_fetched,ok,runtime_start_s" > "$RAW"
echo '{}' > "$TRACES"; echo '{}' > "$LINKS"

RUNDIR=$WORK/run-$$
mkdir -p "$RUNDIR"
cid=0

# write_config LAYOUT ROOTFS ARGV_JSON OUT
write_config() {
  umoci raw runtime-config --image "$1:latest" --rootfs "$2" "$4.tmp"
  jq --argjson a "$3" '.process.args = $a | .process.terminal = false | .root.path = "rootfs"
      | .root.readonly = false | del(.process.rlimits)' "$4.tmp" > "$4"
  rm -f "$4.tmp"
}

# runc_run BUNDLE OUTFILE [strace-log]
runc_run() {
  cid=$((cid + 1))
  local id=sbench-$$-$cid rc=0
  if [ -n "${3:-}" ]; then
    strace -f -qq -o "$3" -e trace=openat,open,execve,clone,clone3,fork,vfork -e signal=none \
      runc run -b "$1" "$id" < /dev/null > "$2" 2>&1 || rc=$?
  else
    runc run -b "$1" "$id" < /dev/null > "$2" 2>&1 || rc=$?
  fi
  runc delete -f "$id" >/dev/null 2>&1 || true
  return $rc
}

record() { echo "$1,$2,$3,$4,$5,$6,$7,$8,${9:-}" >> "$RAW"; }
# When the container's runtime was started, in seconds after `strata run` began (the CLI's
# "run: mounted ms=N" debug line), or empty.
runtime_start() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | awk '/run: mounted/ { for (i = 1; i <= NF; i++) if ($i ~ /^ms=/) { printf "%.3f", substr($i, 4) / 1000; exit } }'
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }

for profile in "${PROFILES[@]}"; do
  log "=== profile $profile"
  start_bench_registry "$RUNDIR/reg-$profile" "$REGDATA" "$profile"
  # link probe on the largest blob of the first image
  lay=$(image_layout "${IMAGES[0]}")
  big_digest=$(python3 -c '
import json,sys,os
lay=sys.argv[1]; idx=json.load(open(lay+"/index.json"))
m=[d for d in idx["manifests"] if d.get("annotations",{}).get("org.opencontainers.image.ref.name")=="latest"][0]
man=json.load(open(os.path.join(lay,"blobs",*m["digest"].split(":"))))
print(max(man["layers"], key=lambda l:l["size"])["digest"])' "$lay")
  read -r rtt_meas bw < <(link_probe "$REGISTRY_HOST" "bench/${IMAGES[0]}" "$big_digest")
  read -r rate delay < <(parse_profile "$profile")
  rtt=$(awk -v d="$delay" -v m="$rtt_meas" 'BEGIN{ if (d>0) printf "%.4f", 2*d/1000; else printf "%.4f", m }')
  jq --arg p "$profile" --argjson rtt "$rtt" --argjson bw "$bw" --argjson rate "$rate" --argjson delay "$delay" \
     '.[$p] = {rtt_s: $rtt, bandwidth_Bps: $bw, rate_mbit: $rate, delay_ms: $delay}' "$LINKS" > "$LINKS.tmp" && mv "$LINKS.tmp" "$LINKS"
  log "link $profile: rtt ${rtt}s, measured $(awk -v b="$bw" 'BEGIN{printf "%.1f", b/1e6}') MB/s"

  for img in "${IMAGES[@]}"; do
    ref=$REGISTRY_HOST/bench/$img:latest
    n=0
    while IFS=$'\t' read -r wl argv; do
      n=$((n + 1))
      [ $quick = 1 ] && [ $n -gt 1 ] && [ -z "$only_wl" ] && break
      if [ -n "$only_wl" ] && [[ ",$only_wl," != *",$wl,"* ]]; then continue; fi
      log "--- $img / $wl / $profile"
      d=$RUNDIR/c
      # classic
      rm -rf "$d"; mkdir -p "$d/bundle"
      oci=$d/oci
      if ! want classic; then
        # the local image layout stands in for the pulled copy (traced and local runs)
        oci=$(image_layout "$img")
        if want local; then
          umoci raw unpack --image "$oci:latest" "$d/bundle/rootfs" > "$d.log" 2>&1
          write_config "$oci" "$d/bundle/rootfs" "$argv" "$d/bundle/config.json"
        fi
      fi
      for r in $(seq 1 "$runs"); do
        want classic || break
        rm -rf "$d"; mkdir -p "$d/bundle"
        drop_caches
        off=$(log_size "$REGISTRY_LOG")
        t0=$(now_s)
        ok=1
        {
          skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$d/oci:latest" &&
          umoci raw unpack --image "$d/oci:latest" "$d/bundle/rootfs" &&
          write_config "$d/oci" "$d/bundle/rootfs" "$argv" "$d/bundle/config.json" &&
          runc_run "$d/bundle" "$d/out"
        } > "$d.log" 2>&1 || ok=0
        t1=$(now_s)
        sleep 0.2
        by=$(registry_bytes_written "$REGISTRY_LOG" "$off")
        [ $ok = 1 ] || { log "classic run failed:"; tail -5 "$d.log" "$d/out" >&2 || true; }
        record "$img" "$profile" "$wl" classic "$r" "$(elapsed "$t0" "$t1")" "$by" "$ok"
      done
      # local (bundle from the last classic run)
      for r in $(seq 1 "$runs"); do
        want local || break
        drop_caches
        t0=$(now_s); ok=1
        runc_run "$d/bundle" "$d/out" || ok=0
        t1=$(now_s)
        record "$img" "$profile" "$wl" local "$r" "$(elapsed "$t0" "$t1")" 0 "$ok"
      done
      # trace of the files the workload reads (once per image/workload, on a fresh unpack)
      key="$img/$wl"
      if [ "$(jq --arg k "$key" 'has($k)' "$TRACES")" != true ]; then
        rm -rf "$d/bundle/rootfs"; mkdir -p "$d/bundle"
        umoci raw unpack --image "$oci:latest" "$d/bundle/rootfs"
        [ -f "$d/bundle/config.json" ] || write_config "$oci" "$d/bundle/rootfs" "$argv" "$d/bundle/config.json"
        drop_caches
        runc_run "$d/bundle" "$d/out" "$d/strace.log" || log "traced run failed (see $d/out)"
        tr=$(python3 "$here/lib/trace_reads.py" "$d/bundle/rootfs" "$d/strace.log" "$(jq -r '.[0]' <<< "$argv")")
        jq --arg k "$key" --argjson v "$tr" '.[$k] = $v' "$TRACES" > "$TRACES.tmp" && mv "$TRACES.tmp" "$TRACES"
        log "workload reads: $(jq -r '"\(.files) files, \(.bytes/1e6*10|round/10) MB, gzip \(.gzip_bytes/1e6*10|round/10) MB, resident \(.resident_bytes/1e6*10|round/10) MB"' <<< "$tr")"
      fi
      rm -rf "$d"
      # strata
      if [ $strata_run_ok = 1 ]; then
        mapfile -t cmd < <(jq -r '.[]' <<< "$argv")
        for method in strata-pull strata-lazy strata-profiled strata-estargz; do
          want $method || continue
          [ $method = strata-estargz ] && [ $estargz_ok = 0 ] && continue
          [ $method != strata-pull ] && [ $method != strata-estargz ] && [ $strata_index_ok = 0 ] && continue
          mref=$ref
          [ $method = strata-estargz ] && mref=$REGISTRY_HOST/bench/$img-estargz:latest
          if [ $method = strata-profiled ]; then
            # the publisher: one run records what the workload reads, `profile push` publishes it
            pr=$(mktemp -d "$RUNDIR/proot.XXXXXX")
            if ! { STRATA_ROOT=$pr "$STRATA_BIN" run $STRATA_RUN_ARGS "$ref" "${cmd[@]}" &&
                   STRATA_ROOT=$pr "$STRATA_BIN" profile push "$ref"; } > "$RUNDIR/profile.log" 2>&1 < /dev/null; then
              notes+=("strata profile push failed for $img/$wl: $(tail -1 "$RUNDIR/profile.log")")
              rm -rf "$pr"; continue
            fi
            awk -v p="$pr" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
            rm -rf "$pr"
          fi
          for r in $(seq 1 "$runs"); do
            sr=$(mktemp -d "$RUNDIR/sroot.XXXXXX")
            # plain lazy runs must not use a profile published by an earlier strata-profiled round
            case $method in strata-lazy|strata-estargz) echo '{"prefetch-profile": "local"}' > "$sr/config.json" ;; *) echo '{}' > "$sr/config.json" ;; esac
            # BENCH_STRATA_CONFIG: extra config keys of every measured root (A/B of a setting)
            jq -s '.[0] * .[1]' "$sr/config.json" <(echo "${BENCH_STRATA_CONFIG:-{\}}") > "$sr/config.json.tmp" && mv "$sr/config.json.tmp" "$sr/config.json"
            drop_caches
            off=$(log_size "$REGISTRY_LOG")
            t0=$(now_s); ok=1
            if [ $method = strata-pull ]; then
              { STRATA_ROOT=$sr "$STRATA_BIN" pull "$ref" &&
                STRATA_ROOT=$sr "$STRATA_BIN" run $STRATA_RUN_ARGS "$ref" "${cmd[@]}"; } \
                > "$RUNDIR/strata.log" 2>&1 < /dev/null || ok=0
            else
              STRATA_ROOT=$sr RUST_LOG=${RUST_LOG:-strata::cli::run=debug} "$STRATA_BIN" run $STRATA_RUN_ARGS "$mref" "${cmd[@]}" \
                > "$RUNDIR/strata.log" 2>&1 < /dev/null || ok=0
            fi
            t1=$(now_s)
            sleep 0.2
            by=$(registry_bytes_written "$REGISTRY_LOG" "$off")
            [ $ok = 1 ] || { log "$method run failed:"; tail -5 "$RUNDIR/strata.log" >&2; }
            st=""; [ $method = strata-pull ] || st=$(runtime_start "$RUNDIR/strata.log")
            record "$img" "$profile" "$wl" "$method" "$r" "$(elapsed "$t0" "$t1")" "$by" "$ok" "$st"
            if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
              # RUST_LOG reaches the CLI and the daemon it starts; keep both logs per run
              mkdir -p "$BENCH_KEEP_LOGS"
              cp "$RUNDIR/strata.log" "$BENCH_KEEP_LOGS/$img-$wl-$method-$r.cli.log" 2>/dev/null || true
              cp "$sr/daemon.log" "$BENCH_KEEP_LOGS/$img-$wl-$method-$r.daemon.log" 2>/dev/null || true
            fi
            # leave nothing mounted behind, then remove the root
            awk -v p="$sr" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
            rm -rf "$sr" 2>/dev/null || log "could not remove $sr"
          done
        done
      fi
    done < <(workloads_for "$img")
  done
  stop_bench_registry
done

printf '%s\n' "${notes[@]+"${notes[@]}"}" > "$RES/startup-notes.txt"
python3 "$here/lib/summarize.py" startup "$RES" "$(machine_json)" \
  "scripts/bench-startup.sh $([ $quick = 1 ] && echo --quick) --runs $runs --images $images --profiles $profiles$([ "$methods" = "$ALL_METHODS" ] || echo " --methods $methods")"
cat "$RES/startup.md"
