//! One output's view of the buffer: reads batches past its cursor and persists the cursor once delivered.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tracing::error;

use super::segment::{self, Batch, Decoded, HEADER, MAX_FRAME};
use super::{BufferError, BufferOptions, Cmd, Cursors, Pos};
use crate::metrics::Metrics;
use crate::spares::Spares;

/// Reader of one output.
pub struct BufReader {
    id: String,
    read_pos: Pos,
    opts: Arc<BufferOptions>,
    committed: watch::Receiver<Pos>,
    oldest: Arc<AtomicU64>,
    cursors: Cursors,
    tx: mpsc::Sender<Cmd>,
    file: Option<(u64, File)>,
    cursor_path: PathBuf,
    metrics: Metrics,
    spares: Spares,
}

// === impl BufReader ===

impl BufReader {
    pub(super) fn open(id: &str, buffer: &super::Buffer) -> Result<Self, BufferError> {
        let opts = buffer.opts.clone();
        let committed = buffer.committed.clone();
        let oldest = buffer.oldest.clone();
        let cursors = buffer.cursors.clone();
        let tx = buffer.tx.clone();
        let metrics = buffer.metrics.clone();
        let spares = buffer.spares.clone();
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let cursor_path = opts.dir.join("cursors").join(format!("{safe}.cursor"));
        let first = Pos {
            seg: oldest.load(Ordering::Acquire),
            off: 0,
        };
        let saved = std::fs::read_to_string(&cursor_path).ok().and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some(Pos {
                seg: it.next()??,
                off: it.next()??,
            })
        });
        let pos = saved.map_or(first, |p| if p.seg < first.seg { first } else { p });
        if let Ok(mut c) = cursors.lock() {
            c.insert(id.to_owned(), pos);
        }
        Ok(Self {
            id: id.to_owned(),
            read_pos: pos,
            opts,
            committed,
            oldest,
            cursors,
            tx,
            file: None,
            cursor_path,
            metrics,
            spares,
        })
    }

    /// Position after the last batch read.
    pub fn read_pos(&self) -> Pos {
        self.read_pos
    }

    /// Whether batches are waiting past the read position.
    pub fn has_data(&self) -> bool {
        *self.committed.borrow() > self.read_pos
    }

    /// Waits until data is available past the read position (or the writer stopped).
    pub async fn wait(&mut self) -> Result<(), BufferError> {
        let pos = self.read_pos;
        self.committed
            .wait_for(|c| *c > pos)
            .await
            .map(|_| ())
            .map_err(|_| BufferError::Closed)
    }

    /// Reads batches past the read position, up to about `max_bytes`; each with the position after it.
    /// One blocking task reads them all (page-cache reads, off the async threads).
    pub async fn read(&mut self, max_bytes: usize) -> Result<Vec<(Batch, Pos)>, BufferError> {
        let committed = *self.committed.borrow();
        if self.read_pos >= committed {
            return Ok(Vec::new());
        }
        let job = ReadJob {
            dir: self.opts.dir.clone(),
            pos: self.read_pos,
            committed,
            oldest: self.oldest.load(Ordering::Acquire),
            file: self.file.take(),
            max_bytes,
            corrupt: Vec::new(),
            spares: self.spares.clone(),
        };
        let (job, result) = tokio::task::spawn_blocking(move || {
            let mut job = job;
            let r = job.run();
            (job, r)
        })
        .await
        .map_err(|_| BufferError::Closed)?;
        self.read_pos = job.pos;
        self.file = job.file;
        for at in job.corrupt {
            error!(
                output = %self.id,
                segment = at.seg,
                offset = at.off,
                "corrupt buffer frame; skipping the rest of the segment"
            );
            self.metrics.buffer_corrupt.inc();
        }
        result
    }

    /// Gives the memory of batches read (and delivered) back for the next reads.
    pub fn recycle(&self, batches: Vec<Batch>) {
        for b in batches {
            self.spares.give(b.entries);
        }
    }

    /// Persists `pos` as delivered and lets the writer delete what every output has passed.
    pub fn commit(&mut self, pos: Pos) -> Result<(), BufferError> {
        let tmp = self.cursor_path.with_extension("tmp");
        let io = |source| BufferError::Io {
            path: self.cursor_path.clone(),
            source,
        };
        std::fs::write(&tmp, format!("{} {}\n", pos.seg, pos.off)).map_err(io)?;
        std::fs::rename(&tmp, &self.cursor_path).map_err(io)?;
        if let Ok(mut c) = self.cursors.lock() {
            c.insert(self.id.clone(), pos);
        }
        let _ = self.tx.try_send(Cmd::Gc);
        Ok(())
    }
}

