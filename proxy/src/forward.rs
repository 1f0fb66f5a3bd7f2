//! The life of one proxied HTTP request: route → pick → connect → send with timeout →
//! classify → retry? → record, as one linear async function.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access::{AccessLogSink, ForwardInfo};
use crate::concrete::Concrete;
use crate::config::{AccessLog, ProxyConfig};
use crate::error::ProxyError;
use crate::h1::server::{SplicedHere, UpstreamUpgrade};
use crate::logical::{Table, split_authority};
use crate::pool::{Connector, ResponseBody, SendError};
use crate::retry::{RetryReason, backoff, is_idempotent};
use crate::trace::{AttemptInfo, Propagation, ServerSpan, Tracer};
use crate::{Body, BoxError};

/// How a listener finds the target of a request.
#[derive(Clone)]
pub(crate) enum Route {
    /// The HTTP proxy listener: by absolute URI or Host, through the routing table.
    ByHost(watch::Receiver<Arc<Table>>),
    /// An alias listener: always this discovery name.
    Service(watch::Receiver<Arc<Table>>, Arc<str>),
    /// An inbound listener: the local app.
    Fixed(Arc<Concrete>),
}

/// Upstream clients and settings shared by every HTTP listener.
pub(crate) struct Forwarder {
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) tracer: Tracer,
    pub(crate) access_log_sink: AccessLogSink,
    connector: Connector,
}

/// A request body that can be sent more than once (or not).
enum ReplayBody {
    Empty,
    Full(Bytes),
    Stream(Option<Body>),
}

/// Who splices a switched protocol (101) on the client's side.
enum Downstream {
    /// hyper's server: its `OnUpgrade` gives the client's connection.
    Hyper(hyper::upgrade::OnUpgrade),
    /// Our HTTP/1 server, which takes the upstream connection from the response.
    Here,
}

/// What one attempt came to.
// A local of `forward` only, moved once: boxing the response would cost an allocation per
// request for nothing.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response {
        resp: Response<ResponseBody>,
        retry: Option<RetryReason>,
        success: bool,
    },
    Failed {
        err: ProxyError,
        retry: Option<RetryReason>,
    },
}

static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

// === impl Forwarder ===

impl Forwarder {
    pub(crate) fn new(
        config: Arc<ProxyConfig>,
        tracer: Tracer,
        access_log_sink: AccessLogSink,
    ) -> Self {
        let connector = Connector::new(
            config.default_policy.timeouts.connect,
            config.limits.pool_idle_timeout,
            config.limits.pool_max_idle_per_endpoint,
        );
        Forwarder {
            config,
            tracer,
            access_log_sink,
            connector,
        }
    }

