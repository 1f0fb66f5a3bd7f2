//! A real gRPC client and server (Python grpcio) through two sidecars, as between two tasks:
//! client → client sidecar (alias VIP, or the HTTP proxy listener) → server sidecar (inbound
//! `grpc` entry) → server. Unary, server streaming, metadata and trailers, non-zero statuses
//! (trailers-only and after messages) and `grpc-timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;
use skiff_proxy::AppProtocol;

use crate::harness::*;
use crate::process::{ChildGuard, command, run, stderr, stdout};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/grpc")
        .join(name)
}

/// The Python gRPC server, killed when dropped.
struct GrpcServer {
    process: ChildGuard,
    port: u16,
}

async fn grpc_server(name: &str) -> GrpcServer {
    let mut cmd = command("python3");
    cmd.arg(script("server.py")).arg(name);
    let mut process = ChildGuard::spawn(cmd, "python grpc server");
    let port = process.line_starting("PORT ", 20).await.parse().unwrap();
    GrpcServer { process, port }
}

/// One call by the Python client; `authority` "-" keeps the target's.
async fn call(target: SocketAddr, authority: &str, method: &str, arg: &str) -> Value {
    let mut cmd = command("python3");
    cmd.arg(script("client.py"))
        .args([&target.to_string(), authority, method, arg]);
    let out = run(cmd, 20).await;
    assert!(out.status.success(), "client failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("client printed {:?}: {e}", stdout(&out)))
}

/// The Python server behind a server sidecar, and a client sidecar whose alias `echo:50051`
/// leads to it.
struct Stack {
    server: GrpcServer,
    server_sidecar: Proxy,
    client_sidecar: Proxy,
    vip: SocketAddr,
}

async fn stack(vip_octet: u8) -> Stack {
    let server = grpc_server("echo-1").await;
    let mut entry = ingress("echo", server.port);
    entry.app_protocol = AppProtocol::Grpc;
    entry.client_aliases = vec!["echo:50051".parse().unwrap()];
    let server_sidecar = Proxy::start_with(config(), vec![], vec![entry], "echo").await;
    let client_sidecar = Proxy::start(
        vip_config(vip_octet),
        vec![grpc_service(
            "echo",
            "echo:50051",
            vec![endpoint("task-1", server_sidecar.ingress[0])],
        )],
    )
    .await;
    let vip = wait_alias(&client_sidecar, "echo:50051").await;
    Stack {
        server,
        server_sidecar,
        client_sidecar,
        vip,
    }
}

async fn grpc_count(proxy: &Proxy, status: &str) -> f64 {
    let text = proxy.admin_get("/metrics").await.body;
    // Outbound answers (a client sidecar) or inbound requests (a server sidecar).
    metric(
        &text,
        "skiff_proxy_grpc_responses_total",
        &[("grpc_status", status)],
    )
    .or_else(|| {
        metric(
            &text,
            "skiff_proxy_inbound_grpc_requests_total",
            &[("grpc_status", status)],
        )
    })
    .unwrap_or(0.0)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn grpc_unary_streaming_and_metadata_through_both_sidecars() {
    let s = stack(10).await;

    // Unary through the alias VIP: message, initial metadata and trailers all arrive.
    let r = call(s.vip, "-", "Echo", "hello").await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(strings(&r["responses"]), ["echo:hello"]);
    assert_eq!(r["initial"]["x-served-by"], "echo-1", "{r}");
    assert_eq!(r["trailing"]["x-trailer"], "done", "{r}");
    assert_eq!(
        r["trailing"]["x-client-echo"], "py-client",
        "request metadata reaches the server: {r}"
    );

    // Server streaming: every message, in order.
    let r = call(s.vip, "-", "Count", "7").await;
    assert_eq!(r["code"], "OK", "{r}");
    let want: Vec<String> = (0..7).map(|i| format!("msg-{i}")).collect();
    assert_eq!(strings(&r["responses"]), want);

    // The same service through the HTTP proxy listener, routed by :authority.
    let r = call(s.client_sidecar.http, "echo:50051", "Echo", "via-proxy").await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(strings(&r["responses"]), ["echo:via-proxy"]);

    assert_eq!(grpc_count(&s.client_sidecar, "0").await, 3.0);
    assert_eq!(grpc_count(&s.server_sidecar, "0").await, 3.0);
    drop(s.server);
}

#[tokio::test]
async fn grpc_bidi_ping_pong_and_a_large_message_stream_through_both_sidecars() {
    let s = stack(14).await;
    // Each ping is sent only once the previous pong arrived: a sidecar holding request
    // bytes back (buffering the body) would stall the call into its deadline.
    let r = call(s.vip, "-", "Chat", "5").await;
    assert_eq!(r["code"], "OK", "{r}");
    let want: Vec<String> = (0..5).map(|i| format!("pong:ping-{i}")).collect();
    assert_eq!(strings(&r["responses"]), want);

    // 1 MiB each way, far past the 64 KiB replay buffer and the HTTP/2 windows.
    let r = call(s.vip, "-", "Echo", "BIG:1048576").await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["sizes"], serde_json::json!([1048576 + "echo:".len()]));
    drop(s.server);
}

#[tokio::test]
async fn grpc_non_zero_status_reaches_the_client_and_counts_as_failure() {
    let s = stack(11).await;

    // Trailers-only answer (the handler aborts before any message).
    let r = call(s.vip, "-", "Missing", "order-42").await;
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["details"], "no such thing: order-42");
    assert!(strings(&r["responses"]).is_empty());

    // Status in trailers after messages.
    let r = call(s.vip, "-", "Count", "3!").await;
    assert_eq!(r["code"], "ABORTED", "{r}");
    assert_eq!(r["details"], "stopped after 3");
    assert_eq!(strings(&r["responses"]), ["msg-0", "msg-1", "msg-2"]);

    for proxy in [&s.client_sidecar, &s.server_sidecar] {
        assert_eq!(grpc_count(proxy, "5").await, 1.0, "NOT_FOUND counted");
        assert_eq!(grpc_count(proxy, "10").await, 1.0, "ABORTED counted");
        assert_eq!(grpc_count(proxy, "0").await, 0.0, "no success counted");
    }
    let text = s.client_sidecar.admin_get("/metrics").await.body;
    assert_eq!(
        metric(
            &text,
            "skiff_proxy_grpc_responses_total",
            &[("target_discovery_name", "echo"), ("grpc_status", "5")],
        ),
        Some(1.0),
        "labelled by target: {text}"
    );
    drop(s.server);
}

