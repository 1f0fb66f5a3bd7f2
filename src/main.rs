//! The `skiff` command line: parses arguments and hands each subcommand to the crate that owns it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ECS Service Connect that runs anywhere: registry, sidecar proxy, log router and runner.
#[derive(Parser)]
#[command(name = "skiff", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `skiff_proxy=debug`.
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
    Up {
        /// Directory of ECS task definitions and services (*.json).
        dir: PathBuf,
    },
    /// Run the service registry (Cloud Map API, watch API, DNS).
    Registry(RegistryArgs),
    /// Run a sidecar proxy for one task.
    Proxy,
    /// Run a log router (Fluent Bit classic configuration).
    Logrouter,
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
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_logging(&cli.log, cli.log_format);
    match cli.command {
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate(&files),
        Command::Up { .. } => not_built("up", "the runner"),
        Command::Registry(args) => block_on(2, registry(args)),
        Command::Proxy => not_built("proxy", "the sidecar proxy"),
        Command::Logrouter => not_built("logrouter", "the log router"),
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
        .map_err(|e| (1, format!("cannot write ready file {}: {e}", path.display())))
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("skiff: {message}");
            ExitCode::from(code)
        }
    }
}

fn not_built(cmd: &str, what: &str) -> ExitCode {
    eprintln!("skiff {cmd}: not built yet: {what} is not part of this build");
    ExitCode::from(2)
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
