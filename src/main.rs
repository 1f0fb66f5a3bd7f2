//! The `skiff` command line: parses arguments and hands each subcommand to the crate that owns it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod heap;
mod park;

/// ECS Service Connect that runs anywhere: registry, sidecar proxy, log router and runner.
#[derive(Parser)]
#[command(name = "skiff", version, about, propagate_version = true)]
struct Cli {
    /// Log filter: a level and/or `target=level` pairs, e.g. `info`, `warn,skiff_proxy=debug`.
    #[arg(long, global = true, env = "SKIFF_LOG", default_value = "info")]
    log: String,

    /// Log format on stderr.
    #[arg(long, global = true, env = "SKIFF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start every service of a stack directory (ECS JSON) with sidecars and log routers injected.
    Up(UpArgs),
    /// Roll the services of a running `skiff up` whose JSON changed (ECS's rolling update).
    Deploy {
        /// The state directory of the `skiff up` to redeploy.
        #[arg(long, env = "SKIFF_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Show the tasks of a running `skiff up`: addresses, health, sidecar admin URLs.
    Ps {
        /// The state directory of the `skiff up` to show.
        #[arg(long, env = "SKIFF_STATE_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Run the service registry (Cloud Map API, watch API, DNS).
    Registry(RegistryArgs),
    /// Run a sidecar proxy for one task.
    Proxy(ProxyArgs),
    /// Run a log router (Fluent Bit classic configuration).
    Logrouter(LogrouterArgs),
    /// Generate load and run benchmarks against peers (loopback only).
    Loadtest(skiff_loadtest::LoadtestArgs),
    /// The demo app the examples run (`serve`), and its health probe (`probe`).
    Demo(skiff_loadtest::DemoArgs),
    /// Check ECS task definition and service JSON files; exit 2 on any problem.
    Validate {
        /// Task definition and service files, checked together.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the version.
    Version,
}

/// `skiff up`.
#[derive(clap::Args)]
struct UpArgs {
    /// Directory of ECS task definitions and services (*.json).
    dir: PathBuf,
    /// Use the registry at this URL instead of starting one.
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Embedded registry: Cloud Map API address.
    #[arg(long, default_value = "127.0.0.1:7070", conflicts_with = "registry")]
    registry_http_addr: SocketAddr,
    /// Embedded registry: DNS address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8600", conflicts_with = "registry")]
    registry_dns_addr: SocketAddr,
    /// Embedded registry: keep its store here (default: in memory, for the stack's lifetime).
    #[arg(long, conflicts_with = "registry")]
    registry_data: Option<PathBuf>,
    /// `host`: tasks share the host network, each on its own loopback address; `awsvpc`: each
    /// task in its own network namespace (root only).
    #[arg(long, value_enum, default_value_t = NetworkModeArg::Host)]
    network_mode: NetworkModeArg,
    /// How long a stopping task's sidecar keeps serving while clients learn of the change.
    #[arg(long, default_value_t = 20)]
    drain_seconds: u64,
    /// Where task state lives (read by `skiff ps`).
    #[arg(long, env = "SKIFF_STATE_DIR", default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NetworkModeArg {
    Host,
    Awsvpc,
}

fn default_state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("skiff-{}", nix_uid()))
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

async fn up(args: UpArgs) -> Result<(), (u8, String)> {
    let services = skiff_runner::load(&args.dir).map_err(|problems| {
        (
            2,
            format!(
                "{problems}\n{} problem(s) found; nothing started",
                problems.len()
            ),
        )
    })?;
    let registry = match args.registry {
        Some(url) => skiff_runner::RegistrySource::External(url),
        None => skiff_runner::RegistrySource::Embedded(skiff_registry::RegistryOptions {
            http_addr: args.registry_http_addr,
            dns_addr: args.registry_dns_addr,
            data_dir: args.registry_data,
            ..skiff_registry::RegistryOptions::default()
        }),
    };
    let network_mode = match args.network_mode {
        NetworkModeArg::Host => skiff_runner::NetworkMode::Host,
        NetworkModeArg::Awsvpc => skiff_runner::NetworkMode::Awsvpc {
            cidr: skiff_runner::DEFAULT_TASK_CIDR,
        },
    };
    let opts = skiff_runner::UpOptions {
        skiff_exe: std::env::current_exe()
            .map_err(|e| (1, format!("cannot find the skiff executable: {e}")))?,
        registry,
        state_dir: args.state_dir,
        drain: std::time::Duration::from_secs(args.drain_seconds),
        network_mode,
        stack_dir: Some(args.dir),
    };
    skiff_runner::up(services, opts, shutdown_signal())
        .await
        .map_err(runtime_error)
}

/// `skiff proxy`: flags override the `[proxy]` section of `--settings`.
#[derive(clap::Args)]
struct ProxyArgs {
    /// The task definition (as `aws ecs register-task-definition --cli-input-json` takes it).
    #[arg(long, value_name = "FILE")]
    task_definition: PathBuf,
    /// The service, with its `serviceConnectConfiguration` (as `aws ecs create-service` takes it).
    #[arg(long, value_name = "FILE")]
    service: PathBuf,
    /// The registry (Cloud Map API + watch API).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7070")]
    registry: String,
    /// Skiff settings file (TOML, see config/settings.example.toml).
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// The task's id (the registered instance id) [default: random].
    #[arg(long)]
    task_id: Option<String>,
    /// Every listener of this sidecar binds this address [default: 127.0.0.1].
    #[arg(long)]
    bind_ip: Option<std::net::IpAddr>,
    /// Where the app listens [default: 127.0.0.1].
    #[arg(long)]
    app_host: Option<String>,
    /// Give client aliases virtual IPs from this block (e.g. 127.255.0.0/16), with a listener
    /// per alias and DNS answers pointing at them.
    #[arg(long, value_name = "CIDR")]
    vip_cidr: Option<String>,
    /// Keep an /etc/hosts-style file of the alias VIPs here (rewritten in place on change).
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,
    /// Admin port (/ready, /metrics, /endpoints, /config) [default: 9901; 0: any].
    #[arg(long)]
    admin_port: Option<u16>,
    /// HTTP proxy listener port (for HTTP_PROXY) [default: 15001; 0: any].
    #[arg(long)]
    http_proxy_port: Option<u16>,
    /// DNS listener port [default: 53 as root, else 5353; 0: any].
    #[arg(long)]
    dns_port: Option<u16>,
    /// Drain window on SIGTERM, in milliseconds [default: 20000].
    #[arg(long)]
    drain_ms: Option<u64>,
    /// Write the bound addresses here as JSON once listening.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

async fn proxy(args: ProxyArgs) -> Result<(), (u8, String)> {
    let all = load_settings(args.settings.as_deref())?;
    let mut settings = all.proxy;
    let stack = skiff_config::load_files(&[args.task_definition.clone(), args.service.clone()])
        .map_err(|problems| {
            (
                2,
                format!("{problems}\n{} problem(s) found", problems.len()),
            )
        })?;
    let Some(service) = stack.services.first() else {
        return Err((
            2,
            format!("{}: not a service definition", args.service.display()),
        ));
    };
    let Some(task) = stack.task_definition(service) else {
        return Err((
            2,
            format!(
                "{}: not the task definition of service {}",
                args.task_definition.display(),
                service.service_name
            ),
        ));
    };
    if let Some(ip) = args.bind_ip {
        settings.bind_ip = ip;
    }
    if let Some(host) = args.app_host {
        settings.app_host = host;
    }
    if let Some(p) = args.admin_port {
        settings.admin_port = p;
    }
    if let Some(p) = args.http_proxy_port {
        settings.http_proxy_port = p;
    }
    if let Some(ms) = args.drain_ms {
        settings.drain = std::time::Duration::from_millis(ms);
    }
    let task_id = args.task_id.unwrap_or_else(random_task_id);
    let discovery = skiff_proxy::DiscoverySource::Registry { url: args.registry };
    let mut opts = skiff_proxy::ecs::sidecar_options(task, service, &settings, &task_id, discovery)
        .map_err(|e| (2, e.to_string()))?;
    opts.dns_port = Some(
        args.dns_port
            .unwrap_or_else(|| settings.dns_port.resolve(is_root())),
    );
    opts.hosts_file = args.hosts_file;
    if let Some(cidr) = args.vip_cidr {
        let cidr = skiff_config::settings::Ipv4Cidr::parse(&cidr)
            .map_err(|e| (2, format!("--vip-cidr: {e}")))?;
        opts.config.vip_base = Some(cidr.network);
        opts.config.vip_prefix_len = cidr.prefix_len;
    }
    // Traces: OTLP export per OTEL_* variables or [telemetry]; off when neither names a collector.
    opts.trace =
        skiff_proxy::TraceSettings::from_env(&all.telemetry).map_err(|e| (2, e.to_string()))?;
    let ingress: Vec<(String, String)> = opts
        .ingress
        .iter()
        .map(|e| (e.port_name.clone(), e.discovery_name.clone()))
        .collect();
    let busy_poll = opts.config.busy_poll;
    let metrics = prometheus::Registry::new();
    let sidecar = skiff_proxy::Sidecar::start(opts, &metrics)
        .await
        .map_err(runtime_error)?;
    park::enable(busy_poll, sidecar.metrics().busy_polls());
    let ready = serde_json::json!({
        "admin_addr": sidecar.admin_addr().to_string(),
        "http_proxy_addr": sidecar.http_proxy_addr().to_string(),
        "dns_addr": sidecar.dns_addr().map(|a| a.to_string()),
        "ingress": ingress
            .iter()
            .zip(sidecar.ingress_addrs())
            .map(|((port_name, discovery_name), addr)| serde_json::json!({
                "port_name": port_name,
                "discovery_name": discovery_name,
                "addr": addr.to_string(),
            }))
            .collect::<Vec<_>>(),
    });
    write_ready_file(args.ready_file.as_deref(), &ready)?;
    sidecar.run(shutdown_signal()).await.map_err(runtime_error)
}

fn is_root() -> bool {
    nix_uid() == 0
}

/// ECS task ids are 32 hex characters.
fn random_task_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64))
}

