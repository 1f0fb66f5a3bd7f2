//! Stable-toolchain fuzzing harness: runs the same target functions as the cargo-fuzz targets on mutated and generated inputs for a bounded time.
//!
//! Why it exists: libFuzzer needs a nightly toolchain; CI must fuzz the Forward decoder for a
//! bounded time whatever toolchain it has. Coverage guidance is what this harness lacks, so it
//! makes up for it with structure: seeds in every Forward mode, a generator of random
//! well-formed MessagePack entries wrapped in every mode (gzip included), and byte-level
//! mutations (bit flips, msgpack markers, length fields, splices, truncations) of both.
//!
//! `stable_fuzz <forward_decode|fluent_bit_config> <seconds> [rng seed]`; exits 1 and writes the
//! input to `artifacts/<target>/crash-stable-<n>` on the first panic; run it under a memory
//! limit (`scripts/fuzz` sets `ulimit -v`) so a memory blow-up aborts instead of swapping.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use skiff_logrouter::msgpack::{
    EventTime, write_array_len, write_bin, write_event_time, write_map_len, write_str, write_uint,
};

const MAX_LEN: usize = 1 << 16;

/// xorshift64*: deterministic for a given seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(data);
    gz.finish().unwrap_or_default()
}

/// A random MessagePack value, nesting at most `depth` levels.
fn value(rng: &mut Rng, out: &mut Vec<u8>, depth: u32) {
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => write_uint(out, rng.next() >> rng.below(64)),
        1 => write_str(out, &"s".repeat(rng.below(40))),
        2 => out.push([0xc0, 0xc2, 0xc3, 0xff, 0xe0][rng.below(5)]),
        3 => {
            out.push(0xcb);
            out.extend_from_slice(&f64::from_bits(rng.next()).to_be_bytes());
        }
        4 => write_bin(out, &vec![0xab; rng.below(20)]),
        5 => write_event_time(
            out,
            EventTime {
                sec: i64::from(rng.next() as u32),
                nsec: rng.next() as u32,
            },
        ),
        6 => {
            let n = rng.below(4) as u32;
            write_array_len(out, n);
            for _ in 0..n {
                value(rng, out, depth - 1);
            }
        }
        _ => {
            let n = rng.below(4) as u32;
            write_map_len(out, n);
            for _ in 0..n {
                write_str(out, ["log", "id", "source", "k"][rng.below(4)]);
                value(rng, out, depth - 1);
            }
        }
    }
}

/// `[time, record]` entries, mostly well-formed, sometimes in Fluent Bit 2.x's `[[time, meta], record]`.
fn entries(rng: &mut Rng) -> (Vec<u8>, u32) {
    let n = 1 + rng.below(8) as u32;
    let mut out = Vec::new();
    for _ in 0..n {
        write_array_len(&mut out, 2);
        let v2 = rng.chance(4);
        if v2 {
            write_array_len(&mut out, 2);
        }
        if rng.chance(2) {
            write_uint(&mut out, 1_700_000_000);
        } else {
            write_event_time(
                &mut out,
                EventTime {
                    sec: 1_700_000_000,
                    nsec: 5,
                },
            );
        }
        if v2 {
            write_map_len(&mut out, 0);
        }
        if rng.chance(8) {
            value(rng, &mut out, 3);
        } else {
            let pairs = rng.below(4) as u32;
            write_map_len(&mut out, pairs);
            for i in 0..pairs {
                write_str(&mut out, ["log", "id", "ecs_cluster", "source"][i as usize]);
                value(rng, &mut out, 3);
            }
        }
    }
    (out, n)
}

fn options(rng: &mut Rng, out: &mut Vec<u8>, compressed: bool) {
    let chunk = rng.chance(2);
    write_map_len(out, u32::from(chunk) + u32::from(compressed));
    if chunk {
        write_str(out, "chunk");
        write_str(out, "c0ffee");
    }
    if compressed {
        write_str(out, "compressed");
        write_str(out, "gzip");
    }
}

/// One frame in a random mode: Message, Forward, PackedForward, CompressedPackedForward or PING.
fn frame(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let (body, n) = entries(rng);
    let with_opts = rng.chance(2);
    match rng.below(5) {
        0 => {
            write_array_len(&mut out, 3 + u32::from(with_opts));
            write_str(&mut out, "app");
            write_uint(&mut out, 1_700_000_000);
            write_map_len(&mut out, 1);
            write_str(&mut out, "log");
            value(rng, &mut out, 2);
        }
        1 => {
            write_array_len(&mut out, 2 + u32::from(with_opts));
            write_str(&mut out, "app");
            write_array_len(&mut out, n);
            out.extend_from_slice(&body);
        }
        2 => {
            write_array_len(&mut out, 2 + u32::from(with_opts));
            write_str(&mut out, "app");
            write_bin(&mut out, &body);
        }
        3 => {
            write_array_len(&mut out, 3);
            write_str(&mut out, "app");
            // sometimes several gzip members, as MultiGzDecoder accepts
            let mut gz = gzip(&body);
            if rng.chance(4) {
                gz.extend_from_slice(&gzip(&body));
            }
            write_bin(&mut out, &gz);
            options(rng, &mut out, true);
            return out;
        }
        _ => {
            write_array_len(&mut out, 6);
            for s in ["PING", "host"] {
                write_str(&mut out, s);
            }
            write_bin(&mut out, b"salt");
            for s in ["digest", "", ""] {
                write_str(&mut out, s);
            }
            return out;
        }
    }
    if with_opts {
        options(rng, &mut out, false);
    }
    out
}

