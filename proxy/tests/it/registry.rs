//! The sidecar against a registry: registration, heartbeats, discovery, registry loss.

use std::time::Duration;

use http::StatusCode;
use skiff_registry_client::attrs;

use crate::fake_registry::FakeRegistry;
use crate::harness::*;

#[tokio::test]
async fn registers_once_ready_heartbeats_and_deregisters_on_drain() {
    let reg = FakeRegistry::start().await;
    let app_addr = dead_addr().await;
    let mut cfg = config();
    cfg.heartbeat_ttl = Duration::from_secs(1);
    let mut server = Proxy::start_registry(
        cfg,
        &reg.url,
        vec![ingress("orders", app_addr.port())],
        "orders",
        "task-a",
    )
    .await;
    // Not registered while the app is down.
    assert_eq!(
        server.admin_get("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(reg.instance("orders", "task-a").is_none());
    let _app = Upstream::start_on(app_addr, "app").await;
    eventually(10, "registered", || async {
        reg.instance("orders", "task-a").is_some()
    })
    .await;
    let a = reg.instance("orders", "task-a").unwrap();
    assert_eq!(a[attrs::AWS_INSTANCE_IPV4], "127.0.0.1");
    assert_eq!(
        a[attrs::AWS_INSTANCE_PORT],
        server.ingress[0].port().to_string()
    );
    assert_eq!(a[attrs::SKIFF_CLIENT_ALIASES], "orders:8080");
    assert_eq!(a[attrs::SKIFF_APP_PROTOCOL], "http");
    assert_eq!(a[attrs::SKIFF_ADMIN_ADDR], server.admin.to_string());
    assert_eq!(a[attrs::SKIFF_HEARTBEAT_TTL_SECONDS], "1");
    assert_eq!(a[attrs::ECS_SERVICE_NAME], "orders");
    assert!(a[attrs::ECS_TASK_ARN].ends_with("/task-a"));
    eventually(10, "ready", || async {
        server.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;
    eventually(10, "heartbeats", || async { reg.heartbeats("task-a") >= 2 }).await;
    let done = server.shutdown();
    eventually(10, "deregistered on drain", || async {
        reg.instance("orders", "task-a").is_none()
    })
    .await;
    done.await.unwrap();
}

#[tokio::test]
async fn client_discovers_through_registry_and_survives_its_loss() {
    let mut reg = FakeRegistry::start().await;
    let app = Upstream::start("orders-app").await;
    let _server = Proxy::start_registry(
        config(),
        &reg.url,
        vec![ingress("orders", app.addr.port())],
        "orders",
        "task-s",
    )
    .await;
    let client = Proxy::start_registry(config(), &reg.url, vec![], "frontend", "task-c").await;
    eventually(15, "client reaches orders through its alias", || async {
        Client::new(client.http)
            .get("http://orders:8080/")
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let r = client.admin_get("/ready").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a client-only sidecar needs no registration: {}",
        r.body
    );

    reg.stop();
    eventually(15, "client notices the registry is gone", || async {
        client
            .admin_get("/ready")
            .await
            .body
            .contains("\"stale\": true")
    })
    .await;
    let mut c = Client::new(client.http);
    for _ in 0..20 {
        let r = c.get("http://orders:8080/").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "orders-app"));
    }
    let m = client.admin_get("/metrics").await.body;
    assert!(
        m.contains(r#"skiff_proxy_discovery_stale{cluster_name="default"} 1"#),
        "{m}"
    );
    reg.notify();
}

#[tokio::test]
async fn a_dead_app_is_reported_unhealthy_and_recovers() {
    let reg = FakeRegistry::start().await;
    let app = Upstream::start("app").await;
    let mut cfg = config();
    cfg.heartbeat_ttl = Duration::from_millis(300);
    let server = Proxy::start_registry(
        cfg,
        &reg.url,
        vec![ingress("orders", app.addr.port())],
        "orders",
        "task-h",
    )
    .await;
    eventually(10, "registered and ready", || async {
        reg.instance("orders", "task-h").is_some()
            && server.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;
    app.kill();
    eventually(10, "reported unhealthy", || async {
        reg.health("task-h").as_deref() == Some("UNHEALTHY")
    })
    .await;
    assert_eq!(
        server.admin_get("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let beats = reg.heartbeats("task-h");
    let _again = Upstream::start_on(app.addr, "app").await;
    eventually(10, "healthy again", || async {
        reg.health("task-h").as_deref() == Some("HEALTHY")
    })
    .await;
    eventually(10, "heartbeats resume", || async {
        reg.heartbeats("task-h") > beats
    })
    .await;
    eventually(10, "ready again", || async {
        server.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;
}
