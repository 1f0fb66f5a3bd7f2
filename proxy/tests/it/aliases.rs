//! Alias VIP listeners, opaque TCP, the DNS listener and the hosts file.

use std::net::{Ipv4Addr, SocketAddr};

use http::StatusCode;
use skiff_proxy::AppProtocol;

use crate::harness::*;

/// A fake upstream resolver answering every A query with 10.9.9.9.
async fn fake_resolver() -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, Metadata};
    use hickory_proto::rr::{RData, Record, rdata::A};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut resp =
                Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
            resp.metadata = Metadata::response_from_request(&req.metadata);
            let q = req.queries[0].clone();
            resp.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(10, 9, 9, 9))),
            ));
            resp.add_query(q);
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

async fn dig(server: SocketAddr, name: &str) -> String {
    dig_with(server, name, &[]).await
}

async fn dig_with(server: SocketAddr, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        format!("@{}", server.ip()),
        "-p".into(),
        server.port().to_string(),
        name.into(),
        "A".into(),
        "+short".into(),
        "+time=3".into(),
        "+tries=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::process::Command::new("dig")
        .args(args)
        .output()
        .await
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn alias_vips_dns_and_hosts_file_follow_discovery_live() {
    let orders = Upstream::start("orders").await;
    let users = Upstream::start("users").await;
    let hosts = std::env::temp_dir().join(format!("skiff-hosts-{}", std::process::id()));
    let resolver = fake_resolver().await;
    let h = hosts.clone();
    let proxy = Proxy::start_custom(
        vip_config(1),
        vec![service(
            "orders",
            "orders:18080",
            vec![endpoint("o", orders.addr)],
        )],
        vec![],
        "client",
        move |o| {
            o.dns_port = Some(0);
            o.dns_upstream = Some(resolver);
            o.hosts_file = Some(h);
        },
    )
    .await;
    eventually(5, "orders alias listener", || async {
        alias_addr(&proxy, "orders:18080").is_some()
    })
    .await;
    let addr = alias_addr(&proxy, "orders:18080").unwrap();
    assert_eq!(addr, SocketAddr::from((vip(1, 1), 18080)));
    let r = Client::new(addr).get("/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "orders"));

    // DNS: alias names answer with the VIP; other names go to the upstream resolver.
    let dns = proxy.sidecar.as_ref().unwrap().dns_addr().unwrap();
    assert_eq!(dig(dns, "orders").await, vip(1, 1).to_string());
    assert_eq!(
        dig(dns, "orders.prod.internal").await,
        vip(1, 1).to_string()
    );
    assert_eq!(dig(dns, "example.com").await, "10.9.9.9");
    assert_eq!(
        dig_with(dns, "orders", &["+tcp"]).await,
        vip(1, 1).to_string(),
        "DNS over TCP too"
    );

    // A service that appears later gets its listener, DNS name and hosts line without restart.
    proxy.publish(
        2,
        vec![
            service("orders", "orders:18080", vec![endpoint("o", orders.addr)]),
            service("users", "users:18081", vec![endpoint("u", users.addr)]),
        ],
    );
    eventually(5, "users alias listener", || async {
        alias_addr(&proxy, "users:18081").is_some()
    })
    .await;
    let r = Client::new(alias_addr(&proxy, "users:18081").unwrap())
        .get("/")
        .await;
    assert_eq!(r.body, "users");
    assert_eq!(dig(dns, "users").await, vip(1, 2).to_string());
    eventually(5, "hosts file lists users", || async {
        std::fs::read_to_string(&hosts)
            .is_ok_and(|t| t.contains(&format!("{}\tusers users.prod.internal", vip(1, 2))))
    })
    .await;
    let _ = std::fs::remove_file(&hosts);
}

#[tokio::test]
async fn tcp_aliases_balance_per_connection_and_retry_connect_failures() {
    let (echo, conns) = echo_server().await;
    let dead = dead_addr().await;
    let mut cfg = vip_config(2);
    cfg.balancer = skiff_proxy::BalancerKind::RoundRobin;
    let mut svc = service(
        "redis",
        "redis:16379",
        vec![endpoint("d", dead), endpoint("e", echo)],
    );
    svc.protocol = AppProtocol::Tcp;
    let proxy = Proxy::start(cfg, vec![svc]).await;
    eventually(5, "tcp alias listener", || async {
        alias_addr(&proxy, "redis:16379").is_some()
    })
    .await;
    let addr = alias_addr(&proxy, "redis:16379").unwrap();
    for i in 0..4 {
        let msg = format!("hello {i}");
        assert_eq!(echo_roundtrip(addr, msg.as_bytes()).await, msg.as_bytes());
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "one upstream connection per client connection"
    );
}

#[tokio::test]
async fn inbound_tcp_entry_forwards_bytes_to_the_app() {
    let (echo, _) = echo_server().await;
    let mut entry = ingress("redis", echo.port());
    entry.app_protocol = AppProtocol::Tcp;
    let proxy = Proxy::start_with(config(), vec![], vec![entry], "redis").await;
    assert_eq!(
        echo_roundtrip(proxy.ingress[0], b"PING\r\n").await,
        b"PING\r\n"
    );
}
