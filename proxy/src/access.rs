//! Access log lines (JSON or text) on stdout, per the service's `accessLogConfiguration`.
//!
//! Each line carries the `trace_id` and `span_id` of the request's server span
//! (`trace.rs`), so logs and traces join; the query string is left out unless
//! `includeQueryParameters` is `ENABLED`, as Service Connect does.
//!
//! Lines are written straight into a per-thread buffer (no JSON value tree, no allocation per
//! line) and reach stdout in batches: when the buffer passes [`FLUSH_BYTES`], when its oldest
//! line is [`FLUSH_AGE`] old, and whenever the thread goes idle ([`flush_thread_buffer`], which
//! the runtime calls before it parks) — so a busy sidecar makes one write per ~64 KiB instead
//! of one per request, and an idle one never holds a line back.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use crate::config::AccessLog;
use crate::trace::{SpanContext, decimal, hex_into};

/// A thread's buffered lines go out once they reach this size.
const FLUSH_BYTES: usize = 64 * 1024;
/// ... or once the oldest of them is this old (while requests keep the thread busy).
const FLUSH_AGE: Duration = Duration::from_millis(200);

/// What the forwarder learned about a request, for the access log.
#[derive(Default)]
pub(crate) struct ForwardInfo {
    pub(crate) target: Option<Arc<str>>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) attempts: u32,
    pub(crate) trace: Option<SpanContext>,
}

/// Where access log lines go.
#[derive(Clone, Default)]
pub enum AccessLogSink {
    /// Standard output, which the log router carries.
    #[default]
    Stdout,
    /// Kept in memory, one entry per line (tests and embedding).
    Memory(Arc<Mutex<Vec<String>>>),
}

/// One access log line.
pub(crate) struct AccessRecord<'a> {
    pub(crate) listener: &'a str,
    pub(crate) method: &'a Method,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) duration: Duration,
    pub(crate) error: Option<&'static str>,
    pub(crate) info: &'a ForwardInfo,
}

/// The calling thread's pending lines.
struct LineBuffer {
    bytes: Vec<u8>,
    /// When the oldest pending line was written (ms since the epoch).
    oldest_ms: u64,
    /// The second `second_text` spells (`YYYY-MM-DDTHH:MM:SS`), to format it once a second.
    second: u64,
    second_text: [u8; 19],
}

/// A thread's [`LineBuffer`], written out when the thread ends too.
struct ThreadLines(LineBuffer);

impl Drop for ThreadLines {
    fn drop(&mut self) {
        self.0.flush();
    }
}

thread_local! {
    static LINES: RefCell<ThreadLines> = const { RefCell::new(ThreadLines(LineBuffer::new())) };
}

