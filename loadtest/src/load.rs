//! The load generator: open loop at a constant rate (latency from the schedule) or closed loop at full speed.
//!
//! Each connection is one task that owns its HTTP connection, opened before the
//! clock starts (no request's latency holds a connect). In open loop it sends
//! its share of the schedule (`schedule::connection_indices`) when each request
//! falls due; a connection still busy with an HTTP/1.1 request sends
//! the next one late, and the lateness counts as latency. HTTP/2 connections
//! keep up to `streams_per_connection` requests in flight. Every run is
//! bounded twice: by its duration (plus one request timeout to finish) and by
//! a request count.

pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::LoadtestError;
use crate::http_client::ProxyConfig;
pub use report::{
    ErrorCounts, ErrorKind, LatencySummary, Protocol, Report, SlowRequest, SlowRequests,
};

/// Per-request timeout unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest run accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Count bound of a closed-loop run when none is given.
pub const DEFAULT_MAX_MODE_REQUESTS: u64 = 100_000_000;
/// Most connections accepted.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Most HTTP/2 streams per connection accepted.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1_000;
/// Most slow requests a run keeps the times of (see [`LoadOptions::record_slow_over`]).
pub const MAX_SLOW_REQUESTS: usize = 1_000_000;
/// Back-off after a failed connect in closed loop, so a dead target is not hammered.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadMode {
    /// Open loop: requests are due at a constant rate whatever the answers do.
    Rate { per_second: f64 },
    /// Closed loop: every connection sends its next request as soon as one completes.
    Max,
}

/// What to send, how fast and for how long.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `http://` URLs; connection `c` sends to target `c % targets.len()`.
    pub targets: Vec<String>,
    pub mode: LoadMode,
    pub duration: Duration,
    /// Count bound; the schedule's size in open loop, [`DEFAULT_MAX_MODE_REQUESTS`] in closed loop.
    pub max_requests: Option<u64>,
    pub connections: usize,
    /// HTTP/2 only: requests in flight per connection (HTTP/1.1 always has one).
    pub streams_per_connection: usize,
    pub protocol: Protocol,
    pub method: Method,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Send every request to this HTTP proxy, in absolute form.
    pub proxy: Option<ProxyConfig>,
    pub timeout: Duration,
    /// Targets (or the proxy) may resolve to non-loopback addresses: only for the project's
    /// own network namespaces.
    pub allow_non_loopback: bool,
    /// Pace the schedule from a thread sleeping on the OS's high-resolution timer instead of
    /// the runtime's 1 ms timer wheel (the default: with the wheel, up to 1 ms of the
    /// generator's own lateness lands in every latency).
    pub precise_timing: bool,
    /// Keep the scheduled and completion times of every answered request slower than this
    /// (at most [`MAX_SLOW_REQUESTS`]), so a benchmark can tell which were in flight while
    /// the host stalled (`bench::stalls`).
    pub record_slow_over: Option<Duration>,
}

// === impl LoadOptions ===

impl LoadOptions {
    /// An open-loop GET run at `per_second` over 16 HTTP/1.1 connections.
    pub fn rate(target: impl Into<String>, per_second: f64, duration: Duration) -> LoadOptions {
        LoadOptions {
            targets: vec![target.into()],
            mode: LoadMode::Rate { per_second },
            duration,
            max_requests: None,
            connections: 16,
            streams_per_connection: 100,
            protocol: Protocol::Http1,
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            proxy: None,
            timeout: DEFAULT_TIMEOUT,
            allow_non_loopback: false,
            precise_timing: true,
            record_slow_over: None,
        }
    }

    /// A closed-loop GET run over 64 HTTP/1.1 connections.
    pub fn max(target: impl Into<String>, duration: Duration) -> LoadOptions {
        LoadOptions {
            mode: LoadMode::Max,
            connections: 64,
            streams_per_connection: 1,
            ..LoadOptions::rate(target, 1.0, duration)
        }
    }
}

