//! Skiff's load tools: the demo app, an open-loop load generator and the proxy benchmark.
//!
//! Everything here measures the other components as a black box over loopback:
//! the crate depends on none of them. `demo` is the tiny app the examples run,
//! `load` the generator (`skiff loadtest run`), `bench` the peer comparison
//! (`skiff loadtest bench proxy`) and `cli` the clap arguments the binary flattens.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod http_client;
pub mod load;

pub use bench::{BenchOptions, BenchReport, Peer, bench_proxy};
pub use cli::{DemoArgs, LoadtestArgs, demo_main, loadtest_main};
pub use demo::{DemoServeOptions, demo_probe, demo_serve, demo_serve_listener};
pub use http_client::ProxyConfig;
pub use load::{LoadMode, LoadOptions, Protocol, Report, run};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("bind {addr} failed: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("process {what} failed: {reason}")]
    Process { what: String, reason: String },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("probe of {url} failed")]
    ProbeFailed { url: String },
}