/// `skiff logrouter`: a FireLens-style log router configured the Fluent Bit way.
#[derive(clap::Args)]
struct LogrouterArgs {
    /// Fluent Bit classic configuration file ([SERVICE], [INPUT], [FILTER], [OUTPUT]).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// ECS metadata added to every record (as FireLens does with enable-ecs-log-metadata).
    #[arg(long, env = "ECS_CLUSTER")]
    ecs_cluster: Option<String>,
    #[arg(long, env = "ECS_TASK_ARN")]
    ecs_task_arn: Option<String>,
    #[arg(long, env = "ECS_TASK_DEFINITION")]
    ecs_task_definition: Option<String>,
    /// Write `{"forward_addr":..,"metrics_addr":..}` here once listening.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

async fn logrouter(args: LogrouterArgs) -> Result<(), (u8, String)> {
    let config =
        skiff_logrouter::LogRouterConfig::load(&args.config).map_err(|e| (2, e.to_string()))?;
    let metadata = skiff_logrouter::EcsMetadata {
        cluster: args.ecs_cluster,
        task_arn: args.ecs_task_arn,
        task_definition: args.ecs_task_definition,
        ..skiff_logrouter::EcsMetadata::default()
    };
    let metrics = prometheus::Registry::new();
    let router = skiff_logrouter::LogRouter::start(config, metadata, &metrics)
        .await
        .map_err(runtime_error)?;
    let ready = serde_json::json!({
        "forward_addr": router.forward_addr().map(|a| a.to_string()),
        "metrics_addr": router.metrics_addr().map(|a| a.to_string()),
        "unix_paths": router.unix_paths(),
    });
    write_ready_file(args.ready_file.as_deref(), &ready)?;
    router.run(shutdown_signal()).await.map_err(runtime_error)
}

/// `skiff registry`: flags override the `[registry]` section of `--settings`.
#[derive(clap::Args)]
struct RegistryArgs {
    /// Cloud Map API, watch API, /health and /metrics [default: 127.0.0.1:7070].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// DNS over UDP and TCP [default: 127.0.0.1:8600].
    #[arg(long)]
    dns_addr: Option<SocketAddr>,
    /// Directory of the durable store [default: .skiff/registry].
    #[arg(long, conflicts_with = "in_memory")]
    data: Option<PathBuf>,
    /// Keep everything in memory (nothing survives a restart).
    #[arg(long)]
    in_memory: bool,
    /// Skiff settings file (TOML, see config/settings.example.toml).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Write `{"http_addr":..,"dns_addr":..}` here once listening (handy with port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(message) = init_logging(&cli.log, cli.log_format) {
        eprintln!("skiff: {message}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate(&files),
        Command::Up(args) => block_on(2, up(args)),
        Command::Deploy { state_dir } => match skiff_runner::request_deploy(&state_dir) {
            Ok(pid) => {
                println!(
                    "asked skiff up (pid {pid}) to re-read its stack and roll changed services"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("skiff deploy: {e}");
                ExitCode::from(1)
            }
        },
        Command::Ps { state_dir } => match skiff_runner::print_ps(&state_dir) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("skiff ps: {e}");
                ExitCode::from(1)
            }
        },
        Command::Registry(args) => block_on(2, registry(args)),
        Command::Proxy(args) => block_on(1, proxy(args)),
        Command::Logrouter(args) => {
            // Before the runtime allocates; a process setting, so only where the log router
            // is the process (the runner's children would inherit it).
            skiff_logrouter::no_transparent_huge_pages();
            block_on(2, logrouter(args))
        }
        Command::Loadtest(args) => block_on(2, async {
            skiff_loadtest::loadtest_main(args)
                .await
                .map_err(|e| (e.exit_code(), e.to_string()))
        }),
        Command::Demo(args) => block_on(1, async {
            skiff_loadtest::demo_main(args)
                .await
                .map_err(|e| (e.exit_code(), e.to_string()))
        }),
    }
}