/// Runs the load described by `opts` and reports what it measured.
pub async fn run(opts: LoadOptions) -> Result<Report, LoadtestError> {
    let plan = Arc::new(Plan::new(&opts).await?);
    let template = report::new_histogram()?;
    let opened = open_connections(&plan, opts.connections).await;
    let start = Instant::now() + Duration::from_millis(1);
    let run = Arc::new(RunState {
        plan: plan.clone(),
        start,
        stop_at: start + opts.duration,
        deadline: start + opts.duration + opts.timeout,
        next_index: AtomicU64::new(0),
    });
    let mut workers = JoinSet::new();
    let mut pacer = None;
    let mut senders = Vec::new();
    for (connection, sender) in opened.into_iter().enumerate() {
        let source = match plan.mode {
            LoadMode::Rate { per_second } if plan.precise_timing => {
                let (sender, due) = tokio::sync::mpsc::unbounded_channel();
                senders.push(sender);
                Source::Paced { due, per_second }
            }
            LoadMode::Rate { per_second } => Source::Scheduled {
                indices: schedule::connection_indices(connection, opts.connections, plan.planned),
                pending: None,
                per_second,
            },
            LoadMode::Max => Source::Shared,
        };
        let target = connection % plan.targets.len();
        workers.spawn(worker(
            run.clone(),
            target,
            source,
            template.clone(),
            sender,
        ));
    }
    if let LoadMode::Rate { per_second } = plan.mode
        && plan.precise_timing
    {
        let (deadline, planned) = (run.deadline, plan.planned);
        pacer = Some(
            std::thread::Builder::new()
                .name("skiff-load-pacer".into())
                .spawn(move || pace(senders, start, deadline, per_second, planned))?,
        );
    }
    let mut total = Tally::new(template.clone(), plan.record_slow_over);
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(tally) => total.merge(&tally)?,
            Err(error) => {
                return Err(LoadtestError::InvalidOption(format!(
                    "load worker failed: {error}"
                )));
            }
        }
    }
    if let Some(pacer) = pacer {
        // It stops at the deadline or when every connection is gone, which is now.
        let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    }
    if matches!(plan.mode, LoadMode::Rate { .. }) {
        total.not_sent = plan.planned.saturating_sub(total.sent);
    }
    let elapsed = start.elapsed().as_secs_f64().max(f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let throughput = total.responses as f64 / elapsed;
    let (mode, target_rate) = match opts.mode {
        LoadMode::Rate { per_second } => ("rate", Some(per_second)),
        LoadMode::Max => ("max", None),
    };
    Ok(Report {
        mode,
        protocol: opts.protocol,
        targets: opts.targets.clone(),
        proxy: opts.proxy.as_ref().map(|proxy| proxy.authority.clone()),
        connections: opts.connections,
        target_rate,
        elapsed_secs: elapsed,
        planned: plan.planned,
        sent: total.sent,
        not_sent: total.not_sent,
        responses: total.responses,
        ok: total.ok,
        throughput,
        statuses: total.statuses,
        errors: total.errors,
        latency: LatencySummary::from_histogram(&total.latency),
        service_time: LatencySummary::from_histogram(&total.service_time),
        bytes_received: total.bytes_received,
        slow: total.slow,
    })
}

/// The validated options: resolved addresses, request templates.
struct Plan {
    targets: Vec<Target>,
    mode: LoadMode,
    planned: u64,
    in_flight: usize,
    protocol: Protocol,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    precise_timing: bool,
    record_slow_over: Option<Duration>,
}

struct Target {
    /// Where connections go: the target, or the proxy.
    connect: SocketAddr,
    /// The request URI: origin form, or absolute for a proxy and for HTTP/2.
    uri: Uri,
    host: HeaderValue,
}

// === impl Plan ===

