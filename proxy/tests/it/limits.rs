//! Timeouts, limits, budgets and connection handling.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use skiff_proxy::config::BalancerKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;

#[tokio::test]
async fn pending_request_limit_answers_503_with_the_reason() {
    let slow = Upstream::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_millis(800)));
    let mut cfg = config();
    cfg.limits.max_pending_requests = 1;
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "s", slow.addr).await;
    let addr = proxy.http;
    let first = tokio::spawn(async move { Client::new(addr).get("http://orders:8080/").await });
    eventually(5, "first request reaches the app", || async {
        slow.hits() == 1
    })
    .await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body.contains("too many pending requests") && r.body.contains("orders"),
        "{}",
        r.body
    );
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn per_try_timeout_moves_a_get_to_another_endpoint() {
    let stuck = Upstream::start("stuck").await;
    let ok = Upstream::start("ok").await;
    stuck.set(Behavior::Delay(Duration::from_secs(30)));
    let mut cfg = config();
    cfg.balancer = BalancerKind::RoundRobin;
    cfg.default_policy.retry.per_try_timeout = Some(Duration::from_millis(200));
    let proxy = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("s", stuck.addr), endpoint("o", ok.addr)],
        )],
    )
    .await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(stuck.hits(), 1);
}

#[tokio::test]
async fn empty_retry_budget_stops_retries() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.set(Behavior::Status(503));
    let mut cfg = config();
    cfg.balancer = BalancerKind::RoundRobin;
    cfg.default_policy.retry.budget_min_per_second = 0;
    cfg.default_policy.retry.budget_retry_percent = 0.0;
    let proxy = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("b", bad.addr), endpoint("g", good.addr)],
        )],
    )
    .await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(good.hits(), 0);
    let m = proxy.admin_get("/metrics").await.body;
    assert!(m.contains(r#"skiff_proxy_retry_budget_exhausted_total{cluster_name="default",service_name="client",target_discovery_name="orders"} 1"#), "{m}");
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let up = Upstream::start("orders").await;
    let mut cfg = config();
    cfg.default_policy.timeouts.idle = Some(Duration::from_millis(200));
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "o", up.addr).await;
    let stream = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("http://orders:8080/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // The proxy closes the idle connection: the client's connection task ends.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle connection closed")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn large_request_bodies_stream_through() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let body = Bytes::from(vec![b'x'; 300 * 1024]);
    let req = Request::post("http://orders:8080/upload")
        .body(Full::new(body))
        .unwrap();
    let r = Client::new(proxy.http).send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-body-len"], (300 * 1024).to_string());
}

