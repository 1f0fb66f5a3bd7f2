//! Health as users see it: heartbeats that stop and resume, removal after the grace period,
//! and an active HTTP check against an endpoint that turns failing and back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use skiff_registry_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestRegistry, eventually, loopback_opts};

async fn health_of(client: &Client, svc_id: &str, id: &str) -> Option<String> {
    let out = client
        .call("GetInstancesHealthStatus", json!({ "ServiceId": svc_id }))
        .await
        .ok()?;
    out["Status"][id].as_str().map(str::to_string)
}

async fn history(reg: &TestRegistry, ns: &str, svc: &str, id: &str) -> Value {
    let url = format!("/v1/instances/{ns}/{svc}/{id}/history");
    let (status, body) = crate::http_api::raw(reg.http, "GET", &url, &[], b"").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_ttl_turns_unhealthy_and_back_and_history_says_why() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let attrs = BTreeMap::from([
        ("AWS_INSTANCE_IPV4".to_string(), "10.0.0.1".to_string()),
        ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
        ("SKIFF_HEARTBEAT_TTL_SECONDS".to_string(), "1".to_string()),
    ]);
    client
        .register_instance(&svc_id, "t1", attrs)
        .await
        .unwrap();
    assert_eq!(
        health_of(&client, &svc_id, "t1").await.as_deref(),
        Some("HEALTHY")
    );
    client
        .heartbeat("prod.internal", "orders", "t1")
        .await
        .unwrap();

    eventually(
        "t1 to turn unhealthy without heartbeats",
        Duration::from_secs(10),
        || async {
            (health_of(&client, &svc_id, "t1").await.as_deref() == Some("UNHEALTHY")).then_some(())
        },
    )
    .await;
    client
        .heartbeat("prod.internal", "orders", "t1")
        .await
        .unwrap();
    assert_eq!(
        health_of(&client, &svc_id, "t1").await.as_deref(),
        Some("HEALTHY")
    );

    let h = history(&reg, "prod.internal", "orders", "t1").await;
    let reasons: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["registered", "heartbeat ttl expired", "heartbeat resumed"],
        "{h}"
    );
    assert_eq!(h["history"][1]["to"], "UNHEALTHY");

    let err = client
        .heartbeat("prod.internal", "orders", "ghost")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InstanceNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_whose_heartbeat_stopped_are_removed_after_the_grace_period() {
    let reg = TestRegistry::start_with(skiff_registry::RegistryOptions {
        instance_removal_grace: Duration::from_millis(300),
        ..loopback_opts()
    })
    .await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let attrs = BTreeMap::from([("SKIFF_HEARTBEAT_TTL_SECONDS".to_string(), "0.3".to_string())]);
    client
        .register_instance(&svc_id, "t1", attrs)
        .await
        .unwrap();
    eventually("t1 to be removed", Duration::from_secs(10), || async {
        let out = client
            .call("ListInstances", json!({ "ServiceId": svc_id }))
            .await
            .unwrap();
        out["Instances"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    // Cloud Map cannot tell why an endpoint went away; the history can.
    let h = history(&reg, "prod.internal", "orders", "t1").await;
    assert_eq!(h["registered"], false, "{h}");
    let reasons: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "registered",
            "heartbeat ttl expired",
            "removed: heartbeat lost for longer than the removal grace period"
        ],
        "{h}"
    );
}

/// A tiny HTTP endpoint that answers 200 or 503 depending on a switch.
async fn switchable_endpoint(healthy: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if healthy.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_check_follows_an_endpoint_that_fails_and_recovers() {
    let reg = TestRegistry::start_with(skiff_registry::RegistryOptions {
        health_check_interval: Duration::from_millis(50),
        health_check_timeout: Duration::from_millis(500),
        ..loopback_opts()
    })
    .await;
    let client = reg.client();
    let switch = Arc::new(AtomicBool::new(true));
    let port = switchable_endpoint(switch.clone()).await;
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc = client
        .call(
            "CreateService",
            json!({
                "Name": "web",
                "NamespaceId": ns_id,
                "HealthCheckConfig": { "Type": "HTTP", "ResourcePath": "/health", "FailureThreshold": 2 },
            }),
        )
        .await
        .unwrap();
    let svc_id = svc["Service"]["Id"].as_str().unwrap().to_string();
    let attrs = BTreeMap::from([
        ("AWS_INSTANCE_IPV4".to_string(), "127.0.0.1".to_string()),
        ("AWS_INSTANCE_PORT".to_string(), port.to_string()),
    ]);
    client
        .register_instance(&svc_id, "w1", attrs)
        .await
        .unwrap();
    let want = |status: &'static str| {
        let client = client.clone();
        let svc_id = svc_id.clone();
        move || {
            let client = client.clone();
            let svc_id = svc_id.clone();
            async move {
                (health_of(&client, &svc_id, "w1").await.as_deref() == Some(status)).then_some(())
            }
        }
    };
    eventually("w1 healthy", Duration::from_secs(10), want("HEALTHY")).await;
    switch.store(false, Ordering::SeqCst);
    eventually("w1 unhealthy", Duration::from_secs(10), want("UNHEALTHY")).await;
    switch.store(true, Ordering::SeqCst);
    eventually("w1 healthy again", Duration::from_secs(10), want("HEALTHY")).await;

    let h = history(&reg, "prod.internal", "web", "w1").await;
    let reasons: Vec<String> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 4, "{h}");
    assert!(reasons[2].contains("failed: status 503"), "{reasons:?}");
    assert!(reasons[3].contains("passed"), "{reasons:?}");

    // Discovery follows health.
    let out = client
        .call(
            "DiscoverInstances",
            json!({ "NamespaceName": "prod.internal", "ServiceName": "web" }),
        )
        .await
        .unwrap();
    assert_eq!(out["Instances"].as_array().unwrap().len(), 1);
}
