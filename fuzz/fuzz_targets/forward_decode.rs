//! Fuzz target: the Forward protocol decoder and what the router does next with a decoded frame must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    skiff_fuzz::forward_decode(data);
});
