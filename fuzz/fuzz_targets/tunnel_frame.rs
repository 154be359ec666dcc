#![no_main]
//! `switchyard::fuzzing::tunnel_frame` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::tunnel_frame(data));