    /// Proxies one request within `span` (each attempt gets a client span, child of it);
    /// every error comes back as a [`ProxyError`] for the one mapping.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        mut req: Request<Body>,
        span: &ServerSpan,
        info: &mut ForwardInfo,
    ) -> Result<Response<Body>, ProxyError> {
        let start = Instant::now();
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::BadRequest {
                reason: "CONNECT is not supported: send plain http:// requests (absolute-form) to the proxy".into(),
            });
        }
        // route
        let concrete = self.route(route, &req)?;
        let target = &concrete.target;
        let policy = &target.policy;
        let _admission = target.admit(self.config.limits.max_pending_requests)?;
        target.budget.deposit(start);
        let mut timeout = policy.timeouts.per_request;
        if let Some(g) = grpc_timeout(req.headers()) {
            timeout = Some(timeout.map_or(g, |t| t.min(g)));
        }
        let deadline = timeout.map(|t| start + t);
        let on_upgrade = is_upgrade(&req).then(|| {
            if req.extensions().get::<SplicedHere>().is_some() {
                Downstream::Here
            } else {
                Downstream::Hyper(hyper::upgrade::on(&mut req))
            }
        });
        if self.config.access_log != AccessLog::Off || span.is_recording() {
            info.target = Some(target.discovery_name.clone());
        }
        let (parts, body) = req.into_parts();
        let idempotent = is_idempotent(&parts.method, &parts.headers);
        let mut body = self
            .replay_body(body, policy.retry.replay_buffer_bytes, deadline, &concrete)
            .await?;
        let grpc = concrete.protocol == crate::discovery::AppProtocol::Grpc
            || is_grpc_request(&parts.headers);

        let mut tried: Vec<usize> = Vec::new();
        let mut grpc_trailers: Option<usize> = None;
        let mut attempts: u32 = 0;
        // One clock read when an attempt starts and one when it ends, shared by the balancer,
        // the timeouts, the EWMA, outlier detection, the budget and the latency metric.
        let mut now = start;
        let mut last;
        let result = loop {
            attempts += 1;
            last = now;
            // pick
            let Some(idx) = concrete.pick(&tried, &self.config, now) else {
                break Err(ProxyError::NoEndpoints {
                    service: concrete.name().to_owned(),
                });
            };
            let ep = &concrete.active[idx];
            info.upstream = Some(ep.addr);
            info.attempts = attempts;
            let limit = self.config.limits.max_connections_per_endpoint;
            if !concrete.protocol.is_h2() && ep.in_flight() >= limit {
                // The balancer only falls back to a full endpoint when all of them are full.
                break Err(ProxyError::ConnectionLimit {
                    service: concrete.name().to_owned(),
                    limit,
                });
            }
            // connect + send with timeout
            let try_timeout = match (policy.retry.per_try_timeout, deadline) {
                (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(now))),
                (t, d) => t.or(d.map(|d| d.saturating_duration_since(now))),
            };
            let upgrade = on_upgrade.is_some();
            // A block: the trace fields are written before the exchange starts and need no
            // room in this future while it runs.
            let (attempt_span, sent) = {
                let (attempt_span, propagation) = self.tracer.client_span(
                    span,
                    &parts.method,
                    &AttemptInfo {
                        endpoint: &ep.trace_attributes,
                        target: &target.discovery_name,
                        number: attempts,
                        start: now,
                    },
                );
                let attempt_body = target.metrics.count_tx(body.take());
                let sent = if concrete.protocol.is_h2() {
                    let mut upstream =
                        build_h2_request(&parts, attempt_body, ep.authority.clone(), upgrade)?;
                    propagation.apply(upstream.headers_mut());
                    // Boxed: HTTP/2's exchange is the larger future, and the rarer one.
                    Either::Left(Box::pin(self.connector.send_h2(ep, upstream)))
                } else {
                    // The head is written straight from the client's fields (no copy of them).
                    let mut head = Vec::with_capacity(256 + parts.headers.len() * 40);
                    let rest = crate::h1::encode_request(
                        &parts,
                        |out| write_h1_fields(&parts, upgrade, &propagation, out),
                        attempt_body,
                        &mut head,
                    );
                    Either::Right(self.connector.send_h1(ep, head, rest, &parts.method, now))
                };
                (attempt_span, sent)
            };
            let guard = ep.begin();
            let res = match try_timeout {
                Some(t) => tokio::time::timeout_at(now + t, sent).await.map_err(|_| t),
                None => Ok(sent.await),
            };
            drop(guard);
            let end = Instant::now();
            last = end;
            let rtt = end.saturating_duration_since(now);
            // classify
            let attempt = classify(res, &concrete, ep.addr, grpc);
            self.tracer.end_client(
                attempt_span,
                match &attempt {
                    Attempt::Response { resp, .. } => Ok(resp.status().as_u16()),
                    Attempt::Failed { err, .. } => Err(err.kind()),
                },
                end,
            );
            let (outcome, sample) = match &attempt {
                // A gRPC answer without a status in its headers has it in its trailers.
                Attempt::Response { resp, success, .. }
                    if grpc && !resp.headers().contains_key("grpc-status") && *success =>
                {
                    grpc_trailers = Some(idx);
                    (None, Some(rtt))
                }
                Attempt::Response { success, .. } => (Some(*success), Some(rtt)),
                Attempt::Failed {
                    retry: Some(RetryReason::Timeout),
                    ..
                } => (Some(false), Some(rtt)),
                Attempt::Failed { .. } => (Some(false), None),
            };
            concrete.record(idx, sample, outcome, &self.config, end);
            // retry?
            let reason = match &attempt {
                Attempt::Response { retry, .. } | Attempt::Failed { retry, .. } => *retry,
            };
            let out_of_time = deadline.is_some_and(|d| end >= d);
            let may_retry = reason.is_some_and(|r| !r.upstream_saw_request() || idempotent)
                && attempts <= policy.retry.max_retries
                && body.replayable()
                && on_upgrade.is_none()
                && !out_of_time;
            if let Some(reason) = reason.filter(|_| may_retry) {
                if target.budget.withdraw(end) {
                    target.metrics.record_retry(reason);
                    tracing::debug!(target_service = %concrete.name(), endpoint = %ep.addr, reason = reason.label(), attempts, "retrying");
                    tried.push(idx);
                    let pause = backoff(
                        attempts,
                        policy.retry.backoff_base,
                        policy.retry.backoff_cap,
                        &mut rand::rng(),
                    );
                    let wake = deadline.map_or(end + pause, |d| d.min(end + pause));
                    tokio::time::sleep_until(wake).await;
                    now = Instant::now();
                    continue;
                }
                target.metrics.budget_exhausted.inc();
                tracing::debug!(target_service = %concrete.name(), attempts, "retry budget exhausted");
            }
            break match attempt {
                Attempt::Response { resp, .. } => Ok(resp),
                // The whole request ran out of time: name the request timeout, not the rest.
                Attempt::Failed {
                    err: ProxyError::Timeout { service, .. },
                    ..
                } if out_of_time && timeout.is_some() => Err(ProxyError::Timeout {
                    service,
                    timeout: timeout.unwrap_or_default(),
                }),
                Attempt::Failed { err, .. } => Err(err),
            };
        };
        // record
        let metrics = &target.metrics;
        metrics
            .latency
            .observe(last.saturating_duration_since(start).as_secs_f64());
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                metrics.record_status(Some(e.status()));
                metrics.record_failure(&e);
                if grpc {
                    metrics.record_grpc(Some(&HeaderValue::from(e.grpc_status())));
                }
                return Err(e);
            }
        };
        metrics.record_status(Some(resp.status()));
        if grpc && grpc_trailers.is_none() && resp.headers().contains_key("grpc-status") {
            // Trailers-only answer: the status is in the headers.
            metrics.record_grpc(resp.headers().get("grpc-status"));
        }
        // Each branch boxes the body once, with its byte counter.
        let mut resp =
            if let (Some(down), StatusCode::SWITCHING_PROTOCOLS) = (on_upgrade, resp.status()) {
                match down {
                    Downstream::Hyper(down) => splice_upgrade(down, &mut resp),
                    Downstream::Here => {
                        let up = resp.body_mut().take_upgraded();
                        resp.extensions_mut()
                            .insert(UpstreamUpgrade(Arc::new(std::sync::Mutex::new(up))));
                    }
                }
                resp.map(|b| metrics.count_rx(b))
            } else if let Some(idx) = grpc_trailers {
                let config = self.config.clone();
                let mut resp = resp.map(|inner| {
                    metrics.count_rx(GrpcStatusBody {
                        inner,
                        metrics: concrete.target.metrics.clone(),
                        concrete: concrete.clone(),
                        idx,
                        config,
                        done: false,
                    })
                });
                strip_hop_by_hop(resp.headers_mut());
                resp
            } else {
                let mut resp = resp.map(|b| metrics.count_rx(b));
                strip_hop_by_hop(resp.headers_mut());
                resp
            };
        *resp.version_mut() = Version::default();
        if self.config.debug_attempts_header {
            resp.headers_mut()
                .insert("x-skiff-attempts", HeaderValue::from(attempts));
        }
        Ok(resp)
    }

    /// route: the target of a request, by listener kind.
    fn route(&self, route: &Route, req: &Request<Body>) -> Result<Arc<Concrete>, ProxyError> {
        match route {
            Route::Fixed(c) => Ok(c.clone()),
            Route::Service(table, name) => {
                let table = table.borrow().clone();
                table
                    .service(name)
                    .cloned()
                    .ok_or_else(|| ProxyError::NoEndpoints {
                        service: name.to_string(),
                    })
            }
            Route::ByHost(table) => {
                let authority = request_authority(req).ok_or(ProxyError::MissingHost)?;
                let (host, port) = split_authority(authority);
                let table = table.borrow().clone();
                let found = table.route(host, port).cloned();
                found.ok_or_else(|| ProxyError::UnknownHost {
                    host: authority.to_owned(),
                })
            }
        }
    }

    /// Keeps a small request body so that it can be replayed; streams anything else.
    async fn replay_body(
        &self,
        body: Body,
        limit: usize,
        deadline: Option<Instant>,
        concrete: &Concrete,
    ) -> Result<ReplayBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(ReplayBody::Empty);
        }
        match body.size_hint().exact() {
            Some(n) if n <= limit as u64 => {
                // Collected by hand: `Limited` converts errors with a generic `Into`, which
                // the compiler cannot prove `Send` for a boxed error inside this future.
                let mut body = body;
                let collect = async move {
                    let mut buf = bytes::BytesMut::with_capacity(n as usize);
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.map_err(ProxyError::DownstreamBody)?.into_data() {
                            if buf.len() + data.len() > limit {
                                return Err(ProxyError::BadRequest {
                                    reason: "request body longer than its content-length".into(),
                                });
                            }
                            buf.extend_from_slice(&data);
                        }
                    }
                    Ok(buf.freeze())
                };
                let bytes = match deadline {
                    Some(d) => tokio::time::timeout_at(d, collect).await.map_err(|_| {
                        ProxyError::Timeout {
                            service: concrete.name().to_owned(),
                            timeout: d.saturating_duration_since(Instant::now()),
                        }
                    })??,
                    None => collect.await?,
                };
                Ok(ReplayBody::Full(bytes))
            }
            _ => Ok(ReplayBody::Stream(Some(body))),
        }
    }
}

