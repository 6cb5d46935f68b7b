//! Fuzz target `config_file`: see `ds_sync::fuzzing::config_file` for the input and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_sync::fuzzing::config_file(data));
