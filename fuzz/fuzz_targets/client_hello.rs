#![no_main]
//! `switchyard::fuzzing::client_hello` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::client_hello(data));