/// Passes a gRPC response through and records its `grpc-status` trailer for outlier
/// detection and metrics (a non-zero or missing status is a failure).
struct GrpcStatusBody {
    inner: ResponseBody,
    metrics: Arc<crate::metrics::TargetMetrics>,
    concrete: Arc<Concrete>,
    idx: usize,
    config: Arc<ProxyConfig>,
    done: bool,
}

impl hyper::body::Body for GrpcStatusBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let res = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if !this.done {
            let status = match &res {
                Some(Ok(frame)) => frame.trailers_ref().map(|t| t.get("grpc-status")),
                Some(Err(_)) | None => Some(None),
            };
            if let Some(status) = status {
                let ok = status.is_some_and(|v| v == "0");
                this.metrics.record_grpc(status);
                this.done = true;
                this.concrete
                    .record(this.idx, None, Some(ok), &this.config, Instant::now());
            }
        }
        std::task::Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

// === impl ReplayBody ===

impl ReplayBody {
    fn replayable(&self) -> bool {
        !matches!(self, ReplayBody::Stream(_))
    }

    /// The body for the next attempt.
    fn take(&mut self) -> Body {
        match self {
            ReplayBody::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            ReplayBody::Full(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            ReplayBody::Stream(s) => match s.take() {
                Some(b) => b,
                None => Empty::new().map_err(|never| match never {}).boxed(),
            },
        }
    }
}

/// The authority a request names: absolute-form URI first, then Host.
fn request_authority(req: &Request<Body>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

fn is_upgrade(req: &Request<Body>) -> bool {
    crate::h1::wants_upgrade(req.version(), req.headers())
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    crate::h1::has_token(headers, header::CONNECTION, token)
}

fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H M S m u n).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    let v = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !has_hop_by_hop(headers) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// Headers added to the upstream copy (trace context, Host, Connection) without regrowing it.
const ADDED_HEADERS: usize = 3;

/// Whether `headers` has a hop-by-hop field or TE. Most messages carry none: one scan of the
/// names instead of a lookup per name.
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|n| is_hop_by_hop(n) || n == header::TE)
}

