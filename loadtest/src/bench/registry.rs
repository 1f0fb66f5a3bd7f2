//! `skiff loadtest bench registry`: our registry's DNS against Knot DNS, and its Cloud Map and watch APIs, on loopback.
//!
//! One run, every server pinned to core 0 and every client (dnsperf, the
//! load generator, the watchers) to core 1. Knot serves a zone file of 1,000
//! services × 3 instances; our registry gets the same records through the
//! Cloud Map API. dnsperf measures each at full speed (with the server's CPU
//! time per query from /proc, since dnsperf itself saturates its core), at a
//! fixed 20,000 QPS and over TCP. Then the API: `DiscoverInstances` latency at
//! a fixed rate (open loop), watch fan-out, durable registrations per second,
//! memory at scale and restart time after `kill -9`. Every process is
//! stopped by PID; phases that would overrun the time budget are skipped
//! and say so.

pub mod cloudmap;
pub mod dns;
pub mod dnsperf;
pub mod report;
pub mod watch;
pub mod zone;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::harness::{self, Budget, Cores};
use super::process::{self, Managed, ProcStats};
use crate::LoadtestError;
use crate::load::{LatencySummary, LoadOptions, report::new_histogram};
use cloudmap::CloudMap;
use dnsperf::{DnsperfRun, DnsperfStats};

/// How long a server gets to answer after exec.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// The service `DiscoverInstances` is asked about.
const DISCOVER_SERVICE: &str = "discover";
/// The namespace the watchers watch (kept small: every answer is a full snapshot).
const WATCH_NAMESPACE: &str = "watch.internal";
const WATCH_SERVICES: usize = 10;
const WATCH_INSTANCES: usize = 10;

/// How to run the registry benchmark.
#[derive(Clone, Debug)]
pub struct RegistryBenchOptions {
    /// The `skiff` binary whose `registry` subcommand is measured.
    pub skiff: PathBuf,
    pub install_missing: bool,
    pub services: usize,
    pub instances_per_service: usize,
    /// dnsperf run lengths: as fast as possible, at `fixed_qps`, and over TCP.
    pub dns_max: Duration,
    pub dns_fixed: Duration,
    pub fixed_qps: u32,
    pub dns_tcp: Duration,
    pub discover_instances: usize,
    pub discover_rate: f64,
    pub discover_duration: Duration,
    pub watchers: usize,
    pub watch_rounds: usize,
    pub registrations_duration: Duration,
    /// Calls in flight during setup, the registrations phase and the scale phase.
    pub concurrency: usize,
    /// Instances across the services for the memory and restart measure.
    pub scale_instances: usize,
    /// The scale phase stops registering at this point and measures what it has.
    pub scale_deadline: Duration,
    pub budget: Duration,
}

// === impl RegistryBenchOptions ===

impl RegistryBenchOptions {
    /// The full run: ≤ 3 minutes.
    pub fn standard(skiff: PathBuf) -> RegistryBenchOptions {
        RegistryBenchOptions {
            skiff,
            install_missing: true,
            services: 1000,
            instances_per_service: 3,
            dns_max: Duration::from_secs(8),
            dns_fixed: Duration::from_secs(5),
            fixed_qps: 20_000,
            dns_tcp: Duration::from_secs(5),
            discover_instances: 100,
            discover_rate: 5000.0,
            discover_duration: Duration::from_secs(8),
            watchers: 1000,
            watch_rounds: 3,
            registrations_duration: Duration::from_secs(5),
            concurrency: 64,
            scale_instances: 100_000,
            scale_deadline: Duration::from_secs(60),
            budget: Duration::from_secs(180),
        }
    }

    /// `--quick`: ≤ 60 s, 10,000 instances at scale.
    pub fn quick(skiff: PathBuf) -> RegistryBenchOptions {
        RegistryBenchOptions {
            dns_max: Duration::from_secs(3),
            dns_fixed: Duration::from_secs(2),
            dns_tcp: Duration::from_secs(2),
            discover_duration: Duration::from_secs(3),
            watch_rounds: 1,
            registrations_duration: Duration::from_secs(2),
            scale_instances: 10_000,
            scale_deadline: Duration::from_secs(15),
            budget: Duration::from_secs(60),
            ..RegistryBenchOptions::standard(skiff)
        }
    }
}

