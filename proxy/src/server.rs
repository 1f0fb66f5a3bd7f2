//! Listeners: accept loops with a connection limit, idle timeouts and drain phases.
//!
//! Every listener takes its bound socket and watches one [`Phase`]: while `Draining`,
//! inbound HTTP/1.1 responses carry `Connection: close` so that clients move to other
//! endpoints; at `Stopping`, the listener stops accepting and each connection shuts down
//! gracefully (HTTP/2 GOAWAY, HTTP/1.1 close after the in-flight response), with a hard cap.
//!
//! A connection's first bytes pick its server: HTTP/1 goes to our own (`h1::server`, which
//! holds no buffer while a keep-alive connection is idle), and only what may be the HTTP/2
//! preface goes to hyper's auto-detecting one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::access::{self, AccessRecord, ForwardInfo};
use crate::admin::Admin;
use crate::config::{AccessLog, LimitsConfig};
use crate::error::{Blame, error_response};
use crate::forward::{Forwarder, Route};
use crate::metrics::Metrics;
use crate::trace::RequestInfo;
use crate::{Body, BoxError};

/// Where the sidecar is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Shutdown requested: still serving, telling clients to go elsewhere.
    Draining,
    /// Drain window over: stop accepting, finish in-flight work.
    Stopping,
}

/// What a listener does with a request.
pub(crate) enum Handler {
    Proxy {
        forwarder: Arc<Forwarder>,
        route: Route,
        inbound: bool,
    },
    Admin(Arc<Admin>),
}

/// Everything one HTTP listener needs.
pub(crate) struct HttpListener {
    pub(crate) name: &'static str,
    pub(crate) handler: Handler,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) idle: Option<Duration>,
    /// Time an HTTP/1.1 client has to send a whole request head once its first byte came.
    header_read_timeout: Duration,
    pub(crate) grace: Duration,
    pub(crate) metrics: Metrics,
    /// Connections that may be HTTP/2 (prior knowledge): auto-detected.
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
    max_header_bytes: usize,
    pub(crate) bytes: ByteCounters,
}

/// What hyper runs for each request.
type RequestFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send + 'static>>;

/// Checks of a connection's activity per idle timeout period.
const IDLE_CHECKS: u32 = 8;

/// Activity and in-flight requests of one connection, for the idle and header timeouts.
///
/// Activity is a flag, not a timestamp, so that reads and writes never read the clock: the
/// idle check looks at (and clears) it [`IDLE_CHECKS`] times per idle period, so a connection
/// closes between `idle` and `idle × (1 + 1/IDLE_CHECKS)` after its last byte.
///
/// The header timeout is ours, not hyper's: hyper's also runs while a keep-alive connection
/// waits for its next request, closing idle clients after 10 s instead of the idle timeout.
/// Here it starts with the first byte of a request head and stops when the request begins.
pub(crate) struct Activity {
    /// The connection carried an HTTP/2 request.
    h2: AtomicBool,
    /// A byte moved or a request ended since the last check.
    touched: AtomicBool,
    active: AtomicUsize,
    /// Bytes of a request head arrived while no request was in flight, and it has not begun.
    head_pending: AtomicBool,
    /// Told to close after the response in flight (our HTTP/1 server's graceful shutdown;
    /// an idle connection is closed at once instead).
    shut: AtomicBool,
}

/// Why a connection's timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing moved for the idle timeout.
    Idle,
    /// A request head took longer than the header read timeout.
    Header,
}

/// Counts a request in flight on a connection while alive.
pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O wrapper that records activity and counts bytes.
pub(crate) struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
    bytes: ByteCounters,
}

/// `skiff_proxy_processed_bytes_total` handles of one listener.
#[derive(Clone)]
pub(crate) struct ByteCounters {
    pub(crate) rx: IntCounter,
    pub(crate) tx: IntCounter,
}

impl ByteCounters {
    pub(crate) fn new(metrics: &Metrics, listener: &str) -> Self {
        ByteCounters {
            rx: metrics.processed_bytes.with_label_values(&[listener, "rx"]),
            tx: metrics.processed_bytes.with_label_values(&[listener, "tx"]),
        }
    }
}

// === impl HttpListener ===

