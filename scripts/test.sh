#!/usr/bin/env bash
# The whole test suite: format, lints, unit + integration tests (real registry, FUSE, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --release --bins
cargo test --all-targets -- --test-threads="${STRATA_TEST_THREADS:-2}"
