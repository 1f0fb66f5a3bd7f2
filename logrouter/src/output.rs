//! Outputs: each reads the buffer through its own cursor, batches by count/bytes/time, and retries with back-off.
//!
//! An output's cursor moves only after a batch is delivered (or given up after `Retry_Limit`),
//! so after a crash it resends from its last delivered batch: at-least-once per output, and one
//! slow output never holds back another.

mod file;
mod format;
mod forward;
mod http;
mod loki;

use std::time::Duration;

use rand::Rng;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::buffer::{Batch, BufReader, BufferError, Pos};
use crate::config::{OutputConfig, OutputKind};
use crate::metrics::Metrics;
use crate::msgpack::MpError;

/// Why a delivery attempt failed.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("http request failed: {0}")]
    Http(String),
    #[error("server answered {0}")]
    Status(u16),
    #[error("record encoding: {0}")]
    Encode(#[from] MpError),
    #[error("forward peer: {0}")]
    Peer(String),
}

/// One output's destination.
pub enum Sink {
    Stdout { json_lines: bool, count: u64 },
    File(file::FileOut),
    Http(http::HttpOut),
    Forward(forward::ForwardOut),
    Loki(loki::LokiOut),
    Null,
}

// === impl Sink ===

impl Sink {
    pub fn new(kind: &OutputKind) -> Self {
        match kind {
            OutputKind::Stdout { json_lines } => Sink::Stdout {
                json_lines: *json_lines,
                count: 0,
            },
            OutputKind::File {
                path,
                file,
                plain,
                rotate_bytes,
                rotate_keep,
            } => Sink::File(file::FileOut::new(
                path.clone(),
                file.clone(),
                *plain,
                *rotate_bytes,
                *rotate_keep,
            )),
            OutputKind::Http(h) => Sink::Http(http::HttpOut::new(h.clone())),
            OutputKind::Forward {
                host,
                port,
                tag,
                shared_key,
                self_hostname,
                require_ack,
            } => Sink::Forward(forward::ForwardOut::new(
                format!("{host}:{port}"),
                tag.clone(),
                shared_key.clone(),
                self_hostname.clone(),
                *require_ack,
            )),
            OutputKind::Loki {
                host,
                port,
                uri,
                labels,
                tenant_id,
            } => Sink::Loki(loki::LokiOut::new(
                host,
                *port,
                uri,
                labels.clone(),
                tenant_id.clone(),
            )),
            OutputKind::Null => Sink::Null,
        }
    }

    async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        match self {
            Sink::Stdout { json_lines, count } => {
                let out = stdout_text(batches, *json_lines, count)?;
                let mut stdout = tokio::io::stdout();
                stdout.write_all(&out).await?;
                stdout.flush().await?;
                Ok(())
            }
            Sink::File(f) => f.send(batches).await,
            Sink::Http(h) => h.send(batches).await,
            Sink::Forward(f) => f.send(batches).await,
            Sink::Loki(l) => l.send(batches).await,
            Sink::Null => Ok(()),
        }
    }
}

/// The `stdout` output's text: Fluent Bit's `[n] tag: [time, {record}]`, or JSON lines with `date`.
fn stdout_text(batches: &[Batch], json_lines: bool, count: &mut u64) -> Result<Vec<u8>, MpError> {
    let mut out = Vec::new();
    for b in batches {
        format::each_record(b, |t, rec| {
            if json_lines {
                format::record_json(
                    &mut out,
                    t,
                    rec,
                    Some(("date", crate::config::DateFormat::Double)),
                )?;
            } else {
                out.extend_from_slice(format!("[{count}] {}: [", b.tag).as_bytes());
                crate::msgpack::write_json_f64(&mut out, t.as_f64());
                out.extend_from_slice(b", ");
                format::record_json(&mut out, t, rec, None)?;
                out.push(b']');
                *count += 1;
            }
            out.push(b'\n');
            Ok(())
        })?;
    }
    Ok(out)
}

/// A running output.
pub struct OutputTask {
    pub cfg: OutputConfig,
    pub reader: BufReader,
    pub sink: Sink,
    pub metrics: Metrics,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

struct Gathered {
    batches: Vec<Batch>,
    records: usize,
    bytes: usize,
    end: Pos,
}

// === impl OutputTask ===

impl OutputTask {
    /// Delivers until `drain` turns true and everything buffered is delivered (the router bounds that by `Grace`).
    pub async fn run(mut self, mut drain: watch::Receiver<bool>) -> Result<(), BufferError> {
        let mut committed = self.reader.read_pos();
        loop {
            tokio::select! {
                r = self.reader.wait() => r?,
                _ = crate::signalled(&mut drain) => {
                    if !self.reader.has_data() {
                        return Ok(());
                    }
                }
            }
            let g = match self.gather(&mut drain).await {
                Ok(g) => g,
                Err(BufferError::Closed) => return Err(BufferError::Closed),
                Err(e) => {
                    // e.g. a segment unreadable for a moment: try again rather than stop the output
                    error!(output = %self.cfg.name, error = %e, "cannot read the buffer; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = crate::signalled(&mut drain) => return Err(e),
                    }
                    continue;
                }
            };
            if !g.batches.is_empty() && !self.deliver(&g, &mut drain).await {
                return Ok(());
            }
            self.reader.recycle(g.batches);
            if g.end != committed {
                match self.reader.commit(g.end) {
                    Ok(()) => committed = g.end,
                    // the next commit carries the position; a stale cursor only means duplicates
                    Err(e) => {
                        warn!(output = %self.cfg.name, error = %e, "cannot persist the output cursor")
                    }
                }
            }
        }
    }

