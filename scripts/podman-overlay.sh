#!/usr/bin/env bash
# podman with strata as its overlay mount_program (issue 9), offline and in a throwaway root.
#
# Builds a one-layer busybox image as a docker-archive (static /usr/bin/busybox), loads it
# with `podman load` into a temporary containers-storage root, and runs
#   podman --storage-opt overlay.mount_program=<dir>/fuse-overlayfs run --rm IMAGE echo hi
# where <dir>/fuse-overlayfs is a symlink to the strata binary (strata acts as
# `strata overlay` under that name). Then a container that writes into its root file system
# and a `podman export` check the upper. Host needs (PLATFORM.md): podman 4.x, runc,
# cgroupfs, and `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096` (no CAP_SYS_RESOURCE).
#
# Usage: scripts/podman-overlay.sh [path/to/strata]   (default: target/release or debug)
# Exit status 0 = every step passed; the log of the mount program is printed on failure.
# KEEP=1 leaves the temporary root (and its mounts) in place for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

STRATA=${1:-}
if [[ -z $STRATA ]]; then
    for c in target/release/strata target/debug/strata; do
        [[ -x $c ]] && { STRATA=$PWD/$c; break; }
    done
fi
[[ -x ${STRATA:-} ]] || { echo "strata binary not found (cargo build first)" >&2; exit 2; }
command -v podman >/dev/null || { echo "podman not installed (apt-get install podman)" >&2; exit 2; }
command -v runc >/dev/null || { echo "runc not installed" >&2; exit 2; }
BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || { echo "busybox not installed" >&2; exit 2; }

T=$(mktemp -d /var/tmp/strata-podman.XXXXXX)
BIN=$T/bin
mkdir -p "$BIN" "$T/img/rootfs/bin" "$T/strata-root"
ln -s "$STRATA" "$BIN/fuse-overlayfs"
export STRATA_ROOT=$T/strata-root

PODMAN=(podman --root "$T/storage" --runroot "$T/run" --tmpdir "$T/tmp"
    --storage-driver overlay
    --storage-opt "overlay.mount_program=$BIN/fuse-overlayfs"
    --runtime runc --cgroup-manager cgroupfs --events-backend file)
RUN_OPTS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network none)

cleanup() {
    local rc=$?
    set +e   # cleanup steps may fail (nothing mounted); the script's status is the test's
    "${PODMAN[@]}" rm -af >/dev/null 2>&1 || true
    # Unmount anything still mounted under the temp root (our FUSE mounts included).
    grep -o " $T[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
if [[ -n ${KEEP:-} ]]; then trap - EXIT; fi

# --- a docker-archive with one layer: busybox and a few applet links ---
cp "$BUSYBOX" "$T/img/rootfs/bin/busybox"
for a in sh echo cat ls mkdir rm; do ln -s busybox "$T/img/rootfs/bin/$a"; done
mkdir -p "$T/img/rootfs/etc" "$T/img/rootfs/tmp"
echo "strata-podman" > "$T/img/rootfs/etc/hostname-hint"
tar -C "$T/img/rootfs" --numeric-owner --owner=0 --group=0 -cf "$T/img/layer.tar" .
DIFF=$(sha256sum "$T/img/layer.tar" | cut -d' ' -f1)
cat > "$T/img/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$DIFF"]},"history":[{"created_by":"strata podman-overlay.sh"}]}
EOF
cat > "$T/img/manifest.json" <<EOF
[{"Config":"config.json","RepoTags":["localhost/strata-busybox:latest"],"Layers":["layer.tar"]}]
EOF
tar -C "$T/img" -cf "$T/busybox.tar" manifest.json config.json layer.tar

step() { echo "== $*"; }
step "podman load"
"${PODMAN[@]}" load -i "$T/busybox.tar"

step "podman run --rm echo hi (mount_program = strata as fuse-overlayfs)"
out=$("${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" localhost/strata-busybox echo hi)
[[ $out == hi ]] || { echo "unexpected output: $out" >&2; exit 1; }
echo "$out"

step "the container's root is the strata FUSE mount"
"${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" localhost/strata-busybox cat /proc/mounts |
    grep -E '^strata-overlay / fuse' || { echo "root is not a strata mount" >&2; exit 1; }

step "writes in the container land in its upper; the image layer is untouched"
"${PODMAN[@]}" run --name w "${RUN_OPTS[@]}" localhost/strata-busybox \
    sh -c 'echo changed > /etc/hostname-hint; mkdir -p /data; echo x > /data/x; rm /bin/rm; cat /etc/hostname-hint'
# (the listing is captured first: `grep -q` closing the pipe early would fail it under pipefail)
listing=$("${PODMAN[@]}" export w | tar -t)
grep -qx 'data/x' <<<"$listing" || { echo "export lacks data/x" >&2; exit 1; }
if grep -qx 'bin/rm' <<<"$listing"; then
    echo "export still shows the removed bin/rm" >&2; exit 1
fi
upper=$("${PODMAN[@]}" inspect w --format '{{.GraphDriver.Data.UpperDir}}')
[[ -f $upper/data/x ]] || { echo "upper $upper lacks data/x" >&2; exit 1; }
[[ $(stat -c '%F %t:%T' "$upper/bin/rm") == "character special file 0:0" ]] ||
    { echo "bin/rm in the upper is not an overlay whiteout: $(stat -c '%F %t:%T' "$upper/bin/rm")" >&2; exit 1; }
out=$("${PODMAN[@]}" run --rm "${RUN_OPTS[@]}" localhost/strata-busybox cat /etc/hostname-hint)
[[ $out == strata-podman ]] || { echo "image layer changed: $out" >&2; exit 1; }
"${PODMAN[@]}" rm w >/dev/null
echo "podman + strata overlay: OK"
