//! dnsperf: its command line, a bounded run pinned to the client core, and the parse of its statistics.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

use crate::LoadtestError;

/// Simulated clients (sockets) per run.
pub const CLIENTS: u32 = 4;
/// dnsperf worker threads: its core is one, more threads would only contend for it.
pub const THREADS: u32 = 1;

/// One dnsperf run.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsperfRun {
    pub port: u16,
    pub query_file: String,
    pub seconds: u64,
    /// `-Q`: a fixed rate instead of as fast as answers come back.
    pub max_qps: Option<u32>,
    pub tcp: bool,
}

// === impl DnsperfRun ===

impl DnsperfRun {
    /// The arguments after `dnsperf`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-s".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            self.port.to_string(),
            "-d".to_string(),
            self.query_file.clone(),
            "-l".to_string(),
            self.seconds.to_string(),
            "-c".to_string(),
            CLIENTS.to_string(),
            "-T".to_string(),
            THREADS.to_string(),
        ];
        if let Some(qps) = self.max_qps {
            args.extend(["-Q".to_string(), qps.to_string()]);
        }
        if self.tcp {
            args.extend(["-m".to_string(), "tcp".to_string()]);
        }
        args
    }

    /// Runs dnsperf (pinned to `cpu`), bounded by its own time limit plus a margin; its statistics.
    pub async fn run(&self, cpu: Option<usize>, dir: &Path) -> Result<DnsperfStats, LoadtestError> {
        let mut command = match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu.to_string()).arg("dnsperf");
                command
            }
            None => Command::new("dnsperf"),
        };
        command
            .args(self.args())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let failed = |reason: String| LoadtestError::Process {
            what: "dnsperf".into(),
            reason,
        };
        let child = command
            .spawn()
            .map_err(|error| failed(format!("cannot start: {error}")))?;
        // dnsperf waits up to its query timeout (5 s) for the last answers.
        let limit = Duration::from_secs(self.seconds + 15);
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("still running after {} s", limit.as_secs())))??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        parse(&stdout).ok_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            failed(format!(
                "{}: no statistics in its output: {}",
                output.status,
                stderr.lines().last().unwrap_or_default()
            ))
        })
    }
}

/// What dnsperf reports at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DnsperfStats {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// `NOERROR 1000 (100.00%)` and the like, as printed.
    pub response_codes: String,
    pub run_time_secs: f64,
    pub qps: f64,
    pub avg_latency_ms: f64,
    pub min_latency_ms: f64,
    pub max_latency_ms: f64,
    pub latency_stddev_ms: f64,
}

/// Parses the `Statistics:` block of dnsperf's output (ignoring per-query timeout lines before it
/// and the TCP `Connection Statistics:` block after it).
pub fn parse(output: &str) -> Option<DnsperfStats> {
    let start = output.find("\nStatistics:")?;
    let block = &output[start..];
    let block = block
        .find("Connection Statistics:")
        .map_or(block, |end| &block[..end]);
    let value = |key: &str| -> Option<&str> {
        block.lines().find_map(|line| {
            let rest = line.trim_start().strip_prefix(key)?;
            Some(rest.trim())
        })
    };
    let first_number = |text: &str| -> Option<f64> { text.split_whitespace().next()?.parse().ok() };
    let count = |key: &str| -> Option<u64> { value(key)?.split_whitespace().next()?.parse().ok() };
    let latency = value("Average Latency (s):")?;
    // `0.000540 (min 0.000021, max 0.003297)`
    let number_after = |label: &str| -> Option<f64> {
        let rest = &latency[latency.find(label)? + label.len()..];
        rest.trim_start()
            .split(|c: char| c == ',' || c == ')' || c.is_whitespace())
            .next()?
            .parse()
            .ok()
    };
    Some(DnsperfStats {
        sent: count("Queries sent:")?,
        completed: count("Queries completed:")?,
        lost: count("Queries lost:")?,
        response_codes: value("Response codes:").unwrap_or_default().to_string(),
        run_time_secs: first_number(value("Run time (s):")?)?,
        qps: first_number(value("Queries per second:")?)?,
        avg_latency_ms: first_number(latency)? * 1000.0,
        min_latency_ms: number_after("min").unwrap_or_default() * 1000.0,
        max_latency_ms: number_after("max").unwrap_or_default() * 1000.0,
        latency_stddev_ms: value("Latency StdDev (s):")
            .and_then(first_number)
            .unwrap_or_default()
            * 1000.0,
    })
}