const CONFIG_SEEDS: &[&str] = &[
    "[SERVICE]\n    Flush 1\n    storage.path /tmp/x\n    frames.mem_limit 8M\n[INPUT]\n    Name forward\n    Port 24224\n    storage.type filesystem\n[OUTPUT]\n    Name stdout\n    Match *\n",
    "@SET X=1\n[INPUT]\n    Name tcp\n    Format json\n[FILTER]\n    Name grep\n    Match *\n    Regex log ^a\n[FILTER]\n    Name modify\n    Match *\n    Rename a b\n[OUTPUT]\n    Name http\n    Match app*\n    Header X-K ${X}\n    Compress gzip\n",
    "[PARSER]\n    Name j\n    Format regex\n    Regex ^(?<a>.*)$\n[FILTER]\n    Name parser\n    Match *\n    Key_Name log\n    Parser j\n[OUTPUT]\n    Name loki\n    Match *\n    Labels job=x, $k\n@INCLUDE other*.conf\n",
];

const MSGPACK_MARKERS: &[u8] = &[
    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc4, 0xc5, 0xc6, 0xc7, 0xd4, 0xd7,
    0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff,
];

/// Applies 1 to 8 random byte-level mutations.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = MSGPACK_MARKERS[rng.below(MSGPACK_MARKERS.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(32)).min(len);
                data.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let copy = data[i..j].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => data.truncate(rng.below(len)),
            7 if len > 4 => {
                // a length field: big-endian 1, 2 or 4 bytes of an interesting value
                let i = rng.below(len - 4);
                let v: u32 = [0, 1, 0x7f, 0xff, 0xffff, 0xffff_ffff, len as u32][rng.below(7)];
                let w = [1usize, 2, 4][rng.below(3)];
                data[i..i + w].copy_from_slice(&v.to_be_bytes()[4 - w..]);
            }
            _ => {
                let i = rng.below(len + 1);
                data.insert(i, MSGPACK_MARKERS[rng.below(MSGPACK_MARKERS.len())]);
            }
        }
    }
    data.truncate(MAX_LEN);
}

fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter(|b| b.len() <= MAX_LEN)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(secs)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: stable_fuzz <forward_decode|fluent_bit_config> <seconds> [seed]");
        std::process::exit(2);
    };
    let run: fn(&[u8]) -> usize = match target.as_str() {
        "forward_decode" => skiff_fuzz::forward_decode,
        "fluent_bit_config" => |d| {
            skiff_fuzz::fluent_bit_config(d);
            1
        },
        other => {
            eprintln!("unknown target {other}");
            std::process::exit(2);
        }
    };
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    }) | 1;
    // printed first: an allocation failure aborts without unwinding, and the seed replays the run
    eprintln!("stable_fuzz {target}: seed {seed} (replay: stable_fuzz {target} {secs} {seed})");
    let mut rng = Rng(seed);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut corpus = read_corpus(&root.join("corpus").join(target));
    if target == "forward_decode" {
        corpus.extend((0..64).map(|_| frame(&mut rng)));
    } else {
        corpus.extend(CONFIG_SEEDS.iter().map(|s| s.as_bytes().to_vec()));
    }
    // a panic prints its message; the input is saved below
    let deadline = SystemTime::now() + Duration::from_secs(secs);
    let mut execs = 0u64;
    let mut accepted = 0u64;
    while SystemTime::now() < deadline {
        for _ in 0..256 {
            let input = if target == "forward_decode" && rng.chance(4) {
                // a fresh stream of generated frames, sometimes mutated
                let mut s = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    s.extend_from_slice(&frame(&mut rng));
                }
                if rng.chance(2) {
                    let other = corpus[rng.below(corpus.len())].clone();
                    mutate(&mut rng, &mut s, &other);
                }
                s
            } else {
                let mut s = corpus[rng.below(corpus.len())].clone();
                let other = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &mut s, &other);
                s
            };
            execs += 1;
            let Ok(n) = std::panic::catch_unwind(|| run(&input)) else {
                let dir = root.join("artifacts").join(target);
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("crash-stable-{seed}-{execs}"));
                let _ = std::fs::write(&path, &input);
                eprintln!(
                    "stable_fuzz {target}: panic after {execs} inputs (seed {seed}); input saved to {}",
                    path.display()
                );
                std::process::exit(1);
            };
            accepted += u64::from(n > 0);
            // keep some inputs that got past the decoder, so mutations build on structure
            if n > 0 && corpus.len() < 4096 && rng.chance(64) {
                corpus.push(input);
            }
        }
    }
    println!(
        "stable_fuzz {target}: {execs} inputs in {secs} s (seed {seed}), {accepted} got past the decoder, no panic"
    );
    if accepted == 0 {
        // a harness whose inputs never get past the first check fuzzes nothing
        eprintln!("stable_fuzz {target}: no input was accepted: the generator is broken");
        std::process::exit(1);
    }
}
