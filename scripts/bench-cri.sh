#!/usr/bin/env bash
# CRI cold start (issue 18): a kubelet's calls against Debian's containerd 1.6, its snapshotter
# strata's remote snapshotter or containerd's own overlayfs, same registry, same link
# (scripts/lib/netns.sh). The CRI client is examples/cri_bench.rs (no crictl here: no Go).
#
#   scripts/bench-cri.sh [--runs N] [--image big] [--profiles 200mbit-10ms,unshaped]
#                        [--snapshotters strata,overlayfs] [--parts cri,fs]
#
# Snapshotters: strata (its default `snapshotter-rootfs: union`: a container's rootfs is one
# strata union mount of the image), strata-overlay (`snapshotter-rootfs: overlay`: kernel
# overlayfs over the layer views, as the peer snapshotters do), overlayfs (containerd's own).
# BENCH_STRATA_CONFIG: the strata root's config.json for "strata" (default {}).
#
# Part "cri", per profile x run x snapshotter: a fresh containerd directory, a fresh strata
# root (its daemon started first, as on a node), the sandbox image pulled untimed from a
# second, unshaped loopback registry (a node has its pause image), the page cache dropped,
# then timed: PullImage, RunPodSandbox (host network), CreateContainer + StartContainer, the
# container's exit. Registry bytes from the access log (bench registry only). The strata side
# needs the sidecar index: `strata index REF --push` once, as bench-startup.sh's strata-lazy.
#
# Part "fs" (the first profile): the two filesystem paths under the same workloads, without
# containerd in the timed part. "overlay over views": containerd + strata snapshotter
# PullImage (the layer views mounted by the strata daemon), then kernel overlayfs with the
# views as lowers (`mount -t overlay -o lowerdir=TOP:...:BOTTOM`, what the snapshotter gives
# a container minus the upper); "union mount": `strata mount --no-prefetch REF DIR` (one
# FUSE union of the image, what `strata run` uses). Fresh root each run; in each:
#   numpy-cold     page cache dropped, empty chunk cache: chroot DIR python3 -c 'import numpy'
#   numpy-cached   page cache dropped again, chunk cache holding what the first run fetched
#   numpy-warm     again, nothing dropped
#   walk-first     chroot DIR sh -c 'find /usr -type f -print0 | xargs -0 cat' >/dev/null
#                  (fetches most of the image)
#   walk-cached    page cache dropped, chunk cache full
#   walk-warm      again, nothing dropped
#   find-warm      chroot DIR find /usr -type f (the walk without the reads), nothing dropped
#
# Results: bench-results/cri-raw.csv, cri-fs-raw.csv, cri.md. Environment: STRATA (binary,
# default target/release/strata), CRI_BENCH (default target/release/examples/cri_bench:
# cargo build --release --example cri_bench), BENCH_WORK (default /var/tmp/strata-bench,
# registry storage shared with bench-startup.sh), BENCH_RESULTS, BENCH_KEEP_LOGS (a directory:
# containerd and strata logs of every run are kept there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/images.sh"
. "$here/lib/netns.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (containerd, drop_caches, mounts, network namespaces)"

runs=3 img=big profiles=200mbit-10ms snapshotters=strata,overlayfs parts=cri,fs
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift ;;
    --image) img=$2; shift ;;
    --profiles) profiles=$2; shift ;;
    --snapshotters) snapshotters=$2; shift ;;
    --parts) parts=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
IFS=, read -r -a PROFILES <<< "$profiles"
IFS=, read -r -a SNAPS <<< "$snapshotters"
for p in "${PROFILES[@]}"; do parse_profile "$p" >/dev/null; done
part() { [[ ",$parts," == *",$1,"* ]]; }

ensure_pkgs containerd runc docker-registry busybox-static skopeo umoci jq curl iproute2
STRATA_BIN=$(strata_bin)
[ -n "$STRATA_BIN" ] || die "no strata binary (cargo build --release, or set STRATA)"
CRI_BENCH=${CRI_BENCH:-$STRATA_REPO_ROOT/target/release/examples/cri_bench}
[ -x "$CRI_BENCH" ] || die "no $CRI_BENCH (cargo build --release --example cri_bench)"
WORK=${BENCH_WORK:-/var/tmp/strata-bench}
REGDATA=$WORK/registry-data
RES=$(bench_results_dir)
RUNDIR=$WORK/cri-$$
mkdir -p "$RUNDIR"
PAUSE_PID=""

