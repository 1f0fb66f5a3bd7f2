//! curl through the sidecar: absolute-form through the HTTP proxy listener, and HTTP/2 with
//! prior knowledge to an inbound `http2` entry and to an alias VIP.

use std::net::SocketAddr;

use skiff_proxy::AppProtocol;

use crate::harness::*;
use crate::process::{command, run, stderr, stdout};

/// curl `args`; returns (response headers, body) and asserts it exited 0.
async fn curl(args: &[&str]) -> (String, String) {
    let headers = std::env::temp_dir().join(format!(
        "skiff-curl-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut cmd = command("curl");
    cmd.args(["-sS", "--max-time", "8", "-D"])
        .arg(&headers)
        .args(args);
    let out = run(cmd, 15).await;
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    let _ = std::fs::remove_file(&headers);
    assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
    (head.to_ascii_lowercase(), stdout(&out))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test]
async fn curl_absolute_form_through_the_proxy_listener() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let proxy_url = format!("http://{}", proxy.http);
    // GET by alias, then by the namespace-qualified name with a body (POST).
    let (head, body) = curl(&["-x", &proxy_url, "http://orders:8080/hello"]).await;
    assert_eq!(body, "orders");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-seen-host: orders:8080"), "{head}");
    let (head, body) = curl(&[
        "-x",
        &proxy_url,
        "--data-binary",
        "0123456789",
        "http://orders.prod.internal:8080/submit",
    ])
    .await;
    assert_eq!(body, "orders");
    assert!(head.contains("x-body-len: 10"), "{head}");
    // A chunked upload streams through.
    let (head, _) = curl(&[
        "-x",
        &proxy_url,
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        "abcdefgh",
        "http://orders:8080/chunked",
    ])
    .await;
    assert!(head.contains("x-body-len: 8"), "{head}");
}

#[tokio::test]
async fn curl_http2_prior_knowledge_to_an_inbound_http2_entry() {
    let app = Upstream::start("app").await;
    let mut entry = ingress("orders", app.addr.port());
    entry.app_protocol = AppProtocol::Http2;
    let proxy = Proxy::start_with(config(), vec![], vec![entry], "orders").await;
    let (head, body) = curl(&["--http2-prior-knowledge", &url(proxy.ingress[0], "/x")]).await;
    assert_eq!(body, "app");
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains("x-seen-version: http/2.0"),
        "the app is spoken to in HTTP/2: {head}"
    );
}

#[tokio::test]
async fn curl_http2_prior_knowledge_to_an_alias_vip() {
    let app = Upstream::start("orders").await;
    let proxy = Proxy::start(
        vip_config(40),
        vec![service(
            "orders",
            "orders:18080",
            vec![endpoint("o", app.addr)],
        )],
    )
    .await;
    let vip = wait_alias(&proxy, "orders:18080").await;
    let (head, body) = curl(&["--http2-prior-knowledge", &url(vip, "/x")]).await;
    assert_eq!(body, "orders");
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("x-seen-version: http/1.1"), "{head}");
}
