#!/usr/bin/env bash
# Filesystem benchmark: the same image data read through native ext4, kernel overlayfs,
# fuse-overlayfs and strata's FUSE mount.
#
#   scripts/bench-fs.sh [--quick] [--runs N] [--systems native,overlayfs,fuse-overlayfs,strata-overlay,strata]
#                       [--scratch-tmpfs]   (uppers, work dirs and scratch dirs on a tmpfs mounted
#                                            per run: metadata figures without ext4's allocator
#                                            noise, see setup_sys)
#                       [--tests read,walk,meta,upper]   (default read,walk: read = seqread +
#                                              randread; walk = walk + create/unlink; meta = the
#                                              metadata write workloads below; upper = fio on a
#                                              new file in the upper; `--tests walk` skips the fio
#                                              file; `--tests meta`/`upper` alone need only
#                                              debian-minbase)
#
# Data: image "fiodata" (one layer, /data/fio.dat = 1 GiB random bytes) and image "smallfiles"
# (debian minbase + a layer with 100k small files under /data), both built by scripts/lib/images.sh.
#   native          the layers' tar contents extracted to ext4 directories (fio file; smallfiles
#                   rootfs unpacked by umoci); writes go to an ext4 scratch dir
#   overlayfs       kernel overlay, lowerdir = every layer extracted to its own directory (OCI
#                   whiteouts turned into overlay whiteouts), a fresh upper per run
#   fuse-overlayfs  the same lowers and a fresh upper through fuse-overlayfs
#   strata-overlay  `strata overlay -o lowerdir=...,upperdir=...,workdir=...` on the same lowers as
#                   fuse-overlayfs (strata's fuse-overlayfs-compatible mode); strata-overlay-pt:
#                   the same with the `passthrough` option (FUSE passthrough for every file)
#   strata          `strata mount REF DIR` from a local registry with an empty STRATA_ROOT per run
#                   ("cold" = fetched lazily); strata-cached: the same root mounted again after a
#                   full read (all chunks local), page cache dropped; strata-passthrough: the same
#                   with `--passthrough`. Mounts run `strata mount --foreground --upper DIR`
#                   (+ $STRATA_MOUNT_ARGS, e.g. --no-prefetch). Skipped with a note while the
#                   strata binary has no `mount` command.
#   strata-kovl     `strata mount --kernel-overlay --foreground --upper DIR REF DIR` with an empty
#                   STRATA_ROOT per run: kernel overlayfs over the image's layers served as
#                   lazy read-only strata layer views (metadata writes never reach FUSE)
# Tests (every run: fresh mount, drop_caches, cold pass, then warm pass on the same mount):
#   seqread   fio read, bs=1M, the whole 1 GiB file (--quick: first 256 MiB) MB/s
#   randread  fio randread, bs=4k, time based (10 s; --quick 3 s)      IOPS
#   walk      find /data -printf (lstat of 100k entries)               seconds
#   create / unlink  10k files of 100 bytes in a new directory         seconds
#   meta-*    (--tests meta) in a new directory: meta-create (10k files of 100 bytes, open
#             O_CREAT|O_EXCL + write + close), meta-rename (each renamed in place), meta-unlink,
#             meta-mkdir / meta-rmdir (10k directories), meta-tarx (`tar xf` of an archive of
#             10k files of 100 bytes in 100 directories, from native disk)      seconds
#             With only meta/upper selected the lower image is debian-minbase (the workloads
#             write into a new directory, the lower's content does not matter).
#   upper-*   (--tests upper) fio on a new file in the scratch directory (the upper; native:
#             the scratch dir): upper-seqwrite (write bs=1M, the fio size) MB/s, then on that
#             file upper-seqread (bs=1M, warm) MB/s, upper-randread4k and upper-randwrite4k
#             (bs=4k, time based) IOPS
# Results: bench-results/fs-raw.csv, fs-summary.csv, fs.json, fs.md. Default 5 runs; --quick:
# 1 run, 256 MiB of the fio file, 3 s random reads, no passthrough variants (strata-overlay-pt,
# strata-passthrough): about 4.5 minutes on 2 vCPUs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/registry.sh"
. "$here/lib/images.sh"
. "$here/lib/netns.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (mounts, drop_caches)"
scratch_tmpfs=0 quick=0 runs="" systems="native,overlayfs,fuse-overlayfs,strata-overlay,strata" tests="read,walk"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --systems) systems=$2; shift ;;
    --tests) tests=$2; shift ;;
    --scratch-tmpfs) scratch_tmpfs=1 ;;
    -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[ -n "$runs" ] || { [ $quick = 1 ] && runs=1 || runs=5; }
