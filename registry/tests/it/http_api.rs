//! The HTTP surface with hand-made requests: bad input gets AWS-shaped 4xx errors naming the
//! field; idempotency, pagination, `/health`, `/metrics` and Prometheus targets.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestRegistry;

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn cloud_map(reg: &TestRegistry, op: &str, body: &[u8]) -> (u16, Value) {
    let target = format!("Route53AutoNaming_v20170314.{op}");
    let (status, body) = raw(
        reg.http,
        "POST",
        "/",
        &[
            ("x-amz-target", &target),
            ("content-type", "application/x-amz-json-1.1"),
        ],
        body,
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_aws_errors_that_name_the_field() {
    let reg = TestRegistry::start_with(skiff_registry::RegistryOptions {
        max_body_bytes: 4096,
        ..crate::harness::loopback_opts()
    })
    .await;

    let (status, v) = cloud_map(&reg, "CreateHttpNamespace", b"{not json").await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("SerializationException")),
        "{v}"
    );

    let (status, v) = cloud_map(&reg, "LaunchRockets", b"{}").await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("UnknownOperationException")),
        "{v}"
    );

    let (status, v) = cloud_map(&reg, "CreateHttpNamespace", b"{}").await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("InvalidInput")),
        "{v}"
    );
    assert!(v["Message"].as_str().unwrap().starts_with("Name:"), "{v}");

    let (_, v) = cloud_map(&reg, "CreateHttpNamespace", br#"{"Name": 7}"#).await;
    assert_eq!(v["Message"], "Name: must be a string");

    let (_, v) = cloud_map(
        &reg,
        "RegisterInstance",
        br#"{"ServiceId": "srv-x", "Attributes": {}}"#,
    )
    .await;
    assert_eq!(v["Message"], "InstanceId: required field is missing");

    let (_, v) = cloud_map(
        &reg,
        "RegisterInstance",
        br#"{"ServiceId": "srv-x", "InstanceId": "has space", "Attributes": {}}"#,
    )
    .await;
    assert!(
        v["Message"].as_str().unwrap().starts_with("InstanceId:"),
        "{v}"
    );

    let (_, v) = cloud_map(&reg, "ListNamespaces", br#"{"MaxResults": 1000}"#).await;
    assert_eq!(v["Message"], "MaxResults: must be an integer from 1 to 100");

    let (_, v) = cloud_map(&reg, "CreateService", br#"{"Name": "x", "NamespaceId": "ns-x", "DnsConfig": {"DnsRecords": [{"Type": "MX", "TTL": 1}]}}"#).await;
    assert!(
        v["Message"].as_str().unwrap().starts_with("DnsConfig:"),
        "{v}"
    );

    let big = vec![b' '; 10_000];
    let (status, v) = cloud_map(&reg, "ListNamespaces", &big).await;
    assert_eq!(status, 413, "{v}");

    let (status, _) = raw(reg.http, "POST", "/", &[], b"{}").await;
    assert_eq!(status, 400);
    let (status, _) = raw(reg.http, "GET", "/nope", &[], b"").await;
    assert_eq!(status, 404);

    // The registry is still fine.
    let (status, v) = cloud_map(&reg, "ListNamespaces", b"{}").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_idempotent_and_lists_paginate() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    for n in 0..3 {
        client
            .ensure_http_namespace(&format!("ns{n}.internal"))
            .await
            .unwrap();
    }
    let page1 = client
        .call("ListNamespaces", json!({ "MaxResults": 2 }))
        .await
        .unwrap();
    assert_eq!(page1["Namespaces"].as_array().unwrap().len(), 2);
    let token = page1["NextToken"].as_str().unwrap();
    let page2 = client
        .call(
            "ListNamespaces",
            json!({ "MaxResults": 2, "NextToken": token }),
        )
        .await
        .unwrap();
    assert_eq!(page2["Namespaces"].as_array().unwrap().len(), 1);
    assert!(page2.get("NextToken").is_none());

    let first = client
        .call(
            "CreateHttpNamespace",
            json!({ "Name": "a.internal", "CreatorRequestId": "c-1" }),
        )
        .await
        .unwrap();
    let again = client
        .call(
            "CreateHttpNamespace",
            json!({ "Name": "a.internal", "CreatorRequestId": "c-1" }),
        )
        .await
        .unwrap();
    assert_eq!(
        first["OperationId"], again["OperationId"],
        "a retried create is the same operation"
    );
    let err = client
        .call(
            "CreateHttpNamespace",
            json!({ "Name": "b.internal", "CreatorRequestId": "c-1" }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("DuplicateRequest"));

    let ns_id = client.ensure_http_namespace("ns0.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let req = json!({ "ServiceId": svc_id, "InstanceId": "t1", "CreatorRequestId": "req-1", "Attributes": { "a": "1" } });
    let op1 = client.call("RegisterInstance", req.clone()).await.unwrap();
    let op2 = client.call("RegisterInstance", req).await.unwrap();
    assert_eq!(
        op1["OperationId"], op2["OperationId"],
        "a retried request is the same operation"
    );
    let op3 = client
        .call(
            "RegisterInstance",
            json!({ "ServiceId": svc_id, "InstanceId": "t1", "Attributes": { "a": "2" } }),
        )
        .await
        .unwrap();
    assert_ne!(op1["OperationId"], op3["OperationId"]);
    let got = client
        .call(
            "GetInstance",
            json!({ "ServiceId": svc_id, "InstanceId": "t1" }),
        )
        .await
        .unwrap();
    assert_eq!(
        got["Instance"]["Attributes"]["a"], "2",
        "re-register updates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_prometheus_targets() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();
    let attrs = BTreeMap::from([
        ("AWS_INSTANCE_IPV4".to_string(), "127.0.0.2".to_string()),
        ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
        ("SKIFF_ADMIN_ADDR".to_string(), "127.0.0.2:9901".to_string()),
        (
            "ECS_TASK_ARN".to_string(),
            "arn:aws:ecs:us-east-1:000000000000:task/quickstart/abc".to_string(),
        ),
    ]);
    client
        .register_instance(&svc_id, "t1", attrs)
        .await
        .unwrap();

    let (status, body) = raw(reg.http, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = raw(reg.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "skiff_registry_api_requests_total{operation=\"RegisterInstance\",outcome=\"ok\"} 1"
        ),
        "{body}"
    );
    assert!(body.contains("skiff_registry_instances{health=\"HEALTHY\",namespace=\"prod.internal\",service=\"orders\"} 1"), "{body}");

    let (status, body) = raw(reg.http, "GET", "/v1/prometheus/targets", &[], b"").await;
    assert_eq!(status, 200);
    let groups: Value = serde_json::from_str(&body).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{body}");
    assert_eq!(groups[0]["targets"][0], reg.http.to_string());
    assert_eq!(groups[0]["labels"]["component"], "registry");
    assert_eq!(groups[1]["targets"][0], "127.0.0.2:9901");
    assert_eq!(groups[1]["labels"]["namespace"], "prod.internal");
    assert_eq!(groups[1]["labels"]["service"], "orders");
    assert_eq!(groups[1]["labels"]["component"], "sidecar");
    assert_eq!(
        groups[1]["labels"]["task"],
        "arn:aws:ecs:us-east-1:000000000000:task/quickstart/abc"
    );
}
