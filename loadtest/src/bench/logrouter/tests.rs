//! Tests of the log router benchmark's parts: the Forward encoding and acks, the client against a fake router, configurations, counting.

use std::path::Path;

use rmpv::Value;

use super::config::{Output, RouterConfig, classic_config, fluent_bit_argv, skiff_argv};
use super::count::{Seen, verdict};
use super::forward::{self, Batch, ClientOptions};
use super::*;

fn decode(bytes: &[u8]) -> Value {
    let mut cursor = std::io::Cursor::new(bytes);
    let value = rmpv::decode::read_value(&mut cursor).unwrap();
    assert_eq!(cursor.position() as usize, bytes.len(), "trailing bytes");
    value
}

#[test]
fn packed_forward_message_decodes_back_with_numbered_records() {
    let mut batch = Batch::new(1000, 200, (1_700_000_000, 123_456_789));
    assert_eq!(batch.record_bytes(), 200);
    assert_eq!(batch.entries.len(), 200_000);
    batch.number_from(5_000);
    let mut message = Vec::new();
    forward::encode_message(
        &mut message,
        forward::TAG,
        &batch,
        &forward::chunk_id(5_000),
    );
    let value = decode(&message);
    let parts = value.as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].as_str(), Some("bench.app"));
    let options = parts[2].as_map().unwrap();
    let option = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        option("chunk").unwrap().as_str(),
        Some("000000000000000000001388")
    );
    assert_eq!(option("size").unwrap().as_u64(), Some(1000));

    let stream = parts[1].as_slice().unwrap();
    let mut cursor = std::io::Cursor::new(stream);
    let mut seqs = Vec::new();
    while (cursor.position() as usize) < stream.len() {
        let entry = rmpv::decode::read_value(&mut cursor).unwrap();
        let entry = entry.as_array().unwrap();
        assert_eq!(entry.len(), 2);
        let Value::Ext(0, time) = &entry[0] else {
            panic!("time is not an EventTime: {:?}", entry[0]);
        };
        assert_eq!(time[..4], 1_700_000_000u32.to_be_bytes());
        assert_eq!(time[4..], 123_456_789u32.to_be_bytes());
        let record = entry[1].as_map().unwrap();
        assert_eq!(record[0].0.as_str(), Some("bench_seq"));
        seqs.push(record[0].1.as_u64().unwrap());
        assert_eq!(record[1].0.as_str(), Some("log"));
        assert_eq!(record[1].1.as_str().unwrap().len(), 163);
    }
    assert_eq!(seqs, (5_000..6_000).collect::<Vec<u64>>());
}

#[test]
fn record_sizes_are_clamped_to_what_a_str8_holds() {
    assert_eq!(Batch::new(1, 10, (0, 0)).record_bytes(), 38);
    assert_eq!(Batch::new(1, 10_000, (0, 0)).record_bytes(), 292);
    let mut small = Batch::new(3, 40, (0, 0));
    small.number_from(u64::MAX - 3);
    let mut message = Vec::new();
    forward::encode_message(&mut message, "t", &small, "c");
    assert!(decode(&message).is_array());
}

fn ack(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let value = Value::Map(vec![(Value::from("ack"), Value::from(id))]);
    rmpv::encode::write_value(&mut out, &value).unwrap();
    out
}

#[test]
fn acks_are_taken_whole_and_a_partial_one_waits() {
    let mut buffer = ack("a1");
    buffer.extend(ack("b2"));
    let third = ack("c3");
    buffer.extend_from_slice(&third[..3]);
    assert_eq!(forward::take_acks(&mut buffer).unwrap(), vec!["a1", "b2"]);
    assert_eq!(buffer, third[..3]);
    buffer.extend_from_slice(&third[3..]);
    assert_eq!(forward::take_acks(&mut buffer).unwrap(), vec!["c3"]);
    assert!(buffer.is_empty());

    let mut not_an_ack = Vec::new();
    rmpv::encode::write_value(&mut not_an_ack, &Value::from(7)).unwrap();
    assert!(forward::take_acks(&mut not_an_ack).is_err());
}