impl Plan {
    async fn new(opts: &LoadOptions) -> Result<Plan, LoadtestError> {
        let invalid = |message: String| Err(LoadtestError::InvalidOption(message));
        if opts.targets.is_empty() {
            return invalid("at least one target url is needed".into());
        }
        if opts.duration.is_zero() || opts.duration > MAX_DURATION {
            return invalid(format!(
                "duration must be between 1 ms and {} s",
                MAX_DURATION.as_secs()
            ));
        }
        if opts.connections == 0 || opts.connections > MAX_CONNECTIONS {
            return invalid(format!(
                "connections must be between 1 and {MAX_CONNECTIONS}"
            ));
        }
        if opts.connections < opts.targets.len() {
            return invalid("every target needs a connection: connections < targets".into());
        }
        if opts.timeout.is_zero() {
            return invalid("timeout must be positive".into());
        }
        let in_flight = match opts.protocol {
            Protocol::Http1 => 1,
            Protocol::H2c => opts.streams_per_connection,
        };
        if in_flight == 0 || in_flight > MAX_STREAMS_PER_CONNECTION {
            return invalid(format!(
                "streams per connection must be between 1 and {MAX_STREAMS_PER_CONNECTION}"
            ));
        }
        let planned = match opts.mode {
            LoadMode::Rate { per_second } => {
                if !(per_second.is_finite() && per_second > 0.0) {
                    return invalid(format!("rate must be a positive number, not {per_second}"));
                }
                schedule::planned_requests(opts.duration, per_second, opts.max_requests)
            }
            LoadMode::Max => opts.max_requests.unwrap_or(DEFAULT_MAX_MODE_REQUESTS),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| LoadtestError::InvalidOption(format!("header name {name:?}: {e}")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|e| LoadtestError::InvalidOption(format!("header {name} value: {e}")))?;
            headers.append(name, value);
        }
        let proxy_addr = match &opts.proxy {
            Some(proxy) => Some(resolve(&proxy.authority, opts.allow_non_loopback).await?),
            None => None,
        };
        let mut targets = Vec::with_capacity(opts.targets.len());
        for url in &opts.targets {
            targets.push(Target::new(url, opts, proxy_addr).await?);
        }
        Ok(Plan {
            targets,
            mode: opts.mode,
            planned,
            in_flight,
            protocol: opts.protocol,
            method: opts.method.clone(),
            headers,
            body: opts.body.clone(),
            timeout: opts.timeout,
            precise_timing: opts.precise_timing,
            record_slow_over: opts.record_slow_over,
        })
    }

    fn request(&self, target: &Target) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = target.uri.clone();
        let headers = request.headers_mut();
        if self.protocol == Protocol::Http1 {
            headers.insert(http::header::HOST, target.host.clone());
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        request
    }
}

// === impl Target ===

impl Target {
    async fn new(
        url: &str,
        opts: &LoadOptions,
        proxy_addr: Option<SocketAddr>,
    ) -> Result<Target, LoadtestError> {
        let invalid = |reason: &str| LoadtestError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a url"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("only http:// targets are supported"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("bad host"))?;
        let connect = match proxy_addr {
            Some(addr) => addr,
            None => {
                let port = authority.port_u16().unwrap_or(80);
                resolve(
                    &format!("{}:{port}", authority.host()),
                    opts.allow_non_loopback,
                )
                .await?
            }
        };
        let uri = if proxy_addr.is_some() || opts.protocol == Protocol::H2c {
            uri
        } else {
            let path = uri.path_and_query().map_or("/", |path| path.as_str());
            path.parse().map_err(|_| invalid("bad path"))?
        };
        Ok(Target { connect, uri, host })
    }
}

async fn resolve(host_port: &str, allow_non_loopback: bool) -> Result<SocketAddr, LoadtestError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|error| LoadtestError::InvalidUrl {
            url: host_port.to_string(),
            reason: format!("cannot resolve: {error}"),
        })?
        .collect();
    let chosen = addrs
        .iter()
        .find(|addr| allow_non_loopback || addr.ip().is_loopback())
        .copied();
    chosen.ok_or_else(|| LoadtestError::InvalidUrl {
        url: host_port.to_string(),
        reason: "load is only sent to loopback addresses (see --allow-non-loopback)".to_string(),
    })
}

struct RunState {
    plan: Arc<Plan>,
    start: Instant,
    /// No request is due after this.
    stop_at: Instant,
    /// In-flight requests are abandoned (as timeouts) and unsent ones given up here.
    deadline: Instant,
    /// Closed loop: the next request's number, shared by every connection.
    next_index: AtomicU64,
}

/// One connection's counts, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    service_time: Histogram<u64>,
    errors: ErrorCounts,
    statuses: BTreeMap<u16, u64>,
    sent: u64,
    not_sent: u64,
    responses: u64,
    ok: u64,
    bytes_received: u64,
    slow: Option<SlowRequests>,
}

// === impl Tally ===

impl Tally {
    fn new(template: Histogram<u64>, slow_over: Option<Duration>) -> Tally {
        Tally {
            service_time: template.clone(),
            latency: template,
            errors: ErrorCounts::default(),
            statuses: BTreeMap::new(),
            sent: 0,
            not_sent: 0,
            responses: 0,
            ok: 0,
            bytes_received: 0,
            slow: slow_over.map(SlowRequests::new),
        }
    }

