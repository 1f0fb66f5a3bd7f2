//! Every Forward mode, from the Python `fluent-logger` and `msgpack` clients, reaches file, HTTP and Loki outputs exactly.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_in_every_mode_reach_file_http_and_loki_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::start().await;
    let out = dir.path().join("out");
    let config = format!(
        r#"
[SERVICE]
    Flush        0.1
    HTTP_Server  On
    HTTP_Port    0
    storage.path {storage}

[INPUT]
    Name         forward
    Listen       127.0.0.1
    Port         0
    storage.type filesystem

[OUTPUT]
    Name   file
    Match  app.*
    Path   {out}
    File   records.log
    Format plain

[OUTPUT]
    Name     http
    Match    *
    Host     127.0.0.1
    Port     {port}
    URI      /ingest
    Format   json_lines
    Header   X-Team logs
    Compress gzip

[OUTPUT]
    Name   loki
    Match  app.*
    Host   127.0.0.1
    Port   {port}
    Labels job=skiff, env=it
"#,
        storage = dir.path().join("buffer").display(),
        out = out.display(),
        port = sink.addr.port(),
    );
    let router = Router::start(&config, dir.path()).await;
    let addr = router.forward.unwrap();
    let modes = [
        "message",
        "message_int",
        "async",
        "forward",
        "packed",
        "compressed",
    ];
    let per_mode = 250u64;
    for (i, mode) in modes.into_iter().enumerate() {
        let start = i as u64 * per_mode;
        tokio::task::spawn_blocking(move || {
            python_send(mode, addr, &format!("app.{mode}"), start, per_mode)
        })
        .await
        .unwrap();
    }
    let total = modes.len() as u64 * per_mode;
    let expected: Vec<u64> = (0..total).collect();
    let file = out.join("records.log");
    eventually(30, "file output to hold every record", || {
        file_records(&file).len() as u64 >= total
    })
    .await;
    eventually(30, "http output to receive every record", || {
        sink.records("/ingest").len() as u64 >= total
    })
    .await;
    eventually(30, "loki to receive every record", || {
        loki_lines(&sink).len() as u64 >= total
    })
    .await;

    let from_file = file_records(&file);
    assert_eq!(
        ids(&from_file),
        expected,
        "file output: exactly once, all of them"
    );
    let from_http = sink.records("/ingest");
    assert_eq!(
        ids(&from_http),
        expected,
        "http output: exactly once, all of them"
    );
    let loki: Vec<serde_json::Value> = loki_lines(&sink);
    assert_eq!(ids(&loki), expected);

    for r in from_file.iter().chain(from_http.iter()) {
        let id = r["id"].as_u64().unwrap();
        assert_eq!(
            r["msg"],
            format!("hello \u{fc}n\u{ef}c\u{f8}d\u{e9} \"quoted\"\n{id}")
        );
        assert_eq!(r["ecs_cluster"], "it-cluster");
        assert_eq!(
            r["ecs_task_arn"],
            "arn:aws:ecs:us-east-1:123456789012:task/it-cluster/abc"
        );
        assert_eq!(r["ecs_task_definition"], "orders:7");
        assert_eq!(r["mode"], modes[(id / per_mode) as usize]);
    }
    // http: the date key comes first as a float, headers pass through
    assert!(
        from_http
            .iter()
            .all(|r| r["date"].as_f64().is_some_and(|d| d > 1.6e9))
    );
    let req = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path == "/ingest")
        .cloned()
        .unwrap();
    assert_eq!(req.headers.get("x-team").map(String::as_str), Some("logs"));
    assert_eq!(
        req.headers.get("content-encoding").map(String::as_str),
        Some("gzip")
    );

    // metrics: everything counted in and out, served on /metrics too
    assert_eq!(
        router.counter(
            "skiff_logrouter_input_records_total",
            &[("input", "forward.0")]
        ),
        total
    );
    eventually(10, "output counters", || {
        router.counter(
            "skiff_logrouter_output_records_total",
            &[("output", "http.0")],
        ) == total
    })
    .await;
    let metrics = router.metrics.unwrap();
    let text = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
        .await
        .unwrap();
    assert!(
        text.contains("skiff_logrouter_input_records_total{input=\"forward.0\"}"),
        "{text}"
    );
    assert!(text.contains("skiff_logrouter_buffer_bytes"));
    let health = tokio::task::spawn_blocking(move || http_get(metrics, "/health"))
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    router.stop().await;
}

fn loki_lines(sink: &HttpSink) -> Vec<serde_json::Value> {
    let got = sink.received.lock().unwrap();
    let mut out = Vec::new();
    for r in got.iter().filter(|r| r.path == "/loki/api/v1/push") {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for s in v["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["job"], "skiff");
            assert_eq!(s["stream"]["env"], "it");
            for pair in s["values"].as_array().unwrap() {
                assert!(pair[0].as_str().unwrap().parse::<u128>().is_ok());
                out.push(serde_json::from_str(pair[1].as_str().unwrap()).unwrap());
            }
        }
    }
    out
}

/// A minimal blocking HTTP/1.1 GET returning the whole response text.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_output_rotates_by_size_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rot");
    let config = format!(
        "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[INPUT]\n    Name forward\n    Port 0\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File app.log\n    Format plain\n    Rotate_Size 16K\n    Rotate_Keep 100\n",
        out.display()
    );
    let router = Router::start(&config, dir.path()).await;
    let addr = router.forward.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut c = ForwardClient::connect(addr).unwrap();
        for start in (0..1000).step_by(50) {
            c.send("rot", start..start + 50).unwrap();
        }
    })
    .await
    .unwrap();
    let all = || {
        let mut recs = Vec::new();
        for e in std::fs::read_dir(&out).into_iter().flatten().flatten() {
            recs.extend(file_records(&e.path()));
        }
        recs
    };
    // a read racing a rotation may see a file twice or not at all: poll until exact
    let expected: Vec<u64> = (0..1000).collect();
    eventually(20, "exactly all records across rotated files", || {
        ids(&all()) == expected
    })
    .await;
    // the rotation after the last write may still be under way
    eventually(20, "a rotated file", || {
        std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("app.log."))
    })
    .await;
    eventually(20, "exactly all records after the last rotation", || {
        ids(&all()) == expected
    })
    .await;
    router.stop().await;
}
