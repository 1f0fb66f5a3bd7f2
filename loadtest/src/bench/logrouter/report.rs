//! The log router benchmark's Markdown (one table per section, issue 5's targets beside the figures) and JSON.

use std::fmt::Write as _;

use super::{LogrouterBenchReport, Router, Scenario, ThroughputRow};
use crate::LoadtestError;
use crate::bench::harness::{Check, checks_table, fmt_opt, mib};
use crate::bench::table::ratio;

/// Issue 5's targets.
pub const NULL_RECORDS_PER_SECOND_MIN: f64 = 1_500_000.0;
pub const NULL_RECORDS_PER_CPU_SECOND_MIN: f64 = 2_000_000.0;
pub const FILE_RECORDS_PER_SECOND_MIN: f64 = 750_000.0;
pub const PEAK_RSS_MAX_KIB: u64 = 30 * 1024;

// === impl LogrouterBenchReport ===

impl LogrouterBenchReport {
    pub fn to_json(&self) -> Result<String, LoadtestError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Log router benchmark on loopback ({:.0} s)\n",
            self.elapsed_secs
        );
        let _ = writeln!(
            out,
            "- Forward protocol, PackedForward messages of {} records of {} bytes with the `chunk` option; {} connections, {} chunks in flight each; a record counts once its chunk is acked",
            self.batch, self.record_bytes, self.connections, self.window
        );
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        for scenario in [Scenario::Null, Scenario::BufferedFile] {
            self.scenario_table(&mut out, scenario);
        }
        if let Some(crash) = &self.crash {
            let _ = writeln!(
                out,
                "\n### Crash recovery: kill -9 after {:.1} s (filesystem buffer, file output, {:.0} records/s), restart on the same storage path, keep sending\n",
                crash.killed_after_secs, crash.rate
            );
            let verdict = &crash.verdict;
            let checks = vec![
                Check::new("records sent", crash.sent_records.to_string(), "", None),
                Check::new("records acked", verdict.acked.to_string(), "", None),
                Check::new(
                    "acked records lost",
                    verdict.lost.to_string(),
                    "0",
                    Some(verdict.lost == 0 && verdict.acked > 0),
                ),
                Check::new(
                    "duplicated records",
                    verdict.duplicated.to_string(),
                    "",
                    None,
                ),
                Check::new(
                    "unacked records delivered anyway",
                    verdict.delivered_unacked.to_string(),
                    "",
                    None,
                ),
                Check::new(
                    "records in the output the client never sent",
                    verdict.unknown.to_string(),
                    "0",
                    Some(verdict.unknown == 0),
                ),
                Check::new(
                    "restart: exec to listening (ms)",
                    fmt_opt(crash.restart_ms, 0),
                    "",
                    None,
                ),
                Check::new(
                    "wait for the output to hold every acked record (s)",
                    format!("{:.1}", crash.drain_secs),
                    "",
                    None,
                ),
            ];
            out.push_str(&checks_table(&checks));
            if let Some(error) = &crash.first_error {
                let _ = writeln!(
                    out,
                    "\n{} connection(s) failed (expected around the kill); first: {error}",
                    crash.connection_failures
                );
            }
        }
        let skipped: Vec<&ThroughputRow> =
            self.rows.iter().filter(|r| r.skipped.is_some()).collect();
        if !skipped.is_empty() || !self.skipped.is_empty() {
            out.push_str("\n### Not measured\n\n");
            for row in skipped {
                let _ = writeln!(
                    out,
                    "- {} {}: {}",
                    router_name(row.router),
                    scenario_name(row.scenario),
                    row.skipped.as_deref().unwrap_or_default()
                );
            }
            for skipped in &self.skipped {
                let _ = writeln!(out, "- {}: {}", skipped.section, skipped.reason);
            }
        }
        out
    }

    fn row(&self, router: Router, scenario: Scenario) -> Option<&ThroughputRow> {
        self.rows
            .iter()
            .find(|row| row.router == router && row.scenario == scenario && row.skipped.is_none())
    }

    fn scenario_table(&self, out: &mut String, scenario: Scenario) {
        let ours = self.row(Router::Skiff, scenario);
        let peer = self.row(Router::FluentBit, scenario);
        if ours.is_none() && peer.is_none() {
            return;
        }
        let _ = writeln!(out, "\n### {}\n", scenario_title(scenario));
        let peer_name = match peer.and_then(|p| p.version.as_deref()) {
            Some(version) => format!("Fluent Bit {version}"),
            None => "Fluent Bit".to_string(),
        };
        let _ = writeln!(
            out,
            "| | skiff | {peer_name} | skiff ÷ Fluent Bit | target | |"
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | --- |\n");
        let rate = |row: Option<&ThroughputRow>| row.and_then(|r| r.records_per_second);
        let per_cpu = |row: Option<&ThroughputRow>| row.and_then(|r| r.records_per_cpu_second);
        let busy = |row: Option<&ThroughputRow>| row.and_then(|r| r.cpu_busy_percent);
        let rss = |row: Option<&ThroughputRow>| row.and_then(|r| r.peak_rss_kib).map(mib);
        #[allow(clippy::cast_precision_loss)]
        let failures = |row: Option<&ThroughputRow>| row.map(|r| r.connection_failures as f64);
        let (rate_min, cpu_min) = match scenario {
            Scenario::Null => (
                NULL_RECORDS_PER_SECOND_MIN,
                Some(NULL_RECORDS_PER_CPU_SECOND_MIN),
            ),
            Scenario::BufferedFile => (FILE_RECORDS_PER_SECOND_MIN, None),
        };
        line(
            out,
            "records/s, acked end to end",
            rate(ours),
            rate(peer),
            0,
            &format!("≥ {rate_min:.0}"),
            rate(ours).map(|r| r >= rate_min),
        );
        line(
            out,
            "records per CPU-second of the router",
            per_cpu(ours),
            per_cpu(peer),
            0,
            &cpu_min.map_or_else(String::new, |min| format!("≥ {min:.0}")),
            cpu_min.and_then(|min| per_cpu(ours).map(|r| r >= min)),
        );
        line(
            out,
            "router core busy (%)",
            busy(ours),
            busy(peer),
            0,
            "",
            None,
        );
        line(
            out,
            "peak RSS (MiB)",
            rss(ours),
            rss(peer),
            1,
            &format!("≤ {}", PEAK_RSS_MAX_KIB / 1024),
            ours.and_then(|r| r.peak_rss_kib)
                .map(|kib| kib <= PEAK_RSS_MAX_KIB),
        );
        line(
            out,
            "failed connections",
            failures(ours),
            failures(peer),
            0,
            "0",
            ours.map(|r| r.connection_failures == 0),
        );
        for row in [ours, peer].into_iter().flatten() {
            if let Some(error) = &row.first_error {
                let _ = writeln!(out, "\n{}: {error}", router_name(row.router));
            }
        }
    }
}

fn line(
    out: &mut String,
    what: &str,
    ours: Option<f64>,
    peer: Option<f64>,
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
        fmt_opt(ours, decimals),
        fmt_opt(peer, decimals),
        ratio(ours, peer),
    );
}

fn scenario_title(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Null => "Forward in, null output",
        Scenario::BufferedFile => {
            "Forward in through the filesystem buffer (storage.type filesystem), file output"
        }
    }
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Null => "null output",
        Scenario::BufferedFile => "buffered file output",
    }
}

fn router_name(router: Router) -> &'static str {
    match router {
        Router::Skiff => "skiff",
        Router::FluentBit => "Fluent Bit",
    }
}
