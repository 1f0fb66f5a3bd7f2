//! The registry's HTTP listener: the Cloud Map API on `POST /`, the watch long-poll,
//! heartbeats, health history, Prometheus service discovery, `/health` and `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Value, json};
use skiff_registry_client::attrs;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{self, ApiError};
use crate::catalog::Catalog;
use crate::store::lock;

pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(60);
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);
/// Time given to open connections to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub type Body = Full<Bytes>;

/// Everything a request handler needs; shared by all connections.
pub struct HttpState {
    pub catalog: Arc<Catalog>,
    pub prometheus: prometheus::Registry,
    pub max_body_bytes: usize,
    /// This listener's own address, advertised in Prometheus targets.
    pub self_addr: SocketAddr,
    /// Flips to true at shutdown; long-polls answer at once.
    pub stopping: watch::Receiver<bool>,
    /// Serialized snapshot per namespace name, at its revision: watchers share one encoding.
    snapshots: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl HttpState {
    pub fn new(
        catalog: Arc<Catalog>,
        prometheus: prometheus::Registry,
        max_body_bytes: usize,
        self_addr: SocketAddr,
        stopping: watch::Receiver<bool>,
    ) -> HttpState {
        HttpState {
            catalog,
            prometheus,
            max_body_bytes,
            self_addr,
            stopping,
            snapshots: Mutex::new(HashMap::new()),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then lets open requests finish (bounded).
pub async fn run(listener: TcpListener, state: Arc<HttpState>, shutdown: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    let (close_tx, close_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let mut close = close_rx.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "http connection ended with error");
                            }
                        }
                        () = async { let _ = close.wait_for(|c| *c).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = close_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "closing http connections that did not finish in time"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::POST, "/") => cloud_map(state, req).await,
        (&Method::GET, "/v1/watch") => {
            watch_namespace(state, req.uri().query().unwrap_or("")).await
        }
        (&Method::GET, "/health") => {
            let rev = state.catalog.read().revision;
            if state.catalog.writable() {
                json_response(StatusCode::OK, &json!({ "status": "ok", "revision": rev }))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "store failed: restart the registry", "revision": rev }),
                )
            }
        }
        (&Method::GET, "/metrics") => metrics(state),
        (&Method::GET, "/v1/prometheus/targets") => targets(state),
        (m, p) if p.starts_with("/v1/instances/") => instance_route(state, m, p).await,
        _ => {
            state
                .catalog
                .metrics
                .http_rejected
                .with_label_values(&["not_found"])
                .inc();
            skiff_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route for {method} {path}"),
            )
        }
    }
}

// === Cloud Map ===

async fn cloud_map(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let op = match api::operation_name(target.as_deref()) {
        Ok(op) => op.to_string(),
        Err(e) => {
            state
                .catalog
                .metrics
                .http_rejected
                .with_label_values(&["unknown_operation"])
                .inc();
            return aws_error(&e);
        }
    };
    let too_big = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > state.max_body_bytes);
    let body = if too_big {
        None
    } else {
        Limited::new(req.into_body(), state.max_body_bytes)
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes())
    };
    let Some(body) = body else {
        state
            .catalog
            .metrics
            .http_rejected
            .with_label_values(&["body_too_large"])
            .inc();
        let e = ApiError::new(
            "RequestEntityTooLargeException",
            format!(
                "request body exceeds {} bytes or could not be read",
                state.max_body_bytes
            ),
        )
        .with_status(413);
        return aws_error(&e);
    };
    let started = Instant::now();
    let out = api::dispatch(&state.catalog, &op, &body).await;
    let m = &state.catalog.metrics;
    // Unknown operations share one label value: clients cannot inflate cardinality.
    let op_label = if matches!(&out, Err(e) if e.code == "UnknownOperationException") {
        "unknown"
    } else {
        op.as_str()
    };
    m.api_latency
        .with_label_values(&[op_label])
        .observe(started.elapsed().as_secs_f64());
    match out {
        Ok(v) => {
            m.api_requests.with_label_values(&[op_label, "ok"]).inc();
            bytes_response(
                StatusCode::OK,
                Bytes::from(v.into_bytes()),
                "application/x-amz-json-1.1",
            )
        }
        Err(e) => {
            m.api_requests.with_label_values(&[op_label, e.code]).inc();
            tracing::debug!(operation = %op, code = e.code, message = %e.message, "cloud map request failed");
            aws_error(&e)
        }
    }
}

