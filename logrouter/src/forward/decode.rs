//! Forward protocol v1 frame decoder: Message, Forward, PackedForward and CompressedPackedForward into one packed form.
//!
//! Every mode is reduced to PackedForward's body (a concatenation of `[time, record]` arrays), so
//! records pass through as the raw MessagePack the client sent: Forward mode's entries array body
//! already *is* that form, and PackedForward's payload is used after one validating scan.

use std::io::Read;
use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

use crate::msgpack::{self, MpError, Reader};
use crate::spares::Spares;

/// Bounds applied to one frame.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded frame (Fluent Bit's `Buffer_Max_Size`).
    pub max_frame: usize,
    /// Largest decompressed CompressedPackedForward payload.
    pub max_decompressed: usize,
    /// Largest single `[time, record]` entry; bigger ones are dropped and counted.
    pub max_record: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 6 * 1024 * 1024,
            max_decompressed: 6 * 1024 * 1024,
            max_record: 1024 * 1024,
        }
    }
}

/// Why a frame was refused. Each variant is a bounded metric label.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] MpError),
    #[error("frame larger than {0} bytes")]
    TooLarge(usize),
    #[error("unknown forward mode")]
    UnknownMode,
    #[error("decompressed payload larger than {0} bytes")]
    GzipBomb(usize),
    #[error("invalid gzip payload")]
    Gzip,
    /// The decompressed payload would exceed what the caller reserved for it (not an error of
    /// the frame: reserve more and decode it again).
    #[error("decompressed payload larger than the {0} bytes reserved for it")]
    NeedsMoreBudget(usize),
    #[error("unsupported compression {0:?}")]
    Compression(String),
}

impl DecodeError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::UnknownMode => "unknown_mode",
            DecodeError::GzipBomb(_) => "gzip_bomb",
            DecodeError::Gzip => "gzip",
            DecodeError::NeedsMoreBudget(_) => "too_large",
            DecodeError::Compression(_) => "compression",
        }
    }
}

/// One decoded client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Events(Events),
    Ping(Ping),
}

/// Events of one tag, in PackedForward form.
#[derive(Debug, PartialEq, Eq)]
pub struct Events {
    pub tag: String,
    /// Concatenated `[time, record]` arrays (shared: a connection hands its read buffer on
    /// rather than copying a big frame's records).
    pub entries: Bytes,
    pub count: u32,
    /// Entries refused (oversized, record not a map, bad time).
    pub rejected: u32,
    /// The `chunk` option: answer `{"ack": chunk}` once durable.
    pub chunk: Option<String>,
}

/// A handshake `PING`.
#[derive(Debug, PartialEq, Eq)]
pub struct Ping {
    pub hostname: String,
    pub salt: Vec<u8>,
    pub digest: String,
}

/// Decodes one frame from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// frame and how many bytes it used.
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, DecodeError> {
    decode_frame_within(buf, limits, usize::MAX)
}

/// [`decode_frame`], decompressing at most `reserved` bytes: a CompressedPackedForward payload
/// that would inflate beyond them is [`DecodeError::NeedsMoreBudget`] (beyond
/// `limits.max_decompressed`, [`DecodeError::GzipBomb`] as ever).
pub fn decode_frame_within(
    buf: &[u8],
    limits: &Limits,
    reserved: usize,
) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(decoded) = decode_frame_shared(buf, limits, reserved, &Spares::default())? else {
        return Ok(None);
    };
    let used = decoded.used;
    Ok(Some((
        decoded.with_entries(|r| Bytes::copy_from_slice(&buf[r])),
        used,
    )))
}

/// A decoded frame whose records may still be a part of the frame's bytes.
#[derive(Debug)]
pub struct Decoded {
    pub frame: Frame,
    /// Bytes of the frame used.
    pub used: usize,
    /// Where the frame's records are in its bytes, when they pass unchanged: the caller fills
    /// `Events::entries` from them (a slice of its buffer, no copy), else they are already set.
    pub shared: Option<Range<usize>>,
}

impl Decoded {
    /// Fills in `Events::entries` from `raw`, the frame's `used` bytes.
    pub fn with_entries(mut self, raw: impl FnOnce(Range<usize>) -> Bytes) -> Frame {
        if let (Frame::Events(ev), Some(range)) = (&mut self.frame, self.shared) {
            ev.entries = raw(range);
        }
        self.frame
    }
}

/// [`decode_frame_within`] without copying records that pass unchanged: see [`Decoded::shared`].
/// A decompressed payload goes into memory from `spares`.
pub fn decode_frame_shared(
    buf: &[u8],
    limits: &Limits,
    reserved: usize,
    spares: &Spares,
) -> Result<Option<Decoded>, DecodeError> {
    let mut r = Reader::new(buf);
    match r.skip() {
        Ok(()) => {}
        Err(MpError::Eof) if buf.len() <= limits.max_frame => return Ok(None),
        Err(MpError::Eof) => return Err(DecodeError::TooLarge(limits.max_frame)),
        Err(e) => return Err(e.into()),
    }
    let used = r.pos();
    if used > limits.max_frame {
        return Err(DecodeError::TooLarge(limits.max_frame));
    }
    let (frame, shared) = parse(&buf[..used], limits, reserved, spares)?;
    Ok(Some(Decoded {
        frame,
        used,
        shared,
    }))
}

