//! Outbound: the HTTP proxy listener routing to discovered services.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use skiff_proxy::config::{BalancerKind, ProxyConfig};

use crate::harness::*;

fn rr() -> ProxyConfig {
    let mut c = config();
    c.balancer = BalancerKind::RoundRobin;
    c
}

#[tokio::test]
async fn routes_by_absolute_uri_host_header_and_namespace_name() {
    let orders = Upstream::start("orders-1").await;
    let users = Upstream::start("users-1").await;
    let proxy = Proxy::start(
        config(),
        vec![
            service("orders", "orders:8080", vec![endpoint("o1", orders.addr)]),
            service("users", "users.api:9090", vec![endpoint("u1", users.addr)]),
        ],
    )
    .await;
    let mut c = Client::new(proxy.http);
    let r = c.get("http://orders:8080/x").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "orders-1"));
    assert_eq!(
        r.headers["x-seen-host"], "orders:8080",
        "the app sees the alias as Host"
    );

    let req = Request::get("/y")
        .header("host", "users.api:9090")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "users-1"));

    let r = c.get("http://orders.prod.internal:8080/").await;
    assert_eq!(r.body, "orders-1");
    let r = c.get("http://ORDERS/").await;
    assert_eq!(
        r.body, "orders-1",
        "an unambiguous alias name routes without its port"
    );
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let proxy = Proxy::start(config(), vec![]).await;
    let r = Client::new(proxy.http).get("http://nope.example:81/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("nope.example:81"), "{}", r.body);
}

#[tokio::test]
async fn service_without_endpoints_is_503_naming_it() {
    let proxy = Proxy::start(config(), vec![service("orders", "orders:8080", vec![])]).await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("orders"), "{}", r.body);
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint_even_for_post() {
    let live = Upstream::start("live").await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(
        rr(),
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("d", dead), endpoint("l", live.addr)],
        )],
    )
    .await;
    let mut c = Client::new(proxy.http);
    for i in 0..6 {
        let req = Request::post("http://orders:8080/")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        assert_eq!(r.body, "live");
    }
}

#[tokio::test]
async fn post_to_503_upstream_is_not_retried() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set(Behavior::Status(503));
    b.set(Behavior::Status(503));
    let proxy = Proxy::start(
        rr(),
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("a", a.addr), endpoint("b", b.addr)],
        )],
    )
    .await;
    let req = Request::post("http://orders:8080/")
        .body(Full::new(Bytes::from("pay")))
        .unwrap();
    let r = Client::new(proxy.http).send(req).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "a non-idempotent request reached the app once"
    );
}

#[tokio::test]
async fn get_on_503_is_retried_on_another_endpoint() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.set(Behavior::Status(503));
    let mut cfg = rr();
    cfg.debug_attempts_header = true;
    let proxy = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("bad", bad.addr), endpoint("good", good.addr)],
        )],
    )
    .await;
    let mut c = Client::new(proxy.http);
    let r = c.get("http://orders:8080/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "good"));
    assert_eq!(r.headers["x-skiff-attempts"], "2");
    assert_eq!(bad.hits(), 1);
    // A POST with an Idempotency-Key is retried the same way.
    let mut ok = 0;
    for _ in 0..4 {
        let req = Request::post("http://orders:8080/")
            .header("idempotency-key", "k1")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        ok += usize::from(c.send(req).await.status == StatusCode::OK);
    }
    assert_eq!(ok, 4);
}

#[tokio::test]
async fn slow_upstream_times_out_with_504() {
    let slow = Upstream::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_secs(30)));
    let mut cfg = config();
    cfg.default_policy.timeouts.per_request = Some(Duration::from_millis(200));
    let proxy = Proxy::single_with(cfg, "orders", "orders:8080", "s", slow.addr).await;
    let r = Client::new(proxy.http).get("http://orders:8080/").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.body.contains("orders did not answer within 200ms"),
        "{}",
        r.body
    );
}

