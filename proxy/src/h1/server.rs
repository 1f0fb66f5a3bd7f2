//! server: the downstream side of HTTP/1.1 — one connection's requests read, handled and
//! answered in the connection's own task, one at a time (pipelined ones in order).
//!
//! An idle keep-alive connection holds no buffer: it waits for readability with none, takes
//! one for the request head, and lets it go once the exchange is over and nothing more was
//! sent. A request body reads itself from the connection: the reading side is lent to it and
//! comes back when it ends or is dropped (unread to its end, the connection then closes after
//! the response).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{
    BodyReader, Error, MAX_HEADERS, Spans, Wire, bodiless, chunk_start, drop_length_if_chunked,
    encode_fields, fields_of, last_chunk, push_field, push_number, spans_of, uninit_headers,
    value_tokens, write_all_two,
};
use crate::server::{Activity, HttpListener, IdleIo};
use crate::{Body, BoxError};

type ReadSide = Wire<IdleIo<OwnedReadHalf>>;
type WriteSide = IdleIo<OwnedWriteHalf>;

/// A body part at least this big is written from where it is, not copied into the buffer.
const BIG_PART: usize = 8 * 1024;

/// The buffer a request head is first read into.
const HEAD_BUFFER: usize = 1024;

/// Where a request body gives the reading side back, with whether it was read whole.
type Home = Arc<Mutex<Option<(ReadSide, bool)>>>;

/// Marks a request whose protocol switch (101) this server splices itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplicedHere;

/// The upstream end of a switched protocol, from `forward` to the server that splices it.
#[derive(Clone)]
pub(crate) struct UpstreamUpgrade(pub(crate) Arc<Mutex<Option<(TcpStream, Bytes)>>>);

