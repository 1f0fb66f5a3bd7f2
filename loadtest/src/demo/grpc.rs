//! The demo app's gRPC face: standard health checking, a hello that says who answered, failures on request.
//!
//! Enough gRPC for proxy tests without a protobuf toolchain: messages are
//! encoded by hand (`grpc.health.v1.HealthCheckResponse` and a
//! `google.protobuf.StringValue`-shaped reply), so any gRPC client, grpcurl or
//! grpc_health_probe can talk to it.
//!
//! * `/grpc.health.v1.Health/Check`: SERVING for `""` or the demo's name, else NOT_FOUND.
//! * `/skiff.demo.v1.Demo/Hello`: field 1 (string) holds the JSON `GET /` would answer;
//!   UNAVAILABLE when a `--call` failed.
//! * any method with an `x-demo-grpc-status: N` request header: status N.
//! * anything else: UNIMPLEMENTED.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::DemoBody;
use super::{MAX_REQUEST_BODY_BYTES, State};

pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
pub const HELLO: &str = "/skiff.demo.v1.Demo/Hello";
/// Request header that makes any call end with this status.
pub const STATUS_HEADER: &str = "x-demo-grpc-status";

const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
const RESOURCE_EXHAUSTED: u32 = 8;
const UNIMPLEMENTED: u32 = 12;
const UNAVAILABLE: u32 = 14;
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u8 = 1;

pub(super) fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

pub(super) async fn handle(state: &State, request: Request<Incoming>) -> Response<DemoBody> {
    let path = request.uri().path().to_string();
    let requested = request
        .headers()
        .get(STATUS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u32>().ok());
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return status(RESOURCE_EXHAUSTED, &format!("request rejected: {error}")),
    };
    if let Some(code) = requested {
        return status(code, "status requested by x-demo-grpc-status");
    }
    let Some(message) = unframe(&body) else {
        return status(
            INVALID_ARGUMENT,
            "request is not one length-prefixed message",
        );
    };
    match path.as_str() {
        HEALTH_CHECK => {
            let service = string_field_1(message).unwrap_or_default();
            if service.is_empty() || service == state.opts.name {
                reply(&[0x08, SERVING])
            } else {
                status(NOT_FOUND, &format!("unknown service {service:?}"))
            }
        }
        HELLO => {
            let (identity, failed) = state.identity_json().await;
            if failed {
                return status(UNAVAILABLE, &String::from_utf8_lossy(&identity));
            }
            let mut message = vec![0x0a];
            put_varint(&mut message, identity.len() as u64);
            message.extend_from_slice(&identity);
            reply(&message)
        }
        _ => status(UNIMPLEMENTED, &format!("unknown method {path}")),
    }
}

/// The one message of a unary request body: `[0 (uncompressed), len: u32 BE, message]`.
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    let (len, message) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (compressed == 0 && message.len() == len).then_some(message)
}

pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// Field 1 of a message when it is a length-delimited UTF-8 string.
pub fn string_field_1(message: &[u8]) -> Option<String> {
    let mut rest = message;
    while let Some((&tag, after)) = rest.split_first() {
        let (len, after) = get_varint(after)?;
        let len = usize::try_from(len).ok()?;
        if after.len() < len {
            return None;
        }
        if tag == 0x0a {
            return String::from_utf8(after[..len].to_vec()).ok();
        }
        if tag & 0x07 != 2 {
            return None;
        }
        rest = &after[len..];
    }
    None
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

fn reply(message: &[u8]) -> Response<DemoBody> {
    respond(Some(frame(message)), OK, None)
}

fn status(code: u32, message: &str) -> Response<DemoBody> {
    respond(None, code, Some(message))
}

fn respond(data: Option<Bytes>, code: u32, message: Option<&str>) -> Response<DemoBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if let Some(message) = message {
        let encoded = percent_encode(message);
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            trailers.insert("grpc-message", value);
        }
    }
    let mut response = Response::new(DemoBody::with_trailers(data, trailers));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// gRPC's grpc-message encoding: printable ASCII but `%` as is, everything else `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&framed), Some(&b"abc"[..]));
        assert_eq!(unframe(&[0, 0, 0, 0, 0]), Some(&b""[..]));
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), None);
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 1]), None);
        assert_eq!(unframe(&[]), None);
    }

    #[test]
    fn varints_and_string_fields() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, vec![0xac, 0x02]);
        assert_eq!(get_varint(&out), Some((300, &[][..])));
        let mut message = vec![0x12, 1, b'x', 0x0a];
        put_varint(&mut message, 6);
        message.extend_from_slice(b"orders");
        assert_eq!(string_field_1(&message).as_deref(), Some("orders"));
        assert_eq!(string_field_1(&[]), None);
        assert_eq!(string_field_1(&[0x0a, 5, b'a']), None);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%ü"), "a b%25%C3%BC");
    }
}
