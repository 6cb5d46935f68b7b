//! Fuzz target `stream_template`: see `ds_sync::fuzzing::stream_template` for the input and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_sync::fuzzing::stream_template(data));
