//! The processes a benchmark starts: pinned to a core, watched through /proc, stopped by PID.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::LoadtestError;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A child process this benchmark started.
pub struct Managed {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    pub stderr_path: PathBuf,
}

// === impl Managed ===

impl Managed {
    /// Starts `argv`, pinned to `cpu` with `taskset` when given, stderr to `dir/<name>.stderr`.
    pub fn spawn(
        name: &str,
        argv: &[String],
        cpu: Option<usize>,
        dir: &Path,
    ) -> Result<Managed, LoadtestError> {
        let failed = |reason: String| LoadtestError::Process {
            what: name.to_string(),
            reason,
        };
        let Some((program, args)) = argv.split_first() else {
            return Err(failed("empty command line".into()));
        };
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = pinned_command(program.as_ref(), cpu);
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|error| failed(format!("cannot start {program}: {error}")))?;
        let Some(pid) = child.id() else {
            return Err(failed("exited at once".into()));
        };
        Ok(Managed {
            name: name.to_string(),
            child,
            pid,
            stderr_path,
        })
    }

    /// `Some(reason)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("exited with {status}{}", self.stderr_tail())),
            Ok(None) => None,
            Err(error) => Some(format!("cannot be waited for: {error}")),
        }
    }

    /// The last lines it wrote on stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    }

    pub fn stats(&self) -> Option<ProcStats> {
        ProcStats::read(self.pid)
    }

    /// SIGTERM by PID, then SIGKILL if it is still there after a grace period.
    pub async fn stop(mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(name = %self.name, pid = self.pid, "did not stop on SIGTERM; killing");
            let _ = self.child.kill().await;
        }
    }
}

/// CPU time and memory of one process, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    /// The process's own memory (RssAnon): RSS minus the file pages (code, libraries) that
    /// every process running the same binary shares.
    pub private_kib: u64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_kib: u64,
}

// === impl ProcStats ===

impl ProcStats {
    pub fn read(pid: u32) -> Option<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(ProcStats {
            cpu_ticks: parse_stat_cpu_ticks(&stat)?,
            rss_kib: parse_status_kib(&status, "VmRSS")?,
            private_kib: parse_status_kib(&status, "RssAnon").unwrap_or(0),
            peak_rss_kib: parse_status_kib(&status, "VmHWM")?,
        })
    }
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name may hold spaces.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` value of /proc/PID/status.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be asked.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// Pins the calling thread to `cpu` (`taskset -p` on its thread id).
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let tid = current_thread_id()?;
    run_quietly("taskset", &["-p", "-c", &cpu.to_string(), &tid.to_string()])
}

/// The calling thread's id, as `taskset -p` and `chrt -p` take it.
pub fn current_thread_id() -> Result<u32, String> {
    let link = std::fs::read_link("/proc/thread-self").map_err(|e| e.to_string())?;
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .ok_or_else(|| "no thread id".to_string())
}

/// Puts thread `id` (every thread of process `id` with `all_threads`) under `SCHED_FIFO` at
/// `priority`, or back under `SCHED_OTHER` with `None` (`chrt -p`; needs root or
/// `CAP_SYS_NICE`).
pub fn set_realtime(id: u32, priority: Option<u8>, all_threads: bool) -> Result<(), String> {
    let (policy, priority) = match priority {
        Some(priority) => ("-f", priority.to_string()),
        None => ("-o", "0".to_string()),
    };
    let id = id.to_string();
    let mut args = vec![policy];
    if all_threads {
        args.push("-a");
    }
    args.extend(["-p", &priority, &id]);
    run_quietly("chrt", &args)
}

fn run_quietly(program: &str, args: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} exited with {status}", args.join(" ")))
    }
}

/// A command running `program`, pinned to `cpu` with `taskset` when given.
pub fn pinned_command(program: &std::ffi::OsStr, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Whether `program` is on PATH (or in /usr/sbin, /sbin, where Debian puts daemons).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Installs Debian packages with apt-get (update first if the plain install fails).
pub async fn apt_install(packages: &[&str], log: &Path) -> Result<(), String> {
    eprintln!(
        "skiff: installing {} with apt-get (benchmark peers; log in {})",
        packages.join(" "),
        log.display()
    );
    let attempt = |update: bool| async move {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| e.to_string())?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new("apt-get");
        if update {
            command.arg("update").arg("-q");
        } else {
            command.args(["install", "-y", "-q"]).args(packages);
        }
        let status = command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(err_file))
            .status()
            .await
            .map_err(|e| format!("apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get exited with {status}"))
        }
    };
    if attempt(false).await.is_ok() {
        return Ok(());
    }
    attempt(true).await?;
    attempt(false).await
}
