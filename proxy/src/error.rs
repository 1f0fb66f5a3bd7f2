//! Proxy errors with blame and retryability, and the one function that turns them into responses.
//!
//! Like pingora's error, each failure says whose fault it is (the downstream client, the
//! upstream service, or the proxy itself) and whether another attempt could succeed; like
//! linkerd's `ServerRescue`, exactly one function, [`error_response`], maps them to a status.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

use crate::{Body, BoxError};

/// Whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Downstream,
    Upstream,
    Internal,
}

/// Whether a failed attempt may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retryable {
    /// The upstream never saw the request.
    Always,
    /// The upstream may have seen it: only idempotent requests.
    IfIdempotent,
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no host: send an absolute URI or a Host header")]
    MissingHost,
    #[error("no service is known for host {host}")]
    UnknownHost { host: String },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("request body failed")]
    DownstreamBody(#[source] BoxError),
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("service {service} has too many pending requests (limit {limit})")]
    TooManyPending { service: String, limit: usize },
    #[error("every endpoint of service {service} is at its connection limit ({limit})")]
    ConnectionLimit { service: String, limit: usize },
    #[error("connect to {addr} ({service}) failed")]
    Connect {
        service: String,
        addr: String,
        source: BoxError,
    },
    #[error("connect to {addr} ({service}) timed out")]
    ConnectTimeout { service: String, addr: String },
    #[error("request to {addr} ({service}) failed after it was sent")]
    Reset {
        service: String,
        addr: String,
        source: BoxError,
    },
    #[error("{service} did not answer within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    #[error("bind {addr} failed")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    Registry(String),
    #[error("internal: {0}")]
    Internal(String),
}

// === impl ProxyError ===

impl ProxyError {
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::MissingHost
            | ProxyError::UnknownHost { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::DownstreamBody(_) => Blame::Downstream,
            ProxyError::NoEndpoints { .. }
            | ProxyError::TooManyPending { .. }
            | ProxyError::ConnectionLimit { .. }
            | ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Reset { .. }
            | ProxyError::Timeout { .. } => Blame::Upstream,
            ProxyError::Bind { .. } | ProxyError::Registry(_) | ProxyError::Internal(_) => {
                Blame::Internal
            }
        }
    }

    pub fn retryable(&self) -> Retryable {
        match self {
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => Retryable::Always,
            ProxyError::Reset { .. } | ProxyError::Timeout { .. } => Retryable::IfIdempotent,
            _ => Retryable::Never,
        }
    }

    /// The status a client sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::BadRequest { .. }
            | ProxyError::DownstreamBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints { .. }
            | ProxyError::TooManyPending { .. }
            | ProxyError::ConnectionLimit { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Reset { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Bind { .. } | ProxyError::Registry(_) | ProxyError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `grpc-status` a gRPC client sees for this error: the gRPC spec's mapping of the
    /// HTTP status, except that a call whose deadline passed is DEADLINE_EXCEEDED (4), which
    /// clients do not retry, rather than UNAVAILABLE (14), which they do.
    pub fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::Timeout { .. } => 4,
            _ => match self.status().as_u16() {
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502 | 503 | 504 => 14,
                _ => 2,
            },
        }
    }

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::UnknownHost { .. } => "unknown_host",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::DownstreamBody(_) => "downstream_body",
            ProxyError::NoEndpoints { .. } => "no_endpoints",
            ProxyError::TooManyPending { .. } => "too_many_pending",
            ProxyError::ConnectionLimit { .. } => "connection_limit",
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::Reset { .. } => "reset",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Bind { .. } => "bind",
            ProxyError::Registry(_) => "registry",
            ProxyError::Internal(_) => "internal",
        }
    }
}

/// The only place a [`ProxyError`] becomes a response: status from the error, a plain-text
/// body naming the host or service, and `x-skiff-error` with the error kind. A gRPC request
/// (`grpc`) gets a trailers-only gRPC answer instead, as Envoy sends: HTTP 200 with
/// `grpc-status` and the same text in `grpc-message`, so that gRPC clients show the reason
/// rather than "received http2 header with status: 503".
pub fn error_response(err: &ProxyError, grpc: bool) -> Response<Body> {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if grpc {
        let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(err.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&format!("skiff-proxy: {text}"))) {
            headers.insert("grpc-message", v);
        }
        headers.insert("x-skiff-error", HeaderValue::from_static(err.kind()));
        return resp;
    }
    text.push('\n');
    let body = Full::new(Bytes::from(format!("skiff-proxy: {text}")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-skiff-error", HeaderValue::from_static(err.kind()));
    resp
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, percent-encoded.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_host_is_404_naming_the_host() {
        let resp = error_response(
            &ProxyError::UnknownHost {
                host: "nope:80".into(),
            },
            false,
        );
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("nope:80"));
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_grpc_answer() {
        let t = ProxyError::Timeout {
            service: "echo".into(),
            timeout: Duration::from_millis(300),
        };
        let resp = error_response(&t, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "4", "deadline exceeded");
        let msg = resp.headers()["grpc-message"].to_str().unwrap();
        assert!(msg.contains("echo"), "{msg}");
        let none = ProxyError::NoEndpoints {
            service: "echo".into(),
        };
        assert_eq!(error_response(&none, true).headers()["grpc-status"], "14");
        assert_eq!(grpc_message("50% ü"), "50%25 %C3%BC");
    }

    #[test]
    fn connect_failures_are_always_retryable_and_blame_upstream() {
        let e = ProxyError::Connect {
            service: "a".into(),
            addr: "x".into(),
            source: "boom".into(),
        };
        assert_eq!(e.retryable(), Retryable::Always);
        assert_eq!(e.blame(), Blame::Upstream);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let t = ProxyError::Timeout {
            service: "a".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(t.retryable(), Retryable::IfIdempotent);
    }
}
