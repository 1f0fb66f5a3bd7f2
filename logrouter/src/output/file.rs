//! The `file` output: one file per tag (or `File`), Fluent Bit's `out_file` or `plain` format, rotated by size.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::OutputError;
use super::format;
use crate::buffer::Batch;

/// Files kept open at once (one per tag when `File` is not set).
const MAX_OPEN_FILES: usize = 64;

pub struct FileOut {
    dir: Option<PathBuf>,
    file: Option<String>,
    plain: bool,
    rotate_bytes: u64,
    rotate_keep: u32,
    open: HashMap<PathBuf, (File, u64)>,
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
        }
    }

    pub async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        let mut per_file: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for b in batches {
            let name = self.file.clone().unwrap_or_else(|| b.tag.clone());
            let path = match &self.dir {
                Some(d) => d.join(name),
                None => PathBuf::from(name),
            };
            let idx = match per_file.iter().position(|(p, _)| *p == path) {
                Some(i) => i,
                None => {
                    per_file.push((path, Vec::new()));
                    per_file.len() - 1
                }
            };
            let out = &mut per_file[idx].1;
            format::each_record(b, |t, rec| {
                if !self.plain {
                    out.extend_from_slice(b.tag.as_bytes());
                    out.extend_from_slice(b": [");
                    crate::msgpack::write_json_f64(out, t.as_f64());
                    out.push(b',');
                }
                format::record_json(out, t, rec, None)?;
                if !self.plain {
                    out.push(b']');
                }
                out.push(b'\n');
                Ok(())
            })?;
        }
        for (path, data) in per_file {
            self.write(path, &data).await?;
        }
        Ok(())
    }

    async fn write(&mut self, path: PathBuf, data: &[u8]) -> Result<(), OutputError> {
        if !self.open.contains_key(&path) {
            if self.open.len() >= MAX_OPEN_FILES {
                // many tags: don't hold a descriptor for each forever
                self.open.clear();
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent).await?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            let len = f.metadata().await?.len();
            self.open.insert(path.clone(), (f, len));
        }
        let Some((f, len)) = self.open.get_mut(&path) else {
            return Ok(());
        };
        if let Err(e) = f.write_all(data).await {
            self.open.remove(&path);
            return Err(e.into());
        }
        f.flush().await?;
        *len += data.len() as u64;
        if self.rotate_bytes > 0 && *len >= self.rotate_bytes {
            self.open.remove(&path);
            self.rotate(&path).await?;
        }
        Ok(())
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
