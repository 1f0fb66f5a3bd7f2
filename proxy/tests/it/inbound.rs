//! Inbound listeners, readiness, admin and drain.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test]
async fn inbound_forwards_to_the_app_and_gates_readiness() {
    // Reserve a port for the app, start the sidecar before the app is up.
    let app_addr = dead_addr().await;
    let mut proxy = Proxy::start_with(
        config(),
        vec![],
        vec![ingress("orders", app_addr.port())],
        "orders",
    )
    .await;
    let r = proxy.admin_get("/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("\"app_ready\": false"), "{}", r.body);
    let app = Upstream::start_on(app_addr, "orders-app").await;
    eventually(10, "ready once the app listens", || async {
        proxy.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;
    let r = Client::new(proxy.ingress[0]).get("/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "orders-app"));
    assert_eq!(app.hits(), 1);
    assert_eq!(proxy.admin_get("/live").await.status, StatusCode::OK);
    let cfg = proxy.admin_get("/config").await;
    assert!(
        cfg.body.contains("\"discovery_name\": \"orders\""),
        "{}",
        cfg.body
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_get_400_and_huge_headers_431() {
    let proxy = Proxy::start(config(), vec![]).await;
    let mut s = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let mut s = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!("GET http://orders/ HTTP/1.1\r\nhost: orders\r\nx-big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let r = Client::new(proxy.http).get("/no-host").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let connect = http::Request::connect("orders:443")
        .body(Default::default())
        .unwrap();
    let r = Client::new(proxy.http).send(connect).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("CONNECT"), "{}", r.body);
}

#[tokio::test]
async fn drain_fails_ready_and_loses_no_request() {
    // Two server sidecars in front of two apps; a client sidecar balancing over them.
    let app1 = Upstream::start("app1").await;
    let app2 = Upstream::start("app2").await;
    let mut cfg = config();
    cfg.drain_window = Duration::from_millis(500);
    let mut s1 = Proxy::start_with(
        cfg.clone(),
        vec![],
        vec![ingress("orders", app1.addr.port())],
        "orders",
    )
    .await;
    let s2 = Proxy::start_with(
        cfg.clone(),
        vec![],
        vec![ingress("orders", app2.addr.port())],
        "orders",
    )
    .await;
    let client = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("s1", s1.ingress[0]), endpoint("s2", s2.ingress[0])],
        )],
    )
    .await;
    eventually(10, "s1 ready", || async {
        s1.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, addr) = (stop.clone(), client.http);
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut c = Client::new(addr);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c
                    .try_send(
                        http::Request::get("http://orders:8080/")
                            .body(Default::default())
                            .unwrap(),
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    eventually(10, "load reaches s1", || async { app1.hits() > 20 }).await;
    let done = s1.shutdown();
    eventually(5, "s1 fails /ready while draining", || async {
        s1.admin_get("/ready").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    done.await.unwrap();
    let before = app2.hits();
    eventually(10, "traffic continues on s2", || async {
        app2.hits() > before + 20
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for l in load {
        let (ok, failed) = l.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 40);
}

#[tokio::test]
async fn external_health_signal_gates_readiness() {
    let app = Upstream::start("app").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let proxy = Proxy::start_custom(
        config(),
        vec![],
        vec![ingress("orders", app.addr.port())],
        "orders",
        |o| {
            o.app_ready = Some(rx);
        },
    )
    .await;
    // The port accepts connections, but the health check has not passed yet.
    let r = proxy.admin_get("/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    tx.send_replace(true);
    eventually(5, "ready after the health check passes", || async {
        proxy.admin_get("/ready").await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn draining_sends_goaway_to_http2_clients_during_the_window() {
    let app = Upstream::start("app").await;
    let mut cfg = config();
    cfg.drain_window = Duration::from_secs(120);
    let mut proxy = Proxy::start_with(
        cfg,
        vec![],
        vec![ingress("orders", app.addr.port())],
        "orders",
    )
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.ingress[0])
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://orders/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let done = proxy.shutdown();
    // The connection ends (GOAWAY) while the sidecar is still in its drain window.
    tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("GOAWAY closes the connection")
        .unwrap()
        .unwrap();
    assert!(!done.is_finished(), "still draining");
    done.abort();
}
