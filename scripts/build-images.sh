#!/usr/bin/env bash
# Build the benchmark images from Debian packages into the OCI-layout cache
# ${STRATA_IMAGE_CACHE:-/var/cache/strata-images}. Cached images are reused (instant).
#
#   scripts/build-images.sh [--rebuild] [IMAGE...]     IMAGE: debian-minbase python big smallfiles
#                                                      (default: all)
#   scripts/build-images.sh --push REGISTRY_HOST [IMAGE...]   also push as REGISTRY_HOST/bench/IMAGE:latest
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
. "$here/lib/images.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and umoci need it)"
rebuild="" push=""
imgs=()
while [ $# -gt 0 ]; do
  case $1 in
    --rebuild) rebuild=--rebuild ;;
    --push) push=$2; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) imgs+=("$1") ;;
  esac
  shift
done
[ ${#imgs[@]} -gt 0 ] || imgs=("${BENCH_IMAGES_ALL[@]}")
for i in "${imgs[@]}"; do build_image "$i" $rebuild; done
for i in "${imgs[@]}"; do
  printf '%-16s %s  %s\n' "$i" "$(image_summary "$i")" "$(image_layout "$i")"
done
if [ -n "$push" ]; then
  for i in "${imgs[@]}"; do push_image "$i" "$push"; echo "pushed $(image_ref "$i" "$push")"; done
fi