rand_rt=10; fio_size=1G
if [ $quick = 1 ]; then rand_rt=3; fio_size=256M; fi
IFS=, read -r -a SYSTEMS <<< "$systems"
want() { [[ ",$tests," == *",$1,"* ]]; }
want read || want walk || want meta || want upper || die "--tests takes read, walk, meta and/or upper"
# Images behind the lowers: fiodata + smallfiles for read/walk; debian-minbase alone for meta/upper.
if want read || want walk; then DATA_IMGS=(fiodata smallfiles); else DATA_IMGS=(debian-minbase); fi

ensure_pkgs fio fuse-overlayfs fuse3 umoci skopeo jq docker-registry
WORK=${BENCH_WORK:-/var/tmp/strata-bench}
FSW=$WORK/fs
RES=$(bench_results_dir)
RAW=$RES/fs-raw.csv
STRATA_BIN=$(strata_bin)
notes=()
MOUNTS=()   # mount points to unmount on exit (reverse order)
STRATA_PIDS=()

cleanup() {
  local rc=$? i
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do
    mountpoint -q "${MOUNTS[$i]}" 2>/dev/null && umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  for i in "${STRATA_PIDS[@]+"${STRATA_PIDS[@]}"}"; do kill "$i" 2>/dev/null || true; done
  if [ $scratch_tmpfs = 1 ] && mountpoint -q "$FSW/run" 2>/dev/null; then umount -l "$FSW/run" 2>/dev/null || true; fi
  stop_bench_registry
  exit $rc
}
trap cleanup EXIT INT TERM

for img in debian-minbase "${DATA_IMGS[@]}"; do build_image "$img"; done

