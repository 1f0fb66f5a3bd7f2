//! The catalog over every store: random sequences of writes, then a reload from the store
//! gives back the same catalog, with revisions past the old ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use skiff_registry_client::{HealthStatus, NamespaceSnapshot};

use super::*;
use crate::metrics::Metrics;
use crate::model::{HealthCheckCustomConfig, NamespaceType, Service};
use crate::store::{MemoryStore, RedbStore, Store};

#[derive(Clone, Debug)]
enum Op {
    Register {
        svc: usize,
        id: usize,
        port: u16,
    },
    Deregister {
        svc: usize,
        id: usize,
    },
    Health {
        svc: usize,
        id: usize,
        healthy: bool,
    },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0..3usize, 0..6usize, 1..100u16).prop_map(|(svc, id, port)| Op::Register {
            svc,
            id,
            port
        }),
        (0..3usize, 0..6usize).prop_map(|(svc, id)| Op::Deregister { svc, id }),
        (0..3usize, 0..6usize, any::<bool>()).prop_map(|(svc, id, healthy)| Op::Health {
            svc,
            id,
            healthy
        }),
    ];
    proptest::collection::vec(op, 1..40)
}

async fn setup(c: &Catalog) -> Vec<String> {
    c.create_namespace("prod.internal", NamespaceType::DnsPrivate, None, None, None)
        .await
        .unwrap();
    let ns_id = c
        .read()
        .namespace_by_name("prod.internal")
        .unwrap()
        .id
        .clone();
    let mut ids = Vec::new();
    for n in 0..3 {
        let svc = c
            .create_service(Service {
                id: String::new(),
                name: format!("s{n}"),
                namespace_id: ns_id.clone(),
                description: None,
                dns_config: None,
                health_check_config: None,
                health_check_custom_config: Some(HealthCheckCustomConfig::default()),
                creator_request_id: None,
                created: 0.0,
                revision: 0,
            })
            .await
            .unwrap();
        ids.push(svc.id);
    }
    ids
}

async fn run(c: &Catalog, svcs: &[String], ops: &[Op]) {
    for op in ops {
        // Errors (deregistering what is not there, …) are part of the sequence.
        let _ = match op {
            Op::Register { svc, id, port } => {
                let attrs = BTreeMap::from([
                    ("AWS_INSTANCE_IPV4".to_string(), format!("10.0.{svc}.{id}")),
                    ("AWS_INSTANCE_PORT".to_string(), port.to_string()),
                ]);
                c.register_instance(&svcs[*svc], &format!("i{id}"), None, attrs)
                    .await
                    .map(drop)
            }
            Op::Deregister { svc, id } => c
                .deregister_instance(&svcs[*svc], &format!("i{id}"))
                .await
                .map(drop),
            Op::Health { svc, id, healthy } => {
                let status = if *healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                };
                c.update_custom_health(&svcs[*svc], &format!("i{id}"), status)
                    .await
            }
        };
    }
}

/// The snapshot without revisions.
fn content(c: &Catalog) -> NamespaceSnapshot {
    let mut s = c.read().snapshot("prod.internal").unwrap();
    s.revision = 0;
    for svc in &mut s.services {
        svc.revision = 0;
        svc.instances.sort_by(|a, b| a.id.cmp(&b.id));
    }
    s
}

fn check_reload(make: impl Fn() -> (Arc<dyn Store>, Option<tempfile::TempDir>)) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner =
        proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(24));
    runner
        .run(&ops(), |ops| {
            let (store, dir) = make();
            rt.block_on(async {
                let c = Catalog::open(store.clone(), Metrics::unregistered())
                    .await
                    .unwrap();
                let svcs = setup(&c).await;
                run(&c, &svcs, &ops).await;
                let before = content(&c);
                let rev_before = c.read().snapshot("prod.internal").unwrap().revision;
                let dns_before = c.read().dns.len();
                drop(c);
                // Reopen: from the same store object for memory, from the file for redb.
                let store = match &dir {
                    Some(d) => {
                        drop(store);
                        Arc::new(RedbStore::open(d.path()).unwrap()) as Arc<dyn Store>
                    }
                    None => store,
                };
                let c = Catalog::open(store, Metrics::unregistered()).await.unwrap();
                prop_assert_eq!(content(&c), before);
                let rev_after = c.read().snapshot("prod.internal").unwrap().revision;
                prop_assert!(rev_after > rev_before, "{} <= {}", rev_after, rev_before);
                prop_assert_eq!(c.read().dns.len(), dns_before);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn memory_catalog_reloads_what_it_wrote() {
    check_reload(|| (Arc::new(MemoryStore::new()), None));
}

#[test]
fn redb_catalog_reloads_what_it_wrote() {
    check_reload(|| {
        let dir = tempfile::tempdir().unwrap();
        (Arc::new(RedbStore::open(dir.path()).unwrap()), Some(dir))
    });
}
