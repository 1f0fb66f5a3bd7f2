//! Line inputs: a container's stdout/stderr pipe (the runner's API), the `tcp` and `stdin` plugins.
//!
//! Lines become `{"log": line, "source": ...}` records (or the fields of a JSON line when asked).
//! A multiline rule joins continuation lines (stack traces) to the last line that matched the
//! start pattern. Between the reader and the buffer sits a queue bounded in bytes: when it is
//! full the policy either blocks the pipe (the writer then blocks in `write(2)`) or drops the
//! oldest queued records, counting each one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tracing::warn;

use super::InputCtx;
use crate::config::DEFAULT_MAX_LINE_BYTES;
use crate::msgpack::{self, EventTime};

/// Which stream of the container a pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stdout,
    Stderr,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// What to do when the queue in front of the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Stop reading the pipe (the container's writes block).
    #[default]
    Block,
    /// Drop the oldest queued records, counting them.
    DropOldest,
}

/// Default bound on queued bytes per line input.
pub const DEFAULT_QUEUE_BYTES: usize = 1024 * 1024;
/// A pending multiline record is emitted after this long without a new line.
pub const DEFAULT_MULTILINE_FLUSH: Duration = Duration::from_millis(500);

/// Options of one line input.
#[derive(Debug, Clone)]
pub struct LineOptions {
    /// Longer lines are split into records of this size.
    pub max_line_bytes: usize,
    /// A line matching this starts a record; others continue the previous one.
    pub multiline_start: Option<Regex>,
    pub multiline_flush: Duration,
    pub policy: FullPolicy,
    pub queue_bytes: usize,
    /// Lines that are JSON objects become their fields (plus `source`).
    pub parse_json: bool,
    pub container_name: Option<String>,
    pub container_id: Option<String>,
}

impl Default for LineOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            multiline_start: None,
            multiline_flush: DEFAULT_MULTILINE_FLUSH,
            policy: FullPolicy::Block,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            parse_json: false,
            container_name: None,
            container_id: None,
        }
    }
}

/// Counts of one fed stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    pub records: u64,
    pub dropped: u64,
}

/// Feeds one pipe into the router.
#[derive(Debug)]
pub struct LineSink {
    ctx: Arc<InputCtx>,
    tag: String,
    source: Option<Source>,
    opts: LineOptions,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
    dropped: u64,
}

struct Shared {
    q: Mutex<Queue>,
    readable: Notify,
    writable: Notify,
}

// === impl LineSink ===

impl LineSink {
    pub(crate) fn new(
        ctx: Arc<InputCtx>,
        tag: String,
        source: Option<Source>,
        opts: LineOptions,
    ) -> Self {
        Self {
            ctx,
            tag,
            source,
            opts,
        }
    }

    /// Reads `reader` to its end; returns when every record is in the buffer.
    pub async fn feed<R: AsyncRead + Unpin>(self, mut reader: R) -> std::io::Result<LineStats> {
        let shared = Arc::new(Shared {
            q: Mutex::new(Queue::default()),
            readable: Notify::new(),
            writable: Notify::new(),
        });
        let mut extra = Vec::new();
        if let Some(s) = self.source {
            extra.push(("source".to_owned(), s.as_str().to_owned()));
        }
        if let Some(n) = &self.opts.container_name {
            extra.push(("container_name".to_owned(), n.clone()));
        }
        if let Some(i) = &self.opts.container_id {
            extra.push(("container_id".to_owned(), i.clone()));
        }
        let sender = tokio::spawn(send_loop(
            shared.clone(),
            self.ctx.clone(),
            self.tag.clone(),
            extra,
        ));
        let mut lines = Lines::new(&self.opts);
        let mut stats = LineStats::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let result = loop {
            let read = if lines.pending.is_some() {
                match tokio::time::timeout(self.opts.multiline_flush, reader.read(&mut chunk)).await
                {
                    Ok(r) => r,
                    Err(_) => {
                        if let Some(rec) = lines.flush() {
                            self.push(&shared, rec, &mut stats).await;
                        }
                        continue;
                    }
                }
            } else {
                reader.read(&mut chunk).await
            };
            let n = match read {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            for rec in lines.push(&chunk[..n]) {
                self.push(&shared, rec, &mut stats).await;
            }
        };
        for rec in lines.finish() {
            self.push(&shared, rec, &mut stats).await;
        }
        if let Ok(mut q) = shared.q.lock() {
            q.closed = true;
            stats.dropped = q.dropped;
        }
        shared.readable.notify_one();
        let _ = sender.await;
        result.map(|()| stats)
    }

    async fn push(&self, shared: &Shared, line: Vec<u8>, stats: &mut LineStats) {
        let entry = self.entry(&line);
        stats.records += 1;
        loop {
            let wait = {
                let Ok(mut q) = shared.q.lock() else { return };
                let fits = q.bytes + entry.len() <= self.opts.queue_bytes || q.entries.is_empty();
                if fits {
                    q.bytes += entry.len();
                    q.entries.push_back(entry);
                    break;
                }
                match self.opts.policy {
                    FullPolicy::DropOldest => {
                        let mut dropped = 0u64;
                        while q.bytes + entry.len() > self.opts.queue_bytes {
                            let Some(old) = q.entries.pop_front() else {
                                break;
                            };
                            q.bytes -= old.len();
                            dropped += 1;
                        }
                        q.dropped += dropped;
                        self.ctx
                            .metrics
                            .input_dropped
                            .with_label_values(&[self.ctx.name.as_str()])
                            .inc_by(dropped);
                        q.bytes += entry.len();
                        q.entries.push_back(entry);
                        break;
                    }
                    FullPolicy::Block => shared.writable.notified(),
                }
            };
            shared.readable.notify_one();
            wait.await;
        }
        shared.readable.notify_one();
    }

    fn entry(&self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + 32);
        msgpack::write_array_len(&mut out, 2);
        msgpack::write_event_time(&mut out, EventTime::now());
        if self.opts.parse_json
            && line.first() == Some(&b'{')
            && let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(line)
        {
            let start = out.len();
            msgpack::write_from_json(&mut out, &serde_json::Value::Object(map));
            // nested deeper than outputs encode: keep the line as text instead
            if msgpack::Reader::new(&out[start..])
                .skip_bounded(msgpack::MAX_DEPTH - 1)
                .is_ok()
            {
                return out;
            }
            out.truncate(start);
        }
        msgpack::write_map_len(&mut out, 1);
        msgpack::write_str(&mut out, "log");
        msgpack::write_str(&mut out, &String::from_utf8_lossy(line));
        out
    }
}