#[tokio::test]
async fn grpc_timeout_cuts_a_slow_call_and_cancels_it_upstream() {
    let mut s = stack(12).await;
    // One gRPC message: flag 0, length 1, "5" (the handler sleeps 5 s unless cancelled).
    let frame = std::env::temp_dir().join(format!("skiff-grpc-slow-{}", std::process::id()));
    std::fs::write(&frame, b"\x00\x00\x00\x00\x015").unwrap();
    let mut cmd = command("curl");
    cmd.args([
        "-sS",
        "--http2-prior-knowledge",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        "grpc-timeout: 300m",
        "--data-binary",
    ])
    .arg(format!("@{}", frame.display()))
    .arg(format!("http://{}/skiff.test.Echo/Slow", s.vip));
    let out = run(cmd, 15).await;
    let _ = std::fs::remove_file(&frame);
    let head = stdout(&out).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}{}", stderr(&out));
    assert!(
        head.contains("grpc-status: 4\r\n"),
        "DEADLINE_EXCEEDED: {head}"
    );
    // The sidecars gave up on the call, so the server sees it cancelled.
    assert_eq!(s.server.process.line_starting("CANCELLED", 8).await, "");
    drop(s.server_sidecar);
}

#[tokio::test]
async fn grpc_client_sees_the_sidecar_timeout_as_deadline_exceeded_with_its_reason() {
    let mut server = grpc_server("echo-1").await;
    let mut entry = ingress("echo", server.port);
    entry.app_protocol = AppProtocol::Grpc;
    entry.timeouts.per_request = Some(std::time::Duration::from_millis(300));
    let sidecar = Proxy::start_with(config(), vec![], vec![entry], "echo").await;
    // The client's own deadline (8 s) is far away: the sidecar's per-request timeout acts.
    let r = call(sidecar.ingress[0], "-", "Slow", "5").await;
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    let details = r["details"].as_str().unwrap();
    assert!(details.contains("skiff-proxy"), "the sidecar says why: {r}");
    assert_eq!(server.process.line_starting("CANCELLED", 8).await, "");
    assert_eq!(grpc_count(&sidecar, "4").await, 1.0);
}

#[tokio::test]
async fn grpc_client_sees_a_service_without_endpoints_as_unavailable_naming_it() {
    let sidecar = Proxy::start(
        vip_config(13),
        vec![grpc_service("echo", "echo:50051", vec![])],
    )
    .await;
    let vip = wait_alias(&sidecar, "echo:50051").await;
    let r = call(vip, "-", "Echo", "hello").await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    let details = r["details"].as_str().unwrap();
    assert!(details.contains("echo"), "names the service: {r}");
    assert_eq!(grpc_count(&sidecar, "14").await, 1.0);
}
