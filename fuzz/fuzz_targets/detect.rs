#![no_main]
//! `switchyard::fuzzing::detect` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::detect(data));
