//! W3C trace context propagation and access log lines (JSON or text) on stdout.
//!
//! Every proxied request continues the caller's `traceparent` (or starts a trace) and passes
//! it upstream with this hop's span id, so traces join across sidecars; the access log line
//! carries the same `trace_id`/`span_id`. Exporting spans (OTLP) is the telemetry module's job.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng;

use crate::config::AccessLog;

/// The trace this hop belongs to and its own span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) flags: u8,
}

/// What the forwarder learned about a request, for the access log.
#[derive(Default)]
pub(crate) struct ForwardInfo {
    pub(crate) target: Option<String>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) attempts: u32,
    pub(crate) trace: Option<TraceContext>,
}

// === impl TraceContext ===

impl TraceContext {
    /// Continues the `traceparent` in `headers` (or starts a trace) and rewrites it with a new
    /// span id for this hop.
    pub(crate) fn propagate(headers: &mut HeaderMap) -> TraceContext {
        let mut rng = rand::rng();
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let ctx = match parent {
            Some((trace_id, flags)) => TraceContext {
                trace_id,
                span_id,
                flags,
            },
            None => {
                let mut trace_id = [0u8; 16];
                rng.fill(&mut trace_id);
                TraceContext {
                    trace_id,
                    span_id,
                    flags: 1,
                }
            }
        };
        if let Ok(v) = HeaderValue::from_str(&ctx.traceparent()) {
            headers.insert("traceparent", v);
        }
        ctx
    }

    pub(crate) fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids → (trace id, flags).
fn parse_traceparent(v: &str) -> Option<([u8; 16], u8)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(trace.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != [0; 16]).then_some((trace_id, flags))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
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

/// Writes `rec` to stdout in `format` (nothing when off).
pub(crate) fn log(format: AccessLog, rec: &AccessRecord<'_>) {
    let line = match format {
        AccessLog::Off => return,
        AccessLog::Json => json_line(rec),
        AccessLog::Text => text_line(rec),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
}

fn json_line(rec: &AccessRecord<'_>) -> String {
    let (trace_id, span_id) = match &rec.info.trace {
        Some(t) => (Some(hex(&t.trace_id)), Some(hex(&t.span_id))),
        None => (None, None),
    };
    let v = serde_json::json!({
        "time": rfc3339(SystemTime::now()),
        "kind": "access",
        "listener": rec.listener,
        "method": rec.method.as_str(),
        "authority": rec.authority,
        "path": rec.path,
        "target_discovery_name": rec.info.target,
        "upstream": rec.info.upstream.map(|a| a.to_string()),
        "status": rec.status.as_u16(),
        "attempts": rec.info.attempts,
        "duration_ms": rec.duration.as_secs_f64() * 1e3,
        "error": rec.error,
        "trace_id": trace_id,
        "span_id": span_id,
    });
    let mut line = v.to_string();
    line.push('\n');
    line
}

fn text_line(rec: &AccessRecord<'_>) -> String {
    format!(
        "{} {} {} {}{} {} {:.3}ms target={} upstream={} attempts={} trace_id={}\n",
        rfc3339(SystemTime::now()),
        rec.listener,
        rec.method,
        rec.authority,
        rec.path,
        rec.status.as_u16(),
        rec.duration.as_secs_f64() * 1e3,
        rec.info.target.as_deref().unwrap_or("-"),
        rec.info
            .upstream
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        rec.info.attempts,
        rec.info
            .trace
            .map_or_else(|| "-".to_owned(), |t| hex(&t.trace_id)),
    )
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let ctx = TraceContext::propagate(&mut h);
        assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = h["traceparent"].to_str().unwrap().to_owned();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(!out.contains("00f067aa0ba902b7"), "a new span id: {out}");
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn starts_a_trace_when_missing_or_invalid() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-1-2-3",
        ] {
            let mut h = HeaderMap::new();
            if !bad.is_empty() {
                h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            }
            let ctx = TraceContext::propagate(&mut h);
            assert_ne!(ctx.trace_id, [0; 16]);
            assert_eq!(h["traceparent"].len(), 55);
        }
    }

    #[test]
    fn json_lines_carry_the_trace() {
        let mut h = HeaderMap::new();
        let trace = TraceContext::propagate(&mut h);
        let info = ForwardInfo {
            target: Some("orders".into()),
            upstream: Some("127.0.0.1:1".parse().unwrap()),
            attempts: 2,
            trace: Some(trace),
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
        let line = json_line(&rec);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["trace_id"], hex(&trace.trace_id));
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["target_discovery_name"], "orders");
        assert!(text_line(&rec).contains("orders:8080/x 200"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
