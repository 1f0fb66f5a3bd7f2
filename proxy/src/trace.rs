//! OpenTelemetry spans of proxied requests: context in (W3C, B3), sampling, spans out to OTLP.
//!
//! Each request gets a *server* span (this hop, child of the caller's span) and each attempt
//! upstream a *client* span (child of the server span, so retries are siblings); the upstream
//! `traceparent` names the client span. A recorded span is written as OTLP protobuf while the
//! request runs (`trace/otlp.rs`: no attribute list, no allocation in steady traffic) and, when
//! it ends, appended to its worker thread's chunk of the bounded span queue
//! (`trace/queue.rs`); the hot path never waits for the exporter: when the queue is full
//! (collector down or slow) a span is dropped and counted in `skiff_proxy_spans_dropped_total`.
//! A background thread (`trace/export.rs`) takes full chunks, wraps them into requests without
//! copying the spans, and POSTs OTLP (HTTP/protobuf or unary gRPC over h2c).
//!
//! Why no `opentelemetry` SDK: OTLP's trace messages are a handful of protobuf fields, encoded
//! by hand in `trace/otlp.rs` (checked against the official generated types in tests), and sent
//! with the hyper client the proxy already has; the SDK plus tonic would more than double the
//! proxy's compile time on two cores and its span processor API does not let us count drops
//! in our own registry.

mod export;
mod otlp;
mod queue;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use otlp::key;
use queue::SpanQueue;

/// Spans waiting for export before new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;
/// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Longest wait before a partial batch is sent (`OTEL_BSP_SCHEDULE_DELAY`).
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// One export request's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `[telemetry] otlp_endpoint` and `OTEL_EXPORTER_OTLP_ENDPOINT` are bases: HTTP/protobuf
/// posts to this path below them.
pub const OTLP_HTTP_TRACES_PATH: &str = "/v1/traces";

