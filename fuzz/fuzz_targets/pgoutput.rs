//! Fuzz target `pgoutput`: see `ds_sync::fuzzing::pgoutput` for the input and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ds_sync::fuzzing::pgoutput(data));
