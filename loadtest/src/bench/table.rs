//! The benchmark's Markdown: throughput and CPU, latency, resources; ratios against direct and HAProxy.

use std::fmt::Write as _;

use super::{BenchReport, BenchRow};
use crate::LoadtestError;
use crate::load::report::trim_float;

const NONE: &str = "—";

// === impl BenchReport ===

impl BenchReport {
    pub fn to_json(&self) -> Result<String, LoadtestError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Proxy benchmark on loopback ({:.0} s)\n",
            self.elapsed_secs
        );
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let measured: Vec<&BenchRow> = self.rows.iter().filter(|r| r.skipped.is_none()).collect();
        let direct = measured.iter().find(|row| row.peer == "direct").copied();
        let haproxy = measured.iter().find(|row| row.peer == "HAProxy").copied();

        let _ = writeln!(
            out,
            "\n### Max throughput (closed loop, {} connections) and CPU per request\n",
            self.max_connections
        );
        out.push_str("| | version | req/s | × direct | × HAProxy | CPU µs/req | × HAProxy | proxy core busy |\n");
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &measured {
            let throughput = row.max_throughput;
            let cpu = row.cpu_us_per_request;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                row.peer,
                row.version.as_deref().unwrap_or(NONE),
                fmt(throughput, 0),
                ratio(throughput, direct.and_then(|d| d.max_throughput)),
                ratio(throughput, haproxy.and_then(|h| h.max_throughput)),
                fmt(cpu, 1),
                ratio(cpu, haproxy.and_then(|h| h.cpu_us_per_request)),
                row.cpu_busy_percent
                    .map_or_else(|| NONE.to_string(), |busy| format!("{busy:.0}%")),
            );
        }

        let _ = writeln!(
            out,
            "\n### Latency at {} req/s over {} connections (µs, from each request's scheduled time)\n",
            trim_float(self.rate),
            self.rate_connections
        );
        out.push_str("| | p50 | added p50 | p99 | added p99 | p99.9 | max | errors |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let direct_latency = direct.and_then(|d| d.latency.as_ref());
        for row in &measured {
            let Some(latency) = &row.latency else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                row.peer,
                latency.p50_us,
                added(latency.p50_us, direct_latency.map(|d| d.p50_us)),
                latency.p99_us,
                added(latency.p99_us, direct_latency.map(|d| d.p99_us)),
                latency.p999_us,
                latency.max_us,
                row.errors,
            );
        }

        out.push_str("\n### Start and memory\n\n");
        let _ = writeln!(
            out,
            "| | first 200 after exec (ms) | idle RSS (MiB) | RSS with {} connections (MiB) | 1 s after they close (MiB) | peak RSS (MiB) | new upstream connections / 1,000 requests |",
            self.held_connections
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &measured {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.peer,
                fmt(row.first_200_ms, 1),
                fmt(row.idle_rss_kib.map(mib), 1),
                fmt(row.held_rss_kib.map(mib), 1),
                fmt(row.after_close_rss_kib.map(mib), 1),
                fmt(row.peak_rss_kib.map(mib), 1),
                fmt(row.new_upstream_connections_per_1000, 2),
            );
        }

        out.push_str(&super::telemetry::markdown(self));

        let skipped: Vec<&BenchRow> = self.rows.iter().filter(|r| r.skipped.is_some()).collect();
        if !skipped.is_empty() {
            out.push_str("\n### Not measured\n\n");
            for row in skipped {
                let _ = writeln!(
                    out,
                    "- {}: {}",
                    row.peer,
                    row.skipped.as_deref().unwrap_or_default()
                );
            }
        }
        out
    }
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| NONE.to_string(), |value| format!("{value:.decimals$}"))
}

/// `value / base` as `1.23×`.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => format!("{:.2}×", value / base),
        _ => NONE.to_string(),
    }
}

/// `value - base` with its sign, `+230`.
pub fn added(value: u64, base: Option<u64>) -> String {
    match base {
        Some(base) if value >= base => format!("+{}", value - base),
        Some(base) => format!("-{}", base - value),
        None => NONE.to_string(),
    }
}
