//! Minimal MessagePack reader, writer and JSON transcoder for the hot path: records are sliced and skipped, never built into trees.

use thiserror::Error;

/// What went wrong reading MessagePack bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MpError {
    #[error("unexpected end of data")]
    Eof,
    #[error("invalid msgpack: {0}")]
    Invalid(&'static str),
    #[error("msgpack nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deepest nesting the JSON transcoder follows (skipping is iterative and has no limit).
pub const MAX_DEPTH: usize = 64;

/// A time with nanoseconds, as Fluentd's `EventTime` ext type 0 carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventTime {
    pub sec: i64,
    pub nsec: u32,
}

impl EventTime {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        }
    }

    pub fn as_f64(self) -> f64 {
        self.sec as f64 + f64::from(self.nsec) / 1e9
    }
}

/// A cursor over MessagePack bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MpError> {
        let end = self.pos.checked_add(n).ok_or(MpError::Eof)?;
        let s = self.buf.get(self.pos..end).ok_or(MpError::Eof)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, MpError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, MpError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    pub fn peek(&self) -> Result<u8, MpError> {
        self.buf.get(self.pos).copied().ok_or(MpError::Eof)
    }

    /// Reads an array header.
    pub fn array_len(&mut self) -> Result<u32, MpError> {
        match self.peek()? {
            m @ 0x90..=0x9f => {
                self.pos += 1;
                Ok(u32::from(m & 0x0f))
            }
            0xdc => {
                self.pos += 1;
                Ok(self.be(2)? as u32)
            }
            0xdd => {
                self.pos += 1;
                Ok(self.be(4)? as u32)
            }
            _ => Err(MpError::Invalid("expected array")),
        }
    }

    /// Reads a map header.
    pub fn map_len(&mut self) -> Result<u32, MpError> {
        match self.peek()? {
            m @ 0x80..=0x8f => {
                self.pos += 1;
                Ok(u32::from(m & 0x0f))
            }
            0xde => {
                self.pos += 1;
                Ok(self.be(2)? as u32)
            }
            0xdf => {
                self.pos += 1;
                Ok(self.be(4)? as u32)
            }
            _ => Err(MpError::Invalid("expected map")),
        }
    }

    /// Whether the next value is a str or bin.
    pub fn next_is_raw(&self) -> bool {
        matches!(
            self.peek(),
            Ok(0xa0..=0xbf | 0xd9 | 0xda | 0xdb | 0xc4 | 0xc5 | 0xc6)
        )
    }

    /// Whether the next value is an array.
    pub fn next_is_array(&self) -> bool {
        matches!(self.peek(), Ok(0x90..=0x9f | 0xdc | 0xdd))
    }

    /// Whether the next value is a map.
    pub fn next_is_map(&self) -> bool {
        matches!(self.peek(), Ok(0x80..=0x8f | 0xde | 0xdf))
    }

    /// Reads a str or bin and returns its bytes.
    pub fn raw(&mut self) -> Result<&'a [u8], MpError> {
        let n = match self.peek()? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 | 0xc4 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xda | 0xc5 => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdb | 0xc6 => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return Err(MpError::Invalid("expected string")),
        };
        self.take(n)
    }

    /// Reads a UTF-8 str (or bin holding UTF-8).
    pub fn str(&mut self) -> Result<&'a str, MpError> {
        std::str::from_utf8(self.raw()?).map_err(|_| MpError::Invalid("string is not utf-8"))
    }

    /// Reads a non-negative integer.
    pub fn uint(&mut self) -> Result<u64, MpError> {
        match self.int()? {
            Int::U(u) => Ok(u),
            Int::I(i) => u64::try_from(i).map_err(|_| MpError::Invalid("negative integer")),
        }
    }

    /// Reads any integer.
    pub fn int(&mut self) -> Result<Int, MpError> {
        let m = self.peek()?;
        let v = match m {
            0x00..=0x7f => {
                self.pos += 1;
                Int::U(u64::from(m))
            }
            0xe0..=0xff => {
                self.pos += 1;
                Int::I(i64::from(m as i8))
            }
            0xcc..=0xcf => {
                self.pos += 1;
                Int::U(self.be(1 << (m - 0xcc))?)
            }
            0xd0 => {
                self.pos += 1;
                Int::I(i64::from(self.u8()? as i8))
            }
            0xd1 => {
                self.pos += 1;
                Int::I(i64::from(self.be(2)? as u16 as i16))
            }
            0xd2 => {
                self.pos += 1;
                Int::I(i64::from(self.be(4)? as u32 as i32))
            }
            0xd3 => {
                self.pos += 1;
                Int::I(self.be(8)? as i64)
            }
            _ => return Err(MpError::Invalid("expected integer")),
        };
        Ok(v)
    }

    /// Reads an event time: `EventTime` (ext 0), an integer or a float.
    pub fn time(&mut self) -> Result<EventTime, MpError> {
        match self.peek()? {
            0xd7 => {
                self.pos += 1;
                self.event_time_body()
            }
            0xc7 => {
                self.pos += 1;
                if self.u8()? != 8 {
                    return Err(MpError::Invalid("EventTime ext must be 8 bytes"));
                }
                self.event_time_body()
            }
            0xca => {
                self.pos += 1;
                let f = f64::from(f32::from_bits(self.be(4)? as u32));
                Ok(float_time(f))
            }
            0xcb => {
                self.pos += 1;
                Ok(float_time(f64::from_bits(self.be(8)?)))
            }
            _ => match self.int() {
                Ok(Int::U(u)) => Ok(EventTime {
                    sec: i64::try_from(u).map_err(|_| MpError::Invalid("time out of range"))?,
                    nsec: 0,
                }),
                Ok(Int::I(i)) => Ok(EventTime { sec: i, nsec: 0 }),
                Err(_) => Err(MpError::Invalid("expected event time")),
            },
        }
    }

    fn event_time_body(&mut self) -> Result<EventTime, MpError> {
        if self.u8()? != 0 {
            return Err(MpError::Invalid("unknown ext type for event time"));
        }
        let sec = self.be(4)?;
        let nsec = self.be(4)? as u32;
        Ok(EventTime {
            sec: sec as i64,
            nsec,
        })
    }

    /// Skips one value (iteratively: no recursion, no depth limit, time linear in the input).
    pub fn skip(&mut self) -> Result<(), MpError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            pending += self.skip_header()?;
        }
        Ok(())
    }

    /// Skips one value nested at most `max_depth` containers deep.
    pub fn skip_bounded(&mut self, max_depth: usize) -> Result<(), MpError> {
        let mut stack = [0u64; MAX_DEPTH + 1];
        let max_depth = max_depth.min(MAX_DEPTH);
        let mut depth = 0usize;
        stack[0] = 1;
        loop {
            while stack[depth] == 0 {
                if depth == 0 {
                    return Ok(());
                }
                depth -= 1;
            }
            stack[depth] -= 1;
            let children = self.skip_header()?;
            if children > 0 {
                depth += 1;
                if depth > max_depth {
                    return Err(MpError::TooDeep);
                }
                stack[depth] = children;
            }
        }
    }

    /// Consumes one value's header and any scalar payload; returns how many values it contains.
    fn skip_header(&mut self) -> Result<u64, MpError> {
        let m = self.u8()?;
        let children = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => 2 * u64::from(m & 0x0f),
            0x90..=0x9f => u64::from(m & 0x0f),
            0xa0..=0xbf => {
                self.take(usize::from(m & 0x1f))?;
                0
            }
            0xc1 => return Err(MpError::Invalid("reserved marker 0xc1")),
            0xc4 | 0xd9 => {
                let n = self.be(1)? as usize;
                self.take(n)?;
                0
            }
            0xc5 | 0xda => {
                let n = self.be(2)? as usize;
                self.take(n)?;
                0
            }
            0xc6 | 0xdb => {
                let n = self.be(4)? as usize;
                self.take(n)?;
                0
            }
            0xc7 => {
                let n = self.be(1)? as usize;
                self.take(n + 1)?;
                0
            }
            0xc8 => {
                let n = self.be(2)? as usize;
                self.take(n + 1)?;
                0
            }
            0xc9 => {
                let n = self.be(4)? as usize;
                self.take(n + 1)?;
                0
            }
            0xca => {
                self.take(4)?;
                0
            }
            0xcb => {
                self.take(8)?;
                0
            }
            0xcc..=0xcf => {
                self.take(1 << (m - 0xcc))?;
                0
            }
            0xd0..=0xd3 => {
                self.take(1 << (m - 0xd0))?;
                0
            }
            0xd4..=0xd8 => {
                self.take(1 + (1 << (m - 0xd4)))?;
                0
            }
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            0xde => 2 * self.be(2)?,
            0xdf => 2 * self.be(4)?,
        };
        Ok(children)
    }

    /// Skips one value and returns its bytes.
    pub fn value(&mut self) -> Result<&'a [u8], MpError> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.buf[start..self.pos])
    }
}

