//! Fuzz target `ingest_decode`: see `ds_sync::fuzzing::ingest_decode` for the input and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_sync::fuzzing::ingest_decode(data));