/// Bad tracing settings.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{var}: unsupported OTLP protocol {value:?} (use grpc or http/protobuf)")]
    Protocol { var: &'static str, value: String },
    #[error("{var}: invalid OTLP endpoint {value:?}: {reason}")]
    Endpoint {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{var}: unsupported sampler {value:?}")]
    Sampler { var: &'static str, value: String },
    #[error("{var}: {value:?} is not a number in range")]
    Number { var: &'static str, value: String },
    #[error("register span metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("start the exporter thread: {0}")]
    Runtime(#[source] std::io::Error),
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Unary `TraceService/Export` over HTTP/2 cleartext.
    Grpc,
    /// `POST /v1/traces` with `application/x-protobuf`.
    HttpProtobuf,
}

/// Which traces are recorded: parent-based ratio sampling by default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// A request with a parent follows the parent's sampled flag.
    pub parent_based: bool,
    /// Share (0.0–1.0) of new traces (all traces unless parent-based) that are sampled.
    pub ratio: f64,
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSettings {
    /// Full URL: `http://host:4318/v1/traces` (HTTP) or `http://host:4317` (gRPC).
    pub endpoint: http::Uri,
    pub protocol: OtlpProtocol,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A sidecar's tracing settings; the default propagates context and exports nothing.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TraceSettings {
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`); empty: the sidecar's service name.
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), over the sidecar's own.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    /// `None`: context is still propagated, nothing is exported.
    pub export: Option<ExportSettings>,
}

/// Trace identity of one span, as propagated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

/// What came in: the caller's context, if any, in which format.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parent {
    ctx: SpanContext,
    b3: B3Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum B3Format {
    /// W3C `traceparent` (or no B3 at all).
    None,
    Single,
    Multi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Client,
}

/// A span being recorded: its OTLP `Span` fields so far, in a buffer from the thread's pool.
struct Recording {
    buf: Vec<u8>,
    start_unix_nanos: u64,
    start: Instant,
}

/// The span of one request on this hop, open until the response head is sent.
pub(crate) struct ServerSpan {
    pub(crate) ctx: SpanContext,
    parent: Option<Parent>,
    trace_state: Option<HeaderValue>,
    /// Only when the span is recorded (sampled, with an exporter): an unrecorded span reads no
    /// clock and writes nothing.
    rec: Option<Recording>,
}

/// One attempt upstream.
pub(crate) struct ClientSpan {
    rec: Option<Recording>,
}

/// Starts spans and hands finished ones to the exporter. Cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    sampler: Sampler,
    export: Option<Arc<ExportHandle>>,
}

struct ExportHandle {
    queue: Arc<SpanQueue>,
    /// Asks the exporter to send everything queued; closed when the last tracer goes, which
    /// makes the exporter send what is left and stop.
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

/// Counters of the exporter, registered in the sidecar's registry.
#[derive(Clone)]
pub(crate) struct SpanMetrics {
    pub(crate) dropped: IntCounter,
    pub(crate) exported: IntCounter,
}

// === impl TraceSettings ===

impl TraceSettings {
    /// Settings from the process environment (`OTEL_*`) over `[telemetry]` of `skiff.toml`.
    pub fn from_env(
        telemetry: &skiff_config::settings::TelemetrySettings,
    ) -> Result<TraceSettings, TraceError> {
        Self::from_vars(
            |k| std::env::var(k).ok(),
            telemetry.otlp_endpoint.as_deref(),
            telemetry.trace_sampling_ratio,
        )
    }

    /// Settings from `var` (an environment lookup) over Skiff's own `otlp_endpoint` (a base
    /// URL, like `OTEL_EXPORTER_OTLP_ENDPOINT`) and `sampling_ratio`. Precedence, most specific
    /// first: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `otlp_endpoint`; `OTEL_TRACES_SAMPLER`/`_ARG` over `sampling_ratio`
    /// (parent-based). `OTEL_SDK_DISABLED=true` exports nothing.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        otlp_endpoint: Option<&str>,
        sampling_ratio: f64,
    ) -> Result<TraceSettings, TraceError> {
        let var = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |k: &'static str, default: u64| -> Result<u64, TraceError> {
            match var(k) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| TraceError::Number { var: k, value: v }),
            }
        };
        let ratio = |k: &'static str, v: Option<String>, default: f64| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(TraceError::Number { var: k, value: v }),
        };
        let sampler_arg = var("OTEL_TRACES_SAMPLER_ARG");
        let sampler = match var("OTEL_TRACES_SAMPLER").as_deref() {
            None => Sampler {
                parent_based: true,
                ratio: ratio(
                    "OTEL_TRACES_SAMPLER_ARG",
                    sampler_arg,
                    sampling_ratio.clamp(0.0, 1.0),
                )?,
            },
            Some(name) => {
                let (parent_based, root) = match name.strip_prefix("parentbased_") {
                    Some(root) => (true, root),
                    None => (false, name),
                };
                let ratio = match root {
                    "always_on" => 1.0,
                    "always_off" => 0.0,
                    "traceidratio" => ratio("OTEL_TRACES_SAMPLER_ARG", sampler_arg, 1.0)?,
                    _ => {
                        return Err(TraceError::Sampler {
                            var: "OTEL_TRACES_SAMPLER",
                            value: name.to_owned(),
                        });
                    }
                };
                Sampler {
                    parent_based,
                    ratio,
                }
            }
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            }) {
            None => OtlpProtocol::HttpProtobuf,
            Some((_, v)) if v == "grpc" => OtlpProtocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((k, v)) => return Err(TraceError::Protocol { var: k, value: v }),
        };
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            otlp_endpoint.map(str::trim).filter(|v| !v.is_empty()),
        ) {
            (Some(v), _, _) => Some(parse_endpoint(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &v,
                None,
            )?),
            (None, Some(v), _) => Some(parse_endpoint(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &v,
                Some(protocol),
            )?),
            (None, None, Some(v)) => Some(parse_endpoint(
                "telemetry.otlp_endpoint",
                v,
                Some(protocol),
            )?),
            (None, None, None) => None,
        };
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let export = match endpoint {
            Some(endpoint) if !disabled => Some(ExportSettings {
                endpoint,
                protocol,
                queue_capacity: number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE_CAPACITY as u64)?
                    .max(1) as usize,
                batch_size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH_SIZE as u64)?
                    .max(1) as usize,
                interval: Duration::from_millis(number(
                    "OTEL_BSP_SCHEDULE_DELAY",
                    DEFAULT_EXPORT_INTERVAL.as_millis() as u64,
                )?),
                timeout: Duration::from_millis(
                    number(
                        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                        number(
                            "OTEL_EXPORTER_OTLP_TIMEOUT",
                            DEFAULT_EXPORT_TIMEOUT.as_millis() as u64,
                        )?,
                    )?
                    .max(1),
                ),
            }),
            _ => None,
        };
        let resource = var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| {
                v.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(TraceSettings {
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_default(),
            resource,
            sampler,
            export,
        })
    }
}

/// An `http://` URL; a base (`Some(protocol)`) gets `/v1/traces` appended for HTTP.
fn parse_endpoint(
    var: &'static str,
    value: &str,
    base_for: Option<OtlpProtocol>,
) -> Result<http::Uri, TraceError> {
    let err = |reason: &str| TraceError::Endpoint {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = value.parse().map_err(|_| err("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(err("https is not supported yet: use http://")),
        _ => return Err(err("must start with http://")),
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(err("no host"));
    };
    let path = uri.path().trim_end_matches('/');
    let path = match base_for {
        Some(OtlpProtocol::HttpProtobuf) if !path.ends_with(OTLP_HTTP_TRACES_PATH) => {
            format!("{path}{OTLP_HTTP_TRACES_PATH}")
        }
        _ if path.is_empty() => "/".to_owned(),
        _ => path.to_owned(),
    };
    http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| err(&e.to_string()))
}

// === impl Sampler ===

impl Default for Sampler {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Sampler {
            parent_based: true,
            ratio: 1.0,
        }
    }
}

impl Sampler {
    fn sample(&self, parent: Option<&SpanContext>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled,
            _ => ratio_sampled(self.ratio, trace_id),
        }
    }
}

/// OpenTelemetry's `TraceIdRatioBased`: the low 8 bytes of the trace id, below the ratio's
/// share of `u64`, so every hop decides the same for the same trace.
fn ratio_sampled(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

// === impl Tracer ===

impl Tracer {
    /// A tracer that propagates context (parent-based, always on) and exports nothing.
    pub fn disabled() -> Tracer {
        Tracer {
            sampler: Sampler::default(),
            export: None,
        }
    }

    /// Registers the span counters and, when `settings.export` is set, starts the exporter
    /// task (call within a Tokio runtime). `service_name` (the ECS service, `client` for a
    /// client-only sidecar) labels the counters, as in `metrics.rs`, and is the default
    /// `service.name`; `resource` describes the task (`service.instance.id`, ...).
    pub(crate) fn start(
        settings: &TraceSettings,
        registry: &Registry,
        service_name: &str,
        cluster: &str,
        resource: Vec<(String, String)>,
    ) -> Result<Tracer, TraceError> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_spans_dropped_total",
                "Finished spans dropped because the export queue was full or the export failed",
            )
            .const_label("cluster_name", cluster),
            &["service_name"],
        )?;
        let exported = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_spans_exported_total",
                "Spans accepted by the OTLP collector",
            )
            .const_label("cluster_name", cluster),
            &["service_name"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(exported.clone()))?;
        let metrics = SpanMetrics {
            dropped: dropped.with_label_values(&[service_name]),
            exported: exported.with_label_values(&[service_name]),
        };
        let Some(export) = settings.export.clone() else {
            return Ok(Tracer {
                sampler: settings.sampler,
                export: None,
            });
        };
        let service_name = if settings.service_name.is_empty() {
            service_name.to_owned()
        } else {
            settings.service_name.clone()
        };
        // The user's attributes win over the sidecar's; `service.name` comes first.
        let mut attrs = vec![("service.name".to_owned(), service_name)];
        for (k, v) in settings.resource.iter().chain(&resource) {
            if !attrs.iter().any(|(have, _)| have == k) {
                attrs.push((k.clone(), v.clone()));
            }
        }
        let frame = otlp::Frame::new(&attrs);
        // One chunk per worker thread of the runtime the requests run on.
        let workers = tokio::runtime::Handle::try_current()
            .map_or(1, |handle| handle.metrics().num_workers());
        let queue = Arc::new(SpanQueue::new(
            workers,
            export.queue_capacity,
            export.batch_size,
            metrics.dropped.clone(),
        ));
        let (flush, flushes) = mpsc::channel(4);
        // The exporter gets a thread of its own: writing ~200 KB to the collector then never
        // holds up the requests of a single-threaded sidecar (the kernel schedules the
        // request path first when it wakes), which kept p99 up by a third. (As `SCHED_BATCH`
        // work it stopped preempting the request path, but at saturation fell so far behind
        // that a quarter of the spans were dropped: it keeps the normal policy.)
        let run = export::run(export, frame, queue.clone(), flushes, metrics);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TraceError::Runtime)?;
        std::thread::Builder::new()
            .name("skiff-otlp".into())
            .spawn(move || runtime.block_on(run))
            .map_err(TraceError::Runtime)?;
        Ok(Tracer {
            sampler: settings.sampler,
            export: Some(Arc::new(ExportHandle { queue, flush })),
        })
    }

    fn recording(&self, sampled: bool) -> bool {
        sampled && self.export.is_some()
    }

    /// Opens this hop's span for a request: continues the caller's W3C or B3 context, or
    /// starts a trace.
    pub(crate) fn server_span(&self, req: &RequestInfo<'_>) -> ServerSpan {
        let found = Found::scan(req.headers);
        let parent = found.parent();
        let trace_id = match &parent {
            Some(p) => p.ctx.trace_id,
            None => random_nonzero(),
        };
        let sampled = self
            .sampler
            .sample(parent.as_ref().map(|p| &p.ctx), &trace_id);
        let ctx = SpanContext {
            trace_id,
            span_id: random_nonzero(),
            sampled,
        };
        let trace_state = found.tracestate.cloned();
        let rec = self.recording(sampled).then(|| {
            let mut rec = Recording::new(unix_nanos(SystemTime::now()), Instant::now());
            let out = &mut rec.buf;
            otlp::span_start(
                out,
                &trace_id,
                &ctx.span_id,
                parent.as_ref().map(|p| &p.ctx.span_id),
                text(trace_state.as_ref()),
                req.method.as_str().as_bytes(),
                SpanKind::Server,
            );
            method_attributes(out, req.method);
            otlp::attr_str(out, key!("url.path"), req.path.as_bytes());
            if let Some(q) = req.query {
                otlp::attr_str(out, key!("url.query"), q.as_bytes());
            }
            if let Some(authority) = req.authority {
                let (host, port) = crate::logical::split_authority(authority);
                otlp::attr_str(out, key!("server.address"), host.as_bytes());
                if let Some(port) = port {
                    otlp::attr_int(out, key!("server.port"), i64::from(port));
                }
            }
            listener_attributes(out, req.listener, req.version, req.peer.map(|p| p.ip()));
            if let Some(peer) = req.peer {
                otlp::attr_int(out, key!("network.peer.port"), i64::from(peer.port()));
            }
            if let Some(ua) = text(req.headers.get(http::header::USER_AGENT)) {
                otlp::attr_str(out, key!("user_agent.original"), ua);
            }
            rec
        });
        ServerSpan {
            ctx,
            parent,
            trace_state,
            rec,
        }
    }

    /// Opens the span of one attempt towards `endpoint`, with the trace fields that attempt
    /// sends upstream (W3C always; B3 in the format the caller used).
    pub(crate) fn client_span(
        &self,
        server: &ServerSpan,
        method: &Method,
        attempt: &AttemptInfo<'_>,
    ) -> (ClientSpan, Propagation) {
        let AttemptInfo {
            endpoint,
            target,
            number: attempt,
            start: now,
        } = *attempt;
        let ctx = SpanContext {
            trace_id: server.ctx.trace_id,
            span_id: random_nonzero(),
            sampled: server.ctx.sampled,
        };
        let propagation = Propagation::new(
            &ctx,
            server.ctx.span_id,
            server.parent.as_ref().map_or(B3Format::None, |p| p.b3),
        );
        let rec = self.recording(ctx.sampled).then(|| {
            // The server span's wall clock plus monotonic time since: no clock read here.
            let start_unix_nanos = match &server.rec {
                Some(s) => s
                    .start_unix_nanos
                    .saturating_add(now.saturating_duration_since(s.start).as_nanos() as u64),
                None => unix_nanos(SystemTime::now()),
            };
            let mut rec = Recording::new(start_unix_nanos, now);
            let out = &mut rec.buf;
            otlp::span_start(
                out,
                &ctx.trace_id,
                &ctx.span_id,
                Some(&server.ctx.span_id),
                text(server.trace_state.as_ref()),
                method.as_str().as_bytes(),
                SpanKind::Client,
            );
            method_attributes(out, method);
            out.extend_from_slice(endpoint);
            otlp::attr_str(out, key!("skiff.target"), target.as_bytes());
            otlp::attr_int(out, key!("skiff.attempt"), i64::from(attempt));
            rec
        });
        (ClientSpan { rec }, propagation)
    }

    /// Closes an attempt's span (ended at `at`) with the upstream's status, or the error kind.
    pub(crate) fn end_client(
        &self,
        span: ClientSpan,
        outcome: Result<u16, &'static str>,
        at: Instant,
    ) {
        let Some(mut rec) = span.rec else { return };
        let error = match outcome {
            Ok(status) => {
                otlp::attr_int(
                    &mut rec.buf,
                    key!("http.response.status_code"),
                    i64::from(status),
                );
                // Client spans: 4xx is an error too (semantic conventions).
                status >= 400 && status_error_type(&mut rec.buf, status)
            }
            Err(kind) => {
                otlp::attr_str(&mut rec.buf, key!("error.type"), kind.as_bytes());
                true
            }
        };
        self.finish(rec, at, error);
    }

    /// Closes the request's span with the status sent downstream and what it was for.
    pub(crate) fn end_server(
        &self,
        span: ServerSpan,
        status: u16,
        error: Option<&'static str>,
        target: Option<&Arc<str>>,
    ) {
        let Some(mut rec) = span.rec else { return };
        let out = &mut rec.buf;
        if let Some(target) = target {
            otlp::attr_str(out, key!("skiff.target"), target.as_bytes());
        }
        if let Some(e) = error {
            otlp::attr_str(out, key!("error.type"), e.as_bytes());
        }
        otlp::attr_int(out, key!("http.response.status_code"), i64::from(status));
        // Server spans: 5xx is an error.
        let failed = status >= 500 && (error.is_some() || status_error_type(out, status));
        self.finish(rec, Instant::now(), failed);
    }

    /// Writes a span's end and queues it for export (without waiting: a full queue drops it).
    fn finish(&self, mut rec: Recording, at: Instant, error: bool) {
        let end = rec
            .start_unix_nanos
            .saturating_add(at.saturating_duration_since(rec.start).as_nanos() as u64);
        otlp::span_end(&mut rec.buf, rec.start_unix_nanos, end, error);
        if let Some(export) = &self.export {
            export.queue.push(&rec.buf);
        }
    }

    /// Waits (at most `timeout`) until every span queued so far was exported or dropped.
    pub(crate) async fn flush(&self, timeout: Duration) {
        let Some(export) = &self.export else { return };
        let (tx, rx) = oneshot::channel();
        let flush = async {
            if export.flush.send(tx).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(timeout, flush).await;
    }
}

// === impl ServerSpan ===

impl ServerSpan {
    /// The span will be exported (sampled, with an exporter).
    pub(crate) fn is_recording(&self) -> bool {
        self.rec.is_some()
    }
}

// === impl Recording ===

impl Recording {
    fn new(start_unix_nanos: u64, start: Instant) -> Self {
        Recording {
            buf: queue::buffer(),
            start_unix_nanos,
            start,
        }
    }
}

impl Drop for Recording {
    /// The buffer goes back to the thread's pool, whether the span ended or was abandoned.
    fn drop(&mut self) {
        queue::recycle(std::mem::take(&mut self.buf));
    }
}

/// A field's value as protobuf string bytes: only when it is text (OTLP strings are UTF-8).
fn text(value: Option<&HeaderValue>) -> Option<&[u8]> {
    value.and_then(|v| v.to_str().ok()).map(str::as_bytes)
}

/// An `error.type` of the status code, as the semantic conventions name an error status;
/// always true (an error).
fn status_error_type(out: &mut Vec<u8>, status: u16) -> bool {
    let mut digits = [0; 20];
    otlp::attr_str(
        out,
        key!("error.type"),
        decimal(u64::from(status), &mut digits),
    );
    true
}

/// `url.scheme`, `skiff.listener`, `network.protocol.version` and `network.peer.address`:
/// the same for every request of a connection, so each thread keeps the last ones encoded.
fn listener_attributes(
    out: &mut Vec<u8>,
    listener: &'static str,
    version: Version,
    peer: Option<std::net::IpAddr>,
) {
    type Key = ((usize, usize), Version, Option<std::net::IpAddr>);
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Key, Vec<u8>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let key = ((listener.as_ptr() as usize, listener.len()), version, peer);
    let encode = |bytes: &mut Vec<u8>| {
        otlp::attr_str(bytes, key!("url.scheme"), b"http");
        otlp::attr_str(bytes, key!("skiff.listener"), listener.as_bytes());
        otlp::attr_str(
            bytes,
            key!("network.protocol.version"),
            protocol_version(version).as_bytes(),
        );
        if let Some(ip) = peer {
            otlp::attr_ip(bytes, key!("network.peer.address"), ip);
        }
    };
    let cached = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        match &mut *last {
            Some((k, bytes)) if *k == key => out.extend_from_slice(bytes),
            _ => {
                let mut bytes = Vec::with_capacity(128);
                encode(&mut bytes);
                out.extend_from_slice(&bytes);
                *last = Some((key, bytes));
            }
        }
    });
    if cached.is_err() {
        encode(out);
    }
}

