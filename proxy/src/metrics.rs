//! Every metric handle of the sidecar, registered once into the registry the caller owns.
//!
//! Names follow Service Connect's metrics (request count by status class, target response
//! time, retries, ejections, connections), labelled by `discovery_name` (this task's service
//! or `client`) and `target_discovery_name`. Handles for a target are resolved once, when the
//! target first appears, so the request path never formats or allocates a label.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::retry::RetryReason;

/// The sidecar's metric families.
#[derive(Clone)]
pub struct Metrics {
    discovery_name: String,
    requests: IntCounterVec,
    response_time: HistogramVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    ejections: IntCounterVec,
    endpoints: IntGaugeVec,
    grpc_responses: IntCounterVec,
    pub(crate) downstream_errors: IntCounterVec,
    pub(crate) new_connections: IntCounterVec,
    pub(crate) active_connections: IntGaugeVec,
    pub(crate) processed_bytes: IntCounterVec,
    pub(crate) discovery_stale: IntGauge,
    pub(crate) discovery_revision: IntGauge,
    pub(crate) draining: IntGauge,
    targets: Arc<Mutex<HashMap<String, Arc<TargetMetrics>>>>,
}

/// Pre-resolved handles for one target service.
pub(crate) struct TargetMetrics {
    /// Index by status class: 0 = 1xx … 4 = 5xx, 5 = no response.
    pub(crate) status: [IntCounter; 6],
    pub(crate) latency: Histogram,
    pub(crate) retries: Vec<IntCounter>,
    pub(crate) budget_exhausted: IntCounter,
    pub(crate) ejections: IntCounter,
    pub(crate) endpoints: IntGauge,
    /// `grpc-status` counters, resolved on the target's first gRPC answer so that plain
    /// HTTP targets export no gRPC series.
    grpc: OnceLock<[IntCounter; GRPC_STATUSES.len()]>,
    grpc_family: IntCounterVec,
    labels: [String; 2],
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// `grpc_status` label values: the 17 canonical codes, then `other` for an answer whose
/// status is missing or not canonical (the client sees a failure either way).
const GRPC_STATUSES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every family. `discovery_name` is this task's service
    /// (`client` for a client-only sidecar).
    pub fn new(registry: &Registry, discovery_name: &str) -> Result<Metrics, prometheus::Error> {
        let target = &["discovery_name", "target_discovery_name"];
        let requests = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_requests_total",
                "Requests proxied, by target and status class",
            ),
            &["discovery_name", "target_discovery_name", "status_class"],
        )?;
        let response_time = HistogramVec::new(
            HistogramOpts::new(
                "skiff_proxy_target_response_time_seconds",
                "Time from request to response headers, retries included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            target,
        )?;
        let retries = IntCounterVec::new(
            Opts::new("skiff_proxy_retries_total", "Retried attempts, by reason"),
            &["discovery_name", "target_discovery_name", "reason"],
        )?;
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_retry_budget_exhausted_total",
                "Retries refused by the budget",
            ),
            target,
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_outlier_ejections_total",
                "Endpoints ejected by outlier detection",
            ),
            target,
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "skiff_proxy_target_endpoints",
                "Endpoints known for a target",
            ),
            target,
        )?;
        let grpc_responses = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_grpc_responses_total",
                "gRPC answers by grpc-status; any status but 0 is a failure",
            ),
            &["discovery_name", "target_discovery_name", "grpc_status"],
        )?;
        let downstream_errors = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_downstream_errors_total",
                "Bad or failed downstream requests, by kind",
            ),
            &["kind"],
        )?;
        let new_connections = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_new_connections_total",
                "Accepted downstream connections, by listener",
            ),
            &["listener"],
        )?;
        let active_connections = IntGaugeVec::new(
            Opts::new(
                "skiff_proxy_active_connections",
                "Open downstream connections, by listener",
            ),
            &["listener"],
        )?;
        let processed_bytes = IntCounterVec::new(
            Opts::new(
                "skiff_proxy_processed_bytes_total",
                "Bytes read from (rx) and written to (tx) downstream clients, by listener",
            ),
            &["listener", "direction"],
        )?;
        let discovery_stale = IntGauge::new(
            "skiff_proxy_discovery_stale",
            "1 while the registry is unreachable and the last known endpoints are used",
        )?;
        let discovery_revision = IntGauge::new(
            "skiff_proxy_discovery_revision",
            "Namespace revision in use",
        )?;
        let draining = IntGauge::new("skiff_proxy_draining", "1 while the sidecar drains")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(response_time.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(retry_budget_exhausted.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(grpc_responses.clone()))?;
        registry.register(Box::new(downstream_errors.clone()))?;
        registry.register(Box::new(new_connections.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(processed_bytes.clone()))?;
        registry.register(Box::new(discovery_stale.clone()))?;
        registry.register(Box::new(discovery_revision.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        Ok(Metrics {
            discovery_name: discovery_name.to_owned(),
            requests,
            response_time,
            retries,
            retry_budget_exhausted,
            ejections,
            endpoints,
            grpc_responses,
            downstream_errors,
            new_connections,
            active_connections,
            processed_bytes,
            discovery_stale,
            discovery_revision,
            draining,
            targets: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Handles for `target`, resolved on first use and shared afterwards.
    pub(crate) fn target(&self, target: &str) -> Arc<TargetMetrics> {
        let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(target) {
            return t.clone();
        }
        let me = self.discovery_name.as_str();
        let status = STATUS_CLASSES.map(|c| self.requests.with_label_values(&[me, target, c]));
        let t = Arc::new(TargetMetrics {
            status,
            latency: self.response_time.with_label_values(&[me, target]),
            retries: RetryReason::ALL
                .iter()
                .map(|r| self.retries.with_label_values(&[me, target, r.label()]))
                .collect(),
            budget_exhausted: self.retry_budget_exhausted.with_label_values(&[me, target]),
            ejections: self.ejections.with_label_values(&[me, target]),
            endpoints: self.endpoints.with_label_values(&[me, target]),
            grpc: OnceLock::new(),
            grpc_family: self.grpc_responses.clone(),
            labels: [me.to_owned(), target.to_owned()],
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
            let [me, target] = &self.labels;
            GRPC_STATUSES.map(|s| self.grpc_family.with_label_values(&[me, target, s]))
        });
        counters[idx].inc();
    }

    pub(crate) fn record_retry(&self, reason: RetryReason) {
        if let Some(c) = self.retries.get(reason.index()) {
            c.inc();
        }
    }
}
