use super::*;
use http_body_util::{Empty, Full};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A connection to a loopback "upstream" that answers the first request with `response`
/// (raw bytes) and hands back what it received.
async fn exchange(response: &'static [u8]) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its head");
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(response).await.unwrap();
        // Keep the connection open until the client is done with it.
        let _ = s.read(&mut chunk).await;
        got
    });
    let io = TcpStream::connect(addr).await.unwrap();
    (Conn::new(io), upstream)
}

fn get(path: &str) -> http::request::Parts {
    let (mut parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("orders:8080"));
    parts
}

/// [`encode_request`] with the fields of `parts` as they are.
fn encode_as_given(
    parts: &http::request::Parts,
    body: Body,
    out: &mut Vec<u8>,
) -> Option<(Body, bool)> {
    encode_request(
        parts,
        |out| {
            encode_fields(&parts.headers, out);
            parts.headers.contains_key(header::CONTENT_LENGTH)
        },
        body,
        out,
    )
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

async fn read_all(conn: &mut Conn, reader: &mut BodyReader) -> (Vec<u8>, Option<HeaderMap>) {
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = std::future::poll_fn(|cx| conn.poll_body(reader, cx)).await {
        match frame.unwrap().into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (data, trailers)
}

#[tokio::test]
async fn a_content_length_response_leaves_the_connection_reusable() {
    let (mut conn, upstream) =
        exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello").await;
    let parts = get("/orders?id=7");
    let mut head = Vec::new();
    let mut rest = encode_as_given(&parts, empty(), &mut head);
    assert!(rest.is_none());
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    let (resp, mut reader) = conn.read_head(&Method::GET, true).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let values: Vec<_> = resp.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(reader.size_hint().exact(), Some(5));
    let (data, trailers) = read_all(&mut conn, &mut reader).await;
    assert_eq!(data, b"hello");
    assert!(trailers.is_none());
    assert!(reader.leaves_reusable());
    assert!(conn.usable(), "nothing arrived after the response");
    drop(conn);
    let sent = String::from_utf8(upstream.await.unwrap()).unwrap();
    assert!(
        sent.starts_with("GET /orders?id=7 HTTP/1.1\r\nhost: orders:8080\r\n"),
        "{sent}"
    );
}

#[tokio::test]
async fn chunked_responses_keep_their_trailers_and_skip_interim_ones() {
    let (mut conn, _upstream) = exchange(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\ngrpc-status: 0\r\n\r\n",
    )
    .await;
    let mut head = Vec::new();
    let mut rest = encode_as_given(&get("/"), empty(), &mut head);
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    let (resp, mut reader) = conn.read_head(&Method::GET, true).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, trailers) = read_all(&mut conn, &mut reader).await;
    assert_eq!(data, b"hello!");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert!(reader.leaves_reusable());
}

#[tokio::test]
async fn a_response_without_length_is_read_until_close_and_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 4096];
        let _ = s.read(&mut chunk).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            .await
            .unwrap();
    });
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let mut head = Vec::new();
    let mut rest = encode_as_given(&get("/"), empty(), &mut head);
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    let (_, mut reader) = conn.read_head(&Method::GET, true).await.unwrap();
    let (data, _) = read_all(&mut conn, &mut reader).await;
    assert_eq!(data, b"all of it");
    assert!(reader.is_done() && !reader.leaves_reusable());
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body_and_closing_ones_are_not_reused() {
    let (mut conn, _upstream) =
        exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\nconnection: close\r\n\r\n").await;
    let mut head = Vec::new();
    let (mut parts, ()) = http::Request::head("/").body(()).unwrap().into_parts();
    parts
        .headers
        .insert(header::HOST, HeaderValue::from_static("o"));
    let mut rest = encode_as_given(&parts, empty(), &mut head);
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    let (resp, reader) = conn.read_head(&Method::HEAD, true).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "99");
    assert!(reader.is_done(), "a HEAD answer has no body");
    assert!(!reader.leaves_reusable(), "the upstream said close");
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    // Known length and ready: sent with the head, a content-length added.
    let mut head = Vec::new();
    let (parts, ()) = http::Request::post("/pay").body(()).unwrap().into_parts();
    let body = Full::new(Bytes::from_static(b"hi"))
        .map_err(|never| match never {})
        .boxed();
    assert!(encode_as_given(&parts, body, &mut head).is_none());
    assert!(head.ends_with(b"content-length: 2\r\n\r\nhi"), "{head:?}");
    // Unknown length: chunked, streamed after the head.
    let mut head = Vec::new();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::BoxError>>(1);
    let stream = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
    let rest = encode_as_given(&parts, stream, &mut head);
    assert!(head.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    assert!(matches!(rest, Some((_, true))));
    drop(tx);
    // Empty POST: an explicit zero length.
    let mut head = Vec::new();
    assert!(encode_as_given(&parts, empty(), &mut head).is_none());
    assert!(head.ends_with(b"content-length: 0\r\n\r\n"));
}

