//! The `file` output: one file per tag (or `File`), Fluent Bit's `out_file` or `plain` format, rotated by size.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::OutputError;
use super::format;
use crate::buffer::Batch;

/// Files kept open at once (one per tag when `File` is not set).
const MAX_OPEN_FILES: usize = 64;
/// Largest text buffer kept between batches: a batch's text is formatted into the same memory
/// each time rather than into a new, growing buffer.
const MAX_SPARE_BYTES: usize = 4 * 1024 * 1024;
/// Text for one file is written once this much has gathered (or the file changes).
const FLUSH_BYTES: usize = 256 * 1024;

pub struct FileOut {
    dir: Option<PathBuf>,
    file: Option<String>,
    plain: bool,
    rotate_bytes: u64,
    rotate_keep: u32,
    /// Written from the blocking pool with the batch's text handed over (tokio's `File` would
    /// copy it into a buffer of its own, kept per open file).
    open: HashMap<PathBuf, (Arc<File>, u64)>,
    spare: Vec<u8>,
}

// === impl FileOut ===

impl FileOut {
    pub fn new(
        dir: Option<PathBuf>,
        file: Option<String>,
        plain: bool,
        rotate_bytes: u64,
        rotate_keep: u32,
    ) -> Self {
        Self {
            dir,
            file,
            plain,
            rotate_bytes,
            rotate_keep: rotate_keep.max(1),
            open: HashMap::new(),
            spare: Vec::new(),
        }
    }

    /// Writes the batches' text, consecutive batches for one file in one write of at most
    /// about [`FLUSH_BYTES`] (into the same memory each time): not the whole delivery's text
    /// at once, nor a write per batch.
    pub async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let mut pending: Option<PathBuf> = None;
        for b in batches {
            let name = self.file.as_deref().unwrap_or(&b.tag);
            let path = match &self.dir {
                Some(d) => d.join(name),
                None => PathBuf::from(name),
            };
            if let Some(p) = pending.take_if(|p| *p != path || out.len() >= FLUSH_BYTES) {
                out = self.write(p, out).await?;
                out.clear();
            }
            pending = Some(path);
            format::each_record(b, |t, rec| {
                if !self.plain {
                    out.extend_from_slice(b.tag.as_bytes());
                    out.extend_from_slice(b": [");
                    crate::msgpack::write_json_f64(&mut out, t.as_f64());
                    out.push(b',');
                }
                format::record_json(&mut out, t, rec, None)?;
                if !self.plain {
                    out.push(b']');
                }
                out.push(b'\n');
                Ok(())
            })?;
        }
        if let Some(p) = pending {
            out = self.write(p, out).await?;
        }
        if out.capacity() <= MAX_SPARE_BYTES {
            self.spare = out;
        }
        Ok(())
    }

    /// Appends `data` to `path`; gives `data` back for the next batch.
    async fn write(&mut self, path: PathBuf, data: Vec<u8>) -> Result<Vec<u8>, OutputError> {
        if !self.open.contains_key(&path) {
            if self.open.len() >= MAX_OPEN_FILES {
                // many tags: don't hold a descriptor for each forever
                self.open.clear();
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent).await?;
            }
            let opening = path.clone();
            let (f, len) = blocking(move || {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&opening)?;
                let len = f.metadata()?.len();
                Ok((f, len))
            })
            .await?;
            self.open.insert(path.clone(), (Arc::new(f), len));
        }
        let Some((f, len)) = self.open.get_mut(&path) else {
            return Ok(data);
        };
        let file = f.clone();
        let data = match blocking(move || (&*file).write_all(&data).map(|()| data)).await {
            Ok(data) => data,
            Err(e) => {
                self.open.remove(&path);
                return Err(e.into());
            }
        };
        *len += data.len() as u64;
        if self.rotate_bytes > 0 && *len >= self.rotate_bytes {
            self.open.remove(&path);
            self.rotate(&path).await?;
        }
        Ok(data)
    }

    /// `f` → `f.1` → … → `f.N` (the oldest beyond `Rotate_Keep` is removed).
    async fn rotate(&self, path: &std::path::Path) -> Result<(), OutputError> {
        let name = |i: u32| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = tokio::fs::remove_file(name(self.rotate_keep)).await;
        for i in (1..self.rotate_keep).rev() {
            let _ = tokio::fs::rename(name(i), name(i + 1)).await;
        }
        tokio::fs::rename(path, name(1)).await?;
        Ok(())
    }
}

/// Runs file i/o on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}
