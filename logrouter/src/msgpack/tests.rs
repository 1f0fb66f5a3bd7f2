//! Unit tests for the MessagePack reader, writer and JSON transcoder.

use super::*;

fn enc(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

#[test]
fn skip_matches_rmpv_lengths() {
    use rmpv::Value as V;
    let v = V::Array(vec![
        V::from("tag"),
        V::Map(vec![
            (V::from("a"), V::from(1)),
            (V::from("b"), V::from(-300)),
            (V::from("c"), V::from(1.5)),
            (V::from("d"), V::Binary(vec![0; 300])),
            (V::from("e"), V::Ext(0, vec![0, 0, 0, 1, 0, 0, 0, 2])),
            (V::from("f"), V::Array((0..20).map(V::from).collect())),
        ]),
    ]);
    let bytes = enc(&v);
    let mut r = Reader::new(&bytes);
    r.skip().unwrap();
    assert!(r.is_empty());
    for cut in 0..bytes.len() {
        assert_eq!(
            Reader::new(&bytes[..cut]).skip(),
            Err(MpError::Eof),
            "cut {cut}"
        );
    }
}

#[test]
fn json_transcoding() {
    use rmpv::Value as V;
    let v = V::Map(vec![
        (V::from("msg"), V::from("hi \"there\"\n")),
        (V::from("n"), V::from(-5)),
        (V::from("ok"), V::from(true)),
        (V::from("nil"), V::Nil),
        (V::from("list"), V::Array(vec![V::from(1), V::from("x")])),
        (V::from(7), V::from(0.25)),
    ]);
    let bytes = enc(&v);
    let mut out = Vec::new();
    write_json(&mut Reader::new(&bytes), &mut out).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"msg":"hi \"there\"\n","n":-5,"ok":true,"nil":null,"list":[1,"x"],"7":0.25})
    );
}

#[test]
fn event_time_and_ints() {
    let mut out = Vec::new();
    write_event_time(
        &mut out,
        EventTime {
            sec: 1_700_000_000,
            nsec: 5,
        },
    );
    write_uint(&mut out, 1_700_000_001);
    let mut r = Reader::new(&out);
    assert_eq!(
        r.time().unwrap(),
        EventTime {
            sec: 1_700_000_000,
            nsec: 5
        }
    );
    assert_eq!(
        r.time().unwrap(),
        EventTime {
            sec: 1_700_000_001,
            nsec: 0
        }
    );
}

#[test]
fn writers_roundtrip_through_rmpv() {
    let mut out = Vec::new();
    write_array_len(&mut out, 3);
    write_str(&mut out, &"x".repeat(300));
    write_map_len(&mut out, 1);
    write_str(&mut out, "k");
    write_uint(&mut out, 70_000);
    write_bin(&mut out, &[1, 2, 3]);
    let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
    assert_eq!(v[0].as_str().unwrap().len(), 300);
    assert_eq!(v[1]["k"].as_u64(), Some(70_000));
    assert_eq!(v[2].as_slice(), Some(&[1u8, 2, 3][..]));
}

#[test]
fn deep_nesting_is_refused_by_json_but_skippable() {
    let mut out = Vec::new();
    for _ in 0..1000 {
        write_array_len(&mut out, 1);
    }
    out.push(0xc0);
    Reader::new(&out).skip().unwrap();
    assert_eq!(
        write_json(&mut Reader::new(&out), &mut Vec::new()),
        Err(MpError::TooDeep)
    );
}

#[test]
fn nested_non_string_keys_encode_to_json_linear_in_their_size() {
    // {{{{...: 1}: 1}: 1}: 1} with quotes in the innermost key, 60 levels deep: ~200 bytes
    let mut out = Vec::new();
    for _ in 0..60 {
        write_map_len(&mut out, 1);
    }
    write_str(&mut out, "a\"b");
    for _ in 0..60 {
        write_uint(&mut out, 1);
    }
    let mut json = Vec::new();
    write_json(&mut Reader::new(&out), &mut json).unwrap();
    assert!(json.len() < 20 * out.len(), "{} bytes of JSON", json.len());
    // still one valid JSON object whose key is the inner map's text
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let (key, value) = v.as_object().unwrap().iter().next().unwrap();
    assert!(key.starts_with("{{") && key.contains("a\\\"b"), "{key}");
    assert_eq!(value, 1);
}