/// Which DNS server a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsServer {
    Knot,
    Skiff,
}

/// Which dnsperf run a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsPhase {
    /// UDP, as fast as answers come back.
    UdpMax,
    /// UDP at the fixed rate.
    UdpFixed,
    /// TCP, as fast as answers come back.
    TcpMax,
}

/// One dnsperf run against one server.
#[derive(Clone, Debug, Serialize)]
pub struct DnsRow {
    pub server: DnsServer,
    pub phase: DnsPhase,
    pub stats: Option<DnsperfStats>,
    /// The server's CPU time (user + system) per completed query.
    pub cpu_us_per_query: Option<f64>,
    /// The server's CPU time as a share of the run's wall time.
    pub cpu_busy_percent: Option<f64>,
    pub skipped: Option<String>,
}

/// `DiscoverInstances` at a fixed rate.
#[derive(Clone, Debug, Serialize)]
pub struct DiscoverResult {
    pub instances: usize,
    /// Instances the first answer listed.
    pub answered_instances: Option<usize>,
    pub rate: f64,
    pub duration_secs: f64,
    pub connections: usize,
    pub latency: LatencySummary,
    pub errors: u64,
    pub not_sent: u64,
}

/// Watch fan-out over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct WatchResult {
    pub watchers: usize,
    pub rounds: usize,
    /// Time from sending the registration to each watcher's complete answer, all rounds.
    pub latency: LatencySummary,
    /// Time until the last watcher of each round had it, in ms.
    pub all_watchers_ms: Vec<f64>,
    pub register_us: Vec<u64>,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Durable `RegisterInstance` calls, closed loop.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationResult {
    pub concurrency: usize,
    pub duration_secs: f64,
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
    pub latency: LatencySummary,
    pub first_error: Option<String>,
}

/// Memory at scale and restart after `kill -9`.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleResult {
    pub target_instances: usize,
    /// Registered by this phase (the rest during setup and the registrations phase).
    pub registered_in_phase: u64,
    /// Instances registered in the benchmark namespace when memory was measured.
    pub instances: u64,
    pub services: usize,
    pub register_secs: f64,
    pub failed: u64,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// From exec of the restarted registry to `/health` 200, and to a DNS answer.
    pub restart_health_ms: Option<f64>,
    pub restart_dns_ms: Option<f64>,
    /// Instances of the first service `DiscoverInstances` lists after the restart, and expected.
    pub first_service_after_restart: Option<usize>,
    pub first_service_expected: usize,
    /// The first failed registration of the scale phase.
    pub first_error: Option<String>,
    pub restart_error: Option<String>,
}

/// A section that did not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub section: String,
    pub reason: String,
}

/// Everything the registry benchmark measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegistryBenchReport {
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
    pub knot_version: Option<String>,
    pub services: usize,
    pub instances_per_service: usize,
    pub fixed_qps: u32,
    pub setup_secs: Option<f64>,
    pub dns: Vec<DnsRow>,
    pub discover: Option<DiscoverResult>,
    pub watch: Option<WatchResult>,
    pub registrations: Option<RegistrationResult>,
    pub scale: Option<ScaleResult>,
    pub skipped: Vec<Skipped>,
}

// === impl RegistryBenchReport ===

impl RegistryBenchReport {
    fn skip(&mut self, section: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            section: section.to_string(),
            reason: reason.into(),
        });
    }
}

