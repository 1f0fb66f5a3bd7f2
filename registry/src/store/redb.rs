//! The default durable store: one redb file in `--data DIR`, fsync on every commit.
//!
//! A single writer thread owns write transactions and commits whatever requests are queued
//! together (group commit): one fsync acknowledges many concurrent writes, none before it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use super::{
    BoxFuture, Committed, Entry, LeaseId, LeaseTable, Loaded, Mutation, Store, StoreError,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Most requests folded into one transaction.
const MAX_BATCH: usize = 512;
pub const FILE_NAME: &str = "registry.redb";
const CACHE_BYTES: usize = 32 * 1024 * 1024;

type Reply = oneshot::Sender<Result<u64, StoreError>>;

enum Request {
    Commit(Vec<Mutation>, Reply),
    Fence(u64, Reply),
}

#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    revision: Arc<AtomicU64>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    events: broadcast::Sender<Arc<Committed>>,
    leases: LeaseTable,
}

// === impl RedbStore ===

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        // The catalog keeps everything in memory already; redb's cache only needs the hot
        // pages of the write path.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(redb::Error::from)?;
        // Make sure both tables exist so that reads never see "table does not exist".
        let txn = db.begin_write().map_err(redb::Error::from)?;
        let revision = {
            txn.open_table(KV).map_err(redb::Error::from)?;
            let meta = txn.open_table(META).map_err(redb::Error::from)?;
            meta.get(REVISION_KEY)
                .map_err(redb::Error::from)?
                .map(|v| v.value())
                .unwrap_or(0)
        };
        txn.commit().map_err(redb::Error::from)?;

        let db = Arc::new(db);
        let revision = Arc::new(AtomicU64::new(revision));
        let events = broadcast::channel(1024).0;
        let (requests, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            revision: revision.clone(),
            events: events.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("skiff-registry-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(RedbStore {
            db,
            path,
            revision,
            requests: Some(requests),
            writer: Some(writer),
            events,
            leases: LeaseTable::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_blocking(db: &Database) -> Result<Loaded, StoreError> {
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let meta = txn.open_table(META).map_err(redb::Error::from)?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(redb::Error::from)?
            .map(|v| v.value())
            .unwrap_or(0);
        let kv = txn.open_table(KV).map_err(redb::Error::from)?;
        let mut entries = Vec::new();
        for item in kv.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            let key = k.value().to_string();
            let (mod_revision, value) =
                decode(v.value()).ok_or_else(|| StoreError::Corrupt { key: key.clone() })?;
            entries.push(Entry {
                key,
                value: value.to_vec(),
                mod_revision,
            });
        }
        Ok(Loaded { revision, entries })
    }
}

impl Store for RedbStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || RedbStore::load_blocking(&db)).await?
        })
    }

    fn commit(&self, mutations: Vec<Mutation>) -> BoxFuture<'static, Result<u64, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.requests.as_ref() {
            Some(requests) => requests.send(Request::Commit(mutations, tx)).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn fence(&self, gap: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.requests.as_ref() {
            Some(requests) => requests.send(Request::Fence(gap, tx)).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
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

impl Drop for RedbStore {
    /// Waits for the writer thread so that the file is closed when the store is gone.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    revision: Arc<AtomicU64>,
    events: broadcast::Sender<Arc<Committed>>,
}

// === impl Writer ===

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Commit(m, reply) => batch.push((m, reply)),
                    Request::Fence(gap, reply) => {
                        // Commit what came before, then the fence on its own.
                        self.flush(std::mem::take(&mut batch));
                        let base = self.revision.load(Ordering::Acquire);
                        let r = self.write_revision(base + gap).map(|()| base + gap);
                        if r.is_ok() {
                            self.revision.store(base + gap, Ordering::Release);
                        }
                        let _ = reply.send(r.map_err(|e| StoreError::CommitFailed(e.to_string())));
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(batch);
        }
    }

    fn flush(&self, batch: Vec<(Vec<Mutation>, Reply)>) {
        if batch.is_empty() {
            return;
        }
        let base = self.revision.load(Ordering::Acquire);
        match self.write(base, &batch) {
            Ok(()) => {
                let last = base + batch.len() as u64;
                self.revision.store(last, Ordering::Release);
                for (i, (mutations, reply)) in batch.into_iter().enumerate() {
                    let rev = base + 1 + i as u64;
                    let _ = self.events.send(Arc::new(Committed {
                        revision: rev,
                        mutations,
                    }));
                    let _ = reply.send(Ok(rev));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "registry store commit failed");
                let msg = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::CommitFailed(msg.clone())));
                }
            }
        }
    }

    fn write_revision(&self, rev: u64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(REVISION_KEY, rev)?;
        txn.commit()?;
        Ok(())
    }

    fn write(&self, base: u64, batch: &[(Vec<Mutation>, Reply)]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            let mut buf = Vec::new();
            for (i, (mutations, _)) in batch.iter().enumerate() {
                let rev = base + 1 + i as u64;
                for m in mutations {
                    match m {
                        Mutation::Put { key, value } => {
                            buf.clear();
                            buf.extend_from_slice(&rev.to_le_bytes());
                            buf.extend_from_slice(value);
                            kv.insert(key.as_str(), buf.as_slice())?;
                        }
                        Mutation::Delete { key } => {
                            kv.remove(key.as_str())?;
                        }
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(REVISION_KEY, base + batch.len() as u64)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn decode(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (rev, value) = raw.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*rev), value))
}
