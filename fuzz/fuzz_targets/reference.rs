//! cargo-fuzz target: `strata_fuzz::reference` (see fuzz/src/lib.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata_fuzz::reference(data);
});
