//! What a run measured: counts, errors by kind, latency percentiles; as JSON and Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::LoadtestError;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// A fresh latency histogram: 1 µs to an hour, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, LoadtestError> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
        .map_err(|error| LoadtestError::InvalidOption(format!("latency histogram: {error}")))
}

/// Why a request did not get a 2xx/3xx answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection (to the target or the proxy) could not be made.
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    Status4xx,
    Status5xx,
    /// The connection or stream was closed or reset before the response completed.
    Reset,
    /// The peer spoke something that is not HTTP.
    Protocol,
}

/// How many requests failed, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub reset: u64,
    pub protocol: u64,
}

// === impl ErrorCounts ===

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_4xx + self.status_5xx + self.reset + self.protocol
    }

    pub fn count(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.reset += other.reset;
        self.protocol += other.protocol;
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Status4xx => &mut self.status_4xx,
            ErrorKind::Status5xx => &mut self.status_5xx,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Protocol => &mut self.protocol,
        }
    }

    fn rows(&self) -> [(&'static str, u64); 6] {
        [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("status 4xx", self.status_4xx),
            ("status 5xx", self.status_5xx),
            ("reset", self.reset),
            ("protocol", self.protocol),
        ]
    }
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

// === impl LatencySummary ===

impl LatencySummary {
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            min_us: histogram.min(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// The protocol a run spoke to its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `rate` (open loop) or `max` (closed loop).
    pub mode: &'static str,
    pub protocol: Protocol,
    pub targets: Vec<String>,
    pub proxy: Option<String>,
    pub connections: usize,
    /// Requests per second asked for (open loop only).
    pub target_rate: Option<f64>,
    pub elapsed_secs: f64,
    /// Requests the schedule held (open loop) or the count bound (closed loop).
    pub planned: u64,
    pub sent: u64,
    /// Planned requests the run gave up on because it ran out of time.
    pub not_sent: u64,
    /// Requests answered with a complete response, whatever its status.
    pub responses: u64,
    /// Responses with a 1xx, 2xx or 3xx status.
    pub ok: u64,
    /// Responses per second over the whole run.
    pub throughput: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
    /// From each request's scheduled send time to its last response byte (open loop);
    /// the same as `service_time` in closed loop.
    pub latency: LatencySummary,
    /// From the actual send to the last response byte.
    pub service_time: LatencySummary,
    pub bytes_received: u64,
    /// The answered requests slower than a threshold, when the run was asked to keep them.
    pub slow: Option<SlowRequests>,
}

/// Answered requests slower than `over_us`: when each was due and when it completed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlowRequests {
    pub over_us: u64,
    /// In no particular order; instants only mean something within this process.
    #[serde(skip)]
    pub kept: Vec<SlowRequest>,
    /// Slow requests past [`super::MAX_SLOW_REQUESTS`], counted but not kept.
    pub not_kept: u64,
    /// The slowest answered request that was not slow (0 if none).
    pub max_below_us: u64,
}

/// One slow request's span, from its scheduled send to its last response byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowRequest {
    pub scheduled: tokio::time::Instant,
    pub done: tokio::time::Instant,
}

// === impl SlowRequests ===

impl SlowRequests {
    pub fn new(over: std::time::Duration) -> SlowRequests {
        SlowRequests {
            over_us: u64::try_from(over.as_micros()).unwrap_or(u64::MAX),
            ..SlowRequests::default()
        }
    }

    /// Counts one answered request that took `latency_us`.
    pub fn record(&mut self, latency_us: u64, request: SlowRequest) {
        if latency_us <= self.over_us {
            self.max_below_us = self.max_below_us.max(latency_us);
        } else if self.kept.len() < super::MAX_SLOW_REQUESTS {
            self.kept.push(request);
        } else {
            self.not_kept += 1;
        }
    }

    pub fn merge(&mut self, other: &SlowRequests) {
        self.max_below_us = self.max_below_us.max(other.max_below_us);
        let room = super::MAX_SLOW_REQUESTS.saturating_sub(self.kept.len());
        let taken = other.kept.len().min(room);
        self.kept.extend_from_slice(&other.kept[..taken]);
        self.not_kept += other.not_kept + (other.kept.len() - taken) as u64;
    }
}

// === impl Report ===

impl Report {
    pub fn to_json(&self) -> Result<String, LoadtestError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let what = match self.target_rate {
            Some(rate) => format!("open loop at {} req/s", trim_float(rate)),
            None => "closed loop, as fast as possible".to_string(),
        };
        let _ = writeln!(
            out,
            "### {} — {what}, {} connections, {}, {:.1} s\n",
            self.targets.join(", "),
            self.connections,
            match self.protocol {
                Protocol::Http1 => "HTTP/1.1",
                Protocol::H2c => "h2c",
            },
            self.elapsed_secs,
        );
        if let Some(proxy) = &self.proxy {
            let _ = writeln!(out, "Through HTTP proxy `{proxy}`.\n");
        }
        out.push_str(
            "| planned | sent | not sent | responses | ok | errors | throughput (req/s) |\n",
        );
        out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            self.planned,
            self.sent,
            self.not_sent,
            self.responses,
            self.ok,
            self.errors.total(),
            self.throughput,
        );
        out.push_str("| latency (µs) | p50 | p90 | p99 | p99.9 | max | mean |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let from_schedule = if self.target_rate.is_some() {
            "from scheduled send"
        } else {
            "from send"
        };
        latency_row(&mut out, from_schedule, &self.latency);
        if self.target_rate.is_some() {
            latency_row(&mut out, "service time", &self.service_time);
        }
        if self.errors.total() > 0 {
            out.push_str("\n| error | count |\n| --- | ---: |\n");
            for (name, count) in self.errors.rows() {
                if count > 0 {
                    let _ = writeln!(out, "| {name} | {count} |");
                }
            }
        }
        if !self.statuses.is_empty() {
            let statuses: Vec<String> = self
                .statuses
                .iter()
                .map(|(status, count)| format!("{status}: {count}"))
                .collect();
            let _ = writeln!(out, "\nStatuses: {}.", statuses.join(", "));
        }
        out
    }
}

fn latency_row(out: &mut String, name: &str, summary: &LatencySummary) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {:.0} |",
        summary.p50_us,
        summary.p90_us,
        summary.p99_us,
        summary.p999_us,
        summary.max_us,
        summary.mean_us,
    );
}

/// `2000` rather than `2000.0`, `0.5` as is.
pub fn trim_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests;
