//! Graceful restarts on the same data dir: everything is back with its revision, and
//! heartbeat instances get a fresh TTL window instead of all flipping at once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use skiff_registry::RegistryOptions;

use crate::harness::{TestRegistry, eventually, loopback_opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything_and_gives_heartbeats_a_fresh_window() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let ttl = BTreeMap::from([("SKIFF_HEARTBEAT_TTL_SECONDS".to_string(), "1".to_string())]);
    client
        .register_instance(&svc_id, "lapsed", ttl.clone())
        .await
        .unwrap();
    client
        .register_instance(&svc_id, "plain", BTreeMap::new())
        .await
        .unwrap();
    eventually(
        "the heartbeat to lapse",
        Duration::from_secs(10),
        || async {
            let out = client
                .call("GetInstancesHealthStatus", json!({ "ServiceId": svc_id }))
                .await
                .unwrap();
            (out["Status"]["lapsed"] == "UNHEALTHY").then_some(())
        },
    )
    .await;
    let before = client
        .watch("prod.internal", 0, Duration::from_secs(1))
        .await
        .unwrap();
    let dir = reg.stop().await;

    let opts = RegistryOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..loopback_opts()
    };
    let reg = TestRegistry::start_in(opts, dir).await;
    let client = reg.client();
    let after = client
        .watch("prod.internal", 0, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        after.revision > before.revision,
        "the fresh window is a change: {} <= {}",
        after.revision,
        before.revision
    );
    assert_eq!(after.namespace_id, ns_id);
    let orders = after.service("orders").unwrap();
    assert_eq!(orders.id, svc_id);
    let mut ids: Vec<&str> = orders.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["lapsed", "plain"]);
    assert!(
        orders
            .instances
            .iter()
            .all(|i| i.health == skiff_registry_client::HealthStatus::Healthy)
    );
    let h = crate::http_api::raw(
        reg.http,
        "GET",
        "/v1/instances/prod.internal/orders/lapsed/history",
        &[],
        b"",
    )
    .await;
    assert!(
        h.1.contains("registry restarted: fresh heartbeat window"),
        "{}",
        h.1
    );

    // The window is real: without heartbeats it lapses again.
    eventually(
        "the heartbeat to lapse again",
        Duration::from_secs(10),
        || async {
            let out = client
                .call("GetInstancesHealthStatus", json!({ "ServiceId": svc_id }))
                .await
                .unwrap();
            (out["Status"]["lapsed"] == "UNHEALTHY").then_some(())
        },
    )
    .await;
}
