//! Container stdout/stderr pipes: records with `source` and ECS metadata, multiline joining, JSON lines, drop-oldest.

use std::time::Duration;

use regex::Regex;
use skiff_logrouter::{FullPolicy, LineOptions, Source};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_pipes_become_enriched_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.log");
    let router = Router::start(
        &format!(
            "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[OUTPUT]\n    Name file\n    Match app-firelens-*\n    File {}\n    Format plain\n",
            out.display()
        ),
        dir.path(),
    )
    .await;
    let opts = LineOptions {
        multiline_start: Some(Regex::new(r"^\S").unwrap()),
        multiline_flush: Duration::from_millis(100),
        parse_json: true,
        container_name: Some("app".into()),
        container_id: Some("c0ffee".into()),
        ..LineOptions::default()
    };
    let (mut w_out, r_out) = tokio::io::duplex(1024);
    let (mut w_err, r_err) = tokio::io::duplex(1024);
    let stdout = router
        .handle
        .line_input("app-firelens-1", Source::Stdout, opts.clone());
    let stderr = router
        .handle
        .line_input("app-firelens-1", Source::Stderr, opts);
    let a = tokio::spawn(stdout.feed(r_out));
    let b = tokio::spawn(stderr.feed(r_err));
    w_out
        .write_all(b"{\"level\":\"info\",\"id\":1}\nplain line\n")
        .await
        .unwrap();
    w_err
        .write_all(
            b"Exception in thread main\n  at a.b(C.java:1)\n  at d.e(F.java:2)\nnext error\n",
        )
        .await
        .unwrap();
    drop(w_out);
    drop(w_err);
    assert_eq!(a.await.unwrap().unwrap().records, 2);
    assert_eq!(b.await.unwrap().unwrap().records, 2);
    eventually(20, "four records", || file_records(&out).len() >= 4).await;
    let recs = file_records(&out);
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(r["container_name"], "app");
        assert_eq!(r["container_id"], "c0ffee");
        assert_eq!(r["ecs_cluster"], "it-cluster");
        assert_eq!(r["ecs_task_definition"], "orders:7");
    }
    let find = |src: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        recs.iter().find(|r| r["source"] == src && pred(r)).cloned()
    };
    assert!(find("stdout", &|r| r["level"] == "info" && r["id"] == 1).is_some());
    assert!(find("stdout", &|r| r["log"] == "plain line").is_some());
    assert!(
        find("stderr", &|r| r["log"]
            == "Exception in thread main\n  at a.b(C.java:1)\n  at d.e(F.java:2)")
        .is_some()
    );
    assert!(find("stderr", &|r| r["log"] == "next error").is_some());
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_what_a_full_buffer_forced_out() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::start().await;
    sink.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // a tiny disk limit and an output that never succeeds: the buffer fills and stays full
    let router = Router::start(
        &format!(
            "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n    storage.total_limit_size 64K\n    scheduler.base 0.05\n    scheduler.cap 0.1\n[OUTPUT]\n    Name http\n    Match *\n    Port {}\n    Retry_Limit no_limits\n",
            sink.addr.port()
        ),
        dir.path(),
    )
    .await;
    let opts = LineOptions {
        policy: FullPolicy::DropOldest,
        queue_bytes: 16 * 1024,
        ..LineOptions::default()
    };
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let feed = tokio::spawn(
        router
            .handle
            .line_input("noisy", Source::Stdout, opts)
            .feed(r),
    );
    let line = format!("{}\n", "z".repeat(200));
    // bounded: 2,000 lines of ~200 bytes is far more than 64 KiB of disk plus 16 KiB of queue
    for _ in 0..2000 {
        w.write_all(line.as_bytes()).await.unwrap();
    }
    eventually(20, "drops to be counted", || {
        router.counter(
            "skiff_logrouter_input_dropped_records_total",
            &[("input", "line.noisy")],
        ) > 0
    })
    .await;
    // the writer was never blocked: every line was read
    drop(w);
    sink.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let stats = tokio::time::timeout(Duration::from_secs(30), feed)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!(
        "stats {stats:?} refused {}",
        sink.refused.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(stats.records, 2000);
    assert!(stats.dropped > 0);
    assert_eq!(
        stats.dropped,
        router.counter(
            "skiff_logrouter_input_dropped_records_total",
            &[("input", "line.noisy")]
        )
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_input_takes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tcp.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let router = Router::start(
        &format!(
            "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[INPUT]\n    Name tcp\n    Port {port}\n    Tag tcp.in\n[OUTPUT]\n    Name file\n    Match tcp.*\n    File {}\n    Format plain\n",
            out.display()
        ),
        dir.path(),
    )
    .await;
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        for i in 0..100 {
            writeln!(s, "{{\"id\":{i},\"level\":\"info\"}}").unwrap();
        }
        writeln!(s, "not json").unwrap();
    })
    .await
    .unwrap();
    eventually(20, "tcp records", || file_records(&out).len() >= 101).await;
    let recs = file_records(&out);
    assert_eq!(ids(&recs), (0..100).collect::<Vec<_>>());
    assert!(recs.iter().any(|r| r["log"] == "not json"));
    assert!(recs.iter().all(|r| r["ecs_cluster"] == "it-cluster"));
    router.stop().await;
}