/// `http.request.method`: a standard method's name, or `_OTHER` and the original.
fn method_attributes(out: &mut Vec<u8>, method: &Method) {
    let known = matches!(
        *method,
        Method::GET
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS
            | Method::PATCH
            | Method::TRACE
            | Method::CONNECT
    );
    if known {
        otlp::attr_str(out, key!("http.request.method"), method.as_str().as_bytes());
    } else {
        otlp::attr_str(out, key!("http.request.method"), b"_OTHER");
        otlp::attr_str(
            out,
            key!("http.request.method_original"),
            method.as_str().as_bytes(),
        );
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The attributes of an attempt's span that name its endpoint — `server.address`,
/// `server.port` and `skiff.endpoint` — encoded once per endpoint, not per attempt.
pub(crate) fn endpoint_attributes(addr: SocketAddr) -> Box<[u8]> {
    let mut out = Vec::with_capacity(128);
    // `network.peer.*` only when it differs from `server.*` (semantic conventions): here it
    // never does.
    otlp::attr_ip_and_addr(
        &mut out,
        key!("server.address"),
        key!("skiff.endpoint"),
        addr,
    );
    otlp::attr_int(&mut out, key!("server.port"), i64::from(addr.port()));
    out.into_boxed_slice()
}

/// One attempt upstream, as its client span records it.
#[derive(Clone, Copy)]
pub(crate) struct AttemptInfo<'a> {
    /// The endpoint, as [`endpoint_attributes`].
    pub(crate) endpoint: &'a [u8],
    pub(crate) target: &'a Arc<str>,
    /// 1 for the first try.
    pub(crate) number: u32,
    pub(crate) start: Instant,
}

/// What the server span records of a request.
pub(crate) struct RequestInfo<'a> {
    pub(crate) listener: &'static str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) authority: Option<&'a str>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) version: Version,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// A random non-zero trace or span id. Ids must be unique, not secret: they come from a fast
