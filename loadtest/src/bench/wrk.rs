//! wrk: the closed-loop phase of the proxy benchmark driven by wrk (Debian `wrk`), as the
//! proxy issue's own figures were.
//!
//! Why not our generator there: with the origin on the generator's core, ours (hyper, an HDR
//! histogram per request) costs that core about 7 µs per request and it saturates before the
//! proxy's does — the "max throughput" then measured the load side, not the proxy (seen:
//! every proxy 80–90 % busy, core 1 at 99.5 %). wrk costs about 1 µs per request, so the
//! proxy's core is the one that runs out. The open-loop latency phase stays ours: wrk's
//! latencies suffer from coordinated omission.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::MaxRun;
use crate::LoadtestError;

/// Runs `wrk` (at `program`) with one thread and `connections` connections against `url` for
/// `duration` (whole seconds, at least one), pinned to `cpu` with taskset when given.
pub async fn run(
    program: &Path,
    url: &str,
    connections: usize,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<MaxRun, LoadtestError> {
    let secs = duration.as_secs().max(1);
    let mut command = super::process::pinned_command(program.as_os_str(), cpu);
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--timeout", "10s", url])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let failed = |reason: String| LoadtestError::Process {
        what: "wrk".into(),
        reason,
    };
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), command.output())
        .await
        .map_err(|_| failed(format!("no result within {} s", secs + 30)))?
        .map_err(|e| failed(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse(&text).ok_or_else(|| failed(format!("unexpected output: {}", text.trim())))
}

/// Reads wrk's report: `N requests in T`, the socket errors and non-2xx/3xx responses.
pub fn parse(text: &str) -> Option<MaxRun> {
    let mut run = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some((count, rest)) = line.split_once(" requests in ") {
            let elapsed = rest.split(',').next()?.trim();
            run = Some(MaxRun {
                responses: count.trim().parse().ok()?,
                elapsed_secs: seconds(elapsed)?,
                errors: 0,
            });
        } else if let Some(list) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in list.split(',') {
                errors += part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    run.map(|run| MaxRun { errors, ..run })
}

/// wrk's durations: `5.02s`, `1.00m`, `500.00ms`, `10.00us`.
fn seconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read_with_their_errors() {
        let text = "Running 8s test @ http://127.0.0.1:18002/health
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   604.05us   75.10us   3.88ms   89.12%
    Req/Sec   106.23k     2.10k  110.01k    80.00%
  845361 requests in 8.00s, 95.13MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec: 105664.95
Transfer/sec:     11.89MB
";
        let run = parse(text).unwrap();
        assert_eq!(run.responses, 845_361);
        assert!((run.elapsed_secs - 8.0).abs() < 1e-9);
        assert_eq!(run.errors, 7);
        assert!((run.throughput() - 105_670.125).abs() < 1e-6);
        let clean = "  1000 requests in 1.00m, 1.00MB read\nRequests/sec: 16.67\n";
        assert_eq!(
            parse(clean),
            Some(MaxRun {
                responses: 1000,
                elapsed_secs: 60.0,
                errors: 0
            })
        );
        assert_eq!(parse("wrk: invalid URL"), None);
    }
}
