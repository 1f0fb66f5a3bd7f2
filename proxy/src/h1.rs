//! h1: HTTP/1.1 of our own, both ways. Upstream ([`Conn`]): a request head written in one go
//! with its small body, the response head parsed in place (header values are slices of the
//! bytes read, not copies), the body read straight from the socket by whoever polls it.
//! Downstream ([`server`]): the same parts the other way round.
//!
//! Why not hyper's HTTP/1: its client sends each request through a dispatch channel to the
//! connection, answers through a oneshot and passes the body through another channel — three
//! hand-offs per request on the proxy's hottest path; its server keeps an 8 KiB read and an
//! 8 KiB write buffer for the life of every connection, idle or not. Here the request's own
//! future does all of it, and an idle connection holds no buffer. HTTP/2 stays with hyper.

pub(crate) mod server;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Body;

/// A response head may not be larger than this.
const MAX_HEAD: usize = 64 * 1024;
/// Nor have more headers than this.
const MAX_HEADERS: usize = 128;
/// How much a read asks for at first.
const READ_CHUNK: usize = 8 * 1024;
/// How much a read may ask for once reads keep filling the buffer (big bodies).
const MAX_READ_CHUNK: usize = 64 * 1024;

/// The reading side of an HTTP/1.1 connection: the stream and what was read from it.
pub(crate) struct Wire<R> {
    pub(crate) io: R,
    /// Bytes read and not yet consumed (none between exchanges on a healthy connection).
    pub(crate) buf: BytesMut,
    /// How much the next read makes room for: doubled while reads fill it.
    pub(crate) chunk: usize,
}

/// One upstream HTTP/1.1 connection, between exchanges or in one.
pub(crate) type Conn = Wire<TcpStream>;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("writing the request body: {0}")]
    WriteBody(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before the response head")]
    ClosedBeforeHead,
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedInBody,
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("reading the request body: {0}")]
    RequestBody(#[source] crate::BoxError),
}

impl Error {
    /// The request never reached the upstream (it may be sent elsewhere as if new).
    pub(crate) fn unsent(&self) -> bool {
        matches!(self, Error::Write(_))
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Read to its end.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked: the next chunk's size line.
    ChunkSize,
    /// Chunked: this many bytes left in the chunk.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk.
    ChunkEnd,
    /// Chunked: trailers (or the empty line) after the last chunk.
    Trailers,
    /// Until the upstream closes (no length, not chunked).
    UntilClose,
}

/// The state of a response body being read from a connection.
pub(crate) struct BodyReader {
    framing: Framing,
    /// The connection may carry another exchange once the body is read.
    reusable: bool,
}

// === impl Conn ===

impl Conn {
    /// Open and quiet: nothing (no end, no stray bytes) arrived while it was idle. Costs a
    /// system call only when the socket became readable meanwhile.
    pub(crate) fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `head` (the request head, with the whole body when it was small and ready)
    /// and then streams what is left of the body (taken only once the head is out, so that a
    /// request whose head could not be written can go on another connection whole). False
    /// when the upstream answered before the body was all sent (then the connection cannot
    /// carry another request: pass that to [`Conn::read_head`]).
    pub(crate) async fn write_request(
        &mut self,
        head: &[u8],
        body: &mut Option<(Body, bool)>,
    ) -> Result<bool, Error> {
        self.io.write_all(head).await.map_err(Error::Write)?;
        let Some((body, chunked)) = body.take() else {
            return Ok(true);
        };
        // Boxed: most requests have no body left to stream, and this future would be room in
        // every request's.
        Box::pin(self.stream_body(body, chunked)).await
    }

