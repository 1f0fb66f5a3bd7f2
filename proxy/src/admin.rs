//! Admin listener: `/ready`, `/live`, `/endpoints`, `/config`, `/metrics` (Envoy's admin port).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Body;
use crate::concrete::Concrete;
use crate::logical::Table;
use crate::server::Phase;

/// Health facts the admin endpoints report, written by the sidecar's background tasks.
#[derive(Default)]
pub(crate) struct Status {
    pub(crate) app_ready: AtomicBool,
    pub(crate) registered: AtomicBool,
    /// The instance must be registered before it is ready.
    pub(crate) needs_registration: bool,
    /// Discovery comes from the registry (else: a static feed).
    pub(crate) watches_registry: bool,
    pub(crate) discovery_connected: AtomicBool,
    pub(crate) discovery_errors: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

pub(crate) struct Admin {
    pub(crate) status: Arc<Status>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) registry: prometheus::Registry,
    pub(crate) config: serde_json::Value,
    pub(crate) table: watch::Receiver<Arc<Table>>,
    pub(crate) inbound: Vec<Arc<Concrete>>,
    pub(crate) decay: Duration,
}

// === impl Status ===

impl Status {
    pub(crate) fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

// === impl Admin ===

impl Admin {
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/endpoints" => self.endpoints(),
            "/config" => json_response(StatusCode::OK, &self.config),
            "/metrics" => self.metrics(),
            other => text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other}\n"),
            ),
        }
    }

    fn ready(&self) -> Response<Body> {
        let st = &self.status;
        let phase = *self.phase.borrow();
        let app_ready = st.app_ready.load(Ordering::Relaxed);
        let registered = st.registered.load(Ordering::Relaxed);
        let connected = st.discovery_connected.load(Ordering::Relaxed);
        let ready = phase == Phase::Serving && app_ready && (registered || !st.needs_registration);
        let last_error = st
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let body = json!({
            "ready": ready,
            "draining": phase != Phase::Serving,
            "app_ready": app_ready,
            "registered": registered,
            "discovery": {
                "connected": connected,
                "stale": st.watches_registry && !connected,
                "consecutive_errors": st.discovery_errors.load(Ordering::Relaxed),
                "revision": self.table.borrow().revision,
                "last_error": last_error,
            },
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }

    fn endpoints(&self) -> Response<Body> {
        let now = Instant::now();
        let table = self.table.borrow().clone();
        let mut services: Vec<_> = table.services().map(|c| c.view(now, self.decay)).collect();
        services.sort_by(|a, b| a.name_key().cmp(b.name_key()));
        let inbound: Vec<_> = self
            .inbound
            .iter()
            .map(|c| c.view(now, self.decay))
            .collect();
        let body = json!({
            "namespace": table.namespace,
            "revision": table.revision,
            "services": services,
            "inbound": inbound,
        });
        json_response(StatusCode::OK, &body)
    }

    fn metrics(&self) -> Response<Body> {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode metrics: {e}\n"),
            );
        }
        let mut resp = Response::new(full(Bytes::from(buf)));
        if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, s: String) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(s)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut resp = Response::new(full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
