#!/usr/bin/env bash
# Fuzz strata's parsers for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s per target, every target)
#
# Targets live in fuzz/fuzz_targets/ (a cargo-fuzz crate, its own workspace); the entry
# points they call are in fuzz/src/lib.rs, shared with the stable smoke run
# `cargo test --test hostile fuzz_smoke`. cargo-fuzz is installed here if missing (idempotent).
# With a nightly toolchain installed (`rustup toolchain list`), it runs `cargo +nightly fuzz`;
# otherwise RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags to stable. The build has debug
# assertions (so overflow checks) on; the sanitizer is FUZZ_SANITIZER (default `none`: the
# parsers are safe Rust and ASan halves the executions; `address` works on nightly only).
# If cargo-fuzz cannot build or run, the script falls back to the deterministic mutation loop
# for the same time budget. Runs are niced (FUZZ_NICE, default 10): the machine is shared.
# Inputs may grow to FUZZ_MAX_LEN bytes (default 64 KiB; libFuzzer's own default is the
# largest seed, 2-17 KiB here, which kept eStargz TOCs and index files small).
# Crashes are copied to fuzz/regressions/<target>/, which `fuzz_regressions` replays; the
# corpora (fuzz/corpus/) and artifacts stay out of git.
set -euo pipefail

secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

all_targets=(tar_reader layer_scan seek_table index_open tree_decode estargz estargz_toc_json zchunked_toc_json manifest reference ztoc)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

fallback() {
    echo "fuzz.sh: $1; running the stable mutation loop for ${secs}s per target instead" >&2
    STRATA_FUZZ_SMOKE_SECS="$secs" STRATA_FUZZ_SMOKE_ITERS=1000000000 \
        cargo test --release --test hostile fuzz_smoke -- --nocapture
    exit $?
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || fallback "cargo install cargo-fuzz failed"
fi

# Seed corpora with valid inputs (written by the smoke test, no mutation). Before
# RUSTC_BOOTSTRAP is set: it changes fingerprints and would rebuild the main workspace.
STRATA_FUZZ_SEEDS="$root/fuzz/corpus" STRATA_FUZZ_SMOKE_ITERS=0 \
    cargo test --test hostile fuzz_smoke -- --quiet >/dev/null
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly fuzz --version >/dev/null 2>&1; then
    fuzz=(nice -n "${FUZZ_NICE:-10}" cargo +nightly fuzz)
    sanitizer=${FUZZ_SANITIZER:-none}
    echo "fuzz.sh: using the nightly toolchain, sanitizer $sanitizer" >&2
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(nice -n "${FUZZ_NICE:-10}" cargo fuzz)
    sanitizer=none
    echo "fuzz.sh: no nightly toolchain; stable with RUSTC_BOOTSTRAP=1, no sanitizer" >&2
fi
build_flags=(-s "$sanitizer" --release --debug-assertions)

"${fuzz[@]}" build "${build_flags[@]}" >/dev/null || fallback "cargo fuzz build failed"

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    start=$(date +%s)
    if "${fuzz[@]}" run "${build_flags[@]}" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -max_len="${FUZZ_MAX_LEN:-65536}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1; then
        summary+=("$t: ok ($(( $(date +%s) - start ))s, corpus $(ls "fuzz/corpus/$t" | wc -l))")
    else
        status=1
        mkdir -p "fuzz/regressions/$t"
        for c in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/oom-* fuzz/artifacts/"$t"/timeout-*; do
            [ -e "$c" ] && cp "$c" "fuzz/regressions/$t/"
        done
        summary+=("$t: FAILED (inputs copied to fuzz/regressions/$t/)")
    fi
done
printf '%s\n' "${summary[@]}"
exit $status