# layer_dirs IMAGE -> extracted layer directories, bottom first (cached under $FSW/layers)
layer_dirs() {
  local lay; lay=$(image_layout "$1")
  python3 - "$lay" <<'PY'
import json, sys, os
lay = sys.argv[1]
idx = json.load(open(lay + "/index.json"))
m = [d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
man = json.load(open(os.path.join(lay, "blobs", *m["digest"].split(":"))))
for l in man["layers"]:
    print(l["digest"].split(":")[1])
PY
}
extract_layer() {  # extract_layer IMAGE HEX -> $FSW/layers/HEX
  local d=$FSW/layers/$2
  [ -f "$d.done" ] && return 0
  rm -rf "$d"; mkdir -p "$d"
  log "extracting layer ${2:0:12} of $1"
  tar --numeric-owner --xattrs --xattrs-include='*' -xzf "$(image_layout "$1")/blobs/sha256/$2" -C "$d"
  # OCI whiteouts -> overlayfs whiteouts
  python3 - "$d" <<'PY'
import os, sys
root = sys.argv[1]
for dp, dns, fns in os.walk(root):
    for f in fns:
        if not f.startswith(".wh."):
            continue
        p = os.path.join(dp, f)
        os.unlink(p)
        if f == ".wh..wh..opq":
            os.setxattr(dp, "trusted.overlay.opaque", b"y")
        else:
            os.mknod(os.path.join(dp, f[4:]), 0o600 | 0o020000, os.makedev(0, 0))
PY
  touch "$d.done"
}
LOWERS=()   # top first, for lowerdir=
for img in "${DATA_IMGS[@]}"; do
  mapfile -t hexes < <(layer_dirs "$img")
  for h in "${hexes[@]}"; do extract_layer "$img" "$h"; done
  for ((i=${#hexes[@]}-1; i>=0; i--)); do LOWERS+=("$FSW/layers/${hexes[$i]}"); done
done
# fiodata's layer first (top), then smallfiles' layers top to bottom
LOWERDIR=$(IFS=:; echo "${LOWERS[*]}")
FIO_LAYER=${LOWERS[0]}
if [[ " ${DATA_IMGS[*]} " == *" smallfiles "* ]] && [ ! -f "$FSW/native-smallfiles.done" ]; then
  rm -rf "$FSW/native-smallfiles"
  umoci raw unpack --image "$(image_layout smallfiles):latest" "$FSW/native-smallfiles" >/dev/null
  touch "$FSW/native-smallfiles.done"
fi

# strata availability
strata_ok=0
if [[ " ${SYSTEMS[*]} " == *" strata "* || " ${SYSTEMS[*]} " == *" strata-kovl "* ]]; then
  if strata_has_cmd mount; then strata_ok=1
  else notes+=("strata, strata-cached, strata-passthrough: pending — ${STRATA_BIN:-no strata binary at \$STRATA (default target/release/strata)}${STRATA_BIN:+ has no 'mount' command yet}; run scripts/bench-fs.sh again when it has")
  fi
fi
if [ $strata_ok = 1 ]; then
  start_bench_registry "$FSW/reg" "$WORK/registry-data" unshaped
  for img in "${DATA_IMGS[@]}"; do
    push_image "$img" "$REGISTRY_HOST"
    r=$(mktemp -d "$FSW/sidx.XXXXXX")
    STRATA_ROOT=$r "$STRATA_BIN" index "$(image_ref "$img" "$REGISTRY_HOST")" --push > "$FSW/index-$img.log" 2>&1 \
      || notes+=("strata index --push $img failed: $(tail -1 "$FSW/index-$img.log")")
    rm -rf "$r"
  done
fi

# ---- systems: setup_sys SYS sets FIOFILE TREE WDIR; teardown_sys SYS ----
strata_mount() {  # strata_mount ROOT REF DIR [extra args]: foreground server, writable (upper)
  local root=$1 ref=$2 dir=$3; shift 3
  local up=$FSW/run/upper-$(basename "$dir")
  mkdir -p "$dir" "$up"
  STRATA_ROOT=$root "$STRATA_BIN" mount --foreground --upper "$up" ${STRATA_MOUNT_ARGS:-} "$@" "$ref" "$dir" \
    >> "$FSW/strata-mount.log" 2>&1 &
  STRATA_PIDS+=($!)
  MOUNTS+=("$dir")
  for _ in $(seq 1 600); do mountpoint -q "$dir" && return 0; sleep 0.1; done
  tail -5 "$FSW/strata-mount.log" >&2; return 1
}
setup_sys() {
  local s=$1
  rm -rf "$FSW/run"; mkdir -p "$FSW/run"
  # ext4 without a journal (as on the benchmark VMs) skips inodes freed in the last 60-360 s
  # when it allocates, scanning past them: a run whose directories land in the block group
  # the previous system's run just emptied creates several times slower (kernel overlayfs
  # 10k creates: 0.6 s fresh, 5.2 s there). TOPDIR spreads the run's directories over the
  # groups (Orlov), so each system starts on a group without such inodes.
  chattr +T "$FSW/run" 2>/dev/null || true
  if [ $scratch_tmpfs = 1 ]; then mount -t tmpfs -o size=4g,mode=755 tmpfs "$FSW/run"; fi
  case $s in
    native)
      FIOFILE=$FIO_LAYER/data/fio.dat; TREE=$FSW/native-smallfiles; WDIR=$FSW/run/scratch ;;
    overlayfs|fuse-overlayfs|strata-overlay|strata-overlay-pt)
      mkdir -p "$FSW/run/upper" "$FSW/run/work" "$FSW/run/merged"
      local o="lowerdir=$LOWERDIR,upperdir=$FSW/run/upper,workdir=$FSW/run/work"
      case $s in
        overlayfs) mount -t overlay overlay -o "$o" "$FSW/run/merged" ;;
        fuse-overlayfs) fuse-overlayfs -o "$o" "$FSW/run/merged" ;;
        strata-overlay) STRATA_ROOT=$FSW/strata-overlay-root "$STRATA_BIN" overlay -o "$o" "$FSW/run/merged" ;;
        strata-overlay-pt) STRATA_ROOT=$FSW/strata-overlay-root "$STRATA_BIN" overlay -o "$o,passthrough" "$FSW/run/merged" ;;
      esac
      MOUNTS+=("$FSW/run/merged")
      FIOFILE=$FSW/run/merged/data/fio.dat; TREE=$FSW/run/merged; WDIR=$FSW/run/merged/tmp/scratch ;;
    strata|strata-cached|strata-passthrough|strata-kovl)
      local root=$FSW/strata-root extra=()
      if [ "$s" = strata ] || [ "$s" = strata-kovl ]; then rm_root "$root"; fi
      [ "$s" = strata-passthrough ] && extra=(--passthrough)
      [ "$s" = strata-kovl ] && extra=(--kernel-overlay)
      mkdir -p "$root"
      if [ "${DATA_IMGS[0]}" = fiodata ]; then
        strata_mount "$root" "$(image_ref fiodata "$REGISTRY_HOST")" "$FSW/run/m-fio" "${extra[@]+"${extra[@]}"}"
      fi
      strata_mount "$root" "$(image_ref "${DATA_IMGS[-1]}" "$REGISTRY_HOST")" "$FSW/run/m-small" "${extra[@]+"${extra[@]}"}"
      FIOFILE=$FSW/run/m-fio/data/fio.dat; TREE=$FSW/run/m-small; WDIR=$FSW/run/m-small/tmp/scratch ;;
  esac
}
rm_root() {  # the root of a just-stopped strata may still be written for a moment
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do rm -rf "$1" 2>/dev/null && return 0; sleep 0.5; done
  rm -rf "$1"
}
teardown_sys() {
  local m i
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do
    m=${MOUNTS[$i]}
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  MOUNTS=()
  # foreground servers exit once unmounted; give them 10 s, then TERM
  for i in "${STRATA_PIDS[@]+"${STRATA_PIDS[@]}"}"; do
    for _ in $(seq 1 100); do kill -0 "$i" 2>/dev/null || break; sleep 0.1; done
    kill "$i" 2>/dev/null || true; wait "$i" 2>/dev/null || true
  done
  STRATA_PIDS=()
  if [ $scratch_tmpfs = 1 ]; then umount "$FSW/run" 2>/dev/null || umount -l "$FSW/run"; fi
  rm_root "$FSW/run"
}

