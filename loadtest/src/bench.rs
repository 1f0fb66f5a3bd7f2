//! `skiff loadtest bench proxy`: the same origin driven directly, through HAProxy, nginx and our sidecar.
//!
//! One run on loopback: every proxy is pinned alone on one core
//! (`proxy_cpu`), the load generator and the origin on the other
//! (`load_cpu`), so each row costs the proxy the same budget. For each row:
//! time from exec to the first 200, idle RSS, closed-loop max throughput and
//! the proxy's CPU time per request over it (/proc/PID/stat), open-loop latency
//! at a fixed rate (from each request's scheduled time), new origin
//! connections per 1,000 requests during that phase (the origin's `/stats`),
//! and peak RSS (VmHWM). The table compares every row with the direct and
//! HAProxy rows. Everything started is stopped by PID; the run is bounded by a
//! time budget.
//!
//! The sidecar runs twice: with telemetry off (Prometheus metrics only, as in
//! the proxy issue's targets) and with full telemetry (every span exported to an
//! OTLP sink of ours, JSON access log on), so `telemetry.rs` can show what
//! tracing costs against the telemetry issue's bound.

pub mod harness;
pub mod logrouter;
pub mod peers;
pub mod process;
pub mod registry;
pub mod stalls;
pub mod table;
pub mod telemetry;
pub mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::LoadtestError;
use crate::http_client;
use crate::load::{LatencySummary, LoadOptions, Report, run};
use process::{Managed, ProcStats};
use stalls::{HostStalls, StallProbe};
use telemetry::{OtlpSink, TelemetryFigures};

/// Default time budget of a whole benchmark.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(180);
/// Time budget with `--quick`.
pub const QUICK_BUDGET: Duration = Duration::from_secs(40);
/// The `SCHED_FIFO` priority of the latency phase's proxy, origin and generator.
const REALTIME_PRIORITY: u8 = 1;
/// How long a peer gets to answer its first 200.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Where the origin runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A child process; `{exe}` and `{origin_port}` are replaced.
    Command(Vec<String>),
    /// The demo app on a thread of this process (tests; or when the command fails).
    InProcess,
}

/// A row of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Direct,
    Haproxy,
    Nginx,
    /// Telemetry off: Prometheus metrics only, no trace export, no access log.
    Sidecar,
    /// Full telemetry: 100 % of spans exported over OTLP to the benchmark's sink, JSON access log.
    SidecarTraced,
}

// === impl Peer ===

impl Peer {
    fn is_sidecar(self) -> bool {
        matches!(self, Peer::Sidecar | Peer::SidecarTraced)
    }
}

/// How to run the benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub peers: Vec<Peer>,
    pub origin: Origin,
    /// The sidecar's command line; placeholders `{exe}`, `{dir}`, `{origin_port}`,
    /// `{listen_port}`, `{registry_url}`, `{bind_ip}`. Its ingress must answer on
    /// `{bind_ip}:{listen_port}`; `{dir}/sidecar.task.json` and `{dir}/sidecar.service.json`
    /// describe the origin as a task whose Service Connect ingress is `{listen_port}`.
    pub sidecar_command: Vec<String>,
    /// Registry the sidecar is pointed at; an unused loopback port when none.
    pub registry_url: Option<String>,
    /// Path requested on the origin.
    pub path: String,
    pub warmup: Duration,
    /// Closed-loop phase length and connections.
    pub max_duration: Duration,
    pub max_connections: usize,
    /// Open-loop phase: rate, length, connections.
    pub rate: f64,
    pub rate_duration: Duration,
    pub rate_connections: usize,
    pub budget: Duration,
    /// Keep-alive client connections held open to measure the proxy's memory under them.
    pub held_connections: usize,
    /// Core for the proxy under test; the generator and origin get `load_cpu`.
    pub proxy_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    /// Install missing haproxy/nginx with apt-get.
    pub install_missing: bool,
    /// Times each row is measured (alternating the order); figures are the medians.
    pub rounds: usize,
    /// Drive the closed-loop phase with wrk when it is installed (see `bench/wrk.rs`);
    /// else with our own generator.
    pub wrk: bool,
    /// The traced row logs every request (JSON access log) besides exporting its spans.
    pub traced_access_log: bool,
    /// `[proxy] busy_poll_us` in the sidecars' settings file; `None`: the default.
    pub sidecar_busy_poll_us: Option<u64>,
    /// The latency phase runs the proxy, the origin and the generator under `SCHED_FIFO`
    /// (every row alike) and watches for host stalls (`stalls.rs`), when this machine allows.
    pub realtime: bool,
}

// === impl BenchOptions ===

impl BenchOptions {
    /// The full run: ≤ 2 minutes.
    pub fn standard() -> BenchOptions {
        BenchOptions {
            peers: vec![
                Peer::Direct,
                Peer::Haproxy,
                Peer::Nginx,
                Peer::Sidecar,
                Peer::SidecarTraced,
            ],
            origin: Origin::Command(peers::default_origin_command()),
            sidecar_command: peers::default_sidecar_command(),
            registry_url: None,
            path: "/health".to_string(),
            warmup: Duration::from_secs(1),
            max_duration: Duration::from_secs(8),
            max_connections: 64,
            rate: 2000.0,
            rate_duration: Duration::from_secs(8),
            rate_connections: 16,
            budget: DEFAULT_BUDGET,
            held_connections: 1000,
            proxy_cpu: Some(0),
            load_cpu: Some(1),
            install_missing: true,
            rounds: 1,
            wrk: true,
            traced_access_log: true,
            sidecar_busy_poll_us: None,
            realtime: true,
        }
    }