# unmount_under DIR: every mount below DIR, deepest first
unmount_under() {
  awk -v p="$1" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
cleanup() {
  local rc=$?
  for sr in "$RUNDIR"/sroot.*; do
    [ -d "$sr" ] && STRATA_ROOT=$sr timeout -k 5 30 "$STRATA_BIN" daemon --stop >/dev/null 2>&1 || true
  done
  unmount_under "$RUNDIR"
  stop_bench_registry
  [ -z "$PAUSE_PID" ] || { kill "$PAUSE_PID" 2>/dev/null; wait "$PAUSE_PID" 2>/dev/null || true; }
  rm -rf "$RUNDIR"
  exit $rc
}
trap cleanup EXIT INT TERM

# ---- the image and its sidecar index in the bench registry storage ----
build_image "$img"
start_bench_registry "$RUNDIR/reg-push" "$REGDATA" unshaped
log "pushing $img (existing blobs skipped) and its sidecar index"
push_image "$img" "$REGISTRY_HOST"
r=$(mktemp -d "$RUNDIR/index.XXXXXX")
STRATA_ROOT=$r timeout -k 5 600 "$STRATA_BIN" index "$REGISTRY_HOST/bench/$img:latest" --push > "$RUNDIR/index.log" 2>&1 \
  || { tail -3 "$RUNDIR/index.log" >&2; die "strata index --push failed"; }
STRATA_ROOT=$r timeout -k 5 30 "$STRATA_BIN" daemon --stop >/dev/null 2>&1 || true
rm -rf "$r"
stop_bench_registry

# ---- the sandbox image: busybox sleeping, on its own unshaped loopback registry ----
start_registry "$RUNDIR/pause-reg"
PAUSE_PID=$REGISTRY_PID PAUSE_HOST=$REGISTRY_HOST
build_busybox_image "$RUNDIR/pause" "$PAUSE_HOST/pause:v1" >/dev/null
umoci config --image "$RUNDIR/pause/oci:img" --config.entrypoint /bin/busybox \
  --config.cmd sleep --config.cmd 1000000000
skopeo copy -q --dest-tls-verify=false "oci:$RUNDIR/pause/oci:img" "docker://$PAUSE_HOST/pause:v1"
SANDBOX=$PAUSE_HOST/pause:v1

# new_root: a fresh strata root with its daemon serving (prints the root)
new_root() {
  local sr
  sr=$(mktemp -d "$RUNDIR/sroot.XXXXXX")
  echo "${1:-{\}}" > "$sr/config.json"
  STRATA_ROOT=$sr timeout -k 5 60 "$STRATA_BIN" daemon > "$sr.daemon-start.log" 2>&1 \
    || { cat "$sr.daemon-start.log" >&2; die "strata daemon did not start"; }
  for _ in $(seq 1 300); do [ -S "$sr/containerd-snapshotter.sock" ] && break; sleep 0.02; done
  [ -S "$sr/containerd-snapshotter.sock" ] || die "no snapshotter socket in $sr"
  echo "$sr"
}
# end_root ROOT [NAME]: stop its daemon, unmount what is left, keep its log, remove it
end_root() {
  STRATA_ROOT=$1 timeout -k 5 60 "$STRATA_BIN" daemon --stop >/dev/null 2>&1 || true
  unmount_under "$1"
  if [ -n "${BENCH_KEEP_LOGS:-}" ] && [ -n "${2:-}" ]; then
    mkdir -p "$BENCH_KEEP_LOGS"; cp "$1/daemon.log" "$BENCH_KEEP_LOGS/$2.strata.log" 2>/dev/null || true
  fi
  rm -rf "$1" "$1.daemon-start.log"
}
keep_log() { [ -z "${BENCH_KEEP_LOGS:-}" ] || { mkdir -p "$BENCH_KEEP_LOGS"; echo "--keep-log $BENCH_KEEP_LOGS/$1.containerd.log"; }; }

CMD=(python3 -c 'import numpy')
CRI_RAW=$RES/cri-raw.csv FS_RAW=$RES/cri-fs-raw.csv
MACHINE=$(machine_json)
START_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ) LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- part cri ----
if part cri; then
  echo "profile,snapshotter,run,pull_s,sandbox_s,start_s,run_s,total_s,bytes,ok" > "$CRI_RAW"
  for profile in "${PROFILES[@]}"; do
    log "=== CRI, profile $profile"
    start_bench_registry "$RUNDIR/reg-$profile" "$REGDATA" "$profile"
    ref=$REGISTRY_HOST/bench/$img:latest
    for r in $(seq 1 "$runs"); do
      # alternate the order, so a slow spell of the machine does not hit one side only
      order=("${SNAPS[@]}"); [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${SNAPS[@]}" | tac))
      for snap in "${order[@]}"; do
        sargs=(); sr=""
        sname=$snap
        case $snap in
          strata) sr=$(new_root "${BENCH_STRATA_CONFIG:-{\}}"); sargs=(--strata-root "$sr") ;;
          strata-overlay) sr=$(new_root '{"snapshotter-rootfs": "overlay"}')
                          sargs=(--strata-root "$sr"); sname=strata ;;
        esac
        off=$(log_size "$REGISTRY_LOG") ok=1
        out=$(timeout -k 10 900 "$CRI_BENCH" --snapshotter "$sname" "${sargs[@]}" --work "$RUNDIR/ctd" \
                --image "$ref" --sandbox-image "$SANDBOX" --registry "$REGISTRY_HOST" --registry "$PAUSE_HOST" \
                --drop-caches $(keep_log "$profile-$snap-$r") -- "${CMD[@]}" 2> "$RUNDIR/cri.err") || ok=0
        sleep 0.2
        by=$(registry_bytes_written "$REGISTRY_LOG" "$off" || true)  # grep finds nothing: 0
        [ $ok = 1 ] || { log "$snap run failed:"; tail -20 "$RUNDIR/cri.err" >&2; }
        [ -z "$sr" ] || end_root "$sr" "$profile-$snap-$r"
        [ -n "$out" ] || out='{}'
        f() { jq -r ".$1 // \"\"" <<< "$out"; }
        echo "$profile,$snap,$r,$(f pull_s),$(f sandbox_s),$(f start_s),$(f run_s),$(f total_s),$by,$ok" >> "$CRI_RAW"
        log "$snap run $r: $(f total_s) s total (pull $(f pull_s)), $((by / 1000000)) MB"
      done
    done
    stop_bench_registry
  done