echo "system,test,run,value,unit,ok" > "$RAW"
rec() { echo "$1,$2,$3,$4,$5,$6" >> "$RAW"; }

fio_seq() {  # -> MB/s
  fio --name=seq --filename="$1" --readonly --invalidate=0 --rw=read --bs=1M --size=$fio_size --ioengine=psync \
      --output-format=json 2>/dev/null | jq '.jobs[0].read.bw_bytes / 1e6'
}
fio_rand() {  # -> IOPS
  fio --name=rand --filename="$1" --readonly --invalidate=0 --rw=randread --bs=4k --size=$fio_size --ioengine=psync \
      --time_based --runtime="$rand_rt" --randrepeat=1 --output-format=json 2>/dev/null | jq '.jobs[0].read.iops'
}
upper_io() {  # upper_io DIR -> "seqwrite_MBs seqread_MBs randread_IOPS randwrite_IOPS"
  local f=$1/fio-upper.dat w r rr rw
  mkdir -p "$1"
  w=$(fio --name=w --filename="$f" --rw=write --bs=1M --size=$fio_size --ioengine=psync \
      --output-format=json 2>/dev/null | jq '.jobs[0].write.bw_bytes / 1e6') || return 1
  r=$(fio --name=r --filename="$f" --readonly --invalidate=0 --rw=read --bs=1M --size=$fio_size \
      --ioengine=psync --output-format=json 2>/dev/null | jq '.jobs[0].read.bw_bytes / 1e6') || return 1
  rr=$(fio --name=rr --filename="$f" --readonly --invalidate=0 --rw=randread --bs=4k --size=$fio_size \
      --ioengine=psync --time_based --runtime="$rand_rt" --randrepeat=1 --output-format=json 2>/dev/null \
      | jq '.jobs[0].read.iops') || return 1
  rw=$(fio --name=rw --filename="$f" --invalidate=0 --rw=randwrite --bs=4k --size=$fio_size \
      --ioengine=psync --time_based --runtime="$rand_rt" --randrepeat=1 --output-format=json 2>/dev/null \
      | jq '.jobs[0].write.iops') || return 1
  echo "$w $r $rr $rw"
}
walk() {  # -> seconds
  local t0 t1 n
  t0=$(now_s); n=$(find "$1/data" -printf '%s %u %m\n' | wc -l); t1=$(now_s)
  [ "$n" -ge 100000 ] || { log "walk saw only $n entries"; return 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}
create_unlink() {  # -> "create_s unlink_s"
  python3 - "$1" <<'PY'
import os, sys, time
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
t0 = time.perf_counter()
for i in range(10000):
    fd = os.open(os.path.join(d, "f%05d" % i), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, b"x" * 100)
    os.close(fd)
t1 = time.perf_counter()
for i in range(10000):
    os.unlink(os.path.join(d, "f%05d" % i))
t2 = time.perf_counter()
print("%.3f %.3f" % (t1 - t0, t2 - t1))
PY
}

meta_ops() {  # meta_ops DIR ARCHIVE -> "create rename unlink mkdir rmdir tarx" seconds
  python3 - "$1" "$2" <<'PY'
import os, subprocess, sys, time
d, archive = sys.argv[1], sys.argv[2]
os.makedirs(d, exist_ok=True)
N = 10000
names = [os.path.join(d, "f%05d" % i) for i in range(N)]
out = []
t = time.perf_counter()
for p in names:
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, b"x" * 100)
    os.close(fd)
out.append(time.perf_counter() - t); t = time.perf_counter()
for p in names:
    os.rename(p, p + "r")
out.append(time.perf_counter() - t); t = time.perf_counter()
for p in names:
    os.unlink(p + "r")
out.append(time.perf_counter() - t); t = time.perf_counter()
for p in names:
    os.mkdir(p)
out.append(time.perf_counter() - t); t = time.perf_counter()
for p in names:
    os.rmdir(p)
out.append(time.perf_counter() - t)
x = os.path.join(d, "x")
os.mkdir(x)
t = time.perf_counter()
subprocess.run(["tar", "xf", archive, "-C", x], check=True)
out.append(time.perf_counter() - t)
print(" ".join("%.3f" % v for v in out))
PY
}
META_TAR=$FSW/meta-10k.tar
if want meta && [ ! -f "$META_TAR" ]; then
  python3 - "$META_TAR" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1] + ".tmp", "w") as tf:
    for d in range(100):
        di = tarfile.TarInfo("d%02d" % d); di.type = tarfile.DIRTYPE; di.mode = 0o755
        tf.addfile(di)
        for f in range(100):
            ti = tarfile.TarInfo("d%02d/f%03d" % (d, f)); ti.size = 100; ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(b"x" * 100))