    fn merge(&mut self, other: &Tally) -> Result<(), LoadtestError> {
        let histogram_error =
            |error: hdrhistogram::AdditionError| LoadtestError::InvalidOption(error.to_string());
        self.latency.add(&other.latency).map_err(histogram_error)?;
        self.service_time
            .add(&other.service_time)
            .map_err(histogram_error)?;
        self.errors.add(&other.errors);
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.sent += other.sent;
        self.not_sent += other.not_sent;
        self.responses += other.responses;
        self.ok += other.ok;
        self.bytes_received += other.bytes_received;
        if let (Some(slow), Some(other)) = (&mut self.slow, &other.slow) {
            slow.merge(other);
        }
        Ok(())
    }

    fn record(&mut self, exchange: &Exchange) {
        match exchange.result {
            Ok((status, bytes)) => {
                self.responses += 1;
                self.bytes_received += bytes;
                *self.statuses.entry(status.as_u16()).or_default() += 1;
                if status.is_client_error() {
                    self.errors.count(ErrorKind::Status4xx);
                } else if status.is_server_error() {
                    self.errors.count(ErrorKind::Status5xx);
                } else {
                    self.ok += 1;
                }
                let latency = micros(exchange.done - exchange.scheduled);
                self.latency.saturating_record(latency);
                if let Some(slow) = &mut self.slow {
                    let request = SlowRequest {
                        scheduled: exchange.scheduled,
                        done: exchange.done,
                    };
                    slow.record(latency, request);
                }
                self.service_time
                    .saturating_record(micros(exchange.done - exchange.sent_at));
            }
            Err(kind) => self.errors.count(kind),
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Which request a connection sends next, and when it is due.
enum Source {
    /// Open loop on the runtime's timer (1 ms granularity).
    Scheduled {
        indices: std::iter::StepBy<std::ops::Range<u64>>,
        pending: Option<u64>,
        per_second: f64,
    },
    /// Open loop paced by a thread that sleeps with the OS's high-resolution timer.
    Paced {
        due: tokio::sync::mpsc::UnboundedReceiver<u64>,
        per_second: f64,
    },
    /// Closed loop: the next number of a shared counter, due now.
    Shared,
}

// === impl Source ===

impl Source {
    /// When the next request is due, once it is; `None` when there are no more.
    /// Cancel-safe: a request whose wait is interrupted is kept for the next call.
    async fn next_due(&mut self, run: &RunState) -> Option<Instant> {
        match self {
            Source::Scheduled {
                indices,
                pending,
                per_second,
            } => {
                if pending.is_none() {
                    *pending = indices.next();
                }
                let due = run.start + schedule::offset((*pending)?, *per_second);
                if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                }
                *pending = None;
                Some(due)
            }
            Source::Paced { due, per_second } => {
                let index = due.recv().await?;
                Some(run.start + schedule::offset(index, *per_second))
            }
            Source::Shared => {
                let now = Instant::now();
                if now >= run.stop_at {
                    return None;
                }
                let index = run.next_index.fetch_add(1, Ordering::Relaxed);
                (index < run.plan.planned).then_some(now)
            }
        }
    }
}

/// Hands out the schedule on time: sleeps until each request is due (the OS timer is far
/// finer than the runtime's) and tells the connection that owns it. Stops at `deadline`.
fn pace(
    senders: Vec<tokio::sync::mpsc::UnboundedSender<u64>>,
    start: Instant,
    deadline: Instant,
    per_second: f64,
    planned: u64,
) {
    let connections = senders.len().max(1) as u64;
    for index in 0..planned {
        let due = start + schedule::offset(index, per_second);
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let Ok(slot) = usize::try_from(index % connections) else {
            return;
        };
        if senders[slot].send(index).is_err() {
            return;
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

// === impl Sender ===

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(sender) => sender.is_closed(),
            Sender::H2(sender) => sender.is_closed(),
        }
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

struct Exchange {
    scheduled: Instant,
    sent_at: Instant,
    done: Instant,
    result: Result<(StatusCode, u64), ErrorKind>,
    /// An HTTP/1.1 connection still fit for the next request.
    reusable: Option<Sender>,
}

async fn worker(
    run: Arc<RunState>,
    target: usize,
    mut source: Source,
    template: Histogram<u64>,
    mut sender: Option<Sender>,
) -> Tally {
    let plan = run.plan.clone();
    let target = &plan.targets[target];
    let mut tally = Tally::new(template, plan.record_slow_over);
    let mut in_flight: JoinSet<Exchange> = JoinSet::new();
    let mut exhausted = false;
    let deadline = tokio::time::sleep_until(run.deadline);
    tokio::pin!(deadline);
    loop {
        if exhausted && in_flight.is_empty() {
            break;
        }
        let can_send = !exhausted && in_flight.len() < plan.in_flight;
        let scheduled = tokio::select! {
            biased;
            () = &mut deadline => {
                let abandoned = in_flight.len() as u64;
                in_flight.shutdown().await;
                for _ in 0..abandoned {
                    tally.errors.count(ErrorKind::Timeout);
                }
                break;
            }
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(exchange) = joined {
                    tally.record(&exchange);
                }
                continue;
            }
            due = source.next_due(&run), if can_send => match due {
                Some(due) => due,
                None => {
                    exhausted = true;
                    continue;
                }
            },
        };
        // Closed loop: a request is due when it can be sent.
        let scheduled = match plan.mode {
            LoadMode::Rate { .. } => scheduled,
            LoadMode::Max => Instant::now(),
        };
        tally.sent += 1;
        if sender.as_ref().is_none_or(Sender::is_closed) {
            sender = None;
            match connect(&plan, target).await {
                Ok(connected) => sender = Some(connected),
                Err(kind) => {
                    tally.errors.count(kind);
                    if plan.mode == LoadMode::Max {
                        tokio::time::sleep(CONNECT_RETRY_DELAY).await;
                    }
                    continue;
                }
            }
        }
        let request = plan.request(target);
        // No answer is awaited past the run's deadline.
        let until = (Instant::now() + plan.timeout).min(run.deadline);
        match sender.take() {
            // HTTP/1.1 carries one request at a time: no task needed.
            Some(Sender::H1(h1)) => {
                let exchange = exchange(Sender::H1(h1), request, scheduled, until).await;
                tally.record(&exchange);
                sender = exchange.reusable;
            }
            Some(Sender::H2(h2)) => {
                let this = Sender::H2(h2.clone());
                sender = Some(Sender::H2(h2));
                in_flight.spawn(exchange(this, request, scheduled, until));
            }
            None => tally.errors.count(ErrorKind::Connect),
        }
    }
    tally
}

/// Opens every connection before the clock starts, so that no request's latency holds a
/// connect. One that fails here is tried again, and counted, when its first request is due.
async fn open_connections(plan: &Arc<Plan>, connections: usize) -> Vec<Option<Sender>> {
    let mut connecting = JoinSet::new();
    for connection in 0..connections {
        let plan = plan.clone();
        connecting.spawn(async move {
            let target = &plan.targets[connection % plan.targets.len()];
            (connection, connect(&plan, target).await.ok())
        });
    }
    let mut opened: Vec<Option<Sender>> = (0..connections).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        if let Ok((connection, sender)) = joined {
            opened[connection] = sender;
        }
    }
    opened
}

async fn connect(plan: &Plan, target: &Target) -> Result<Sender, ErrorKind> {
    let stream = match tokio::time::timeout(plan.timeout, TcpStream::connect(target.connect)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(addr = %target.connect, %error, "connect failed");
            return Err(ErrorKind::Connect);
        }
        Err(_) => return Err(ErrorKind::Connect),
    };
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match plan.protocol {
        Protocol::Http1 => {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|error| classify(&error))?;
            tokio::spawn(connection);
            Ok(Sender::H1(sender))
        }
        Protocol::H2c => {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|error| classify(&error))?;
            tokio::spawn(connection);
            Ok(Sender::H2(sender))
        }
    }
}

async fn exchange(
    mut sender: Sender,
    request: Request<Full<Bytes>>,
    scheduled: Instant,
    until: Instant,
) -> Exchange {
    let sent_at = Instant::now();
    let outcome = tokio::time::timeout_at(until, async {
        let response = sender
            .send(request)
            .await
            .map_err(|error| classify(&error))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| classify(&error))?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
            }
        }
        Ok((status, bytes))
    })
    .await;
    let done = Instant::now();
    let result = outcome.unwrap_or(Err(ErrorKind::Timeout));
    let reusable = match (&sender, &result) {
        (Sender::H1(_), Ok(_)) => Some(sender),
        _ => None,
    };
    Exchange {
        scheduled,
        sent_at,
        done,
        result,
        reusable,
    }
}

fn classify(error: &hyper::Error) -> ErrorKind {
    if error.is_parse() || error.is_parse_status() || error.is_user() {
        ErrorKind::Protocol
    } else if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Reset
    }
}
