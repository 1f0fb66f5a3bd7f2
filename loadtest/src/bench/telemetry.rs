//! The cost of full telemetry: an OTLP sink for the traced sidecar row, its span counters, traced ÷ off.
//!
//! The telemetry issue's target is that a sidecar with every span exported (100 % sampling,
//! OTLP HTTP/protobuf) and access logs on keeps its throughput and p99 within 10 % of the
//! same sidecar with telemetry off (Prometheus metrics are recorded in both). The export has
//! to really happen for that to mean anything, so the benchmark runs its own collector: a tiny
//! HTTP/1.1 server on loopback, on the load generator's core (the sidecar's core stays the
//! sidecar's alone), that answers 200 to `POST /v1/traces` and counts requests and bytes. The
//! sidecar's own `skiff_proxy_spans_exported_total` / `_dropped_total` say whether it kept up.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::harness::{Check, checks_table, fmt_opt};
use super::{BenchReport, BenchRow, Peer, peer_name};
use crate::LoadtestError;
use crate::load::report::trim_float;

/// The bound: traced throughput ≥ (1 − this) × off, traced p99 ≤ (1 + this) × off.
pub const TARGET_WITHIN: f64 = 0.10;
/// Where OTLP HTTP/protobuf posts spans.
pub const TRACES_PATH: &str = "/v1/traces";
/// The sidecar's span counters (labelled by service; summed here).
pub const SPANS_EXPORTED: &str = "skiff_proxy_spans_exported_total";
pub const SPANS_DROPPED: &str = "skiff_proxy_spans_dropped_total";

/// What a sidecar row saw of telemetry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TelemetryFigures {
    /// Trace export was on.
    pub traced: bool,
    /// The JSON access log was on too.
    pub access_log: bool,
    /// Requests the load generator completed through the sidecar (warm-up and both phases).
    pub requests: u64,
    /// From the sidecar's `/metrics` right after the phases (a partial batch may still be queued).
    pub spans_exported: Option<u64>,
    pub spans_dropped: Option<u64>,
    /// What reached the benchmark's OTLP sink by then.
    pub otlp_requests: Option<u64>,
    pub otlp_bytes: Option<u64>,
}

/// Traced ÷ off for the figures the issue bounds (and CPU, which it does not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TelemetryCost {
    pub throughput: Option<f64>,
    pub cpu_per_request: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

// === impl TelemetryCost ===

impl TelemetryCost {
    #[allow(clippy::cast_precision_loss)]
    pub fn compare(off: &BenchRow, traced: &BenchRow) -> TelemetryCost {
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let p = |row: &BenchRow, pick: fn(&crate::load::LatencySummary) -> u64| {
            row.latency.as_ref().map(|l| pick(l) as f64)
        };
        TelemetryCost {
            throughput: div(traced.max_throughput, off.max_throughput),
            cpu_per_request: div(traced.cpu_us_per_request, off.cpu_us_per_request),
            p50: div(p(traced, |l| l.p50_us), p(off, |l| l.p50_us)),
            p99: div(p(traced, |l| l.p99_us), p(off, |l| l.p99_us)),
        }
    }

    /// The two bounds, met or missed.
    pub fn checks(&self, rate: f64) -> Vec<Check> {
        let low = 1.0 - TARGET_WITHIN;
        let high = 1.0 + TARGET_WITHIN;
        vec![
            Check::new(
                "max throughput, traced ÷ off",
                times(self.throughput),
                format!("≥ {low:.2}×"),
                self.throughput.map(|r| r >= low),
            ),
            Check::new(
                format!("p99 at {} req/s, traced ÷ off", trim_float(rate)),
                times(self.p99),
                format!("≤ {high:.2}×"),
                self.p99.map(|r| r <= high),
            ),
        ]
    }
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_string(), |r| format!("{r:.2}×"))
}

/// The sum of every sample of `name` in Prometheus text exposition (`None`: no sample).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The value follows the labels (whose quoted values may hold spaces) or the name.
        let value = match rest.chars().next() {
            Some('{') => rest.rfind('}').map(|end| &rest[end + 1..]),
            Some(c) if c.is_whitespace() => Some(rest),
            _ => None, // a longer name sharing the prefix
        };
        if let Some(value) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum = Some(sum.unwrap_or(0.0) + value);
        }
    }
    sum
}

/// The spans-exported and spans-dropped counters of a sidecar's `/metrics`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn span_counters(metrics: &str) -> (Option<u64>, Option<u64>) {
    let count = |name| metric_sum(metrics, name).map(|v| v.max(0.0) as u64);
    (count(SPANS_EXPORTED), count(SPANS_DROPPED))
}