PY
  mv "$META_TAR.tmp" "$META_TAR"
fi

run_sys() {
  local s=$1 r v ok c u
  for r in $(seq 1 "$runs"); do
    log "$s run $r/$runs"
    # seqread + randread on one mount, walk + create/unlink on a fresh one
    if want read; then
    setup_sys "$s"
    drop_caches
    ok=1; v=$(fio_seq "$FIOFILE") || ok=0; rec "$s" seqread-cold "$r" "${v:-0}" MB/s $ok
    ok=1; v=$(fio_seq "$FIOFILE") || ok=0; rec "$s" seqread-warm "$r" "${v:-0}" MB/s $ok
    teardown_sys; setup_sys "$s"; drop_caches
    ok=1; v=$(fio_rand "$FIOFILE") || ok=0; rec "$s" randread4k-cold "$r" "${v:-0}" IOPS $ok
    head -c "$fio_size" "$FIOFILE" > /dev/null
    ok=1; v=$(fio_rand "$FIOFILE") || ok=0; rec "$s" randread4k-warm "$r" "${v:-0}" IOPS $ok
    teardown_sys
    fi
    if want meta; then
      setup_sys "$s"
      ok=1; read -r c n u m rd x < <(meta_ops "$WDIR" "$META_TAR") || ok=0
      rec "$s" meta-create "$r" "${c:-0}" s $ok; rec "$s" meta-rename "$r" "${n:-0}" s $ok
      rec "$s" meta-unlink "$r" "${u:-0}" s $ok; rec "$s" meta-mkdir "$r" "${m:-0}" s $ok
      rec "$s" meta-rmdir "$r" "${rd:-0}" s $ok; rec "$s" meta-tarx "$r" "${x:-0}" s $ok
      teardown_sys
    fi
    if want upper; then
      setup_sys "$s"
      ok=1; read -r c n u m < <(upper_io "$WDIR") || ok=0
      rec "$s" upper-seqwrite "$r" "${c:-0}" MB/s $ok; rec "$s" upper-seqread "$r" "${n:-0}" MB/s $ok
      rec "$s" upper-randread4k "$r" "${u:-0}" IOPS $ok; rec "$s" upper-randwrite4k "$r" "${m:-0}" IOPS $ok
      teardown_sys
    fi
    want walk || continue
    setup_sys "$s"; drop_caches
    ok=1; v=$(walk "$TREE") || ok=0; rec "$s" walk-100k-cold "$r" "${v:-0}" s $ok
    ok=1; v=$(walk "$TREE") || ok=0; rec "$s" walk-100k-warm "$r" "${v:-0}" s $ok
    ok=1; read -r c u < <(create_unlink "$WDIR") || ok=0
    rec "$s" create-10k "$r" "${c:-0}" s $ok; rec "$s" unlink-10k "$r" "${u:-0}" s $ok
    teardown_sys
  done
}

