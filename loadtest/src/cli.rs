//! The clap arguments of `skiff demo` and `skiff loadtest`, for the binary to flatten, and their entry points.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};

use crate::LoadtestError;
use crate::bench::{self, BenchOptions, Origin, Peer};
use crate::demo::{self, DemoServeOptions};
use crate::http_client::ProxyConfig;
use crate::load::{self, LoadMode, LoadOptions, Protocol};

/// `skiff demo …`: the demo app the examples run.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: DemoCommand,
}

#[derive(Subcommand, Debug)]
pub enum DemoCommand {
    /// Serve the demo app (HTTP/1.1 and h2c): `GET /` says who answered, `GET /health` says ok.
    Serve(DemoServeArgs),
    /// Exit 0 if URL answers 2xx within the timeout, else 1 (for ECS container health checks).
    Probe(DemoProbeArgs),
}

#[derive(Args, Debug)]
pub struct DemoServeArgs {
    /// Service name `GET /` reports.
    #[arg(long)]
    pub name: String,
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "SKIFF_APP_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// URL fetched on every `GET /` (through HTTP_PROXY when set) and embedded in the answer; repeatable.
    #[arg(long = "call", value_name = "URL")]
    pub calls: Vec<String>,
    /// HTTP/2 only, as gRPC servers are (gRPC health checks and `skiff.demo.v1.Demo/Hello` are served either way).
    #[arg(long)]
    pub grpc: bool,
    /// Print one JSON line per request on stdout.
    #[arg(long)]
    pub log_requests: bool,
    /// How long each --call may take (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct DemoProbeArgs {
    /// URL to GET (directly, never through a proxy).
    pub url: String,
    /// How long the answer may take.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `skiff demo …`; `serve` stops on SIGINT or SIGTERM. A failed probe is
/// [`LoadtestError::ProbeFailed`] (exit 1).
pub async fn demo_main(args: DemoArgs) -> Result<(), LoadtestError> {
    match args.command {
        DemoCommand::Serve(serve) => {
            let mut opts = DemoServeOptions::new(serve.name, serve.port);
            opts.host = serve.host;
            opts.calls = serve.calls;
            opts.log_requests = serve.log_requests;
            opts.grpc = serve.grpc;
            opts.call_timeout = serve.call_timeout;
            demo::demo_serve(opts, shutdown_signal()).await
        }
        DemoCommand::Probe(probe) => {
            if demo::demo_probe(&probe.url, probe.timeout).await {
                Ok(())
            } else {
                Err(LoadtestError::ProbeFailed { url: probe.url })
            }
        }
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `skiff loadtest …`: load generation and benchmarks (loopback only).
#[derive(Args, Debug)]
pub struct LoadtestArgs {
    #[command(subcommand)]
    pub command: LoadtestCommand,
}

#[derive(Subcommand, Debug)]
pub enum LoadtestCommand {
    /// Send HTTP load: open loop at --rate (latency from each request's scheduled time) or closed loop with --max.
    Run(RunArgs),
    /// Benchmarks against peers.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Drive one origin directly, through HAProxy, nginx and the skiff sidecar, each pinned to a core; print a comparison.
    Proxy(BenchProxyArgs),
    /// The registry's DNS against Knot DNS (dnsperf), then DiscoverInstances latency, watch
    /// fan-out, durable registrations/s, memory at scale and restart after kill -9 (≤ 3 min).
    Registry(BenchRegistryArgs),
    /// The log router over Forward: acked records/s, records per CPU-second and peak RSS to a null
    /// and a buffered file output (optionally against Fluent Bit), and a kill -9 crash run (≤ 2 min).
    Logrouter(BenchLogrouterArgs),
    /// Print a file `bench proxy` writes for a peer, exactly as it writes it: for scripts that
    /// run the peers by hand (scripts/instructions, scripts/symbol-order).
    #[command(hide = true)]
    PeerConfig(PeerConfigArgs),
}

#[derive(Args, Debug)]
pub struct PeerConfigArgs {
    #[arg(value_enum)]
    pub file: PeerFile,
    /// Port the peer listens on.
    #[arg(long)]
    pub listen_port: u16,
    /// Port of the origin.
    #[arg(long)]
    pub origin_port: u16,
    /// nginx's directory for its pid and temporary files.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// The files of [`PeerConfigArgs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PeerFile {
    Haproxy,
    Nginx,
    SidecarTask,
    SidecarService,
    /// The traced row's service: the JSON access log on.
    SidecarServiceLogged,
}

/// Output format of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Target URLs (http:// on loopback); connections are spread over them.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Requests per second, open loop.
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    pub rate: Option<f64>,
    /// Closed loop: each connection sends as fast as answers come back.
    #[arg(long)]
    pub max: bool,
    /// How long to send (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// At most this many requests.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Requests in flight per HTTP/2 connection (default 100 with --rate, 1 with --max).
    #[arg(long)]
    pub streams: Option<usize>,
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    pub protocol: Protocol,
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Request header, repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Send every request through this HTTP proxy, in absolute form (e.g. http://127.0.0.1:15001).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Open loop: pace the schedule with the runtime's 1 ms timer wheel instead of a thread
    /// sleeping on the OS's high-resolution timer. Cheaper at very high rates, but each
    /// request may go out up to a millisecond late, and that lateness counts as latency (a
    /// 100 µs service then shows a p50 near 1 ms).
    #[arg(long)]
    pub coarse_timing: bool,
    /// Allow non-loopback targets: only for the project's own network namespaces.
    #[arg(long)]
    pub allow_non_loopback: bool,
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchProxyArgs {
    /// Short phases; the whole run stays under 40 s.
    #[arg(long)]
    pub quick: bool,
    /// Measure every row this many times, in alternating order (forward, then backward), and
    /// report the median of each figure: steadier ratios on a machine whose speed drifts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub rounds: u32,
    /// Rows to run (comma-separated); `sidecar` has telemetry off (metrics only),
    /// `sidecar-traced` exports every span over OTLP and logs every request, and the two
    /// are compared [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Option<Vec<Peer>>,
    /// Sidecar command line, whitespace-separated, with placeholders {exe} {dir} {origin_port}
    /// {listen_port} {registry_url} {bind_ip}; its ingress must answer on {bind_ip}:{listen_port}.
    #[arg(long, value_name = "COMMAND")]
    pub sidecar_cmd: Option<String>,
    /// Origin command line with {exe} and {origin_port} (default: `{exe} demo serve … --port {origin_port}`).
    #[arg(long, value_name = "COMMAND", conflicts_with = "in_process_origin")]
    pub origin_cmd: Option<String>,
    /// Run the origin on a thread of this process instead of a child process.
    #[arg(long)]
    pub in_process_origin: bool,
    /// Registry URL given to the sidecar.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// Do not apt-get install missing haproxy/nginx/wrk (their rows are skipped; the
    /// closed-loop phase then uses skiff's own generator).
    #[arg(long)]
    pub no_install: bool,
    /// Drive the closed-loop phase with skiff's own generator, not wrk.
    #[arg(long)]
    pub own_generator: bool,
    /// The traced row without its JSON access log: metrics and 100 % traces only, as the
    /// telemetry issue's bound reads.
    #[arg(long)]
    pub traced_without_access_log: bool,
    /// `[proxy] busy_poll_us` for the sidecar rows (their settings file, `{dir}/sidecar.toml`);
    /// 0 makes them sleep at once, as HAProxy and nginx do here. Default: the sidecar's own.
    #[arg(long, value_name = "MICROSECONDS")]
    pub sidecar_busy_poll_us: Option<u64>,
    /// Run the latency phase at normal priority: no SCHED_FIFO for the proxy, origin and
    /// generator, and no host-stall probe (see BENCHMARKS.md).
    #[arg(long)]
    pub no_realtime: bool,
    /// Path every request asks for. The default origin answers `/health` at once and
    /// `/delay/<ms>` after that many milliseconds (a slow upstream).
    #[arg(long, default_value = "/health", value_parser = parse_path)]
    pub path: String,
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchRegistryArgs {
    /// Short phases and 10,000 instances at scale; the whole run stays under 60 s.
    #[arg(long)]
    pub quick: bool,
    /// The skiff binary whose `registry` subcommand is measured (default: this one).
    #[arg(long, value_name = "PATH")]
    pub skiff: Option<PathBuf>,
    /// Do not apt-get install missing dnsperf/knot.
    #[arg(long)]
    pub no_install: bool,
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchLogrouterArgs {
    /// Short phases; the whole run stays under 40 s.
    #[arg(long)]
    pub quick: bool,
    /// The skiff binary whose `logrouter` subcommand is measured (default: this one).
    #[arg(long, value_name = "PATH")]
    pub skiff: Option<PathBuf>,
    /// A Fluent Bit binary to run the same configurations against.
    #[arg(long, value_name = "PATH")]
    pub peer_fluent_bit: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// Runs `skiff loadtest …` and prints (or writes) its report.
pub async fn loadtest_main(args: LoadtestArgs) -> Result<(), LoadtestError> {
    match args.command {
        LoadtestCommand::Run(run_args) => {
            let (format, output) = (run_args.format, run_args.output.clone());
            let report = load::run(run_args.into_options()?).await?;
            let text = match format {
                Format::Markdown => report.to_markdown(),
                Format::Json => report.to_json()?,
            };
            emit(&text, output.as_deref())
        }
        LoadtestCommand::Bench(BenchArgs {
            command: BenchCommand::Proxy(bench_args),
        }) => {
            let (format, output) = (bench_args.format, bench_args.output.clone());
            let report = bench::bench_proxy(bench_args.into_options()).await?;
            let text = match format {
                Format::Markdown => report.to_markdown(),
                Format::Json => report.to_json()?,
            };
            emit(&text, output.as_deref())
        }
        LoadtestCommand::Bench(BenchArgs {
            command: BenchCommand::Registry(args),
        }) => {
            let report = bench::registry::bench_registry(args.into_options()).await?;
            let text = match args.format {
                Format::Markdown => report.to_markdown(),
                Format::Json => report.to_json()?,
            };
            emit(&text, args.output.as_deref())
        }
        LoadtestCommand::Bench(BenchArgs {
            command: BenchCommand::PeerConfig(args),
        }) => emit(&args.text(), None),
        LoadtestCommand::Bench(BenchArgs {
            command: BenchCommand::Logrouter(args),
        }) => {
            let report = bench::logrouter::bench_logrouter(args.into_options()).await?;
            let text = match args.format {
                Format::Markdown => report.to_markdown(),
                Format::Json => report.to_json()?,
            };
            emit(&text, args.output.as_deref())
        }
    }
}

fn emit(text: &str, output: Option<&std::path::Path>) -> Result<(), LoadtestError> {
    match output {
        Some(path) => Ok(std::fs::write(path, text)?),
        None => {
            println!("{}", text.trim_end());
            Ok(())
        }
    }
}

// === impl PeerConfigArgs ===

impl PeerConfigArgs {
    /// The file's text, from the functions `bench proxy` writes it with.
    pub fn text(&self) -> String {
        use bench::peers;
        let (listen, origin) = (self.listen_port, self.origin_port);
        match self.file {
            PeerFile::Haproxy => peers::haproxy_config(listen, origin),
            PeerFile::Nginx => peers::nginx_config(&self.dir, listen, origin),
            PeerFile::SidecarTask => peers::sidecar_task_definition(origin).to_string(),
            PeerFile::SidecarService => peers::sidecar_service(listen).to_string(),
            PeerFile::SidecarServiceLogged => {
                peers::sidecar_service_with_access_log(listen).to_string()
            }
        }
    }
}

// === impl RunArgs ===

impl RunArgs {
    pub fn into_options(self) -> Result<LoadOptions, LoadtestError> {
        let mode = match (self.rate, self.max) {
            (_, true) => LoadMode::Max,
            (Some(per_second), false) => LoadMode::Rate { per_second },
            (None, false) => {
                return Err(LoadtestError::InvalidOption(
                    "give --rate N or --max".into(),
                ));
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for header in &self.headers {
            let Some((name, value)) = header.split_once(':') else {
                return Err(LoadtestError::InvalidOption(format!(
                    "header {header:?} is not `name: value`"
                )));
            };
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let body = match (&self.body, &self.body_file) {
            (Some(body), _) => Bytes::from(body.clone()),
            (None, Some(path)) => Bytes::from(std::fs::read(path)?),
            (None, None) => Bytes::new(),
        };
        let method = self
            .method
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| LoadtestError::InvalidOption(format!("method {:?}", self.method)))?;
        let proxy = match &self.proxy {
            Some(url) => Some(ProxyConfig::parse(url, None)?),
            None => None,
        };
        let streams = self.streams.unwrap_or(match mode {
            LoadMode::Rate { .. } => 100,
            LoadMode::Max => 1,
        });
        Ok(LoadOptions {
            targets: self.urls,
            mode,
            duration: self.duration,
            max_requests: self.requests,
            connections: self.connections,
            streams_per_connection: streams,
            protocol: self.protocol,
            method,
            headers,
            body,
            proxy,
            timeout: self.timeout,
            allow_non_loopback: self.allow_non_loopback,
            precise_timing: !self.coarse_timing,
            record_slow_over: None,
        })
    }
}

// === impl BenchProxyArgs ===

impl BenchProxyArgs {
    pub fn into_options(self) -> BenchOptions {
        let mut opts = if self.quick {
            BenchOptions::quick()
        } else {
            BenchOptions::standard()
        };
        if let Some(peers) = self.peers {
            opts.peers = peers;
        }
        let split = |command: &str| command.split_whitespace().map(String::from).collect();
        if let Some(command) = &self.sidecar_cmd {
            opts.sidecar_command = split(command);
        }
        if self.in_process_origin {
            opts.origin = Origin::InProcess;
        } else if let Some(command) = &self.origin_cmd {
            opts.origin = Origin::Command(split(command));
        }
        opts.registry_url = self.registry;
        opts.install_missing = !self.no_install;
        opts.wrk = !self.own_generator;
        opts.traced_access_log = !self.traced_without_access_log;
        opts.sidecar_busy_poll_us = self.sidecar_busy_poll_us;
        opts.realtime = !self.no_realtime;
        opts.path = self.path;
        opts.rounds = self.rounds as usize;
        opts.budget *= self.rounds;
        opts
    }
}

// === impl BenchRegistryArgs ===

impl BenchRegistryArgs {
    pub fn into_options(&self) -> bench::registry::RegistryBenchOptions {
        let skiff = bench::harness::skiff_exe(self.skiff.as_deref());
        let mut opts = if self.quick {
            bench::registry::RegistryBenchOptions::quick(skiff)
        } else {
            bench::registry::RegistryBenchOptions::standard(skiff)
        };
        opts.install_missing = !self.no_install;
        opts
    }
}

// === impl BenchLogrouterArgs ===

impl BenchLogrouterArgs {
    pub fn into_options(&self) -> bench::logrouter::LogrouterBenchOptions {
        let skiff = bench::harness::skiff_exe(self.skiff.as_deref());
        let mut opts = if self.quick {
            bench::logrouter::LogrouterBenchOptions::quick(skiff)
        } else {
            bench::logrouter::LogrouterBenchOptions::standard(skiff)
        };
        opts.peer_fluent_bit.clone_from(&self.peer_fluent_bit);
        opts
    }
}

/// A request path: starts with `/`, no spaces.
fn parse_path(text: &str) -> Result<String, String> {
    match http::uri::PathAndQuery::try_from(text) {
        Ok(path) if text.starts_with('/') => Ok(path.as_str().to_owned()),
        _ => Err(format!("{text:?} is not a request path like /health")),
    }
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "us" | "µs" => number / 1_000_000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

// === impl LoadtestError ===

impl LoadtestError {
    /// The process exit code this error deserves: 2 for bad input, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadtestError::InvalidUrl { .. } | LoadtestError::InvalidOption(_) => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand, Debug)]
    enum Top {
        Demo(DemoArgs),
        Loadtest(LoadtestArgs),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("skiff").chain(args.iter().copied())).map(|c| c.command)
    }

    /// `skiff loadtest bench ARGS`, parsed.
    fn bench_command(args: &[&str]) -> BenchCommand {
        let Top::Loadtest(LoadtestArgs {
            command: LoadtestCommand::Bench(BenchArgs { command }),
        }) = parse(&[&["loadtest", "bench"], args].concat()).unwrap()
        else {
            panic!("not loadtest bench: {args:?}");
        };
        command
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn bench_paths() {
        assert_eq!(parse_path("/delay/1"), Ok("/delay/1".to_string()));
        assert_eq!(parse_path("/health?x=1"), Ok("/health?x=1".to_string()));
        assert!(parse_path("health").is_err());
        assert!(parse_path("/a b").is_err());
        assert!(parse_path("").is_err());
    }

    #[test]
    fn demo_serve_flags_as_the_contract_lists_them() {
        let Top::Demo(DemoArgs {
            command: DemoCommand::Serve(serve),
        }) = parse(&[
            "demo",
            "serve",
            "--name",
            "frontend",
            "--port",
            "8080",
            "--call",
            "http://orders:8080/",
            "--call",
            "http://b:1/",
        ])
        .unwrap()
        else {
            panic!("not demo serve");
        };
        assert_eq!(serve.name, "frontend");
        assert_eq!(serve.port, 8080);
        assert_eq!(serve.calls, vec!["http://orders:8080/", "http://b:1/"]);
        assert!(!serve.grpc && !serve.log_requests);
        assert!(parse(&["demo", "probe", "http://127.0.0.1:8080/health"]).is_ok());
        assert!(parse(&["demo", "serve", "--port", "1"]).is_err());
    }

    #[test]
    fn run_flags_become_options() {
        let Top::Loadtest(LoadtestArgs {
            command: LoadtestCommand::Run(run),
        }) = parse(&[
            "loadtest",
            "run",
            "http://127.0.0.1:1/",
            "--rate",
            "2000",
            "-c",
            "4",
            "-d",
            "3s",
            "-H",
            "x-a: b",
            "-X",
            "post",
            "--body",
            "hi",
            "--proxy",
            "http://127.0.0.1:15001",
            "--protocol",
            "h2c",
        ])
        .unwrap()
        else {
            panic!("not loadtest run");
        };
        let opts = run.into_options().unwrap();
        assert_eq!(opts.mode, LoadMode::Rate { per_second: 2000.0 });
        assert_eq!(opts.connections, 4);
        assert_eq!(opts.duration, Duration::from_secs(3));
        assert_eq!(opts.headers, vec![("x-a".to_string(), "b".to_string())]);
        assert_eq!(opts.method, http::Method::POST);
        assert_eq!(opts.body, Bytes::from_static(b"hi"));
        assert_eq!(opts.proxy.unwrap().authority, "127.0.0.1:15001");
        assert_eq!(opts.protocol, Protocol::H2c);
        assert_eq!(opts.streams_per_connection, 100);
        assert!(parse(&["loadtest", "run", "http://x/"]).is_err());
        assert!(parse(&["loadtest", "run", "http://x/", "--rate", "1", "--max"]).is_err());
    }

    #[test]
    fn bench_flags_become_options() {
        let BenchCommand::Proxy(bench) = bench_command(&[
            "proxy",
            "--quick",
            "--peers",
            "direct,haproxy",
            "--sidecar-cmd",
            "{exe} proxy --x {listen_port}",
            "--no-install",
            "--own-generator",
            "--traced-without-access-log",
            "--sidecar-busy-poll-us",
            "0",
            "--no-realtime",
            "--path",
            "/delay/1",
        ]) else {
            panic!("not bench proxy");
        };
        let opts = bench.into_options();
        assert!(!opts.wrk && !opts.traced_access_log && !opts.realtime);
        assert_eq!(opts.sidecar_busy_poll_us, Some(0));
        assert_eq!(opts.path, "/delay/1");
        assert_eq!(opts.peers, vec![Peer::Direct, Peer::Haproxy]);
        assert_eq!(opts.budget, bench::QUICK_BUDGET);
        assert_eq!(
            opts.sidecar_command,
            vec!["{exe}", "proxy", "--x", "{listen_port}"]
        );
        assert!(!opts.install_missing);
    }

    #[test]
    fn the_telemetry_comparison_is_a_default_row_and_can_run_alone() {
        let peers_of = |args: &[&str]| {
            let BenchCommand::Proxy(bench) = bench_command(args) else {
                panic!("not bench proxy");
            };
            bench.into_options().peers
        };
        let default = peers_of(&["proxy", "--quick"]);
        assert!(default.contains(&Peer::Sidecar) && default.contains(&Peer::SidecarTraced));
        assert_eq!(
            peers_of(&["proxy", "--peers", "sidecar,sidecar-traced"]),
            vec![Peer::Sidecar, Peer::SidecarTraced]
        );
    }

    #[test]
    fn peer_config_prints_the_benchmarks_own_files() {
        let file = |args: &[&str]| {
            let BenchCommand::PeerConfig(args) = bench_command(args) else {
                panic!("not bench peer-config");
            };
            args.text()
        };
        let base = ["peer-config"];
        let ports = ["--listen-port", "18001", "--origin-port", "18002"];
        let haproxy = file(&[&base[..], &["haproxy"], &ports].concat());
        assert_eq!(haproxy, bench::peers::haproxy_config(18001, 18002));
        let nginx = file(&[&base[..], &["nginx", "--dir", "/tmp/n"], &ports].concat());
        assert!(nginx.contains("pid /tmp/n/nginx.pid;"), "{nginx}");
        let logged = file(&[&base[..], &["sidecar-service-logged"], &ports].concat());
        let service: serde_json::Value = serde_json::from_str(&logged).unwrap();
        assert_eq!(
            service["serviceConnectConfiguration"]["services"][0]["ingressPortOverride"],
            18001
        );
        assert_eq!(
            service["serviceConnectConfiguration"]["accessLogConfiguration"]["format"],
            "JSON"
        );
        let task = file(&[&base[..], &["sidecar-task"], &ports].concat());
        assert!(task.contains("\"containerPort\":18002"), "{task}");
    }

    #[test]
    fn registry_and_logrouter_bench_flags_become_options() {
        let BenchCommand::Registry(registry) = bench_command(&[
            "registry",
            "--quick",
            "--skiff",
            "/opt/skiff",
            "--no-install",
            "--format",
            "json",
        ]) else {
            panic!("not bench registry");
        };
        assert_eq!(registry.format, Format::Json);
        let opts = registry.into_options();
        assert_eq!(opts.skiff, PathBuf::from("/opt/skiff"));
        assert_eq!(opts.scale_instances, 10_000);
        assert_eq!(opts.budget, Duration::from_secs(60));
        assert!(!opts.install_missing);
        let BenchCommand::Logrouter(logrouter) =
            bench_command(&["logrouter", "--peer-fluent-bit", "/usr/bin/fluent-bit"])
        else {
            panic!("not bench logrouter");
        };
        let opts = logrouter.into_options();
        assert_eq!(
            opts.peer_fluent_bit,
            Some(PathBuf::from("/usr/bin/fluent-bit"))
        );
        assert_eq!(opts.budget, Duration::from_secs(120));
        assert_eq!(opts.batch, 1000);
        assert!(opts.skiff.is_absolute(), "defaults to this executable");
    }

    #[test]
    fn bad_input_exits_2_and_runtime_failures_1() {
        assert_eq!(LoadtestError::InvalidOption("x".into()).exit_code(), 2);
        assert_eq!(
            LoadtestError::ProbeFailed { url: "u".into() }.exit_code(),
            1
        );
    }
}
