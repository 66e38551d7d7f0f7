#!/usr/bin/env bash
# The whole test suite: format, lints, unit + integration tests (real registry, FUSE, runc),
# the real-image comparison on Debian minbase, and a type check of the fuzz targets.
# docs/testing.md says what each part checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# union_images compares a lazy mount of a real Debian image with umoci's unpack of it. The
# image is built once (debootstrap, about a minute) and cached in /var/cache/strata-images.
if [ -z "${STRATA_REAL_IMAGES:-}" ]; then
  scripts/build-images.sh debian-minbase >/dev/null
  export STRATA_REAL_IMAGES=debian-minbase
fi
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --lib --bins --tests -- --test-threads="${STRATA_TEST_THREADS:-2}"
# criterion benches run once each in test mode (checks they work, measures nothing)
cargo test --benches
# The cargo-fuzz targets (fuzz/, its own workspace) type-check on stable; libFuzzer itself is
# left out (it needs cargo-fuzz's flags). Same target dir and lock file: the main build's
# dependencies are reused.
[ -e fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
CARGO_TARGET_DIR="$PWD/target" cargo check --manifest-path fuzz/Cargo.toml --bins --no-default-features
