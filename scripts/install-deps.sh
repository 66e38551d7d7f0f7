#!/usr/bin/env bash
# Install what strata and its tests need on Debian (idempotent: does nothing when all present).
set -euo pipefail
# time, procps: /usr/bin/time and ps/pgrep, used by tests. containerd + stargz-snapshotter
# (ctr-remote): another implementation's eStargz writer, whose layers lazy.rs reads.
pkgs=(docker-registry skopeo umoci runc fuse3 busybox-static apache2-utils openssl jq
      fuse-overlayfs podman netavark iproute2 fio kmod bc curl python3 debootstrap debian-archive-keyring
      time procps util-linux containerd stargz-snapshotter)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The test suite mounts FUSE file systems: make sure the device and module are there.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