impl HttpListener {
    pub(crate) fn new(
        name: &'static str,
        handler: Handler,
        phase: watch::Receiver<Phase>,
        idle: Option<Duration>,
        grace: Duration,
        limits: &LimitsConfig,
        metrics: Metrics,
    ) -> Self {
        let max_buf = limits.max_header_bytes.max(8192);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        HttpListener {
            name,
            handler,
            phase,
            idle,
            header_read_timeout: limits.header_read_timeout,
            grace,
            bytes: ByteCounters::new(&metrics, name),
            metrics,
            builder,
            max_connections: limits.max_connections,
            max_header_bytes: limits.max_header_bytes,
        }
    }

    pub(crate) fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Counts a downstream connection error of `kind`.
    pub(crate) fn count_error(&self, kind: &'static str) {
        self.metrics
            .downstream_errors
            .with_label_values(&[kind])
            .inc();
        tracing::debug!(listener = self.name, kind, "downstream connection error");
    }

    pub(crate) async fn handle(&self, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
        match &self.handler {
            Handler::Admin(admin) => admin.handle(req).await,
            Handler::Proxy {
                forwarder,
                route,
                inbound,
            } => {
                let version = req.version();
                let format = forwarder.config.access_log;
                let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                });
                let span = forwarder.tracer.server_span(&RequestInfo {
                    listener: self.name,
                    headers: req.headers(),
                    method: req.method(),
                    path: req.uri().path(),
                    // Like access logs: the query only with `includeQueryParameters`.
                    query: req
                        .uri()
                        .query()
                        .filter(|_| forwarder.config.access_log_query),
                    authority,
                    peer: Some(peer),
                    version,
                });
                // What the access log needs, kept only when it is on: the URI and Host are
                // reference-counted views of the request's bytes (no copy).
                let line = (format != AccessLog::Off).then(|| {
                    (
                        req.method().clone(),
                        req.uri().clone(),
                        req.headers().get(header::HOST).cloned(),
                        Instant::now(),
                    )
                });
                let grpc = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let mut info = ForwardInfo {
                    trace: Some(span.ctx.clone()),
                    ..ForwardInfo::default()
                };
                let mut error = None;
                let mut resp = match forwarder.forward(route, req, &span, &mut info).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        if e.blame() != Blame::Upstream {
                            self.metrics
                                .downstream_errors
                                .with_label_values(&[e.kind()])
                                .inc();
                        }
                        tracing::debug!(listener = self.name, error = %e, "request failed");
                        error = Some(e.kind());
                        error_response(&e, grpc)
                    }
                };
                forwarder.tracer.end_server(
                    span,
                    resp.status().as_u16(),
                    error,
                    info.target.as_ref(),
                );
                if let Some((method, uri, host, start)) = &line {
                    let authority = uri
                        .authority()
                        .map(|a| a.as_str())
                        .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
                        .unwrap_or("-");
                    // The query only with `includeQueryParameters`.
                    let path = match uri.path_and_query() {
                        Some(pq) if forwarder.config.access_log_query => pq.as_str(),
                        Some(pq) => pq.path(),
                        None => "/",
                    };
                    access::log(
                        format,
                        &forwarder.access_log_sink,
                        &AccessRecord {
                            listener: self.name,
                            method,
                            authority,
                            path,
                            status: resp.status(),
                            duration: start.elapsed(),
                            error,
                            info: &info,
                        },
                    );
                }
                if *inbound && version == Version::HTTP_11 && *self.phase.borrow() != Phase::Serving
                {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        }
    }
}

/// Accepts connections until the phase reaches `Stopping`, then waits for them to finish.
pub(crate) async fn serve_http(listener: TcpListener, ctx: Arc<HttpListener>) {
    let limits = Limits {
        name: ctx.name,
        max_connections: ctx.max_connections,
        metrics: ctx.metrics.clone(),
    };
    let max = ctx.max_connections;
    accept_until_stopping(
        listener,
        ctx.phase.clone(),
        limits,
        move |stream| {
            tokio::spawn(refuse(stream, max));
        },
        move |stream, peer, slot| {
            let ctx = ctx.clone();
            async move {
                serve_connection(stream, peer, &ctx).await;
                drop(slot);
            }
        },
    )
    .await;
}

/// What an accept loop counts and caps.
pub(crate) struct Limits {
    pub(crate) name: &'static str,
    pub(crate) max_connections: usize,
    pub(crate) metrics: Metrics,
}

