//! HTTP/2 (h2c), gRPC and upgrades through the sidecar.

use std::time::Duration;

use http::StatusCode;
use skiff_proxy::config::BalancerKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test]
async fn h2c_grpc_passes_trailers_and_speaks_h2_upstream() {
    let up = Upstream::start("greeter").await;
    up.set(Behavior::Grpc {
        status: 0,
        trailers_only: false,
    });
    let proxy = Proxy::start(
        config(),
        vec![grpc_service(
            "greeter",
            "greeter:50051",
            vec![endpoint("g", up.addr)],
        )],
    )
    .await;
    let r = h2_send(
        proxy.http,
        grpc_request("http://greeter:50051/helloworld.Greeter/SayHello"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["x-seen-version"], "HTTP/2.0",
        "prior-knowledge h2 upstream for grpc"
    );
    assert_eq!(r.body, "greeter");
    let trailers = r.trailers.expect("trailers are preserved");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_service() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let req = http::Request::get("http://orders:8080/")
        .body(Default::default())
        .unwrap();
    let r = h2_send(proxy.http, req).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"orders"[..]));
    assert_eq!(r.headers["x-seen-version"], "HTTP/1.1");
}

#[tokio::test]
async fn grpc_error_status_in_trailers_counts_as_failure_and_ejects() {
    let (bad, _good, proxy) = bad_and_good_greeter(13, false).await;
    for _ in 0..20 {
        let r = h2_send(proxy.http, grpc_request("http://greeter:50051/x.Y/Z")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        bad.hits(),
        5,
        "5 consecutive grpc failures eject the endpoint"
    );
}

#[tokio::test]
async fn grpc_unavailable_is_retried_only_with_an_idempotency_key() {
    let (bad, good, proxy) = bad_and_good_greeter(14, true).await;
    // Round robin starts at `bad`: a plain gRPC call (a POST) gets UNAVAILABLE back.
    let r = h2_send(proxy.http, grpc_request("http://greeter:50051/x.Y/Z")).await;
    assert_eq!(r.headers["grpc-status"], "14");
    assert_eq!(bad.hits() + good.hits(), 1);
    // With an idempotency key it is retried on the other endpoint.
    for _ in 0..2 {
        let mut req = grpc_request("http://greeter:50051/x.Y/Z");
        req.headers_mut()
            .insert("idempotency-key", "k".parse().unwrap());
        let r = h2_send(proxy.http, req).await;
        assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    }
}

#[tokio::test]
async fn grpc_timeout_header_is_honoured() {
    let slow = Upstream::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_secs(30)));
    let proxy = Proxy::start(
        config(),
        vec![grpc_service(
            "greeter",
            "greeter:50051",
            vec![endpoint("s", slow.addr)],
        )],
    )
    .await;
    let mut req = grpc_request("http://greeter:50051/x.Y/Z");
    req.headers_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let r = h2_send(proxy.http, req).await;
    // A gRPC caller gets a gRPC answer: DEADLINE_EXCEEDED with the reason.
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "4");
    assert_eq!(r.headers["x-skiff-error"], "timeout");
    let msg = r.headers["grpc-message"].to_str().unwrap();
    assert!(msg.contains("greeter did not answer"), "{msg}");
}

#[tokio::test]
async fn websocket_style_upgrade_is_passed_through() {
    let up = Upstream::start("ws").await;
    up.set(Behavior::Echo);
    let proxy = Proxy::start(
        config(),
        vec![service("ws", "ws:80", vec![endpoint("w", up.addr)])],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(
        b"GET http://ws/chat HTTP/1.1\r\nhost: ws\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed in head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// An HTTP/2 server that refuses every stream (REFUSED_STREAM), counting them.
async fn refusing_h2_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = refused.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn refused_http2_streams_are_retried_even_for_post() {
    let (refusing, refused) = refusing_h2_upstream().await;
    let (_good, proxy) = round_robin_greeter(refusing).await;
    for _ in 0..4 {
        let r = h2_send(proxy.http, grpc_request("http://greeter:50051/x.Y/Z")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the refusing endpoint was tried"
    );
}

/// A `greeter` gRPC service over two endpoints, round robin starting at `bad`, which answers
/// with `status` (in trailers, or trailers-only); `good` answers OK.
async fn bad_and_good_greeter(status: u32, trailers_only: bool) -> (Upstream, Upstream, Proxy) {
    let bad = Upstream::start("bad").await;
    bad.set(Behavior::Grpc {
        status,
        trailers_only,
    });
    let (good, proxy) = round_robin_greeter(bad.addr).await;
    (bad, good, proxy)
}

/// A `greeter` gRPC service over `first` and a `good` endpoint answering OK, round robin
/// starting at `first`.
async fn round_robin_greeter(first: std::net::SocketAddr) -> (Upstream, Proxy) {
    let good = Upstream::start("good").await;
    good.set(Behavior::Grpc {
        status: 0,
        trailers_only: false,
    });
    let mut cfg = config();
    cfg.balancer = BalancerKind::RoundRobin;
    let proxy = Proxy::start(
        cfg,
        vec![grpc_service(
            "greeter",
            "greeter:50051",
            vec![endpoint("b", first), endpoint("g", good.addr)],
        )],
    )
    .await;
    (good, proxy)
}