fn aws_error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = json_response(status, &e.body());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(e.code) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

// === watch ===

/// `GET /v1/watch?namespace=NS&since=REV[&wait_ms=N]`.
async fn watch_namespace(state: &HttpState, query: &str) -> Response<Body> {
    let params = parse_query(query);
    let Some(ns) = params.get("namespace").filter(|n| !n.is_empty()).cloned() else {
        return skiff_error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "namespace: required query parameter is missing",
        );
    };
    let since = match params.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return skiff_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "since: must be a revision number",
            );
        }
    };
    let wait = match params.get("wait_ms").map(|s| s.parse::<u64>()) {
        None => DEFAULT_WATCH_WAIT,
        Some(Ok(n)) => Duration::from_millis(n).min(MAX_WATCH_WAIT),
        Some(Err(_)) => {
            return skiff_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "wait_ms: must be milliseconds",
            );
        }
    };
    // Up to 10% earlier, so that watchers started together do not come back together.
    let jitter = rand::rng().random_range(0.9..=1.0);
    let deadline = Instant::now() + wait.mul_f64(jitter);
    let mut changes = state.catalog.subscribe_namespace(&ns);
    let mut stopping = state.stopping.clone();
    let m = &state.catalog.metrics;
    m.watchers.inc();
    let _gauge = Decrement(&m.watchers);
    loop {
        changes.borrow_and_update();
        // Bound first: a guard in the `match` scrutinee would live through the arms, and
        // `snapshot_response` reads the catalog again — with a writer queued in between, the
        // second read waits for the writer, which waits for the first read: a deadlock.
        let revision = state
            .catalog
            .read()
            .namespace_by_name(&ns)
            .map(|n| n.revision);
        match revision {
            Some(rev) if rev > since => return snapshot_response(state, &ns),
            Some(_) => {}
            None if since == 0 => {}
            None => return not_found_namespace(&ns),
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
        }
    }
    let exists = state.catalog.read().namespace_by_name(&ns).is_some();
    if exists {
        snapshot_response(state, &ns)
    } else if since == 0 {
        let empty = skiff_registry_client::NamespaceSnapshot {
            namespace: ns,
            namespace_id: String::new(),
            namespace_type: String::new(),
            revision: 0,
            services: Vec::new(),
        };
        json_response(StatusCode::OK, &empty)
    } else {
        not_found_namespace(&ns)
    }
}

struct Decrement<'a>(&'a prometheus::IntGauge);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn not_found_namespace(ns: &str) -> Response<Body> {
    skiff_error(
        StatusCode::NOT_FOUND,
        "NamespaceNotFound",
        &format!("namespace {ns} not found"),
    )
}

fn snapshot_response(state: &HttpState, ns: &str) -> Response<Body> {
    let rev = state
        .catalog
        .read()
        .namespace_by_name(ns)
        .map(|n| n.revision);
    if let Some(rev) = rev
        && let Some((cached_rev, bytes)) = lock(&state.snapshots).get(ns)
        && *cached_rev == rev
    {
        return bytes_response(StatusCode::OK, bytes.clone(), "application/json");
    }
    let snap = state.catalog.read().snapshot(ns);
    let Some(snap) = snap else {
        return not_found_namespace(ns);
    };
    let bytes = match serde_json::to_vec(&snap) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            return skiff_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                &e.to_string(),
            );
        }
    };
    let mut cache = lock(&state.snapshots);
    let stale = cache.get(ns).is_none_or(|(r, _)| *r < snap.revision);
    if stale {
        cache.insert(ns.to_string(), (snap.revision, bytes.clone()));
    }
    bytes_response(StatusCode::OK, bytes, "application/json")
}

// === instances ===

