//! On-disk segment format: a sequence of CRC32-checked batch frames, and the scan that finds a torn or corrupt tail.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`, payload:
//! `tag_len: u16 LE | tag | count: u32 LE | entries` where entries are packed `[time, record]`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of frame header.
pub const HEADER: usize = 8;
/// Largest frame accepted when reading (guards against a corrupt length).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A batch as stored and read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub tag: String,
    pub count: u32,
    pub entries: Vec<u8>,
}

/// Size of the frame of `entries_len` bytes of entries: `encode_head(tag, ..)` and the entries.
pub fn encoded_len(tag: &str, entries_len: usize) -> usize {
    HEADER + 2 + tag.len().min(usize::from(u16::MAX)) + 4 + entries_len
}

/// Encodes one frame (the writer writes the head and the entries without joining them).
#[cfg(test)]
pub fn encode(tag: &str, count: u32, entries: &[u8]) -> Vec<u8> {
    let mut out = encode_head(tag, count, entries);
    out.extend_from_slice(entries);
    out
}

/// A frame's header, tag and count, checksummed with its `entries`: written just before them,
/// it spares copying the entries into one frame.
pub fn encode_head(tag: &str, count: u32, entries: &[u8]) -> Vec<u8> {
    let tag = &tag.as_bytes()[..tag.len().min(usize::from(u16::MAX))];
    let payload_len = 2 + tag.len() + 4 + entries.len();
    let mut out = Vec::with_capacity(HEADER + 2 + tag.len() + 4);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    out.extend_from_slice(tag);
    out.extend_from_slice(&count.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[HEADER..]);
    crc.update(entries);
    let crc = crc.finalize();
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Result of decoding the frame at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Batch, usize),
    /// Not enough bytes (a torn tail if the segment is complete).
    Short,
    /// Checksum or structure mismatch.
    Corrupt,
}

/// Decodes a frame read into its own buffer: the entries stay in it (no new buffer).
pub fn decode_owned(mut buf: Vec<u8>) -> Decoded {
    let head = match frame_head(&buf) {
        Ok(head) => head,
        Err(bad) => return bad,
    };
    buf.truncate(head.used);
    buf.drain(..head.entries);
    Decoded::Frame(
        Batch {
            tag: head.tag,
            count: head.count,
            entries: buf,
        },
        head.used,
    )
}

/// What a frame's header and checked payload say.
struct FrameHead {
    tag: String,
    count: u32,
    /// Offset of the entries in the buffer.
    entries: usize,
    /// Bytes the frame takes.
    used: usize,
}

/// Reads and checks the frame at the start of `buf` (length, CRC32, tag, count).
fn frame_head(buf: &[u8]) -> Result<FrameHead, Decoded> {
    let Some(head) = buf.get(..HEADER) else {
        return Err(Decoded::Short);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(6..=MAX_FRAME).contains(&len) {
        return Err(Decoded::Corrupt);
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Err(Decoded::Short);
    };
    if crc32fast::hash(payload) != crc {
        return Err(Decoded::Corrupt);
    }
    let tag_len = usize::from(u16::from_le_bytes([payload[0], payload[1]]));
    let (Some(tag), Some(count)) = (
        payload.get(2..2 + tag_len),
        payload.get(2 + tag_len..6 + tag_len),
    ) else {
        return Err(Decoded::Corrupt);
    };
    Ok(FrameHead {
        tag: String::from_utf8_lossy(tag).into_owned(),
        count: u32::from_le_bytes([count[0], count[1], count[2], count[3]]),
        entries: HEADER + 6 + tag_len,
        used: HEADER + len,
    })
}

/// Segment file name for an id.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Ids of the segments in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Length of the valid prefix of a segment, and its frame and record counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub valid_len: u64,
    pub file_len: u64,
    pub frames: u64,
    pub records: u64,
}

/// Reads a whole segment frame by frame (bounded memory: one frame at a time).
pub fn scan(path: &Path) -> io::Result<Scan> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut s = Scan {
        file_len,
        ..Scan::default()
    };
    let mut header = [0u8; HEADER];
    loop {
        if s.valid_len + HEADER as u64 > file_len {
            break;
        }
        f.seek(SeekFrom::Start(s.valid_len))?;
        f.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(6..=MAX_FRAME).contains(&len) || s.valid_len + (HEADER + len) as u64 > file_len {
            break;
        }
        let mut frame = vec![0u8; HEADER + len];
        frame[..HEADER].copy_from_slice(&header);
        f.read_exact(&mut frame[HEADER..])?;
        // Only the header and checksum matter here: the records stay where they are.
        match frame_head(&frame) {
            Ok(head) => {
                s.valid_len += head.used as u64;
                s.frames += 1;
                s.records += u64::from(head.count);
            }
            Err(_) => break,
        }
    }
    Ok(s)
}
