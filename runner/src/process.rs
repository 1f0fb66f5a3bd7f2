//! Child processes of a task: spawn with captured output, signal by PID, stop with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::RunnerError;

/// Where a line of a container's output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of output, tagged with who wrote it.
#[derive(Debug)]
pub struct LogLine {
    pub prefix: std::sync::Arc<str>,
    pub stream: Stream,
    pub line: String,
}

/// Longest line we pass on; longer ones are cut (and marked) rather than buffered without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Where a process's stdout and stderr go.
pub enum Sink {
    /// Printed by the runner, prefixed (like `docker compose`).
    Print {
        prefix: std::sync::Arc<str>,
        logs: mpsc::Sender<LogLine>,
    },
    /// Into the task's log router as records tagged `tag` (FireLens's `awsfirelens` driver).
    Route {
        router: Box<skiff_logrouter::LogRouterHandle>,
        tag: String,
        container: String,
    },
}

/// Spawns `argv` with `env`, in its own process group (so a terminal's Ctrl-C reaches only the
/// runner, which then stops tasks in order), sending stdout and stderr line by line to `sink`.
pub fn spawn(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    sink: Sink,
) -> Result<Child, RunnerError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(RunnerError::EmptyCommand);
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    die_with_runner(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| RunnerError::Spawn {
        program: program.clone(),
        source,
    })?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    match sink {
        Sink::Print { prefix, logs } => {
            if let Some(out) = out {
                tokio::spawn(pump(out, Stream::Stdout, prefix.clone(), logs.clone()));
            }
            if let Some(err) = err {
                tokio::spawn(pump(err, Stream::Stderr, prefix, logs));
            }
        }
        Sink::Route {
            router,
            tag,
            container,
        } => {
            use skiff_logrouter::{LineOptions, Source};
            // Each run of a container gets its own id, as Docker gives (64 hex digits).
            let container_id = container_run_id();
            let opts = || LineOptions {
                container_name: Some(container.clone()),
                container_id: Some(container_id.clone()),
                ..LineOptions::default()
            };
            if let Some(out) = out {
                let sink = router.line_input(&tag, Source::Stdout, opts());
                tokio::spawn(sink.feed(out));
            }
            if let Some(err) = err {
                let sink = router.line_input(&tag, Source::Stderr, opts());
                tokio::spawn(sink.feed(err));
            }
        }
    }
    Ok(child)
}

/// A fresh container id in Docker's form: 64 lower-case hex digits.
fn container_run_id() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

async fn pump(
    io: impl AsyncRead + Unpin,
    stream: Stream,
    prefix: std::sync::Arc<str>,
    logs: mpsc::Sender<LogLine>,
) {
    let mut reader = BufReader::new(io);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        let msg = LogLine {
            prefix: prefix.clone(),
            stream,
            line,
        };
        if logs.send(msg).await.is_err() {
            return;
        }
    }
}

/// Makes the child get SIGKILL if the runner dies (even by SIGKILL), so a crashed runner never
/// leaves task processes behind: they run in their own process groups, out of reach of the
/// terminal's signals.
#[allow(unsafe_code)]
fn die_with_runner(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Sends `signal` to one process we started. Errors (it already exited) are ignored.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed; returns the exit status.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Some(pid) = child.id() {
        signal(pid, Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}
