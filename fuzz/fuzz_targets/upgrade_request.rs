#![no_main]
//! `switchyard::fuzzing::upgrade_request` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::upgrade_request(data));