/// The count the binary's busy polling reads (`src/park.rs`): a request is in it from the
/// moment it is sent upstream until its response head is in, or it times out — never longer,
/// or an idle sidecar would keep polling. (Each test runs in a process of its own.)
#[tokio::test]
async fn a_response_is_awaited_until_its_head_arrives_or_its_request_times_out() {
    assert!(!skiff_proxy::responses_awaited());
    let slow = Upstream::start("slow").await;
    let mut cfg = config();
    cfg.default_policy.timeouts.per_request = Some(Duration::from_millis(400));
    let proxy = Proxy::start(
        cfg,
        vec![
            service("orders", "orders:8080", vec![endpoint("s", slow.addr)]),
            grpc_service("greeter", "greeter:50051", vec![endpoint("g", slow.addr)]),
        ],
    )
    .await;
    let http = proxy.http;
    // HTTP/1.1 answered, HTTP/1.1 timed out, HTTP/2 answered.
    for (delay, timed_out, h2) in [
        (200, false, false),
        (30_000, true, false),
        (200, false, true),
    ] {
        slow.set(Behavior::Delay(Duration::from_millis(delay)));
        let request = tokio::spawn(async move {
            if h2 {
                h2_send(http, grpc_request("http://greeter:50051/x.Y/Z"))
                    .await
                    .status
            } else {
                Client::new(http).get("http://orders:8080/").await.status
            }
        });
        eventually(5, "the request awaited upstream", || async {
            skiff_proxy::responses_awaited()
        })
        .await;
        let status = request.await.unwrap();
        let expected = if timed_out {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "delay {delay} ms, h2 {h2}");
        assert!(
            !skiff_proxy::responses_awaited(),
            "still awaited after the answer (delay {delay} ms, h2 {h2})"
        );
    }
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_returns() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.set(Behavior::Status(500));
    let mut cfg = rr();
    cfg.outlier.base_ejection = Duration::from_millis(300);
    let proxy = Proxy::start(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("bad", bad.addr), endpoint("good", good.addr)],
        )],
    )
    .await;
    let mut c = Client::new(proxy.http);
    for _ in 0..30 {
        c.get("http://orders:8080/").await;
    }
    assert_eq!(bad.hits(), 5, "ejected after 5 consecutive failures");
    let eps = proxy.admin_get("/endpoints").await;
    let v: serde_json::Value = serde_json::from_str(&eps.body).unwrap();
    let bad_view = v["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "bad")
        .unwrap()
        .clone();
    assert_eq!(bad_view["ejections"], 1, "{bad_view}");
    // It comes back after the ejection time.
    bad.set(Behavior::Ok);
    eventually(10, "ejected endpoint gets traffic again", || async {
        Client::new(proxy.http).get("http://orders:8080/").await;
        bad.hits() > 5
    })
    .await;
}

#[tokio::test]
async fn slow_endpoint_loses_traffic_under_peak_ewma() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    slow.set(Behavior::Delay(Duration::from_millis(150)));
    let proxy = Proxy::start(
        config(),
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("s", slow.addr), endpoint("f", fast.addr)],
        )],
    )
    .await;
    let mut c = Client::new(proxy.http);
    for _ in 0..40 {
        assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    }
    assert!(slow.hits() <= 3, "slow got {} of 40", slow.hits());
}

#[tokio::test]
async fn keep_alive_reuses_upstream_connections() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let mut c = Client::new(proxy.http);
    for _ in 0..50 {
        assert_eq!(c.get("http://orders:8080/").await.status, StatusCode::OK);
    }
    assert_eq!(c.connects, 1, "the proxy keeps the client connection open");
    assert!(
        up.conns() <= 2,
        "50 requests opened {} upstream connections",
        up.conns()
    );
}

