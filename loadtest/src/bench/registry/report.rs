//! The registry benchmark's Markdown (one table per section, issue 3's targets beside the figures) and JSON.

use std::fmt::Write as _;

use super::{DnsPhase, DnsRow, DnsServer, RegistryBenchReport, dnsperf};
use crate::LoadtestError;
use crate::bench::harness::{Check, checks_table, fmt_opt, mib};
use crate::bench::table::ratio;
use crate::load::report::trim_float;

/// Issue 3's targets.
pub const QPS_RATIO_MIN: f64 = 0.8;
pub const CPU_RATIO_MAX: f64 = 1.25;
pub const FIXED_AVG_LATENCY_MAX_MS: f64 = 0.1;
pub const TCP_QPS_MIN: f64 = 50_000.0;
pub const DISCOVER_P99_MAX_US: u64 = 1_000;
pub const WATCH_P99_MAX_US: u64 = 50_000;
pub const RSS_MAX_BYTES: u64 = 300_000_000;
pub const RESTART_MAX_MS: f64 = 5_000.0;
pub const REGISTRATIONS_MIN_PER_SECOND: f64 = 2_000.0;

// === impl RegistryBenchReport ===

impl RegistryBenchReport {
    pub fn to_json(&self) -> Result<String, LoadtestError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Registry benchmark on loopback ({:.0} s)\n",
            self.elapsed_secs
        );
        let _ = writeln!(
            out,
            "- zone: {} services × {} instances (A records), Knot {} serving it from a zone file, skiff from registrations through the Cloud Map API",
            self.services,
            self.instances_per_service,
            self.knot_version.as_deref().unwrap_or("(version unknown)")
        );
        let _ = writeln!(
            out,
            "- dnsperf -c {} -T {} over the {} names in shuffled order",
            dnsperf::CLIENTS,
            dnsperf::THREADS,
            self.services
        );
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        self.dns_sections(&mut out);
        self.api_sections(&mut out);

        let skipped_rows: Vec<&DnsRow> = self.dns.iter().filter(|r| r.skipped.is_some()).collect();
        if !self.skipped.is_empty() || !skipped_rows.is_empty() {
            out.push_str("\n### Not measured\n\n");
            for row in skipped_rows {
                let _ = writeln!(
                    out,
                    "- DNS {} {}: {}",
                    phase_name(row.phase),
                    server_name(row.server),
                    row.skipped.as_deref().unwrap_or_default()
                );
            }
            for skipped in &self.skipped {
                let _ = writeln!(out, "- {}: {}", skipped.section, skipped.reason);
            }
        }
        out
    }

    fn row(&self, server: DnsServer, phase: DnsPhase) -> Option<&DnsRow> {
        self.dns
            .iter()
            .find(|row| row.server == server && row.phase == phase && row.stats.is_some())
    }

    fn dns_sections(&self, out: &mut String) {
        let pair = |phase| {
            (
                self.row(DnsServer::Knot, phase),
                self.row(DnsServer::Skiff, phase),
            )
        };
        let qps = |row: Option<&DnsRow>| row.and_then(|r| r.stats.as_ref()).map(|s| s.qps);
        let cpu = |row: Option<&DnsRow>| row.and_then(|r| r.cpu_us_per_query);
        let busy = |row: Option<&DnsRow>| row.and_then(|r| r.cpu_busy_percent);
        #[allow(clippy::cast_precision_loss)]
        let lost = |row: Option<&DnsRow>| row.and_then(|r| r.stats.as_ref()).map(|s| s.lost as f64);
        let latency =
            |row: Option<&DnsRow>| row.and_then(|r| r.stats.as_ref()).map(|s| s.avg_latency_ms);

        let (knot, ours) = pair(DnsPhase::UdpMax);
        out.push_str("\n### DNS over UDP, as fast as answers come back\n\n");
        out.push_str(DNS_HEADER);
        dns_line(
            out,
            "queries per second",
            qps(knot),
            qps(ours),
            0,
            &format!("≥ {QPS_RATIO_MIN}× Knot"),
            ratio_check(qps(ours), qps(knot), |r| r >= QPS_RATIO_MIN),
        );
        dns_line(
            out,
            "server CPU µs per query",
            cpu(knot),
            cpu(ours),
            2,
            &format!("≤ {CPU_RATIO_MAX}× Knot"),
            ratio_check(cpu(ours), cpu(knot), |r| r <= CPU_RATIO_MAX),
        );
        dns_line(
            out,
            "server core busy (%)",
            busy(knot),
            busy(ours),
            0,
            "",
            None,
        );
        dns_line(
            out,
            "average latency (ms)",
            latency(knot),
            latency(ours),
            3,
            "",
            None,
        );
        dns_line(out, "lost queries", lost(knot), lost(ours), 0, "", None);

        let (knot, ours) = pair(DnsPhase::UdpFixed);
        let _ = writeln!(
            out,
            "\n### DNS over UDP at a fixed {} QPS\n",
            trim_float(f64::from(self.fixed_qps))
        );
        out.push_str(DNS_HEADER);
        dns_line(
            out,
            "average latency (ms)",
            latency(knot),
            latency(ours),
            3,
            &format!("≤ {FIXED_AVG_LATENCY_MAX_MS} ms"),
            latency(ours).map(|ms| ms <= FIXED_AVG_LATENCY_MAX_MS),
        );
        dns_line(
            out,
            "lost queries",
            lost(knot),
            lost(ours),
            0,
            "0",
            lost(ours).map(|lost| lost == 0.0),
        );
        dns_line(out, "queries per second", qps(knot), qps(ours), 0, "", None);
        dns_line(
            out,
            "server CPU µs per query",
            cpu(knot),
            cpu(ours),
            2,
            "",
            None,
        );

        let (knot, ours) = pair(DnsPhase::TcpMax);
        out.push_str("\n### DNS over TCP, as fast as answers come back\n\n");
        out.push_str(DNS_HEADER);
        dns_line(
            out,
            "queries per second",
            qps(knot),
            qps(ours),
            0,
            &format!("≥ {}", trim_float(TCP_QPS_MIN)),
            qps(ours).map(|qps| qps >= TCP_QPS_MIN),
        );
        dns_line(
            out,
            "server CPU µs per query",
            cpu(knot),
            cpu(ours),
            2,
            "",
            None,
        );
        dns_line(out, "lost queries", lost(knot), lost(ours), 0, "", None);
    }

    fn api_sections(&self, out: &mut String) {
        if let Some(discover) = &self.discover {
            let _ = writeln!(
                out,
                "\n### DiscoverInstances, {} instances, at {} req/s for {:.0} s ({} connections, open loop, µs from each request's scheduled time)\n",
                discover.instances,
                trim_float(discover.rate),
                discover.duration_secs,
                discover.connections
            );
            let latency = &discover.latency;
            let checks = vec![
                Check::new("p50 (µs)", latency.p50_us.to_string(), "", None),
                Check::new(
                    "p99 (µs)",
                    latency.p99_us.to_string(),
                    format!("≤ {DISCOVER_P99_MAX_US}"),
                    (latency.count > 0).then_some(latency.p99_us <= DISCOVER_P99_MAX_US),
                ),
                Check::new("p99.9 (µs)", latency.p999_us.to_string(), "", None),
                Check::new("max (µs)", latency.max_us.to_string(), "", None),
                Check::new(
                    "failed or not sent",
                    (discover.errors + discover.not_sent).to_string(),
                    "0",
                    Some(discover.errors + discover.not_sent == 0),
                ),
                Check::new(
                    "instances in an answer",
                    discover
                        .answered_instances
                        .map_or_else(|| "—".to_string(), |n| n.to_string()),
                    discover.instances.to_string(),
                    discover.answered_instances.map(|n| n == discover.instances),
                ),
            ];
            out.push_str(&checks_table(&checks));
        }
        if let Some(watch) = &self.watch {
            let _ = writeln!(
                out,
                "\n### Watch fan-out: {} long-polls on one namespace, one RegisterInstance, {} round(s) (from sending the registration to each complete answer)\n",
                watch.watchers, watch.rounds
            );
            let latency = &watch.latency;
            let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
            let all = watch
                .all_watchers_ms
                .iter()
                .map(|ms| format!("{ms:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            let checks = vec![
                Check::new("p50 (ms)", ms(latency.p50_us), "", None),
                Check::new(
                    "p99 (ms)",
                    ms(latency.p99_us),
                    format!("≤ {}", WATCH_P99_MAX_US / 1000),
                    (latency.count > 0).then_some(latency.p99_us <= WATCH_P99_MAX_US),
                ),
                Check::new("last watcher of each round (ms)", all, "", None),
                Check::new(
                    "watchers that missed it",
                    watch.failed.to_string(),
                    "0",
                    Some(watch.failed == 0),
                ),
            ];
            out.push_str(&checks_table(&checks));
            if let Some(error) = &watch.first_error {
                let _ = writeln!(out, "\nfirst watcher error: {error}");
            }
        }
        if let Some(registrations) = &self.registrations {
            let _ = writeln!(
                out,
                "\n### Durable registrations: RegisterInstance, {} in flight, {:.0} s\n",
                registrations.concurrency, registrations.duration_secs
            );
            let latency = &registrations.latency;
            let checks = vec![
                Check::new(
                    "registrations per second",
                    format!("{:.0}", registrations.per_second),
                    format!("≥ {}", trim_float(REGISTRATIONS_MIN_PER_SECOND)),
                    Some(registrations.per_second >= REGISTRATIONS_MIN_PER_SECOND),
                ),
                Check::new("p50 (µs)", latency.p50_us.to_string(), "", None),
                Check::new("p99 (µs)", latency.p99_us.to_string(), "", None),
                Check::new(
                    "failed",
                    registrations.failed.to_string(),
                    "0",
                    Some(registrations.failed == 0),
                ),
            ];
            out.push_str(&checks_table(&checks));
            if let Some(error) = &registrations.first_error {
                let _ = writeln!(out, "\nfirst failure: {error}");
            }
        }
        if let Some(scale) = &self.scale {
            let _ = writeln!(
                out,
                "\n### Scale: {} instances across {} services, then kill -9 and restart\n",
                scale.instances, scale.services
            );
            let rss_limit_kib = RSS_MAX_BYTES / 1024;
            let checks = vec![
                Check::new(
                    "resident memory (MiB)",
                    fmt_opt(scale.rss_kib.map(mib), 1),
                    format!("≤ 300 MB ({:.0} MiB)", mib(rss_limit_kib)),
                    scale.rss_kib.map(|kib| kib <= rss_limit_kib),
                ),
                Check::new(
                    "peak resident memory (MiB)",
                    fmt_opt(scale.peak_rss_kib.map(mib), 1),
                    "",
                    None,
                ),
                Check::new(
                    "restart: exec to /health 200 (ms)",
                    fmt_opt(scale.restart_health_ms, 0),
                    format!("≤ {}", trim_float(RESTART_MAX_MS)),
                    scale.restart_health_ms.map(|ms| ms <= RESTART_MAX_MS),
                ),
                Check::new(
                    "restart: exec to a DNS answer (ms)",
                    fmt_opt(scale.restart_dns_ms, 0),
                    format!("≤ {}", trim_float(RESTART_MAX_MS)),
                    scale.restart_dns_ms.map(|ms| ms <= RESTART_MAX_MS),
                ),
                Check::new(
                    "instances of svc0 after the restart",
                    scale
                        .first_service_after_restart
                        .map_or_else(|| "—".to_string(), |n| n.to_string()),
                    scale.first_service_expected.to_string(),
                    scale
                        .first_service_after_restart
                        .map(|n| n == scale.first_service_expected),
                ),
                Check::new(
                    "failed registrations",
                    scale.failed.to_string(),
                    "0",
                    Some(scale.failed == 0),
                ),
            ];
            out.push_str(&checks_table(&checks));
            let _ = writeln!(
                out,
                "\n{} of the {} instances registered by this phase in {:.1} s, the rest by setup and the registrations phase",
                scale.registered_in_phase, scale.instances, scale.register_secs
            );
            if let Some(error) = &scale.first_error {
                let _ = writeln!(out, "\nfirst failed registration: {error}");
            }
            if let Some(error) = &scale.restart_error {
                let _ = writeln!(out, "\nrestart: {error}");
            }
        }
    }
}

