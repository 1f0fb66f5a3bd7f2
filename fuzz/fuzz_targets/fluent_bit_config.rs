//! Fuzz target: the Fluent Bit classic configuration reader must never panic on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| skiff_fuzz::fluent_bit_config(data));
