//! What every input shares: counting, the pipeline and the buffer append; plus the line inputs (pipes, tcp, stdin).

pub mod line;

use std::sync::Arc;

use tracing::warn;

use crate::buffer::{Buffer, BufferError};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// One input instance's handle on the rest of the router.
#[derive(Debug)]
pub struct InputCtx {
    /// Metric label (Alias or `plugin.N`).
    pub name: String,
    pub pipeline: Arc<Pipeline>,
    pub buffer: Buffer,
    pub metrics: Metrics,
    /// `storage.type filesystem`: a waiting client's ack follows an fsync.
    pub durable: bool,
}

// === impl InputCtx ===

impl InputCtx {
    /// Counts, filters, enriches and buffers packed entries; returns once they are in the buffer
    /// (fsynced when `wants_ack` on a durable input).
    pub async fn ingest(
        &self,
        tag: &str,
        entries: bytes::Bytes,
        count: u32,
        extra: &[(String, String)],
        wants_ack: bool,
    ) -> Result<(), BufferError> {
        let label = [self.name.as_str()];
        self.metrics
            .input_records
            .with_label_values(&label)
            .inc_by(u64::from(count));
        self.metrics
            .input_bytes
            .with_label_values(&label)
            .inc_by(entries.len() as u64);
        let processed =
            match self
                .pipeline
                .process_with(tag, entries, count, extra, self.buffer.spares())
            {
                Ok(p) => p,
                Err(e) => {
                    warn!(input = %self.name, error = %e, "records refused by the pipeline");
                    self.metrics
                        .input_rejected
                        .with_label_values(&[self.name.as_str(), "malformed"])
                        .inc();
                    return Ok(());
                }
            };
        if processed.count == 0 {
            return Ok(());
        }
        // by value: the buffer frees the entries as soon as it has encoded them
        self.buffer
            .append(
                tag,
                processed.count,
                processed.entries,
                wants_ack && self.durable,
            )
            .await
    }
}
