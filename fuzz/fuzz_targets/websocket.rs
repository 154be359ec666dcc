#![no_main]
//! `switchyard::fuzzing::websocket` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::websocket(data));