const DNS_HEADER: &str =
    "| | Knot | skiff | skiff ÷ Knot | target | |\n| --- | ---: | ---: | ---: | ---: | --- |\n";

fn dns_line(
    out: &mut String,
    what: &str,
    knot: Option<f64>,
    ours: Option<f64>,
    decimals: usize,
    target: &str,
    met: Option<bool>,
) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    };
    let _ = writeln!(
        out,
        "| {what} | {} | {} | {} | {target} | {verdict} |",
        fmt_opt(knot, decimals),
        fmt_opt(ours, decimals),
        ratio(ours, knot),
    );
}

/// Whether `ours / base` passes `test`; `None` without both figures.
fn ratio_check(ours: Option<f64>, base: Option<f64>, test: impl Fn(f64) -> bool) -> Option<bool> {
    match (ours, base) {
        (Some(ours), Some(base)) if base > 0.0 => Some(test(ours / base)),
        _ => None,
    }
}

fn phase_name(phase: DnsPhase) -> &'static str {
    match phase {
        DnsPhase::UdpMax => "UDP max",
        DnsPhase::UdpFixed => "UDP fixed rate",
        DnsPhase::TcpMax => "TCP max",
    }
}

fn server_name(server: DnsServer) -> &'static str {
    match server {
        DnsServer::Knot => "Knot",
        DnsServer::Skiff => "skiff",
    }
}
