//! Fuzz the fixed framer: see `sluice_fuzz::check` for what is asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::fuzz_fixed(data));