/// Runs the registry benchmark described by `opts`.
pub async fn bench_registry(
    opts: RegistryBenchOptions,
) -> Result<RegistryBenchReport, LoadtestError> {
    let budget = Budget::new(opts.budget);
    if !Path::new("/proc/self/stat").exists() {
        return Err(LoadtestError::InvalidOption(
            "the benchmark needs Linux /proc".into(),
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("skiff-bench-registry-")
        .tempdir()?;
    let mut report = RegistryBenchReport {
        services: opts.services,
        instances_per_service: opts.instances_per_service,
        fixed_qps: opts.fixed_qps,
        ..RegistryBenchReport::default()
    };
    let cores = harness::choose_cores(&mut report.notes);
    let tools = ensure_tools(&opts, dir.path(), &mut report.notes).await;

    std::fs::write(
        dir.path().join(zone::zone_file_name()),
        zone::zone_file(opts.services, opts.instances_per_service),
    )?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, zone::query_file(opts.services, 0x5eed))?;

    let mut knot = match &tools.knotd {
        Some(knotd) => {
            report.knot_version = knot_version(knotd);
            match start_knot(knotd, dir.path(), cores).await {
                Ok(knot) => Some(knot),
                Err(reason) => {
                    report.notes.push(format!("Knot did not start: {reason}"));
                    None
                }
            }
        }
        None => {
            report
                .notes
                .push("knotd not installed: no Knot rows".into());
            None
        }
    };

    let data = dir.path().join("registry-data");
    std::fs::create_dir_all(&data)?;
    let mut registry = match Registry::start(&opts.skiff, dir.path(), &data, cores).await {
        Ok(registry) => Some(registry),
        Err(reason) => {
            report
                .notes
                .push(format!("skiff registry did not start: {reason}"));
            None
        }
    };
    let setup = match &registry {
        Some(registry) => {
            let started = Instant::now();
            match setup(&opts, registry.http).await {
                Ok(setup) => {
                    report.setup_secs = Some(started.elapsed().as_secs_f64());
                    report.notes.push(format!(
                        "setup: {} services × {} instances, a {}-instance service and a {}-instance watch namespace registered through the Cloud Map API in {:.1} s ({} calls in flight)",
                        opts.services,
                        opts.instances_per_service,
                        opts.discover_instances,
                        WATCH_SERVICES * WATCH_INSTANCES,
                        started.elapsed().as_secs_f64(),
                        opts.concurrency
                    ));
                    Some(setup)
                }
                Err(error) => {
                    report.notes.push(format!("registry setup failed: {error}"));
                    None
                }
            }
        }
        None => None,
    };
    let ours_dns = match (&registry, &setup) {
        (Some(registry), Some(_)) => {
            let name = format!("{}.{}", zone::service_name(0), zone::NAMESPACE);
            if dns::answers(registry.dns, &name).await {
                Ok(registry.dns)
            } else {
                Err(format!(
                    "the registry's DNS ({}) does not answer {name} A",
                    registry.dns
                ))
            }
        }
        (None, _) => Err("the registry did not start".to_string()),
        (Some(_), None) => Err("the registry's setup failed".to_string()),
    };

    let servers = [
        (
            DnsServer::Knot,
            knot.as_ref()
                .map(|(child, port)| (child.pid, *port))
                .ok_or_else(|| "Knot is not running".to_string()),
        ),
        (
            DnsServer::Skiff,
            match (&ours_dns, &registry) {
                (Ok(addr), Some(registry)) => Ok((registry.child.pid, addr.port())),
                (Err(reason), _) => Err(reason.clone()),
                (Ok(_), None) => Err("the registry did not start".to_string()),
            },
        ),
    ];
    let phases = [
        (DnsPhase::UdpMax, opts.dns_max, None, false),
        (
            DnsPhase::UdpFixed,
            opts.dns_fixed,
            Some(opts.fixed_qps),
            false,
        ),
        (DnsPhase::TcpMax, opts.dns_tcp, None, true),
    ];
    let ticks = process::clock_ticks_per_second();
    for (phase, length, max_qps, tcp) in phases {
        for (server, target) in &servers {
            let mut row = DnsRow {
                server: *server,
                phase,
                stats: None,
                cpu_us_per_query: None,
                cpu_busy_percent: None,
                skipped: None,
            };
            let ready = match (&tools.dnsperf, target) {
                (false, _) => Err("dnsperf not installed".to_string()),
                (true, Err(reason)) => Err(reason.clone()),
                (true, Ok(target)) => budget
                    .check(length + Duration::from_secs(2))
                    .map(|()| *target),
            };
            match ready {
                Ok((pid, port)) => {
                    let run = DnsperfRun {
                        port,
                        query_file: queries.display().to_string(),
                        seconds: length.as_secs().max(1),
                        max_qps,
                        tcp,
                    };
                    let before = ProcStats::read(pid);
                    let started = Instant::now();
                    let outcome = run.run(cores.client, dir.path()).await;
                    let wall = started.elapsed().as_secs_f64();
                    let after = ProcStats::read(pid);
                    match outcome {
                        Ok(stats) => {
                            if let (Some(before), Some(after)) = (before, after) {
                                let cpu = harness::ticks_to_secs(
                                    after.cpu_ticks.saturating_sub(before.cpu_ticks),
                                    ticks,
                                );
                                if stats.completed > 0 {
                                    #[allow(clippy::cast_precision_loss)]
                                    let per_query = cpu * 1e6 / stats.completed as f64;
                                    row.cpu_us_per_query = Some(per_query);
                                }
                                row.cpu_busy_percent = Some(cpu * 100.0 / wall.max(1e-9));
                            }
                            row.stats = Some(stats);
                        }
                        Err(error) => row.skipped = Some(error.to_string()),
                    }
                }
                Err(reason) => row.skipped = Some(reason),
            }
            report.dns.push(row);
        }
    }
    if let Some((child, _)) = knot.take() {
        child.stop().await;
    }

    match (&mut registry, &setup) {
        (Some(registry), Some(setup)) => {
            api_phases(&opts, &budget, cores, registry, setup, &mut report).await;
        }
        _ => {
            for section in [
                "DiscoverInstances",
                "watch fan-out",
                "registrations",
                "scale",
            ] {
                report.skip(section, "the registry is not running or its setup failed");
            }
        }
    }
    if let Some(registry) = registry {
        registry.child.stop().await;
    }
    report.elapsed_secs = budget.elapsed_secs();
    Ok(report)
}

struct Tools {
    dnsperf: bool,
    knotd: Option<PathBuf>,
}

/// Installs dnsperf and Knot with apt-get when missing (and allowed).
async fn ensure_tools(opts: &RegistryBenchOptions, dir: &Path, notes: &mut Vec<String>) -> Tools {
    let missing: Vec<&str> = [("dnsperf", "dnsperf"), ("knotd", "knot")]
        .into_iter()
        .filter(|(program, _)| process::find_program(program).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        if opts.install_missing {
            match process::apt_install(&missing, &dir.join("apt.log")).await {
                Ok(()) => notes.push(format!("installed {} with apt-get", missing.join(" "))),
                Err(error) => notes.push(format!(
                    "apt-get install {} failed: {error}",
                    missing.join(" ")
                )),
            }
        } else {
            notes.push(format!(
                "not installed (and --no-install): {}",
                missing.join(" ")
            ));
        }
    }
    Tools {
        dnsperf: process::find_program("dnsperf").is_some(),
        knotd: process::find_program("knotd"),
    }
}

fn knot_version(knotd: &Path) -> Option<String> {
    let output = std::process::Command::new(knotd)
        .arg("--version")
        .output()
        .ok()?;
    super::version_from_banner(&String::from_utf8_lossy(&output.stdout))
}

/// Starts Knot on a free port; the process and the port, once it answers.
async fn start_knot(knotd: &Path, dir: &Path, cores: Cores) -> Result<(Managed, u16), String> {
    let port = harness::free_port(true).map_err(|e| e.to_string())?;
    let conf = dir.join("knot.conf");
    std::fs::write(&conf, zone::knot_conf(dir, port)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("knot-run")).map_err(|e| e.to_string())?;
    let argv = vec![
        knotd.display().to_string(),
        "-c".to_string(),
        conf.display().to_string(),
    ];
    let mut child = Managed::spawn("knotd", &argv, cores.server, dir).map_err(|e| e.to_string())?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let name = format!("{}.{}", zone::service_name(0), zone::NAMESPACE);
    match harness::wait_until(&mut child, START_DEADLINE, || dns::answers(server, &name)).await {
        Ok(_) => Ok((child, port)),
        Err(reason) => {
            child.stop().await;
            Err(reason)
        }
    }
}

/// Our registry as a child process.
struct Registry {
    child: Managed,
    argv: Vec<String>,
    http: SocketAddr,
    dns: SocketAddr,
    dir: PathBuf,
    cpu: Option<usize>,
}

// === impl Registry ===

impl Registry {
    async fn start(
        skiff: &Path,
        dir: &Path,
        data: &Path,
        cores: Cores,
    ) -> Result<Registry, String> {
        let http_port = harness::free_port(false).map_err(|e| e.to_string())?;
        let dns_port = harness::free_port(true).map_err(|e| e.to_string())?;
        let ready_file = dir.join("registry.ready.json");
        let argv = registry_argv(skiff, http_port, dns_port, data, &ready_file);
        let mut registry = Registry {
            child: Managed::spawn("registry", &argv, cores.server, dir)
                .map_err(|e| e.to_string())?,
            argv,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dns: SocketAddr::from(([127, 0, 0, 1], dns_port)),
            dir: dir.to_path_buf(),
            cpu: cores.server,
        };
        let ready = harness::wait_until(&mut registry.child, START_DEADLINE, || async {
            ready_file.exists()
        })
        .await;
        if let Err(reason) = ready {
            registry.child.stop().await;
            return Err(reason);
        }
        if let Some((http, dns)) = std::fs::read_to_string(&ready_file)
            .ok()
            .and_then(|text| parse_ready_file(&text))
        {
            registry.http = http;
            registry.dns = dns;
        }
        let url = format!("http://{}/health", registry.http);
        if let Err(reason) =
            harness::wait_until(&mut registry.child, START_DEADLINE, || health_ok(&url)).await
        {
            registry.child.stop().await;
            return Err(reason);
        }
        Ok(registry)
    }

    /// `kill -9`, start again on the same data and ports; from exec to `/health` 200 and to a DNS
    /// answer.
    async fn crash_and_restart(&mut self) -> Result<(Duration, Duration), String> {
        harness::kill_9(&mut self.child).await;
        let started = Instant::now();
        self.child = Managed::spawn("registry-restarted", &self.argv, self.cpu, &self.dir)
            .map_err(|e| e.to_string())?;
        let url = format!("http://{}/health", self.http);
        harness::wait_until(&mut self.child, START_DEADLINE, || health_ok(&url)).await?;
        let health = started.elapsed();
        let (server, name) = (
            self.dns,
            format!("{}.{}", zone::service_name(0), zone::NAMESPACE),
        );
        harness::wait_until(&mut self.child, START_DEADLINE, || {
            dns::answers(server, &name)
        })
        .await?;
        Ok((health, started.elapsed()))
    }
}

/// `skiff registry --http-addr … --dns-addr … --data DIR --ready-file PATH`.
pub fn registry_argv(
    skiff: &Path,
    http_port: u16,
    dns_port: u16,
    data: &Path,
    ready_file: &Path,
) -> Vec<String> {
    vec![
        skiff.display().to_string(),
        "registry".to_string(),
        "--http-addr".to_string(),
        format!("127.0.0.1:{http_port}"),
        "--dns-addr".to_string(),
        format!("127.0.0.1:{dns_port}"),
        "--data".to_string(),
        data.display().to_string(),
        "--ready-file".to_string(),
        ready_file.display().to_string(),
    ]
}

/// `{"http_addr":"ip:port","dns_addr":"ip:port"}`.
pub fn parse_ready_file(text: &str) -> Option<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some((
        value["http_addr"].as_str()?.parse().ok()?,
        value["dns_addr"].as_str()?.parse().ok()?,
    ))
}

async fn health_ok(url: &str) -> bool {
    let client = crate::http_client::get_client(None, Duration::from_millis(200));
    matches!(
        crate::http_client::fetch(&client, url, Duration::from_millis(500)).await,
        Ok((http::StatusCode::OK, _))
    )
}

/// What setup created.
struct Setup {
    service_ids: Arc<Vec<String>>,
    watch_service_id: String,
}

/// Everything the benchmark registers before it measures.
async fn setup(opts: &RegistryBenchOptions, http: SocketAddr) -> Result<Setup, LoadtestError> {
    let cloud_map = CloudMap::new(http);
    let namespace_id = cloud_map.create_dns_namespace(zone::NAMESPACE).await?;
    let service_ids = create_services(
        &cloud_map,
        &namespace_id,
        opts.services,
        opts.concurrency,
        zone::service_name,
    )
    .await?;
    let service_ids = Arc::new(service_ids);
    let per_service = opts.instances_per_service;
    let ids = service_ids.clone();
    let cm = cloud_map.clone();
    first_error(
        cloudmap::fan_out(opts.services * per_service, opts.concurrency, move |k| {
            let (cm, ids) = (cm.clone(), ids.clone());
            async move {
                let (service, instance) = (k / per_service, k % per_service);
                let ip = zone::service_instance_ip(service, instance, per_service);
                cm.register(&ids[service], &format!("i{instance}"), ip)
                    .await
            }
        })
        .await,
    )?;

    let discover_id = cloud_map
        .create_service(&namespace_id, DISCOVER_SERVICE)
        .await?;
    let cm = cloud_map.clone();
    first_error(
        cloudmap::fan_out(opts.discover_instances, opts.concurrency, move |j| {
            let (cm, id) = (cm.clone(), discover_id.clone());
            async move {
                cm.register(&id, &format!("d{j}"), zone::instance_ip(0x0080_0000 + j))
                    .await
            }
        })
        .await,
    )?;

    let watch_namespace_id = cloud_map.create_dns_namespace(WATCH_NAMESPACE).await?;
    let watch_ids = Arc::new(
        create_services(
            &cloud_map,
            &watch_namespace_id,
            WATCH_SERVICES,
            opts.concurrency,
            |i| format!("w{i}"),
        )
        .await?,
    );
    let ids = watch_ids.clone();
    let cm = cloud_map.clone();
    first_error(
        cloudmap::fan_out(
            WATCH_SERVICES * WATCH_INSTANCES,
            opts.concurrency,
            move |k| {
                let (cm, ids) = (cm.clone(), ids.clone());
                async move {
                    cm.register(
                        &ids[k / WATCH_INSTANCES],
                        &format!("w{}", k % WATCH_INSTANCES),
                        zone::instance_ip(0x00a0_0000 + k),
                    )
                    .await
                }
            },
        )
        .await,
    )?;
    Ok(Setup {
        service_ids,
        watch_service_id: watch_ids.first().cloned().unwrap_or_default(),
    })
}

async fn create_services(
    cloud_map: &CloudMap,
    namespace_id: &str,
    count: usize,
    concurrency: usize,
    name: fn(usize) -> String,
) -> Result<Vec<String>, LoadtestError> {
    let (cm, ns) = (cloud_map.clone(), namespace_id.to_string());
    let results = cloudmap::fan_out(count, concurrency, move |i| {
        let (cm, ns) = (cm.clone(), ns.clone());
        async move { cm.create_service(&ns, &name(i)).await }
    })
    .await;
    results.into_iter().collect()
}

fn first_error(results: Vec<Result<(), LoadtestError>>) -> Result<(), LoadtestError> {
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// DiscoverInstances, watch fan-out, registrations, scale and restart.
async fn api_phases(
    opts: &RegistryBenchOptions,
    budget: &Budget,
    cores: Cores,
    registry: &mut Registry,
    setup: &Setup,
    report: &mut RegistryBenchReport,
) {
    let http = registry.http;

    match budget.check(opts.discover_duration + Duration::from_secs(2)) {
        Ok(()) => match discover(opts, http, cores).await {
            Ok(result) => report.discover = Some(result),
            Err(error) => report.skip("DiscoverInstances", error.to_string()),
        },
        Err(reason) => report.skip("DiscoverInstances", reason),
    }

    match budget.check(Duration::from_secs(3) * u32::try_from(opts.watch_rounds).unwrap_or(1)) {
        Ok(()) => {
            let (watchers, rounds, service_id) = (
                opts.watchers,
                opts.watch_rounds,
                setup.watch_service_id.clone(),
            );
            let outcome = harness::on_pinned_thread("watch", cores.client, move || async move {
                fan_out_rounds(http, &service_id, watchers, rounds).await
            })
            .await;
            match outcome {
                Ok(Ok(result)) => report.watch = Some(result),
                Ok(Err(error)) | Err(error) => report.skip("watch fan-out", error.to_string()),
            }
        }
        Err(reason) => report.skip("watch fan-out", reason),
    }

    // Instances past the initial ones: global index g → service g % services, id `i{g / services}`.
    let next = Arc::new(AtomicU64::new(
        u64::try_from(opts.services * opts.instances_per_service).unwrap_or(0),
    ));
    match budget.check(opts.registrations_duration + Duration::from_secs(2)) {
        Ok(()) => {
            let plan = RegisterPlan {
                http,
                service_ids: setup.service_ids.clone(),
                next: next.clone(),
                until: u64::MAX,
                duration: opts.registrations_duration,
                concurrency: opts.concurrency,
            };
            match harness::on_pinned_thread("register", cores.client, move || plan.run()).await {
                Ok(Ok(tally)) => {
                    #[allow(clippy::cast_precision_loss)]
                    let per_second = tally.ok as f64 / tally.elapsed.as_secs_f64().max(1e-9);
                    report.registrations = Some(RegistrationResult {
                        concurrency: opts.concurrency,
                        duration_secs: tally.elapsed.as_secs_f64(),
                        ok: tally.ok,
                        failed: tally.failed,
                        per_second,
                        latency: tally.latency,
                        first_error: tally.first_error,
                    });
                }
                Ok(Err(error)) | Err(error) => report.skip("registrations", error.to_string()),
            }
        }
        Err(reason) => report.skip("registrations", reason),
    }

    let scale_estimate = Duration::from_secs(10);
    if let Err(reason) = budget.check(scale_estimate) {
        report.skip("scale", reason);
        return;
    }
    let already = next.load(Ordering::Relaxed);
    let target = u64::try_from(opts.scale_instances).unwrap_or(u64::MAX);
    let deadline = opts
        .scale_deadline
        .min(budget.remaining().saturating_sub(scale_estimate));
    let plan = RegisterPlan {
        http,
        service_ids: setup.service_ids.clone(),
        next: next.clone(),
        until: target.max(already),
        duration: deadline,
        concurrency: opts.concurrency,
    };
    let tally = match harness::on_pinned_thread("scale", cores.client, move || plan.run()).await {
        Ok(Ok(tally)) => tally,
        Ok(Err(error)) | Err(error) => {
            report.skip("scale", error.to_string());
            return;
        }
    };
    let registered = report.registrations.as_ref().map_or(0, |r| r.ok)
        + tally.ok
        + u64::try_from(opts.services * opts.instances_per_service).unwrap_or(0);
    let stats = registry.child.stats();
    let services = opts.services.max(1);
    let mut scale = ScaleResult {
        target_instances: opts.scale_instances,
        registered_in_phase: tally.ok,
        instances: registered,
        services: opts.services,
        register_secs: tally.elapsed.as_secs_f64(),
        failed: tally.failed,
        rss_kib: stats.map(|s| s.rss_kib),
        peak_rss_kib: stats.map(|s| s.peak_rss_kib),
        restart_health_ms: None,
        restart_dns_ms: None,
        first_service_after_restart: None,
        // Service 0 holds every global index divisible by the service count.
        first_service_expected: usize::try_from(
            next.load(Ordering::Relaxed).min(target.max(already)),
        )
        .unwrap_or(0)
        .div_ceil(services)
        .max(opts.instances_per_service),
        first_error: tally.first_error.clone(),
        restart_error: None,
    };
    if registered < target {
        report.notes.push(format!(
            "scale: {registered} of {target} instances registered within {:.0} s",
            tally.elapsed.as_secs_f64()
        ));
    }
    match registry.crash_and_restart().await {
        Ok((health, dns)) => {
            scale.restart_health_ms = Some(health.as_secs_f64() * 1000.0);
            scale.restart_dns_ms = Some(dns.as_secs_f64() * 1000.0);
            let cloud_map = CloudMap::new(registry.http);
            let body = serde_json::json!({
                "NamespaceName": zone::NAMESPACE,
                "ServiceName": zone::service_name(0),
                "MaxResults": 1000,
                "HealthStatus": "ALL",
            });
            match cloud_map.call("DiscoverInstances", &body).await {
                Ok(answer) => {
                    scale.first_service_after_restart =
                        answer["Instances"].as_array().map(Vec::len);
                }
                Err(error) => scale.restart_error = Some(error.to_string()),
            }
        }
        Err(reason) => scale.restart_error = Some(reason),
    }
    report.scale = Some(scale);
}

async fn discover(
    opts: &RegistryBenchOptions,
    http: SocketAddr,
    cores: Cores,
) -> Result<DiscoverResult, LoadtestError> {
    let body = cloudmap::discover_body(zone::NAMESPACE, DISCOVER_SERVICE);
    let answered = CloudMap::new(http).call("DiscoverInstances", &body).await?["Instances"]
        .as_array()
        .map(Vec::len);
    let mut load = LoadOptions::rate(
        format!("http://{http}/"),
        opts.discover_rate,
        opts.discover_duration,
    );
    load.method = http::Method::POST;
    load.headers = cloudmap::headers("DiscoverInstances");
    load.body = Bytes::from(body.to_string());
    load.connections = 16;
    let connections = load.connections;
    let report = super::run_pinned(load, cores.client).await?;
    Ok(DiscoverResult {
        instances: opts.discover_instances,
        answered_instances: answered,
        rate: opts.discover_rate,
        duration_secs: opts.discover_duration.as_secs_f64(),
        connections,
        latency: report.latency,
        errors: report.errors.total(),
        not_sent: report.not_sent,
    })
}

async fn fan_out_rounds(
    http: SocketAddr,
    service_id: &str,
    watchers: usize,
    rounds: usize,
) -> Result<WatchResult, LoadtestError> {
    let mut histogram = new_histogram()?;
    let mut result = WatchResult {
        watchers,
        rounds,
        latency: LatencySummary::default(),
        all_watchers_ms: Vec::new(),
        register_us: Vec::new(),
        failed: 0,
        first_error: None,
    };
    for round in 0..rounds {
        let outcome = watch::round(
            http,
            WATCH_NAMESPACE,
            service_id,
            &format!("fanout-{round}"),
            zone::instance_ip(0x00c0_0000 + round),
            watchers,
        )
        .await?;
        for latency in &outcome.latencies_us {
            let _ = histogram.record((*latency).max(1));
        }
        #[allow(clippy::cast_precision_loss)]
        if let Some(last) = outcome.latencies_us.iter().max() {
            result.all_watchers_ms.push(*last as f64 / 1000.0);
        }
        result.register_us.push(outcome.register_us);
        result.failed += outcome.failed;
        if result.first_error.is_none() {
            result.first_error = outcome.first_error;
        }
    }
    result.latency = LatencySummary::from_histogram(&histogram);
    Ok(result)
}

/// Closed-loop `RegisterInstance` calls taking global indices from `next` until `until` or
/// `duration`.
struct RegisterPlan {
    http: SocketAddr,
    service_ids: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
    until: u64,
    duration: Duration,
    concurrency: usize,
}

struct Tally {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latency: LatencySummary,
    first_error: Option<String>,
}

// === impl RegisterPlan ===

impl RegisterPlan {
    async fn run(self) -> Result<Tally, LoadtestError> {
        let cloud_map = CloudMap::new(self.http);
        let started = Instant::now();
        let stop_at = started + self.duration;
        let mut workers = JoinSet::new();
        for _ in 0..self.concurrency.max(1) {
            let (cm, ids, next) = (
                cloud_map.clone(),
                self.service_ids.clone(),
                self.next.clone(),
            );
            let mut histogram = new_histogram()?;
            let until = self.until;
            workers.spawn(async move {
                let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
                let services = u64::try_from(ids.len().max(1)).unwrap_or(1);
                while Instant::now() < stop_at {
                    let global = next.fetch_add(1, Ordering::Relaxed);
                    if global >= until {
                        break;
                    }
                    let service = usize::try_from(global % services).unwrap_or(0);
                    let slot = global / services;
                    let ip = zone::instance_ip(usize::try_from(global + 1).unwrap_or(0));
                    let sent = Instant::now();
                    match cm.register(&ids[service], &format!("i{slot}"), ip).await {
                        Ok(()) => {
                            ok += 1;
                            let micros =
                                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            let _ = histogram.record(micros.max(1));
                        }
                        Err(error) => {
                            failed += 1;
                            first_error.get_or_insert(error.to_string());
                        }
                    }
                }
                (ok, failed, first_error, histogram)
            });
        }
        let mut tally = Tally {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latency: LatencySummary::default(),
            first_error: None,
        };
        let mut histogram = new_histogram()?;
        while let Some(joined) = workers.join_next().await {
            let Ok((ok, failed, first_error, worker_histogram)) = joined else {
                tally.failed += 1;
                continue;
            };
            tally.ok += ok;
            tally.failed += failed;
            if tally.first_error.is_none() {
                tally.first_error = first_error;
            }
            let _ = histogram.add(&worker_histogram);
        }
        tally.elapsed = started.elapsed();
        tally.latency = LatencySummary::from_histogram(&histogram);
        Ok(tally)
    }
}

#[cfg(test)]
mod tests;
