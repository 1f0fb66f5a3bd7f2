//! The generator against the demo app: counts and error kinds, never latency values.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_loadtest::load::Protocol;
use skiff_loadtest::{LoadMode, LoadOptions, LoadtestError, ProxyConfig, run};

use crate::harness::{Demo, FakeProxy, get, json};

#[tokio::test]
async fn open_loop_http1_sends_exactly_the_schedule() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::rate(demo.url("/health"), 200.0, Duration::from_millis(500));
    opts.connections = 4;
    let report = run(opts).await.unwrap();
    assert_eq!(report.mode, "rate");
    assert_eq!(report.planned, 100);
    assert_eq!(report.sent, 100);
    assert_eq!(report.not_sent, 0);
    assert_eq!(report.responses, 100);
    assert_eq!(report.ok, 100);
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    assert_eq!(report.statuses, BTreeMap::from([(200, 100)]));
    assert_eq!(report.latency.count, 100);
    assert_eq!(report.service_time.count, 100);
    assert_eq!(report.bytes_received, 200);
    // Keep-alive: four connections for a hundred requests (and one for this question).
    let (_, stats) = get(&demo.url("/stats")).await;
    assert_eq!(json(&stats)["connections_accepted"], 5);
    demo.stop().await;
}

#[tokio::test]
async fn open_loop_h2c_multiplexes_on_few_connections() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::rate(demo.url("/"), 400.0, Duration::from_millis(250));
    opts.connections = 2;
    opts.protocol = Protocol::H2c;
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 100);
    assert_eq!(report.ok, 100);
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    let (_, stats) = get(&demo.url("/stats")).await;
    assert_eq!(json(&stats)["connections_accepted"], 3);
    demo.stop().await;
}

#[tokio::test]
async fn closed_loop_stops_at_the_count_bound() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::max(demo.url("/health"), Duration::from_secs(60));
    opts.connections = 8;
    opts.max_requests = Some(500);
    let report = run(opts).await.unwrap();
    assert_eq!(report.mode, "max");
    assert_eq!(report.target_rate, None);
    assert_eq!(report.sent, 500);
    assert_eq!(report.ok, 500);
    assert_eq!(report.errors.total(), 0);
    demo.stop().await;
}

#[tokio::test]
async fn closed_loop_h2c_with_several_streams() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::max(demo.url("/health"), Duration::from_secs(60));
    opts.connections = 2;
    opts.streams_per_connection = 8;
    opts.protocol = Protocol::H2c;
    opts.max_requests = Some(300);
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 300);
    assert_eq!(report.ok, 300);
    demo.stop().await;
}

#[tokio::test]
async fn statuses_count_as_errors_by_class() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::rate(demo.url("/status/503"), 100.0, Duration::from_millis(200));
    opts.targets.push(demo.url("/status/404"));
    opts.connections = 2;
    // Paced by the runtime's timer wheel (`--coarse-timing`): the plan is the same.
    opts.precise_timing = false;
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 20);
    assert_eq!(report.responses, 20);
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.status_5xx, 10);
    assert_eq!(report.errors.status_4xx, 10);
    assert_eq!(report.statuses, BTreeMap::from([(404, 10), (503, 10)]));
    demo.stop().await;
}

#[tokio::test]
async fn a_closed_port_counts_connect_errors() {
    let demo = Demo::start("origin", |_| {}).await;
    let url = demo.url("/health");
    demo.stop().await;
    let mut opts = LoadOptions::rate(url, 100.0, Duration::from_millis(100));
    opts.connections = 2;
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 10);
    assert_eq!(report.errors.connect, 10);
    assert_eq!(report.responses, 0);
}

#[tokio::test]
async fn slow_answers_count_as_timeouts() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::rate(demo.url("/delay/5000"), 20.0, Duration::from_millis(200));
    opts.connections = 4;
    opts.timeout = Duration::from_millis(100);
    let report = run(opts).await.unwrap();
    assert_eq!(report.planned, 4);
    assert_eq!(report.sent + report.not_sent, 4);
    assert_eq!(report.errors.timeout, report.sent);
    assert_eq!(report.responses, 0);
    demo.stop().await;
}

#[tokio::test]
async fn through_an_http_proxy_requests_are_absolute_form() {
    let demo = Demo::start("origin", |_| {}).await;
    let proxy = FakeProxy::start(BTreeMap::from([("orders:8080".to_string(), demo.addr)])).await;
    let mut opts = LoadOptions::rate(
        "http://orders:8080/health",
        100.0,
        Duration::from_millis(100),
    );
    opts.connections = 1;
    opts.proxy = Some(ProxyConfig::parse(&proxy.url(), None).unwrap());
    let report = run(opts).await.unwrap();
    assert_eq!(report.ok, 10, "{:?}", report.errors);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen, vec!["http://orders:8080/health".to_string(); 10]);
    demo.stop().await;
}

#[tokio::test]
async fn refuses_non_loopback_targets_and_bad_options() {
    let refused = run(LoadOptions::rate(
        "http://192.0.2.1:80/",
        10.0,
        Duration::from_secs(1),
    ))
    .await;
    assert!(
        matches!(refused, Err(LoadtestError::InvalidUrl { .. })),
        "{refused:?}"
    );
    let mut opts = LoadOptions::rate("http://127.0.0.1:9/", 10.0, Duration::from_secs(1));
    opts.mode = LoadMode::Rate { per_second: 0.0 };
    assert!(matches!(
        run(opts).await,
        Err(LoadtestError::InvalidOption(_))
    ));
    let mut opts = LoadOptions::rate("https://127.0.0.1:9/", 10.0, Duration::from_secs(1));
    opts.connections = 1;
    assert!(matches!(
        run(opts).await,
        Err(LoadtestError::InvalidUrl { .. })
    ));
    let opts = LoadOptions::rate("http://127.0.0.1:9/", 10.0, Duration::ZERO);
    assert!(matches!(
        run(opts).await,
        Err(LoadtestError::InvalidOption(_))
    ));
}

#[tokio::test]
async fn posts_a_body_with_headers() {
    let demo = Demo::start("origin", |_| {}).await;
    let mut opts = LoadOptions::max(demo.url("/echo"), Duration::from_secs(30));
    opts.method = http::Method::POST;
    opts.body = bytes::Bytes::from_static(b"hello");
    opts.headers = vec![("content-type".into(), "text/plain".into())];
    opts.connections = 1;
    opts.max_requests = Some(10);
    let report = run(opts).await.unwrap();
    assert_eq!(report.ok, 10);
    assert_eq!(report.bytes_received, 50);
    demo.stop().await;
}
