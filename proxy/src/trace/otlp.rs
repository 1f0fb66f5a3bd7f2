//! OTLP `ExportTraceServiceRequest` protobuf encoding, by hand (opentelemetry-proto v1 field numbers).
//!
//! Only what the proxy's spans use: resource attributes, one scope, spans with attributes
//! and status. Nested messages are written in place with their lengths computed up front (no
//! buffer per message), and a [`Batch`] encodes each span as it arrives, so an export only
//! wraps bytes that are ready. Tests decode the output with the official generated types.

use std::io::Write as _;
use std::net::IpAddr;

use super::{SpanData, SpanKind, Value};

const SCOPE_NAME: &str = "skiff-proxy";

/// Spans encoded so far, and the fixed parts of the request around them.
pub(crate) struct Batch {
    /// `ResourceSpans.resource` (field 1), encoded once.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), encoded once.
    scope: Vec<u8>,
    /// Room for the request's head (see [`Batch::prefix`]), then `ScopeSpans.spans` (field 2)
    /// entries: the request is assembled in place, without copying the spans.
    spans: Vec<u8>,
    count: usize,
    /// One span's bytes, before its length prefix is known.
    scratch: Vec<u8>,
}

/// Most a gRPC frame header, two tags and two lengths take.
const HEAD_ROOM: usize = 5 + 2 * (1 + 10);

// === impl Batch ===

impl Batch {
    /// A batch of spans from the resource described by `resource` (`service.name` and friends).
    pub(crate) fn new(resource: &[(String, String)]) -> Self {
        let mut attrs = Vec::new();
        // Resource { repeated KeyValue attributes = 1; }
        for (k, v) in resource {
            key_value(&mut attrs, 1, k, &Value::Str(v.clone().into()));
        }
        key_value(
            &mut attrs,
            1,
            "telemetry.sdk.name",
            &Value::Str("skiff".into()),
        );
        key_value(
            &mut attrs,
            1,
            "telemetry.sdk.language",
            &Value::Str("rust".into()),
        );
        let mut res = Vec::with_capacity(attrs.len() + 8);
        bytes(&mut res, 1, &attrs);
        // InstrumentationScope { string name = 1; string version = 2; }
        let mut scope_fields = Vec::new();
        string(&mut scope_fields, 1, SCOPE_NAME);
        string(&mut scope_fields, 2, env!("CARGO_PKG_VERSION"));
        let mut scope = Vec::with_capacity(scope_fields.len() + 4);
        bytes(&mut scope, 1, &scope_fields);
        let mut batch = Batch {
            resource: res,
            scope,
            spans: Vec::new(),
            count: 0,
            scratch: Vec::with_capacity(512),
        };
        batch.spans = batch.fresh(0);
        batch
    }

    /// Bytes reserved before the spans.
    fn prefix(&self) -> usize {
        HEAD_ROOM + self.resource.len() + self.scope.len()
    }

    /// An empty span buffer with its head room (and room for `capacity` span bytes).
    fn fresh(&self, capacity: usize) -> Vec<u8> {
        let mut spans = Vec::with_capacity(self.prefix() + capacity);
        spans.resize(self.prefix(), 0);
        spans
    }

    /// Spans in the batch.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes `span` into the batch.
    pub(crate) fn push(&mut self, span: &SpanData) {
        self.scratch.clear();
        encode_span(&mut self.scratch, span);
        bytes(&mut self.spans, 2, &self.scratch);
        self.count += 1;
    }

    /// The export request holding every span pushed so far, framed for gRPC (a 5-byte
    /// length prefix) when `grpc`; the batch starts over, empty.
    pub(crate) fn take_request(&mut self, grpc: bool) -> bytes::Bytes {
        // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
        // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
        let prefix = self.prefix();
        let spans_len = self.spans.len() - prefix;
        let scope_spans_len = self.scope.len() + spans_len;
        let resource_spans_len =
            self.resource.len() + field_len(2, scope_spans_len as u64) + scope_spans_len;
        let message_len = field_len(1, resource_spans_len as u64) + resource_spans_len;
        let mut head = Vec::with_capacity(prefix);
        if grpc {
            // Not compressed, then the big-endian length.
            head.push(0);
            head.extend_from_slice(&u32::try_from(message_len).unwrap_or(u32::MAX).to_be_bytes());
        }
        tag(&mut head, 1, 2);
        varint(&mut head, resource_spans_len as u64);
        head.extend_from_slice(&self.resource);
        tag(&mut head, 2, 2);
        varint(&mut head, scope_spans_len as u64);
        head.extend_from_slice(&self.scope);
        let start = prefix - head.len();
        let next = self.fresh(spans_len);
        let mut body = std::mem::replace(&mut self.spans, next);
        body[start..prefix].copy_from_slice(&head);
        self.count = 0;
        bytes::Bytes::from(body).slice(start..)
    }
}

