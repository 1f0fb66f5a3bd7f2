//! Record formatting shared by outputs: iterating packed entries and writing them as JSON.

use crate::buffer::Batch;
use crate::config::DateFormat;
use crate::msgpack::{self, EventTime, MpError, Reader};

/// Calls `f(time, record_bytes)` for each entry of a batch.
pub fn each_record<'a>(
    batch: &'a Batch,
    mut f: impl FnMut(EventTime, &'a [u8]) -> Result<(), MpError>,
) -> Result<(), MpError> {
    let mut r = Reader::new(&batch.entries);
    while !r.is_empty() {
        r.array_len()?;
        let t = r.time()?;
        let rec = r.value()?;
        f(t, rec)?;
    }
    Ok(())
}

/// Appends the record as a JSON object, with the time first under `date` when given.
pub fn record_json(
    out: &mut Vec<u8>,
    time: EventTime,
    record: &[u8],
    date: Option<(&str, DateFormat)>,
) -> Result<(), MpError> {
    let Some((key, fmt)) = date else {
        return msgpack::write_json(&mut Reader::new(record), out);
    };
    out.push(b'{');
    msgpack::write_json_str(out, key);
    out.push(b':');
    write_time(out, time, fmt);
    let start = out.len();
    msgpack::write_json(&mut Reader::new(record), out)?;
    // splice: `{"date":t` + `{...}` -> `{"date":t,...}`
    if out.len() - start > 2 {
        out[start] = b',';
    } else {
        out.truncate(start);
        out.push(b'}');
    }
    Ok(())
}

pub fn write_time(out: &mut Vec<u8>, t: EventTime, fmt: DateFormat) {
    match fmt {
        DateFormat::Double => msgpack::write_json_f64(out, t.as_f64()),
        DateFormat::Epoch => out.extend_from_slice(t.sec.to_string().as_bytes()),
        DateFormat::Iso8601 => {
            out.push(b'"');
            out.extend_from_slice(iso8601(t).as_bytes());
            out.push(b'"');
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (civil-from-days, proleptic Gregorian).
pub fn iso8601(t: EventTime) -> String {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        t.nsec / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(
            iso8601(EventTime { sec: 0, nsec: 0 }),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            iso8601(EventTime {
                sec: 1_700_000_000,
                nsec: 123_456_789
            }),
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn date_key_is_spliced_in() {
        let mut rec = Vec::new();
        msgpack::write_map_len(&mut rec, 1);
        msgpack::write_str(&mut rec, "log");
        msgpack::write_str(&mut rec, "x");
        let mut out = Vec::new();
        let t = EventTime {
            sec: 2,
            nsec: 500_000_000,
        };
        record_json(&mut out, t, &rec, Some(("date", DateFormat::Double))).unwrap();
        assert_eq!(out, br#"{"date":2.5,"log":"x"}"#);
        let mut out = Vec::new();
        record_json(&mut out, t, &[0x80], Some(("date", DateFormat::Epoch))).unwrap();
        assert_eq!(out, br#"{"date":2}"#);
    }
}
