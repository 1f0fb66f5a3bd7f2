//! h2load (nghttp2) drives h2c prior-knowledge load through the sidecar: through an inbound
//! `http2` entry, through an alias VIP and through the HTTP proxy listener. Only success
//! counts are asserted, never latency.

use std::net::SocketAddr;

use skiff_proxy::AppProtocol;

use crate::harness::*;
use crate::process::{command, run, stderr, stdout};

const REQUESTS: u64 = 2000;

/// What h2load reports on its `requests:` and `status codes:` lines.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    status_2xx: u64,
}

/// `requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout`
/// `status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx`
fn parse(text: &str) -> Report {
    let field = |prefix: &str, name: &str| -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"));
        line.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_suffix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name:?} in {line:?}"))
    };
    Report {
        succeeded: field("requests:", " succeeded"),
        failed: field("requests:", " failed"),
        errored: field("requests:", " errored"),
        timeout: field("requests:", " timeout"),
        status_2xx: field("status codes:", " 2xx"),
    }
}

/// `h2load -n 2000 -c 4 -m 10 http://ADDR/PATH` (h2c, prior knowledge) plus `extra` args.
async fn h2load(addr: SocketAddr, path: &str, extra: &[&str]) -> Report {
    let mut cmd = command("h2load");
    cmd.args(["-n", &REQUESTS.to_string(), "-c", "4", "-m", "10"])
        .args(extra)
        .arg(format!("http://{addr}{path}"));
    let out = run(cmd, 60).await;
    assert!(out.status.success(), "h2load failed: {}", stderr(&out));
    parse(&stdout(&out))
}

fn all_succeeded() -> Report {
    Report {
        succeeded: REQUESTS,
        failed: 0,
        errored: 0,
        timeout: 0,
        status_2xx: REQUESTS,
    }
}

#[test]
fn parses_the_h2load_summary() {
    let text = "finished in 1.2s, 1666.67 req/s, 50KB/s\n\
        requests: 2000 total, 2000 started, 1990 done, 1985 succeeded, 15 failed, 10 errored, 0 timeout\n\
        status codes: 1985 2xx, 0 3xx, 0 4xx, 5 5xx\n";
    assert_eq!(
        parse(text),
        Report {
            succeeded: 1985,
            failed: 15,
            errored: 10,
            timeout: 0,
            status_2xx: 1985,
        }
    );
}

#[tokio::test]
async fn h2load_through_an_inbound_http2_entry() {
    let app = Upstream::start("app").await;
    let mut entry = ingress("orders", app.addr.port());
    entry.app_protocol = AppProtocol::Http2;
    let proxy = Proxy::start_with(config(), vec![], vec![entry], "orders").await;
    assert_eq!(
        h2load(proxy.ingress[0], "/load", &[]).await,
        all_succeeded()
    );
    assert_eq!(
        app.hits(),
        REQUESTS as usize,
        "each request reached the app once"
    );
}

#[tokio::test]
async fn h2load_through_an_alias_vip_to_http1_tasks() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(
        vip_config(20),
        vec![service(
            "orders",
            "orders:18080",
            vec![endpoint("a", a.addr), endpoint("b", b.addr)],
        )],
    )
    .await;
    let vip = wait_alias(&proxy, "orders:18080").await;
    assert_eq!(h2load(vip, "/load", &[]).await, all_succeeded());
    assert_eq!(a.hits() + b.hits(), REQUESTS as usize);
    let text = proxy.admin_get("/metrics").await.body;
    assert_eq!(
        metric(
            &text,
            "skiff_proxy_requests_total",
            &[("target_discovery_name", "orders"), ("status_class", "2xx")],
        ),
        Some(REQUESTS as f64),
        "{text}"
    );
}

#[tokio::test]
async fn h2load_through_the_http_proxy_listener_to_an_http2_service() {
    let app = Upstream::start("app").await;
    let mut svc = service("orders", "orders:8080", vec![endpoint("a", app.addr)]);
    svc.protocol = AppProtocol::Http2;
    let proxy = Proxy::start(config(), vec![svc]).await;
    let report = h2load(proxy.http, "/load", &["-H", ":authority: orders:8080"]).await;
    assert_eq!(report, all_succeeded());
    assert_eq!(app.hits(), REQUESTS as usize);
}