/// Problems go to stderr, one per line as `file:line:column: path: message`; stdout gets a
/// one-line summary only when everything is valid.
fn validate(files: &[PathBuf]) -> ExitCode {
    match skiff_config::load_files(files) {
        Ok(stack) => {
            println!(
                "ok: {} task definition(s), {} service(s)",
                stack.task_definitions.len(),
                stack.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::from(2)
        }
    }
}

async fn registry(args: RegistryArgs) -> Result<(), (u8, String)> {
    let settings = load_settings(args.settings.as_deref())?;
    let r = &settings.registry;
    let opts = skiff_registry::RegistryOptions {
        http_addr: args.http_addr.unwrap_or(r.http_addr),
        dns_addr: args.dns_addr.unwrap_or(r.dns_addr),
        data_dir: (!args.in_memory).then(|| args.data.unwrap_or_else(|| r.data_dir.clone())),
        instance_removal_grace: r.instance_removal_grace,
        max_body_bytes: r.max_body_bytes.get(),
        ..skiff_registry::RegistryOptions::default()
    };
    let metrics = prometheus::Registry::new();
    let registry = skiff_registry::Registry::start(opts, &metrics)
        .await
        .map_err(runtime_error)?;
    let ready = serde_json::json!({
        "http_addr": registry.http_addr().to_string(),
        "dns_addr": registry.dns_addr().to_string(),
    });
    write_ready_file(args.ready_file.as_deref(), &ready)?;
    registry.run(shutdown_signal()).await.map_err(runtime_error)
}

fn load_settings(path: Option<&std::path::Path>) -> Result<skiff_config::Settings, (u8, String)> {
    match path {
        Some(p) => skiff_config::Settings::load(p).map_err(|e| (2, e.to_string())),
        None => Ok(skiff_config::Settings::default()),
    }
}

/// The error and its causes on one line, for a runtime failure (exit 1).
fn runtime_error(e: impl std::error::Error) -> (u8, String) {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    (1, msg)
}

/// Writes the addresses a component bound, atomically, for whoever started it.
fn write_ready_file(
    path: Option<&std::path::Path>,
    value: &serde_json::Value,
) -> Result<(), (u8, String)> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            (
                1,
                format!("cannot write ready file {}: {e}", path.display()),
            )
        })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Runs `f` on a tokio runtime with `threads` workers; an error is printed with its exit code.
