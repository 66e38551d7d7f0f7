# Realistic benchmark images built from Debian packages, cached as OCI layouts.
# Source this file (after scripts/lib/common.sh). Needs root (debootstrap, chroot, umoci as root).
#
#   build_image NAME [--rebuild]   NAME: debian-minbase | python | big | smallfiles | fiodata
#   image_layout NAME              -> OCI layout dir (tag "latest") in the cache
#   push_image NAME REGISTRY_HOST [REPO:TAG]   (default REPO:TAG = bench/NAME:latest)
#   image_ref NAME REGISTRY_HOST   -> REGISTRY_HOST/bench/NAME:latest
#
# Cache: ${STRATA_IMAGE_CACHE:-/var/cache/strata-images}/<name>/ with a ".built" stamp; a cached
# image is reused as is (instant), --rebuild rebuilds it and the images built on top of it.

BENCH_IMAGES_ALL=(debian-minbase python big smallfiles)
# fiodata (one layer: /data/fio.dat, 1 GiB of random bytes) is built on demand by bench-fs.sh
BENCH_SUITE=${BENCH_SUITE:-bookworm}
STRATA_IMAGE_CACHE=${STRATA_IMAGE_CACHE:-/var/cache/strata-images}

image_layout() { echo "$STRATA_IMAGE_CACHE/$1"; }
image_ref() { echo "$2/bench/$1:latest"; }
image_built() { [ -f "$(image_layout "$1")/.built" ]; }

image_parent() {
  case $1 in
    debian-minbase|fiodata) echo "" ;;
    python|smallfiles) echo debian-minbase ;;
    big) echo python ;;
    *) die "unknown image '$1' (known: ${BENCH_IMAGES_ALL[*]} fiodata)" ;;
  esac
}

_images_deps() {
  ensure_pkgs debootstrap umoci skopeo jq debian-archive-keyring
}

# Mounts needed for apt/dpkg inside a chroot; _chroot_umount undoes them (also from traps).
_chroot_mount() {
  local r=$1
  mount -t proc proc "$r/proc"
  mount --bind /dev "$r/dev"
  [ -e "$r/etc/resolv.conf" ] || { : > "$r/etc/resolv.conf"; touch "$r/.strata-created-resolv"; }
  cp -a "$r/etc/resolv.conf" "$r/.strata-resolv.orig" 2>/dev/null || true
  mount --bind /etc/resolv.conf "$r/etc/resolv.conf"
  # no daemons started by maintainer scripts
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
}
_chroot_umount() {
  local r=$1
  umount "$r/etc/resolv.conf" 2>/dev/null || true
  umount "$r/dev" 2>/dev/null || true
  umount "$r/proc" 2>/dev/null || true
  rm -f "$r/usr/sbin/policy-rc.d" "$r/.strata-resolv.orig"
  if [ -e "$r/.strata-created-resolv" ]; then rm -f "$r/etc/resolv.conf" "$r/.strata-created-resolv"; fi
}

# _chroot_run ROOTFS SHELL-SNIPPET: run a shell snippet in the rootfs with proc/dev/resolv bound.
_chroot_run() {
  local r=$1; shift
  _chroot_mount "$r"
  local rc=0
  DEBIAN_FRONTEND=noninteractive LC_ALL=C chroot "$r" /bin/sh -ec "$*" || rc=$?
  _chroot_umount "$r"
  return $rc
}

_apt_opts='-o Acquire::Check-Valid-Until=false -o Acquire::Check-Date=false -o APT::Install-Recommends=false -q -y'

# _repack LAYOUT BUNDLE COMMENT: record the bundle's changes as one new layer.
_repack() {
  umoci repack --refresh-bundle --history.created_by "$3" --image "$1:latest" "$2"
}

_img_config() {
  local layout=$1; shift
  umoci config --image "$layout:latest" \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env LANG=C.UTF-8 --config.workingdir / "$@"
}

_build_debian_minbase() {
  local layout=$1 work=$2 mirror
  mirror=$(debian_mirror)
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
  log "debootstrap --variant=minbase $BENCH_SUITE (mirror from apt config)"
  debootstrap --variant=minbase "$BENCH_SUITE" "$work/bundle/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; return 1; }
  # keep the host's resolver out of the image; keep the apt cache small
  : > "$work/bundle/rootfs/etc/resolv.conf"
  rm -rf "$work/bundle/rootfs/var/cache/apt/archives/"*.deb
  _repack "$layout" "$work/bundle" "debootstrap --variant=minbase $BENCH_SUITE"
  _img_config "$layout" --config.cmd /bin/sh
}

_build_python() {
  local layout=$1 work=$2 r=$2/bundle/rootfs
  umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
  log "python: layer 2 = apt-get install python3"
  _chroot_run "$r" "apt-get $_apt_opts update && apt-get $_apt_opts install python3 python3-minimal ca-certificates && apt-get clean"
  _repack "$layout" "$work/bundle" "apt-get install python3"
  log "python: layer 3 = delete docs, man pages, apt lists (whiteouts of layers 1-2)"
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man "$r"/usr/share/info \
         "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/log/apt "$r"/var/log/dpkg.log
  # an opaque directory: recreate a deleted directory with new content
  mkdir -p "$r/usr/share/man"; echo "man pages removed" > "$r/usr/share/man/README"
  _repack "$layout" "$work/bundle" "rm -rf /usr/share/doc/* /usr/share/man /var/lib/apt/lists/*"
  _img_config "$layout" --config.cmd python3
}