/// Writes `rec` to `sink` in `format` (nothing when off).
pub(crate) fn log(format: AccessLog, sink: &AccessLogSink, rec: &AccessRecord<'_>) {
    if format == AccessLog::Off {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match sink {
        AccessLogSink::Stdout => LINES.with(|lines| {
            let Ok(mut lines) = lines.try_borrow_mut() else {
                return;
            };
            let lines = &mut lines.0;
            let now_ms = now.as_millis() as u64;
            if lines.bytes.is_empty() {
                lines.oldest_ms = now_ms;
            }
            lines.write(format, rec, now);
            if lines.bytes.len() >= FLUSH_BYTES
                || now_ms.saturating_sub(lines.oldest_ms) >= FLUSH_AGE.as_millis() as u64
            {
                lines.flush();
            }
        }),
        AccessLogSink::Memory(kept) => {
            let mut one = LineBuffer::new();
            one.write(format, rec, now);
            let line = String::from_utf8_lossy(&one.bytes).into_owned();
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }
}

/// Writes out the calling thread's pending access log lines: the runtime of the `skiff`
/// binary calls it before its threads park, and the binary once more when it stops (a thread
/// that ends writes its own out).
pub fn flush_thread_buffer() {
    LINES.with(|lines| {
        if let Ok(mut lines) = lines.try_borrow_mut() {
            lines.0.flush();
        }
    });
}

// === impl LineBuffer ===

impl LineBuffer {
    const fn new() -> Self {
        LineBuffer {
            bytes: Vec::new(),
            oldest_ms: 0,
            second: u64::MAX,
            second_text: [0; 19],
        }
    }

    fn flush(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&self.bytes);
        let _ = out.flush();
        self.bytes.clear();
        if self.bytes.capacity() > 2 * FLUSH_BYTES {
            self.bytes.shrink_to(FLUSH_BYTES);
        }
    }

    fn write(&mut self, format: AccessLog, rec: &AccessRecord<'_>, now: Duration) {
        match format {
            AccessLog::Off => {}
            AccessLog::Json => self.json_line(rec, now),
            AccessLog::Text => self.text_line(rec, now),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
    fn time(&mut self, now: Duration) {
        let secs = now.as_secs();
        if secs != self.second {
            self.second = secs;
            self.second_text
                .copy_from_slice(&rfc3339(UNIX_EPOCH + now).as_bytes()[..19]);
        }
        self.bytes.extend_from_slice(&self.second_text);
        self.bytes.push(b'.');
        push_padded(&mut self.bytes, u64::from(now.subsec_millis()), 3);
        self.bytes.push(b'Z');
    }

    fn json_line(&mut self, rec: &AccessRecord<'_>, now: Duration) {
        self.bytes.extend_from_slice(br#"{"time":""#);
        self.time(now);
        let out = &mut self.bytes;
        out.extend_from_slice(br#"","kind":"access","listener":"#);
        json_str(out, rec.listener);
        out.extend_from_slice(br#","method":"#);
        json_str(out, rec.method.as_str());
        out.extend_from_slice(br#","authority":"#);
        json_str(out, rec.authority);
        out.extend_from_slice(br#","path":"#);
        json_str(out, rec.path);
        out.extend_from_slice(br#","target_discovery_name":"#);
        match &rec.info.target {
            Some(t) => json_str(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","upstream":"#);
        match rec.info.upstream {
            Some(a) => {
                out.push(b'"');
                push_addr(out, a);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","status":"#);
        push_u64(out, u64::from(rec.status.as_u16()));
        out.extend_from_slice(br#","attempts":"#);
        push_u64(out, u64::from(rec.info.attempts));
        out.extend_from_slice(br#","duration_ms":"#);
        push_millis(out, rec.duration);
        out.extend_from_slice(br#","error":"#);
        match rec.error {
            Some(e) => json_str(out, e),
            None => out.extend_from_slice(b"null"),
        }
        match &rec.info.trace {
            Some(t) => {
                out.extend_from_slice(br#","trace_id":""#);
                push_hex(out, &t.trace_id);
                out.extend_from_slice(br#"","span_id":""#);
                push_hex(out, &t.span_id);
                out.extend_from_slice(b"\"}\n");
            }
            None => out.extend_from_slice(b",\"trace_id\":null,\"span_id\":null}\n"),
        }
    }

    fn text_line(&mut self, rec: &AccessRecord<'_>, now: Duration) {
        self.time(now);
        let out = &mut self.bytes;
        for part in [rec.listener, rec.method.as_str(), rec.authority] {
            out.push(b' ');
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(rec.path.as_bytes());
        out.push(b' ');
        push_u64(out, u64::from(rec.status.as_u16()));
        out.push(b' ');
        push_millis(out, rec.duration);
        out.extend_from_slice(b"ms target=");
        out.extend_from_slice(rec.info.target.as_deref().unwrap_or("-").as_bytes());
        out.extend_from_slice(b" upstream=");
        match rec.info.upstream {
            Some(a) => push_addr(out, a),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" attempts=");
        push_u64(out, u64::from(rec.info.attempts));
        match &rec.info.trace {
            Some(t) => {
                out.extend_from_slice(b" trace_id=");
                push_hex(out, &t.trace_id);
                out.extend_from_slice(b" span_id=");
                push_hex(out, &t.span_id);
            }
            None => out.extend_from_slice(b" trace_id=- span_id=-"),
        }
        out.push(b'\n');
    }
}

/// A JSON string literal (serde_json's escaping, written in place).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// `n` in exactly `width` digits (zero-padded; `n` must fit).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Milliseconds with three decimals (microsecond precision), a JSON number.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(at + bytes.len() * 2, 0);
    hex_into(bytes, &mut out[at..]);
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "[{ip}]");
        }
    }
    out.push(b':');
    push_u64(out, u64::from(addr.port()));
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    // (humantime refuses instants before the epoch; a clock that far off reads as the epoch)
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::hex;

    fn one_line(format: AccessLog, rec: &AccessRecord<'_>) -> String {
        let lines = Arc::new(Mutex::new(Vec::new()));
        log(format, &AccessLogSink::Memory(lines.clone()), rec);
        let mut lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1);
        lines.pop().unwrap()
    }

    #[test]
    fn lines_carry_the_trace_and_span() {
        let trace = SpanContext {
            trace_id: [0x4b; 16],
            span_id: [0x0f; 8],
            sampled: true,
        };
        let info = ForwardInfo {
            target: Some("orders".into()),
            upstream: Some("127.0.0.1:1".parse().unwrap()),
            attempts: 2,
            trace: Some(trace.clone()),
        };
        let rec = AccessRecord {
            listener: "outbound",
            method: &Method::GET,
            authority: "orders:8080",
            path: "/x",
            status: StatusCode::OK,
            duration: Duration::from_millis(3),
            error: None,
            info: &info,
        };
        let line = one_line(AccessLog::Json, &rec);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["trace_id"], hex(&trace.trace_id));
        assert_eq!(v["span_id"], hex(&trace.span_id));
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["target_discovery_name"], "orders");
        let text = one_line(AccessLog::Text, &rec);
        assert!(text.contains("orders:8080/x 200"), "{text}");
        assert!(
            text.contains(&format!("span_id={}", hex(&trace.span_id))),
            "{text}"
        );

        let lines = Arc::new(Mutex::new(Vec::new()));
        log(AccessLog::Text, &AccessLogSink::Memory(lines.clone()), &rec);
        log(AccessLog::Off, &AccessLogSink::Memory(lines.clone()), &rec);
        assert_eq!(lines.lock().unwrap().len(), 1);
    }

    #[test]
    fn json_lines_escape_what_clients_send() {
        let info = ForwardInfo::default();
        let rec = AccessRecord {
            listener: "outbound",
            method: &Method::GET,
            authority: "a\"b\\c",
            path: "/p\u{1}q\u{e9}",
            status: StatusCode::NOT_FOUND,
            duration: Duration::from_micros(1_234_567),
            error: Some("unknown_host"),
            info: &info,
        };
        let line = one_line(AccessLog::Json, &rec);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["authority"], "a\"b\\c");
        assert_eq!(v["path"], "/p\u{1}q\u{e9}");
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["status"], 404);
        assert_eq!(v["error"], "unknown_host");
        assert!(v["trace_id"].is_null() && v["upstream"].is_null());
        let t = v["time"].as_str().unwrap();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let mut lines = LineBuffer::new();
        lines.time(Duration::from_millis(1_700_000_000_123));
        lines.time(Duration::from_millis(1_700_000_000_999));
        lines.time(Duration::from_millis(1_700_000_001_005));
        assert_eq!(
            String::from_utf8(lines.bytes).unwrap(),
            "2023-11-14T22:13:20.123Z2023-11-14T22:13:20.999Z2023-11-14T22:13:21.005Z"
        );
    }
}