/// generator per thread (xoshiro), seeded from the thread's cryptographic one, as the
/// OpenTelemetry SDKs' id generators do; drawing each from `rand::rng()` (ChaCha) cost a
/// third of a request's tracing work.
fn random_nonzero<const N: usize>() -> [u8; N] {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    thread_local! {
        static IDS: std::cell::RefCell<SmallRng> =
            std::cell::RefCell::new(SmallRng::from_rng(&mut rand::rng()));
    }
    IDS.with_borrow_mut(|rng| {
        loop {
            let mut id = [0u8; N];
            rng.fill(&mut id[..]);
            if id != [0u8; N] {
                return id;
            }
        }
    })
}

// === propagation ===

/// A request's propagation fields (the first value of each).
#[derive(Default)]
struct Found<'a> {
    traceparent: Option<&'a HeaderValue>,
    tracestate: Option<&'a HeaderValue>,
    b3: Option<&'a HeaderValue>,
    b3_trace_id: Option<&'a HeaderValue>,
    b3_span_id: Option<&'a HeaderValue>,
    b3_sampled: Option<&'a HeaderValue>,
    b3_flags: Option<&'a HeaderValue>,
}

// === impl Found ===

impl<'a> Found<'a> {
    /// One pass over the fields: a lookup per name would hash every one of them, and most
    /// requests carry none.
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = Found::default();
        for (name, value) in headers {
            let slot = if *name == TRACEPARENT {
                &mut found.traceparent
            } else if *name == TRACESTATE {
                &mut found.tracestate
            } else if *name == B3 {
                &mut found.b3
            } else if *name == B3_TRACE_ID {
                &mut found.b3_trace_id
            } else if *name == B3_SPAN_ID {
                &mut found.b3_span_id
            } else if *name == B3_SAMPLED {
                &mut found.b3_sampled
            } else if *name == B3_FLAGS {
                &mut found.b3_flags
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }

    /// The caller's context: W3C `traceparent` first, then B3 single (`b3`), then `X-B3-*`.
    fn parent(&self) -> Option<Parent> {
        fn text(v: Option<&HeaderValue>) -> Option<&str> {
            v.and_then(|v| v.to_str().ok())
        }
        if let Some(ctx) = text(self.traceparent).and_then(parse_traceparent) {
            return Some(Parent {
                ctx,
                b3: if self.b3.is_some() {
                    B3Format::Single
                } else if self.b3_trace_id.is_some() {
                    B3Format::Multi
                } else {
                    B3Format::None
                },
            });
        }
        if let Some(ctx) = text(self.b3).and_then(parse_b3_single) {
            return Some(Parent {
                ctx,
                b3: B3Format::Single,
            });
        }
        let trace_id = parse_trace_id(text(self.b3_trace_id)?)?;
        let span_id = parse_hex::<8>(text(self.b3_span_id)?)?;
        let sampled = match text(self.b3_sampled) {
            Some(s) => s == "1" || s.eq_ignore_ascii_case("true"),
            None => matches!(text(self.b3_flags), Some("1") | None),
        };
        Some(Parent {
            ctx: SpanContext {
                trace_id,
                span_id,
                sampled,
            },
            b3: B3Format::Multi,
        })
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace headers one attempt sends upstream, in place of any the client sent: W3C
/// `traceparent` always, B3 as the caller used it. Every request has one: the values are
/// hex-encoded on the stack (no formatting, no allocation) and written straight into an
/// HTTP/1.1 request head, or inserted into an HTTP/2 request's headers.
pub(crate) struct Propagation {
    traceparent: [u8; 55],
    b3: B3Out,
}

enum B3Out {
    None,
    /// `{trace}-{span}-{sampled}-{parent}`
    Single([u8; 68]),
    /// `X-B3-TraceId`, `-SpanId`, `-ParentSpanId` (hex) and `-Sampled`.
    Multi {
        trace: [u8; 32],
        span: [u8; 16],
        parent: [u8; 16],
        sampled: bool,
    },
}

static B3_MULTI: [&HeaderName; 5] = [
    &B3_TRACE_ID,
    &B3_SPAN_ID,
    &B3_PARENT_SPAN_ID,
    &B3_SAMPLED,
    &B3_FLAGS,
];

// === impl Propagation ===

impl Propagation {
    /// `ctx` (child of `parent_span`) as `traceparent`, and as B3 when the caller used B3.
    fn new(ctx: &SpanContext, parent_span: [u8; 8], b3: B3Format) -> Self {
        let b3 = match b3 {
            B3Format::None => B3Out::None,
            B3Format::Single => {
                let mut v = [b'-'; 32 + 1 + 16 + 1 + 1 + 1 + 16];
                hex_into(&ctx.trace_id, &mut v[..32]);
                hex_into(&ctx.span_id, &mut v[33..49]);
                v[50] = if ctx.sampled { b'1' } else { b'0' };
                hex_into(&parent_span, &mut v[52..]);
                B3Out::Single(v)
            }
            B3Format::Multi => {
                let (mut trace, mut span, mut parent) = ([0u8; 32], [0u8; 16], [0u8; 16]);
                hex_into(&ctx.trace_id, &mut trace);
                hex_into(&ctx.span_id, &mut span);
                hex_into(&parent_span, &mut parent);
                B3Out::Multi {
                    trace,
                    span,
                    parent,
                    sampled: ctx.sampled,
                }
            }
        };
        Propagation {
            traceparent: traceparent(ctx),
            b3,
        }
    }

    /// Whether the client's field `name` gives way to these (or goes: `X-B3-Flags` when
    /// multi-header B3 is written).
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        *name == TRACEPARENT
            || match self.b3 {
                B3Out::None => false,
                B3Out::Single(_) => *name == B3,
                B3Out::Multi { .. } => B3_MULTI.contains(&name),
            }
    }

    /// Calls `f` with each field's name and value.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&HeaderName, &[u8])) {
        f(&TRACEPARENT, &self.traceparent);
        match &self.b3 {
            B3Out::None => {}
            B3Out::Single(v) => f(&B3, v),
            B3Out::Multi {
                trace,
                span,
                parent,
                sampled,
            } => {
                f(&B3_TRACE_ID, trace);
                f(&B3_SPAN_ID, span);
                f(&B3_PARENT_SPAN_ID, parent);
                f(&B3_SAMPLED, if *sampled { b"1" } else { b"0" });
            }
        }
    }

    /// Sets the fields in `headers`, replacing the client's.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        if matches!(self.b3, B3Out::Multi { .. }) {
            headers.remove(&B3_FLAGS);
        }
        self.for_each(|name, value| {
            headers.insert(name.clone(), header_value(value));
        });
    }
}