/// A request head that could not be read.
enum HeadError {
    /// The client left between requests.
    Closed,
    /// The client left in the middle of a head, or the socket failed.
    Incomplete,
    TooLarge,
    Malformed(&'static str),
}

/// A parsed request head.
struct Head {
    parts: http::request::Parts,
    body: BodyReader,
    /// The client lets the connection live on after this exchange.
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// A request body read from the lent reading side.
struct RequestBody {
    wire: Option<ReadSide>,
    reader: BodyReader,
    home: Home,
}

/// Serves one HTTP/1 connection until the client leaves, an exchange fails or says close,
/// or the connection was told to close ([`Activity::shut`]) during an exchange. (Told to
/// close while idle, it is simply dropped.)
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<HttpListener>,
    activity: Arc<Activity>,
) {
    let (rd, wr) = stream.into_split();
    let mut wr = IdleIo::new(wr, activity.clone(), ctx.bytes.clone());
    let home: Home = Arc::new(Mutex::new(None));
    let mut wire = Wire::new(IdleIo::new(rd, activity.clone(), ctx.bytes.clone()));
    loop {
        if wire.buf.is_empty() {
            // Between requests: no buffer while waiting.
            wire.buf = BytesMut::new();
            if wire.io.get_ref().readable().await.is_err() {
                return;
            }
        }
        let head = match read_head(&mut wire, ctx.max_header_bytes()).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return,
            Err(HeadError::Incomplete) => return ctx.count_error("incomplete"),
            // The rare ends are boxed here and below: their futures (lingering reads into
            // 4 KiB) would otherwise be room in every connection's task.
            Err(HeadError::TooLarge) => {
                ctx.count_error("header_too_large");
                let text = "skiff-proxy: request header fields too large\n";
                let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                return Box::pin(refuse(wire, wr, status, text)).await;
            }
            Err(HeadError::Malformed(what)) => {
                ctx.count_error("malformed");
                let text = format!("skiff-proxy: malformed request: {what}\n");
                return Box::pin(refuse(wire, wr, StatusCode::BAD_REQUEST, &text)).await;
            }
        };
        let guard = activity.begin();
        let Head {
            parts,
            body: reader,
            keep_alive,
            expect_continue,
            upgrade,
        } = head;
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        // The body, when there is one, takes the reading side with it.
        let lent = !reader.is_done();
        if lent
            && expect_continue
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let mut req = Request::from_parts(parts, Body::default());
        let mut wire_slot = Some(wire);
        if lent {
            *req.body_mut() = RequestBody {
                wire: wire_slot.take(),
                reader,
                home: home.clone(),
            }
            .boxed();
        }
        if upgrade {
            req.extensions_mut().insert(SplicedHere);
        }
        // Held inline (~3 KiB of the connection's task): boxed, every request paid for an
        // allocation outside the allocator's thread cache and a copy of the whole future.
        let resp = ctx.handle(req, peer).await;
        let mut whole = true;
        wire = match wire_slot {
            Some(w) => w,
            None => match lock(&home).take() {
                Some((back, done)) => {
                    whole = done;
                    back
                }
                // The body lives on somewhere (an HTTP/2 upstream still sending it): this
                // connection cannot read its next request.
                None => return,
            },
        };
        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            drop(guard);
            return Box::pin(splice(wire, wr, resp)).await;
        }
        let close = !keep_alive || !whole || activity.is_shut();
        let (written, close) = write_response(&mut wr, resp, version, head_request, close).await;
        drop(guard);
        if written && !whole {
            // Answered without reading the whole request body.
            return Box::pin(linger(&mut wire, &mut wr)).await;
        }
        if !written || close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

fn lock(home: &Home) -> MutexGuard<'_, Option<(ReadSide, bool)>> {
    home.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads and parses the next request head.
async fn read_head(wire: &mut ReadSide, max: usize) -> Result<Head, HeadError> {
    if wire.buf.capacity() == 0 {
        // Most heads fit in 1 KiB (an allocation from the allocator's per-thread cache); a
        // bigger one grows the buffer. Allocated outright: `reserve` on an empty buffer takes
        // the long way (its growth policy) to the same allocation.
        wire.buf = BytesMut::with_capacity(HEAD_BUFFER);
    }
    loop {
        if !wire.buf.is_empty() {
            if let Some(head) = parse_head(&mut wire.buf, max)? {
                return Ok(head);
            }
            if wire.buf.len() >= max {
                return Err(HeadError::TooLarge);
            }
        }
        let before = wire.buf.len();
        match wire.read_more().await {
            Ok(true) => {}
            Ok(false) if before == 0 => return Err(HeadError::Closed),
            Ok(false) | Err(_) => return Err(HeadError::Incomplete),
        }
    }
}

/// The head at the start of `buf` (at most `max` bytes), taken out of it; `None` while
/// incomplete.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, HeadError> {
    let mut spans: Spans = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, method, path, minor, n) = {
        let mut headers = uninit_headers();
        let mut req = httparse::Request::new(&mut []);
        let status = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed("invalid request head")),
        };
        let httparse::Status::Complete(len) = status else {
            return Ok(None);
        };
        // Whole, but bigger than allowed (a read may bring more than the limit at once).
        if len > max {
            return Err(HeadError::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        let span = |s: &str| (s.as_ptr() as usize - base, s.len());
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| HeadError::Malformed("invalid method"))?;
        let path = span(req.path.unwrap_or(""));
        let minor = req.version.unwrap_or(1);
        let n = spans_of(base, req.headers, &mut spans);
        (len, method, path, minor, n)
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let (mut headers, mut facts) = fields_of(&head, &spans[..n]).map_err(HeadError::Malformed)?;
    let both = drop_length_if_chunked(&mut headers, &mut facts);
    let body = BodyReader::for_request(&facts).map_err(|e| match e {
        Error::Invalid(what) => HeadError::Malformed(what),
        _ => HeadError::Malformed("invalid body framing"),
    })?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let keep_alive = !both && facts.keeps_alive(minor);
    let expect_continue = facts.expect_continue;
    if expect_continue {
        // Answered here; the upstream gets the body without waiting.
        headers.remove(header::EXPECT);
    }
    let upgrade = facts.wants_upgrade(version);
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        body,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `resp` (head, then its body as it comes), closing after it when `close` or when the
/// response says so. Whether it was written whole, and whether the connection closes after
/// it (false, false when it cannot go on: a write failed, or the body failed or ended short
/// of its length).
async fn write_response(
    wr: &mut WriteSide,
    resp: Response<Body>,
    version: Version,
    head_request: bool,
    close: bool,
) -> (bool, bool) {
    use Out::Chunked;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    buf.extend_from_slice(b"\r\n");
    // The fields, and what framing needs of them, in one pass.
    let (mut given_length, mut length_seen, mut date, mut says_close) = (None, false, false, false);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH && !length_seen {
            length_seen = true;
            given_length = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if name == header::DATE {
            date = true;
        } else if name == header::CONNECTION && !says_close {
            says_close = value_tokens(value).any(|t| t.eq_ignore_ascii_case("close"));
        }
        push_field(&mut buf, name.as_str().as_bytes(), value.as_bytes());
    }
    let out = if bodiless(head_request, status) {
        Out::None
    } else if let Some(n) = given_length {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        Chunked
    } else {
        Out::UntilClose
    };
    if let (Out::Length(n), None) = (out, given_length) {
        buf.extend_from_slice(b"content-length: ");
        push_number(&mut buf, n, false);
        buf.extend_from_slice(b"\r\n");
    }
    if out == Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !date {
        buf.extend_from_slice(b"date: ");
        self::date(&mut buf);
        buf.extend_from_slice(b"\r\n");
    }
    let close = close || says_close || out == Out::UntilClose;
    if close {
        if !says_close {
            buf.extend_from_slice(b"connection: close\r\n");
        }
    } else if version == Version::HTTP_10 {
        buf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    let written = write_body(wr, &mut body, out, buf).await;
    (written, close)
}

/// Writes `buf` (the head) and `body` as `out` frames it; false when the connection cannot
/// go on.
async fn write_body(wr: &mut WriteSide, body: &mut Body, out: Out, mut buf: Vec<u8>) -> bool {
    use Out::Chunked;
    if out == Out::None {
        return wr.write_all(&buf).await.is_ok();
    }
    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    // The first part of the body, when it is there already, goes with the head.
    let mut first = body.frame().now_or_never();
    loop {
        let frame = match first.take() {
            Some(frame) => frame,
            None => {
                if !buf.is_empty() {
                    if wr.write_all(&buf).await.is_err() {
                        return false;
                    }
                    buf.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => {
                if out == Chunked {
                    last_chunk(&mut buf, None);
                }
                let complete = !matches!(out, Out::Length(_)) || left == 0;
                return wr.write_all(&buf).await.is_ok() && complete;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the connection");
                let _ = wr.write_all(&buf).await;
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if out == Chunked {
                        chunk_start(&mut buf, data.len());
                    }
                    let n = (data.len() as u64).min(left);
                    left -= n;
                    let part = &data[..n as usize];
                    if part.len() < BIG_PART {
                        buf.extend_from_slice(part);
                    } else {
                        // A big part goes as it is, after what is pending (no copy).
                        if write_all_two(wr, &buf, part).await.is_err() {
                            return false;
                        }
                        buf.clear();
                    }
                    if out == Chunked {
                        buf.extend_from_slice(b"\r\n");
                    } else if n < data.len() as u64 {
                        // More than the length said: the rest cannot be sent.
                        let _ = wr.write_all(&buf).await;
                        return false;
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), Chunked) = (frame.into_trailers(), out) {
                        last_chunk(&mut buf, Some(&trailers));
                        return wr.write_all(&buf).await.is_ok();
                    }
                }
            },
        }
    }
}

/// The current time as an HTTP date, formatted at most once a second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// Answers a request that cannot be served with `status` and `text`, then closes: reads on a
/// little (bounded) so that closing with unread bytes does not reset the connection before
/// the client has read the answer.
async fn refuse(mut wire: ReadSide, mut wr: WriteSide, status: StatusCode, text: &str) {
    let resp = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    if wr.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    linger(&mut wire, &mut wr).await;
}

/// Closes our side, then reads on a little (at most 1 MiB, 1 s), as nginx's lingering close
/// does: closing with bytes the client sent still unread resets the connection, and a client
/// stack may drop the answer it was just sent (a 404 or 503 for a request whose body was
/// never read, say) when the reset arrives before it read it.
async fn linger(wire: &mut ReadSide, wr: &mut WriteSide) {
    let _ = wr.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match wire.io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Writes the 101, then joins the client and the upstream connection both ways.
async fn splice(wire: ReadSide, mut wr: WriteSide, resp: Response<Body>) {
    let upstream = resp
        .extensions()
        .get::<UpstreamUpgrade>()
        .and_then(|u| u.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    let Some((mut up, early)) = upstream else {
        return;
    };
    let (parts, _) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    encode_fields(&parts.headers, &mut head);
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&early);
    if wr.write_all(&head).await.is_err() {
        return;
    }
    let Wire { io: rd, buf, .. } = wire;
    if !buf.is_empty() && up.write_all(&buf).await.is_err() {
        return;
    }
    let (rd, wr) = (rd.into_inner(), wr.into_inner());
    let Ok(mut down) = rd.reunite(wr) else {
        return;
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

// === impl RequestBody ===

impl RequestBody {
    /// Gives the reading side back, with whether the body was read whole.
    fn give_back(&mut self) {
        if let Some(wire) = self.wire.take() {
            *lock(&self.home) = Some((wire, self.reader.is_done()));
        }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(wire) = this.wire.as_mut() else {
            return Poll::Ready(None);
        };
        let res = std::task::ready!(wire.poll_body(&mut this.reader, cx));
        if this.reader.is_done() || matches!(res, Some(Err(_))) {
            this.give_back();
        }
        Poll::Ready(res.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.reader.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.give_back();
    }
}
