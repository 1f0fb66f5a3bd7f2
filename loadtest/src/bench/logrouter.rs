//! `skiff loadtest bench logrouter`: Forward throughput, CPU and memory of our log router (and Fluent Bit), and a crash run.
//!
//! The router runs alone on core 0, our Forward client on core 1. The client
//! sends ~200-byte records in PackedForward messages of 1,000 with the
//! `chunk` option and counts a record only when its chunk is acked, so the
//! rate is end to end. Two configurations: a null output, and a filesystem
//! buffer (`storage.type filesystem`) in front of a file output. The same
//! generated configuration runs under Fluent Bit when a binary is given. The
//! crash run kills the router with SIGKILL mid-run (file output), restarts
//! it on the same storage path while the client keeps sending, then checks
//! every acked record against the output files.

pub mod config;
pub mod count;
pub mod forward;
pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::harness::{self, Budget, Cores};
use super::process::{self, Managed, ProcStats};
use crate::LoadtestError;
use config::{Output, RouterConfig};
use count::{Seen, Verdict};
use forward::{ClientOptions, Tally};

/// How long a router gets to listen after exec.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a chunk may wait for its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the log router benchmark.
#[derive(Clone, Debug)]
pub struct LogrouterBenchOptions {
    pub skiff: PathBuf,
    pub peer_fluent_bit: Option<PathBuf>,
    pub null_duration: Duration,
    pub file_duration: Duration,
    pub crash_duration: Duration,
    /// The crash run numbers at most this many records (its output is read back).
    pub crash_max_records: u64,
    /// The share of `crash_duration` after which the router is killed.
    pub kill_at: f64,
    /// After the crash run, how long the output gets to catch up with what was acked.
    pub drain_deadline: Duration,
    pub connections: usize,
    pub window: usize,
    pub batch: usize,
    pub record_bytes: usize,
    pub budget: Duration,
}

// === impl LogrouterBenchOptions ===

impl LogrouterBenchOptions {
    /// The full run: ≤ 2 minutes.
    pub fn standard(skiff: PathBuf) -> LogrouterBenchOptions {
        LogrouterBenchOptions {
            skiff,
            peer_fluent_bit: None,
            null_duration: Duration::from_secs(8),
            file_duration: Duration::from_secs(6),
            crash_duration: Duration::from_secs(10),
            crash_max_records: 4_000_000,
            kill_at: 0.4,
            drain_deadline: Duration::from_secs(20),
            connections: 4,
            window: 8,
            batch: 1000,
            record_bytes: 200,
            budget: Duration::from_secs(120),
        }
    }

    /// `--quick`: ≤ 40 s.
    pub fn quick(skiff: PathBuf) -> LogrouterBenchOptions {
        LogrouterBenchOptions {
            null_duration: Duration::from_secs(3),
            file_duration: Duration::from_secs(3),
            crash_duration: Duration::from_secs(5),
            crash_max_records: 1_000_000,
            drain_deadline: Duration::from_secs(8),
            budget: Duration::from_secs(40),
            ..LogrouterBenchOptions::standard(skiff)
        }
    }

    fn client(&self, addr: SocketAddr, duration: Duration) -> ClientOptions {
        ClientOptions {
            addr,
            connections: self.connections,
            window: self.window,
            batch: self.batch,
            record_bytes: self.record_bytes,
            duration,
            max_records: u64::MAX,
            ack_timeout: ACK_TIMEOUT,
            reconnect: false,
            rate: None,
        }
    }
}

/// Which router a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Router {
    Skiff,
    FluentBit,
}

/// What the router does with the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Forward in, null output.
    Null,
    /// Forward in with a filesystem buffer, file output.
    BufferedFile,
}

/// One router in one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    pub router: Router,
    pub scenario: Scenario,
    pub version: Option<String>,
    pub sent_records: u64,
    pub acked_records: u64,
    pub elapsed_secs: f64,
    /// Acked records per second, end to end.
    pub records_per_second: Option<f64>,
    /// Acked records per CPU-second (user + system) of the router.
    pub records_per_cpu_second: Option<f64>,
    pub cpu_busy_percent: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub connection_failures: u64,
    pub first_error: Option<String>,
    pub skipped: Option<String>,
}

