#![no_main]
//! `switchyard::fuzzing::config` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::config(data));
