//! Tests of the telemetry comparison: the traced row's configuration, counter scraping, the sink, the table.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};

use super::*;
use crate::bench::peers;
use crate::load::LatencySummary;

const METRICS: &str = r#"# HELP skiff_proxy_spans_exported_total Spans accepted by the OTLP collector
# TYPE skiff_proxy_spans_exported_total counter
skiff_proxy_spans_exported_total{cluster_name="skiff-bench",service_name="bench-origin"} 4096
skiff_proxy_spans_exported_total{cluster_name="skiff-bench",service_name="odd } name"} 10 1700000000000
# HELP skiff_proxy_spans_dropped_total Finished spans dropped
# TYPE skiff_proxy_spans_dropped_total counter
skiff_proxy_spans_dropped_total{cluster_name="skiff-bench",service_name="bench-origin"} 512
skiff_proxy_spans_dropped_total_extra 99
skiff_proxy_requests_total 7
"#;

#[test]
fn span_counters_sum_every_label_set_and_ignore_longer_names() {
    assert_eq!(metric_sum(METRICS, SPANS_EXPORTED), Some(4106.0));
    assert_eq!(span_counters(METRICS), (Some(4106), Some(512)));
    assert_eq!(metric_sum("plain_total 3.5\n", "plain_total"), Some(3.5));
    assert_eq!(metric_sum(METRICS, "skiff_proxy_missing_total"), None);
    assert_eq!(span_counters(""), (None, None));
    assert_eq!(metric_sum("x_total{a=\"b\"} garbage\n", "x_total"), None);
}

#[test]
fn traced_service_turns_the_json_access_log_on_and_keeps_the_ingress() {
    let plain = peers::sidecar_service(1111);
    let traced = peers::sidecar_service_with_access_log(1111);
    let sc = &traced["serviceConnectConfiguration"];
    assert_eq!(sc["accessLogConfiguration"]["format"], "JSON");
    assert_eq!(
        sc["services"],
        plain["serviceConnectConfiguration"]["services"]
    );
    assert!(
        plain["serviceConnectConfiguration"]
            .get("accessLogConfiguration")
            .is_none()
    );
}

#[test]
fn traced_env_samples_everything_and_exports_to_the_sink() {
    let env = peers::traced_env(SocketAddr::from(([127, 0, 0, 1], 4318)));
    let get = |name: &str| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://127.0.0.1:4318")
    );
    assert_eq!(get("OTEL_EXPORTER_OTLP_PROTOCOL"), Some("http/protobuf"));
    assert_eq!(get("OTEL_TRACES_SAMPLER"), Some("always_on"));
}

#[test]
fn with_env_clears_inherited_otel_settings_before_setting_its_own() {
    let argv = vec!["/bin/skiff".to_string(), "proxy".to_string()];
    let set = vec![("OTEL_TRACES_SAMPLER".to_string(), "always_on".to_string())];
    let out = peers::with_env(&argv, &set);
    assert_eq!(out[0], "env");
    assert_eq!(out[out.len() - 2..], argv[..]);
    let assignment = out
        .iter()
        .position(|a| a == "OTEL_TRACES_SAMPLER=always_on");
    let last_unset = out.iter().rposition(|a| a == "-u");
    assert!(assignment > last_unset, "{out:?}");
    for var in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"] {
        let at = out.iter().position(|a| a == var).unwrap();
        assert_eq!(out[at - 1], "-u");
    }
    // Telemetry off: only removals.
    let off = peers::with_env(&argv, &[]);
    assert!(!off.iter().any(|a| a.contains('=')));
}

fn row(peer: Peer, throughput: f64, cpu: f64, p50: u64, p99: u64) -> BenchRow {
    BenchRow {
        peer: peer_name(peer).to_string(),
        max_throughput: Some(throughput),
        cpu_us_per_request: Some(cpu),
        latency: Some(LatencySummary {
            count: 1000,
            p50_us: p50,
            p99_us: p99,
            ..LatencySummary::default()
        }),
        ..BenchRow::default()
    }
}

#[test]
fn cost_is_traced_over_off_and_checked_against_ten_percent() {
    let off = row(Peer::Sidecar, 50_000.0, 20.0, 200, 400);
    let within = TelemetryCost::compare(&off, &row(Peer::SidecarTraced, 46_000.0, 22.0, 210, 436));
    assert_eq!(within.throughput, Some(0.92));
    assert_eq!(within.cpu_per_request, Some(1.1));
    assert_eq!(within.p99, Some(1.09));
    let met: Vec<Option<bool>> = within.checks(2000.0).iter().map(|c| c.met).collect();
    assert_eq!(met, vec![Some(true), Some(true)]);

    let beyond = TelemetryCost::compare(&off, &row(Peer::SidecarTraced, 44_000.0, 25.0, 250, 460));
    let checks = beyond.checks(2000.0);
    assert_eq!(checks[0].met, Some(false));
    assert_eq!(checks[0].measured, "0.88×");
    assert_eq!(checks[1].met, Some(false));
    assert_eq!(checks[1].what, "p99 at 2000 req/s, traced ÷ off");

    let unknown = TelemetryCost::compare(&BenchRow::default(), &off);
    assert!(unknown.checks(2000.0).iter().all(|c| c.met.is_none()));
}