/// An upstream that answers one request per connection and then closes it without saying
/// so (no `Connection: close`), like an app whose keep-alive timeout just fired.
async fn closing_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn pooled_connections_closed_by_the_app_are_not_failures() {
    let up = closing_upstream().await;
    let proxy = Proxy::start(
        config(),
        vec![service("orders", "orders:8080", vec![endpoint("o", up)])],
    )
    .await;
    let mut c = Client::new(proxy.http);
    for i in 0..20 {
        let r = c.get("http://orders:8080/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn full_endpoints_are_avoided_and_503_when_all_are_full() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set(Behavior::Delay(Duration::from_millis(800)));
    let mut cfg = config();
    cfg.balancer = BalancerKind::RoundRobin;
    cfg.limits.max_connections_per_endpoint = 1;
    let proxy = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("a", a.addr), endpoint("b", b.addr)],
        )],
    )
    .await;
    let addr = proxy.http;
    // Round robin sends the first request to `a`, which holds it.
    let first = tokio::spawn(async move { Client::new(addr).get("http://orders:8080/").await });
    eventually(5, "a holds a request", || async { a.hits() == 1 }).await;
    // `a` is full: the next requests go to `b` although round robin would alternate.
    for _ in 0..3 {
        assert_eq!(
            Client::new(proxy.http)
                .get("http://orders:8080/")
                .await
                .body,
            "b"
        );
    }
    assert_eq!(a.hits(), 1);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);

    // A single full endpoint: 503 naming the limit.
    let solo = Upstream::start("solo").await;
    solo.set(Behavior::Delay(Duration::from_millis(800)));
    proxy.publish(
        2,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("s", solo.addr)],
        )],
    );
    eventually(5, "routes to solo", || async {
        proxy
            .admin_get("/endpoints")
            .await
            .body
            .contains(&solo.addr.to_string())
    })
    .await;
    let held = tokio::spawn(async move { Client::new(addr).get("http://orders:8080/").await });
    eventually(5, "solo holds a request", || async { solo.hits() == 1 }).await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("connection limit"), "{}", r.body);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn connections_over_the_listener_limit_get_503() {
    let up = Upstream::start("orders").await;
    let mut cfg = config();
    cfg.limits.max_connections = 1;
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "o", up.addr).await;
    let mut first = Client::new(proxy.http);
    assert_eq!(
        first.get("http://orders:8080/").await.status,
        StatusCode::OK
    );
    // `first` keeps its connection open: a second one is over the limit.
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("connection limit"), "{}", r.body);
    assert_eq!(
        first.get("http://orders:8080/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_and_others_unaffected() {
    let up = Upstream::start("orders").await;
    let mut cfg = config();
    cfg.limits.header_read_timeout = Duration::from_millis(200);
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "o", up.addr).await;
    let mut slow = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    slow.write_all(b"GET http://orders:8080/ HTTP/1.1\r\nhost: ord")
        .await
        .unwrap();
    // Meanwhile, a well-behaved client is served.
    assert_eq!(
        Client::new(proxy.http)
            .get("http://orders:8080/")
            .await
            .status,
        StatusCode::OK
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client's connection is closed");
}

#[tokio::test]
async fn inbound_http2_entry_speaks_h2c_to_the_app() {
    let app = Upstream::start("grpc-app").await;
    app.set(Behavior::Grpc {
        status: 0,
        trailers_only: false,
    });
    let mut entry = ingress("greeter", app.addr.port());
    entry.app_protocol = skiff_proxy::AppProtocol::Grpc;
    let proxy = Proxy::start_with(config(), vec![], vec![entry], "greeter").await;
    let r = h2_send(proxy.ingress[0], grpc_request("http://greeter/x.Y/Z")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-seen-version"], "HTTP/2.0");
    assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
}

#[tokio::test]
async fn idle_keep_alive_clients_outlive_the_header_read_timeout() {
    let up = Upstream::start("orders").await;
    let mut cfg = config();
    cfg.limits.header_read_timeout = Duration::from_millis(100);
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "o", up.addr).await;
    let mut c = Client::new(proxy.http);
    assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    // The measurement itself: the client idles through several header timeouts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    assert_eq!(
        c.connects, 1,
        "an idle keep-alive connection is closed by the idle timeout, not the header timeout"
    );
    let metrics = proxy.admin_get("/metrics").await.body;
    assert!(
        !metrics.lines().any(|l| l.contains("header_read_timeout")
            && !l.starts_with('#')
            && !l.ends_with(" 0")),
        "no header timeout counted:\n{metrics}"
    );
}

/// One `idle_connections` figure of the first endpoint in `/endpoints`.
async fn idle_upstream_connections(proxy: &Proxy) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/endpoints").await.body).unwrap();
    v["services"][0]["endpoints"][0]["idle_connections"]
        .as_u64()
        .expect("idle_connections in /endpoints")
}

#[tokio::test]
async fn idle_pooled_upstream_connections_close_after_the_pool_idle_timeout() {
    let up = Upstream::start("orders").await;
    let mut cfg = config();
    cfg.limits.pool_idle_timeout = Duration::from_millis(200);
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "o", up.addr).await;
    let mut c = Client::new(proxy.http);
    assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    assert_eq!(idle_upstream_connections(&proxy).await, 1);
    eventually(5, "the idle upstream connection to close", || async {
        idle_upstream_connections(&proxy).await == 0
    })
    .await;
    assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    assert_eq!(up.conns(), 2, "a new connection after the idle one closed");
}

