//! In-memory store for tests and `--data`-less runs: same semantics, nothing survives a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    BoxFuture, Committed, Entry, LeaseId, LeaseTable, Loaded, Mutation, Store, StoreError, lock,
};

#[derive(Debug)]
pub struct MemoryStore {
    data: Mutex<Data>,
    events: broadcast::Sender<Arc<Committed>>,
    leases: LeaseTable,
}

#[derive(Debug, Default)]
struct Data {
    revision: u64,
    kv: BTreeMap<String, (Vec<u8>, u64)>,
}

// === impl MemoryStore ===

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            data: Mutex::new(Data::default()),
            events: broadcast::channel(1024).0,
            leases: LeaseTable::default(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(async move {
            let data = lock(&self.data);
            let entries = data
                .kv
                .iter()
                .map(|(k, (v, r))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    mod_revision: *r,
                })
                .collect();
            Ok(Loaded {
                revision: data.revision,
                entries,
            })
        })
    }

    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'static, Result<u64, StoreError>> {
        let mut data = lock(&self.data);
        data.revision += 1;
        let rev = data.revision;
        for m in &mutations {
            match m {
                Mutation::Put { key, value } => {
                    data.kv.insert(key.clone(), (value.clone(), rev));
                }
                Mutation::Delete { key } => {
                    data.kv.remove(key);
                }
            }
        }
        // Sent under the lock so that watchers see commits in revision order.
        let _ = self.events.send(Arc::new(Committed {
            revision: rev,
            mutations,
        }));
        Box::pin(std::future::ready(Ok(rev)))
    }

    fn fence(&self, gap: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut data = lock(&self.data);
        data.revision += gap;
        Box::pin(std::future::ready(Ok(data.revision)))
    }

    fn revision(&self) -> u64 {
        lock(&self.data).revision
    }

    fn watch(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.events.subscribe()
    }

    fn grant_lease(&self, ttl: Duration) -> LeaseId {
        self.leases.grant(ttl)
    }

    fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        self.leases.keep_alive(id)
    }

    fn revoke_lease(&self, id: LeaseId) {
        self.leases.revoke(id)
    }

    fn expired_leases(&self, now: Instant) -> Vec<LeaseId> {
        self.leases.expired(now)
    }
}
