//! The fuzz targets' bodies, shared by the cargo-fuzz targets (nightly, libFuzzer) and the stable mutation harness.

use skiff_logrouter::LogRouterConfig;
use skiff_logrouter::forward::decode::{Frame, Limits, decode_frame};
use skiff_logrouter::msgpack::{Reader, write_json};
use skiff_logrouter::pipeline::enrich;

/// The Forward protocol decoder and what the router does next with a decoded frame must never
/// panic. Returns how many event frames were accepted (the stable harness checks its inputs reach
/// past the decoder).
pub fn forward_decode(data: &[u8]) -> usize {
    let limits = Limits {
        max_frame: 1 << 20,
        max_decompressed: 1 << 20,
        max_record: 1 << 16,
    };
    let mut rest = data;
    let mut accepted = 0;
    // a stream of frames, as one connection would send them
    while let Ok(Some((frame, used))) = decode_frame(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        let Frame::Events(ev) = frame else { continue };
        // every accepted entry is [time, map]: enrichment and JSON output must succeed on it
        let enriched = enrich(&ev.entries, &[("ecs_cluster", "c"), ("source", "stdout")])
            .expect("validated entries enrich");
        let mut r = Reader::new(&enriched);
        let mut n = 0;
        while !r.is_empty() {
            r.array_len().expect("entry array");
            r.time().expect("entry time");
            let mut json = Vec::new();
            let _ = write_json(&mut r, &mut json);
            n += 1;
        }
        assert_eq!(n, ev.count);
        accepted += 1;
    }
    accepted
}

/// The Fluent Bit classic configuration reader must never panic on any text.
pub fn fluent_bit_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        // @INCLUDE of a relative path resolves beside this non-existent file: nothing is read
        let _ = LogRouterConfig::parse(text, std::path::Path::new("/nonexistent/fuzz.conf"));
    }
}
