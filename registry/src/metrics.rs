//! Every Prometheus handle of the registry, registered once into the process registry.
//!
//! Names and their ECS/Cloud Map meaning are listed in `docs/metrics.md`; the registry's core
//! counters (received: `skiff_registry_api_requests_total`, errors: its `outcome` label and
//! `skiff_registry_http_rejected_total`) line up with the proxy's and the log router's.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone, Debug)]
pub struct Metrics {
    /// Cloud Map API calls by operation and outcome (`ok` or the AWS error code).
    pub api_requests: IntCounterVec,
    pub api_latency: HistogramVec,
    /// Instances by namespace, service and health.
    pub instances: IntGaugeVec,
    /// Health transitions by new status.
    pub health_transitions: IntCounterVec,
    /// DNS queries by type and response code.
    pub dns_queries: IntCounterVec,
    /// Long-polls waiting right now.
    pub watchers: IntGauge,
    pub store_commit_latency: Histogram,
    pub store_revision: IntGauge,
    /// `dns_queries` for NOERROR answers of A, AAAA, SRV, resolved once for the hot path.
    dns_fast: [prometheus::IntCounter; 3],
    /// HTTP requests refused before reaching an operation (bad route, oversized body, …).
    pub http_rejected: IntCounterVec,
}

// === impl Metrics ===

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let fast = vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            1.0,
        ];
        let mut m = Metrics {
            api_requests: IntCounterVec::new(
                Opts::new(
                    "skiff_registry_api_requests_total",
                    "Cloud Map API requests by operation and outcome",
                ),
                &["operation", "outcome"],
            )?,
            api_latency: HistogramVec::new(
                HistogramOpts::new(
                    "skiff_registry_api_request_duration_seconds",
                    "Cloud Map API latency",
                )
                .buckets(fast.clone()),
                &["operation"],
            )?,
            instances: IntGaugeVec::new(
                Opts::new(
                    "skiff_registry_instances",
                    "Registered instances by namespace, service and health",
                ),
                &["namespace", "service", "health"],
            )?,
            health_transitions: IntCounterVec::new(
                Opts::new(
                    "skiff_registry_health_transitions_total",
                    "Instance health transitions by new status",
                ),
                &["to"],
            )?,
            dns_queries: IntCounterVec::new(
                Opts::new(
                    "skiff_registry_dns_queries_total",
                    "DNS queries by type and response code",
                ),
                &["qtype", "rcode"],
            )?,
            watchers: IntGauge::new(
                "skiff_registry_watchers",
                "Watch long-polls currently waiting",
            )?,
            store_commit_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "skiff_registry_store_commit_duration_seconds",
                    "Durable commit latency",
                )
                .buckets(fast),
            )?,
            store_revision: IntGauge::new(
                "skiff_registry_store_revision",
                "Revision of the last commit",
            )?,
            dns_fast: [
                prometheus::IntCounter::new("unused_a", "placeholder")?,
                prometheus::IntCounter::new("unused_aaaa", "placeholder")?,
                prometheus::IntCounter::new("unused_srv", "placeholder")?,
            ],
            http_rejected: IntCounterVec::new(
                Opts::new(
                    "skiff_registry_http_rejected_total",
                    "HTTP requests rejected before dispatch, by reason",
                ),
                &["reason"],
            )?,
        };
        m.dns_fast = [
            m.dns_queries.with_label_values(&["A", "NOERROR"]),
            m.dns_queries.with_label_values(&["AAAA", "NOERROR"]),
            m.dns_queries.with_label_values(&["SRV", "NOERROR"]),
        ];
        // Series that exist from the start, so dashboards and alerts see 0 rather than nothing.
        for to in ["HEALTHY", "UNHEALTHY", "UNKNOWN"] {
            m.health_transitions.with_label_values(&[to]);
        }
        for reason in ["not_found", "unknown_operation", "body_too_large"] {
            m.http_rejected.with_label_values(&[reason]);
        }
        let build = IntGaugeVec::new(
            Opts::new(
                "skiff_registry_build_info",
                "Always 1; the skiff version in a label",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build))?;
        registry.register(Box::new(m.api_requests.clone()))?;
        registry.register(Box::new(m.api_latency.clone()))?;
        registry.register(Box::new(m.instances.clone()))?;
        registry.register(Box::new(m.health_transitions.clone()))?;
        registry.register(Box::new(m.dns_queries.clone()))?;
        registry.register(Box::new(m.watchers.clone()))?;
        registry.register(Box::new(m.store_commit_latency.clone()))?;
        registry.register(Box::new(m.store_revision.clone()))?;
        registry.register(Box::new(m.http_rejected.clone()))?;
        Ok(m)
    }

    /// The NOERROR counter of an A (1), AAAA (28) or SRV (33) query.
    pub fn dns_noerror(&self, qtype: u16) -> &prometheus::IntCounter {
        match qtype {
            28 => &self.dns_fast[1],
            33 => &self.dns_fast[2],
            _ => &self.dns_fast[0],
        }
    }

    /// Handles registered nowhere, for unit tests.
    pub fn unregistered() -> Metrics {
        match Metrics::register(&Registry::new()) {
            Ok(m) => m,
            // A fresh registry cannot hold duplicates; the names above are valid.
            Err(e) => unreachable_metrics(e),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_metrics(e: prometheus::Error) -> Metrics {
    panic!("metric definitions are invalid: {e}")
}