/// One read pass, run on the blocking pool.
struct ReadJob {
    dir: PathBuf,
    pos: Pos,
    committed: Pos,
    oldest: u64,
    file: Option<(u64, File)>,
    max_bytes: usize,
    corrupt: Vec<Pos>,
    spares: Spares,
}

impl ReadJob {
    fn run(&mut self) -> Result<Vec<(Batch, Pos)>, BufferError> {
        let committed = self.committed;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while self.pos < committed && bytes < self.max_bytes {
            let pos = self.pos;
            if self.file.as_ref().is_none_or(|(id, _)| *id != pos.seg) {
                let path = segment::path(&self.dir, pos.seg);
                match File::open(&path) {
                    Ok(f) => self.file = Some((pos.seg, f)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.file = None;
                        if pos.seg >= committed.seg {
                            break;
                        }
                        self.pos = Pos {
                            seg: (pos.seg + 1).max(self.oldest),
                            off: 0,
                        };
                        continue;
                    }
                    Err(source) => return partial(out, BufferError::Io { path, source }),
                }
            }
            let Some((_, file)) = self.file.as_ref() else {
                break;
            };
            let end = if pos.seg == committed.seg {
                committed.off
            } else {
                match file.metadata() {
                    Ok(m) => m.len(),
                    Err(source) => {
                        let path = segment::path(&self.dir, pos.seg);
                        return partial(out, BufferError::Io { path, source });
                    }
                }
            };
            if pos.off >= end {
                if pos.seg >= committed.seg {
                    break;
                }
                self.pos = Pos {
                    seg: pos.seg + 1,
                    off: 0,
                };
                continue;
            }
            match read_frame(file, pos.off, end, &self.spares) {
                Decoded::Frame(batch, used) => {
                    self.pos = Pos {
                        seg: pos.seg,
                        off: pos.off + used as u64,
                    };
                    bytes += used;
                    out.push((batch, self.pos));
                }
                Decoded::Short | Decoded::Corrupt => {
                    self.corrupt.push(pos);
                    self.pos = if pos.seg < committed.seg {
                        Pos {
                            seg: pos.seg + 1,
                            off: 0,
                        }
                    } else {
                        committed
                    };
                    if let Some((_, last)) = out.last_mut() {
                        *last = self.pos;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What was read before an error is returned (its positions are already consumed); the error
/// recurs on the next read.
fn partial(out: Vec<(Batch, Pos)>, e: BufferError) -> Result<Vec<(Batch, Pos)>, BufferError> {
    if out.is_empty() { Err(e) } else { Ok(out) }
}

fn read_frame(file: &File, off: u64, end: u64, spares: &Spares) -> Decoded {
    let mut header = [0u8; HEADER];
    if off + HEADER as u64 > end || file.read_exact_at(&mut header, off).is_err() {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME || off + (HEADER + len) as u64 > end {
        return Decoded::Corrupt;
    }
    let mut buf = spares.take(HEADER + len);
    buf.extend_from_slice(&header);
    buf.resize(HEADER + len, 0);
    if file
        .read_exact_at(&mut buf[HEADER..], off + HEADER as u64)
        .is_err()
    {
        return Decoded::Short;
    }
    segment::decode_owned(buf)
}