fi

# ---- part fs ----
# views_lowerdir ROOT: the remote snapshots' layer views, top layer first, as a lowerdir= list
views_lowerdir() {
  python3 - "$1" "$(image_layout "$img")" <<'PY'
import json, os, sys
root, lay = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(lay, "index.json")))
m = [d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
man = json.load(open(os.path.join(lay, "blobs", *m["digest"].split(":"))))
recs = json.load(open(os.path.join(root, "snapshots/meta.json")))["snapshots"].values()
by_layer = {r["remote"]["layer"]: r["id"] for r in recs if r.get("remote")}
ids = [by_layer.get(l["digest"]) for l in man["layers"]]
if None in ids:
    sys.exit("not every layer is a remote snapshot: %s" % ids)
print(":".join(os.path.join(root, "snapshots", str(i), "layer") for i in reversed(ids)))
PY
}
# fs_step SYSTEM RUN STEP DROP(0|1) DIR ARGV...: time one chroot run, record it
fs_step() {
  local sys=$1 r=$2 step=$3 drop=$4 dir=$5 t0 t1 off ok=1 by; shift 5
  [ "$drop" = 1 ] && drop_caches
  off=$(log_size "$REGISTRY_LOG")
  t0=$(now_s)
  chroot "$dir" "$@" < /dev/null > /dev/null 2> "$RUNDIR/fs.err" || ok=0
  t1=$(now_s)
  sleep 0.2
  by=$(registry_bytes_written "$REGISTRY_LOG" "$off" || true)  # grep finds nothing: 0
  [ $ok = 1 ] || { log "$sys $step failed:"; tail -5 "$RUNDIR/fs.err" >&2; }
  echo "$profile,$sys,$r,$step,$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'),$by,$ok" >> "$FS_RAW"
  log "$sys run $r $step: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s, $((by / 1000000)) MB"
}
fs_steps() {
  local sys=$1 r=$2 dir=$3
  fs_step "$sys" "$r" numpy-cold 1 "$dir" python3 -c 'import numpy'
  fs_step "$sys" "$r" numpy-cached 1 "$dir" python3 -c 'import numpy'
  fs_step "$sys" "$r" numpy-warm 0 "$dir" python3 -c 'import numpy'
  fs_step "$sys" "$r" walk-first 0 "$dir" sh -c 'find /usr -type f -print0 | xargs -0 cat'
  fs_step "$sys" "$r" walk-cached 1 "$dir" sh -c 'find /usr -type f -print0 | xargs -0 cat'
  fs_step "$sys" "$r" walk-warm 0 "$dir" sh -c 'find /usr -type f -print0 | xargs -0 cat'
  fs_step "$sys" "$r" find-warm 0 "$dir" find /usr -type f
}
if part fs; then
  profile=${PROFILES[0]}
  echo "profile,system,run,step,seconds,bytes,ok" > "$FS_RAW"
  log "=== filesystem paths, profile $profile"
  start_bench_registry "$RUNDIR/reg-fs-$profile" "$REGDATA" "$profile"
  ref=$REGISTRY_HOST/bench/$img:latest
  for r in $(seq 1 "$runs"); do
    order=(overlay-views union); [ $((r % 2)) = 0 ] && order=(union overlay-views)
    for sys in "${order[@]}"; do
      sr=$(new_root) m=$RUNDIR/merged
      mkdir -p "$m"
      if [ $sys = overlay-views ]; then
        timeout -k 10 300 "$CRI_BENCH" --snapshotter strata --strata-root "$sr" --work "$RUNDIR/ctd" \
          --image "$ref" --sandbox-image "$SANDBOX" --registry "$REGISTRY_HOST" --registry "$PAUSE_HOST" \
          --pull-only -- true > /dev/null 2> "$RUNDIR/cri.err" || { tail -20 "$RUNDIR/cri.err" >&2; die "PullImage failed"; }
        lower=$(views_lowerdir "$sr")
        mount -t overlay overlay -o "lowerdir=$lower" "$m"
      else
        STRATA_ROOT=$sr timeout -k 10 300 "$STRATA_BIN" mount --no-prefetch "$ref" "$m" > "$RUNDIR/mount.log" 2>&1 \
          || { cat "$RUNDIR/mount.log" >&2; die "strata mount failed"; }
      fi
      fs_steps "$sys" "$r" "$m"
      umount "$m" || umount -l "$m"
      end_root "$sr" "fs-$sys-$r"
    done
  done
  stop_bench_registry
