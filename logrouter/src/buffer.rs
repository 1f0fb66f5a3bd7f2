//! Durable filesystem buffer: one append-only log of CRC-checked segments, one persisted cursor per output.
//!
//! Why one log and many cursors rather than a queue per output: a record is written once however
//! many outputs match it, and a slow output only holds disk, never memory or the other outputs.
//! Appends go to a single writer thread that groups them, so one `fsync` covers every client
//! waiting for a `chunk` ack at that moment (group commit). A segment is deleted once every
//! output's cursor has moved past it; when the disk limit is reached the writer holds appends
//! back, which holds the input connections back (no ack, no reads): back-pressure, not loss.

mod reader;
mod segment;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub use reader::BufReader;
pub use segment::Batch;

use crate::metrics::Metrics;
use crate::spares::Spares;

/// Default segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Default bound on bytes queued for the writer (memory, not disk).
pub const DEFAULT_IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;

/// Errors of the buffer.
#[derive(Debug, Error)]
pub enum BufferError {
    #[error("buffer i/o on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("batch of {0} bytes exceeds the buffer size limit")]
    TooLarge(usize),
    #[error("buffer writer stopped")]
    Closed,
}

/// How the buffer is laid out and bounded.
#[derive(Debug, Clone)]
pub struct BufferOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Disk limit (0: none).
    pub max_bytes: u64,
    /// fsync after every append, not only those awaiting a `chunk` ack (`storage.sync full`).
    pub sync_always: bool,
    /// fsync at all (false for `storage.type memory`: a private scratch directory).
    pub durable: bool,
    pub in_flight_bytes: usize,
}

/// A position in the log: segment id and byte offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

/// What the startup scan found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    pub segments: u64,
    pub records: u64,
    pub corrupt_bytes: u64,
}

pub(crate) enum Cmd {
    Append {
        /// The frame's header, tag and count, then its entries as handed in (no copy).
        head: Vec<u8>,
        entries: bytes::Bytes,
        sync: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
        reply: oneshot::Sender<Result<(), BufferError>>,
    },
    Gc,
}

pub(crate) type Cursors = Arc<Mutex<HashMap<String, Pos>>>;

/// Handle for appending and for opening output readers. Cheap to clone.
#[derive(Clone)]
pub struct Buffer {
    tx: mpsc::Sender<Cmd>,
    budget: Arc<Semaphore>,
    budget_max: usize,
    committed: watch::Receiver<Pos>,
    oldest: Arc<std::sync::atomic::AtomicU64>,
    cursors: Cursors,
    opts: Arc<BufferOptions>,
    metrics: Metrics,
    /// Entries' memory, given back by the writer once written and by readers once delivered.
    spares: Spares,
}

// === impl Buffer ===

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("dir", &self.opts.dir)
            .finish()
    }
}

impl Buffer {
    /// Opens (recovering) the buffer in `opts.dir` and starts its writer thread.
    pub fn open(opts: BufferOptions, metrics: Metrics) -> Result<(Buffer, Recovery), BufferError> {
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| BufferError::Io { path, source }
        };
        std::fs::create_dir_all(opts.dir.join("cursors")).map_err(io(&opts.dir))?;
        let (state, recovery) = writer::Writer::recover(&opts, &metrics)?;
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed) = watch::channel(state.committed());
        let cursors: Cursors = Arc::default();
        let oldest = state.oldest_handle();
        let budget_max = opts.in_flight_bytes.max(1024);
        let opts = Arc::new(opts);
        let spares = Spares::default();
        let w = writer::Writer::new(
            state,
            opts.clone(),
            cursors.clone(),
            committed_tx,
            metrics.clone(),
            spares.clone(),
        );
        std::thread::Builder::new()
            .name("logrouter-buffer".into())
            .spawn(move || w.run(rx))
            .map_err(io(&opts.dir))?;
        Ok((
            Buffer {
                tx,
                budget: Arc::new(Semaphore::new(budget_max)),
                budget_max,
                committed,
                oldest,
                cursors,
                opts,
                metrics,
                spares,
            },
            recovery,
        ))
    }

    /// Appends packed entries under `tag`; returns once written (and fsynced when `sync`).
    /// Waits while the buffer is at its disk limit or too many bytes are in flight; the entries
    /// go to the writer as they are (no copy) once in-flight permits cover them, and are freed
    /// as soon as they are written.
    pub async fn append(
        &self,
        tag: &str,
        count: u32,
        entries: impl Into<bytes::Bytes>,
        sync: bool,
    ) -> Result<(), BufferError> {
        let entries = entries.into();
        let len = segment::encoded_len(tag, entries.len());
        if self.opts.max_bytes > 0 && len as u64 > self.opts.max_bytes {
            return Err(BufferError::TooLarge(len));
        }
        let permits = len.clamp(1, self.budget_max) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| BufferError::Closed)?;
        let head = segment::encode_head(tag, count, &entries);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                head,
                entries,
                sync: sync && self.opts.durable,
                _permit: permit,
                reply,
            })
            .await
            .map_err(|_| BufferError::Closed)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// Opens the reader for output `id`, resuming from its persisted cursor.
    pub fn reader(&self, id: &str) -> Result<BufReader, BufferError> {
        BufReader::open(id, self)
    }

    /// Spare memory for entries on their way to the buffer (see [`crate::spares`]).
    pub fn spares(&self) -> &Spares {
        &self.spares
    }

    /// Position after the last written batch.
    pub fn committed(&self) -> Pos {
        *self.committed.borrow()
    }

    /// Directory of the buffer.
    pub fn dir(&self) -> &std::path::Path {
        &self.opts.dir
    }
}

#[cfg(test)]
mod tests;