    /// Streams the rest of a request body after its head; false when the upstream answered
    /// first (see [`Conn::write_request`]).
    async fn stream_body(&mut self, mut body: Body, chunked: bool) -> Result<bool, Error> {
        // From here on the upstream has seen the request: failures are not `unsent`.
        let written = Error::WriteBody;
        // Framing bytes not yet written (a chunk's CRLF goes with the next chunk's size line).
        let mut out = Vec::new();
        let mut probe = [0u8; 1];
        loop {
            // An upstream that answers (or closes) before the body is all sent (413, 401...)
            // gets no more of it: its response is read, and the connection closed after it.
            let frame = tokio::select! {
                biased;
                seen = self.io.peek(&mut probe) => {
                    seen.map_err(Error::Read)?;
                    return Ok(false);
                }
                frame = body.frame() => frame,
            };
            match frame {
                None => {
                    if chunked {
                        last_chunk(&mut out, None);
                        self.io.write_all(&out).await.map_err(written)?;
                    }
                    return Ok(true);
                }
                Some(Err(e)) => return Err(Error::RequestBody(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if chunked => {
                        chunk_start(&mut out, data.len());
                        write_all_two(&mut self.io, &out, &data)
                            .await
                            .map_err(written)?;
                        out.clear();
                        out.extend_from_slice(b"\r\n");
                    }
                    Ok(data) => self.io.write_all(&data).await.map_err(written)?,
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                            last_chunk(&mut out, Some(&trailers));
                            self.io.write_all(&out).await.map_err(written)?;
                            return Ok(true);
                        }
                    }
                },
            }
        }
    }

    /// Reads the response head (skipping interim 1xx ones but 101); the response and how to
    /// read its body. `request_whole`: the request went out whole (else the connection is not
    /// reused).
    pub(crate) async fn read_head(
        &mut self,
        method: &Method,
        request_whole: bool,
    ) -> Result<(Response<()>, BodyReader), Error> {
        loop {
            match parse_response(&mut self.buf, method, request_whole)? {
                Parsed::Final(resp, reader) => return Ok((resp, reader)),
                Parsed::Interim => {}
                Parsed::Partial => {
                    if self.buf.len() >= MAX_HEAD {
                        return Err(Error::Invalid("response head too large"));
                    }
                    self.read_more()
                        .await?
                        .then_some(())
                        .ok_or(Error::ClosedBeforeHead)?;
                }
            }
        }
    }

    /// The connection itself, with what was read past the response (a protocol switch).
    pub(crate) fn into_upgraded(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

// === impl Wire ===

impl<R> Wire<R> {
    pub(crate) fn new(io: R) -> Self {
        Wire {
            io,
            buf: BytesMut::new(),
            chunk: READ_CHUNK,
        }
    }

    /// Between exchanges: lets go of a buffer grown by a big body.
    pub(crate) fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > READ_CHUNK {
            self.buf = BytesMut::new();
            self.chunk = READ_CHUNK;
        }
    }
}

impl<R: AsyncRead + Unpin> Wire<R> {
    /// Reads more into the buffer; false at the end of the stream.
    async fn read_more(&mut self) -> Result<bool, Error> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        // Room for a read: what is there when it is more than a sliver (a request head's
        // small buffer), else a chunk.
        if self.buf.capacity() - self.buf.len() < 256 {
            self.buf.reserve(self.chunk);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))
        .map_err(Error::Read)?;
        if n == room && self.chunk < MAX_READ_CHUNK {
            // The read filled all the room there was: more is coming (a big body).
            self.chunk *= 2;
        }
        Poll::Ready(Ok(n > 0))
    }

    /// The next frame of the body `reader` delimits.
    pub(crate) fn poll_body(
        &mut self,
        reader: &mut BodyReader,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match reader.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) | Framing::ChunkData(left) => {
                    if self.buf.is_empty() {
                        if !std::task::ready!(self.poll_read_more(cx))? {
                            return Poll::Ready(Some(Err(Error::ClosedInBody)));
                        }
                        continue;
                    }
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let data = self.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    reader.framing = match reader.framing {
                        Framing::Length(_) if left == 0 => Framing::Done,
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() {
                        if !std::task::ready!(self.poll_read_more(cx))? {
                            reader.framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    let data = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        reader.framing = if size == 0 {
                            Framing::Trailers
                        } else {
                            Framing::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 1024 {
                            return Poll::Ready(Some(Err(Error::Invalid("chunk size line"))));
                        }
                        if !std::task::ready!(self.poll_read_more(cx))? {
                            return Poll::Ready(Some(Err(Error::ClosedInBody)));
                        }
                    }
                    Err(_) => return Poll::Ready(Some(Err(Error::Invalid("chunk size")))),
                },
                Framing::ChunkEnd => {
                    if self.buf.len() < 2 {
                        if !std::task::ready!(self.poll_read_more(cx))? {
                            return Poll::Ready(Some(Err(Error::ClosedInBody)));
                        }
                        continue;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Invalid("chunk not ended by CRLF"))));
                    }
                    self.buf.advance(2);
                    reader.framing = Framing::ChunkSize;
                }
                Framing::Trailers => {
                    if self.buf.starts_with(b"\r\n") {
                        self.buf.advance(2);
                        reader.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let parsed = {
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        match httparse::parse_headers(&self.buf, &mut fields) {
                            Ok(httparse::Status::Complete((used, fields))) => {
                                let mut trailers = HeaderMap::with_capacity(fields.len());
                                for f in fields {
                                    if let (Ok(name), Ok(value)) = (
                                        HeaderName::from_bytes(f.name.as_bytes()),
                                        HeaderValue::from_bytes(f.value),
                                    ) {
                                        trailers.append(name, value);
                                    }
                                }
                                Some((used, trailers))
                            }
                            Ok(httparse::Status::Partial) => None,
                            Err(e) => return Poll::Ready(Some(Err(Error::Parse(e)))),
                        }
                    };
                    match parsed {
                        Some((used, trailers)) => {
                            self.buf.advance(used);
                            reader.framing = Framing::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        None if self.buf.len() >= MAX_HEAD => {
                            return Poll::Ready(Some(Err(Error::Invalid("trailers too large"))));
                        }
                        None => {
                            if !std::task::ready!(self.poll_read_more(cx))? {
                                return Poll::Ready(Some(Err(Error::ClosedInBody)));
                            }
                        }
                    }
                }
            }
        }
    }
}

