//! What the proxy and runner know of the registry: wire types, attribute names and a client.
//!
//! The registry server owns the concepts; this crate owns their *wire* shape so that the
//! proxy never depends on the server crate. Everything here is plain data plus one
//! HTTP client (`Client`) and one background task (`spawn_watcher`).

pub mod attrs;
mod client;
mod watcher;
pub mod wire;

pub use client::{Client, ClientError};
pub use watcher::{WatchState, spawn_watcher, spawn_watcher_with_state};
pub use wire::{HealthStatus, InstanceSnapshot, NamespaceSnapshot, ServiceSnapshot};