/// A Forward server that acks every chunk and reports the sequence numbers it received.
async fn fake_router() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, seqs) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let mut cursor = std::io::Cursor::new(&buffer[..]);
                    if let Ok(message) = rmpv::decode::read_value(&mut cursor) {
                        let used = cursor.position() as usize;
                        let parts = message.as_array().unwrap();
                        let mut entries = std::io::Cursor::new(parts[1].as_slice().unwrap());
                        while let Ok(entry) = rmpv::decode::read_value(&mut entries) {
                            let seq = entry[1].as_map().unwrap()[0].1.as_u64().unwrap();
                            let _ = seen.send(seq);
                        }
                        let chunk = parts[2].as_map().unwrap()[0]
                            .1
                            .as_str()
                            .unwrap()
                            .to_string();
                        buffer.drain(..used);
                        stream.write_all(&ack(&chunk)).await.unwrap();
                        continue;
                    }
                    if stream.read_buf(&mut buffer).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    (addr, seqs)
}

#[tokio::test]
async fn client_counts_acked_chunks_and_numbers_every_record_once() {
    let (addr, mut received) = fake_router().await;
    let tally = forward::run(ClientOptions {
        addr,
        connections: 3,
        window: 4,
        batch: 10,
        record_bytes: 200,
        duration: Duration::from_secs(30),
        max_records: 500,
        ack_timeout: Duration::from_secs(5),
        reconnect: false,
        rate: None,
    })
    .await;
    assert_eq!(tally.first_error, None);
    assert_eq!(tally.acked_records, 500);
    assert_eq!(tally.sent_records, 500);
    assert_eq!(tally.numbered, 500);
    let mut seqs = Vec::new();
    while let Ok(seq) = received.try_recv() {
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..500).collect::<Vec<u64>>());
    let mut acked: Vec<u64> = tally
        .acked
        .iter()
        .flat_map(|&(first, count)| first..first + u64::from(count))
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, seqs);
}

#[tokio::test]
async fn paced_client_sends_everything_once_at_its_rate() {
    let (addr, mut received) = fake_router().await;
    let tally = forward::run(ClientOptions {
        addr,
        connections: 2,
        window: 2,
        batch: 10,
        record_bytes: 100,
        duration: Duration::from_secs(30),
        max_records: 100,
        ack_timeout: Duration::from_secs(5),
        reconnect: true,
        rate: Some(5_000.0),
    })
    .await;
    assert_eq!(tally.first_error, None);
    assert_eq!(tally.acked_records, 100);
    let mut count = 0;
    while received.try_recv().is_ok() {
        count += 1;
    }
    assert_eq!(count, 100);
}

#[tokio::test]
async fn client_without_a_router_reports_the_connect_failure() {
    let port = harness::free_port(false).unwrap();
    let tally = forward::run(ClientOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        connections: 2,
        window: 1,
        batch: 1,
        record_bytes: 100,
        duration: Duration::from_secs(5),
        max_records: 10,
        ack_timeout: Duration::from_secs(1),
        reconnect: false,
        rate: None,
    })
    .await;
    assert_eq!(tally.acked_records, 0);
    assert_eq!(tally.connection_failures, 2);
    assert!(tally.first_error.unwrap().starts_with("connect:"));
}

#[test]
fn classic_configs_for_null_and_buffered_file() {
    let null = classic_config(&RouterConfig {
        forward_port: 24_300,
        http_port: 2_300,
        storage_path: None,
        output: Output::Null,
    });
    assert_eq!(
        null,
        "[SERVICE]
    Flush        1
    Log_Level    warn
    HTTP_Server  On
    HTTP_Listen  127.0.0.1
    HTTP_Port    2300

[INPUT]
    Name         forward
    Listen       127.0.0.1
    Port         24300

[OUTPUT]
    Name         null
    Match        *
"
    );
    let file = classic_config(&RouterConfig {
        forward_port: 1,
        http_port: 2,
        storage_path: Some("/b/buffer".into()),
        output: Output::File {
            dir: "/b/out".into(),
            file: "records.log".into(),
        },
    });
    for line in [
        "    storage.path /b/buffer\n",
        "    storage.type filesystem\n",
        "    Name         file\n",
        "    Path         /b/out\n",
        "    File         records.log\n",
    ] {
        assert!(file.contains(line), "{line:?} missing from\n{file}");
    }
    assert!(file.find("storage.type").unwrap() > file.find("[INPUT]").unwrap());
    assert!(file.find("storage.path").unwrap() < file.find("[INPUT]").unwrap());
    assert_eq!(
        skiff_argv(Path::new("/s"), Path::new("/c"), Path::new("/r")).join(" "),
        "/s logrouter -c /c --ready-file /r"
    );
    assert_eq!(
        fluent_bit_argv(Path::new("/fb"), Path::new("/c")).join(" "),
        "/fb -c /c"
    );
}

