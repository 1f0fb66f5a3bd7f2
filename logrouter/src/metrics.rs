//! Every log router metric handle, registered once into the registry the composition root passes in.
//!
//! Core counters shared in meaning with the proxy and the registry (see `docs/metrics.md`):
//! received `skiff_logrouter_input_records_total`, sent `skiff_logrouter_output_records_total`,
//! errors `skiff_logrouter_output_errors_total`, discarded `skiff_logrouter_*_dropped_records_total`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles for all `skiff_logrouter_*` metrics. Labels are config names (bounded by the config).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub input_records: IntCounterVec,
    pub input_bytes: IntCounterVec,
    pub input_rejected: IntCounterVec,
    pub input_dropped: IntCounterVec,
    pub input_connections: IntGaugeVec,
    pub filter_dropped: IntCounterVec,
    pub output_records: IntCounterVec,
    pub output_bytes: IntCounterVec,
    pub output_retries: IntCounterVec,
    pub output_errors: IntCounterVec,
    pub output_dropped: IntCounterVec,
    pub output_lag_bytes: IntGaugeVec,
    pub buffer_bytes: IntGauge,
    pub buffer_segments: IntGauge,
    pub buffer_corrupt: IntCounter,
    pub buffer_blocked: IntCounter,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(format!("skiff_logrouter_{name}"), help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(format!("skiff_logrouter_{name}"), help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

// === impl Metrics ===

impl Metrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let build = IntGaugeVec::new(
            Opts::new(
                "skiff_logrouter_build_info",
                "Always 1; the skiff version in a label",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build))?;
        let buffer_bytes = IntGauge::new(
            "skiff_logrouter_buffer_bytes",
            "bytes held in buffer segments",
        )?;
        r.register(Box::new(buffer_bytes.clone()))?;
        let buffer_segments =
            IntGauge::new("skiff_logrouter_buffer_segments", "buffer segment files")?;
        r.register(Box::new(buffer_segments.clone()))?;
        let buffer_corrupt = IntCounter::new(
            "skiff_logrouter_buffer_corrupt_total",
            "corrupt or torn buffer regions detected and skipped",
        )?;
        r.register(Box::new(buffer_corrupt.clone()))?;
        let buffer_blocked = IntCounter::new(
            "skiff_logrouter_buffer_blocked_total",
            "appends held back because the buffer reached its size limit",
        )?;
        r.register(Box::new(buffer_blocked.clone()))?;
        Ok(Self {
            input_records: counter_vec(r, "input_records_total", "records accepted", &["input"])?,
            input_bytes: counter_vec(
                r,
                "input_bytes_total",
                "bytes of records accepted",
                &["input"],
            )?,
            input_rejected: counter_vec(
                r,
                "input_rejected_total",
                "frames, connections or records refused",
                &["input", "reason"],
            )?,
            input_dropped: counter_vec(
                r,
                "input_dropped_records_total",
                "records dropped by a full-buffer policy",
                &["input"],
            )?,
            input_connections: gauge_vec(
                r,
                "input_connections",
                "open client connections",
                &["input"],
            )?,
            filter_dropped: counter_vec(
                r,
                "filter_dropped_records_total",
                "records removed by filters",
                &["filter"],
            )?,
            output_records: counter_vec(
                r,
                "output_records_total",
                "records delivered",
                &["output"],
            )?,
            output_bytes: counter_vec(r, "output_bytes_total", "bytes delivered", &["output"])?,
            output_retries: counter_vec(
                r,
                "output_retries_total",
                "delivery retries",
                &["output"],
            )?,
            output_errors: counter_vec(
                r,
                "output_errors_total",
                "failed delivery attempts",
                &["output"],
            )?,
            output_dropped: counter_vec(
                r,
                "output_dropped_records_total",
                "records given up after the retry limit",
                &["output"],
            )?,
            output_lag_bytes: gauge_vec(
                r,
                "output_lag_bytes",
                "buffered bytes not yet delivered",
                &["output"],
            )?,
            buffer_bytes,
            buffer_segments,
            buffer_corrupt,
            buffer_blocked,
        })
    }
}
