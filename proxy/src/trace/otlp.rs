//! OTLP `ExportTraceServiceRequest` protobuf encoding, by hand (opentelemetry-proto v1 field numbers).
//!
//! Only what the proxy's spans use: resource attributes, one scope, spans with attributes
//! and status. Tests decode the output with the official generated types.

use super::{SpanData, SpanKind, Value};

const SCOPE_NAME: &str = "skiff-proxy";

/// The request body of one export: `spans` under one resource described by `resource`
/// (`service.name` and friends).
pub(crate) fn encode_request(resource: &[(String, String)], spans: &[SpanData]) -> Vec<u8> {
    // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
    let mut out = Vec::with_capacity(256 + spans.len() * 256);
    message(&mut out, 1, |rs| {
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
        message(rs, 1, |res| {
            // Resource { repeated KeyValue attributes = 1; }
            for (k, v) in resource {
                key_value(res, 1, k, &Value::Str(v.clone().into()));
            }
            key_value(res, 1, "telemetry.sdk.name", &Value::Str("skiff".into()));
            key_value(res, 1, "telemetry.sdk.language", &Value::Str("rust".into()));
        });
        message(rs, 2, |ss| {
            // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
            message(ss, 1, |scope| {
                string(scope, 1, SCOPE_NAME);
                string(scope, 2, env!("CARGO_PKG_VERSION"));
            });
            for span in spans {
                message(ss, 2, |s| encode_span(s, span));
            }
        });
    });
    out
}

fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    bytes(out, 1, &span.trace_id);
    bytes(out, 2, &span.span_id);
    if let Some(ts) = span.trace_state.as_deref().filter(|t| !t.is_empty()) {
        string(out, 3, ts);
    }
    if let Some(parent) = &span.parent_span_id {
        bytes(out, 4, parent);
    }
    string(out, 5, &span.name);
    // SpanKind: SERVER = 2, CLIENT = 3.
    let kind = match span.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    };
    varint_field(out, 6, kind);
    fixed64(out, 7, span.start_unix_nanos);
    fixed64(out, 8, span.end_unix_nanos.max(span.start_unix_nanos));
    for (k, v) in &span.attributes {
        key_value(out, 9, k, v);
    }
    if span.error {
        // Status { string message = 2; StatusCode code = 3; } ERROR = 2.
        message(out, 15, |st| varint_field(st, 3, 2));
    }
    // flags: the sampled bit of the span's trace flags (always set: only sampled spans export).
    fixed32(out, 16, 0x01);
}

/// KeyValue { string key = 1; AnyValue value = 2; } with
/// AnyValue { string string_value = 1; int64 int_value = 3; }.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        string(kv, 1, key);
        message(kv, 2, |any| match value {
            Value::Str(s) => string(any, 1, s),
            Value::Int(i) => varint_field(any, 3, *i as u64),
        });
    });
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    tag(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// A length-delimited sub-message written by `f`.
fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}
