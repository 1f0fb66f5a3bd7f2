//! Fuzz target: the Fluent Bit classic configuration reader must never panic on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_logrouter::LogRouterConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // @INCLUDE of a relative path resolves beside this non-existent file: nothing is read
        let _ = LogRouterConfig::parse(text, std::path::Path::new("/nonexistent/fuzz.conf"));
    }
});