// === impl BodyReader ===

impl BodyReader {
    /// How a request's body is delimited (RFC 9112 §6.3: chunked last, else the length,
    /// else none).
    fn for_request(facts: &Facts) -> Result<Self, Error> {
        let framing = if facts.transfer_encoding {
            if !facts.chunked_last {
                return Err(Error::Invalid("transfer-encoding without chunked last"));
            }
            Framing::ChunkSize
        } else {
            match facts.content_length()? {
                Some(0) | None => Framing::Done,
                Some(n) => Framing::Length(n),
            }
        };
        Ok(BodyReader {
            framing,
            reusable: true,
        })
    }

    fn for_response(
        method: &Method,
        status: StatusCode,
        minor: u8,
        facts: &Facts,
    ) -> Result<Self, Error> {
        let framing = if bodiless(*method == Method::HEAD, status) {
            Framing::Done
        } else if facts.transfer_encoding {
            if facts.chunked_last {
                Framing::ChunkSize
            } else {
                Framing::UntilClose
            }
        } else if let Some(len) = facts.content_length()? {
            if len == 0 {
                Framing::Done
            } else {
                Framing::Length(len)
            }
        } else {
            Framing::UntilClose
        };
        Ok(BodyReader {
            reusable: facts.keeps_alive(minor)
                && framing != Framing::UntilClose
                && status != StatusCode::SWITCHING_PROTOCOLS,
            framing,
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Read to its end on a connection that may carry another exchange.
    pub(crate) fn leaves_reusable(&self) -> bool {
        self.reusable && self.is_done()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The request head for `parts` as HTTP/1.1 into `out`: the request line (origin-form URI),
/// the fields `fields` writes (it says whether one was a Content-Length), the framing field
/// its body needs; then the body itself when it is small and ready (`None` back), or the body
/// to stream and whether to chunk it.
pub(crate) fn encode_request(
    parts: &http::request::Parts,
    fields: impl FnOnce(&mut Vec<u8>) -> bool,
    mut body: Body,
    out: &mut Vec<u8>,
) -> Option<(Body, bool)> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_length = fields(out);
    let hint = body.size_hint();
    if body.is_end_stream() {
        if !has_length && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
        return None;
    }
    // The client's Content-Length first: wrapped bodies (byte counters) do not pass size
    // hints on.
    let chunked = match hint.exact() {
        _ if has_length => false,
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            push_number(out, n, false);
            out.extend_from_slice(b"\r\n");
            false
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    // A small body that is all there already (the replay buffer) goes with the head.
    if !chunked {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx)
            && let Ok(data) = frame.into_data()
        {
            out.extend_from_slice(&data);
            if body.is_end_stream() {
                return None;
            }
        }
    }
    Some((body, chunked))
}

/// A message with no body whatever its headers say: the answer to a HEAD, 1xx, 204, 304.
fn bodiless(head_request: bool, status: StatusCode) -> bool {
    head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A message framed both ways: chunked wins and the length, not the body's own, goes
/// (RFC 9112 §6.3; else the next hop could read the body by it — request smuggling). Whether
/// it was so (the connection should not carry another message).
fn drop_length_if_chunked(headers: &mut HeaderMap, facts: &mut Facts) -> bool {
    if !(facts.transfer_encoding && facts.length_seen) {
        return false;
    }
    headers.remove(header::CONTENT_LENGTH);
    facts.length_seen = false;
    facts.length = None;
    facts.bad_length = None;
    true
}

/// What framing and connection handling need of a head's fields, noted while
/// [`fields_of`] reads them: one pass, where a lookup per question would hash the names
/// again and again. Values that are not visible ASCII are passed over (see [`value_tokens`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Facts {
    /// A `Content-Length` field, its value, and what was wrong with its values if anything.
    length_seen: bool,
    length: Option<u64>,
    bad_length: Option<&'static str>,
    /// A `Transfer-Encoding` field; its last token is `chunked`.
    transfer_encoding: bool,
    chunked_last: bool,
    /// Tokens of `Connection`.
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    /// An `Upgrade` field.
    upgrade: bool,
    /// The first `Expect` field says `100-continue`.
    expect_seen: bool,
    expect_continue: bool,
}

// === impl Facts ===

impl Facts {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONTENT_LENGTH {
            self.length_seen = true;
            for t in value_tokens(value) {
                match t.parse::<u64>() {
                    Err(_) => {
                        self.bad_length.get_or_insert("bad content-length");
                    }
                    Ok(n) if self.length.is_some_and(|f| f != n) => {
                        self.bad_length.get_or_insert("conflicting content-length");
                    }
                    Ok(n) => self.length = Some(n),
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            if let Some(last) = value_tokens(value).last() {
                self.chunked_last = last.eq_ignore_ascii_case("chunked");
            }
        } else if *name == header::CONNECTION {
            for t in value_tokens(value) {
                if t.eq_ignore_ascii_case("close") {
                    self.close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    self.keep_alive = true;
                } else if t.eq_ignore_ascii_case("upgrade") {
                    self.upgrade_token = true;
                }
            }
        } else if *name == header::UPGRADE {
            self.upgrade = true;
        } else if *name == header::EXPECT && !self.expect_seen {
            self.expect_seen = true;
            self.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// `Content-Length`, when there is one; differing values are an error.
    fn content_length(&self) -> Result<Option<u64>, Error> {
        match self.bad_length {
            Some(why) => Err(Error::Invalid(why)),
            None => Ok(self.length),
        }
    }

    /// Whether the sender of a message of HTTP/1.`minor` lets the connection live on.
    fn keeps_alive(&self, minor: u8) -> bool {
        if minor == 0 {
            self.keep_alive
        } else {
            !self.close
        }
    }

    /// An HTTP/1.1 request asking to switch protocols (`Upgrade` named in `Connection`).
    fn wants_upgrade(&self, version: Version) -> bool {
        version == Version::HTTP_11 && self.upgrade && self.upgrade_token
    }
}

/// An HTTP/1.1 request asking to switch protocols (`Upgrade` named in `Connection`).
pub(crate) fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && has_token(headers, header::CONNECTION, "upgrade")
}

/// Appends a chunk's size line.
fn chunk_start(out: &mut Vec<u8>, len: usize) {
    push_number(out, len as u64, true);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with its trailers when there are any.
fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        encode_fields(trailers, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// What the bytes at the start of a connection's buffer hold.
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) head, taken out of the buffer.
    Interim,
    /// The response head, taken out of the buffer, and how to read its body.
    Final(Response<()>, BodyReader),
}

/// Parses a response head at the start of `buf`. A function of its own, not part of
/// [`Conn::read_head`]'s future: the fields' spans (2 KiB) live on its stack only, and the
/// future that every request holds stays small.
fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    request_whole: bool,
) -> Result<Parsed, Error> {
    // Nothing read yet (as right after a request is sent): no head, and no spans to clear.
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    let mut spans: Spans = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, code, minor, n) = {
        let mut headers = uninit_headers();
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        )? {
            httparse::Status::Complete(len) if len > MAX_HEAD => {
                return Err(Error::Invalid("response head too large"));
            }
            httparse::Status::Complete(len) => {
                let base = buf.as_ptr() as usize;
                let code = resp.code.unwrap_or(0);
                let minor = resp.version.unwrap_or(1);
                let n = spans_of(base, resp.headers, &mut spans);
                (len, code, minor, n)
            }
            httparse::Status::Partial => return Ok(Parsed::Partial),
        }
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Interim);
    }
    let (mut headers, mut facts) = fields_of(&head, &spans[..n]).map_err(Error::Invalid)?;
    let both = drop_length_if_chunked(&mut headers, &mut facts);
    let mut reader = BodyReader::for_response(method, status, minor, &facts)?;
    reader.reusable &= !both && request_whole;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = headers;
    Ok(Parsed::Final(resp, reader))
}

/// Room for a head's fields, not zeroed first (4 KiB): httparse fills what it uses.
pub(crate) fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Where a head's fields are in its bytes: name start and length, value start and length.
type Spans = [(u32, u32, u32, u32); MAX_HEADERS];

/// Records where `headers` (parsed from bytes starting at address `base`) are; how many.
fn spans_of(base: usize, headers: &[httparse::Header<'_>], out: &mut Spans) -> usize {
    let at = |p: *const u8| u32::try_from(p as usize - base).unwrap_or(u32::MAX);
    let len = |n: usize| u32::try_from(n).unwrap_or(0);
    for (span, h) in out.iter_mut().zip(headers) {
        *span = (
            at(h.name.as_ptr()),
            len(h.name.len()),
            at(h.value.as_ptr()),
            len(h.value.len()),
        );
    }
    headers.len().min(MAX_HEADERS)
}

/// The fields at `spans` of `head`, values sharing its bytes (no copies).
fn fields_of(
    head: &Bytes,
    spans: &[(u32, u32, u32, u32)],
) -> Result<(HeaderMap, Facts), &'static str> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut facts = Facts::default();
    for &(n, nl, v, vl) in spans {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let name = head
            .get(n..n + nl)
            .and_then(|b| HeaderName::from_bytes(b).ok())
            .ok_or("invalid header name")?;
        if v + vl > head.len() {
            return Err("invalid header value");
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| "invalid header value")?;
        facts.note(&name, &value);
        headers.append(name, value);
    }
    Ok((headers, facts))
}

/// Writes `first` then `second` (a head and a body part) without joining them: one system
/// call when the socket takes both.
pub(crate) async fn write_all_two<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    first: &[u8],
    second: &[u8],
) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let mut bufs = &mut slices[..];
    io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Appends `n` in decimal (or hexadecimal) without an allocation.
fn push_number(out: &mut Vec<u8>, n: u64, hex: bool) {
    use std::io::Write;
    let _ = if hex {
        write!(out, "{n:x}")
    } else {
        write!(out, "{n}")
    };
}

fn encode_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Appends one `name: value` line.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers.get_all(name).into_iter().flat_map(value_tokens)
}

/// The comma-separated tokens of one field value, trimmed; none when the value is not
/// visible ASCII.
pub(crate) fn value_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .ok()
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests;