async fn instance_route(state: &HttpState, method: &Method, path: &str) -> Response<Body> {
    let parts: Vec<String> = path
        .trim_start_matches("/v1/instances/")
        .split('/')
        .map(percent_decode)
        .collect();
    let [ns, svc, id, action] = parts.as_slice() else {
        return skiff_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "expected /v1/instances/{namespace}/{service}/{id}/{action}",
        );
    };
    match (method, action.as_str()) {
        (&Method::PUT, "heartbeat") => match state.catalog.heartbeat(ns, svc, id).await {
            Ok(()) => json_response(StatusCode::OK, &json!({})),
            Err(e) => {
                let e = ApiError::from(e);
                let status = if e.code.ends_with("NotFound") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST)
                };
                skiff_error(status, e.code, &e.message)
            }
        },
        (&Method::GET, "history") => {
            let st = state.catalog.read();
            let Some(n) = st.namespace_by_name(ns) else {
                return not_found_namespace(ns);
            };
            let Some(s) = st.service_by_name(&n.id, svc) else {
                return skiff_error(
                    StatusCode::NOT_FOUND,
                    "ServiceNotFound",
                    &format!("service {svc} not found in {ns}"),
                );
            };
            let live = st.instance(&s.id, id);
            let removed = || {
                st.removed
                    .iter()
                    .rev()
                    .find(|r| r.service_id == s.id && r.id == *id)
            };
            let Some(i) = live.or_else(removed) else {
                return skiff_error(
                    StatusCode::NOT_FOUND,
                    "InstanceNotFound",
                    &format!("instance {id} not found in {svc}"),
                );
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "namespace": n.name,
                    "service": s.name,
                    "instance_id": i.id,
                    "registered": live.is_some(),
                    "health": i.health,
                    "signals": { "custom": i.custom, "active": i.active, "heartbeat": i.heartbeat },
                    "history": i.history,
                }),
            )
        }
        _ => skiff_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {method} {path}"),
        ),
    }
}

// === telemetry ===

fn metrics(state: &HttpState) -> Response<Body> {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&state.prometheus.gather(), &mut out) {
        Ok(()) => bytes_response(
            StatusCode::OK,
            Bytes::from(out),
            "text/plain; version=0.0.4",
        ),
        Err(e) => skiff_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            &e.to_string(),
        ),
    }
}

/// Prometheus HTTP service discovery: every instance that advertises an admin address,
/// and this registry.
fn targets(state: &HttpState) -> Response<Body> {
    let st = state.catalog.read();
    let mut groups = vec![json!({
        "targets": [state.self_addr.to_string()],
        "labels": { "component": "registry", "job": "skiff-registry" },
    })];
    let mut entries: Vec<(String, String, String, Value)> = Vec::new();
    for (svc_id, instances) in &st.instances {
        let Some(svc) = st.services.get(svc_id) else {
            continue;
        };
        let ns = st
            .namespaces
            .get(&svc.namespace_id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        for i in instances.values() {
            let Some(addr) = i.attributes.get(attrs::SKIFF_ADMIN_ADDR) else {
                continue;
            };
            let component = i
                .attributes
                .get(attrs::SKIFF_COMPONENT)
                .map_or("sidecar", String::as_str);
            let task = i
                .attributes
                .get(attrs::ECS_TASK_ARN)
                .map_or(i.id.as_str(), String::as_str);
            entries.push((
                ns.clone(),
                svc.name.clone(),
                i.id.clone(),
                json!({
                    "targets": [addr],
                    "labels": {
                        "namespace": ns,
                        "service": svc.name,
                        "task": task,
                        "instance_id": i.id,
                        "component": component,
                        "job": format!("skiff-{component}"),
                    },
                }),
            ));
        }
    }
    entries.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    groups.extend(entries.into_iter().map(|e| e.3));
    json_response(StatusCode::OK, &Value::Array(groups))
}

// === plumbing ===

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => bytes_response(status, Bytes::from(b), "application/json"),
        Err(_) => bytes_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::new(),
            "application/json",
        ),
    }
}

fn bytes_response(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Errors of Skiff's own endpoints: the AWS shape with a lowercase `message`.
fn skiff_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({ "__type": code, "message": message }))
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("prod.internal"), "prod.internal");
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
        let q = parse_query("namespace=prod.internal&since=5&wait_ms=100");
        assert_eq!(q.get("since").map(String::as_str), Some("5"));
    }
}
