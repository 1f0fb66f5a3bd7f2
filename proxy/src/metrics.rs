//! Every metric handle of the sidecar, registered once into the registry the caller owns.
//!
//! Names carry the meaning of Service Connect's CloudWatch metrics (see `docs/metrics.md`):
//! *inbound* families (requests reaching this task's app) are labelled `discovery_name` and
//! `service_name`; *outbound* families (requests this task sends) are labelled by the calling
//! `service_name` and the `target_discovery_name`; every family has the constant label
//! `cluster_name`. Handles for a target are resolved once, when the target first appears
//! (discovery time, not request time), so the request path never formats, allocates or hashes
//! a label, nor takes a lock shared by all requests: it increments pre-resolved atomics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use prometheus::{
    Counter, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::error::ProxyError;
use crate::retry::RetryReason;
use crate::{Body, BoxError};

/// Prefix of the targets that stand for this task's own app (the inbound side).
pub(crate) const INBOUND_PREFIX: &str = "inbound/";

/// Latency buckets, in seconds: 100 µs to 30 s, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 15.0, 20.0, 30.0,
];

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// `grpc_status` label values: the 17 canonical codes, then `other` for an answer whose
/// status is missing or not canonical (the client sees a failure either way).
const GRPC_STATUSES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

/// `reason` values of `skiff_proxy_failed_requests_total`: requests the proxy itself answered
/// with an error (no upstream answer reached the client).
pub const FAILURE_REASONS: [&str; 9] = [
    "no_endpoints",
    "timeout",
    "connect_failure",
    "reset",
    "circuit_open",
    "bad_request",
    "unknown_host",
    "internal",
    "other",
];

/// `health` values of `skiff_proxy_target_endpoints`.
const HEALTH: [&str; 3] = ["healthy", "unhealthy", "draining"];

/// `listener` values whose connection series exist from the start (at zero).
const LISTENERS: [&str; 3] = ["inbound", "outbound", "admin"];

/// The sidecar's metric families.
#[derive(Clone)]
pub struct Metrics {
    service_name: String,
    // outbound: service_name, target_discovery_name
    requests: IntCounterVec,
    response_time: HistogramVec,
    grpc_responses: IntCounterVec,
    target_bytes: IntCounterVec,
    target_tls_errors: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    ejections: IntCounterVec,
    ejected: IntGaugeVec,
    endpoints: IntGaugeVec,
    /// Same shape as `endpoints`, never registered: the inbound side's single member (the
    /// app) is not a discovered endpoint, so its gauges are not exported.
    detached_endpoints: IntGaugeVec,
    failed: IntCounterVec,
    // inbound: discovery_name, service_name
    inbound_requests: IntCounterVec,
    inbound_response_time: HistogramVec,
    inbound_grpc: IntCounterVec,
    // per listener
    pub(crate) downstream_errors: IntCounterVec,
    pub(crate) new_connections: IntCounterVec,
    pub(crate) active_connections: IntGaugeVec,
    pub(crate) processed_bytes: IntCounterVec,
    pub(crate) client_tls_errors: IntCounterVec,
    // discovery and lifecycle
    pub(crate) discovery_stale: IntGauge,
    pub(crate) discovery_revision: IntGauge,
    pub(crate) discovery_last_update: IntGauge,
    pub(crate) discovery_errors: IntGauge,
    pub(crate) draining: IntGauge,
    busy_polls: BusyPollMetrics,
    targets: Arc<Mutex<HashMap<String, Arc<TargetMetrics>>>>,
}

/// Busy polling before the runtime's thread sleeps (the binary's `src/park.rs` records it):
/// how often a poll saw an event in time, and the CPU time polling took.
#[derive(Clone)]
pub struct BusyPollMetrics {
    pub event: IntCounter,
    pub timeout: IntCounter,
    pub seconds: Counter,
}

/// Pre-resolved handles for one target service (or, for `inbound/NAME`, for this task's app).
pub(crate) struct TargetMetrics {
    /// Index by status class: 0 = 1xx … 4 = 5xx, 5 = no response.
    pub(crate) status: [IntCounter; 6],
    pub(crate) latency: Histogram,
    pub(crate) retries: Vec<IntCounter>,
    pub(crate) budget_exhausted: IntCounter,
    pub(crate) ejections: IntCounter,
    /// Endpoints ejected right now.
    pub(crate) ejected: IntGauge,
    /// Endpoints by [`HEALTH`].
    endpoints: [IntGauge; 3],
    /// Requests the proxy failed itself, by [`FAILURE_REASONS`].
    failed: [IntCounter; FAILURE_REASONS.len()],
    /// Bytes sent to (`tx`) and received from (`rx`) the target's endpoints.
    bytes_tx: IntCounter,
    bytes_rx: IntCounter,
    /// TLS handshakes with the target that failed (stays 0 until upstream TLS exists).
    #[allow(dead_code)]
    pub(crate) tls_errors: IntCounter,
    /// `grpc-status` counters, resolved on the target's first gRPC answer so that plain
    /// HTTP targets export no gRPC series.
    grpc: OnceLock<[IntCounter; GRPC_STATUSES.len()]>,
    grpc_family: IntCounterVec,
    labels: [String; 2],
}

