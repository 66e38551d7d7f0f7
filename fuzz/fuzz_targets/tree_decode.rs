//! cargo-fuzz target: `strata_fuzz::tree_decode` (see fuzz/src/lib.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzz::tree_decode(data));
