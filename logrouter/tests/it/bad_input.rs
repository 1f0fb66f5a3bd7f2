//! Malformed msgpack, truncated frames, gzip bombs, oversized records and unknown modes are refused; good clients go on.

use std::io::{Read, Write};
use std::net::SocketAddr;

use rmpv::Value as V;

use crate::harness::*;

fn enc(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

/// Sends `bytes` then half-closes; returns once the router closed the connection.
fn send_bad(addr: SocketAddr, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

fn gzip_bomb() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0x90u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let opt = V::Map(vec![(V::from("compressed"), V::from("gzip"))]);
    enc(&V::Array(vec![
        V::from("bomb"),
        V::Binary(gz.finish().unwrap()),
        opt,
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_do_not_disturb_a_concurrent_good_client() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("good.log");
    let config = format!(
        r#"
[SERVICE]
    Flush     0.05
    HTTP_Port 0
[INPUT]
    Name            forward
    Port            0
    Buffer_Max_Size 1M
[OUTPUT]
    Name   file
    Match  good
    File   {out}
    Format plain
"#,
        out = out.display()
    );
    let router = Router::start(&config, dir.path()).await;
    let addr = router.forward.unwrap();

    let good = std::thread::spawn(move || {
        let mut c = ForwardClient::connect(addr).unwrap();
        for start in (0..2000).step_by(100) {
            c.send("good", start..start + 100).unwrap();
        }
    });
    let oversized = enc(&V::Array(vec![
        V::from("good"),
        V::from(1),
        V::Map(vec![(V::from("log"), V::from("x".repeat(2 << 20)))]),
    ]));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", vec![0x93, 0xa1, b't', 0xc1, 0xc1]),
        (
            "truncated",
            enc(&V::Array(vec![V::from("t"), V::from(1), V::Map(vec![])]))[..4].to_vec(),
        ),
        ("gzip_bomb", gzip_bomb()),
        ("too_large", oversized),
        (
            "unknown_mode",
            enc(&V::Array(vec![V::from("t"), V::Map(vec![])])),
        ),
        ("malformed", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    let bad_clients: Vec<_> = bad
        .iter()
        .map(|(_, bytes)| {
            let bytes = bytes.clone();
            std::thread::spawn(move || send_bad(addr, &bytes))
        })
        .collect();
    for b in bad_clients {
        b.join().unwrap();
    }
    good.join().unwrap();

    eventually(20, "the good client's records", || {
        file_records(&out).len() >= 2000
    })
    .await;
    assert_eq!(ids(&file_records(&out)), (0..2000).collect::<Vec<_>>());
    for reason in [
        "malformed",
        "truncated",
        "gzip_bomb",
        "too_large",
        "unknown_mode",
    ] {
        // counted as the connection closes: poll
        eventually(10, &format!("a rejection counted for {reason}"), || {
            router.counter(
                "skiff_logrouter_input_rejected_total",
                &[("input", "forward.0"), ("reason", reason)],
            ) >= 1
        })
        .await;
    }
    // the router still takes new clients
    tokio::task::spawn_blocking(move || {
        ForwardClient::connect(addr)
            .unwrap()
            .send("good", 5000..5001)
            .unwrap()
    })
    .await
    .unwrap();
    eventually(20, "a record after the attacks", || {
        file_records(&out).len() > 2000
    })
    .await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_gigabytes_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(
        "[SERVICE]\n    HTTP_Port 0\n[INPUT]\n    Name forward\n    Port 0\n[OUTPUT]\n    Name null\n    Match *\n",
        dir.path(),
    )
    .await;
    let addr = router.forward.unwrap();
    // [tag, bin32 of 4 GiB - 1 ...]: only the header is sent; the router must not wait for the rest
    let header = vec![0x92, 0xa1, b't', 0xc6, 0xff, 0xff, 0xff, 0xff, 0, 0, 0];
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(&header).unwrap();
        // the router closes the connection without the client closing its side
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    })
    .await
    .unwrap();
    eventually(10, "the refusal counted", || {
        router.counter(
            "skiff_logrouter_input_rejected_total",
            &[("reason", "too_large")],
        ) >= 1
    })
    .await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_whole_memory_budget_is_refused_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.log");
    let config = format!(
        "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n    frames.mem_limit 64K\n[INPUT]\n    Name forward\n    Port 0\n[OUTPUT]\n    Name file\n    Match *\n    File {}\n    Format plain\n",
        out.display()
    );
    let router = Router::start(&config, dir.path()).await;
    let addr = router.forward.unwrap();
    // ~175 KB: under Buffer_Max_Size (6 MB) but over the 64 KiB budget of every connection together
    let too_big = packed_frame("big", 0..1000, "big");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let _ = s.write_all(&too_big);
        // closed with no ack
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "no ack for a refused frame");
    })
    .await
    .unwrap();
    eventually(10, "the refusal counted", || {
        router.counter(
            "skiff_logrouter_input_rejected_total",
            &[("input", "forward.0"), ("reason", "too_large")],
        ) >= 1
    })
    .await;
    // frames that fit (~17 KB each) still flow, one after another through the same budget
    tokio::task::spawn_blocking(move || {
        let mut c = ForwardClient::connect(addr).unwrap();
        for start in (1000..2000).step_by(100) {
            c.send("small", start..start + 100).unwrap();
        }
    })
    .await
    .unwrap();
    eventually(20, "the small frames' records", || {
        file_records(&out).len() >= 1000
    })
    .await;
    assert_eq!(ids(&file_records(&out)), (1000..2000).collect::<Vec<_>>());
    router.stop().await;
}