/// A connection's place under the listener's limit; freed when dropped.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _done: mpsc::Sender<()>,
}

/// The accept loop of every listener: at most `limits.max_connections` connections at once
/// (one more goes to `over_limit`, counted), each served on a task of its own by the future
/// `serve` makes (which drops the [`Slot`] when done; spawned as is, so that a connection's
/// task holds that future once), until the phase reaches `Stopping`; then waits for the open
/// ones to finish.
pub(crate) async fn accept_until_stopping<S, F>(
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    limits: Limits,
    over_limit: impl Fn(TcpStream),
    serve: S,
) where
    S: Fn(TcpStream, SocketAddr, Slot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let new_conns = limits
        .metrics
        .new_connections
        .with_label_values(&[limits.name]);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        limits.metrics.downstream_errors.with_label_values(&["connection_limit"]).inc();
                        over_limit(stream);
                        continue;
                    };
                    new_conns.inc();
                    let slot = Slot { _permit: permit, _done: done_tx.clone() };
                    tokio::spawn(serve(stream, peer, slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: let others finish.
                    tracing::warn!(listener = limits.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = wait_for(&mut phase, Phase::Stopping) => break,
        }
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: &Arc<HttpListener>) {
    let _ = stream.set_nodelay(true);
    let active_gauge = ctx
        .metrics
        .active_connections
        .with_label_values(&[ctx.name]);
    active_gauge.inc();
    serve_sniffed(stream, peer, ctx).await;
    active_gauge.dec();
}

/// Which server a connection gets, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniffed {
    Http1,
    /// Maybe the HTTP/2 preface: the auto-detecting server decides.
    Auto,
}

/// Waits for the first bytes (without taking them) and tells HTTP/1 from a possible HTTP/2
/// preface; `None` when the client closed first.
async fn sniff(stream: &TcpStream) -> std::io::Result<Option<Sniffed>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // "PRI " is not a prefix of any other method's request line.
    let mut head = [0u8; 4];
    let n = stream.peek(&mut head).await?;
    Ok(match &head[..n] {
        [] => None,
        h if PREFACE.starts_with(h) => Some(Sniffed::Auto),
        _ => Some(Sniffed::Http1),
    })
}

