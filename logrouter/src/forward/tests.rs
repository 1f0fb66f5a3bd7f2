//! Unit tests for the Forward decoder and handshake.

use std::io::Write;

use rmpv::Value as V;

use super::decode::*;
use super::handshake::{Handshake, digest};

fn enc(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn rec(msg: &str) -> V {
    V::Map(vec![(V::from("log"), V::from(msg))])
}

fn event_time(sec: u32, nsec: u32) -> V {
    let mut b = sec.to_be_bytes().to_vec();
    b.extend_from_slice(&nsec.to_be_bytes());
    V::Ext(0, b)
}

fn events(buf: &[u8]) -> Events {
    match decode_frame(buf, &Limits::default()).unwrap().unwrap() {
        (Frame::Events(e), used) => {
            assert_eq!(used, buf.len());
            e
        }
        other => panic!("{other:?}"),
    }
}

fn entries_of(e: &Events) -> Vec<V> {
    let mut r = &e.entries[..];
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(rmpv::decode::read_value(&mut r).unwrap());
    }
    out
}

#[test]
fn message_mode_with_event_time_and_chunk() {
    let opt = V::Map(vec![(V::from("chunk"), V::from("abc"))]);
    let f = enc(&V::Array(vec![
        V::from("app"),
        event_time(10, 5),
        rec("hi"),
        opt,
    ]));
    let e = events(&f);
    assert_eq!(e.tag, "app");
    assert_eq!(e.count, 1);
    assert_eq!(e.chunk.as_deref(), Some("abc"));
    assert_eq!(
        entries_of(&e),
        vec![V::Array(vec![event_time(10, 5), rec("hi")])]
    );
}

#[test]
fn forward_mode_and_packed_forward_and_compressed() {
    let entries: Vec<V> = (0..3)
        .map(|i| V::Array(vec![V::from(100 + i), rec(&format!("m{i}"))]))
        .collect();
    let fwd = enc(&V::Array(vec![V::from("t"), V::Array(entries.clone())]));
    let e = events(&fwd);
    assert_eq!((e.count, e.chunk.clone()), (3, None));
    assert_eq!(entries_of(&e), entries);

    let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
    let pf = enc(&V::Array(vec![V::from("t"), V::Binary(packed.clone())]));
    assert_eq!(entries_of(&events(&pf)), entries);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&packed).unwrap();
    let opt = V::Map(vec![
        (V::from("compressed"), V::from("gzip")),
        (V::from("chunk"), V::from("c1")),
    ]);
    let cpf = enc(&V::Array(vec![
        V::from("t"),
        V::Binary(gz.finish().unwrap()),
        opt,
    ]));
    let e = events(&cpf);
    assert_eq!(e.chunk.as_deref(), Some("c1"));
    assert_eq!(entries_of(&e), entries);
}

#[test]
fn packed_frames_announce_their_length() {
    let f = enc(&V::Array(vec![V::from("t"), V::Binary(vec![7; 70_000])]));
    for cut in [8, 100, 69_000] {
        assert_eq!(min_frame_len(&f[..cut]), Some(f.len()), "cut {cut}");
    }
    let m = enc(&V::Array(vec![V::from("t"), V::from(1), rec("x")]));
    assert_eq!(min_frame_len(&m[..4]), None);
}

#[test]
fn incomplete_frames_wait_for_more_bytes() {
    let f = enc(&V::Array(vec![V::from("app"), V::from(1), rec("hello")]));
    for cut in 0..f.len() {
        assert_eq!(decode_frame(&f[..cut], &Limits::default()), Ok(None));
    }
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let lim = Limits {
        max_frame: 4096,
        max_decompressed: 4096,
        max_record: 64,
    };
    // not an array
    assert_eq!(
        decode_frame(&enc(&V::from(5)), &lim).unwrap_err().reason(),
        "malformed"
    );
    // unknown mode: second element is a map
    let f = enc(&V::Array(vec![V::from("t"), V::Map(vec![])]));
    assert_eq!(decode_frame(&f, &lim).unwrap_err().reason(), "unknown_mode");
    // reserved marker
    assert_eq!(
        decode_frame(&[0x93, 0xa1, b't', 0xc1], &lim)
            .unwrap_err()
            .reason(),
        "malformed"
    );
    // frame bigger than the limit
    let big = enc(&V::Array(vec![
        V::from("t"),
        V::from(1),
        rec(&"x".repeat(5000)),
    ]));
    assert_eq!(decode_frame(&big, &lim).unwrap_err().reason(), "too_large");
    assert_eq!(
        decode_frame(&big[..4097], &lim).unwrap_err().reason(),
        "too_large"
    );
    // gzip bomb
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0x90; 100_000]).unwrap();
    let opt = V::Map(vec![(V::from("compressed"), V::from("gzip"))]);
    let f = enc(&V::Array(vec![
        V::from("t"),
        V::Binary(gz.finish().unwrap()),
        opt,
    ]));
    assert_eq!(decode_frame(&f, &lim).unwrap_err().reason(), "gzip_bomb");
    // an oversized record and a non-map record are dropped, the rest kept
    let entries = vec![
        V::Array(vec![V::from(1), rec("ok")]),
        V::Array(vec![V::from(1), rec(&"y".repeat(100))]),
        V::Array(vec![V::from(1), V::from("not a map")]),
    ];
    let e =
        match decode_frame(&enc(&V::Array(vec![V::from("t"), V::Array(entries)])), &lim).unwrap() {
            Some((Frame::Events(e), _)) => e,
            other => panic!("{other:?}"),
        };
    assert_eq!((e.count, e.rejected), (1, 2));
    // nesting deeper than any output can encode refuses the frame
    let mut deep = V::from(1);
    for _ in 0..100 {
        deep = V::Array(vec![deep]);
    }
    let entry = V::Array(vec![V::from(1), V::Map(vec![(V::from("k"), deep)])]);
    let f = enc(&V::Array(vec![V::from("t"), V::Array(vec![entry])]));
    assert_eq!(
        decode_frame(&f, &Limits::default()).unwrap_err().reason(),
        "malformed"
    );
}