for s in "${SYSTEMS[@]}"; do
  case $s in
    strata) [ $strata_ok = 1 ] || continue
            run_sys strata
            # populate the root fully, then measure the cached variant
            setup_sys strata; if want read; then head -c "$fio_size" "$FIOFILE" > /dev/null; fi
            if want walk; then find "$TREE/data" -type f -exec cat {} + > /dev/null; fi; teardown_sys
            run_sys strata-cached
            [ $quick = 1 ] || run_sys strata-passthrough ;;
    native|overlayfs|fuse-overlayfs) run_sys "$s" ;;
    strata-kovl) [ $strata_ok = 1 ] && run_sys strata-kovl ;;
    strata-overlay) if strata_has_cmd overlay; then run_sys strata-overlay; [ $quick = 1 ] || run_sys strata-overlay-pt
                    else notes+=("strata-overlay: ${STRATA_BIN:-no strata binary} has no 'overlay' command"); fi ;;
    *) die "unknown system $s" ;;
  esac
done

printf '%s\n' "${notes[@]+"${notes[@]}"}" > "$RES/fs-notes.txt"
if [ $strata_ok = 0 ] && [[ " ${SYSTEMS[*]} " == *" strata "* ]]; then printf 'strata\nstrata-cached\nstrata-passthrough\n'; fi > "$RES/fs-pending.txt"
python3 "$here/lib/summarize.py" fs "$RES" "$(machine_json)" \
  "scripts/bench-fs.sh $([ $quick = 1 ] && echo --quick) $([ $scratch_tmpfs = 1 ] && echo --scratch-tmpfs) --runs $runs --systems $systems --tests $tests"
cat "$RES/fs.md"