/// A lower bound of the length of the (incomplete) frame at the start of `buf`, when its
/// header already says: `[tag, bin(len), ...]` needs at least the whole bin.
pub fn min_frame_len(buf: &[u8]) -> Option<usize> {
    let mut r = Reader::new(buf);
    r.array_len().ok()?;
    r.raw().ok()?;
    if !r.next_is_raw() {
        return None;
    }
    let start = r.pos();
    match r.raw() {
        Ok(_) => Some(r.pos()),
        Err(_) => {
            // header complete but payload short: header size + declared length
            let m = *buf.get(start)?;
            let (hdr, len) = match m {
                0xa0..=0xbf => (1, usize::from(m & 0x1f)),
                0xc4 | 0xd9 => (2, usize::from(*buf.get(start + 1)?)),
                0xc5 | 0xda => (
                    3,
                    usize::from(u16::from_be_bytes([
                        *buf.get(start + 1)?,
                        *buf.get(start + 2)?,
                    ])),
                ),
                0xc6 | 0xdb => {
                    let b = buf.get(start + 1..start + 5)?;
                    (5, u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                }
                _ => return None,
            };
            start.checked_add(hdr)?.checked_add(len)
        }
    }
}

/// The frame, and where its records are in `frame` when they pass unchanged (its `entries` are
/// then left empty for the caller to fill).
fn parse(
    frame: &[u8],
    limits: &Limits,
    reserved: usize,
    spares: &Spares,
) -> Result<(Frame, Option<Range<usize>>), DecodeError> {
    let mut r = Reader::new(frame);
    let n = r.array_len()?;
    if !(2..=6).contains(&n) || !r.next_is_raw() {
        return Err(DecodeError::UnknownMode);
    }
    let tag = r.str()?.to_owned();
    if tag == "PING" && n == 6 {
        let hostname = r.str()?.to_owned();
        let salt = r.raw()?.to_vec();
        let digest = r.str()?.to_owned();
        r.skip()?;
        r.skip()?;
        let ping = Frame::Ping(Ping {
            hostname,
            salt,
            digest,
        });
        return Ok((ping, None));
    }
    if n > 4 {
        return Err(DecodeError::UnknownMode);
    }
    if r.next_is_array() {
        // Forward: [tag, [[time, record], ...], option?]
        let count = r.array_len()?;
        let start = r.pos();
        for _ in 0..count {
            r.skip()?;
        }
        let range = start..r.pos();
        let opts = options(&mut r, n == 3)?;
        let (rebuilt, count, rejected) = validate_in_place(&frame[range.clone()], limits)?;
        return Ok(events(tag, rebuilt, range, count, rejected, opts));
    }
    if r.next_is_raw() {
        // PackedForward / CompressedPackedForward: [tag, bin, option?]
        let payload = r.raw()?;
        let range = r.pos() - payload.len()..r.pos();
        let opts = options(&mut r, n == 3)?;
        return match opts.compressed.as_deref() {
            None | Some("text") => {
                let (rebuilt, count, rejected) = validate_in_place(payload, limits)?;
                Ok(events(tag, rebuilt, range, count, rejected, opts))
            }
            Some("gzip") => {
                let plain = gunzip(payload, limits.max_decompressed, reserved, spares)?;
                let (entries, count, rejected) = validate(plain, limits)?;
                Ok((events_owned(tag, entries, count, rejected, opts), None))
            }
            Some(other) => Err(DecodeError::Compression(other.to_owned())),
        };
    }
    // Message: [tag, time, record, option?]
    if n < 3 {
        return Err(DecodeError::UnknownMode);
    }
    let time = r.value()?;
    let record = r.value()?;
    let opts = options(&mut r, n == 4)?;
    let mut entry = Vec::with_capacity(1 + time.len() + record.len());
    msgpack::write_array_len(&mut entry, 2);
    entry.extend_from_slice(time);
    entry.extend_from_slice(record);
    let (entries, count, rejected) = validate(entry, limits)?;
    Ok((events_owned(tag, entries, count, rejected, opts), None))
}

/// Events whose records are `rebuilt`, or else the frame's bytes at `range`.
fn events(
    tag: String,
    rebuilt: Option<Vec<u8>>,
    range: Range<usize>,
    count: u32,
    rejected: u32,
    opts: Options,
) -> (Frame, Option<Range<usize>>) {
    match rebuilt {
        Some(entries) => (
            events_owned(tag, entries.into(), count, rejected, opts),
            None,
        ),
        None => (
            events_owned(tag, Bytes::new(), count, rejected, opts),
            Some(range),
        ),
    }
}

fn events_owned(tag: String, entries: Bytes, count: u32, rejected: u32, opts: Options) -> Frame {
    Frame::Events(Events {
        tag,
        entries,
        count,
        rejected,
        chunk: opts.chunk,
    })
}

#[derive(Default)]
struct Options {
    chunk: Option<String>,
    compressed: Option<String>,
}

fn options(r: &mut Reader<'_>, present: bool) -> Result<Options, DecodeError> {
    let mut o = Options::default();
    if !present {
        return Ok(o);
    }
    if r.peek()? == 0xc0 {
        r.skip()?;
        return Ok(o);
    }
    let n = r.map_len()?;
    for _ in 0..n {
        if !r.next_is_raw() {
            r.skip()?;
            r.skip()?;
            continue;
        }
        match r.raw()? {
            b"chunk" if r.next_is_raw() => o.chunk = Some(r.str()?.to_owned()),
            b"compressed" if r.next_is_raw() => o.compressed = Some(r.str()?.to_owned()),
            _ => r.skip()?,
        }
    }
    Ok(o)
}

/// Inflates `payload`, never past `max` (the frame limit) nor `reserved` (the caller's permits).
fn gunzip(
    payload: &[u8],
    max: usize,
    reserved: usize,
    spares: &Spares,
) -> Result<Vec<u8>, DecodeError> {
    let cap = max.min(reserved);
    // gzip's trailer holds the size (mod 4 GiB) of a one-member payload: one allocation of the
    // right size rather than doublings (never more than the cap, whatever the trailer says)
    let announced = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .map_or(0, |t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize);
    let guess = if announced > 0 {
        announced.saturating_add(1)
    } else {
        payload.len().saturating_mul(4)
    };
    let mut out = spares.take(guess.min(cap.saturating_add(1)));
    let dec = flate2::read::MultiGzDecoder::new(payload);
    dec.take((cap as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Gzip)?;
    if out.len() > cap {
        return Err(if cap < max {
            DecodeError::NeedsMoreBudget(reserved)
        } else {
            DecodeError::GzipBomb(max)
        });
    }
    Ok(out)
}

/// Checks each `[time, record]` entry; returns the entries to keep (copied only if some were
/// refused or needed normalising), their count and how many were refused.
pub fn validate(body: Vec<u8>, limits: &Limits) -> Result<(Bytes, u32, u32), DecodeError> {
    let (rebuilt, count, rejected) = validate_in_place(&body, limits)?;
    Ok((
        rebuilt.map_or_else(|| body.into(), Bytes::from),
        count,
        rejected,
    ))
}

/// [`validate`] of borrowed entries: `None` when they are all kept as they are.
fn validate_in_place(
    body: &[u8],
    limits: &Limits,
) -> Result<(Option<Vec<u8>>, u32, u32), DecodeError> {
    let mut r = Reader::new(body);
    let mut count = 0u32;
    let mut rejected = 0u32;
    let mut rebuilt: Option<Vec<u8>> = None;
    while !r.is_empty() {
        let start = r.pos();
        // bounded nesting: whatever is buffered can be encoded as JSON by every output
        r.skip_bounded(msgpack::MAX_DEPTH)?;
        let entry = &body[start..r.pos()];
        match check_entry(entry, limits) {
            EntryCheck::Keep => {
                count += 1;
                if let Some(out) = rebuilt.as_mut() {
                    out.extend_from_slice(entry);
                }
            }
            EntryCheck::Rewrite(fixed) => {
                count += 1;
                rebuilt
                    .get_or_insert_with(|| body[..start].to_vec())
                    .extend_from_slice(&fixed);
            }
            EntryCheck::Reject => {
                rejected += 1;
                rebuilt.get_or_insert_with(|| body[..start].to_vec());
            }
        }
    }
    Ok((rebuilt, count, rejected))
}

enum EntryCheck {
    Keep,
    Rewrite(Vec<u8>),
    Reject,
}

fn check_entry(entry: &[u8], limits: &Limits) -> EntryCheck {
    if entry.len() > limits.max_record {
        return EntryCheck::Reject;
    }
    let mut r = Reader::new(entry);
    if r.array_len().ok() != Some(2) {
        return EntryCheck::Reject;
    }
    if r.next_is_array() {
        // Fluent Bit 2.x event format: [[time, metadata], record] -> [time, record]
        if r.array_len().ok() != Some(2) {
            return EntryCheck::Reject;
        }
        let Ok(time) = r.value() else {
            return EntryCheck::Reject;
        };
        if Reader::new(time).time().is_err() || r.skip().is_err() || !r.next_is_map() {
            return EntryCheck::Reject;
        }
        let record = r.rest();
        let mut out = Vec::with_capacity(entry.len());
        msgpack::write_array_len(&mut out, 2);
        out.extend_from_slice(time);
        out.extend_from_slice(record);
        return EntryCheck::Rewrite(out);
    }
    if r.time().is_err() || !r.next_is_map() {
        return EntryCheck::Reject;
    }
    EntryCheck::Keep
}