/// Calls `f` with each of the client's fields as it goes upstream: hop-by-hop ones, those
/// named by `Connection` and TE but for `trailers` left out; then, for a protocol switch,
/// `Upgrade` and `Connection: upgrade` again.
fn for_each_upstream_field(
    src: &HeaderMap,
    upgrade: bool,
    mut f: impl FnMut(&HeaderName, &HeaderValue),
) {
    // (Connection present, TE acceptable) when there is anything to leave out.
    let filter = has_hop_by_hop(src).then(|| {
        (
            src.contains_key(header::CONNECTION),
            src.get(header::TE).is_none_or(|te| te == "trailers"),
        )
    });
    for (name, value) in src {
        let drop = filter.is_some_and(|(connection, te_ok)| {
            is_hop_by_hop(name)
                || (name == header::TE && !te_ok)
                || (connection && connection_has(src, name.as_str()))
        });
        if !drop {
            f(name, value);
        }
    }
    if upgrade && let Some(up) = src.get(header::UPGRADE) {
        f(&header::UPGRADE, up);
        f(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
    }
}

/// The client's headers as sent upstream over HTTP/2: copied once, minus hop-by-hop ones
/// (see [`for_each_upstream_field`]), into a map with room for what the proxy adds.
fn upstream_headers(src: &HeaderMap, upgrade: bool) -> HeaderMap {
    // Most requests carry no hop-by-hop header: a clone copies the map as it is (no rehashing).
    if !upgrade && !has_hop_by_hop(src) {
        let mut out = src.clone();
        out.reserve(ADDED_HEADERS);
        return out;
    }
    let mut out = HeaderMap::with_capacity(src.len() + ADDED_HEADERS);
    for_each_upstream_field(src, upgrade, |name, value| {
        out.append(name.clone(), value.clone());
    });
    out
}

/// The client's fields as sent upstream over HTTP/1.1 (see [`for_each_upstream_field`]),
/// written straight into the request head: the attempt's trace context in place of the
/// client's, Host from an absolute-form URI when the client sent none. Whether a
/// Content-Length was among them.
fn write_h1_fields(
    parts: &Parts,
    upgrade: bool,
    propagation: &Propagation,
    out: &mut Vec<u8>,
) -> bool {
    let (mut host, mut length) = (false, false);
    for_each_upstream_field(&parts.headers, upgrade, |name, value| {
        if propagation.replaces(name) {
            return;
        }
        host |= name == header::HOST;
        length |= name == header::CONTENT_LENGTH;
        crate::h1::push_field(out, name.as_str().as_bytes(), value.as_bytes());
    });
    if !host && let Some(a) = parts.uri.authority() {
        crate::h1::push_field(out, b"host", a.as_str().as_bytes());
    }
    propagation.for_each(|name, value| crate::h1::push_field(out, name.as_str().as_bytes(), value));
    length
}

/// The upstream HTTP/2 request for one attempt, sent to `authority`.
fn build_h2_request(
    parts: &Parts,
    body: Body,
    authority: http::uri::Authority,
    upgrade: bool,
) -> Result<Request<Body>, ProxyError> {
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // HTTP/2 names the endpoint in `:authority`.
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest {
            reason: e.to_string(),
        })?;
    let mut headers = upstream_headers(&parts.headers, upgrade);
    if !headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}

