#![no_main]
//! `switchyard::fuzzing::ping_frame` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::ping_frame(data));
