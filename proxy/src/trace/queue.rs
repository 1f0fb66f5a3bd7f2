//! Finished spans waiting for export, already encoded, and the buffers spans are recorded in.
//!
//! A recorded span is written as OTLP bytes into a buffer of its own (taken from a small pool
//! per thread, so steady traffic allocates nothing), and its end appends those bytes to a
//! *chunk*: the export request's body in the making (see `otlp::Frame`). There is one chunk per
//! runtime worker thread, each behind its own lock, which only that thread and the exporter
//! (once per batch, to swap in an empty chunk) ever take: the request path shares no lock
//! with other workers, sends no message per span and wakes the exporter once per batch. A
//! chunk holding the queue's share of spans takes no more: further spans are dropped and
//! counted until the exporter catches up.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus::IntCounter;
use tokio::sync::Notify;

use super::otlp;

/// Recording buffers a thread keeps for reuse, and the largest it keeps.
const POOL_SIZE: usize = 64;
const POOL_BUFFER_MAX: usize = 4096;
/// A recording buffer's first size: a span with every attribute and a long path fits.
const BUFFER_SIZE: usize = 512;

/// The encoded spans of one worker thread not yet taken by the exporter.
pub(crate) struct Chunk {
    /// `ScopeSpans.spans` entries (`otlp::push_span`).
    pub(crate) bytes: Vec<u8>,
    pub(crate) spans: usize,
}

/// One worker's chunk, alone on its cache lines.
#[repr(align(128))]
struct Shard(Mutex<Chunk>);

pub(crate) struct SpanQueue {
    shards: Box<[Shard]>,
    /// Spans a chunk holds before new ones are dropped.
    per_shard: usize,
    /// Spans per export request.
    batch: usize,
    /// Wakes the exporter when a chunk holds a batch.
    pub(crate) full: Notify,
    dropped: IntCounter,
}

// === impl SpanQueue ===

impl SpanQueue {
    /// A queue of `capacity` spans shared by `workers` threads (each holds its share). Chunks
    /// start empty; the exporter sizes the ones it swaps in like the last it took.
    pub(crate) fn new(workers: usize, capacity: usize, batch: usize, dropped: IntCounter) -> Self {
        let workers = workers.max(1);
        let per_shard = capacity.div_ceil(workers).max(1);
        let batch = batch.clamp(1, per_shard);
        let shards = (0..workers)
            .map(|_| {
                Shard(Mutex::new(Chunk {
                    bytes: Vec::new(),
                    spans: 0,
                }))
            })
            .collect();
        SpanQueue {
            shards,
            per_shard,
            batch,
            full: Notify::new(),
            dropped,
        }
    }

    /// Appends a finished span's bytes to this thread's chunk, or drops (and counts) it when
    /// the chunk is full.
    pub(crate) fn push(&self, span: &[u8]) {
        let shard = &self.shards[thread_index() % self.shards.len()];
        let mut chunk = lock(&shard.0);
        if chunk.spans >= self.per_shard {
            drop(chunk);
            self.dropped.inc();
            return;
        }
        otlp::push_span(&mut chunk.bytes, span);
        chunk.spans += 1;
        if chunk.spans == self.batch {
            drop(chunk);
            self.full.notify_one();
        }
    }

    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Takes shard `i`'s spans, leaving `fresh` in their place; `None` (and `fresh` given
    /// back) when it holds none.
    pub(crate) fn take(&self, i: usize, fresh: Vec<u8>) -> Result<Chunk, Vec<u8>> {
        let mut chunk = lock(&self.shards[i].0);
        if chunk.spans == 0 {
            return Err(fresh);
        }
        Ok(Chunk {
            bytes: std::mem::replace(&mut chunk.bytes, fresh),
            spans: std::mem::take(&mut chunk.spans),
        })
    }

    /// Whether some chunk holds a full batch (the exporter goes on without waiting).
    pub(crate) fn has_batch(&self) -> bool {
        self.shards
            .iter()
            .any(|shard| lock(&shard.0).spans >= self.batch)
    }

    /// Spans per export request.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }
}

/// A lock nobody holds while they could panic; a poisoned one is still consistent.
fn lock(chunk: &Mutex<Chunk>) -> MutexGuard<'_, Chunk> {
    chunk.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's shard number, handed out in turn as threads first record a span.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}

thread_local! {
    /// Recording buffers given back on this thread.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A span's own buffer, from this thread's pool.
pub(crate) fn buffer() -> Vec<u8> {
    POOL.try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
}

/// Gives a span's buffer back to this thread's pool (a huge one, or one too many, is freed).
pub(crate) fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() > POOL_BUFFER_MAX {
        return;
    }
    buf.clear();
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_SIZE {
            pool.push(buf);
        }
    });
}