async fn send_loop(
    shared: Arc<Shared>,
    ctx: Arc<InputCtx>,
    tag: String,
    extra: Vec<(String, String)>,
) {
    loop {
        let (batch, count, closed) = {
            let Ok(mut q) = shared.q.lock() else { return };
            let mut batch = Vec::new();
            let mut count = 0u32;
            while batch.len() < 1024 * 1024 {
                let Some(e) = q.entries.pop_front() else {
                    break;
                };
                q.bytes -= e.len();
                batch.extend_from_slice(&e);
                count += 1;
            }
            (batch, count, q.closed)
        };
        if count > 0 {
            shared.writable.notify_one();
            if let Err(e) = ctx.ingest(&tag, batch.into(), count, &extra, false).await {
                warn!(input = %ctx.name, error = %e, records = count, "line records could not be buffered");
            }
            continue;
        }
        if closed {
            return;
        }
        shared.readable.notified().await;
    }
}

/// Splits bytes into lines, joins multiline records and bounds their size.
struct Lines {
    partial: Vec<u8>,
    pending: Option<Vec<u8>>,
    max: usize,
    start: Option<Regex>,
}

impl Lines {
    fn new(opts: &LineOptions) -> Self {
        Self {
            partial: Vec::new(),
            pending: None,
            max: opts.max_line_bytes.max(1),
            start: opts.multiline_start.clone(),
        }
    }

    fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..at]);
            rest = &rest[at + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(line, &mut out);
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= self.max {
            let tail = self.partial.split_off(self.max);
            let head = std::mem::replace(&mut self.partial, tail);
            self.line(head, &mut out);
        }
        out
    }

    fn line(&mut self, line: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        let Some(start) = &self.start else {
            out.push(line);
            return;
        };
        let starts = start.is_match(&String::from_utf8_lossy(&line));
        match self.pending.as_mut() {
            Some(p) if !starts && p.len() + 1 + line.len() <= self.max => {
                p.push(b'\n');
                p.extend_from_slice(&line);
            }
            _ => {
                if let Some(p) = self.pending.replace(line) {
                    out.push(p);
                }
            }
        }
    }

    fn flush(&mut self) -> Option<Vec<u8>> {
        self.pending.take()
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(line, &mut out);
        }
        out.extend(self.pending.take());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(start: Option<&str>, max: usize) -> LineOptions {
        LineOptions {
            max_line_bytes: max,
            multiline_start: start.map(|s| Regex::new(s).unwrap()),
            ..LineOptions::default()
        }
    }

    #[test]
    fn splits_lines_across_reads_and_bounds_size() {
        let mut l = Lines::new(&opts(None, 8));
        assert!(l.push(b"hel").is_empty());
        assert_eq!(
            l.push(b"lo\r\nworld\n"),
            vec![b"hello".to_vec(), b"world".to_vec()]
        );
        assert_eq!(l.push(b"0123456789ab"), vec![b"01234567".to_vec()]);
        assert_eq!(l.finish(), vec![b"89ab".to_vec()]);
    }

    #[test]
    fn multiline_joins_stack_traces() {
        let mut l = Lines::new(&opts(Some(r"^\d{4}-"), 1024));
        let out = l.push(b"2024-01-01 boom\n  at a()\n  at b()\n2024-01-01 next\n");
        assert_eq!(out, vec![b"2024-01-01 boom\n  at a()\n  at b()".to_vec()]);
        assert_eq!(l.finish(), vec![b"2024-01-01 next".to_vec()]);
    }
}