    /// `--quick`: ≤ 40 s (five rows of about 6 s each, with room for a slow start).
    pub fn quick() -> BenchOptions {
        BenchOptions {
            warmup: Duration::from_millis(300),
            max_duration: Duration::from_secs(2),
            rate_duration: Duration::from_secs(2),
            budget: QUICK_BUDGET,
            ..BenchOptions::standard()
        }
    }

    fn row_estimate(&self) -> Duration {
        // + the held connections and the RSS back near idle (the sidecar trims every 5 s)
        self.warmup + self.max_duration + self.rate_duration + Duration::from_secs(8)
    }
}

/// The comparison.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub rows: Vec<BenchRow>,
    /// How the run was set up (cores, durations), and anything that went differently.
    pub notes: Vec<String>,
    pub rate: f64,
    pub rate_connections: usize,
    pub max_connections: usize,
    pub held_connections: usize,
    pub elapsed_secs: f64,
}

/// One peer's figures; `skipped` says why a row has none.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchRow {
    pub peer: String,
    pub version: Option<String>,
    pub skipped: Option<String>,
    pub first_200_ms: Option<f64>,
    pub idle_rss_kib: Option<u64>,
    /// Of the idle RSS, the process's own (anonymous) memory; the rest is shared code.
    pub idle_private_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// RSS while `held_connections` keep-alive client connections are open, and a second after
    /// they close.
    pub held_rss_kib: Option<u64>,
    /// RSS just before the held connections opened (after the load phases: the code those
    /// touched stays mapped), the "idle" they should come back near.
    pub before_held_rss_kib: Option<u64>,
    /// RSS once back near `before_held_rss_kib` after the held connections closed (or a minute
    /// after, if never), and how long that took.
    pub after_close_rss_kib: Option<u64>,
    pub after_close_secs: Option<f64>,
    pub max_throughput: Option<f64>,
    /// Failed requests over both measured phases.
    pub errors: u64,
    pub cpu_us_per_request: Option<f64>,
    /// The proxy's CPU time over the closed-loop phase as a share of its wall time.
    pub cpu_busy_percent: Option<f64>,
    pub latency: Option<LatencySummary>,
    /// The proxy's CPU time per request over the open-loop phase: at a low rate, mostly the
    /// cost of going to sleep and being woken for each request.
    pub rate_cpu_us_per_request: Option<f64>,
    /// Each measured round's (p50, p99) in µs, in the order measured: how far the medians in
    /// `latency` move from round to round on this machine.
    pub latency_rounds: Vec<(u64, u64)>,
    pub new_upstream_connections_per_1000: Option<f64>,
    /// Sidecar rows: the loopback address it bound (see [`peers::sidecar_bind_ip`]).
    pub bind_ip: Option<std::net::Ipv4Addr>,
    /// Sidecar rows: span counters and what the OTLP sink received.
    pub telemetry: Option<TelemetryFigures>,
    /// The latency phase against the host's stalls; `None` when they were not watched.
    pub host: Option<HostStalls>,
}