#[tokio::test]
async fn curl_through_the_proxy() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-x",
            &format!("http://{}", proxy.http),
            "http://orders:8080/hello",
        ])
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "orders");
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &format!("http://{}", proxy.http),
            "http://missing:1/",
        ])
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[tokio::test]
async fn endpoints_follow_discovery_updates() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::single("orders", "orders:8080", "a", a.addr).await;
    let mut c = Client::new(proxy.http);
    assert_eq!(c.get("http://orders:8080/").await.body, "a");
    proxy.publish(
        2,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("b", b.addr)],
        )],
    );
    eventually(5, "traffic moves to b", || async {
        Client::new(proxy.http)
            .get("http://orders:8080/")
            .await
            .body
            == "b"
    })
    .await;
    // A new service becomes reachable without a restart.
    proxy.publish(
        3,
        vec![
            service("orders", "orders:8080", vec![endpoint("b", b.addr)]),
            service("users", "users:80", vec![endpoint("a", a.addr)]),
        ],
    );
    eventually(5, "new service routes", || async {
        Client::new(proxy.http).get("http://users/").await.body == "a"
    })
    .await;
}

#[tokio::test]
async fn unhealthy_endpoints_are_skipped_unless_none_is_healthy() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut sick = endpoint("a", a.addr);
    sick.healthy = false;
    let proxy = Proxy::start(
        config(),
        vec![service(
            "orders",
            "orders:8080",
            vec![sick.clone(), endpoint("b", b.addr)],
        )],
    )
    .await;
    let mut c = Client::new(proxy.http);
    for _ in 0..10 {
        assert_eq!(c.get("http://orders:8080/").await.body, "b");
    }
    proxy.publish(2, vec![service("orders", "orders:8080", vec![sick])]);
    eventually(5, "fail open to the unhealthy endpoint", || async {
        Client::new(proxy.http)
            .get("http://orders:8080/")
            .await
            .body
            == "a"
    })
    .await;
}

#[tokio::test]
async fn metrics_count_requests_by_target_and_status_class() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let mut c = Client::new(proxy.http);
    for _ in 0..3 {
        c.get("http://orders:8080/").await;
    }
    let m = proxy.admin_get("/metrics").await.body;
    assert!(
        m.contains(r#"skiff_proxy_requests_total{cluster_name="default",service_name="client",status_class="2xx",target_discovery_name="orders"} 3"#),
        "{m}"
    );
    assert!(m.contains("skiff_proxy_target_response_time_seconds_bucket"));
    assert!(
        m.contains(
            r#"skiff_proxy_new_connections_total{cluster_name="default",listener="outbound"} 1"#
        ),
        "{m}"
    );
    let tx = m
        .lines()
        .find(|l| {
            l.starts_with(
                r#"skiff_proxy_processed_bytes_total{cluster_name="default",direction="tx",listener="outbound"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        tx > 3 * "orders".len() as u64,
        "processed bytes counted: {m}"
    );
}

#[tokio::test]
async fn traceparent_is_continued_or_started_upstream() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let mut c = Client::new(proxy.http);
    let req = Request::get("http://orders:8080/")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = c.send(req).await.headers["x-seen-traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "this hop has its own span: {seen}"
    );
    let seen = c.get("http://orders:8080/").await.headers["x-seen-traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen.len(), 55, "a trace is started: {seen}");
}

#[tokio::test]
async fn killing_one_of_three_upstreams_under_load_fails_no_request() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let eps = ups
        .iter()
        .enumerate()
        .map(|(i, u)| endpoint(&format!("e{i}"), u.addr))
        .collect();
    let proxy = Proxy::start(config(), vec![service("orders", "orders:8080", eps)]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, addr) = (stop.clone(), proxy.http);
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut c = Client::new(addr);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c
                    .try_send(
                        Request::get("http://orders:8080/")
                            .body(Full::new(Bytes::new()))
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
    eventually(10, "load on every upstream", || async {
        ups.iter().all(|u| u.hits() > 20)
    })
    .await;
    ups[0].kill();
    let (b, c) = (ups[1].hits(), ups[2].hits());
    eventually(10, "load continues on the others", || async {
        ups[1].hits() + ups[2].hits() > b + c + 200
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        let (ok, failed) = l.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 0);
    }
}
