//! OTLP `ExportTraceServiceRequest` protobuf encoding, by hand (opentelemetry-proto v1 field numbers).
//!
//! Only what the proxy's spans use: resource attributes, one scope, spans with attributes
//! and status. A span's `Span` fields are written as it is recorded, into a buffer of its own
//! (`span_start`, the `attr_*` writers, `span_end`), and then appended to a chunk of the span
//! queue as one `ScopeSpans.spans` entry ([`push_span`]); an export writes the request's head
//! and then the chunk's bytes, as they are ([`Frame::request`]). Tests decode the output with the official generated types.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::SpanKind;

const SCOPE_NAME: &str = "skiff-proxy";

/// An attribute key, encoded: `KeyValue.key`'s tag and length, then the key (see [`key!`]).
/// Its length is part of the type, so writing it is a few moves, not a `memcpy` call.
pub(crate) type Key<const N: usize> = &'static [u8; N];

/// `KeyValue.key` (field 1) of a key shorter than 128 bytes, at compile time.
pub(crate) const fn key_bytes<const N: usize>(key: &str) -> [u8; N] {
    let k = key.as_bytes();
    assert!(k.len() + 2 == N && k.len() < 0x80, "a key is 1-127 bytes");
    let mut out = [0u8; N];
    out[0] = 1 << 3 | 2;
    out[1] = k.len() as u8;
    let mut i = 0;
    while i < k.len() {
        out[i + 2] = k[i];
        i += 1;
    }
    out
}

/// The encoded [`Key`] of an attribute name, built at compile time.
macro_rules! key {
    ($key:expr) => {{
        const KEY: [u8; $key.len() + 2] = $crate::trace::otlp::key_bytes($key);
        &KEY
    }};
}
pub(crate) use key;

/// The fixed parts of every export request around the spans: the resource and the scope.
pub(crate) struct Frame {
    /// `ResourceSpans.resource` (field 1), encoded once.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), encoded once.
    scope: Vec<u8>,
}

/// Most a gRPC frame header, two tags and two lengths take.
const HEAD_ROOM: usize = 5 + 2 * (1 + 10);

/// An export request's body: the head, then the spans (one chunk, or part of one), written
/// out together (vectored) without copying the spans.
pub(crate) type Body = bytes::buf::Chain<bytes::Bytes, bytes::Bytes>;

// === impl Frame ===

impl Frame {
    /// The frame of spans from the resource described by `resource` (`service.name` and
    /// friends).
    pub(crate) fn new(resource: &[(String, String)]) -> Self {
        let mut attrs = Vec::new();
        // Resource { repeated KeyValue attributes = 1; }
        let sdk = [
            ("telemetry.sdk.name", "skiff"),
            ("telemetry.sdk.language", "rust"),
        ];
        let pairs = resource.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in pairs.chain(sdk) {
            let mut key = Vec::with_capacity(k.len() + 4);
            bytes(&mut key, 1, k.as_bytes());
            key_value_str(&mut attrs, 1, &key, v.as_bytes());
        }
        let mut res = Vec::with_capacity(attrs.len() + 8);
        bytes(&mut res, 1, &attrs);
        // InstrumentationScope { string name = 1; string version = 2; }
        let mut scope_fields = Vec::new();
        bytes(&mut scope_fields, 1, SCOPE_NAME.as_bytes());
        bytes(&mut scope_fields, 2, env!("CARGO_PKG_VERSION").as_bytes());
        let mut scope = Vec::with_capacity(scope_fields.len() + 4);
        bytes(&mut scope, 1, &scope_fields);
        Frame {
            resource: res,
            scope,
        }
    }

    /// The export request holding `spans` (`ScopeSpans.spans` entries appended with
    /// [`push_span`]), framed for gRPC (a 5-byte length prefix) when `grpc`.
    pub(crate) fn request(&self, spans: bytes::Bytes, grpc: bool) -> Body {
        use bytes::Buf as _;
        // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
        // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
        let scope_spans_len = self.scope.len() + spans.len();
        let resource_spans_len =
            self.resource.len() + field_len(2, scope_spans_len as u64) + scope_spans_len;
        let message_len = field_len(1, resource_spans_len as u64) + resource_spans_len;
        let mut head = Vec::with_capacity(HEAD_ROOM + self.resource.len() + self.scope.len());
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
        bytes::Bytes::from(head).chain(spans)
    }
}

/// Appends one span (its `Span` fields, as written by `span_start` .. `span_end`) to a
/// chunk, as a `ScopeSpans.spans` entry.
#[inline]
pub(crate) fn push_span(chunk: &mut Vec<u8>, span: &[u8]) {
    bytes(chunk, 2, span);
}

