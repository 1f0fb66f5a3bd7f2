//! FireLens-style log router: Forward protocol and line inputs, ECS enrichment, filters, a durable buffer and outputs.
//!
//! Data path: input (forward / line) → pipeline (filters, ECS metadata) → buffer (segments on disk,
//! acked once durable) → outputs (each with its own cursor, batching and retries).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use skiff_logrouter::{EcsMetadata, LineOptions, LogRouter, LogRouterConfig, Source};
//! let cfg = LogRouterConfig::load(std::path::Path::new("fluent-bit.conf"))?;
//! let registry = prometheus::Registry::new();
//! let router = LogRouter::start(cfg, EcsMetadata::default(), &registry).await?;
//! // the runner feeds each container stream
//! let (_writer, pipe) = tokio::io::duplex(64 * 1024);
//! let sink = router.handle().line_input("app-firelens-1", Source::Stdout, LineOptions::default());
//! tokio::spawn(sink.feed(pipe));
//! router.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod admin;
pub mod buffer;
pub mod config;
pub mod forward;
pub mod input;
pub mod metrics;
pub mod msgpack;
pub mod output;
pub mod pipeline;
pub mod route;
mod router;
pub mod spares;

use thiserror::Error;

pub use config::{ConfigError, LogRouterConfig};
pub use input::line::{FullPolicy, LineOptions, LineSink, LineStats, Source};
pub use pipeline::EcsMetadata;
pub use router::{LogRouter, LogRouterHandle, no_transparent_huge_pages};

/// Errors starting or running the log router.
#[derive(Debug, Error)]
pub enum LogRouterError {
    #[error("cannot bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("buffer")]
    Buffer(#[from] buffer::BufferError),
    #[error("metrics registration")]
    Metrics(#[from] prometheus::Error),
}

/// Resolves once the watch flag is true (or its sender is gone); holds no borrow across awaits.
pub(crate) async fn signalled(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
