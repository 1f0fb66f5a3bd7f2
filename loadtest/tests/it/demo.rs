//! The demo app as examples and the e2e tests use it.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use skiff_loadtest::{DemoServeOptions, LoadtestError, ProxyConfig, demo_probe, demo_serve};

use crate::harness::{Demo, FakeProxy, get, get_h2c, json};

#[tokio::test]
async fn serves_identity_and_health() {
    let demo = Demo::start("orders", |_| {}).await;
    let (status, body) = get(&demo.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    let body = json(&body);
    assert_eq!(body["service"], "orders");
    assert_eq!(body["task"], "task-orders");
    assert_eq!(body["host"], "127.0.0.1");
    assert_eq!(body["port"], demo.addr.port());
    assert_eq!(body["calls"], serde_json::json!([]));

    assert_eq!(
        get(&demo.url("/health")).await,
        (StatusCode::OK, "ok".into())
    );
    demo.stop().await;
}

#[tokio::test]
async fn speaks_h2c_with_prior_knowledge() {
    let demo = Demo::start("orders", |_| {}).await;
    assert_eq!(
        get_h2c(&demo.url("/health")).await,
        (StatusCode::OK, "ok".into())
    );
    let (status, body) = get_h2c(&demo.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["service"], "orders");
    demo.stop().await;
}

#[tokio::test]
async fn status_delay_stats_and_unknown_routes() {
    let demo = Demo::start("knobs", |_| {}).await;
    assert_eq!(
        get(&demo.url("/status/503")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&demo.url("/status/204")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&demo.url("/status/abc")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&demo.url("/status/1000")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&demo.url("/delay/5")).await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(get(&demo.url("/delay/x")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&demo.url("/nope")).await.0, StatusCode::NOT_FOUND);
    let (status, stats) = get(&demo.url("/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let stats = json(&stats);
    // Seven requests before this one, each client a new connection.
    assert_eq!(stats["requests"], 8);
    assert_eq!(stats["connections_accepted"], 8);
    demo.stop().await;
}

#[tokio::test]
async fn frontend_calls_orders_directly() {
    let orders = Demo::start("orders", |_| {}).await;
    let orders_url = orders.url("/");
    let frontend = Demo::start("frontend", |opts| opts.calls = vec![orders_url.clone()]).await;
    let (status, body) = get(&frontend.url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = json(&body);
    assert_eq!(body["service"], "frontend");
    assert_eq!(body["calls"][0]["service"], "orders");
    assert_eq!(body["calls"][0]["port"], orders.addr.port());
    frontend.stop().await;
    orders.stop().await;
}

#[tokio::test]
async fn frontend_calls_orders_through_http_proxy_in_absolute_form() {
    let orders = Demo::start("orders", |_| {}).await;
    let proxy = FakeProxy::start(BTreeMap::from([("orders:8080".to_string(), orders.addr)])).await;
    let proxy_config = ProxyConfig::parse(&proxy.url(), None).unwrap();
    let frontend = Demo::start("frontend", |opts| {
        opts.calls = vec!["http://orders:8080/".to_string()];
        opts.proxy = Some(proxy_config);
    })
    .await;
    let (status, body) = get(&frontend.url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["calls"][0]["service"], "orders");
    assert_eq!(
        *proxy.seen.lock().unwrap(),
        vec!["http://orders:8080/".to_string()]
    );
    frontend.stop().await;
    orders.stop().await;
}

#[tokio::test]
async fn no_proxy_hosts_are_called_directly() {
    let orders = Demo::start("orders", |_| {}).await;
    let proxy = FakeProxy::start(BTreeMap::new()).await;
    let proxy_config = ProxyConfig::parse(&proxy.url(), Some("127.0.0.1")).unwrap();
    let orders_url = orders.url("/");
    let frontend = Demo::start("frontend", |opts| {
        opts.calls = vec![orders_url.clone()];
        opts.proxy = Some(proxy_config);
    })
    .await;
    let (status, body) = get(&frontend.url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(proxy.seen.lock().unwrap().is_empty());
    frontend.stop().await;
}

#[tokio::test]
async fn failed_call_makes_a_502_naming_the_error() {
    let orders = Demo::start("orders", |_| {}).await;
    let failing = orders.url("/status/503");
    let frontend = Demo::start("frontend", |opts| opts.calls = vec![failing.clone()]).await;
    let (status, body) = get(&frontend.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = json(&body);
    assert_eq!(body["calls"][0]["url"], failing);
    assert_eq!(body["calls"][0]["status"], 503);
    assert!(body["calls"][0]["error"].as_str().unwrap().contains("503"));
    frontend.stop().await;
}

#[tokio::test]
async fn probe_is_true_only_for_2xx() {
    let demo = Demo::start("orders", |_| {}).await;
    let timeout = Duration::from_secs(2);
    assert!(demo_probe(&demo.url("/health"), timeout).await);
    assert!(!demo_probe(&demo.url("/status/500"), timeout).await);
    assert!(!demo_probe("not a url", timeout).await);
    let closed = demo.addr;
    demo.stop().await;
    assert!(!demo_probe(&format!("http://{closed}/health"), timeout).await);
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut opts = DemoServeOptions::new("orders", port);
    opts.host = "127.0.0.1".into();
    let error = demo_serve(opts, std::future::pending()).await.unwrap_err();
    assert!(matches!(error, LoadtestError::Bind { .. }));
    assert!(
        error
            .to_string()
            .starts_with(&format!("bind 127.0.0.1:{port} failed")),
        "{error}"
    );
}

#[tokio::test]
async fn grpc_health_check_hello_and_requested_failures() {
    use skiff_loadtest::demo::grpc::{HEALTH_CHECK, HELLO, string_field_1};

    use crate::harness::grpc_call;
    let demo = Demo::start("orders", |opts| opts.grpc = true).await;

    let (status, content_type, message, grpc_status) =
        grpc_call(demo.addr, HEALTH_CHECK, &[], &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/grpc");
    assert_eq!(message, Some(vec![0x08, 0x01]), "SERVING");
    assert_eq!(grpc_status, "0");

    let unknown = [&[0x0a, 5][..], b"other"].concat();
    let (_, _, _, grpc_status) = grpc_call(demo.addr, HEALTH_CHECK, &unknown, &[]).await;
    assert_eq!(grpc_status, "5", "NOT_FOUND");

    let (_, _, message, grpc_status) = grpc_call(demo.addr, HELLO, &[], &[]).await;
    assert_eq!(grpc_status, "0");
    let identity = string_field_1(&message.unwrap()).unwrap();
    assert_eq!(json(&identity)["service"], "orders");

    let (_, _, _, grpc_status) =
        grpc_call(demo.addr, HELLO, &[], &[("x-demo-grpc-status", "14")]).await;
    assert_eq!(grpc_status, "14");
    let (_, _, _, grpc_status) = grpc_call(demo.addr, "/x.Y/Z", &[], &[]).await;
    assert_eq!(grpc_status, "12", "UNIMPLEMENTED");
    demo.stop().await;
}

#[tokio::test]
async fn grpc_mode_refuses_http1() {
    let demo = Demo::start("orders", |opts| opts.grpc = true).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        client.get(demo.url("/health").parse().unwrap()).await
    })
    .await
    .unwrap();
    assert!(refused.is_err());
    assert_eq!(
        get_h2c(&demo.url("/health")).await,
        (StatusCode::OK, "ok".into())
    );
    demo.stop().await;
}
