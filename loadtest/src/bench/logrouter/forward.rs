//! A Fluent Forward client: PackedForward messages of numbered records, `chunk` acks, a window of chunks per connection.
//!
//! Each record is `[EventTime, {"bench_seq": N, "log": "…"}]` with `N`
//! unique across a run, so the crash benchmark can find every record in the
//! output files. A batch is encoded once and only its sequence numbers are
//! patched in place (they are fixed-width `uint64`s), so the client spends
//! its core on sending, not on encoding. A connection keeps up to `window`
//! chunks unacknowledged; a record counts as delivered when its chunk's ack
//! arrives.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The tag of every message.
pub const TAG: &str = "bench.app";
/// The record field holding the sequence number.
pub const SEQ_KEY: &str = "bench_seq";
/// Bytes of an entry around its `log` text.
const ENTRY_OVERHEAD: usize = 37;
/// Where the `uint64` sequence number sits inside an entry.
const SEQ_OFFSET: usize = 23;
/// Pause between connection attempts while the router is away.
const RECONNECT_DELAY: Duration = Duration::from_millis(10);

/// A batch of `count` entries of `record_bytes` each, and where each one's sequence number is.
#[derive(Clone, Debug)]
pub struct Batch {
    pub entries: Vec<u8>,
    pub count: usize,
    record_bytes: usize,
}

// === impl Batch ===

impl Batch {
    /// `count` entries of `record_bytes` bytes (at least 38, at most 292), all at `time`
    /// (seconds, nanoseconds), numbered from 0.
    pub fn new(count: usize, record_bytes: usize, time: (u32, u32)) -> Batch {
        let text_len = record_bytes.saturating_sub(ENTRY_OVERHEAD).clamp(1, 255);
        let record_bytes = ENTRY_OVERHEAD + text_len;
        let mut entries = Vec::with_capacity(count * record_bytes);
        for _ in 0..count {
            entries.push(0x92);
            entries.extend_from_slice(&[0xd7, 0x00]);
            entries.extend_from_slice(&time.0.to_be_bytes());
            entries.extend_from_slice(&time.1.to_be_bytes());
            entries.push(0x82);
            entries.push(0xa0 | 9);
            entries.extend_from_slice(SEQ_KEY.as_bytes());
            entries.push(0xcf);
            entries.extend_from_slice(&0u64.to_be_bytes());
            entries.push(0xa3);
            entries.extend_from_slice(b"log");
            entries.push(0xd9);
            entries.push(u8::try_from(text_len).unwrap_or(u8::MAX));
            entries.extend((0..text_len).map(|i| b"abcdefghijklmnopqrstuvwxyz "[i % 27]));
        }
        debug_assert_eq!(entries.len(), count * record_bytes);
        Batch {
            entries,
            count,
            record_bytes,
        }
    }

    /// The size of one encoded entry.
    pub fn record_bytes(&self) -> usize {
        self.record_bytes
    }

    /// Numbers the entries `first`, `first + 1`, …
    pub fn number_from(&mut self, first: u64) {
        for (i, entry) in self.entries.chunks_exact_mut(self.record_bytes).enumerate() {
            let seq = first + u64::try_from(i).unwrap_or(0);
            entry[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&seq.to_be_bytes());
        }
    }
}

/// The chunk id of the batch whose first record is `first`: 24 characters, unique in a run.
pub fn chunk_id(first: u64) -> String {
    format!("{first:024x}")
}

/// `[tag, bin(entries), {"chunk": id, "size": count}]` into `out` (cleared first).
pub fn encode_message(out: &mut Vec<u8>, tag: &str, batch: &Batch, chunk: &str) {
    out.clear();
    out.push(0x93);
    push_str(out, tag);
    out.push(0xc6);
    out.extend_from_slice(
        &u32::try_from(batch.entries.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&batch.entries);
    out.push(0x82);
    push_str(out, "chunk");
    push_str(out, chunk);
    push_str(out, "size");
    out.push(0xce);
    out.extend_from_slice(&u32::try_from(batch.count).unwrap_or(u32::MAX).to_be_bytes());
}

fn push_str(out: &mut Vec<u8>, text: &str) {
    let length = text.len().min(255);
    if length < 32 {
        out.push(0xa0 | u8::try_from(length).unwrap_or(31));
    } else {
        out.push(0xd9);
        out.push(u8::try_from(length).unwrap_or(u8::MAX));
    }
    out.extend_from_slice(&text.as_bytes()[..length]);
}

/// Takes every complete `{"ack": id}` off the front of `buffer`, leaving an incomplete tail.
pub fn take_acks(buffer: &mut Vec<u8>) -> Result<Vec<String>, String> {
    let mut acks = Vec::new();
    let mut consumed = 0;
    while consumed < buffer.len() {
        let mut cursor = Cursor::new(&buffer[consumed..]);
        match rmpv::decode::read_value(&mut cursor) {
            Ok(value) => {
                let ack = value.as_map().and_then(|map| {
                    map.iter()
                        .find(|(key, _)| key.as_str() == Some("ack"))
                        .and_then(|(_, id)| id.as_str().map(str::to_string))
                });
                let Some(ack) = ack else {
                    return Err(format!("the router sent {value}, not an ack"));
                };
                acks.push(ack);
                consumed += usize::try_from(cursor.position()).unwrap_or(buffer.len());
            }
            Err(
                rmpv::decode::Error::InvalidMarkerRead(error)
                | rmpv::decode::Error::InvalidDataRead(error),
            ) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(format!("undecodable answer from the router: {error}")),
        }
    }
    buffer.drain(..consumed);
    Ok(acks)
}

/// How to load a router.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Chunks in flight per connection.
    pub window: usize,
    pub batch: usize,
    pub record_bytes: usize,
    /// Sending stops after this long (outstanding chunks then get `ack_timeout` to be acked).
    pub duration: Duration,
    /// Sending also stops once this many records have been numbered.
    pub max_records: u64,
    pub ack_timeout: Duration,
    /// Connect again after a failed connection (the crash run), until `duration` ends.
    pub reconnect: bool,
    /// Records per second over all connections; `None` sends as fast as acks allow. The crash
    /// run paces itself so that the kill lands mid-stream.
    pub rate: Option<f64>,
}