/// Runs the comparison described by `opts`.
pub async fn bench_proxy(opts: BenchOptions) -> Result<BenchReport, LoadtestError> {
    let started = Instant::now();
    if !Path::new("/proc/self/stat").exists() {
        return Err(LoadtestError::InvalidOption(
            "the benchmark needs Linux /proc".into(),
        ));
    }
    let dir = tempfile::Builder::new().prefix("skiff-bench-").tempdir()?;
    let mut notes = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let wanted_cpu = opts.proxy_cpu.max(opts.load_cpu).unwrap_or(0);
    let (proxy_cpu, load_cpu) = if process::find_program("taskset").is_none() {
        notes.push("taskset not found: processes are not pinned".to_string());
        (None, None)
    } else if wanted_cpu >= cpus {
        notes.push(format!(
            "only {cpus} core(s) usable: processes are not pinned"
        ));
        (None, None)
    } else {
        (opts.proxy_cpu, opts.load_cpu)
    };
    if let Some(load) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
    {
        notes.push(format!(
            "load average {load} on {cpus} cores at start: other work on the machine skews every row"
        ));
    }
    notes.push(format!(
        "proxy under test pinned to core {}, load generator and origin to core {}; one worker thread each",
        describe_cpu(proxy_cpu),
        describe_cpu(load_cpu)
    ));
    let missing = ensure_peers(&opts, dir.path(), &mut notes).await;
    let exe = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "skiff".to_string());
    let origin = start_origin(&opts, &exe, dir.path(), load_cpu, &mut notes).await?;
    let wrk = opts.wrk.then(|| process::find_program("wrk")).flatten();
    notes.push(match (&wrk, opts.wrk) {
        (Some(_), _) => format!(
            "closed-loop phase driven by wrk {} (one thread, {} connections), the open-loop phase by skiff's own generator",
            program_version("wrk", &["-v"]).unwrap_or_default(),
            opts.max_connections
        ),
        (None, true) => "wrk not found: the closed-loop phase is driven by skiff's own generator, which may saturate its core before the proxy does".into(),
        (None, false) => "closed-loop phase driven by skiff's own generator".into(),
    });
    let realtime = realtime_check(&opts, proxy_cpu.zip(load_cpu), &mut notes);
    if realtime.is_some() && origin.pid().is_none() {
        notes.push("the in-process origin keeps its normal priority".into());
    }
    let ctx = Context {
        wrk,
        opts: &opts,
        dir: dir.path(),
        exe,
        origin_port: origin.addr().port(),
        origin_pid: origin.pid(),
        realtime,
        proxy_cpu,
        load_cpu,
        ticks_per_second: process::clock_ticks_per_second(),
    };
    let rounds = opts.rounds.max(1);
    if rounds > 1 {
        notes.push(format!(
            "{rounds} rounds, rows in alternating order; each figure is the median over the rounds (max latency: the worst), memory from the last round"
        ));
    }
    let mut measured: BTreeMap<Peer, Vec<BenchRow>> = BTreeMap::new();
    for round in 0..rounds {
        let order: Vec<Peer> = if round % 2 == 0 {
            opts.peers.clone()
        } else {
            opts.peers.iter().rev().copied().collect()
        };
        for peer in order {
            let row = if let Some(reason) = missing.get(&peer) {
                skipped(peer, reason.clone())
            } else if started.elapsed() + opts.row_estimate() > opts.budget {
                skipped(
                    peer,
                    format!("time budget of {} s exhausted", opts.budget.as_secs()),
                )
            } else {
                ctx.measure(peer).await
            };
            measured.entry(peer).or_default().push(row);
        }
    }
    let rows: Vec<BenchRow> = opts
        .peers
        .iter()
        .filter_map(|peer| measured.remove(peer))
        .map(median_row)
        .collect();
    origin.stop().await;
    for row in &rows {
        if let Some(ip) = row.bind_ip.filter(|ip| *ip != peers::SIDECAR_BIND_IP) {
            notes.push(format!(
                "{}: bound {ip}, {}'s ports being taken by another process",
                row.peer,
                peers::SIDECAR_BIND_IP
            ));
        }
    }
    Ok(BenchReport {
        rows,
        notes,
        rate: opts.rate,
        rate_connections: opts.rate_connections,
        max_connections: opts.max_connections,
        held_connections: opts.held_connections,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// One row out of a peer's rounds: the median of each figure (the worst max latency), memory
/// and telemetry from the last measured round, errors summed; skipped when no round measured.
pub fn median_row(rounds: Vec<BenchRow>) -> BenchRow {
    let measured: Vec<&BenchRow> = rounds.iter().filter(|r| r.skipped.is_none()).collect();
    let Some(last) = measured.last() else {
        return rounds.into_iter().last().unwrap_or_default();
    };
    fn median(mut values: Vec<f64>) -> Option<f64> {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2]),
            _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
        }
    }
    let of =
        |f: fn(&BenchRow) -> Option<f64>| median(measured.iter().filter_map(|r| f(r)).collect());
    let lat = |f: fn(&LatencySummary) -> u64| {
        median(
            measured
                .iter()
                .filter_map(|r| r.latency.as_ref().map(|l| f(l) as f64))
                .collect(),
        )
        .map(|v| v.round() as u64)
    };
    // (`last` has latency figures, so every median below has at least one value.)
    let latency = last.latency.as_ref().map(|l| LatencySummary {
        count: measured
            .iter()
            .filter_map(|r| r.latency.as_ref())
            .map(|l| l.count)
            .sum(),
        min_us: lat(|l| l.min_us).unwrap_or(l.min_us),
        mean_us: of(|r| r.latency.as_ref().map(|l| l.mean_us)).unwrap_or(l.mean_us),
        p50_us: lat(|l| l.p50_us).unwrap_or(l.p50_us),
        p90_us: lat(|l| l.p90_us).unwrap_or(l.p90_us),
        p99_us: lat(|l| l.p99_us).unwrap_or(l.p99_us),
        p999_us: lat(|l| l.p999_us).unwrap_or(l.p999_us),
        max_us: measured
            .iter()
            .filter_map(|r| r.latency.as_ref().map(|l| l.max_us))
            .max()
            .unwrap_or(l.max_us),
    });
    let latency_rounds = measured
        .iter()
        .filter_map(|r| r.latency.as_ref().map(|l| (l.p50_us, l.p99_us)))
        .collect();
    BenchRow {
        latency_rounds,
        max_throughput: of(|r| r.max_throughput),
        cpu_us_per_request: of(|r| r.cpu_us_per_request),
        cpu_busy_percent: of(|r| r.cpu_busy_percent),
        rate_cpu_us_per_request: of(|r| r.rate_cpu_us_per_request),
        first_200_ms: of(|r| r.first_200_ms),
        new_upstream_connections_per_1000: of(|r| r.new_upstream_connections_per_1000),
        errors: measured.iter().map(|r| r.errors).sum(),
        latency,
        host: measured
            .iter()
            .map(|r| r.host)
            .collect::<Option<Vec<_>>>()
            .map(HostStalls::combine),
        ..(*last).clone()
    }
}