async fn serve_sniffed(stream: TcpStream, peer: SocketAddr, ctx: &Arc<HttpListener>) {
    let activity = Arc::new(Activity::new());
    let mut phase = ctx.phase.clone();
    let sniffed = tokio::select! {
        res = sniff(&stream) => res,
        () = wait_for(&mut phase, Phase::Stopping) => Ok(None),
        _ = activity.expired(ctx.idle, None), if ctx.idle.is_some() => Ok(None),
    };
    let sniffed = match sniffed {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => return count_connection_error(ctx, &e),
    };
    // Only HTTP/1.1 has request heads to time; HTTP/2 clients may idle between frames.
    let header_timeout = (sniffed == Sniffed::Http1).then_some(ctx.header_read_timeout);
    // HTTP/1 on our own server (see `h1::server`); what may be HTTP/2 on hyper's
    // auto-detecting one, boxed so that HTTP/1 connections' tasks do not hold room for it.
    // Built in place: a `let` moved into `pin!` kept both copies in the task.
    let mut conn = pin!(match sniffed {
        Sniffed::Http1 => Either::Left(crate::h1::server::serve(
            stream,
            peer,
            ctx.clone(),
            activity.clone(),
        )),
        Sniffed::Auto => {
            let io = TokioIo::new(IdleIo::new(stream, activity.clone(), ctx.bytes.clone()));
            let svc_ctx = ctx.clone();
            let svc_activity = activity.clone();
            let service = service_fn(move |req: Request<Incoming>| -> RequestFuture {
                let ctx = svc_ctx.clone();
                if req.version() == Version::HTTP_2 {
                    svc_activity.h2.store(true, Ordering::Relaxed);
                }
                let guard = svc_activity.begin();
                // Boxed: hyper keeps room for one request future in every connection.
                Box::pin(async move {
                    let req = req.map(box_incoming);
                    let resp = ctx.handle(req, peer).await;
                    drop(guard);
                    Ok::<_, Infallible>(resp)
                })
            });
            Either::Right(Box::pin(
                ctx.builder.serve_connection_with_upgrades(io, service),
            ))
        }
    });
    // Graceful close, either server; whether to close at once (our HTTP/1 server between
    // requests: nothing to finish).
    macro_rules! graceful {
        () => {
            match conn.as_mut().as_pin_mut() {
                Either::Left(_) if activity.idle_now() => true,
                Either::Left(_) => {
                    activity.shut();
                    false
                }
                Either::Right(boxed) => {
                    boxed.get_mut().as_mut().graceful_shutdown();
                    false
                }
            }
        };
    }
    let inbound = matches!(ctx.handler, Handler::Proxy { inbound: true, .. });
    // The connection's own events come first; the control events (phases, timers) are
    // polled only when one of them woke the task (see `Gate`), not on every request.
    let gate = Arc::new(Gate::default());
    let gate_waker = std::task::Waker::from(gate.clone());
    let mut draining: Option<BoxFuture<()>> =
        inbound.then(|| Box::pin(wait_for_owned(ctx.phase.clone(), Phase::Draining)) as _);
    let mut stopping: Option<BoxFuture<()>> =
        Some(Box::pin(wait_for_owned(ctx.phase.clone(), Phase::Stopping)));
    let timed = ctx.idle.is_some() || header_timeout.is_some();
    let mut expiry: Option<BoxFuture<Expired>> = timed.then(|| {
        let (activity, idle) = (activity.clone(), ctx.idle);
        Box::pin(async move { activity.expired(idle, header_timeout).await }) as _
    });
    let mut hard_stop: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            let done = match conn.as_mut().as_pin_mut() {
                Either::Left(c) => c.poll(cx).map(|()| Ok(())),
                Either::Right(boxed) => boxed.get_mut().as_mut().poll(cx).map_err(BoxError::from),
            };
            if let Poll::Ready(res) = done {
                return Poll::Ready(Control::Done(res));
            }
            if !gate.open(cx) {
                return Poll::Pending;
            }
            let mut gcx = Context::from_waker(&gate_waker);
            if let Some(f) = draining.as_mut()
                && f.as_mut().poll(&mut gcx).is_ready()
            {
                draining = None;
                return Poll::Ready(Control::Draining);
            }
            if let Some(f) = stopping.as_mut()
                && f.as_mut().poll(&mut gcx).is_ready()
            {
                stopping = None;
                return Poll::Ready(Control::Stopping);
            }
            if let Some(f) = expiry.as_mut()
                && let Poll::Ready(expired) = f.as_mut().poll(&mut gcx)
            {
                expiry = None;
                return Poll::Ready(Control::Expired(expired));
            }
            if let Some(f) = hard_stop.as_mut()
                && f.as_mut().poll(&mut gcx).is_ready()
            {
                return Poll::Ready(Control::HardStop);
            }
            Poll::Pending
        })
        .await;
        match event {
            Control::Done(res) => {
                if let Err(e) = res {
                    count_connection_error(ctx, &*e);
                }
                break;
            }
            // Draining inbound HTTP/2: GOAWAY now, so clients open their next streams
            // elsewhere (HTTP/1.1 gets `Connection: close` on its next response instead).
            Control::Draining => {
                if activity.h2.load(Ordering::Relaxed) && graceful!() {
                    break;
                }
            }
            Control::Stopping => {
                // (HTTP/2 already had its GOAWAY when draining.)
                let goaway_sent = inbound && activity.h2.load(Ordering::Relaxed);
                if !goaway_sent && graceful!() {
                    break;
                }
                draining = None;
                expiry = None;
                hard_stop = Some(Box::pin(tokio::time::sleep(ctx.grace)));
            }
            Control::Expired(Expired::Header) => {
                ctx.count_error("header_read_timeout");
                break;
            }
            Control::Expired(Expired::Idle) => {
                if graceful!() {
                    break;
                }
                stopping = None;
                hard_stop = Some(Box::pin(tokio::time::sleep(ctx.grace)));
            }
            Control::HardStop => break,
        }
    }
}

/// A control future of a connection, boxed (one each per connection, not per request).
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What woke a connection's serving loop.
enum Control {
    Done(Result<(), BoxError>),
    Draining,
    Stopping,
    Expired(Expired),
    HardStop,
}