/// A stream of the frames sent on `rx`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, crate::BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::BoxError>> + Send + Sync {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) })
}

#[tokio::test]
async fn a_closed_connection_is_not_usable_and_bad_heads_are_errors() {
    let (mut conn, upstream) = exchange(b"HTTP/1.1 2x0 OK\r\n\r\n").await;
    let mut head = Vec::new();
    let mut rest = encode_as_given(&get("/"), empty(), &mut head);
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    assert!(matches!(
        conn.read_head(&Method::GET, true).await,
        Err(Error::Parse(_))
    ));
    upstream.abort();
    let (mut conn, upstream) = exchange(b"").await;
    let mut head = Vec::new();
    let mut rest = encode_as_given(&get("/"), empty(), &mut head);
    assert!(conn.write_request(&head, &mut rest).await.unwrap());
    upstream.abort();
    let _ = upstream.await;
    // The upstream is gone: the end shows once the socket says so.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while conn.usable() {
        assert!(tokio::time::Instant::now() < deadline, "never saw the end");
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        conn.read_head(&Method::GET, true).await,
        Err(Error::ClosedBeforeHead | Error::Read(_))
    ));
}

#[tokio::test]
async fn an_answer_before_the_whole_body_stops_the_upload_and_the_reuse() {
    // The upstream answers 413 on the head alone, without reading the body.
    let (mut conn, _upstream) =
        exchange(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
    let (parts, ()) = http::Request::post("/upload")
        .body(())
        .unwrap()
        .into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::BoxError>>(1);
    let stream = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
    let mut head = Vec::new();
    let mut rest = encode_as_given(&parts, stream, &mut head);
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    // The body never ends: only the upstream's answer ends the upload.
    let whole = conn.write_request(&head, &mut rest).await.unwrap();
    assert!(!whole, "the upload stopped at the answer");
    let (resp, reader) = conn.read_head(&Method::POST, whole).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reader.is_done());
    assert!(
        !reader.leaves_reusable(),
        "a connection with half a request body on it is not reused"
    );
    drop(tx);
}

/// The facts of a head whose fields are `fields`.
fn facts_of(fields: &[(&str, &str)]) -> Facts {
    let mut facts = Facts::default();
    for (name, value) in fields {
        facts.note(
            &HeaderName::from_bytes(name.as_bytes()).unwrap(),
            &HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    facts
}

#[test]
fn facts_read_framing_and_connection_fields_in_one_pass() {
    let f = facts_of(&[("Content-Length", "5"), ("content-length", "5, 5")]);
    assert_eq!(
        f.content_length().unwrap(),
        Some(5),
        "repeated equal values are one"
    );
    let f = facts_of(&[("content-length", "5"), ("content-length", "6")]);
    assert!(f.content_length().is_err(), "conflicting lengths");
    let f = facts_of(&[("content-length", "five")]);
    assert!(f.content_length().is_err(), "not a number");
    assert!(BodyReader::for_request(&f).is_err());

    let f = facts_of(&[
        ("transfer-encoding", "chunked"),
        ("transfer-encoding", "gzip, chunked"),
    ]);
    assert!(f.transfer_encoding && f.chunked_last);
    let f = facts_of(&[("transfer-encoding", "chunked, gzip")]);
    assert!(f.transfer_encoding && !f.chunked_last);
    assert!(BodyReader::for_request(&f).is_err(), "chunked is not last");

    let f = facts_of(&[
        ("connection", "Keep-Alive"),
        ("connection", "x-foo, Upgrade"),
    ]);
    assert!(f.keeps_alive(0) && f.keeps_alive(1));
    assert!(!f.wants_upgrade(Version::HTTP_11), "no Upgrade field");
    let f = facts_of(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    assert!(f.wants_upgrade(Version::HTTP_11) && !f.wants_upgrade(Version::HTTP_10));
    let f = facts_of(&[("connection", "close")]);
    assert!(!f.keeps_alive(1) && !f.keeps_alive(0));

    let f = facts_of(&[("expect", "100-Continue"), ("expect", "other")]);
    assert!(f.expect_continue, "the first Expect counts");
    // A value that is not visible ASCII is passed over, as `HeaderValue::to_str` would.
    let f = facts_of(&[("connection", "close\u{ff}")]);
    assert!(!f.close);
}

#[test]
fn a_head_framed_both_ways_loses_its_length() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let mut facts = facts_of(&[("content-length", "3"), ("transfer-encoding", "chunked")]);
    assert!(drop_length_if_chunked(&mut headers, &mut facts));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    assert_eq!(facts.content_length().unwrap(), None);
    let mut only_length = facts_of(&[("content-length", "3")]);
    assert!(!drop_length_if_chunked(&mut headers, &mut only_length));
}
