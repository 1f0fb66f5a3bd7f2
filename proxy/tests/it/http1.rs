//! The sidecar's own HTTP/1.1 server, byte for byte: pipelining, HTTP/1.0, `Expect:
//! 100-continue`, HEAD, and a connection that lives on after each of them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Reads from `s` until `done` says the bytes so far are complete (or 5 s pass).
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(&String::from_utf8_lossy(&out)) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("the answer came in time")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(out).unwrap()
}

/// An `orders` app behind a sidecar, and a raw connection to the sidecar's HTTP listener.
async fn orders_connection() -> (Upstream, Proxy, TcpStream) {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let s = TcpStream::connect(proxy.http).await.unwrap();
    (up, proxy, s)
}

/// Writes `bytes` to `s`.
async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
}

/// Sends `request` on a new connection to the sidecar's HTTP listener; everything that came
/// back once the sidecar closed it (within 5 s).
async fn answer_then_close(proxy: &Proxy, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    send(&mut s, request).await;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("the connection closed after the answer")
        .unwrap();
    out
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (_up, _proxy, mut s) = orders_connection().await;
    send(
        &mut s,
        b"GET http://orders:8080/a HTTP/1.1\r\nhost: orders:8080\r\n\r\n\
          POST http://orders:8080/b HTTP/1.1\r\nhost: orders:8080\r\ncontent-length: 3\r\n\r\nabc\
          GET http://orders:8080/c HTTP/1.1\r\nhost: orders:8080\r\n\r\n",
    )
    .await;
    let out = read_until(&mut s, |o| count(o, "orders") >= 3 * 2).await;
    assert_eq!(count(&out, "HTTP/1.1 200 OK"), 3, "{out}");
    let lens: Vec<_> = out
        .lines()
        .filter(|l| l.starts_with("x-body-len"))
        .collect();
    assert_eq!(
        lens,
        ["x-body-len: 0", "x-body-len: 3", "x-body-len: 0"],
        "{out}"
    );
    assert!(out.contains("date: "), "responses carry a Date: {out}");
}

#[tokio::test]
async fn http_1_0_clients_get_their_answer_and_a_close_unless_they_keep_alive() {
    let up = Upstream::start("orders").await;
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    // Plain HTTP/1.0: answered, then closed.
    let out = answer_then_close(
        &proxy,
        b"GET http://orders:8080/ HTTP/1.0\r\nhost: orders:8080\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("content-length: 6\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\norders"), "{out}");
    // HTTP/1.0 with keep-alive: the connection carries a second request.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    for _ in 0..2 {
        send(&mut s, b"GET http://orders:8080/ HTTP/1.0\r\nhost: orders:8080\r\nconnection: keep-alive\r\n\r\n").await;
        let out = read_until(&mut s, |o| o.ends_with("orders")).await;
        assert!(out.contains("connection: keep-alive\r\n"), "{out}");
    }
}

#[tokio::test]
async fn an_answer_of_unknown_length_to_http_1_0_ends_with_the_connection() {
    let up = Upstream::start("orders").await;
    // A streamed body (chunked upstream): an HTTP/1.0 client can only be told where it ends by
    // the connection closing, keep-alive or not.
    up.set(Behavior::Grpc {
        status: 0,
        trailers_only: false,
    });
    let proxy = Proxy::single("orders", "orders:8080", "o", up.addr).await;
    let out = answer_then_close(
        &proxy,
        b"GET http://orders:8080/ HTTP/1.0\r\nhost: orders:8080\r\nconnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    assert!(out.ends_with("\r\n\r\norders"), "{out}");
}

#[tokio::test]
async fn expect_100_continue_gets_a_continue_then_the_answer() {
    let (_up, _proxy, mut s) = orders_connection().await;
    send(&mut s, b"PUT http://orders:8080/x HTTP/1.1\r\nhost: orders:8080\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n").await;
    let interim = read_until(&mut s, |o| o.ends_with("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    send(&mut s, b"hello").await;
    let out = read_until(&mut s, |o| o.ends_with("orders")).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("x-body-len: 5\r\n"), "{out}");
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_the_connection_goes_on() {
    let (_up, _proxy, mut s) = orders_connection().await;
    send(
        &mut s,
        b"HEAD http://orders:8080/ HTTP/1.1\r\nhost: orders:8080\r\n\r\n",
    )
    .await;
    let head = read_until(&mut s, |o| o.ends_with("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    send(
        &mut s,
        b"GET http://orders:8080/ HTTP/1.1\r\nhost: orders:8080\r\n\r\n",
    )
    .await;
    let out = read_until(&mut s, |o| o.ends_with("orders")).await;
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n"),
        "the HEAD answer had no body, so the next one starts right away: {out}"
    );
}

#[tokio::test]
async fn a_request_with_both_framings_is_read_chunked_and_loses_its_length() {
    let (_up, _proxy, mut s) = orders_connection().await;
    // The length (3) is not the body's (11 bytes, chunked): the upstream must see 11.
    send(
        &mut s,
        b"POST http://orders:8080/x HTTP/1.1\r\nhost: orders:8080\r\ncontent-length: 3\r\n\
          transfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let out = read_until(&mut s, |o| o.ends_with("orders")).await;
    assert!(out.contains("x-body-len: 11\r\n"), "{out}");
    assert!(
        out.contains("connection: close\r\n"),
        "a request framed both ways does not keep its connection: {out}"
    );
}

#[tokio::test]
async fn a_refused_request_with_a_big_body_still_gets_its_answer() {
    let (_up, _proxy, mut s) = orders_connection().await;
    // No such service: answered 404 before the body is read, and the connection closed
    // while the client is still sending; it reads its answer all the same.
    let body = vec![b'x'; 512 * 1024];
    let head = format!(
        "POST http://nowhere:8080/x HTTP/1.1\r\nhost: nowhere:8080\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let ((), out) = tokio::join!(write, read);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.contains("nowhere:8080"),
        "the answer names the host: {out}"
    );
}