/// The comparison section of the Markdown report; empty without a measured traced row.
pub fn markdown(report: &BenchReport) -> String {
    let measured = |peer| {
        report
            .rows
            .iter()
            .find(|row| row.peer == peer_name(peer) && row.skipped.is_none())
    };
    let Some(traced) = measured(Peer::SidecarTraced) else {
        return String::new();
    };
    let off = measured(Peer::Sidecar);
    let mut out = String::new();
    let logged = traced.telemetry.as_ref().is_some_and(|t| t.access_log);
    let _ = writeln!(
        out,
        "\n### Cost of full telemetry (sidecar with metrics + 100 % traces over OTLP{}, vs telemetry off)\n",
        if logged { " + JSON access log" } else { "" }
    );
    let _ = writeln!(
        out,
        "| | req/s | CPU µs/req | p50 at {rate} req/s (µs) | p99 at {rate} req/s (µs) | spans exported | spans dropped | OTLP requests | OTLP KiB |",
        rate = trim_float(report.rate)
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let line = |out: &mut String, label: &str, row: &BenchRow| {
        let telemetry = row.telemetry.clone().unwrap_or_default();
        let count = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |v| v.to_string());
        #[allow(clippy::cast_precision_loss)]
        let kib = telemetry.otlp_bytes.map(|b| b as f64 / 1024.0);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_opt(row.max_throughput, 0),
            fmt_opt(row.cpu_us_per_request, 1),
            count(row.latency.as_ref().map(|l| l.p50_us)),
            count(row.latency.as_ref().map(|l| l.p99_us)),
            count(telemetry.spans_exported),
            count(telemetry.spans_dropped),
            count(telemetry.otlp_requests),
            fmt_opt(kib, 0),
        );
    };
    match off {
        Some(off) => line(&mut out, "telemetry off (metrics only)", off),
        None => out.push_str("| telemetry off (metrics only) | not measured | | | | | | | |\n"),
    }
    let label = if logged {
        "metrics + traces + access log"
    } else {
        "metrics + traces"
    };
    line(&mut out, label, traced);
    let cost = off.map(|off| TelemetryCost::compare(off, traced));
    if let Some(cost) = cost {
        let _ = writeln!(
            out,
            "| traced ÷ off | {} | {} | {} | {} | | | | |",
            times(cost.throughput),
            times(cost.cpu_per_request),
            times(cost.p50),
            times(cost.p99),
        );
        out.push('\n');
        out.push_str(&checks_table(&cost.checks(report.rate)));
    }
    if let Some(telemetry) = &traced.telemetry
        && telemetry.requests > 0
    {
        let spans = telemetry.spans_exported.unwrap_or(0) + telemetry.spans_dropped.unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let per_request = spans as f64 / telemetry.requests as f64;
        let _ = writeln!(
            out,
            "\n{} requests through the traced sidecar gave ≈ {per_request:.2} finished spans each (exported + dropped; spans of the last partial batch still queued are not counted).",
            telemetry.requests
        );
    }
    out
}

// === OTLP sink ===

/// What the sink received.
#[derive(Debug, Default)]
pub struct SinkCounts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

// === impl SinkCounts ===

impl SinkCounts {
    /// (export requests, body bytes) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Serves OTLP HTTP/protobuf trace export on `listener` until `shutdown`: 200 (an empty
/// `ExportTraceServiceResponse`) to `POST /v1/traces`, counting it; 404 to anything else.
pub async fn run(
    listener: tokio::net::TcpListener,
    counts: Arc<SinkCounts>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counts = counts.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let counts = counts.clone();
                        async move { Ok::<_, Infallible>(answer(request, &counts).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Dropping the set aborts the connections still open.
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    counts: &SinkCounts,
) -> http::Response<Full<Bytes>> {
    let export = request.method() == http::Method::POST && request.uri().path() == TRACES_PATH;
    let mut body = request.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            Err(_) => {
                return status_only(http::StatusCode::BAD_REQUEST);
            }
        }
    }
    if !export {
        return status_only(http::StatusCode::NOT_FOUND);
    }
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(bytes, Ordering::Relaxed);
    let mut response = http::Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn status_only(status: http::StatusCode) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The sink on a dedicated single-threaded runtime, on a thread pinned to the load generator's core.
pub struct OtlpSink {
    pub addr: SocketAddr,
    pub counts: Arc<SinkCounts>,
    server: super::harness::PinnedServer,
}

// === impl OtlpSink ===

impl OtlpSink {
    /// Binds 127.0.0.1:0 and serves on a new thread pinned to `cpu`.
    pub fn start(cpu: Option<usize>) -> Result<OtlpSink, LoadtestError> {
        let counts = Arc::new(SinkCounts::default());
        let served = counts.clone();
        let server =
            super::harness::PinnedServer::start("otlp", cpu, |listener, stop| async move {
                run(listener, served, stop).await;
                Ok(())
            })?;
        Ok(OtlpSink {
            addr: server.addr,
            counts,
            server,
        })
    }

    pub async fn stop(self) {
        self.server.stop(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests;
