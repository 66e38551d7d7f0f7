#!/usr/bin/env bash
# Build (or reuse from the cache) the python benchmark image and push it as
# REGISTRY_HOST/demo/python:3, for the README quick start.
#   scripts/demo-image.sh REGISTRY_HOST        e.g. scripts/demo-image.sh 127.0.0.1:5000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/images.sh"
[ $# -eq 1 ] || die "usage: $0 REGISTRY_HOST"
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and umoci need it)"
build_image python
push_image python "$1" demo/python:3
echo "$1/demo/python:3"
