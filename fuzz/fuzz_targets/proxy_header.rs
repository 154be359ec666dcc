#![no_main]
//! `switchyard::fuzzing::proxy_header` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::proxy_header(data));