fi

# ---- summary ----
python3 - "$CRI_RAW" "$FS_RAW" "$MACHINE" "$START_UTC" "$LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)" \
  "scripts/bench-cri.sh --runs $runs --image $img --profiles $profiles --snapshotters $snapshotters --parts $parts" \
  "$parts" > "$RES/cri.md" <<'PY'
import csv, json, statistics, sys, datetime
cri_raw, fs_raw, machine, start, load, command, parts = sys.argv[1:8]
m = json.loads(machine)
end = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")
print("`%s`, %s–%s UTC, load average (1/5/15 min) before / after: %s; %d vCPU, kernel %s.\n"
      % (command, start.replace("T", " ").rstrip("Z")[:16], end, load, m["cpus"], m["kernel"]))
def st(v):
    return "%.2f s (%.2f–%.2f)" % (statistics.median(v), min(v), max(v)) if v else "—"
if "cri" in parts.split(","):
    rows = list(csv.DictReader(open(cri_raw)))
    print("| link | snapshotter | PullImage | RunPodSandbox | Create+Start | start → exit | **total** | registry bytes | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    meds = {}
    for prof in dict.fromkeys(r["profile"] for r in rows):
        for snap in dict.fromkeys(r["snapshotter"] for r in rows):
            rs = [r for r in rows if r["profile"] == prof and r["snapshotter"] == snap]
            good = [r for r in rs if r["ok"] == "1"]
            col = lambda k: [float(r[k]) for r in good if r[k]]
            by = [int(r["bytes"]) for r in good]
            tot = col("total_s")
            if tot: meds[(prof, snap)] = statistics.median(tot)
            print("| %s | %s | %s | %s | %s | %s | **%s** | %s | %d/%d |" % (prof, snap, st(col("pull_s")), st(col("sandbox_s")),
                  st(col("start_s")), st(col("run_s")), st(tot),
                  "%.1f MB" % (statistics.median(by) / 1e6) if by else "—", len(good), len(rs)))
    for prof in dict.fromkeys(p for p, _ in meds):
        if (prof, "strata") in meds and (prof, "overlayfs") in meds:
            print("\n%s: overlayfs / strata = %.1fx (median totals)." % (prof, meds[(prof, "overlayfs")] / meds[(prof, "strata")]))
    print()
if "fs" in parts.split(","):
    rows = list(csv.DictReader(open(fs_raw)))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    print("| step | " + " | ".join(systems) + " | " + " / ".join(systems) + " |")
    print("|---|" + "---|" * (len(systems) + 1))
    for step in dict.fromkeys(r["step"] for r in rows):
        cells, meds = [], []
        for s in systems:
            rs = [r for r in rows if r["system"] == s and r["step"] == step and r["ok"] == "1"]
            v = [float(r["seconds"]) for r in rs]
            by = [int(r["bytes"]) for r in rs]
            cells.append(st(v) + (", %.1f MB" % (statistics.median(by) / 1e6) if by and statistics.median(by) > 0 else ""))
            meds.append(statistics.median(v) if v else None)
        ratio = "%.2f" % (meds[0] / meds[1]) if len(meds) == 2 and all(meds) else "—"
        print("| %s | %s | %s |" % (step, " | ".join(cells), ratio))
PY
cat "$RES/cri.md"