_build_big() {
  local layout=$1 work=$2 r=$2/bundle/rootfs
  umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
  log "big: layer 4 = python3-numpy python3-scipy python3-pandas"
  _chroot_run "$r" "apt-get $_apt_opts update && apt-get $_apt_opts install python3-numpy python3-scipy python3-pandas && apt-get clean && rm -rf /var/lib/apt/lists/*"
  _repack "$layout" "$work/bundle" "apt-get install python3-numpy python3-scipy python3-pandas"
  log "big: layer 5 = gcc libc6-dev"
  _chroot_run "$r" "apt-get $_apt_opts update && apt-get $_apt_opts install gcc libc6-dev && apt-get clean && rm -rf /var/lib/apt/lists/*"
  _repack "$layout" "$work/bundle" "apt-get install gcc libc6-dev"
  _img_config "$layout" --config.cmd python3
}

_build_smallfiles() {
  local layout=$1 work=$2 r=$2/bundle/rootfs
  umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
  log "smallfiles: layer 2 = 100,000 small files under /data (100 dirs x 1000 files, 64 B - 4 KiB)"
  python3 - "$r/data" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
for d in range(100):
    dd = os.path.join(root, "d%03d" % d)
    os.makedirs(dd, exist_ok=True)
    for f in range(1000):
        n = rnd.randint(64, 4096)
        with open(os.path.join(dd, "f%04d" % f), "wb") as fh:
            fh.write(rnd.randbytes(n // 2) + b"\n" * (n - n // 2))
PY
  _repack "$layout" "$work/bundle" "create 100k small files in /data"
  _img_config "$layout" --config.cmd /bin/sh
}

_build_fiodata() {
  local layout=$1 work=$2
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
  log "fiodata: one layer with /data/fio.dat (1 GiB random bytes)"
  mkdir -p "$work/bundle/rootfs/data"
  head -c $((1 << 30)) /dev/urandom > "$work/bundle/rootfs/data/fio.dat"
  _repack "$layout" "$work/bundle" "1 GiB fio data file"
  umoci config --image "$layout:latest" --config.cmd /bin/sh
}

# _safe_rm_work DIR: remove a build dir, but never while something is mounted below it
# (a leftover bind mount of /dev must not be deleted through).
_safe_rm_work() {
  local d; d=$(realpath "$1")
  _chroot_umount "$d/bundle/rootfs" 2>/dev/null || true
  if awk '{print $2}' /proc/mounts | grep -q "^$d/"; then
    log "warning: mounts remain under $d; not removing it"; return 0
  fi
  rm -rf "$d"
}

# build_image NAME [--rebuild]
build_image() {
  local name=$1 rebuild=${2:-} parent layout work
  parent=$(image_parent "$name")
  layout=$(image_layout "$name")
  if [ "$rebuild" != --rebuild ] && image_built "$name"; then
    log "image $name: cached at $layout"; return 0
  fi
  _images_deps
  if [ -n "$parent" ]; then build_image "$parent"; fi
  log "building image $name"
  mkdir -p "$STRATA_IMAGE_CACHE"
  work=$(mktemp -d "$STRATA_IMAGE_CACHE/.work-$name.XXXXXX")
  rm -rf "$layout.tmp"
  if [ -n "$parent" ]; then cp -a "$(image_layout "$parent")" "$layout.tmp"; rm -f "$layout.tmp/.built"
  fi
  local rc=0 had_e=0
  case $- in *e*) had_e=1 ;; esac
  set +e
  ( set -e; trap '_chroot_umount "$work/bundle/rootfs"' EXIT
    "_build_${name//-/_}" "$layout.tmp" "$work" )
  rc=$?
  [ $had_e = 1 ] && set -e
  _safe_rm_work "$work"
  [ $rc -eq 0 ] || { rm -rf "$layout.tmp"; die "building image $name failed"; }
  umoci gc --layout "$layout.tmp"
  rm -rf "$layout"; mv "$layout.tmp" "$layout"
  date -u +%FT%TZ > "$layout/.built"
  log "image $name: $(image_summary "$name")"
}

# image_summary NAME: "N layers, X MB compressed"
image_summary() {
  local layout; layout=$(image_layout "$1")
  python3 - "$layout" <<'PY'
import json, sys, os
lay = sys.argv[1]
idx = json.load(open(os.path.join(lay, "index.json")))
m = [d for d in idx["manifests"] if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
man = json.load(open(os.path.join(lay, "blobs", *m["digest"].split(":"))))
tot = sum(l["size"] for l in man["layers"])
print("%d layers, %.1f MB compressed" % (len(man["layers"]), tot / 1e6))
PY
}

# push_image NAME REGISTRY_HOST [REPO:TAG]
push_image() {
  local name=$1 host=$2 dest=${3:-bench/$1:latest}
  image_built "$name" || build_image "$name"
  skopeo copy -q --dest-tls-verify=false "oci:$(image_layout "$name"):latest" "docker://$host/$dest"
}
