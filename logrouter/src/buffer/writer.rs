//! The buffer's single writer thread: startup recovery, group-committed appends, segment rolls, limits and deletion.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::{BufferError, BufferOptions, Cmd, Cursors, Pos, Recovery, segment};
use crate::metrics::Metrics;
use crate::spares::Spares;

/// Segment state recovered from disk.
pub(super) struct State {
    segments: BTreeMap<u64, u64>,
    cur_id: u64,
    oldest: Arc<AtomicU64>,
}

impl State {
    pub(super) fn committed(&self) -> Pos {
        Pos {
            seg: self.cur_id,
            off: 0,
        }
    }

    pub(super) fn oldest_handle(&self) -> Arc<AtomicU64> {
        self.oldest.clone()
    }
}

pub(super) struct Writer {
    segments: BTreeMap<u64, u64>,
    cur_id: u64,
    cur: Option<File>,
    cur_len: u64,
    total: u64,
    oldest: Arc<AtomicU64>,
    pending: VecDeque<Pending>,
    opts: Arc<BufferOptions>,
    cursors: Cursors,
    committed: watch::Sender<Pos>,
    metrics: Metrics,
    blocked: bool,
    spares: Spares,
}

struct Pending {
    head: Vec<u8>,
    entries: bytes::Bytes,
    sync: bool,
    reply: oneshot::Sender<Result<(), BufferError>>,
    /// In-flight permits, given back once the frame is written (or failed): the entries
    /// waiting here while the disk is full stay counted.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pending {
    fn len(&self) -> usize {
        self.head.len() + self.entries.len()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_owned(),
        source,
    }
}

// === impl Writer ===

impl Writer {
    /// Scans every segment; truncates a torn or corrupt tail (reporting it); new writes go to a new segment.
    pub(super) fn recover(
        opts: &BufferOptions,
        metrics: &Metrics,
    ) -> Result<(State, Recovery), BufferError> {
        let ids = segment::list(&opts.dir).map_err(io_err(&opts.dir))?;
        let mut rec = Recovery::default();
        let mut segments = BTreeMap::new();
        for id in &ids {
            let path = segment::path(&opts.dir, *id);
            let scan = segment::scan(&path).map_err(io_err(&path))?;
            if scan.valid_len < scan.file_len {
                let lost = scan.file_len - scan.valid_len;
                warn!(
                    segment = %path.display(),
                    valid_bytes = scan.valid_len,
                    skipped_bytes = lost,
                    "buffer segment has a torn or corrupt tail; truncating it"
                );
                metrics.buffer_corrupt.inc();
                rec.corrupt_bytes += lost;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(scan.valid_len).map_err(io_err(&path))?;
                if opts.durable {
                    f.sync_all().map_err(io_err(&path))?;
                }
            }
            rec.segments += 1;
            rec.records += scan.records;
            segments.insert(*id, scan.valid_len);
        }
        let cur_id = ids.last().map_or(1, |l| l + 1);
        let oldest = Arc::new(AtomicU64::new(ids.first().copied().unwrap_or(cur_id)));
        if rec.segments > 0 {
            info!(
                segments = rec.segments,
                records = rec.records,
                "buffer recovered"
            );
        }
        Ok((
            State {
                segments,
                cur_id,
                oldest,
            },
            rec,
        ))
    }

