//! The demo app the examples run: HTTP/1.1 + h2c, `/`, `/health`, and a few knobs for proxy tests.
//!
//! `GET /` answers who served it and, for every `--call URL`, what that URL
//! answered (through `HTTP_PROXY` when set), so a frontend → orders pair shows
//! the whole path through the sidecars. `/status/{code}`, `/delay/{ms}` and
//! `/echo` let proxy tests provoke failures, slowness and bodies; `/stats` counts
//! accepted connections so the benchmark can see whether a proxy reuses them.
//! Requests with a gRPC content type go to `grpc`.

mod body;
pub mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::LoadtestError;
use crate::http_client::{self, GetClient, ProxyConfig};
use body::DemoBody;

/// Longest `/delay/{ms}` the demo honours.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long each `--call` may take.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body the demo reads (`/echo`).
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// How long open connections get to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `skiff demo serve` was asked to do.
#[derive(Clone, Debug)]
pub struct DemoServeOptions {
    /// The service name `GET /` reports.
    pub name: String,
    /// Host to bind (and report); `SKIFF_APP_HOST` or 127.0.0.1 by default.
    pub host: String,
    pub port: u16,
    /// URLs fetched on every `GET /`.
    pub calls: Vec<String>,
    /// The proxy `--call`s go through; [`ProxyConfig::from_env`] by default.
    pub proxy: Option<ProxyConfig>,
    pub call_timeout: Duration,
    /// Print one line per request on stdout.
    pub log_requests: bool,
    /// Speak HTTP/2 only, as gRPC servers do (gRPC requests are answered either way).
    pub grpc: bool,
    /// The task id `GET /` reports: `ECS_TASK_ID`, else `hostname-pid`.
    pub task: String,
}

// === impl DemoServeOptions ===

