//! Fuzz target `sse`: see `ds_sync::fuzzing::sse` for the input and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_sync::fuzzing::sse(data));
