//! Unit tests of the sidecar's metric handles: families, labels, reasons, byte counting.

use super::*;
use prometheus::Encoder;

fn text(r: &Registry) -> String {
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn inbound_and_outbound_land_in_their_own_families_with_cluster_and_service() {
    let r = Registry::new();
    let m = Metrics::with_cluster(&r, "frontend", "prod").unwrap();
    let inbound = m.target("inbound/web");
    inbound.record_status(Some(http::StatusCode::OK));
    let orders = m.target("orders");
    orders.record_status(Some(http::StatusCode::BAD_GATEWAY));
    orders.record_status(None);
    orders.record_failure(&ProxyError::NoEndpoints {
        service: "orders".into(),
    });
    orders.record_members([(true, false), (false, false), (true, true)].into_iter());
    let t = text(&r);
    assert!(t.contains(r#"skiff_proxy_inbound_requests_total{cluster_name="prod",discovery_name="web",service_name="frontend",status_class="2xx"} 1"#), "{t}");
    assert!(t.contains(r#"skiff_proxy_requests_total{cluster_name="prod",service_name="frontend",status_class="5xx",target_discovery_name="orders"} 1"#), "{t}");
    assert!(t.contains(r#"skiff_proxy_requests_total{cluster_name="prod",service_name="frontend",status_class="error",target_discovery_name="orders"} 1"#), "{t}");
    assert!(t.contains(r#"skiff_proxy_failed_requests_total{cluster_name="prod",reason="no_endpoints",service_name="frontend",target_discovery_name="orders"} 1"#), "{t}");
    for (health, n) in [("healthy", 1), ("unhealthy", 1), ("draining", 1)] {
        assert!(t.contains(&format!(r#"skiff_proxy_target_endpoints{{cluster_name="prod",health="{health}",service_name="frontend",target_discovery_name="orders"}} {n}"#)), "{t}");
    }
    // The inbound side has no outbound status series and no discovered endpoints.
    assert!(
        !t.contains(r#"status_class="2xx",target_discovery_name="inbound/web""#),
        "{t}"
    );
    assert!(!t.contains(r#"skiff_proxy_target_endpoints{cluster_name="prod",health="healthy",service_name="frontend",target_discovery_name="inbound/web""#), "{t}");
    // Handles are resolved once per target.
    assert!(Arc::ptr_eq(&orders, &m.target("orders")));
}

#[test]
fn every_proxy_error_has_a_bounded_failure_reason() {
    let errors = [
        ProxyError::MissingHost,
        ProxyError::Timeout {
            service: "a".into(),
            timeout: std::time::Duration::from_secs(1),
        },
        ProxyError::TooManyPending {
            service: "a".into(),
            limit: 1,
        },
        ProxyError::Internal("x".into()),
        ProxyError::NoEndpoints {
            service: "a".into(),
        },
        ProxyError::Connect {
            service: "a".into(),
            addr: "127.0.0.1:1".into(),
            source: "refused".into(),
        },
        ProxyError::Registry("down".into()),
    ];
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| FAILURE_REASONS[failure_index(e)])
        .collect();
    assert_eq!(
        reasons,
        [
            "bad_request",
            "timeout",
            "circuit_open",
            "internal",
            "no_endpoints",
            "connect_failure",
            "other"
        ]
    );
}

#[tokio::test]
async fn body_bytes_are_counted_as_they_stream() {
    let r = Registry::new();
    let m = Metrics::new(&r, "client").unwrap();
    let t = m.target("orders");
    let body: Body = http_body_util::Full::new(bytes::Bytes::from_static(b"hello"))
        .map_err(|never| match never {})
        .boxed();
    let counted = t.count_tx(body).collect().await.unwrap().to_bytes();
    assert_eq!(&counted[..], b"hello");
    assert_eq!(t.bytes_tx.get(), 5);
    assert_eq!(t.bytes_rx.get(), 0);
    assert!(text(&r).contains(r#"skiff_proxy_build_info{cluster_name="default",version=""#));
}
