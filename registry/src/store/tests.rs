//! One battery, run against every store implementation.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn put(k: &str, v: &str) -> Mutation {
    Mutation::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
    }
}

fn del(k: &str) -> Mutation {
    Mutation::Delete { key: k.into() }
}

async fn revisions_increase(s: &dyn Store) {
    let base = s.revision();
    let r1 = s.commit(vec![put("a", "1")]).await.unwrap();
    let r2 = s.commit(vec![put("b", "2"), put("c", "3")]).await.unwrap();
    assert_eq!(r1, base + 1);
    assert_eq!(r2, base + 2);
    assert_eq!(s.revision(), r2);
}

async fn load_sees_last_writes(s: &dyn Store) {
    let r1 = s.commit(vec![put("a", "1"), put("b", "1")]).await.unwrap();
    let r2 = s.commit(vec![put("a", "2"), del("b")]).await.unwrap();
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.revision, r2);
    assert_eq!(
        loaded.entries,
        vec![Entry {
            key: "a".into(),
            value: b"2".to_vec(),
            mod_revision: r2
        }]
    );
    assert!(r1 < r2);
}

async fn fence_skips_revisions(s: &dyn Store) {
    let r1 = s.commit(vec![put("a", "1")]).await.unwrap();
    let fenced = s.fence(100).await.unwrap();
    assert_eq!(fenced, r1 + 100);
    assert_eq!(s.revision(), fenced);
    let r2 = s.commit(vec![put("a", "2")]).await.unwrap();
    assert_eq!(r2, fenced + 1);
    assert_eq!(s.load().await.unwrap().revision, r2);
}

async fn commit_order_is_call_order(s: &dyn Store) {
    let base = s.revision();
    let f1 = s.commit(vec![put("o", "1")]);
    let f2 = s.commit(vec![put("o", "2")]);
    // Polled in reverse: the order is still the call order.
    let r2 = f2.await.unwrap();
    let r1 = f1.await.unwrap();
    assert_eq!((r1, r2), (base + 1, base + 2));
    let loaded = s.load().await.unwrap();
    assert_eq!(
        loaded.entries,
        vec![Entry {
            key: "o".into(),
            value: b"2".to_vec(),
            mod_revision: base + 2
        }]
    );
}

async fn watch_sees_commits_in_order(s: &dyn Store) {
    let mut w = s.watch();
    let r1 = s.commit(vec![put("x", "1")]).await.unwrap();
    let r2 = s.commit(vec![del("x")]).await.unwrap();
    let c1 = w.recv().await.unwrap();
    let c2 = w.recv().await.unwrap();
    assert_eq!((c1.revision, c2.revision), (r1, r2));
    assert_eq!(c1.mutations, vec![put("x", "1")]);
    assert_eq!(c2.mutations, vec![del("x")]);
}

async fn concurrent_commits_get_distinct_revisions(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![put(&format!("k{i}"), "v")]).await.unwrap()
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.unwrap());
    }
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 50);
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.entries.len(), 50);
    assert_eq!(loaded.revision, *revs.last().unwrap());
}

async fn leases_expire_and_renew(s: &dyn Store) {
    let a = s.grant_lease(Duration::from_secs(5));
    let b = s.grant_lease(Duration::from_secs(60));
    let now = Instant::now();
    assert!(s.expired_leases(now).is_empty());
    assert_eq!(s.expired_leases(now + Duration::from_secs(10)), vec![a]);
    tokio::time::advance(Duration::from_secs(4)).await;
    s.keep_alive(a).unwrap();
    assert!(
        s.expired_leases(Instant::now() + Duration::from_secs(3))
            .is_empty()
    );
    s.revoke_lease(a);
    assert!(matches!(s.keep_alive(a), Err(StoreError::LeaseNotFound(_))));
    assert_eq!(
        s.expired_leases(Instant::now() + Duration::from_secs(3600)),
        vec![b]
    );
}

macro_rules! battery {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn revisions_increase() {
                let (s, _dir) = $make;
                super::revisions_increase(&*s).await;
            }

            #[tokio::test]
            async fn load_sees_last_writes() {
                let (s, _dir) = $make;
                super::load_sees_last_writes(&*s).await;
            }

            #[tokio::test]
            async fn fence_skips_revisions() {
                let (s, _dir) = $make;
                super::fence_skips_revisions(&*s).await;
            }

            #[tokio::test]
            async fn commit_order_is_call_order() {
                let (s, _dir) = $make;
                super::commit_order_is_call_order(&*s).await;
            }

            #[tokio::test]
            async fn watch_sees_commits_in_order() {
                let (s, _dir) = $make;
                super::watch_sees_commits_in_order(&*s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_commits_get_distinct_revisions() {
                let (s, _dir) = $make;
                super::concurrent_commits_get_distinct_revisions(s).await;
            }

            #[tokio::test(start_paused = true)]
            async fn leases_expire_and_renew() {
                let (s, _dir) = $make;
                super::leases_expire_and_renew(&*s).await;
            }
        }
    };
}

fn memory() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    (Arc::new(MemoryStore::new()), None)
}

fn redb() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (Arc::new(RedbStore::open(dir.path()).unwrap()), Some(dir))
}

battery!(memory_store, memory());
battery!(redb_store, redb());

#[tokio::test]
async fn redb_keeps_data_and_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let s = RedbStore::open(dir.path()).unwrap();
        s.commit(vec![put("a", "1")]).await.unwrap();
        s.commit(vec![put("b", "2"), del("a")]).await.unwrap()
    };
    let s = RedbStore::open(dir.path()).unwrap();
    assert_eq!(s.revision(), rev);
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.revision, rev);
    assert_eq!(
        loaded.entries,
        vec![Entry {
            key: "b".into(),
            value: b"2".to_vec(),
            mod_revision: rev
        }]
    );
    assert_eq!(s.commit(vec![put("c", "3")]).await.unwrap(), rev + 1);
}