/// The request body of one export: `spans` under one resource described by `resource`.
#[cfg(test)]
pub(crate) fn encode_request(resource: &[(String, String)], spans: &[SpanData]) -> Vec<u8> {
    let mut batch = Batch::new(resource);
    for span in spans {
        batch.push(span);
    }
    batch.take_request(false).to_vec()
}

fn kind_number(kind: SpanKind) -> u64 {
    // SpanKind: SERVER = 2, CLIENT = 3.
    match kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// Bytes of a `Status { StatusCode code = 3; }` with code ERROR (2).
const ERROR_STATUS: [u8; 2] = [3 << 3, 2];

fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    // The fixed-size fields are laid out on the stack and copied once: tags and lengths of
    // one byte each, known here.
    let mut ids = [0u8; 2 + 16 + 2 + 8];
    ids[0] = 1 << 3 | 2;
    ids[1] = 16;
    ids[2..18].copy_from_slice(&span.trace_id);
    ids[18] = 2 << 3 | 2;
    ids[19] = 8;
    ids[20..].copy_from_slice(&span.span_id);
    out.extend_from_slice(&ids);
    if let Some(ts) = span.trace_state.as_deref().filter(|t| !t.is_empty()) {
        string(out, 3, ts);
    }
    if let Some(parent) = &span.parent_span_id {
        let mut field = [4 << 3 | 2, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        field[2..].copy_from_slice(parent);
        out.extend_from_slice(&field);
    }
    string(out, 5, &span.name);
    // kind (varint), start and end (fixed64)
    let mut times = [0u8; 2 + 9 + 9];
    times[0] = 6 << 3;
    times[1] = kind_number(span.kind) as u8;
    times[2] = 7 << 3 | 1;
    times[3..11].copy_from_slice(&span.start_unix_nanos.to_le_bytes());
    times[11] = 8 << 3 | 1;
    let end = span.end_unix_nanos.max(span.start_unix_nanos);
    times[12..].copy_from_slice(&end.to_le_bytes());
    out.extend_from_slice(&times);
    for (k, v) in &span.attributes {
        key_value(out, 9, k, v);
    }
    if span.error {
        bytes(out, 15, &ERROR_STATUS);
    }
    // flags: the sampled bit of the span's trace flags (always set: only sampled spans export).
    fixed32(out, 16, 0x01);
}

/// Longest address rendered as text (`[v6]:port`).
const TEXT_MAX: usize = 64;

/// An attribute value as it is written: bytes of a string, or an integer.
enum Scalar<'a> {
    Str(&'a [u8]),
    Int(u64),
}

/// `value` as a string or integer; addresses are rendered into `buf`.
fn text<'a>(value: &'a Value, buf: &'a mut [u8; TEXT_MAX]) -> Scalar<'a> {
    let n = match value {
        Value::Str(s) => return Scalar::Str(s.as_bytes()),
        Value::Shared(s) => return Scalar::Str(s.as_bytes()),
        Value::Int(i) => return Scalar::Int(*i as u64),
        Value::Ip(ip) => render_ip(*ip, buf, 0),
        Value::Addr(addr) => {
            let mut n = match addr.ip() {
                IpAddr::V4(ip) => render_ip(IpAddr::V4(ip), buf, 0),
                IpAddr::V6(ip) => {
                    buf[0] = b'[';
                    let n = render_ip(IpAddr::V6(ip), buf, 1);
                    buf[n] = b']';
                    n + 1
                }
            };
            buf[n] = b':';
            n += 1;
            render_u64(u64::from(addr.port()), buf, n)
        }
    };
    Scalar::Str(&buf[..n])
}

/// Writes `ip` at `buf[at..]`; the end offset. IPv4 by hand (the common case, and cheap).
fn render_ip(ip: IpAddr, buf: &mut [u8; TEXT_MAX], at: usize) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = at;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[at..]);
            let _ = write!(cursor, "{v6}");
            at + cursor.position() as usize
        }
    }
}

