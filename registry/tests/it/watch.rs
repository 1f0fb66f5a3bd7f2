//! The watch long-poll and the client's watcher, as a sidecar uses them.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_registry_client::{ClientError, HealthStatus, spawn_watcher_with_state};

use crate::harness::{TestRegistry, eventually};

fn endpoint(ip: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("AWS_INSTANCE_IPV4".to_string(), ip.to_string()),
        ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_on_change_with_a_full_snapshot() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    assert_eq!(
        client.ensure_service(&ns_id, "orders").await.unwrap(),
        svc_id,
        "ensure_service is idempotent"
    );
    assert_eq!(
        client.ensure_http_namespace("prod.internal").await.unwrap(),
        ns_id
    );

    let first = client
        .watch("prod.internal", 0, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.namespace_id, ns_id);
    assert_eq!(first.namespace_type, "HTTP");
    assert_eq!(first.services.len(), 1);
    assert!(first.services[0].instances.is_empty());

    let waiting = {
        let client = client.clone();
        let since = first.revision;
        tokio::spawn(async move {
            client
                .watch("prod.internal", since, Duration::from_secs(30))
                .await
        })
    };
    client
        .register_instance(&svc_id, "t1", endpoint("10.0.0.1"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.revision > first.revision);
    let orders = next.service("orders").unwrap();
    assert_eq!(orders.instances.len(), 1);
    assert_eq!(orders.instances[0].id, "t1");
    assert_eq!(orders.instances[0].health, HealthStatus::Healthy);
    assert_eq!(orders.revision, next.revision);

    // Nothing changed: the poll times out with the same revision.
    let same = client
        .watch("prod.internal", next.revision, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(same.revision, next.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_waits_for_a_namespace_to_appear_and_404s_a_lost_one() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let empty = client
        .watch("later.internal", 0, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(empty.revision, 0);
    assert!(empty.services.is_empty());

    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .watch("later.internal", 0, Duration::from_secs(30))
                .await
        })
    };
    let ns_id = client
        .ensure_http_namespace("later.internal")
        .await
        .unwrap();
    let snap = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snap.namespace_id, ns_id);
    assert!(snap.revision > 0);

    let err = client
        .watch("never.internal", 5, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, code, .. } if code == "NamespaceNotFound"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_keeps_the_last_snapshot_when_the_registry_goes_away() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let (snaps, state) = spawn_watcher_with_state(client.clone(), "prod.internal");
    client
        .register_instance(&svc_id, "t1", endpoint("10.0.0.1"))
        .await
        .unwrap();
    let seen = eventually("the watcher to see t1", Duration::from_secs(10), || {
        let snap = snaps.borrow().clone();
        async move { snap.filter(|s| s.service("orders").is_some_and(|o| o.instances.len() == 1)) }
    })
    .await;
    assert!(state.borrow().connected);

    let _dir = reg.stop().await;
    eventually("the watcher to notice", Duration::from_secs(20), || {
        let errors = state.borrow().consecutive_errors;
        async move { (errors >= 1).then_some(()) }
    })
    .await;
    assert!(!state.borrow().connected);
    assert_eq!(
        snaps.borrow().as_deref(),
        Some(&*seen),
        "the last snapshot is kept"
    );
}