/// What a run delivered.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent_records: u64,
    pub acked_records: u64,
    /// `(first sequence number, count)` of every acknowledged chunk.
    pub acked: Vec<(u64, u32)>,
    pub connection_failures: u64,
    pub first_error: Option<String>,
    /// From the start to the last ack.
    pub elapsed: Duration,
    /// Sequence numbers handed out: every record of the run is below this.
    pub numbered: u64,
}

// === impl Tally ===

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent_records += other.sent_records;
        self.acked_records += other.acked_records;
        self.acked.extend(other.acked);
        self.connection_failures += other.connection_failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    /// Acked records per second over the run.
    #[allow(clippy::cast_precision_loss)]
    pub fn records_per_second(&self) -> f64 {
        self.acked_records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends as described by `opts`, from `connections` connections; what was acked.
pub async fn run(opts: ClientOptions) -> Tally {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let time = (
        u32::try_from(now.as_secs()).unwrap_or(u32::MAX),
        now.subsec_nanos(),
    );
    let template = Batch::new(opts.batch.max(1), opts.record_bytes, time);
    let next = Arc::new(AtomicU64::new(0));
    let opts = Arc::new(opts);
    let started = Instant::now();
    let stop_at = started + opts.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..opts.connections.max(1) {
        let (opts, batch, next) = (opts.clone(), template.clone(), next.clone());
        tasks.spawn(connection(opts, batch, next, started, stop_at));
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(connection) => tally.merge(connection),
            Err(error) => {
                tally.connection_failures += 1;
                tally.first_error.get_or_insert(error.to_string());
            }
        }
    }
    tally.numbered = next.load(Ordering::Relaxed).min(opts.max_records);
    tally
}

/// One connection's life: connect, keep `window` chunks in flight, reconnect if asked to.
async fn connection(
    opts: Arc<ClientOptions>,
    mut batch: Batch,
    next: Arc<AtomicU64>,
    started: Instant,
    stop_at: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let count = u64::try_from(batch.count).unwrap_or(1);
    let mut message = Vec::with_capacity(batch.entries.len() + 64);
    let mut buffer = Vec::with_capacity(4096);
    let mut exhausted = false;
    // Each connection sends its share of the rate: one batch per `interval`.
    let interval = opts
        .rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(count as f64 * opts.connections.max(1) as f64 / rate));
    let mut next_due = started;
    loop {
        if Instant::now() >= stop_at || exhausted {
            break;
        }
        let mut stream = match TcpStream::connect(opts.addr).await {
            Ok(stream) => stream,
            Err(error) => {
                tally.connection_failures += 1;
                tally.first_error.get_or_insert(format!("connect: {error}"));
                if !opts.reconnect {
                    break;
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        buffer.clear();
        let mut outstanding: HashMap<String, u64> = HashMap::with_capacity(opts.window);
        let failure = 'connection: loop {
            while outstanding.len() < opts.window.max(1) && Instant::now() < stop_at && !exhausted {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next_due).await;
                    next_due += interval;
                }
                let first = next.fetch_add(count, Ordering::Relaxed);
                if first + count > opts.max_records {
                    exhausted = true;
                    break;
                }
                batch.number_from(first);
                let chunk = chunk_id(first);
                encode_message(&mut message, TAG, &batch, &chunk);
                match tokio::time::timeout(opts.ack_timeout, stream.write_all(&message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => break 'connection Some(format!("send: {error}")),
                    Err(_) => {
                        break 'connection Some(format!(
                            "the router read nothing for {} s",
                            opts.ack_timeout.as_secs()
                        ));
                    }
                }
                tally.sent_records += count;
                outstanding.insert(chunk, first);
            }
            if outstanding.is_empty() {
                break None;
            }
            let read = tokio::time::timeout(opts.ack_timeout, stream.read_buf(&mut buffer)).await;
            match read {
                Err(_) => break Some(format!("no ack within {} s", opts.ack_timeout.as_secs())),
                Ok(Err(error)) => break Some(format!("read: {error}")),
                Ok(Ok(0)) => break Some("the router closed the connection".to_string()),
                Ok(Ok(_)) => match take_acks(&mut buffer) {
                    Ok(acks) => {
                        for ack in acks {
                            if let Some(first) = outstanding.remove(&ack) {
                                tally.acked.push((first, u32::try_from(count).unwrap_or(0)));
                                tally.acked_records += count;
                                tally.elapsed = started.elapsed();
                            }
                        }
                    }
                    Err(error) => break Some(error),
                },
            }
        };
        match failure {
            None => break,
            Some(reason) => {
                tally.connection_failures += 1;
                tally.first_error.get_or_insert(reason);
                if !opts.reconnect {
                    break;
                }
            }
        }
    }
    tally
}
