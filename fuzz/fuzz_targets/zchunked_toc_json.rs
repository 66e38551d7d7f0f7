//! cargo-fuzz target: `strata_fuzz::zchunked_toc_json` (see fuzz/src/lib.rs); files go to one scratch dir.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

static SCRATCH: OnceLock<Mutex<strata_fuzz::Scratch>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let s = SCRATCH.get_or_init(|| Mutex::new(strata_fuzz::Scratch::new()));
    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
    strata_fuzz::zchunked_toc_json(&mut s, data);
});
