//! Real client and server processes (curl, h2load, dig, Python gRPC): bounded in time and
//! killed by PID when the test lets go of them.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A child process that is killed (SIGKILL, by its PID) when dropped, panics included.
pub struct ChildGuard {
    child: Child,
    /// Held so that the child sees EOF on stdin once the guard goes (servers watch for it).
    _stdin: Option<ChildStdin>,
    pub stdout: Option<Lines<BufReader<ChildStdout>>>,
    what: String,
}

impl ChildGuard {
    /// Starts `cmd` with piped stdin and stdout.
    pub fn spawn(mut cmd: Command, what: &str) -> ChildGuard {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        ChildGuard {
            child,
            _stdin: stdin,
            stdout,
            what: what.to_owned(),
        }
    }

    /// Reads stdout lines until one starts with `prefix`, within `secs`; returns the rest.
    pub async fn line_starting(&mut self, prefix: &str, secs: u64) -> String {
        let lines = self.stdout.as_mut().expect("stdout piped");
        let find = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
            }
            panic!("{} exited before printing {prefix:?}", self.what)
        };
        tokio::time::timeout(Duration::from_secs(secs), find)
            .await
            .unwrap_or_else(|_| panic!("{} did not print {prefix:?} within {secs}s", self.what))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // By PID: tokio's start_kill signals this child only, and reaps it in the background.
        let _ = self.child.start_kill();
    }
}

/// Runs a client to completion within `secs` (killed by PID past it) and returns its output.
pub async fn run(mut cmd: Command, secs: u64) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std().get_program());
    tokio::time::timeout(Duration::from_secs(secs), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs}s"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// A command with a clean proxy environment: real clients honour `http_proxy`.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "grpc_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
