//! The benchmark's Markdown: throughput and CPU, latency, resources; ratios against direct and HAProxy.

use std::fmt::Write as _;

use super::{BenchReport, BenchRow};
use crate::LoadtestError;
use crate::load::report::trim_float;

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| NONE.to_string(), |r| format!("{r:.2}×"))
}

const NONE: &str = "—";

// === impl BenchReport ===

impl BenchReport {
    /// Issue 4's targets for `sidecar`, against the peers of the same run.
    pub fn proxy_checks(&self, sidecar: &BenchRow) -> Vec<super::harness::Check> {
        use super::harness::Check;
        let find = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.peer == name && r.skipped.is_none())
        };
        let (direct, haproxy, nginx) = (find("direct"), find("HAProxy"), find("nginx"));
        let per = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let lat = |row: Option<&BenchRow>, f: fn(&crate::load::report::LatencySummary) -> u64| {
            row.and_then(|r| r.latency.as_ref()).map(f)
        };
        // p99 is compared with the host's stalls taken out when every row compared has it.
        let p99_taken_out = [Some(sidecar), direct, haproxy, nginx]
            .into_iter()
            .flatten()
            .all(|r| r.host.and_then(|h| h.p99_without_stalls_us).is_some());
        let figure = |row: Option<&BenchRow>, p99: bool, taken_out: bool| -> Option<u64> {
            match (p99, taken_out) {
                (false, _) => lat(row, |l| l.p50_us),
                (true, false) => lat(row, |l| l.p99_us),
                (true, true) => row?.host?.p99_without_stalls_us,
            }
        };
        let added = |row: Option<&BenchRow>, p99: bool, taken_out: bool| {
            figure(row, p99, taken_out)
                .zip(figure(direct, p99, taken_out))
                .map(|(v, d)| v as f64 - d as f64)
        };
        let best_peer = |p99: bool, taken_out: bool| match (
            added(haproxy, p99, taken_out),
            added(nginx, p99, taken_out),
        ) {
            (Some(h), Some(n)) => Some(h.min(n)),
            (h, n) => h.or(n),
        };
        let mut checks = Vec::new();
        let t_h = per(
            sidecar.max_throughput,
            haproxy.and_then(|h| h.max_throughput),
        );
        checks.push(Check::new(
            "max throughput ÷ HAProxy",
            times(t_h),
            "≥ 1.00×",
            t_h.map(|r| r >= 1.0),
        ));
        let t_n = per(sidecar.max_throughput, nginx.and_then(|n| n.max_throughput));
        checks.push(Check::new(
            "max throughput ÷ nginx",
            times(t_n),
            "≥ 0.90×",
            t_n.map(|r| r >= 0.9),
        ));
        let cpu = per(
            sidecar.cpu_us_per_request,
            haproxy.and_then(|h| h.cpu_us_per_request),
        );
        checks.push(Check::new(
            "CPU per request ÷ HAProxy",
            times(cpu),
            "≤ 1.00×",
            cpu.map(|r| r <= 1.0),
        ));
        for (name, p99) in [("p50", false), ("p99", true)] {
            let taken_out = p99 && p99_taken_out;
            let ours = added(Some(sidecar), p99, taken_out);
            let peer = best_peer(p99, taken_out);
            let measured = ours.map_or_else(|| NONE.to_string(), |v| format!("{v:+.0} µs"));
            let measured = match (taken_out, added(Some(sidecar), p99, false)) {
                (true, Some(raw)) => format!(
                    "{measured} with the host's stalls taken out ({raw:+.0} µs as measured, better peer {})",
                    best_peer(p99, false).map_or_else(|| NONE.to_string(), |v| format!("{v:+.0}"))
                ),
                _ => measured,
            };
            checks.push(Check::new(
                format!("added {name} at {} req/s", trim_float(self.rate)),
                measured,
                peer.map_or_else(
                    || NONE.to_string(),
                    |v| format!("≤ {v:+.0} µs (better peer)"),
                ),
                ours.zip(peer).map(|(o, p)| o <= p),
            ));
        }
        // The row's own worst: with the host's stalls taken out when they were watched.
        let own_max = |row: &BenchRow| match (&row.host, &row.latency) {
            (Some(host), Some(_)) => Some(host.max_without_stalls_us),
            (None, latency) => latency.as_ref().map(|l| l.max_us),
            (Some(_), None) => None,
        };
        let worst_max = own_max(sidecar);
        let ms = |us: u64| us as f64 / 1000.0;
        let measured = match (worst_max, &sidecar.host, &sidecar.latency) {
            (Some(m), Some(host), Some(latency)) if host.requests_in_stalls > 0 => format!(
                "{:.1} ms with the host's stalls taken out ({:.1} ms as measured; {} requests overlapped {} stalls of up to {:.1} ms)",
                ms(m),
                ms(latency.max_us),
                host.requests_in_stalls,
                host.stalls,
                ms(host.worst_us),
            ),
            (Some(m), Some(_), _) => format!("{:.1} ms (no request in a host stall)", ms(m)),
            (Some(m), None, _) => format!("{:.1} ms", ms(m)),
            (None, ..) => NONE.to_string(),
        };
        checks.push(Check::new(
            format!("max latency at {} req/s", trim_float(self.rate)),
            measured,
            // The direct row's own worst beside it: what the machine gave without any proxy.
            direct.and_then(own_max).map_or_else(
                || "≤ 5 ms".to_string(),
                |d| format!("≤ 5 ms (direct: {:.1} ms)", ms(d)),
            ),
            worst_max.map(|m| m <= 5_000),
        ));
        let mem = |kib: Option<u64>| kib.map(mib);
        checks.push(Check::new(
            "idle RSS",
            fmt(mem(sidecar.idle_rss_kib), 1) + " MiB",
            "≤ 10 MiB",
            mem(sidecar.idle_rss_kib).map(|m| m <= 10.0),
        ));
        checks.push(Check::new(
            format!("RSS with {} keep-alive connections", self.held_connections),
            fmt(mem(sidecar.held_rss_kib), 1) + " MiB",
            "≤ 20 MiB",
            mem(sidecar.held_rss_kib).map(|m| m <= 20.0),
        ));
        let back = sidecar.back_near_idle();
        checks.push(Check::new(
            "back near its RSS before them once they close",
            sidecar.after_close_secs.map_or_else(
                || NONE.to_string(),
                |s| {
                    if back == Some(true) {
                        format!("{s:.1} s")
                    } else {
                        format!("not in {s:.0} s")
                    }
                },
            ),
            "≤ 60 s",
            back,
        ));
        checks.push(Check::new(
            "new upstream connections / 1,000 requests",
            fmt(sidecar.new_upstream_connections_per_1000, 2),
            "0",
            sidecar.new_upstream_connections_per_1000.map(|n| n == 0.0),
        ));
        checks.push(Check::new(
            "first 200 after exec",
            fmt(sidecar.first_200_ms, 1) + " ms",
            "≤ 20 ms",
            sidecar.first_200_ms.map(|ms| ms <= 20.0),
        ));
        checks
    }

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
        // With several rounds, the spread of each row's p50 and p99 over them: how much of a
        // difference between rows this machine's noise can make.
        let spread = measured.iter().any(|r| r.latency_rounds.len() > 1);
        let host = measured.iter().any(|r| r.host.is_some());
        let mut columns = vec![
            "p50",
            "added p50",
            "p99",
            "added p99",
            "p99.9",
            "max",
            "errors",
            "proxy CPU µs/req",
        ];
        if host {
            columns.extend([
                "p99, host stalls taken out",
                "max, host stalls taken out",
                "host stalls (worst µs)",
                "requests in them",
            ]);
        }
        if spread {
            columns.extend(["p50 by round", "p99 by round"]);
        }
        let _ = writeln!(out, "| | {} |", columns.join(" | "));
        let _ = writeln!(out, "| --- |{}", " ---: |".repeat(columns.len()));
        let direct_latency = direct.and_then(|d| d.latency.as_ref());
        for row in &measured {
            let Some(latency) = &row.latency else {
                continue;
            };
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.peer,
                latency.p50_us,
                added(latency.p50_us, direct_latency.map(|d| d.p50_us)),
                latency.p99_us,
                added(latency.p99_us, direct_latency.map(|d| d.p99_us)),
                latency.p999_us,
                latency.max_us,
                row.errors,
                fmt(row.rate_cpu_us_per_request, 1),
            );
            if host {
                match &row.host {
                    Some(h) => {
                        let _ = write!(
                            out,
                            " {} | {} | {} ({}) | {} |",
                            h.p99_without_stalls_us
                                .map_or_else(|| NONE.to_string(), |p| p.to_string()),
                            h.max_without_stalls_us,
                            h.stalls,
                            h.worst_us,
                            h.requests_in_stalls
                        );
                    }
                    None => {
                        let _ = write!(out, " {NONE} | {NONE} | {NONE} | {NONE} |");
                    }
                }
            }
            if spread {
                let range = |f: fn(&(u64, u64)) -> u64| {
                    let values = row.latency_rounds.iter().map(f);
                    match (values.clone().min(), values.max()) {
                        (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
                        _ => NONE.to_string(),
                    }
                };
                let _ = write!(out, " {} | {} |", range(|r| r.0), range(|r| r.1));
            }
            out.push('\n');
        }

        out.push_str("\n### Start and memory\n\n");
        let _ = writeln!(
            out,
            "| | first 200 after exec (ms) | idle RSS (MiB) | of which private (MiB) | RSS before the connections (MiB) | RSS with {} connections (MiB) | after they close (MiB) | back near it after (s) | peak RSS (MiB) | new upstream connections / 1,000 requests |",
            self.held_connections
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &measured {
            let back = match (row.back_near_idle(), row.after_close_secs) {
                (Some(true), Some(secs)) => format!("{secs:.1}"),
                (Some(false), Some(secs)) => format!("not within {secs:.0}"),
                _ => NONE.to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.peer,
                fmt(row.first_200_ms, 1),
                fmt(row.idle_rss_kib.map(mib), 1),
                fmt(row.idle_private_kib.map(mib), 1),
                fmt(row.before_held_rss_kib.map(mib), 1),
                fmt(row.held_rss_kib.map(mib), 1),
                fmt(row.after_close_rss_kib.map(mib), 1),
                back,
                fmt(row.peak_rss_kib.map(mib), 1),
                fmt(row.new_upstream_connections_per_1000, 2),
            );
        }
        if let Some(sidecar) = measured.iter().find(|row| row.peer == "skiff sidecar") {
            out.push_str("\n### Issue 4's targets (the sidecar with telemetry off)\n\n");
            out.push_str(&super::harness::checks_table(&self.proxy_checks(sidecar)));
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