/// Where each `ScopeSpans.spans` entry of `chunk` (written by [`push_span`]) ends.
pub(crate) fn span_ends(chunk: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        // The tag (one byte), then the length as a varint.
        let mut i = at + 1;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = *chunk.get(i)?;
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        at = i + len;
        (at <= chunk.len()).then_some(at)
    })
}

/// The request body of one export: `spans` (each a span's fields) under one resource.
#[cfg(test)]
pub(crate) fn encode_request(resource: &[(String, String)], spans: &[Vec<u8>]) -> Vec<u8> {
    let mut chunk = Vec::new();
    for span in spans {
        push_span(&mut chunk, span);
    }
    body_bytes(Frame::new(resource).request(chunk.into(), false))
}

/// A body's bytes, in one piece.
#[cfg(test)]
pub(crate) fn body_bytes(body: Body) -> Vec<u8> {
    let (head, spans) = body.into_inner();
    [head, spans].concat()
}

fn kind_number(kind: SpanKind) -> u8 {
    // SpanKind: SERVER = 2, CLIENT = 3.
    match kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// Bytes of a `Status { StatusCode code = 3; }` with code ERROR (2).
const ERROR_STATUS: [u8; 2] = [3 << 3, 2];

/// The identity of a span: `trace_id` (1), `span_id` (2), `trace_state` (3),
/// `parent_span_id` (4), `name` (5) and `kind` (6).
pub(crate) fn span_start(
    out: &mut Vec<u8>,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    parent: Option<&[u8; 8]>,
    trace_state: Option<&[u8]>,
    name: &[u8],
    kind: SpanKind,
) {
    // The fixed-size fields are laid out on the stack and copied once: tags and lengths of
    // one byte each, known here.
    let mut ids = [0u8; 2 + 16 + 2 + 8 + 2 + 8];
    ids[0] = 1 << 3 | 2;
    ids[1] = 16;
    ids[2..18].copy_from_slice(trace_id);
    ids[18] = 2 << 3 | 2;
    ids[19] = 8;
    ids[20..28].copy_from_slice(span_id);
    let n = match parent {
        Some(parent) => {
            ids[28] = 4 << 3 | 2;
            ids[29] = 8;
            ids[30..].copy_from_slice(parent);
            ids.len()
        }
        None => 28,
    };
    out.extend_from_slice(&ids[..n]);
    if let Some(ts) = trace_state.filter(|t| !t.is_empty()) {
        bytes(out, 3, ts);
    }
    bytes(out, 5, name);
    out.extend_from_slice(&[6 << 3, kind_number(kind)]);
}

/// The end of a span: `start_time_unix_nano` (7), `end_time_unix_nano` (8), an error
/// `status` (15) and `flags` (16, the sampled bit: only sampled spans export).
pub(crate) fn span_end(out: &mut Vec<u8>, start_unix_nanos: u64, end_unix_nanos: u64, error: bool) {
    let mut tail = [0u8; 9 + 9 + 4 + 6];
    tail[0] = 7 << 3 | 1;
    tail[1..9].copy_from_slice(&start_unix_nanos.to_le_bytes());
    tail[9] = 8 << 3 | 1;
    tail[10..18].copy_from_slice(&end_unix_nanos.max(start_unix_nanos).to_le_bytes());
    let mut n = 18;
    if error {
        tail[n] = 15 << 3 | 2;
        tail[n + 1] = ERROR_STATUS.len() as u8;
        tail[n + 2..n + 4].copy_from_slice(&ERROR_STATUS);
        n += 4;
    }
    // field 16, wire type 5: a two-byte tag.
    tail[n] = 0x85;
    tail[n + 1] = 0x01;
    tail[n + 2..n + 6].copy_from_slice(&1u32.to_le_bytes());
    n += 6;
    out.extend_from_slice(&tail[..n]);
}

/// `attributes` (field 9): `KeyValue { key = 1; AnyValue value = 2; }` with
/// `AnyValue { string string_value = 1; }`.
#[inline]
pub(crate) fn attr_str<const N: usize>(out: &mut Vec<u8>, key: Key<N>, value: &[u8]) {
    let any = 2 + value.len();
    let kv = key.len() + 2 + any;
    if kv >= 0x80 {
        return attr_str_long(out, key, value);
    }
    // The usual attribute: every tag and length is one byte.
    out.reserve(kv + 2);
    out.extend_from_slice(&[9 << 3 | 2, kv as u8]);
    out.extend_from_slice(key);
    out.extend_from_slice(&[2 << 3 | 2, any as u8, 1 << 3 | 2, value.len() as u8]);
    out.extend_from_slice(value);
}

/// [`attr_str`] with lengths of more than one byte.
#[cold]
#[inline(never)]
fn attr_str_long(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    key_value_str(out, 9, key, value);
}

/// An integer attribute: `AnyValue { int64 int_value = 3; }`.
#[inline]
pub(crate) fn attr_int<const N: usize>(out: &mut Vec<u8>, key: Key<N>, value: i64) {
    let any = 1 + varint_len(value as u64);
    let kv = key.len() + 2 + any;
    out.reserve(kv + 2);
    if kv < 0x80 && (0..1 << 14).contains(&value) {
        // The usual one: a status, a port, an attempt (a varint of at most two bytes).
        out.extend_from_slice(&[9 << 3 | 2, kv as u8]);
        out.extend_from_slice(key);
        let v = value as u64;
        let field = [
            2 << 3 | 2,
            any as u8,
            3 << 3,
            (v as u8) | 0x80,
            (v >> 7) as u8,
        ];
        if v < 0x80 {
            out.extend_from_slice(&[field[0], field[1], field[2], v as u8]);
        } else {
            out.extend_from_slice(&field);
        }
        return;
    }
    tag(out, 9, 2);
    varint(out, kv as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(&[2 << 3 | 2, any as u8, 3 << 3]);
    varint(out, value as u64);
}

/// An address attribute, as text.
pub(crate) fn attr_ip<const N: usize>(out: &mut Vec<u8>, key: Key<N>, ip: IpAddr) {
    let mut buf = [0; TEXT_MAX];
    let n = render_ip(ip, &mut buf, 0);
    attr_str(out, key, &buf[..n]);
}

/// An address as a host attribute (`ip_key`: the IP, no brackets) and a socket address one
/// (`addr_key`: `ip:port`, `[v6]:port`), rendered once.
pub(crate) fn attr_ip_and_addr<const I: usize, const A: usize>(
    out: &mut Vec<u8>,
    ip_key: Key<I>,
    addr_key: Key<A>,
    addr: SocketAddr,
) {
    let mut buf = [0; TEXT_MAX];
    let text = render_addr(addr, &mut buf);
    let colon = text.iter().rposition(|&c| c == b':').unwrap_or(text.len());
    let ip = match addr {
        SocketAddr::V4(_) => &text[..colon],
        SocketAddr::V6(_) => &text[1..colon.saturating_sub(1).max(1)],
    };
    attr_str(out, ip_key, ip);
    attr_str(out, addr_key, text);
}

/// `addr` as `ip:port` or `[v6]:port`, in `buf`.
fn render_addr(addr: SocketAddr, buf: &mut [u8; TEXT_MAX]) -> &[u8] {
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
    n = render_u64(u64::from(addr.port()), buf, n);
    &buf[..n]
}

/// Longest address rendered as text (`[v6]:port`).
const TEXT_MAX: usize = 64;

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

/// A string `KeyValue` in field `field`; `key` is encoded (`KeyValue.key`'s tag and length,
/// then the key).
fn key_value_str(out: &mut Vec<u8>, field: u32, key: &[u8], value: &[u8]) {
    let any = field_len(1, value.len() as u64) + value.len();
    let kv = key.len() + field_len(2, any as u64) + any;
    tag(out, field, 2);
    varint(out, kv as u64);
    out.extend_from_slice(key);
    tag(out, 2, 2);
    varint(out, any as u64);
    bytes(out, 1, value);
}

/// Tag and length prefix of a length-delimited field `field` holding `len` bytes.
fn field_len(field: u32, len: u64) -> usize {
    varint_len(u64::from(field) << 3) + varint_len(len)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline(always)]
fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

#[inline(always)]
fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v < 0x4000 {
        // A span's length.
        out.extend_from_slice(&[(v as u8) | 0x80, (v >> 7) as u8]);
    } else {
        varint_long(out, v);
    }
}

#[inline(never)]
fn varint_long(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0; 10];
    let n = put_varint(&mut buf, 0, v);
    out.extend_from_slice(&buf[..n]);
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

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
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
    fn span_entries_are_found_whatever_their_length_prefix() {
        let mut chunk = Vec::new();
        for len in [3, 300, 0, 20_000] {
            push_span(&mut chunk, &vec![7; len]);
        }
        let ends: Vec<usize> = span_ends(&chunk).collect();
        assert_eq!(ends, [5, 5 + 3 + 300, 310, 310 + 4 + 20_000]);
        assert_eq!(*ends.last().unwrap(), chunk.len());
        // A cut-off entry is not reported.
        assert_eq!(span_ends(&chunk[..chunk.len() - 1]).count(), 3);
    }

    #[test]
    fn keys_are_encoded_at_compile_time() {
        assert_eq!(key!("url.path"), b"\x0a\x08url.path");
        const LONGEST: &str = concat!(
            "0123456789012345678901234567890123456789012345678901234567890123",
            "012345678901234567890123456789012345678901234567890123456789012"
        );
        assert_eq!(key!(LONGEST).len(), 129);
    }
}
