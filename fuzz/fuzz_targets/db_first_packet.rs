#![no_main]
//! `switchyard::fuzzing::db_first_packet` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::db_first_packet(data));