#[test]
fn fluent_bit_v2_metadata_entries_are_normalised() {
    let entry = V::Array(vec![
        V::Array(vec![event_time(7, 0), V::Map(vec![])]),
        rec("x"),
    ]);
    let e = events(&enc(&V::Array(vec![V::from("t"), V::Array(vec![entry])])));
    assert_eq!(
        entries_of(&e),
        vec![V::Array(vec![event_time(7, 0), rec("x")])]
    );
}

#[test]
fn handshake_accepts_the_right_key_only() {
    let h = Handshake::new("s3cret", "router");
    let salt = b"salty".to_vec();
    let good = Ping {
        hostname: "client".into(),
        salt: salt.clone(),
        digest: digest(&salt, b"client", &h.nonce, "s3cret"),
    };
    let pong = h.answer(&good).unwrap();
    let v = rmpv::decode::read_value(&mut &pong[..]).unwrap();
    assert_eq!(v[0].as_str(), Some("PONG"));
    assert_eq!(v[1].as_bool(), Some(true));
    assert_eq!(
        v[4].as_str().unwrap(),
        digest(&salt, b"router", &h.nonce, "s3cret")
    );
    let bad = Ping {
        digest: digest(&salt, b"client", &h.nonce, "wrong"),
        ..good
    };
    let pong = h.answer(&bad).unwrap_err();
    let v = rmpv::decode::read_value(&mut &pong[..]).unwrap();
    assert_eq!(v[1].as_bool(), Some(false));
    // PING frames decode
    let ping = enc(&V::Array(vec![
        V::from("PING"),
        V::from("client"),
        V::from("salty"),
        V::from("d"),
        V::from(""),
        V::from(""),
    ]));
    assert!(matches!(
        decode_frame(&ping, &Limits::default()),
        Ok(Some((Frame::Ping(_), _)))
    ));
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn valid_stream() -> Vec<u8> {
        let entries: Vec<V> = (0..4)
            .map(|i| V::Array(vec![event_time(i, i), rec("m")]))
            .collect();
        let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
        let mut out = enc(&V::Array(vec![V::from("a"), V::Array(entries)]));
        out.extend(enc(&V::Array(vec![
            V::from("b"),
            V::Binary(packed),
            V::Map(vec![(V::from("chunk"), V::from("x"))]),
        ])));
        out.extend(enc(&V::Array(vec![V::from("c"), V::from(3), rec("z")])));
        out
    }

    fn run(data: &[u8]) {
        let mut rest = data;
        while let Ok(Some((frame, used))) = decode_frame(rest, &Limits::default()) {
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
            if let Frame::Events(ev) = frame {
                let out = crate::pipeline::enrich(&ev.entries, &[("k", "v")]).unwrap();
                let mut r = crate::msgpack::Reader::new(&out);
                let mut n = 0;
                while !r.is_empty() {
                    r.skip().unwrap();
                    n += 1;
                }
                assert_eq!(n, ev.count);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            run(&data);
        }

        #[test]
        fn mutated_valid_frames_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut data = valid_stream();
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            run(&data);
        }
    }
}

#[test]
fn a_compressed_payload_inflates_only_into_the_bytes_reserved_for_it() {
    let entries: Vec<u8> = (0..1_000)
        .flat_map(|i| enc(&V::Array(vec![V::from(i), rec(&"x".repeat(100))])))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&entries).unwrap();
    let opt = V::Map(vec![(V::from("compressed"), V::from("gzip"))]);
    let f = enc(&V::Array(vec![
        V::from("t"),
        V::Binary(gz.finish().unwrap()),
        opt,
    ]));
    let lim = Limits::default();
    assert!(f.len() * 3 < entries.len(), "a compressed frame");
    assert_eq!(
        decode_frame_within(&f, &lim, f.len() * 3),
        Err(DecodeError::NeedsMoreBudget(f.len() * 3))
    );
    // with the worst case reserved it decodes
    match decode_frame_within(&f, &lim, lim.max_frame)
        .unwrap()
        .unwrap()
    {
        (Frame::Events(ev), used) => {
            assert_eq!(used, f.len());
            assert_eq!(ev.count, 1_000);
            assert_eq!(ev.entries, entries);
        }
        other => panic!("{other:?}"),
    }
    // beyond the frame limit it is still a bomb, whatever was reserved
    let small = Limits {
        max_decompressed: 1_000,
        ..Limits::default()
    };
    assert_eq!(
        decode_frame_within(&f, &small, usize::MAX)
            .unwrap_err()
            .reason(),
        "gzip_bomb"
    );
}