#[test]
fn sequence_numbers_are_found_in_out_file_and_json_lines() {
    let mut seen = Seen::new(10);
    seen.scan_line(br#"bench.app: [1700000000.123, {"bench_seq":3,"log":"x","ecs_cluster":"c"}]"#);
    seen.scan_line(br#"{"log":"bench_seq 9", "bench_seq": 4}"#);
    seen.scan_line(br#"{"bench_seq":3}{"bench_seq":12}{"bench_seq":"x"}"#);
    seen.scan_line(b"no records here\n");
    assert_eq!(seen.counts[3], 2);
    assert_eq!(seen.counts[4], 1);
    assert_eq!(
        seen.counts[9], 0,
        "a number in the log text is not a record"
    );
    assert_eq!(seen.out_of_range, 1);
}

#[test]
fn lost_duplicated_and_unacked_deliveries_are_told_apart() {
    let mut seen = Seen::new(40);
    // Acked: 0..10 and 20..30. Output: 0..9 once (9 lost), 20..30 with 25 three times,
    // 35 (never acked) once.
    for seq in (0..9).chain(20..30).chain([25, 25, 35]) {
        seen.scan_line(format!("t: [1, {{\"bench_seq\":{seq}}}]").as_bytes());
    }
    let result = verdict(&[(0, 10), (20, 10)], &seen);
    assert_eq!(result.acked, 20);
    assert_eq!(result.lost, 1);
    assert_eq!(result.duplicated, 2);
    assert_eq!(result.delivered_unacked, 1);
    assert_eq!(result.delivered, 20);
    assert_eq!(result.unknown, 0);
    let past_the_scan = verdict(&[(38, 5)], &Seen::new(40));
    assert_eq!(past_the_scan.lost, 5);
}

#[test]
fn output_directories_are_scanned_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("records.log"),
        "t: [1, {\"bench_seq\":1}]\nt: [1, {\"bench_seq\":2}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("records.log.1"),
        "t: [1, {\"bench_seq\":1}]",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut seen = Seen::new(5);
    assert_eq!(seen.scan_dir(dir.path()).unwrap(), 2);
    assert_eq!(seen.counts, vec![0, 2, 1, 0, 0]);
}

#[test]
fn markdown_compares_with_fluent_bit_and_shows_the_crash_verdict() {
    let row = |router, scenario, rate: f64, rss_kib| ThroughputRow {
        router,
        scenario,
        version: (router == Router::FluentBit).then(|| "3.1.9".to_string()),
        sent_records: 1,
        acked_records: 1,
        elapsed_secs: 1.0,
        records_per_second: Some(rate),
        records_per_cpu_second: Some(rate * 2.0),
        cpu_busy_percent: Some(50.0),
        peak_rss_kib: Some(rss_kib),
        connection_failures: 0,
        first_error: None,
        skipped: None,
    };
    let report = LogrouterBenchReport {
        batch: 1000,
        record_bytes: 200,
        connections: 4,
        window: 8,
        rows: vec![
            row(Router::Skiff, Scenario::Null, 2_000_000.0, 20 * 1024),
            row(Router::FluentBit, Scenario::Null, 1_000_000.0, 400 * 1024),
            skipped_row(
                Router::Skiff,
                Scenario::BufferedFile,
                "router exited".into(),
            ),
        ],
        crash: Some(CrashResult {
            rate: 1000.0,
            sent_records: 100,
            verdict: Verdict {
                acked: 90,
                lost: 0,
                duplicated: 7,
                delivered_unacked: 3,
                delivered: 93,
                unknown: 0,
            },
            killed_after_secs: 4.0,
            restart_ms: Some(12.0),
            drain_secs: 1.0,
            output_files: 1,
            connection_failures: 4,
            first_error: Some("read: connection reset".into()),
        }),
        ..LogrouterBenchReport::default()
    };
    let markdown = report.to_markdown();
    assert!(
        markdown.contains(
            "| records/s, acked end to end | 2000000 | 1000000 | 2.00× | ≥ 1500000 | met |"
        ),
        "{markdown}"
    );
    assert!(markdown.contains("| peak RSS (MiB) | 20.0 | 400.0 | 0.05× | ≤ 30 | met |"));
    assert!(markdown.contains("Fluent Bit 3.1.9"));
    assert!(markdown.contains("| acked records lost | 0 | 0 | met |"));
    assert!(markdown.contains("| duplicated records | 7 |"));
    assert!(markdown.contains("- skiff buffered file output: router exited"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(json["rows"][1]["router"], "fluent_bit");
    assert_eq!(json["crash"]["verdict"]["duplicated"], 7);
}
