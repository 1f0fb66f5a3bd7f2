//! After the crash run: which numbered records the output files hold, and how many acked ones are missing or doubled.
//!
//! The outputs write records as JSON (Fluent Bit's `out_file` format:
//! `tag: [time, {...}]`, one per line), so each record's number is found by its
//! `"bench_seq":N` field, whatever other fields the router added.

use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use super::forward::SEQ_KEY;

/// How many times each sequence number below `limit` appears in the files under `dir`; numbers
/// at or past `limit` are counted in `out_of_range`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub counts: Vec<u16>,
    pub out_of_range: u64,
}

// === impl Seen ===

impl Seen {
    pub fn new(limit: u64) -> Seen {
        Seen {
            counts: vec![0; usize::try_from(limit).unwrap_or(0)],
            out_of_range: 0,
        }
    }

    /// Counts every `"bench_seq":N` of `line`.
    pub fn scan_line(&mut self, line: &[u8]) {
        let key = format!("\"{SEQ_KEY}\"");
        let key = key.as_bytes();
        let mut rest = line;
        while let Some(at) = find(rest, key) {
            rest = &rest[at + key.len()..];
            let after_colon = rest
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .filter(|&i| rest[i] == b':')
                .map(|i| &rest[i + 1..]);
            let Some(value) = after_colon else { continue };
            let start = value
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(value.len());
            let digits = value[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let Some(seq) = std::str::from_utf8(&value[start..start + digits])
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
            else {
                continue;
            };
            match usize::try_from(seq)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
            {
                Some(count) => *count = count.saturating_add(1),
                None => self.out_of_range += 1,
            }
        }
    }

    /// Counts every line of every regular file directly under `dir`.
    pub fn scan_dir(&mut self, dir: &Path) -> std::io::Result<usize> {
        let mut files = 0;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            files += 1;
            let mut reader =
                std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
            let mut line = Vec::with_capacity(1024);
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                self.scan_line(&line);
            }
        }
        Ok(files)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Acked records against the output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub acked: u64,
    /// Acked records found nowhere in the output.
    pub lost: u64,
    /// Extra copies of records found more than once (acked or not).
    pub duplicated: u64,
    /// Records never acked (in flight at the crash) that reached the output anyway.
    pub delivered_unacked: u64,
    /// Distinct records in the output.
    pub delivered: u64,
    /// Numbers in the output the client never sent.
    pub unknown: u64,
}

/// Compares the acked `(first, count)` ranges with what the output holds.
pub fn verdict(acked: &[(u64, u32)], seen: &Seen) -> Verdict {
    let mut is_acked = vec![false; seen.counts.len()];
    let mut verdict = Verdict {
        unknown: seen.out_of_range,
        ..Verdict::default()
    };
    for &(first, count) in acked {
        for seq in first..first + u64::from(count) {
            verdict.acked += 1;
            match usize::try_from(seq).ok().and_then(|i| is_acked.get_mut(i)) {
                Some(flag) => *flag = true,
                // Acked but past what the output was scanned for: cannot be found.
                None => verdict.lost += 1,
            }
        }
    }
    for (count, acked) in seen.counts.iter().zip(&is_acked) {
        let count = u64::from(*count);
        if count > 0 {
            verdict.delivered += 1;
            verdict.duplicated += count - 1;
            if !acked {
                verdict.delivered_unacked += 1;
            }
        } else if *acked {
            verdict.lost += 1;
        }
    }
    verdict
}