fn block_on(
    threads: usize,
    f: impl std::future::Future<Output = Result<(), (u8, String)>>,
) -> ExitCode {
    let threads = std::env::var("SKIFF_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(threads);
    // One thread: everything on this thread (a sidecar's default, the cheapest per request).
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // Access log lines wait in a per-thread buffer until it fills or the thread goes idle;
    // then a sidecar may poll a moment before sleeping (park.rs), on one thread only: only a
    // single-threaded runtime's epoll is watched.
    builder.on_thread_park(|| {
        skiff_proxy::access::flush_thread_buffer();
        park::before_park();
    });
    let fds = (threads <= 1).then(park::RuntimeFds::before);
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(fds) = fds {
        fds.watch_new();
    }
    let run = async {
        let trimmer = tokio::spawn(heap::trim_periodically());
        let result = f.await;
        trimmer.abort();
        result
    };
    let result = runtime.block_on(run);
    drop(runtime);
    skiff_proxy::access::flush_thread_buffer();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("skiff: {message}");
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr, filtered by `filter`: a level (`info`) and/or `target=level` pairs
/// (`warn,skiff_proxy=debug`). A plain target list rather than `EnvFilter`'s regex-backed
/// syntax: compiling those regexes at every start cost each sidecar ~2 MiB of resident code.
fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let targets: tracing_subscriber::filter::Targets = filter.parse().map_err(|e| {
        format!("--log {filter:?}: {e} (expected a level such as `info`, or `target=level` pairs such as `warn,skiff_proxy=debug`)")
    })?;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(targets);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    Ok(())
}
