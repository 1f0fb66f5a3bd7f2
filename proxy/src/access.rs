//! Access log lines (JSON or text) on stdout, per the service's `accessLogConfiguration`.
//!
//! Each line carries the `trace_id` and `span_id` of the request's server span
//! (`trace.rs`), so logs and traces join; the query string is left out unless
//! `includeQueryParameters` is `ENABLED`, as Service Connect does.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use crate::config::AccessLog;
use crate::trace::{SpanContext, hex};

/// What the forwarder learned about a request, for the access log.
#[derive(Default)]
pub(crate) struct ForwardInfo {
    pub(crate) target: Option<String>,
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

/// Writes `rec` to `sink` in `format` (nothing when off).
pub(crate) fn log(format: AccessLog, sink: &AccessLogSink, rec: &AccessRecord<'_>) {
    let line = match format {
        AccessLog::Off => return,
        AccessLog::Json => json_line(rec),
        AccessLog::Text => text_line(rec),
    };
    match sink {
        AccessLogSink::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
        }
        AccessLogSink::Memory(lines) => lines.lock().unwrap_or_else(|e| e.into_inner()).push(line),
    }
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
        "{} {} {} {}{} {} {:.3}ms target={} upstream={} attempts={} trace_id={} span_id={}\n",
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
            .as_ref()
            .map_or_else(|| "-".to_owned(), |t| hex(&t.trace_id)),
        rec.info
            .trace
            .as_ref()
            .map_or_else(|| "-".to_owned(), |t| hex(&t.span_id)),
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
        let line = json_line(&rec);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["trace_id"], hex(&trace.trace_id));
        assert_eq!(v["span_id"], hex(&trace.span_id));
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["target_discovery_name"], "orders");
        let text = text_line(&rec);
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
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