fn report(rows: Vec<BenchRow>) -> BenchReport {
    BenchReport {
        rows,
        notes: Vec::new(),
        rate: 2000.0,
        rate_connections: 16,
        max_connections: 64,
        held_connections: 0,
        elapsed_secs: 1.0,
    }
}

#[test]
fn markdown_shows_both_rows_the_ratios_and_the_verdicts() {
    let off = BenchRow {
        telemetry: Some(TelemetryFigures {
            requests: 1000,
            spans_exported: Some(0),
            spans_dropped: Some(0),
            ..TelemetryFigures::default()
        }),
        ..row(Peer::Sidecar, 50_000.0, 20.0, 200, 400)
    };
    let traced = BenchRow {
        telemetry: Some(TelemetryFigures {
            traced: true,
            access_log: true,
            requests: 1000,
            spans_exported: Some(1536),
            spans_dropped: Some(464),
            otlp_requests: Some(3),
            otlp_bytes: Some(300 * 1024),
        }),
        ..row(Peer::SidecarTraced, 40_000.0, 30.0, 300, 420)
    };
    let text = markdown(&report(vec![off.clone(), traced.clone()]));
    assert!(text.contains("### Cost of full telemetry"), "{text}");
    assert!(
        text.contains(
            "| telemetry off (metrics only) | 50000 | 20.0 | 200 | 400 | 0 | 0 | — | — |"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "| metrics + traces + access log | 40000 | 30.0 | 300 | 420 | 1536 | 464 | 3 | 300 |"
        ),
        "{text}"
    );
    assert!(
        text.contains("| traced ÷ off | 0.80× | 1.50× | 1.50× | 1.05× |"),
        "{text}"
    );
    assert!(text.contains("| max throughput, traced ÷ off | 0.80× | ≥ 0.90× | **missed** |"));
    assert!(text.contains("| p99 at 2000 req/s, traced ÷ off | 1.05× | ≤ 1.10× | met |"));
    assert!(text.contains("≈ 2.00 finished spans each"));

    // Without the access log (`--traced-without-access-log`), the rows say so.
    let mut unlogged = traced.clone();
    if let Some(t) = unlogged.telemetry.as_mut() {
        t.access_log = false;
    }
    let text = markdown(&report(vec![off.clone(), unlogged]));
    assert!(text.contains("over OTLP, vs telemetry off)"), "{text}");
    assert!(text.contains("| metrics + traces | 40000 |"), "{text}");

    // Through the whole report, too.
    assert!(
        report(vec![off.clone(), traced.clone()])
            .to_markdown()
            .contains("traced ÷ off")
    );
    // No traced row measured: no section.
    let skipped = BenchRow {
        skipped: Some("time budget of 30 s exhausted".into()),
        ..traced
    };
    assert_eq!(markdown(&report(vec![off, skipped])), "");
    // A traced row alone: its figures, no ratios.
    let alone = markdown(&report(vec![row(Peer::SidecarTraced, 1.0, 1.0, 1, 1)]));
    assert!(alone.contains("| telemetry off (metrics only) | not measured |"));
    assert!(!alone.contains("traced ÷ off |"));
}

async fn post(addr: SocketAddr, path: &str, body: &'static [u8]) -> http::StatusCode {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn sink_answers_trace_exports_and_counts_them() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(SinkCounts::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, counts.clone(), async move {
        let _ = stopped.await;
    }));
    assert_eq!(post(addr, "/v1/traces", b"\x0a\x03abc").await, 200);
    assert_eq!(post(addr, "/v1/traces", b"12").await, 200);
    assert_eq!(post(addr, "/v1/metrics", b"ignored").await, 404);
    assert_eq!(counts.snapshot(), (2, 7));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sink_on_its_own_thread_stops_when_asked() {
    let sink = OtlpSink::start(None).unwrap();
    assert!(sink.addr.ip().is_loopback());
    assert_eq!(post(sink.addr, "/v1/traces", b"x").await, 200);
    assert_eq!(sink.counts.snapshot(), (1, 1));
    let counts = sink.counts.clone();
    let addr = sink.addr;
    sink.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(counts.snapshot(), (1, 1));
}

#[test]
fn the_sidecar_moves_to_the_next_loopback_address_when_its_ports_are_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.201:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let candidates = [
        std::net::Ipv4Addr::new(127, 0, 0, 201),
        std::net::Ipv4Addr::new(127, 0, 0, 202),
    ];
    assert_eq!(
        peers::first_free_ip(candidates, &[port]),
        Some(candidates[1])
    );
    assert_eq!(
        peers::first_free_ip(candidates[..1].to_vec(), &[port]),
        None
    );
    drop(taken);
}
