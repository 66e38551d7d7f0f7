#!/usr/bin/env bash
# Install what strata and its tests need on Debian (idempotent: does nothing when all present).
set -euo pipefail
# time, procps: /usr/bin/time and ps/pgrep, used by tests. containerd + stargz-snapshotter
# (ctr-remote): another implementation's eStargz writer, whose layers lazy.rs reads.
# protobuf-compiler: protoc, for the gRPC crates (containerd snapshotter service, CRI client).
# slirp4netns: user-mode NAT for the default (bridge) network of `strata run`.
pkgs=(docker-registry skopeo umoci runc fuse3 busybox-static apache2-utils openssl jq
      fuse-overlayfs podman netavark iproute2 fio kmod bc curl python3 debootstrap debian-archive-keyring
       nginx time procps util-linux containerd stargz-snapshotter protobuf-compiler e2fsprogs slirp4netns)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The nginx package starts the system's nginx (port 80) where services may start; the tests
  # and benches run their own nginx (contrib/nginx). Stop it only when this script installed it.
  if printf '%s\n' "${missing[@]}" | grep -qx nginx && [ -s /run/nginx.pid ]; then
    $SUDO nginx -s quit 2>/dev/null || true
  fi
fi
# The lazy-pull mirror (contrib/nginx) needs nginx's slice module (in Debian's nginx package).
nginx -V 2>&1 | grep -q http_slice_module \
  || { echo "nginx lacks the slice module (http_slice_module)" >&2; exit 1; }
# The test suite mounts FUSE file systems: make sure the device and module are there.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
