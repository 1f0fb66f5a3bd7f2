//! What happens to records between an input and the buffer: ECS metadata enrichment (raw, no trees) and the filters.
//!
//! Enrichment rewrites only each record's map header and appends pairs, copying the rest of the
//! record as bytes; only records a filter matches are decoded into `rmpv::Value`.

mod filter;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::FilterConfig;
use crate::metrics::Metrics;
use crate::msgpack::{self, MpError, Reader};
use crate::spares::Spares;

/// The task's ECS metadata (FireLens `enable-ecs-log-metadata`); absent fields are not added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcsMetadata {
    pub cluster: Option<String>,
    pub task_arn: Option<String>,
    pub task_definition: Option<String>,
    pub container_name: Option<String>,
    pub container_id: Option<String>,
}

impl EcsMetadata {
    /// `(field, value)` pairs to add, with Fluent Bit/FireLens field names.
    pub fn fields(&self) -> Vec<(String, String)> {
        [
            ("ecs_cluster", &self.cluster),
            ("ecs_task_arn", &self.task_arn),
            ("ecs_task_definition", &self.task_definition),
            ("container_name", &self.container_name),
            ("container_id", &self.container_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect()
    }
}

/// Filters and enrichment shared by every input.
#[derive(Debug)]
pub struct Pipeline {
    filters: Vec<FilterConfig>,
    metadata: Vec<(String, String)>,
    metrics: Metrics,
}

/// Records after the pipeline.
#[derive(Debug)]
pub struct Processed {
    pub entries: Bytes,
    pub count: u32,
}

// === impl Pipeline ===

impl Pipeline {
    pub fn new(
        filters: Vec<FilterConfig>,
        metadata: Option<&EcsMetadata>,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            filters,
            metadata: metadata.map(EcsMetadata::fields).unwrap_or_default(),
            metrics,
        })
    }

    /// Applies matching filters, then adds metadata and `extra` fields (e.g. `source`) missing from each record.
    pub fn process(
        &self,
        tag: &str,
        entries: impl Into<Bytes>,
        count: u32,
        extra: &[(String, String)],
    ) -> Result<Processed, MpError> {
        self.process_with(tag, entries.into(), count, extra, &Spares::default())
    }

    /// [`Pipeline::process`] writing new entries into `spares`' memory and giving the memory of
    /// entries it replaced back to it.
    pub fn process_with(
        &self,
        tag: &str,
        entries: Bytes,
        count: u32,
        extra: &[(String, String)],
        spares: &Spares,
    ) -> Result<Processed, MpError> {
        let filters: Vec<&FilterConfig> = self
            .filters
            .iter()
            .filter(|f| f.matcher.matches(tag))
            .collect();
        let (entries, count) = if filters.is_empty() {
            (entries, count)
        } else {
            let (kept, count) = filter::apply(&filters, &entries, &self.metrics)?;
            spares.give_bytes(entries);
            (Bytes::from(kept), count)
        };
        if self.metadata.is_empty() && extra.is_empty() {
            return Ok(Processed { entries, count });
        }
        let mut add: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in &self.metadata {
            if !add.iter().any(|(x, _)| x == k) {
                add.push((k.as_str(), v.as_str()));
            }
        }
        let out = spares.take(enriched_len(&entries, count, &add));
        let enriched = enrich_counted(&entries, count, &add, out)?;
        spares.give_bytes(entries);
        Ok(Processed {
            entries: enriched.into(),
            count,
        })
    }
}

/// Adds each `(key, value)` absent from every `[time, record]` entry.
pub fn enrich(entries: &[u8], add: &[(&str, &str)]) -> Result<Vec<u8>, MpError> {
    // at least 8 bytes per entry: a bound on their number that never under-allocates much
    let count = u32::try_from(entries.len() / 8 + 1).unwrap_or(u32::MAX);
    enrich_counted(entries, count, add, Vec::new())
}

/// What `count` entries take once `add` is added to each (at most).
fn enriched_len(entries: &[u8], count: u32, add: &[(&str, &str)]) -> usize {
    let extra: usize = add.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    entries.len() + extra.saturating_mul(count as usize)
}

/// `enrich` for `count` entries into `out`: reserves what the result needs, not a guess per byte.
fn enrich_counted(
    entries: &[u8],
    count: u32,
    add: &[(&str, &str)],
    mut out: Vec<u8>,
) -> Result<Vec<u8>, MpError> {
    out.clear();
    out.reserve(enriched_len(entries, count, add));
    let mut r = Reader::new(entries);
    let mut missing: Vec<bool> = vec![true; add.len()];
    while !r.is_empty() {
        if r.array_len()? != 2 {
            return Err(MpError::Invalid("entry is not [time, record]"));
        }
        let time = r.value()?;
        let n = r.map_len()?;
        let pairs_start = r.pos();
        missing.iter_mut().for_each(|m| *m = true);
        for _ in 0..n {
            if r.next_is_raw() {
                let k = r.raw()?;
                for (i, (name, _)) in add.iter().enumerate() {
                    if k == name.as_bytes() {
                        missing[i] = false;
                    }
                }
            } else {
                r.skip()?;
            }
            r.skip()?;
        }
        let pairs = &entries[pairs_start..r.pos()];
        let adding = missing.iter().filter(|m| **m).count() as u32;
        msgpack::write_array_len(&mut out, 2);
        out.extend_from_slice(time);
        msgpack::write_map_len(&mut out, n + adding);
        out.extend_from_slice(pairs);
        for (i, (k, v)) in add.iter().enumerate() {
            if missing[i] {
                msgpack::write_str(&mut out, k);
                msgpack::write_str(&mut out, v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
