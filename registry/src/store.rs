//! The durable store behind the catalog: a revisioned key-value log with watches and leases.
//!
//! Why a key-value trait and not a typed one: it is exactly what etcd offers (one global
//! revision per transaction, per-key modification revisions, watches from a revision, leases),
//! so an etcd backend can slot in for several registry replicas without the catalog changing.
//! Every implementation runs the same test battery (`store/tests.rs`).
//!
//! Rules every implementation keeps:
//! * `commit` orders the transaction when it is *called* (so a caller holding a lock can
//!   pipeline several commits and know their order), and its future resolves only once the
//!   transaction is durable, with a revision one past the previous transaction's;
//! * revisions never go backwards, across restarts too;
//! * leases are not durable: after a restart every lease starts a fresh TTL window.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

mod memory;
mod redb;
#[cfg(test)]
mod tests;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One change in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// A key and its value as last written, with the revision of that write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// Everything in the store at one revision.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub revision: u64,
    pub entries: Vec<Entry>,
}

/// A committed transaction, as watchers see it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub revision: u64,
    pub mutations: Vec<Mutation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("embedded store failed")]
    Redb(#[from] ::redb::Error),
    #[error("stored value under {key} is corrupt")]
    Corrupt { key: String },
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("embedded store commit failed: {0}")]
    CommitFailed(String),
    #[error("embedded store is closed")]
    Closed,
    #[error("lease {0:?} not found")]
    LeaseNotFound(LeaseId),
}

/// A revisioned, durable key-value store.
pub trait Store: Send + Sync + 'static {
    /// Every live key with its value, and the current revision.
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>>;

    /// Applies `mutations` atomically and durably; resolves to the new revision. The
    /// transaction's place in the order is fixed by the call, not by polling the future.
    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'static, Result<u64, StoreError>>;

    /// Durably advances the revision by `gap` without changing any key: revisions handed
    /// out for transactions that were in flight at a crash are never reused.
    fn fence(&self, gap: u64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The revision of the last commit.
    fn revision(&self) -> u64;

    /// Commits after the call, in order (a lagging receiver gets `Lagged` and must reload).
    fn watch(&self) -> broadcast::Receiver<Arc<Committed>>;

    /// Grants a lease that expires `ttl` after its last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> LeaseId;

    /// Renews a lease (expired leases are renewed too until revoked).
    fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError>;

    fn revoke_lease(&self, id: LeaseId);

    /// Leases past their deadline at `now`.
    fn expired_leases(&self, now: Instant) -> Vec<LeaseId>;
}

// === impl Mutation ===

impl Mutation {
    pub fn key(&self) -> &str {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
        }
    }
}

/// In-process leases shared by the embedded implementations (leases are never durable).
#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<LeaseInner>,
}

#[derive(Debug, Default)]
struct LeaseInner {
    next: u64,
    leases: HashMap<LeaseId, (Duration, Instant)>,
}

// === impl LeaseTable ===

impl LeaseTable {
    pub fn grant(&self, ttl: Duration) -> LeaseId {
        let mut inner = lock(&self.inner);
        inner.next += 1;
        let id = LeaseId(inner.next);
        inner.leases.insert(id, (ttl, Instant::now() + ttl));
        id
    }

    pub fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let Some((ttl, deadline)) = inner.leases.get_mut(&id) else {
            return Err(StoreError::LeaseNotFound(id));
        };
        *deadline = Instant::now() + *ttl;
        Ok(())
    }

    pub fn revoke(&self, id: LeaseId) {
        lock(&self.inner).leases.remove(&id);
    }

    pub fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let inner = lock(&self.inner);
        let mut out: Vec<LeaseId> = inner
            .leases
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        out.sort();
        out
    }
}

/// Locks a mutex, recovering from poisoning (the data is plain and stays consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
