//! Fluent Bit filters on decoded records: grep, modify, record_modifier and parser.

use rmpv::Value;

use crate::config::{FilterConfig, FilterKind, GrepRule, ModifyOp, ParserConfig};
use crate::metrics::Metrics;
use crate::msgpack::{self, MpError, Reader};

type Record = Vec<(Value, Value)>;

/// Runs `filters` over every entry; returns the kept entries and their count.
pub fn apply(
    filters: &[&FilterConfig],
    entries: &[u8],
    metrics: &Metrics,
) -> Result<(Vec<u8>, u32), MpError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut r = Reader::new(entries);
    let mut count = 0u32;
    'entries: while !r.is_empty() {
        r.array_len()?;
        let time = r.value()?;
        let mut raw = r.value()?;
        let Ok(Value::Map(mut record)) = rmpv::decode::read_value(&mut raw) else {
            return Err(MpError::Invalid("record is not a map"));
        };
        for f in filters {
            if !run(f, &mut record) {
                metrics
                    .filter_dropped
                    .with_label_values(&[f.name.as_str()])
                    .inc();
                continue 'entries;
            }
        }
        msgpack::write_array_len(&mut out, 2);
        out.extend_from_slice(time);
        if rmpv::encode::write_value(&mut out, &Value::Map(record)).is_err() {
            return Err(MpError::Invalid("cannot encode record"));
        }
        count += 1;
    }
    Ok((out, count))
}

/// Applies one filter; `false` drops the record.
fn run(f: &FilterConfig, rec: &mut Record) -> bool {
    match &f.kind {
        FilterKind::Grep { rules, and } => grep(rules, *and, rec),
        FilterKind::Modify(ops) => {
            for op in ops {
                modify(op, rec);
            }
            true
        }
        FilterKind::RecordModifier {
            records,
            remove,
            allowlist,
        } => {
            for (k, v) in records {
                set(rec, k, Value::from(v.as_str()));
            }
            rec.retain(|(k, _)| !remove.iter().any(|r| key_is(k, r)));
            if !allowlist.is_empty() {
                rec.retain(|(k, _)| allowlist.iter().any(|a| key_is(k, a)));
            }
            true
        }
        FilterKind::Parser {
            key_name,
            parsers,
            reserve_data,
            preserve_key,
        } => {
            parse_field(rec, key_name, parsers, *reserve_data, *preserve_key);
            true
        }
    }
}

fn key_is(k: &Value, name: &str) -> bool {
    k.as_str() == Some(name)
}

fn get<'a>(rec: &'a Record, key: &str) -> Option<&'a Value> {
    let key = key.strip_prefix('$').unwrap_or(key);
    rec.iter().find(|(k, _)| key_is(k, key)).map(|(_, v)| v)
}

fn set(rec: &mut Record, key: &str, v: Value) {
    match rec.iter_mut().find(|(k, _)| key_is(k, key)) {
        Some((_, old)) => *old = v,
        None => rec.push((Value::from(key), v)),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_owned),
        Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        Value::F64(f) => Some(f.to_string()),
        Value::F32(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn grep(rules: &[GrepRule], and: bool, rec: &Record) -> bool {
    let hit = |r: &GrepRule| {
        get(rec, &r.key)
            .and_then(text)
            .is_some_and(|t| r.regex.is_match(&t))
    };
    let (keep, drop): (Vec<&GrepRule>, Vec<&GrepRule>) = rules.iter().partition(|r| !r.exclude);
    if drop.iter().any(|r| hit(r)) {
        return false;
    }
    if keep.is_empty() {
        return true;
    }
    if and {
        keep.iter().all(|r| hit(r))
    } else {
        keep.iter().any(|r| hit(r))
    }
}

fn modify(op: &ModifyOp, rec: &mut Record) {
    match op {
        ModifyOp::Set(k, v) => set(rec, k, Value::from(v.as_str())),
        ModifyOp::Add(k, v) => {
            if get(rec, k).is_none() {
                rec.push((Value::from(k.as_str()), Value::from(v.as_str())));
            }
        }
        ModifyOp::Remove(k) => rec.retain(|(x, _)| !key_is(x, k)),
        ModifyOp::RemoveWildcard(p) => {
            let prefix = p.trim_end_matches('*');
            rec.retain(|(x, _)| !x.as_str().is_some_and(|s| s.starts_with(prefix)));
        }
        ModifyOp::Rename(a, b) | ModifyOp::HardRename(a, b) => {
            let hard = matches!(op, ModifyOp::HardRename(..));
            if get(rec, a).is_none() || (!hard && get(rec, b).is_some()) {
                return;
            }
            rec.retain(|(x, _)| !key_is(x, b));
            if let Some((k, _)) = rec.iter_mut().find(|(x, _)| key_is(x, a)) {
                *k = Value::from(b.as_str());
            }
        }
        ModifyOp::Copy(a, b) | ModifyOp::HardCopy(a, b) => {
            let hard = matches!(op, ModifyOp::HardCopy(..));
            let Some(v) = get(rec, a).cloned() else {
                return;
            };
            if hard || get(rec, b).is_none() {
                set(rec, b, v);
            }
        }
    }
}

/// Parses `key` with the first parser that succeeds; a failure leaves the record as it was.
fn parse_field(
    rec: &mut Record,
    key: &str,
    parsers: &[ParserConfig],
    reserve: bool,
    preserve: bool,
) {
    let Some(src) = get(rec, key).and_then(text) else {
        return;
    };
    let parsed = parsers.iter().find_map(|p| match &p.regex {
        None => json_fields(&src),
        Some(re) => re.captures(&src).map(|c| {
            re.capture_names()
                .flatten()
                .filter_map(|n| c.name(n).map(|m| (Value::from(n), Value::from(m.as_str()))))
                .collect()
        }),
    });
    let Some(fields) = parsed else { return };
    let original = std::mem::take(rec);
    if reserve {
        rec.extend(
            original
                .iter()
                .filter(|(k, _)| preserve || !key_is(k, key))
                .cloned(),
        );
    } else if preserve {
        rec.extend(original.iter().filter(|(k, _)| key_is(k, key)).cloned());
    }
    for (k, v) in fields {
        if let Some(name) = k.as_str().map(str::to_owned) {
            set(rec, &name, v);
        }
    }
}

/// A JSON object as record fields.
pub fn json_fields(s: &str) -> Option<Record> {
    let t = s.trim();
    if !t.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let mut buf = Vec::new();
    msgpack::write_from_json(&mut buf, &v);
    match rmpv::decode::read_value(&mut &buf[..]).ok()? {
        Value::Map(m) => Some(m),
        _ => None,
    }
}
