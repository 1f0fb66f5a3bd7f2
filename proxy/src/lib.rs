//! Skiff's sidecar data plane: listeners, discovery, balancing, retries, timeouts, outlier
//! detection, admin and drain (the Service Connect agent's job).
//!
//! A request goes *logical* (the host or alias a client named, `logical.rs`) → *concrete*
//! (the endpoint set discovery gave for that service, `concrete.rs`) → *endpoint* (one
//! address with its EWMA and outlier state, `endpoint.rs`), in one linear function,
//! `forward.rs`. Pure algorithms (`balance.rs`, `outlier.rs`, `retry.rs`) are property-tested.
//! Listeners and drain phases live in `server.rs` (HTTP) and `tcp.rs` (opaque TCP); alias
//! VIP listeners in `aliases.rs`, the DNS listener in `dns.rs`; the registry (watch,
//! registration, heartbeats) in `registry.rs`; everything is wired together in `sidecar.rs`.
//!
//! The hot path only loads an `Arc<Table>` from a `tokio::sync::watch` channel (no
//! arc-swap): a discovery update builds a new immutable table and swaps it in.
//!
//! Telemetry: metrics in `metrics.rs`, OpenTelemetry spans and their OTLP exporter in
//! `trace.rs`, access log lines in `access.rs`.

pub mod access;
mod admin;
mod aliases;
mod balance;
mod concrete;
pub mod config;
pub mod discovery;
mod dns;
pub mod ecs;
mod endpoint;
pub mod error;
mod forward;
mod h1;
mod logical;
pub mod metrics;
mod outlier;
mod pool;
pub mod registry;
mod retry;
mod server;
mod sidecar;
mod tcp;
pub mod trace;

pub use access::AccessLogSink;
pub use config::{AccessLog, BalancerKind, ProxyConfig};
pub use discovery::{Alias, AppProtocol, Discovery, EndpointInfo, ServiceInfo, Snapshot};
pub use endpoint::responses_awaited;
pub use error::{Blame, ProxyError, Retryable, error_response};
pub use metrics::{BusyPollMetrics, Metrics};
pub use sidecar::{DiscoverySource, IngressEntry, Sidecar, SidecarOptions};
pub use trace::{OtlpProtocol, Sampler, TraceError, TraceSettings};

/// Boxed error of bodies and sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type at every module boundary.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
