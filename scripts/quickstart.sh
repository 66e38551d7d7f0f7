#!/usr/bin/env bash
# One command from a clean Debian machine (as root): install dependencies, build strata, start a
# local registry holding a Debian + python3 demo image, publish its lazy index, and run python
# in a container WITHOUT pulling the image first; prints the bytes fetched vs the image size.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bins
. scripts/lib/registry.sh
work=$(mktemp -d /tmp/strata-quickstart.XXXXXX)
trap 'kill $REGISTRY_PID 2>/dev/null || true; rm -rf "$work"' EXIT
start_registry "$work/registry"
strata=$PWD/target/release/strata
echo "== building the demo image (Debian bookworm + python3; cached after the first run)"
ref=$(scripts/demo-image.sh "$REGISTRY_HOST" | tail -n 1)
echo "== publishing its lazy index as a sidecar artifact (once per image)"
STRATA_ROOT="$work/publisher" "$strata" index "$ref" --push
echo "== strata run on an empty cache: nothing is pulled, files are fetched when read"
export STRATA_ROOT="$work/root"
"$strata" run --rm --timing "$ref" python3 -c 'import sys; print("hello from", sys.version.split()[0])'
"$strata" images
