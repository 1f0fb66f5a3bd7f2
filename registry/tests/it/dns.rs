//! `dig` against the registry's DNS: A, SRV, instance names, NXDOMAIN, NODATA, REFUSED,
//! truncation and the TCP retry, and FORMERR on garbage.

use std::collections::BTreeMap;

use serde_json::json;
use skiff_registry_client::Client;
use tokio::process::Command;

use crate::harness::TestRegistry;

async fn dig(reg: &TestRegistry, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", reg.dns.ip()))
        .args(["-p", &reg.dns.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig must be on PATH (apt-get install bind9-dnsutils)");
    // Collapse dig's column padding so that assertions read naturally.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn short(reg: &TestRegistry, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut lines: Vec<String> = dig(reg, &a)
        .await
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// prod.internal (DNS_PRIVATE) with `orders` (A + SRV; 3 healthy, 1 unhealthy) and `quiet`
/// (A only, no instances).
async fn setup(client: &Client) -> String {
    let op = client
        .call(
            "CreatePrivateDnsNamespace",
            json!({ "Name": "prod.internal", "Vpc": "vpc-1" }),
        )
        .await
        .unwrap();
    let op = client
        .call("GetOperation", json!({ "OperationId": op["OperationId"] }))
        .await
        .unwrap();
    let ns_id = op["Operation"]["Targets"]["NAMESPACE"]
        .as_str()
        .unwrap()
        .to_string();
    let svc = client
        .call(
            "CreateService",
            json!({
                "Name": "orders",
                "NamespaceId": ns_id,
                "DnsConfig": { "DnsRecords": [{ "Type": "A", "TTL": 10 }, { "Type": "SRV", "TTL": 10 }] },
                "HealthCheckCustomConfig": { "FailureThreshold": 1 },
            }),
        )
        .await
        .unwrap();
    let svc_id = svc["Service"]["Id"].as_str().unwrap().to_string();
    for n in 1..=4 {
        let ip = format!("10.0.0.{n}");
        client
            .register_instance(
                &svc_id,
                &format!("t{n}"),
                attrs(&[("AWS_INSTANCE_IPV4", &ip), ("AWS_INSTANCE_PORT", "8080")]),
            )
            .await
            .unwrap();
    }
    client
        .update_custom_health(&svc_id, "t4", false)
        .await
        .unwrap();
    client
        .call(
            "CreateService",
            json!({ "Name": "quiet", "NamespaceId": ns_id, "DnsConfig": { "DnsRecords": [{ "Type": "A", "TTL": 10 }] } }),
        )
        .await
        .unwrap();
    ns_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_answers_a_srv_and_instance_names_with_healthy_instances() {
    let reg = TestRegistry::start().await;
    setup(&reg.client()).await;

    assert_eq!(
        short(&reg, &["orders.prod.internal", "A"]).await,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    assert_eq!(
        short(&reg, &["ORDERS.Prod.Internal.", "A"]).await,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    assert_eq!(
        short(&reg, &["orders.prod.internal", "SRV"]).await,
        [
            "1 1 8080 t1.orders.prod.internal.",
            "1 1 8080 t2.orders.prod.internal.",
            "1 1 8080 t3.orders.prod.internal."
        ]
    );
    assert_eq!(
        short(&reg, &["t2.orders.prod.internal", "A"]).await,
        ["10.0.0.2"]
    );
    let full = dig(&reg, &["orders.prod.internal", "A"]).await;
    assert!(
        full.contains("status: NOERROR") && full.contains(" aa"),
        "{full}"
    );
    assert!(full.contains("orders.prod.internal. 10 IN A"), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_nxdomain_nodata_and_refused() {
    let reg = TestRegistry::start().await;
    setup(&reg.client()).await;

    let out = dig(&reg, &["nope.prod.internal", "A"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(
        out.contains("prod.internal. 15 IN SOA ns.prod.internal. hostmaster.prod.internal."),
        "{out}"
    );

    let out = dig(&reg, &["orders.prod.internal", "AAAA"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("IN SOA"),
        "{out}"
    );

    let out = dig(&reg, &["quiet.prod.internal", "A"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );

    let out = dig(&reg, &["prod.internal", "SOA"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 1"),
        "{out}"
    );

    let out = dig(&reg, &["example.com", "A"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_truncation_over_udp_and_full_answer_over_tcp() {
    let reg = TestRegistry::start().await;
    let client = reg.client();
    let ns_id = setup(&client).await;
    let svc = client
        .call(
            "CreateService",
            json!({ "Name": "big", "NamespaceId": ns_id, "DnsConfig": { "DnsRecords": [{ "Type": "SRV", "TTL": 10 }] } }),
        )
        .await
        .unwrap();
    let svc_id = svc["Service"]["Id"].as_str().unwrap();
    for n in 0..8 {
        let id = format!("{n}-{}", "x".repeat(60));
        let ip = format!("10.1.0.{n}");
        client
            .register_instance(
                svc_id,
                &id,
                attrs(&[("AWS_INSTANCE_IPV4", &ip), ("AWS_INSTANCE_PORT", "9000")]),
            )
            .await
            .unwrap();
    }
    let udp = dig(&reg, &["+noedns", "+ignore", "big.prod.internal", "SRV"]).await;
    assert!(
        udp.contains("flags: qr aa tc") || udp.contains(" tc"),
        "{udp}"
    );
    let tcp = dig(&reg, &["+tcp", "big.prod.internal", "SRV"]).await;
    assert!(tcp.contains("ANSWER: 8") && !tcp.contains(" tc "), "{tcp}");
    // Without +ignore dig retries over TCP by itself and gets everything.
    assert_eq!(
        short(&reg, &["+noedns", "big.prod.internal", "SRV"])
            .await
            .len(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_formerr_and_the_server_keeps_answering() {
    let reg = TestRegistry::start().await;
    setup(&reg.client()).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A header claiming one question, followed by junk.
    let garbage = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    ];
    sock.send_to(&garbage, reg.dns).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], &[0x12, 0x34]);
    assert_eq!(buf[3] & 0x0f, 1, "rcode should be FORMERR");
    // Too short to answer: dropped, and the server still works.
    sock.send_to(&[1, 2, 3], reg.dns).await.unwrap();
    assert_eq!(
        short(&reg, &["t1.orders.prod.internal", "A"]).await,
        ["10.0.0.1"]
    );
}