    pub(super) fn new(
        state: State,
        opts: Arc<BufferOptions>,
        cursors: Cursors,
        committed: watch::Sender<Pos>,
        metrics: Metrics,
        spares: Spares,
    ) -> Self {
        let total = state.segments.values().sum();
        Self {
            segments: state.segments,
            cur_id: state.cur_id,
            cur: None,
            cur_len: 0,
            total,
            oldest: state.oldest,
            pending: VecDeque::new(),
            opts,
            cursors,
            committed,
            metrics,
            blocked: false,
            spares,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut replies = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut gc = false;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append {
                        head,
                        entries,
                        sync,
                        _permit,
                        reply,
                    } => self.pending.push_back(Pending {
                        head,
                        entries,
                        sync,
                        reply,
                        _permit,
                    }),
                    Cmd::Gc => gc = true,
                }
                taken += 1;
                if taken < 512 {
                    next = rx.try_recv().ok();
                }
            }
            if gc || (!self.pending.is_empty() && !self.fits(self.pending[0].len())) {
                self.gc();
            }
            let mut need_sync = false;
            while let Some(p) = self.pending.front() {
                if !self.fits(p.len()) {
                    if !self.blocked {
                        self.blocked = true;
                        self.metrics.buffer_blocked.inc();
                        warn!(
                            total_bytes = self.total,
                            limit = self.opts.max_bytes,
                            "buffer full; holding inputs back"
                        );
                    }
                    break;
                }
                self.blocked = false;
                let Some(p) = self.pending.pop_front() else {
                    break;
                };
                let written = self.write(&p.head, &p.entries, need_sync);
                let Pending {
                    entries,
                    sync,
                    reply,
                    ..
                } = p;
                self.spares.give_bytes(entries);
                match written {
                    Ok(()) => {
                        need_sync |= sync || (self.opts.sync_always && self.opts.durable);
                        replies.push(reply);
                    }
                    Err(e) => {
                        error!(error = %e, "buffer append failed");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            let mut result_ok = true;
            if need_sync
                && let Some(f) = self.cur.as_ref()
                && let Err(e) = f.sync_data()
            {
                error!(error = %e, "buffer fsync failed");
                result_ok = false;
            }
            self.committed.send_replace(Pos {
                seg: self.cur_id,
                off: self.cur_len,
            });
            for r in replies.drain(..) {
                let _ = r.send(if result_ok {
                    Ok(())
                } else {
                    Err(BufferError::Io {
                        path: self.opts.dir.clone(),
                        source: std::io::Error::other("fsync failed"),
                    })
                });
            }
            self.update_gauges();
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.opts.max_bytes == 0 || self.total + len as u64 <= self.opts.max_bytes
    }

    /// Writes one frame given as its head and its entries.
    fn write(&mut self, head: &[u8], entries: &[u8], sync_old: bool) -> Result<(), BufferError> {
        let len = (head.len() + entries.len()) as u64;
        if self.cur.is_some() && self.cur_len > 0 && self.cur_len + len > self.opts.segment_bytes {
            if sync_old && let Some(f) = self.cur.as_ref() {
                let path = segment::path(&self.opts.dir, self.cur_id);
                f.sync_data().map_err(io_err(&path))?;
            }
            self.roll();
        }
        if self.cur.is_none() {
            let path = segment::path(&self.opts.dir, self.cur_id);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if self.opts.durable {
                File::open(&self.opts.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&self.opts.dir))?;
            }
            self.cur = Some(f);
            self.segments.insert(self.cur_id, 0);
        }
        let path = segment::path(&self.opts.dir, self.cur_id);
        let Some(f) = self.cur.as_mut() else {
            return Err(BufferError::Closed);
        };
        if let Err(e) = f.write_all(head).and_then(|()| f.write_all(entries)) {
            // leave no partial frame behind for readers: cut back to the last good frame
            let _ = f.set_len(self.cur_len);
            return Err(io_err(&path)(e));
        }
        self.cur_len += len;
        self.total += len;
        self.segments.insert(self.cur_id, self.cur_len);
        Ok(())
    }

    fn roll(&mut self) {
        self.cur = None;
        self.cur_id += 1;
        self.cur_len = 0;
    }

    /// Deletes segments every output has passed; rolls the current one when all have read it.
    fn gc(&mut self) {
        let cursors: Vec<(String, Pos)> = match self.cursors.lock() {
            Ok(c) => c.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => return,
        };
        let end = Pos {
            seg: self.cur_id,
            off: self.cur_len,
        };
        // a cursor at the very end of a closed segment has passed it
        let norm = |p: Pos| match self.segments.get(&p.seg) {
            Some(len) if p.seg < self.cur_id && p.off >= *len => Pos {
                seg: p.seg + 1,
                off: 0,
            },
            _ => p,
        };
        let min = cursors.iter().map(|(_, p)| norm(*p)).min().unwrap_or(end);
        let caught_up = min >= end;
        if caught_up && self.cur_len > 0 {
            self.roll();
        }
        let min_seg = if caught_up {
            self.cur_id
        } else {
            min.seg.min(self.cur_id)
        };
        let doomed: Vec<u64> = self.segments.range(..min_seg).map(|(id, _)| *id).collect();
        for id in doomed {
            let path = segment::path(&self.opts.dir, id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = %path.display(), error = %e, "cannot delete buffer segment");
                    continue;
                }
            }
            if let Some(len) = self.segments.remove(&id) {
                self.total = self.total.saturating_sub(len);
            }
        }
        let oldest = self.segments.keys().next().copied().unwrap_or(self.cur_id);
        self.oldest.store(oldest, Ordering::Release);
        for (id, p) in cursors {
            let lag: u64 = self
                .segments
                .range(p.seg..)
                .map(|(_, len)| *len)
                .sum::<u64>()
                .saturating_sub(if self.segments.contains_key(&p.seg) {
                    p.off
                } else {
                    0
                });
            self.metrics
                .output_lag_bytes
                .with_label_values(&[id.as_str()])
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .buffer_bytes
            .set(i64::try_from(self.total).unwrap_or(i64::MAX));
        self.metrics
            .buffer_segments
            .set(i64::try_from(self.segments.len()).unwrap_or(i64::MAX));
    }
}