    async fn gather(&mut self, drain: &mut watch::Receiver<bool>) -> Result<Gathered, BufferError> {
        let b = self.cfg.batch;
        let deadline = Instant::now() + b.flush;
        let mut g = Gathered {
            batches: Vec::new(),
            records: 0,
            bytes: 0,
            end: self.reader.read_pos(),
        };
        loop {
            let want = b.max_bytes.saturating_sub(g.bytes).max(1);
            let got = match self.reader.read(want).await {
                Ok(got) => got,
                // deliver what was read before the error; the error comes back on the next read
                Err(e) if !g.batches.is_empty() => {
                    warn!(output = %self.cfg.name, error = %e, "buffer read failed after a partial batch");
                    return Ok(g);
                }
                Err(e) => return Err(e),
            };
            for (batch, pos) in got {
                g.end = pos;
                if self.cfg.matcher.matches(&batch.tag) {
                    g.records += batch.count as usize;
                    g.bytes += batch.entries.len();
                    g.batches.push(batch);
                }
            }
            if g.records >= b.max_records || g.bytes >= b.max_bytes || *drain.borrow() {
                return Ok(g);
            }
            if g.batches.is_empty() && !self.reader.has_data() {
                // nothing of ours yet: only skipped other tags; don't hold the cursor back
                return Ok(g);
            }
            tokio::select! {
                r = self.reader.wait() => r?,
                _ = tokio::time::sleep_until(deadline) => return Ok(g),
                _ = crate::signalled(drain) => return Ok(g),
            }
        }
    }

    /// Sends with retries; `false` when stopped before delivery (the cursor must not move).
    async fn deliver(&mut self, g: &Gathered, drain: &mut watch::Receiver<bool>) -> bool {
        let label = [self.cfg.name.as_str()];
        let mut attempt: u32 = 0;
        loop {
            match self.sink.send(&g.batches).await {
                Ok(()) => {
                    self.metrics
                        .output_records
                        .with_label_values(&label)
                        .inc_by(g.records as u64);
                    self.metrics
                        .output_bytes
                        .with_label_values(&label)
                        .inc_by(g.bytes as u64);
                    return true;
                }
                Err(e) => {
                    self.metrics.output_errors.with_label_values(&label).inc();
                    if self.cfg.retry_limit.is_some_and(|l| attempt >= l) {
                        error!(output = %self.cfg.name, error = %e, records = g.records, attempts = attempt + 1, "retry limit reached; records dropped");
                        self.metrics
                            .output_dropped
                            .with_label_values(&label)
                            .inc_by(g.records as u64);
                        return true;
                    }
                    attempt += 1;
                    self.metrics.output_retries.with_label_values(&label).inc();
                    let wait = backoff(self.retry_base, self.retry_cap, attempt);
                    warn!(output = %self.cfg.name, error = %e, attempt, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::signalled(drain) => return false,
                    }
                }
            }
        }
    }
}

/// Fluent Bit's scheduler: a random wait in `[base, min(cap, base * 2^attempt)]`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let hi = base
        .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
        .min(cap)
        .max(base);
    let lo = base.min(hi);
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).as_micros() as u64;
    lo + Duration::from_micros(rand::rng().random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_formats() {
        let mut entries = Vec::new();
        for i in 0..2u64 {
            crate::msgpack::write_array_len(&mut entries, 2);
            crate::msgpack::write_uint(&mut entries, 1_700_000_000 + i);
            crate::msgpack::write_map_len(&mut entries, 1);
            crate::msgpack::write_str(&mut entries, "log");
            crate::msgpack::write_str(&mut entries, "hi");
        }
        let b = Batch {
            tag: "app".into(),
            count: 2,
            entries,
        };
        let mut n = 0;
        let text = stdout_text(std::slice::from_ref(&b), false, &mut n).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "[0] app: [1700000000.0, {\"log\":\"hi\"}]\n[1] app: [1700000001.0, {\"log\":\"hi\"}]\n"
        );
        let text = stdout_text(&[b], true, &mut n).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "{\"date\":1700000000.0,\"log\":\"hi\"}\n{\"date\":1700000001.0,\"log\":\"hi\"}\n"
        );
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..40 {
            let w = backoff(base, cap, attempt);
            assert!(w >= base && w <= cap, "{attempt}: {w:?}");
            let ceiling = base.saturating_mul(1 << attempt.min(30)).min(cap);
            assert!(w <= ceiling);
        }
    }
}
