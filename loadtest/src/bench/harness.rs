//! What the registry and log router benchmarks share: cores, ports, the `skiff` binary, pinned client threads, budgets.
//!
//! Both benchmarks put the server under test alone on one core and their own
//! client on the other, so the figures compare like with like; the client work
//! runs on a single-threaded runtime on a thread pinned to its core.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::process::{self, Managed};
use crate::LoadtestError;

/// Where the server under test and the benchmark's client run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cores {
    pub server: Option<usize>,
    pub client: Option<usize>,
}

/// Core 0 for servers, core 1 for clients, when `taskset` exists and there are two cores.
pub fn choose_cores(notes: &mut Vec<String>) -> Cores {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if process::find_program("taskset").is_none() {
        notes.push("taskset not found: processes are not pinned".to_string());
        return Cores {
            server: None,
            client: None,
        };
    }
    if cpus < 2 {
        notes.push(format!(
            "only {cpus} core(s) usable: processes are not pinned"
        ));
        return Cores {
            server: None,
            client: None,
        };
    }
    if let Some(load) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
    {
        notes.push(format!(
            "load average {load} on {cpus} cores at start: other work on the machine skews every figure"
        ));
    }
    notes.push("server under test pinned to core 0, the benchmark's client to core 1".to_string());
    Cores {
        server: Some(0),
        client: Some(1),
    }
}

/// The `skiff` binary to start: the one given, else this very executable.
pub fn skiff_exe(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")))
}

/// A loopback port free for TCP (and, when `udp_too`, for UDP) at the time of asking.
pub fn free_port(udp_too: bool) -> Result<u16, LoadtestError> {
    let bind_error = |source| LoadtestError::Bind {
        addr: "127.0.0.1:0".into(),
        source,
    };
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(bind_error)?;
        let port = tcp.local_addr()?.port();
        if !udp_too || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LoadtestError::InvalidOption(
        "no loopback port free for both TCP and UDP".into(),
    ))
}

/// Runs the future `make` builds on its own single-threaded runtime, on a thread pinned to `cpu`.
pub async fn on_pinned_thread<T, F, Fut>(
    name: &str,
    cpu: Option<usize>,
    make: F,
) -> Result<T, LoadtestError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("skiff-bench-{name}"))
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(error) = process::pin_current_thread(cpu)
            {
                tracing::warn!(%error, "cannot pin the benchmark client");
            }
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(make()));
            let _ = done.send(outcome);
        })?;
    let outcome = result.await.map_err(|_| LoadtestError::Process {
        what: format!("{name} client thread"),
        reason: "ended without a result".into(),
    })?;
    Ok(outcome?)
}

/// Polls `probe` every few milliseconds until it is true; the time it took, or why it never was
/// (the process exited, or `deadline` passed).
pub async fn wait_until<F, Fut>(
    child: &mut Managed,
    deadline: Duration,
    mut probe: F,
) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return Ok(started.elapsed());
        }
        if let Some(reason) = child.exited() {
            return Err(format!("{} {reason}", child.name));
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "{} not ready within {} s{}",
                child.name,
                deadline.as_secs(),
                child.stderr_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGKILL by PID (as a crash would), then reap it.
pub async fn kill_9(child: &mut Managed) {
    let _ = child.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.child.wait()).await;
}

/// A benchmark's time budget: phases that would overrun it are skipped with this reason.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    started: Instant,
    total: Duration,
}

// === impl Budget ===

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget {
            started: Instant::now(),
            total,
        }
    }

    /// `Err(reason)` when a phase of about `estimate` would end past the budget.
    pub fn check(&self, estimate: Duration) -> Result<(), String> {
        if self.started.elapsed() + estimate > self.total {
            Err(format!(
                "time budget of {} s exhausted",
                self.total.as_secs()
            ))
        } else {
            Ok(())
        }
    }

    /// How much is left.
    pub fn remaining(&self) -> Duration {
        self.total.saturating_sub(self.started.elapsed())
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// One line of a "measured vs target" table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    pub what: String,
    pub measured: String,
    pub target: String,
    /// `None` when there is nothing to compare (no figure, or no target).
    pub met: Option<bool>,
}

// === impl Check ===

impl Check {
    pub fn new(
        what: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Check {
        Check {
            what: what.into(),
            measured: measured.into(),
            target: target.into(),
            met,
        }
    }
}

/// `| what | measured | target | met |` rows.
pub fn checks_table(checks: &[Check]) -> String {
    let mut out = String::from("| | measured | target | |\n| --- | ---: | ---: | --- |\n");
    for check in checks {
        let verdict = match check.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            check.what, check.measured, check.target, verdict
        ));
    }
    out
}

/// `value` with `decimals`, or a dash.
pub fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_string(), |value| format!("{value:.decimals$}"))
}

/// KiB as MiB.
#[allow(clippy::cast_precision_loss)]
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU seconds of `ticks` clock ticks.
#[allow(clippy::cast_precision_loss)]
pub fn ticks_to_secs(ticks: u64, ticks_per_second: u64) -> f64 {
    ticks as f64 / ticks_per_second.max(1) as f64
}

/// A loopback server on its own thread and single-threaded runtime (pinned to `cpu` when
/// given), so what it serves does not share the runtime of the load it answers.
pub struct PinnedServer {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// Resolves when the server is asked to stop.
pub type StopSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

// === impl PinnedServer ===

impl PinnedServer {
    /// Binds 127.0.0.1:0 and runs `serve(listener, stop)` on a new thread named `name`.
    pub fn start<F, Fut>(name: &str, cpu: Option<usize>, serve: F) -> Result<Self, LoadtestError>
    where
        F: FnOnce(tokio::net::TcpListener, StopSignal) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), LoadtestError>>,
    {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| LoadtestError::Bind {
                addr: "127.0.0.1:0".into(),
                source,
            })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel::<()>();
        let what = name.to_owned();
        std::thread::Builder::new()
            .name(format!("skiff-bench-{name}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(error) = process::pin_current_thread(cpu)
                {
                    tracing::warn!(%error, server = %what, "cannot pin the server");
                }
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(LoadtestError::from)
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            serve(
                                listener,
                                Box::pin(async move {
                                    let _ = stopped.await;
                                }),
                            )
                            .await
                        })
                    });
                if let Err(error) = served {
                    tracing::warn!(%error, server = %what, "server failed");
                }
                let _ = finished.send(());
            })?;
        Ok(PinnedServer { addr, stop, done })
    }

    /// Asks it to stop and waits (bounded) for its thread to finish.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(within, self.done).await;
    }
}
