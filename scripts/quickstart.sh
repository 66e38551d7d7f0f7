#!/usr/bin/env bash
# One command from a clean Debian machine: install dependencies, build strata, start a local
# registry with a demo image, and run the main job against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bins
. scripts/lib/registry.sh
work=$(mktemp -d /tmp/strata-quickstart.XXXXXX)
trap 'kill $REGISTRY_PID 2>/dev/null || true; rm -rf "$work"' EXIT
start_registry "$work/registry"
build_busybox_image "$work" "$REGISTRY_HOST/demo/busybox:latest"
export STRATA_ROOT="$work/root"
strata=target/release/strata
"$strata" pull "$REGISTRY_HOST/demo/busybox:latest"
"$strata" images
