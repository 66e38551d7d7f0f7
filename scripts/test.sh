#!/usr/bin/env bash
# The whole test suite: format, lints, unit + integration tests (real registry, FUSE, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --lib --bins --tests -- --test-threads="${STRATA_TEST_THREADS:-2}"
# criterion benches run once each in test mode (checks they work, measures nothing)
cargo test --benches