/// `00-{trace}-{span}-{flags}`, on the stack.
fn traceparent(ctx: &SpanContext) -> [u8; 55] {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&ctx.trace_id, &mut v[3..35]);
    hex_into(&ctx.span_id, &mut v[36..52]);
    if ctx.sampled {
        v[54] = b'1';
    }
    v
}

/// A header value of hex digits and dashes (always valid).
fn header_value(v: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids (later versions: the same prefix).
fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let v = v.trim();
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version = u8::from_str_radix(version, 16)
        .ok()
        .filter(|_| version.len() == 2)?;
    if version == 0xff || (version == 0 && parts.next().is_some()) || flags.len() != 2 {
        return None;
    }
    let trace_id = parse_trace_id(trace).filter(|_| trace.len() == 32)?;
    let span_id = parse_hex::<8>(parent)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `{trace}-{span}[-{sampling}[-{parent}]]`; a lone sampling state (`0`, `d`) carries no context.
fn parse_b3_single(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_hex::<8>(parts.next()?)?;
    let sampled = !matches!(parts.next(), Some("0"));
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// 32 hex digits, or B3's 16 (left-padded with zeros); never all zero.
fn parse_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => parse_hex::<16>(s),
        16 => {
            let low = parse_hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

/// Exactly `2 * N` hex digits, not all zero.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

#[cfg(test)]
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The decimal digits of `v`, written at the end of `buf`, without formatting machinery.
pub(crate) fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Lower-case hex of `bytes` into `out` (twice as long), without formatting machinery.
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}
