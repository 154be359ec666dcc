#![no_main]
//! `switchyard::fuzzing::route` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::route(data));