/// classify: turns the client's answer into an attempt outcome.
fn classify(
    res: Result<Result<Response<ResponseBody>, SendError>, Duration>,
    concrete: &Concrete,
    addr: std::net::SocketAddr,
    grpc: bool,
) -> Attempt {
    let service = || concrete.name().to_owned();
    match res {
        Err(t) => Attempt::Failed {
            err: ProxyError::Timeout {
                service: service(),
                timeout: t,
            },
            retry: Some(RetryReason::Timeout),
        },
        Ok(Err(SendError::Connect(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
            Attempt::Failed {
                err: ProxyError::ConnectTimeout {
                    service: service(),
                    addr: addr.to_string(),
                },
                retry: Some(RetryReason::Connect),
            }
        }
        Ok(Err(e @ (SendError::Connect(_) | SendError::Handshake(_) | SendError::Unsent(_)))) => {
            Attempt::Failed {
                err: ProxyError::Connect {
                    service: service(),
                    addr: addr.to_string(),
                    source: Box::new(e),
                },
                retry: Some(RetryReason::Connect),
            }
        }
        // The server refused the stream before processing it: like a connect failure.
        Ok(Err(SendError::Request(e))) if refused_stream(&e) => Attempt::Failed {
            err: ProxyError::Connect {
                service: service(),
                addr: addr.to_string(),
                source: Box::new(e),
            },
            retry: Some(RetryReason::Connect),
        },
        Ok(Err(e @ (SendError::Request(_) | SendError::Exchange(_)))) => Attempt::Failed {
            err: ProxyError::Reset {
                service: service(),
                addr: addr.to_string(),
                source: Box::new(e),
            },
            retry: Some(RetryReason::Reset),
        },
        Ok(Ok(resp)) => {
            let status = resp.status();
            let grpc_status = if grpc {
                resp.headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok())
            } else {
                None
            };
            let retry = RetryReason::for_status(status)
                .or_else(|| (grpc_status == Some(14)).then_some(RetryReason::GrpcUnavailable));
            let success = !status.is_server_error() && grpc_status.is_none_or(|s| s == 0);
            Attempt::Response {
                resp,
                retry,
                success,
            }
        }
    }
}

/// HTTP/2 REFUSED_STREAM anywhere in the error's sources.
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    source_chain(e).any(|s| {
        s.downcast_ref::<h2::Error>()
            .and_then(h2::Error::reason)
            .is_some_and(|r| r == h2::Reason::REFUSED_STREAM)
    })
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Joins the client's and the upstream's upgraded connections (WebSocket and friends).
fn splice_upgrade(down: hyper::upgrade::OnUpgrade, resp: &mut Response<ResponseBody>) {
    use tokio::io::AsyncWriteExt;
    let Some((mut up, early)) = resp.body_mut().take_upgraded() else {
        return;
    };
    tokio::spawn(async move {
        let mut down = match down.await {
            Ok(down) => TokioIo::new(down),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // What the upstream sent right after its 101, before the splice began.
        if !early.is_empty()
            && let Err(e) = down.write_all(&early).await
        {
            tracing::debug!(error = %e, "upgraded connection ended");
            return;
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", HeaderValue::from_static("2S"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(2)));
        h.insert("grpc-timeout", HeaderValue::from_static("123456789S"));
        assert_eq!(grpc_timeout(&h), None);
        h.insert("grpc-timeout", HeaderValue::from_static("5x"));
        assert_eq!(grpc_timeout(&h), None);
    }

    #[test]
    fn upstream_headers_copy_everything_end_to_end() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("orders:8080"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let out = upstream_headers(&h, false);
        assert_eq!(out, h);
        h.insert(header::CONNECTION, HeaderValue::from_static("x-multi"));
        let out = upstream_headers(&h, false);
        assert_eq!(
            out.len(),
            1,
            "Connection and the header it names go: {out:?}"
        );
        assert_eq!(out[header::HOST], "orders:8080");
    }

    #[test]
    fn h1_fields_leave_hop_by_hop_out_and_carry_the_attempts_trace_context() {
        let tracer = Tracer::disabled();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("orders:8080"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.append("x-keep", HeaderValue::from_static("a"));
        h.append("x-keep", HeaderValue::from_static("b"));
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let (mut parts, ()) = Request::post("/orders").body(()).unwrap().into_parts();
        parts.headers = h;
        let server = tracer.server_span(&crate::trace::RequestInfo {
            listener: "test",
            headers: &parts.headers,
            method: &parts.method,
            path: "/orders",
            query: None,
            authority: None,
            peer: None,
            version: Version::HTTP_11,
        });
        let (_span, propagation) = tracer.client_span(
            &server,
            &parts.method,
            &AttemptInfo {
                endpoint: &crate::trace::endpoint_attributes("127.0.0.1:1".parse().unwrap()),
                target: &"orders".into(),
                number: 1,
                start: Instant::now(),
            },
        );
        let mut out = Vec::new();
        assert!(
            write_h1_fields(&parts, false, &propagation, &mut out),
            "a length was sent"
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("traceparent: "))
                .count(),
            1,
            "{text}"
        );
        let tp = lines
            .iter()
            .find(|l| l.starts_with("traceparent: "))
            .unwrap();
        assert!(
            tp.contains("4bf92f3577b34da6a3ce929d0e0e4736") && !tp.contains("00f067aa0ba902b7"),
            "the trace continues in a new span: {tp}"
        );
        for gone in ["connection", "x-foo", "keep-alive"] {
            assert!(
                !lines.iter().any(|l| l.starts_with(&format!("{gone}:"))),
                "{gone}: {text}"
            );
        }
        for kept in [
            "host: orders:8080",
            "te: trailers",
            "x-keep: a",
            "x-keep: b",
            "content-length: 3",
        ] {
            assert!(lines.contains(&kept), "{kept}: {text}");
        }

        // Absolute form without Host: Host from the URI; an upgrade keeps its two fields.
        let (mut parts, ()) = Request::get("http://orders:8080/ws")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut out = Vec::new();
        assert!(!write_h1_fields(&parts, true, &propagation, &mut out));
        let text = String::from_utf8(out).unwrap();
        for kept in [
            "host: orders:8080",
            "upgrade: websocket",
            "connection: upgrade",
        ] {
            assert!(text.lines().any(|l| l == kept), "{kept}: {text}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-keep") && h.contains_key(header::TE));
    }
}
