//! cargo-fuzz target: `strata_fuzz::layer_scan` (see fuzz/src/lib.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata_fuzz::layer_scan(data);
});