fn render_u64(v: u64, buf: &mut [u8; TEXT_MAX], at: usize) -> usize {
    let mut scratch = [0; 20];
    let digits = super::decimal(v, &mut scratch);
    buf[at..at + digits.len()].copy_from_slice(digits);
    at + digits.len()
}

/// KeyValue { string key = 1; AnyValue value = 2; } with
/// AnyValue { string string_value = 1; int64 int_value = 3; }.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let mut buf = [0; TEXT_MAX];
    let scalar = text(value, &mut buf);
    let any = any_len(&scalar);
    let kv = key_value_len(key, any);
    if field < 16 && kv < 0x80 {
        // The usual attribute: every tag and length is one byte, and the whole field fits
        // in 129 bytes, laid out on the stack and copied once.
        let mut field_bytes = [0u8; 2 + 0x7f];
        field_bytes[0] = (field << 3 | 2) as u8;
        field_bytes[1] = kv as u8;
        field_bytes[2] = 1 << 3 | 2;
        field_bytes[3] = key.len() as u8;
        let mut n = 4 + key.len();
        field_bytes[4..n].copy_from_slice(key.as_bytes());
        field_bytes[n] = 2 << 3 | 2;
        field_bytes[n + 1] = any as u8;
        n += 2;
        match scalar {
            Scalar::Str(s) => {
                field_bytes[n] = 1 << 3 | 2;
                field_bytes[n + 1] = s.len() as u8;
                n += 2;
                field_bytes[n..n + s.len()].copy_from_slice(s);
                n += s.len();
            }
            Scalar::Int(i) => {
                field_bytes[n] = 3 << 3;
                n = put_varint(&mut field_bytes, n + 1, i);
            }
        }
        out.extend_from_slice(&field_bytes[..n]);
        return;
    }
    tag(out, field, 2);
    varint(out, kv as u64);
    string(out, 1, key);
    tag(out, 2, 2);
    varint(out, any as u64);
    match scalar {
        Scalar::Str(s) => bytes(out, 1, s),
        Scalar::Int(i) => varint_field(out, 3, i),
    }
}

fn any_len(scalar: &Scalar<'_>) -> usize {
    match scalar {
        Scalar::Str(s) => field_len(1, s.len() as u64) + s.len(),
        Scalar::Int(i) => 1 + varint_len(*i),
    }
}

/// A KeyValue's length, its AnyValue being `any` bytes long.
fn key_value_len(key: &str, any: usize) -> usize {
    field_len(1, key.len() as u64) + key.len() + field_len(2, any as u64) + any
}

/// Tag and length prefix of a length-delimited field `field` holding `len` bytes.
fn field_len(field: u32, len: u64) -> usize {
    varint_len(u64::from(field) << 3) + varint_len(len)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        let mut buf = [0; 10];
        let n = put_varint(&mut buf, 0, v);
        out.extend_from_slice(&buf[..n]);
    }
}

/// Writes `v` as a varint at `buf[at..]` (room for it is the caller's); the end offset.
fn put_varint(buf: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn varint_lengths() {
        for (v, n) in [(0, 1), (1, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), n, "{v}");
        }
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn addresses_render_as_text() {
        let mut buf = [0; TEXT_MAX];
        let v6: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        match text(&Value::Addr(v6), &mut buf) {
            Scalar::Str(s) => assert_eq!(s, b"[fd00::1]:8080"),
            Scalar::Int(_) => panic!("an address is a string"),
        }
        for ip in ["10.1.2.3", "0.0.0.0", "255.255.255.255", "fe80::1:2"] {
            let parsed: IpAddr = ip.parse().unwrap();
            match text(&Value::Ip(parsed), &mut buf) {
                Scalar::Str(s) => assert_eq!(s, ip.as_bytes()),
                Scalar::Int(_) => panic!("an address is a string"),
            }
        }
        let v4: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        match text(&Value::Addr(v4), &mut buf) {
            Scalar::Str(s) => assert_eq!(s, b"127.0.0.1:65535"),
            Scalar::Int(_) => panic!("an address is a string"),
        }
    }
}