/// A MessagePack integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    U(u64),
    I(i64),
}

fn float_time(f: f64) -> EventTime {
    if !f.is_finite() {
        return EventTime { sec: 0, nsec: 0 };
    }
    let sec = f.floor();
    EventTime {
        sec: sec as i64,
        nsec: ((f - sec) * 1e9) as u32,
    }
}

// === writers ===

pub fn write_array_len(out: &mut Vec<u8>, n: u32) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u32::from(u16::MAX) {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub fn write_map_len(out: &mut Vec<u8>, n: u32) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if n <= u32::from(u16::MAX) {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= usize::from(u8::MAX) {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

pub fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n <= usize::from(u8::MAX) {
        out.push(0xc4);
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.push(0xcc);
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn write_event_time(out: &mut Vec<u8>, t: EventTime) {
    out.push(0xd7);
    out.push(0);
    out.extend_from_slice(&(t.sec as u32).to_be_bytes());
    out.extend_from_slice(&t.nsec.to_be_bytes());
}

// === JSON ===

/// Transcodes one MessagePack value to JSON, appending to `out`.
pub fn write_json(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), MpError> {
    json_value(r, out, 0, false)
}

/// `in_key`: writing the text of a non-string map key, which is escaped once as a whole.
fn json_value(
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    in_key: bool,
) -> Result<(), MpError> {
    if depth > MAX_DEPTH {
        return Err(MpError::TooDeep);
    }
    let m = r.peek()?;
    match m {
        0xc0 => {
            r.pos += 1;
            out.extend_from_slice(b"null");
        }
        0xc2 => {
            r.pos += 1;
            out.extend_from_slice(b"false");
        }
        0xc3 => {
            r.pos += 1;
            out.extend_from_slice(b"true");
        }
        0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => match r.int()? {
            Int::U(u) => out.extend_from_slice(u.to_string().as_bytes()),
            Int::I(i) => out.extend_from_slice(i.to_string().as_bytes()),
        },
        0xca | 0xcb => {
            let f = if m == 0xca {
                r.pos += 1;
                f64::from(f32::from_bits(r.be(4)? as u32))
            } else {
                r.pos += 1;
                f64::from_bits(r.be(8)?)
            };
            write_json_f64(out, f);
        }
        0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6 => {
            let raw = r.raw()?;
            write_json_str(out, &String::from_utf8_lossy(raw));
        }
        0x90..=0x9f | 0xdc | 0xdd => {
            let n = r.array_len()?;
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                json_value(r, out, depth + 1, in_key)?;
            }
            out.push(b']');
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let n = r.map_len()?;
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                json_key(r, out, depth, in_key)?;
                out.push(b':');
                json_value(r, out, depth + 1, in_key)?;
            }
            out.push(b'}');
        }
        0xd7 | 0xc7 if is_event_time_ext(r) => {
            let t = r.time()?;
            write_json_f64(out, t.as_f64());
        }
        _ => {
            // other ext types and reserved markers have no JSON form
            r.skip()?;
            out.extend_from_slice(b"null");
        }
    }
    Ok(())
}

fn is_event_time_ext(r: &Reader<'_>) -> bool {
    matches!(
        r.buf.get(r.pos..r.pos + 3),
        Some([0xd7, 0, _] | [0xc7, 8, 0])
    )
}

/// A map key: strings as they are; any other key as the string of its JSON text. Keys nested in
/// such a key are written unescaped, as the outermost key escapes its whole text once: escaping
/// at every level would double the output per level (a few hundred bytes of nested map keys
/// became gigabytes of JSON; found by fuzzing).
fn json_key(
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    in_key: bool,
) -> Result<(), MpError> {
    if r.next_is_raw() {
        let raw = r.raw()?;
        write_json_str(out, &String::from_utf8_lossy(raw));
    } else if in_key {
        json_value(r, out, depth + 1, true)?;
    } else {
        let mut tmp = Vec::new();
        json_value(r, &mut tmp, depth + 1, true)?;
        write_json_str(out, &String::from_utf8_lossy(&tmp));
    }
    Ok(())
}

pub fn write_json_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        let s = format!("{f:?}");
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Converts a `serde_json::Value` to MessagePack (used by line input JSON parsing and filters).
pub fn write_from_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_uint(out, u);
            } else if let Some(i) = n.as_i64() {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            write_array_len(out, a.len() as u32);
            for x in a {
                write_from_json(out, x);
            }
        }
        Value::Object(o) => {
            write_map_len(out, o.len() as u32);
            for (k, x) in o {
                write_str(out, k);
                write_from_json(out, x);
            }
        }
    }
}

#[cfg(test)]
mod tests;