/// Lets a task tell its control futures' wake-ups from its connection's: they are polled
/// with the gate's waker, which marks the gate open and wakes the task.
struct Gate {
    fired: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Default for Gate {
    fn default() -> Self {
        // Open at first, so that every control future is polled (and registers) once.
        Gate {
            fired: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        }
    }
}

impl Gate {
    /// Whether a control future woke the task since the last look (registering the task's
    /// waker first, so that a wake-up in between is not lost).
    fn open(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.fired.swap(false, Ordering::AcqRel)
    }
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// [`wait_for`] on a receiver of its own.
async fn wait_for_owned(mut phase: watch::Receiver<Phase>, want: Phase) {
    wait_for(&mut phase, want).await;
}

/// hyper's request body as ours.
fn box_incoming(body: Incoming) -> Body {
    use http_body_util::BodyExt;
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// Tells a client over the connection limit why it is turned away, then closes.
async fn refuse(mut stream: TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read what the client sent first: closing with unread data would reset the connection
    // before the client reads the answer.
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await;
    let body = format!("skiff-proxy: listener connection limit ({limit}) reached\n");
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nx-skiff-error: connection_limit\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Counts a failed connection (hyper's errors by their kind).
fn count_connection_error(ctx: &HttpListener, e: &(dyn std::error::Error + 'static)) {
    let kind = match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "header_too_large",
        Some(h) if h.is_parse() => "malformed",
        Some(h) if h.is_timeout() => "header_read_timeout",
        Some(h) if h.is_incomplete_message() => "incomplete",
        _ => "connection",
    };
    tracing::debug!(error = %e, "downstream connection failed");
    ctx.count_error(kind);
}

/// Resolves once the phase is at least `want`, or when the sidecar is gone (dropped
/// without `run`), which means stopping.
pub(crate) async fn wait_for(phase: &mut watch::Receiver<Phase>, want: Phase) {
    let reached = |p: &Phase| match want {
        Phase::Serving => true,
        Phase::Draining => *p != Phase::Serving,
        Phase::Stopping => *p == Phase::Stopping,
    };
    let _ = phase.wait_for(reached).await;
}

pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// === impl Activity ===

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            h2: AtomicBool::new(false),
            touched: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            head_pending: AtomicBool::new(false),
            shut: AtomicBool::new(false),
        }
    }

    /// Asks the connection to close after the response in flight.
    pub(crate) fn shut(&self) {
        self.shut.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Relaxed)
    }

    /// No request in flight and none arriving.
    pub(crate) fn idle_now(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && !self.head_pending.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    pub(crate) fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Bytes came in: between requests, they start a request head.
    fn received(&self) {
        self.touch();
        if self.active.load(Ordering::Relaxed) == 0 {
            self.head_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves when nothing was in flight and no byte moved for `idle`, or when a request
    /// head has been pending for `header` (each counted from the call at the earliest; see
    /// [`Activity`] for the precision).
    pub(crate) async fn expired(
        &self,
        idle: Option<Duration>,
        header: Option<Duration>,
    ) -> Expired {
        let step = match (idle, header) {
            (Some(i), Some(h)) => (i / IDLE_CHECKS).min(h / IDLE_CHECKS),
            (Some(t), None) | (None, Some(t)) => t / IDLE_CHECKS,
            (None, None) => return std::future::pending().await,
        }
        .max(Duration::from_millis(1));
        let (mut quiet, mut heading) = (Duration::ZERO, Duration::ZERO);
        let mut at = Instant::now();
        loop {
            at += step;
            tokio::time::sleep_until(at).await;
            let busy = self.touched.swap(false, Ordering::Relaxed)
                || self.active.load(Ordering::Relaxed) > 0;
            quiet = if busy { Duration::ZERO } else { quiet + step };
            heading = if self.head_pending.load(Ordering::Relaxed) {
                heading + step
            } else {
                Duration::ZERO
            };
            if idle.is_some_and(|idle| quiet >= idle) {
                return Expired::Idle;
            }
            if header.is_some_and(|header| heading > header) {
                return Expired::Header;
            }
        }
    }
}

// === impl IdleIo ===

impl<T> IdleIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, bytes: ByteCounters) -> Self {
        IdleIo {
            inner,
            activity,
            bytes,
        }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if matches!(res, Poll::Ready(Ok(()))) && n > 0 {
            self.activity.received();
            self.bytes.rx.inc_by(n as u64);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.activity.touch();
            self.bytes.tx.inc_by(n as u64);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.activity.touch();
            self.bytes.tx.inc_by(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