fn describe_cpu(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| "any".to_string(), |cpu| cpu.to_string())
}

fn skipped(peer: Peer, reason: String) -> BenchRow {
    BenchRow {
        peer: peer_name(peer).to_string(),
        skipped: Some(reason),
        ..BenchRow::default()
    }
}

fn peer_name(peer: Peer) -> &'static str {
    match peer {
        Peer::Direct => "direct",
        Peer::Haproxy => "HAProxy",
        Peer::Nginx => "nginx",
        Peer::Sidecar => "skiff sidecar",
        Peer::SidecarTraced => "skiff sidecar + traces",
    }
}

/// Installs missing peers when allowed; returns the rows that cannot run and why.
async fn ensure_peers(
    opts: &BenchOptions,
    dir: &Path,
    notes: &mut Vec<String>,
) -> BTreeMap<Peer, String> {
    let wanted: Vec<(Peer, &str)> = [(Peer::Haproxy, "haproxy"), (Peer::Nginx, "nginx")]
        .into_iter()
        .filter(|(peer, program)| {
            opts.peers.contains(peer) && process::find_program(program).is_none()
        })
        .collect();
    let mut missing = BTreeMap::new();
    let want_wrk = opts.wrk && process::find_program("wrk").is_none();
    if wanted.is_empty() && !want_wrk {
        return missing;
    }
    let mut packages: Vec<&str> = wanted.iter().map(|(_, program)| *program).collect();
    if want_wrk {
        packages.push("wrk");
    }
    if opts.install_missing {
        match process::apt_install(&packages, &dir.join("apt.log")).await {
            Ok(()) => notes.push(format!("installed {} with apt-get", packages.join(" "))),
            Err(error) => notes.push(format!("apt-get install failed: {error}")),
        }
    }
    for (peer, program) in wanted {
        if process::find_program(program).is_none() {
            missing.insert(peer, format!("{program} not installed"));
        }
    }
    missing
}

/// The origin: a child process, or the demo app on a thread of ours.
enum RunningOrigin {
    Child(Box<Managed>, SocketAddr),
    Thread(InProcessOrigin),
}

// === impl RunningOrigin ===

impl RunningOrigin {
    fn addr(&self) -> SocketAddr {
        match self {
            RunningOrigin::Child(_, addr) => *addr,
            RunningOrigin::Thread(origin) => origin.addr(),
        }
    }