fn opts(name: &str, help: &str, cluster: &str) -> Opts {
    Opts::new(name, help).const_label("cluster_name", cluster)
}

fn counter(r: &Registry, o: Opts, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(o, labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(r: &Registry, o: Opts, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(o, labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(r: &Registry, o: Opts) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::with_opts(o)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(r: &Registry, o: Opts, labels: &[&str]) -> Result<HistogramVec, prometheus::Error> {
    let mut ho = HistogramOpts::new(o.name, o.help).buckets(LATENCY_BUCKETS.to_vec());
    ho.common_opts.const_labels = o.const_labels;
    let h = HistogramVec::new(ho, labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

// === impl Metrics ===

impl Metrics {
    /// The busy-polling counters, for the runtime's park hook.
    pub fn busy_polls(&self) -> BusyPollMetrics {
        self.busy_polls.clone()
    }

    /// Creates and registers every family for a sidecar of ECS service `service_name`
    /// (`client` for a client-only sidecar) in cluster `default`.
    pub fn new(registry: &Registry, service_name: &str) -> Result<Metrics, prometheus::Error> {
        Metrics::with_cluster(registry, service_name, "")
    }

    /// Creates and registers every family; `cluster_name` empty means ECS's `default`.
    pub fn with_cluster(
        registry: &Registry,
        service_name: &str,
        cluster_name: &str,
    ) -> Result<Metrics, prometheus::Error> {
        let r = registry;
        let cl = if cluster_name.is_empty() {
            "default"
        } else {
            cluster_name
        };
        let out = &["service_name", "target_discovery_name"];
        let inb = &["discovery_name", "service_name"];
        let o = |name: &str, help: &str| opts(name, help, cl);
        let m = Metrics {
            service_name: service_name.to_owned(),
            requests: counter(
                r,
                o(
                    "skiff_proxy_requests_total",
                    "Outbound requests to a target, by status class of the answer the caller got",
                ),
                &["service_name", "target_discovery_name", "status_class"],
            )?,
            response_time: histogram(
                r,
                o(
                    "skiff_proxy_target_response_time_seconds",
                    "Outbound time from request to response headers, retries included",
                ),
                out,
            )?,
            grpc_responses: counter(
                r,
                o(
                    "skiff_proxy_grpc_responses_total",
                    "Outbound gRPC answers by grpc-status; any status but 0 is a failure",
                ),
                &["service_name", "target_discovery_name", "grpc_status"],
            )?,
            target_bytes: counter(
                r,
                o(
                    "skiff_proxy_target_processed_bytes_total",
                    "Body bytes sent to (tx) and received from (rx) a target's endpoints",
                ),
                &["service_name", "target_discovery_name", "direction"],
            )?,
            target_tls_errors: counter(
                r,
                o(
                    "skiff_proxy_target_tls_negotiation_errors_total",
                    "Failed TLS handshakes with a target's endpoints",
                ),
                out,
            )?,
            retries: counter(
                r,
                o("skiff_proxy_retries_total", "Retried attempts, by reason"),
                &["service_name", "target_discovery_name", "reason"],
            )?,
            retry_budget_exhausted: counter(
                r,
                o(
                    "skiff_proxy_retry_budget_exhausted_total",
                    "Retries the retry budget refused",
                ),
                out,
            )?,
            ejections: counter(
                r,
                o(
                    "skiff_proxy_outlier_ejections_total",
                    "Endpoints ejected by outlier detection",
                ),
                out,
            )?,
            ejected: gauge_vec(
                r,
                o(
                    "skiff_proxy_outlier_ejected_endpoints",
                    "Endpoints currently ejected by outlier detection",
                ),
                out,
            )?,
            endpoints: gauge_vec(
                r,
                o(
                    "skiff_proxy_target_endpoints",
                    "Endpoints known for a target, by health",
                ),
                &["service_name", "target_discovery_name", "health"],
            )?,
            detached_endpoints: IntGaugeVec::new(
                Opts::new("skiff_proxy_detached_endpoints", "not exported"),
                &["service_name", "target_discovery_name", "health"],
            )?,
            failed: counter(
                r,
                o(
                    "skiff_proxy_failed_requests_total",
                    "Requests the proxy answered with an error of its own, by reason",
                ),
                &["service_name", "target_discovery_name", "reason"],
            )?,
            inbound_requests: counter(
                r,
                o(
                    "skiff_proxy_inbound_requests_total",
                    "Inbound requests to this task's app, by status class",
                ),
                &["discovery_name", "service_name", "status_class"],
            )?,
            inbound_response_time: histogram(
                r,
                o(
                    "skiff_proxy_inbound_response_time_seconds",
                    "Inbound time from request to the app's response headers",
                ),
                inb,
            )?,
            inbound_grpc: counter(
                r,
                o(
                    "skiff_proxy_inbound_grpc_requests_total",
                    "Inbound gRPC requests by grpc-status",
                ),
                &["discovery_name", "service_name", "grpc_status"],
            )?,
            downstream_errors: counter(
                r,
                o(
                    "skiff_proxy_downstream_errors_total",
                    "Bad or failed downstream requests and connections, by kind",
                ),
                &["kind"],
            )?,
            new_connections: counter(
                r,
                o(
                    "skiff_proxy_new_connections_total",
                    "Accepted downstream connections, by listener",
                ),
                &["listener"],
            )?,
            active_connections: gauge_vec(
                r,
                o(
                    "skiff_proxy_active_connections",
                    "Open downstream connections, by listener",
                ),
                &["listener"],
            )?,
            processed_bytes: counter(
                r,
                o(
                    "skiff_proxy_processed_bytes_total",
                    "Bytes read from (rx) and written to (tx) downstream clients, by listener",
                ),
                &["listener", "direction"],
            )?,
            client_tls_errors: counter(
                r,
                o(
                    "skiff_proxy_client_tls_negotiation_errors_total",
                    "Failed TLS handshakes with downstream clients, by listener",
                ),
                &["listener"],
            )?,
            discovery_stale: gauge(
                r,
                o(
                    "skiff_proxy_discovery_stale",
                    "1 while the registry is unreachable and the last known endpoints are used",
                ),
            )?,
            discovery_revision: gauge(
                r,
                o(
                    "skiff_proxy_discovery_revision",
                    "Namespace revision in use",
                ),
            )?,
            discovery_last_update: gauge(
                r,
                o(
                    "skiff_proxy_discovery_last_update_timestamp_seconds",
                    "Unix time of the last snapshot received from the registry",
                ),
            )?,
            discovery_errors: gauge(
                r,
                o(
                    "skiff_proxy_discovery_consecutive_errors",
                    "Failed registry watch calls since the last success",
                ),
            )?,
            draining: gauge(r, o("skiff_proxy_draining", "1 while the sidecar drains"))?,
            busy_polls: {
                let outcomes = counter(
                    r,
                    o(
                        "skiff_proxy_busy_polls_total",
                        "Polls before sleeping while a response was due, by whether an event came in time",
                    ),
                    &["outcome"],
                )?;
                let seconds = Counter::with_opts(o(
                    "skiff_proxy_busy_poll_seconds_total",
                    "Time the sidecar's thread spent polling instead of sleeping",
                ))?;
                r.register(Box::new(seconds.clone()))?;
                BusyPollMetrics {
                    event: outcomes.with_label_values(&["event"]),
                    timeout: outcomes.with_label_values(&["timeout"]),
                    seconds,
                }
            },
            targets: Arc::new(Mutex::new(HashMap::new())),
        };
        let build = gauge_vec(
            r,
            o(
                "skiff_proxy_build_info",
                "Always 1; the skiff version in a label",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Connection series exist from the start, so a dashboard shows 0 rather than nothing.
        for l in LISTENERS {
            m.new_connections.with_label_values(&[l]);
            m.active_connections.with_label_values(&[l]);
            m.client_tls_errors.with_label_values(&[l]);
            m.processed_bytes.with_label_values(&[l, "rx"]);
            m.processed_bytes.with_label_values(&[l, "tx"]);
        }
        Ok(m)
    }

    /// Records that a registry snapshot arrived now.
    pub(crate) fn discovery_updated(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.discovery_last_update.set(now);
    }

    /// Handles for `target`, resolved on first use (when discovery builds a table) and
    /// shared afterwards. `inbound/NAME` is this task's app behind ingress `NAME`: its
    /// requests count in the inbound families.
    pub(crate) fn target(&self, target: &str) -> Arc<TargetMetrics> {
        let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(target) {
            return t.clone();
        }
        let me = self.service_name.as_str();
        let out = [me, target];
        let (status, latency, grpc_family, labels) = match target.strip_prefix(INBOUND_PREFIX) {
            Some(dn) => (
                STATUS_CLASSES.map(|c| self.inbound_requests.with_label_values(&[dn, me, c])),
                self.inbound_response_time.with_label_values(&[dn, me]),
                self.inbound_grpc.clone(),
                [dn.to_owned(), me.to_owned()],
            ),
            None => (
                STATUS_CLASSES.map(|c| self.requests.with_label_values(&[me, target, c])),
                self.response_time.with_label_values(&out),
                self.grpc_responses.clone(),
                [me.to_owned(), target.to_owned()],
            ),
        };
        let t = Arc::new(TargetMetrics {
            status,
            latency,
            retries: RetryReason::ALL
                .iter()
                .map(|r| self.retries.with_label_values(&[me, target, r.label()]))
                .collect(),
            budget_exhausted: self.retry_budget_exhausted.with_label_values(&out),
            ejections: self.ejections.with_label_values(&out),
            ejected: self.ejected.with_label_values(&out),
            endpoints: {
                let family = if target.starts_with(INBOUND_PREFIX) {
                    &self.detached_endpoints
                } else {
                    &self.endpoints
                };
                HEALTH.map(|h| family.with_label_values(&[me, target, h]))
            },
            failed: FAILURE_REASONS.map(|r| self.failed.with_label_values(&[me, target, r])),
            bytes_tx: self.target_bytes.with_label_values(&[me, target, "tx"]),
            bytes_rx: self.target_bytes.with_label_values(&[me, target, "rx"]),
            tls_errors: self.target_tls_errors.with_label_values(&out),
            grpc: OnceLock::new(),
            grpc_family,
            labels,
        });
        map.insert(target.to_owned(), t.clone());
        t
    }
}

// === impl TargetMetrics ===

impl TargetMetrics {
    pub(crate) fn record_status(&self, status: Option<http::StatusCode>) {
        let idx = match status.map(|s| s.as_u16() / 100) {
            Some(c @ 1..=5) => usize::from(c) - 1,
            _ => 5,
        };
        self.status[idx].inc();
    }

    /// Counts a gRPC answer by its `grpc-status` (`None`: the answer ended without one).
    pub(crate) fn record_grpc(&self, status: Option<&http::HeaderValue>) {
        let idx = status
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&code| code < GRPC_STATUSES.len() - 1)
            .unwrap_or(GRPC_STATUSES.len() - 1);
        let counters = self.grpc.get_or_init(|| {
            let [a, b] = &self.labels;
            GRPC_STATUSES.map(|s| self.grpc_family.with_label_values(&[a, b, s]))
        });
        counters[idx].inc();
    }

    pub(crate) fn record_retry(&self, reason: RetryReason) {
        if let Some(c) = self.retries.get(reason.index()) {
            c.inc();
        }
    }

    /// Counts a request the proxy failed itself (the caller got the proxy's error answer).
    pub(crate) fn record_failure(&self, err: &ProxyError) {
        self.failed[failure_index(err)].inc();
    }

    /// Sets the endpoint gauges from `(healthy, draining)` of every member.
    pub(crate) fn record_members(&self, members: impl Iterator<Item = (bool, bool)>) {
        let mut counts = [0i64; 3];
        for (healthy, draining) in members {
            let idx = match (healthy, draining) {
                (_, true) => 2,
                (true, false) => 0,
                (false, false) => 1,
            };
            counts[idx] += 1;
        }
        for (g, n) in self.endpoints.iter().zip(counts) {
            g.set(n);
        }
    }

    /// Counts the data bytes of a request body as they are sent to the target (a body that
    /// is already over, such as a GET's, is passed as is: nothing to count, nothing to box).
    pub(crate) fn count_tx(&self, body: Body) -> Body {
        if body.is_end_stream() {
            return body;
        }
        count_body(body, self.bytes_tx.clone())
    }

    /// Counts the data bytes of a response body as they arrive from the target; the body is
    /// boxed here, once.
    pub(crate) fn count_rx<B>(&self, body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        count_body(body, self.bytes_rx.clone())
    }
}

fn count_body<B>(body: B, counter: IntCounter) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.inc_by(data.len() as u64);
        }
        frame
    })
    .map_err(Into::into)
    .boxed()
}

/// The index in [`FAILURE_REASONS`] of a request the proxy failed itself.
fn failure_index(err: &ProxyError) -> usize {
    match err {
        ProxyError::NoEndpoints { .. } => 0,
        ProxyError::Timeout { .. } | ProxyError::ConnectTimeout { .. } => 1,
        ProxyError::Connect { .. } => 2,
        ProxyError::Reset { .. } => 3,
        ProxyError::TooManyPending { .. } | ProxyError::ConnectionLimit { .. } => 4,
        ProxyError::MissingHost | ProxyError::BadRequest { .. } | ProxyError::DownstreamBody(_) => {
            5
        }
        ProxyError::UnknownHost { .. } => 6,
        ProxyError::Internal(_) => 7,
        ProxyError::Bind { .. } | ProxyError::Registry(_) => 8,
    }
}

#[cfg(test)]
mod tests;