/// The crash run.
#[derive(Clone, Debug, Serialize)]
pub struct CrashResult {
    /// The client's pace, records per second.
    pub rate: f64,
    pub sent_records: u64,
    pub verdict: Verdict,
    pub killed_after_secs: f64,
    /// From exec of the restarted router to it listening.
    pub restart_ms: Option<f64>,
    /// After sending stopped, until every acked record was in the output (or the deadline).
    pub drain_secs: f64,
    pub output_files: usize,
    pub connection_failures: u64,
    pub first_error: Option<String>,
}

/// A section that did not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub section: String,
    pub reason: String,
}

/// Everything the log router benchmark measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogrouterBenchReport {
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
    pub record_bytes: usize,
    pub batch: usize,
    pub connections: usize,
    pub window: usize,
    pub rows: Vec<ThroughputRow>,
    pub crash: Option<CrashResult>,
    pub skipped: Vec<Skipped>,
}

/// Runs the log router benchmark described by `opts`.
pub async fn bench_logrouter(
    opts: LogrouterBenchOptions,
) -> Result<LogrouterBenchReport, LoadtestError> {
    let budget = Budget::new(opts.budget);
    if !Path::new("/proc/self/stat").exists() {
        return Err(LoadtestError::InvalidOption(
            "the benchmark needs Linux /proc".into(),
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("skiff-bench-logrouter-")
        .tempdir()?;
    let mut report = LogrouterBenchReport {
        record_bytes: forward::Batch::new(1, opts.record_bytes, (0, 0)).record_bytes(),
        batch: opts.batch,
        connections: opts.connections,
        window: opts.window,
        ..LogrouterBenchReport::default()
    };
    let cores = harness::choose_cores(&mut report.notes);
    let mut routers = vec![Router::Skiff];
    if let Some(path) = &opts.peer_fluent_bit {
        if path.is_file() {
            routers.push(Router::FluentBit);
        } else {
            report.skipped.push(Skipped {
                section: "Fluent Bit".into(),
                reason: format!("{} is not a file", path.display()),
            });
        }
    }
    let ticks = process::clock_ticks_per_second();
    for scenario in [Scenario::Null, Scenario::BufferedFile] {
        for router in &routers {
            let length = match scenario {
                Scenario::Null => opts.null_duration,
                Scenario::BufferedFile => opts.file_duration,
            };
            let row = match budget.check(length + Duration::from_secs(3)) {
                Ok(()) => {
                    let run = Run {
                        opts: &opts,
                        dir: dir.path(),
                        cores,
                        router: *router,
                        scenario,
                    };
                    run.throughput(length, ticks).await
                }
                Err(reason) => skipped_row(*router, scenario, reason),
            };
            report.rows.push(row);
        }
    }
    match budget.check(opts.crash_duration + Duration::from_secs(5)) {
        Ok(()) => {
            let run = Run {
                opts: &opts,
                dir: dir.path(),
                cores,
                router: Router::Skiff,
                scenario: Scenario::BufferedFile,
            };
            let drain = opts.drain_deadline.min(
                budget
                    .remaining()
                    .saturating_sub(opts.crash_duration + Duration::from_secs(2)),
            );
            match run.crash(drain).await {
                Ok(crash) => report.crash = Some(crash),
                Err(reason) => report.skipped.push(Skipped {
                    section: "crash recovery".into(),
                    reason,
                }),
            }
        }
        Err(reason) => report.skipped.push(Skipped {
            section: "crash recovery".into(),
            reason,
        }),
    }
    report.elapsed_secs = budget.elapsed_secs();
    Ok(report)
}

fn skipped_row(router: Router, scenario: Scenario, reason: String) -> ThroughputRow {
    ThroughputRow {
        router,
        scenario,
        version: None,
        sent_records: 0,
        acked_records: 0,
        elapsed_secs: 0.0,
        records_per_second: None,
        records_per_cpu_second: None,
        cpu_busy_percent: None,
        peak_rss_kib: None,
        connection_failures: 0,
        first_error: None,
        skipped: Some(reason),
    }
}

/// One router started in one scenario.
struct Run<'a> {
    opts: &'a LogrouterBenchOptions,
    dir: &'a Path,
    cores: Cores,
    router: Router,
    scenario: Scenario,
}

/// A started router and how to start it again.
struct Started {
    child: Managed,
    argv: Vec<String>,
    ready_file: Option<PathBuf>,
    forward: SocketAddr,
    output_dir: PathBuf,
}

// === impl Run ===

impl Run<'_> {
    fn name(&self) -> String {
        let router = match self.router {
            Router::Skiff => "skiff",
            Router::FluentBit => "fluent-bit",
        };
        let scenario = match self.scenario {
            Scenario::Null => "null",
            Scenario::BufferedFile => "file",
        };
        format!("{router}-{scenario}")
    }

    /// Writes the configuration and starts the router; ready once it listens.
    async fn start(&self, name: &str) -> Result<Started, String> {
        let run_dir = self.dir.join(name);
        let output_dir = run_dir.join("out");
        for dir in [&run_dir, &output_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let forward_port = harness::free_port(false).map_err(|e| e.to_string())?;
        let http_port = harness::free_port(false).map_err(|e| e.to_string())?;
        let (storage_path, output) = match self.scenario {
            Scenario::Null => (None, Output::Null),
            Scenario::BufferedFile => (
                Some(run_dir.join("buffer")),
                Output::File {
                    dir: output_dir.clone(),
                    file: "records.log".into(),
                },
            ),
        };
        let config = RouterConfig {
            forward_port,
            http_port,
            storage_path,
            output,
        };
        let config_path = run_dir.join(match self.router {
            Router::Skiff => "logrouter.conf",
            Router::FluentBit => "fluent-bit.conf",
        });
        std::fs::write(&config_path, config::classic_config(&config))
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let (argv, ready_file) = match self.router {
            Router::Skiff => {
                let ready = run_dir.join("ready.json");
                (
                    config::skiff_argv(&self.opts.skiff, &config_path, &ready),
                    Some(ready),
                )
            }
            Router::FluentBit => {
                let Some(binary) = &self.opts.peer_fluent_bit else {
                    return Err("no Fluent Bit binary given".into());
                };
                (config::fluent_bit_argv(binary, &config_path), None)
            }
        };
        let mut started = Started {
            child: Managed::spawn(name, &argv, self.cores.server, &run_dir)
                .map_err(|e| e.to_string())?,
            argv,
            ready_file,
            forward: SocketAddr::from(([127, 0, 0, 1], forward_port)),
            output_dir,
        };
        if let Err(reason) = started.wait_ready().await {
            started.child.stop().await;
            return Err(reason);
        }
        Ok(started)
    }

    async fn throughput(&self, length: Duration, ticks: u64) -> ThroughputRow {
        let mut row = skipped_row(self.router, self.scenario, String::new());
        row.skipped = None;
        row.version = match self.router {
            Router::Skiff => None,
            Router::FluentBit => self
                .opts
                .peer_fluent_bit
                .as_deref()
                .and_then(fluent_bit_version),
        };
        let started = match self.start(&self.name()).await {
            Ok(started) => started,
            Err(reason) => {
                row.skipped = Some(reason);
                return row;
            }
        };
        let client = self.opts.client(started.forward, length);
        let before = started.child.stats();
        let tally =
            harness::on_pinned_thread("forward", self.cores.client, move || forward::run(client))
                .await;
        let after = started.child.stats();
        started.child.stop().await;
        let tally = match tally {
            Ok(tally) => tally,
            Err(error) => {
                row.skipped = Some(error.to_string());
                return row;
            }
        };
        fill(&mut row, &tally, before.zip(after), ticks);
        if let Some(dir) = started.output_dir.parent() {
            // The file runs write gigabytes; they are not needed after.
            let _ = std::fs::remove_dir_all(dir);
        }
        row
    }

    /// kill -9 mid-run, restart on the same storage path, keep sending; then compare.
    async fn crash(&self, drain_deadline: Duration) -> Result<CrashResult, String> {
        let mut started = self.start("skiff-crash").await?;
        let mut client = self.opts.client(started.forward, self.opts.crash_duration);
        client.reconnect = true;
        client.max_records = self.opts.crash_max_records;
        #[allow(clippy::cast_precision_loss)]
        let rate =
            self.opts.crash_max_records as f64 / self.opts.crash_duration.as_secs_f64().max(1e-3);
        client.rate = Some(rate);
        let sending = harness::on_pinned_thread("forward-crash", self.cores.client, move || {
            forward::run(client)
        });
        let kill_after = self
            .opts
            .crash_duration
            .mul_f64(self.opts.kill_at.clamp(0.0, 1.0));
        let crashing = async {
            tokio::time::sleep(kill_after).await;
            harness::kill_9(&mut started.child).await;
            if let Some(ready) = &started.ready_file {
                let _ = std::fs::remove_file(ready);
            }
            let exec = Instant::now();
            started.child = Managed::spawn(
                "skiff-crash-restarted",
                &started.argv,
                self.cores.server,
                started.output_dir.parent().unwrap_or(self.dir),
            )
            .map_err(|e| e.to_string())?;
            started.wait_ready().await?;
            Ok::<_, String>(exec.elapsed())
        };
        let (tally, restart) = tokio::join!(sending, crashing);
        let tally = tally.map_err(|e| e.to_string())?;
        let drain_started = Instant::now();
        let limit = tally.numbered;
        let mut files = 0;
        let mut seen = loop {
            let mut scan = Seen::new(limit);
            files = scan.scan_dir(&started.output_dir).unwrap_or(files);
            let complete = count::verdict(&tally.acked, &scan).lost == 0;
            if complete
                || drain_started.elapsed() >= drain_deadline
                || started.child.exited().is_some()
            {
                break scan;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let drain_secs = drain_started.elapsed().as_secs_f64();
        started.child.stop().await;
        if count::verdict(&tally.acked, &seen).lost > 0 {
            // What a graceful stop flushed still counts: the records were not lost.
            let mut scan = Seen::new(limit);
            files = scan.scan_dir(&started.output_dir).unwrap_or(files);
            seen = scan;
        }
        let mut first_error = tally.first_error.clone();
        if let Err(reason) = &restart {
            first_error = Some(format!("restart failed: {reason}"));
        }
        Ok(CrashResult {
            rate,
            sent_records: tally.sent_records,
            verdict: count::verdict(&tally.acked, &seen),
            killed_after_secs: kill_after.as_secs_f64(),
            restart_ms: restart.ok().map(|d| d.as_secs_f64() * 1000.0),
            drain_secs,
            output_files: files,
            connection_failures: tally.connection_failures,
            first_error,
        })
    }
}

// === impl Started ===

impl Started {
    /// Ours writes its ready file once listening; Fluent Bit is ready when its port accepts.
    async fn wait_ready(&mut self) -> Result<Duration, String> {
        let (ready_file, forward) = (self.ready_file.clone(), self.forward);
        harness::wait_until(&mut self.child, START_DEADLINE, || {
            let ready_file = ready_file.clone();
            async move {
                match ready_file {
                    Some(path) => path.exists(),
                    None => tokio::net::TcpStream::connect(forward).await.is_ok(),
                }
            }
        })
        .await
    }
}

#[allow(clippy::cast_precision_loss)]
fn fill(row: &mut ThroughputRow, tally: &Tally, cpu: Option<(ProcStats, ProcStats)>, ticks: u64) {
    row.sent_records = tally.sent_records;
    row.acked_records = tally.acked_records;
    row.elapsed_secs = tally.elapsed.as_secs_f64();
    row.connection_failures = tally.connection_failures;
    row.first_error = tally.first_error.clone();
    if tally.acked_records > 0 {
        row.records_per_second = Some(tally.records_per_second());
    }
    if let Some((before, after)) = cpu {
        let cpu_secs =
            harness::ticks_to_secs(after.cpu_ticks.saturating_sub(before.cpu_ticks), ticks);
        if cpu_secs > 0.0 && tally.acked_records > 0 {
            row.records_per_cpu_second = Some(tally.acked_records as f64 / cpu_secs);
        }
        if row.elapsed_secs > 0.0 {
            row.cpu_busy_percent = Some(cpu_secs * 100.0 / row.elapsed_secs);
        }
        row.peak_rss_kib = Some(after.peak_rss_kib);
    }
}

fn fluent_bit_version(binary: &Path) -> Option<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    super::version_from_banner(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests;