    /// The child's process id; `None` for the in-process origin (which keeps its priority).
    fn pid(&self) -> Option<u32> {
        match self {
            RunningOrigin::Child(child, _) => Some(child.pid),
            RunningOrigin::Thread(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            RunningOrigin::Child(child, _) => child.stop().await,
            RunningOrigin::Thread(origin) => origin.stop().await,
        }
    }
}

async fn start_origin(
    opts: &BenchOptions,
    exe: &str,
    dir: &Path,
    cpu: Option<usize>,
    notes: &mut Vec<String>,
) -> Result<RunningOrigin, LoadtestError> {
    if let Origin::Command(argv) = &opts.origin {
        let port = free_port()?;
        let vars = BTreeMap::from([("exe", exe.to_string()), ("origin_port", port.to_string())]);
        let argv = peers::expand(argv, &vars);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match Managed::spawn("origin", &argv, cpu, dir) {
            Ok(mut child) => {
                let url = format!("http://{addr}/health");
                match wait_for_200(&mut child, &url).await {
                    Ok(first) => {
                        notes.push(format!(
                            "origin: `{}` (first 200 {:.1} ms after exec)",
                            argv.join(" "),
                            first.as_secs_f64() * 1000.0
                        ));
                        return Ok(RunningOrigin::Child(Box::new(child), addr));
                    }
                    Err(reason) => {
                        notes.push(format!(
                            "origin command failed ({reason}); using the demo app in-process"
                        ));
                        child.stop().await;
                    }
                }
            }
            Err(error) => notes.push(format!(
                "origin command failed ({error}); using the demo app in-process"
            )),
        }
    } else {
        notes.push("origin: the demo app on a thread of the generator's process".to_string());
    }
    Ok(RunningOrigin::Thread(InProcessOrigin::start(cpu).await?))
}

/// The demo app on a dedicated single-threaded runtime.
struct InProcessOrigin(harness::PinnedServer);

// === impl InProcessOrigin ===

impl InProcessOrigin {
    async fn start(cpu: Option<usize>) -> Result<InProcessOrigin, LoadtestError> {
        let server = harness::PinnedServer::start("origin", cpu, |listener, stop| async move {
            let port = listener.local_addr()?.port();
            let mut opts = crate::DemoServeOptions::new("origin", port);
            opts.host = "127.0.0.1".into();
            opts.proxy = None;
            crate::demo_serve_listener(listener, opts, stop).await
        })?;
        Ok(InProcessOrigin(server))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    async fn stop(self) {
        self.0.stop(Duration::from_secs(10)).await;
    }
}

fn free_port() -> Result<u16, LoadtestError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| LoadtestError::Bind {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    Ok(listener.local_addr()?.port())
}

/// Polls `url` until it answers 200; the time from now, or why not.
async fn wait_for_200(child: &mut Managed, url: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let client = http_client::get_client(None, Duration::from_millis(500));
    loop {
        if let Ok((status, _)) = http_client::fetch(&client, url, Duration::from_millis(500)).await
            && status == http::StatusCode::OK
        {
            return Ok(started.elapsed());
        }
        if let Some(reason) = child.exited() {
            return Err(reason);
        }
        if started.elapsed() > START_DEADLINE {
            return Err(format!(
                "no 200 from {url} within {} s{}",
                START_DEADLINE.as_secs(),
                child.stderr_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Context<'a> {
    opts: &'a BenchOptions,
    dir: &'a Path,
    exe: String,
    origin_port: u16,
    /// The origin's process, when it is a child: real-time in the latency phase too.
    origin_pid: Option<u32>,
    /// The latency phase runs under `SCHED_FIFO` with the host-stall probe on these cores.
    realtime: Option<[usize; 2]>,
    proxy_cpu: Option<usize>,
    load_cpu: Option<usize>,
    ticks_per_second: u64,
    /// The closed-loop phase's generator: wrk, or ours when `None`.
    wrk: Option<PathBuf>,
}

struct Phases {
    warmup_responses: u64,
    max: MaxRun,
    rate: Report,
    cpu: Option<(u64, f64)>,
    /// The proxy's CPU ticks over the open-loop phase.
    rate_cpu_ticks: Option<u64>,
    upstream: Option<f64>,
    host: Option<HostStalls>,
}

// === impl Context ===

impl Context<'_> {
    async fn measure(&self, peer: Peer) -> BenchRow {
        let mut row = BenchRow {
            peer: peer_name(peer).to_string(),
            ..BenchRow::default()
        };
        if peer == Peer::Direct {
            let url = format!("http://127.0.0.1:{}{}", self.origin_port, self.opts.path);
            match self.phases(&url, None).await {
                Ok(phases) => {
                    fill(&mut row, &phases, None, self.ticks_per_second);
                    // The origin's new connections here are the generator's own, not a proxy's.
                    row.new_upstream_connections_per_1000 = None;
                }
                Err(error) => row.skipped = Some(error.to_string()),
            }
            return row;
        }
        // The traced row's collector, on the load generator's core.
        let sink = if peer == Peer::SidecarTraced {
            match OtlpSink::start(self.load_cpu) {
                Ok(sink) => Some(sink),
                Err(error) => {
                    row.skipped = Some(format!("otlp sink: {error}"));
                    return row;
                }
            }
        } else {
            None
        };
        let mut child = match self.start_peer(peer, &mut row, sink.as_ref().map(|s| s.addr)) {
            Ok(child) => child,
            Err(reason) => {
                row.skipped = Some(reason);
                if let Some(sink) = sink {
                    sink.stop().await;
                }
                return row;
            }
        };
        let listen_url = child.1.clone();
        match wait_for_200(&mut child.0, &listen_url).await {
            Ok(first) => row.first_200_ms = Some(first.as_secs_f64() * 1000.0),
            Err(reason) => {
                row.skipped = Some(if peer.is_sidecar() {
                    format!("sidecar not available: {reason}")
                } else {
                    reason
                });
                child.0.stop().await;
                if let Some(sink) = sink {
                    sink.stop().await;
                }
                return row;
            }
        }
        let idle = child.0.stats();
        row.idle_rss_kib = idle.map(|stats| stats.rss_kib);
        row.idle_private_kib = idle.map(|stats| stats.private_kib);
        match self.phases(&listen_url, Some(&child.0)).await {
            Ok(phases) => {
                fill(&mut row, &phases, child.0.stats(), self.ticks_per_second);
                if peer.is_sidecar() {
                    let ip = row.bind_ip.unwrap_or(peers::SIDECAR_BIND_IP);
                    let logged = peer == Peer::SidecarTraced && self.opts.traced_access_log;
                    row.telemetry =
                        Some(sidecar_telemetry(ip, &phases, sink.as_ref(), logged).await);
                }
            }
            Err(error) => row.skipped = Some(error.to_string()),
        }
        if row.skipped.is_none() && self.opts.held_connections > 0 {
            row.before_held_rss_kib = child.0.stats().map(|stats| stats.rss_kib);
            let held = hold_connections(&listen_url, self.opts.held_connections).await;
            row.held_rss_kib = child.0.stats().map(|stats| stats.rss_kib);
            row.peak_rss_kib = child.0.stats().map(|stats| stats.peak_rss_kib);
            row.errors += held.failed;
            drop(held);
            let closed = Instant::now();
            // Polls until RSS is back near idle, for at most the minute the target allows.
            loop {
                row.after_close_rss_kib = child.0.stats().map(|stats| stats.rss_kib);
                row.after_close_secs = Some(closed.elapsed().as_secs_f64());
                if row.back_near_idle() == Some(true) || closed.elapsed() >= BACK_TO_IDLE_WITHIN {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        child.0.stop().await;
        if let Some(sink) = sink {
            sink.stop().await;
        }
        row
    }

    /// Writes the peer's configuration and starts it; the process and the URL to load.
    /// `sink` is where the traced sidecar exports its spans.
    fn start_peer(
        &self,
        peer: Peer,
        row: &mut BenchRow,
        sink: Option<SocketAddr>,
    ) -> Result<(Managed, String), String> {
        let port = free_port().map_err(|e| e.to_string())?;
        let ip = if peer.is_sidecar() {
            let ip = peers::sidecar_bind_ip();
            row.bind_ip = Some(ip);
            ip
        } else {
            std::net::Ipv4Addr::LOCALHOST
        };
        let url = format!("http://{ip}:{port}{}", self.opts.path);
        // The traced row's files live in a directory of their own, so that a sidecar command
        // naming `{dir}/sidecar.service.json` finds the service with the access log on.
        let dir = match peer {
            Peer::SidecarTraced => {
                let dir = self.dir.join("traced");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                dir
            }
            _ => self.dir.to_path_buf(),
        };
        let write = |name: &str, text: String| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(path)
        };
        let argv = match peer {
            Peer::Direct => return Err("direct has no process".into()),
            Peer::Haproxy => {
                let config = write("haproxy.cfg", peers::haproxy_config(port, self.origin_port))?;
                row.version = program_version("haproxy", &["-v"]);
                vec![
                    "haproxy".into(),
                    "-db".into(),
                    "-f".into(),
                    config.display().to_string(),
                ]
            }
            Peer::Nginx => {
                let config = write(
                    "nginx.conf",
                    peers::nginx_config(self.dir, port, self.origin_port),
                )?;
                row.version = program_version("nginx", &["-v"]);
                vec![
                    "nginx".into(),
                    "-p".into(),
                    self.dir.display().to_string(),
                    "-e".into(),
                    self.dir.join("nginx-error.log").display().to_string(),
                    "-c".into(),
                    config.display().to_string(),
                ]
            }
            Peer::Sidecar | Peer::SidecarTraced => {
                write(
                    "sidecar.task.json",
                    peers::sidecar_task_definition(self.origin_port).to_string(),
                )?;
                let (service, env) = match (peer, sink) {
                    (Peer::SidecarTraced, Some(sink)) if self.opts.traced_access_log => (
                        peers::sidecar_service_with_access_log(port),
                        peers::traced_env(sink),
                    ),
                    (Peer::SidecarTraced, Some(sink)) => {
                        (peers::sidecar_service(port), peers::traced_env(sink))
                    }
                    (Peer::SidecarTraced, None) => return Err("no otlp sink".into()),
                    _ => (peers::sidecar_service(port), Vec::new()),
                };
                write("sidecar.service.json", service.to_string())?;
                write(
                    "sidecar.toml",
                    peers::sidecar_settings(self.opts.sidecar_busy_poll_us),
                )?;
                let registry_url = match &self.opts.registry_url {
                    Some(url) => url.clone(),
                    None => format!(
                        "http://127.0.0.1:{}",
                        free_port().map_err(|e| e.to_string())?
                    ),
                };
                let vars = BTreeMap::from([
                    ("exe", self.exe.clone()),
                    ("dir", dir.display().to_string()),
                    ("origin_port", self.origin_port.to_string()),
                    ("listen_port", port.to_string()),
                    ("registry_url", registry_url),
                    ("bind_ip", ip.to_string()),
                ]);
                // Its access log goes to stdout, which `Managed` sends to /dev/null.
                peers::with_env(&peers::expand(&self.opts.sidecar_command, &vars), &env)
            }
        };
        let name = match peer {
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
            Peer::SidecarTraced => "sidecar-traced",
            _ => "sidecar",
        };
        let child = Managed::spawn(name, &argv, self.proxy_cpu, self.dir).map_err(|e| {
            if peer.is_sidecar() {
                format!("sidecar not available: {e}")
            } else {
                e.to_string()
            }
        })?;
        Ok((child, url))
    }

    async fn phases(&self, url: &str, proxy: Option<&Managed>) -> Result<Phases, LoadtestError> {
        let opts = self.opts;
        let mut warmup = LoadOptions::max(url, opts.warmup);
        warmup.connections = opts.max_connections;
        let warmup_responses = run_pinned(warmup, self.load_cpu).await?.responses;

        let before = proxy.and_then(Managed::stats);
        let max_started = Instant::now();
        let max_report = match &self.wrk {
            Some(program) => {
                wrk::run(
                    program,
                    url,
                    opts.max_connections,
                    opts.max_duration,
                    self.load_cpu,
                )
                .await?
            }
            None => {
                let mut max = LoadOptions::max(url, opts.max_duration);
                max.connections = opts.max_connections;
                let report = run_pinned(max, self.load_cpu).await?;
                MaxRun {
                    responses: report.responses,
                    elapsed_secs: report.elapsed_secs,
                    errors: report.errors.total(),
                }
            }
        };
        let max_wall = max_started.elapsed().as_secs_f64();
        let after = proxy.and_then(Managed::stats);
        let cpu = before
            .zip(after)
            .map(|(before, after)| (after.cpu_ticks.saturating_sub(before.cpu_ticks), max_wall));

        let stats_url = format!("http://127.0.0.1:{}/stats", self.origin_port);
        let origin_before = origin_stats(&stats_url).await;
        let mut rate = LoadOptions::rate(url, opts.rate, opts.rate_duration);
        rate.connections = opts.rate_connections;
        // Every request's times, to take the host's stalls out of each.
        rate.record_slow_over = self.realtime.map(|_| Duration::ZERO);
        let realtime = self.realtime_phase(proxy);
        let before = proxy.and_then(Managed::stats);
        let rate_report = run_pinned_at(rate, self.load_cpu, realtime.is_some()).await;
        let rate_cpu_ticks = before
            .zip(proxy.and_then(Managed::stats))
            .map(|(before, after)| after.cpu_ticks.saturating_sub(before.cpu_ticks));
        let host = realtime.map(|(probe, cpus)| (probe.stop(), cpus));
        self.normal_priority(proxy);
        let rate_report = rate_report?;
        let host = host
            .zip(rate_report.slow.as_ref())
            .map(|((seen, cpus), slow)| {
                stalls::attribute(slow, &seen, &cpus, rate_report.latency.max_us)
            });
        let origin_after = origin_stats(&stats_url).await;
        let upstream = origin_before.zip(origin_after).and_then(|(before, after)| {
            // Minus our own /stats question.
            let connections = after.0.saturating_sub(before.0).saturating_sub(1);
            let requests = after.1.saturating_sub(before.1).saturating_sub(1);
            #[allow(clippy::cast_precision_loss)]
            (requests > 0).then(|| connections as f64 * 1000.0 / requests as f64)
        });
        Ok(Phases {
            warmup_responses,
            max: max_report,
            rate: rate_report,
            cpu,
            rate_cpu_ticks,
            upstream,
            host,
        })
    }

    /// Puts the proxy under test and the origin under `SCHED_FIFO` and starts the host-stall
    /// probe, when the run has them; the probe and the cores the row's requests cross.
    fn realtime_phase(&self, proxy: Option<&Managed>) -> Option<(StallProbe, Vec<usize>)> {
        let [proxy_cpu, load_cpu] = self.realtime?;
        self.set_priority(proxy, Some(REALTIME_PRIORITY));
        let cpus = match proxy {
            Some(_) => vec![proxy_cpu, load_cpu],
            None => vec![load_cpu],
        };
        match StallProbe::start(&[proxy_cpu, load_cpu]) {
            Ok(probe) => Some((probe, cpus)),
            Err(error) => {
                tracing::warn!(%error, "host-stall probe not running");
                self.normal_priority(proxy);
                None
            }
        }
    }

    fn normal_priority(&self, proxy: Option<&Managed>) {
        if self.realtime.is_some() {
            self.set_priority(proxy, None);
        }
    }

    /// Every thread of the proxy under test and of the child origin under `SCHED_FIFO` at
    /// `priority`, or back under `SCHED_OTHER` with `None`.
    fn set_priority(&self, proxy: Option<&Managed>, priority: Option<u8>) {
        for pid in proxy.map(|p| p.pid).into_iter().chain(self.origin_pid) {
            if let Err(error) = process::set_realtime(pid, priority, true) {
                tracing::warn!(%error, pid, ?priority, "cannot change a process's scheduling");
            }
        }
    }
}

/// Whether the latency phase can run real-time with the stall probe: the cores pinned, and
/// `chrt` allowed here. Notes what the run does either way.
fn realtime_check(
    opts: &BenchOptions,
    cores: Option<(usize, usize)>,
    notes: &mut Vec<String>,
) -> Option<[usize; 2]> {
    if !opts.realtime {
        notes.push(
            "latency phase at normal priority (--no-realtime): host stalls are not told apart"
                .into(),
        );
        return None;
    }
    let Some((proxy_cpu, load_cpu)) = cores else {
        notes.push("latency phase at normal priority: the cores are not pinned".into());
        return None;
    };
    match StallProbe::start(&[proxy_cpu, load_cpu]) {
        Ok(probe) => {
            probe.stop();
            notes.push(format!(
                "latency phase: proxy, origin and generator under SCHED_FIFO {REALTIME_PRIORITY} (every row alike), so the guest's own kernel threads cannot hold them up; a probe at SCHED_FIFO {} on each core records host stalls (a {:?} sleep woken over {:?} late), and the stall time each request overlapped is taken out of its latency for the p99 and max with host stalls taken out",
                stalls::PRIORITY,
                stalls::PERIOD,
                stalls::LATE,
            ));
            Some([proxy_cpu, load_cpu])
        }
        Err(reason) => {
            notes.push(format!(
                "latency phase at normal priority, host stalls not told apart: no real-time priority here ({reason})"
            ));
            None
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn fill(row: &mut BenchRow, phases: &Phases, end: Option<ProcStats>, ticks_per_second: u64) {
    row.max_throughput = Some(phases.max.throughput());
    row.errors = phases.max.errors + phases.rate.errors.total() + phases.rate.not_sent;
    row.latency = Some(phases.rate.latency.clone());
    row.host = phases.host;
    row.new_upstream_connections_per_1000 = phases.upstream;
    row.peak_rss_kib = end.map(|stats| stats.peak_rss_kib);
    let per_request = |ticks: u64, requests: u64| {
        (requests > 0).then(|| ticks as f64 / ticks_per_second as f64 * 1e6 / requests as f64)
    };
    row.rate_cpu_us_per_request = phases
        .rate_cpu_ticks
        .and_then(|ticks| per_request(ticks, phases.rate.responses));
    if let Some((ticks, wall)) = phases.cpu {
        let cpu_secs = ticks as f64 / ticks_per_second as f64;
        row.cpu_us_per_request = per_request(ticks, phases.max.responses);
        if wall > 0.0 {
            row.cpu_busy_percent = Some(cpu_secs * 100.0 / wall);
        }
    }
}

/// A sidecar row's span counters (its admin `/metrics`) and what the sink received, right
/// after the phases.
async fn sidecar_telemetry(
    ip: std::net::Ipv4Addr,
    phases: &Phases,
    sink: Option<&OtlpSink>,
    access_log: bool,
) -> TelemetryFigures {
    let url = format!("http://{ip}:{}/metrics", peers::SIDECAR_ADMIN_PORT);
    let client = http_client::get_client(None, Duration::from_secs(1));
    let metrics = match http_client::fetch(&client, &url, Duration::from_secs(2)).await {
        Ok((status, body)) if status.is_success() => String::from_utf8_lossy(&body).into_owned(),
        _ => String::new(),
    };
    let (spans_exported, spans_dropped) = telemetry::span_counters(&metrics);
    let received = sink.map(|sink| sink.counts.snapshot());
    TelemetryFigures {
        traced: sink.is_some(),
        access_log,
        requests: phases.warmup_responses + phases.max.responses + phases.rate.responses,
        spans_exported,
        spans_dropped,
        otlp_requests: received.map(|(requests, _)| requests),
        otlp_bytes: received.map(|(_, bytes)| bytes),
    }
}

/// The closed-loop phase's figures, from whichever generator drove it (wrk or ours).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaxRun {
    pub responses: u64,
    pub elapsed_secs: f64,
    /// Failed requests: socket errors, timeouts and non-2xx/3xx responses.
    pub errors: u64,
}

// === impl MaxRun ===

impl MaxRun {
    /// Responses per second over the run.
    pub fn throughput(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.responses as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

/// `connections_accepted`, `requests` of the demo app's `/stats`.
async fn origin_stats(url: &str) -> Option<(u64, u64)> {
    let client = http_client::get_client(None, Duration::from_secs(1));
    let (_, body) = http_client::fetch(&client, url, Duration::from_secs(2))
        .await
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((
        value["connections_accepted"].as_u64()?,
        value["requests"].as_u64()?,
    ))
}

/// How long RSS may take to come back near idle after the held connections close.
pub const BACK_TO_IDLE_WITHIN: Duration = Duration::from_secs(60);

impl BenchRow {
    /// RSS after the held connections closed is back near its level before them.
    pub fn back_near_idle(&self) -> Option<bool> {
        let (rss, before) = self.after_close_rss_kib.zip(self.before_held_rss_kib)?;
        Some(rss <= near_idle_kib(before))
    }
}

/// "Near idle": within 10 % (at least 1 MiB) of the idle RSS.
pub fn near_idle_kib(idle_kib: u64) -> u64 {
    idle_kib + (idle_kib / 10).max(1024)
}

/// Keep-alive connections that each carried one request, held open until dropped.
struct Held {
    _senders: Vec<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
    failed: u64,
}

/// Opens `count` connections to `url` and sends one GET on each, keeping them open.
async fn hold_connections(url: &str, count: usize) -> Held {
    let mut held = Held {
        _senders: Vec::with_capacity(count),
        failed: 0,
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        held.failed = count as u64;
        return held;
    };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri.path().to_string();
    for _ in 0..count {
        match hold_one(&authority, &path).await {
            Some(sender) => held._senders.push(sender),
            None => held.failed += 1,
        }
    }
    held
}

async fn hold_one(
    authority: &str,
    path: &str,
) -> Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    use http_body_util::BodyExt;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(http_body_util::Empty::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let ok = response.status().is_success();
        response.into_body().collect().await.ok()?;
        ok.then_some(sender)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

fn program_version(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(process::find_program(program)?)
        .args(args)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    version_from_banner(&text)
}

/// The first dotted version number in a `-v` banner (`HAProxy version 2.6.12-1…`, `nginx/1.22.1`).
pub fn version_from_banner(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|word| word.contains('.') && word.starts_with(|c: char| c.is_ascii_digit()))
        .map(|word| word.trim_end_matches('.').to_string())
}

/// Runs a load on its own single-threaded runtime, on a thread pinned to `cpu`.
pub async fn run_pinned(opts: LoadOptions, cpu: Option<usize>) -> Result<Report, LoadtestError> {
    run_pinned_at(opts, cpu, false).await
}

/// [`run_pinned`], the thread (and the pacer it starts) under `SCHED_FIFO` when `realtime`.
async fn run_pinned_at(
    opts: LoadOptions,
    cpu: Option<usize>,
    realtime: bool,
) -> Result<Report, LoadtestError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-bench-load".into())
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(error) = process::pin_current_thread(cpu)
            {
                tracing::warn!(%error, "cannot pin the load generator");
            }
            if realtime
                && let Err(error) = process::current_thread_id()
                    .and_then(|tid| process::set_realtime(tid, Some(REALTIME_PRIORITY), false))
            {
                tracing::warn!(%error, "cannot give the load generator a real-time priority");
            }
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(LoadtestError::from)
                .and_then(|runtime| runtime.block_on(run(opts)));
            let _ = done.send(report);
        })?;
    result.await.map_err(|_| LoadtestError::Process {
        what: "load generator thread".into(),
        reason: "ended without a report".into(),
    })?
}

#[cfg(test)]
mod tests;