/// An app that answers every request on a connection and then closes it without saying so
/// (no `Connection: close`), like an app whose keep-alive timeout is shorter than the pool's.
async fn closing_app() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // head and a 2-byte body
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") || !buf.ends_with(b"hi") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, posts)
}

#[tokio::test]
async fn a_post_on_a_pooled_connection_the_app_closed_goes_on_a_new_one() {
    let (app, posts) = closing_app().await;
    let proxy = Proxy::single("orders", "orders:8080", "o", app).await;
    let mut c = Client::new(proxy.http);
    let post = || {
        Request::post("http://orders:8080/pay")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap()
    };
    for n in 1..=3 {
        assert_eq!(c.send(post()).await.status, StatusCode::OK);
        // The app closed the pooled connection; the sidecar notices before the next POST.
        eventually(5, "the closed connection to leave the pool", || async {
            idle_upstream_connections(&proxy).await == 0
        })
        .await;
        assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), n);
    }
}

/// An app answering every request with `chunks` chunks of 64 KiB (chunked encoding), the n-th
/// chunk filled with byte n.
async fn streaming_app(chunks: usize) -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let frames = (0..chunks).map(|n| {
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![
                            n as u8;
                            64 * 1024
                        ])))
                    });
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client connection of its own to `addr` (the harness's `Client` reads bodies as text), with
/// the task driving it.
async fn raw_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (tx, tokio::spawn(conn))
}

fn get_big() -> Request<Full<Bytes>> {
    Request::get("http://orders:8080/big")
        .header("host", "orders:8080")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_big_streamed_response_to_a_slow_reader_arrives_whole_and_the_connection_is_reused() {
    use http_body_util::BodyExt;
    const CHUNKS: usize = 160; // 10 MiB
    let app = streaming_app(CHUNKS).await;
    let proxy = Proxy::single("orders", "orders:8080", "o", app).await;
    let (mut tx, _conn) = raw_connection(proxy.http).await;
    for round in 0..2 {
        let resp = tx.send_request(get_big()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let (mut total, mut frames) = (0usize, 0usize);
        let mut sum = 0u64;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap_or_default();
            total += data.len();
            sum += data.iter().map(|b| u64::from(*b)).sum::<u64>();
            frames += 1;
            if round == 0 && frames % 40 == 0 {
                // The scenario: a reader that stalls now and then (back-pressure upstream).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(total, CHUNKS * 64 * 1024, "round {round}");
        let expected: u64 = (0..CHUNKS as u64).map(|n| (n % 256) * 64 * 1024).sum();
        assert_eq!(sum, expected, "round {round}: every chunk, in order");
        tx.ready().await.unwrap();
    }
    let v: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/endpoints").await.body).unwrap();
    assert_eq!(
        v["services"][0]["endpoints"][0]["connections_opened"], 1,
        "the upstream connection went back to the pool after the body: {v}"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_body_closes_that_upstream_connection_only() {
    use http_body_util::BodyExt;
    let app = streaming_app(160).await;
    let proxy = Proxy::single("orders", "orders:8080", "o", app).await;
    {
        let (mut tx, conn) = raw_connection(proxy.http).await;
        let mut body = tx.send_request(get_big()).await.unwrap().into_body();
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        // The client goes away with most of the body unread.
        conn.abort();
    }
    // The sidecar serves the next client on a fresh upstream connection, in full.
    let (mut tx, _conn) = raw_connection(proxy.http).await;
    let resp = tx.send_request(get_big()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 160 * 64 * 1024);
    eventually(
        5,
        "the abandoned connection to be closed, not pooled",
        || async {
            let v: serde_json::Value =
                serde_json::from_str(&proxy.admin_get("/endpoints").await.body).unwrap();
            let ep = &v["services"][0]["endpoints"][0];
            ep["connections_opened"] == 2 && ep["idle_connections"] == 1
        },
    )
    .await;
}