impl DemoServeOptions {
    /// Options with the environment's defaults (`SKIFF_APP_HOST`, `HTTP_PROXY`, `ECS_TASK_ID`).
    pub fn new(name: impl Into<String>, port: u16) -> DemoServeOptions {
        DemoServeOptions {
            name: name.into(),
            host: default_host(),
            port,
            calls: Vec::new(),
            proxy: ProxyConfig::from_env(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            log_requests: false,
            grpc: false,
            task: default_task_id(),
        }
    }
}

/// `SKIFF_APP_HOST`, else 127.0.0.1.
pub fn default_host() -> String {
    std::env::var("SKIFF_APP_HOST")
        .ok()
        .filter(|host| !host.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// `ECS_TASK_ID`, else `hostname-pid`.
pub fn default_task_id() -> String {
    if let Ok(id) = std::env::var("ECS_TASK_ID")
        && !id.trim().is_empty()
    {
        return id;
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{hostname}-{}", std::process::id())
}

/// Binds `opts.host:opts.port` and serves until `shutdown` completes.
pub async fn demo_serve(
    opts: DemoServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoadtestError> {
    let addr = bind_addr(&opts.host, opts.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| LoadtestError::Bind { addr, source })?;
    demo_serve_listener(listener, opts, shutdown).await
}

fn bind_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Serves on an already bound listener (tests bind port 0) until `shutdown` completes.
pub async fn demo_serve_listener(
    listener: TcpListener,
    opts: DemoServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoadtestError> {
    let local = listener.local_addr()?;
    let state = Arc::new(State::new(opts, local));
    tracing::info!(addr = %local, service = %state.opts.name, "demo app listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                state.stats.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve_connection(stream, state.clone(), stop_rx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let builder = if state.opts.grpc {
        builder.http2_only()
    } else {
        builder
    };
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.handle(request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "demo connection ended");
            }
        }
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// GETs `url` directly (never through a proxy) and tells whether it answered 2xx within `timeout`.
pub async fn demo_probe(url: &str, timeout: Duration) -> bool {
    let client = http_client::get_client(None, timeout);
    match http_client::fetch(&client, url, timeout).await {
        Ok((status, _)) => status.is_success(),
        Err(error) => {
            tracing::debug!(%url, %error, "probe failed");
            false
        }
    }
}

struct State {
    opts: DemoServeOptions,
    port: u16,
    client: GetClient,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
}

#[derive(Serialize)]
struct Identity<'a> {
    service: &'a str,
    task: &'a str,
    host: &'a str,
    port: u16,
    calls: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct RequestLog<'a> {
    service: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_us: u64,
}

// === impl State ===

impl State {
    fn new(opts: DemoServeOptions, local: SocketAddr) -> State {
        let client = http_client::get_client(opts.proxy.clone(), opts.call_timeout);
        State {
            port: local.port(),
            opts,
            client,
            stats: Stats::default(),
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<DemoBody> {
        let started = tokio::time::Instant::now();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = self.route(request).await;
        if self.opts.log_requests {
            let line = RequestLog {
                service: &self.opts.name,
                method: method.as_str(),
                path: &path,
                status: response.status().as_u16(),
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            };
            if let Ok(line) = serde_json::to_string(&line) {
                println!("{line}");
            }
        }
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Response<DemoBody> {
        if grpc::is_grpc(&request) {
            return grpc::handle(self, request).await;
        }
        let path = request.uri().path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method(), segments.as_slice()) {
            (&Method::POST | &Method::PUT, ["echo"]) => {
                let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
                match Limited::new(request.into_body(), MAX_REQUEST_BODY_BYTES)
                    .collect()
                    .await
                {
                    Ok(body) => {
                        let mut response = Response::new(DemoBody::full(body.to_bytes()));
                        if let Some(content_type) = content_type {
                            response
                                .headers_mut()
                                .insert(header::CONTENT_TYPE, content_type);
                        }
                        response
                    }
                    Err(error) => text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body rejected: {error}\n"),
                    ),
                }
            }
            (_, ["health"]) => text(StatusCode::OK, "ok"),
            (_, [""]) => self.identity().await,
            (_, ["status", code]) => match code.parse::<u16>().ok().map(StatusCode::from_u16) {
                Some(Ok(status)) => text(status, format!("status {}\n", status.as_u16())),
                _ => text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid status code {code:?}\n"),
                ),
            },
            (_, ["delay", ms]) => match ms.parse::<u64>() {
                Ok(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
                    text(StatusCode::OK, "ok")
                }
                Err(_) => text(StatusCode::BAD_REQUEST, format!("invalid delay {ms:?}\n")),
            },
            (_, ["stats"]) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "connections_accepted": self.stats.connections.load(Ordering::Relaxed),
                    "requests": self.stats.requests.load(Ordering::Relaxed),
                }),
            ),
            _ => text(StatusCode::NOT_FOUND, format!("no route for {path}\n")),
        }
    }

    async fn identity(&self) -> Response<DemoBody> {
        let (body, failed) = self.identity_json().await;
        let status = if failed {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(DemoBody::full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// What `GET /` answers, and whether a call failed.
    async fn identity_json(&self) -> (Vec<u8>, bool) {
        let mut calls = Vec::with_capacity(self.opts.calls.len());
        let mut failed = false;
        for url in &self.opts.calls {
            let answer = http_client::fetch(&self.client, url, self.opts.call_timeout).await;
            let value = match answer {
                Ok((status, body)) if status.is_success() => {
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(value) => value,
                        Err(error) => {
                            failed = true;
                            call_error(url, Some(status), format!("response is not JSON: {error}"))
                        }
                    }
                }
                Ok((status, body)) => {
                    failed = true;
                    let body = String::from_utf8_lossy(&body);
                    call_error(
                        url,
                        Some(status),
                        format!("status {status}: {}", body.trim()),
                    )
                }
                Err(error) => {
                    failed = true;
                    call_error(url, None, error)
                }
            };
            calls.push(value);
        }
        let identity = Identity {
            service: &self.opts.name,
            task: &self.opts.task,
            host: &self.opts.host,
            port: self.port,
            calls,
        };
        match serde_json::to_vec(&identity) {
            Ok(body) => (body, failed),
            Err(error) => (format!("encoding failed: {error}").into_bytes(), true),
        }
    }
}

fn call_error(url: &str, status: Option<StatusCode>, error: String) -> serde_json::Value {
    serde_json::json!({
        "url": url,
        "status": status.map(|status| status.as_u16()),
        "error": error,
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<DemoBody> {
    let mut response = Response::new(DemoBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<DemoBody> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(DemoBody::full(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {error}\n"),
        ),
    }
}
