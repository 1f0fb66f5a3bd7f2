//! A full disk buffer holds Forward clients back (no ack) instead of losing records; unix socket clients work too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_withholds_acks_until_the_output_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = HttpSink::start().await;
    sink.failing.store(true, Ordering::SeqCst);
    let config = format!(
        r#"
[SERVICE]
    Flush                    0.05
    HTTP_Port                0
    storage.path             {storage}
    storage.total_limit_size 256K
    scheduler.base           0.05
    scheduler.cap            0.1
[INPUT]
    Name         forward
    Port         0
    storage.type filesystem
[OUTPUT]
    Name        http
    Match       *
    Port        {port}
    URI         /bp
    Format      json_lines
    Retry_Limit no_limits
"#,
        storage = dir.path().join("buf").display(),
        port = sink.addr.port()
    );
    let router = Router::start(&config, dir.path()).await;
    let addr = router.forward.unwrap();
    let total = 20_000u64; // ~4 MB: far more than the 256 KiB the buffer may hold
    let acked = Arc::new(AtomicU64::new(0));
    let client = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut c = ForwardClient::connect(addr).unwrap();
            for start in (0..total).step_by(100) {
                c.send("bp", start..start + 100).unwrap();
                acked.store(start + 100, Ordering::SeqCst);
            }
        })
    };
    eventually(30, "the buffer to report it is full", || {
        router.counter("skiff_logrouter_buffer_blocked_total", &[]) >= 1
    })
    .await;
    eventually(10, "output lag and buffer usage reported", || {
        router.counter("skiff_logrouter_output_lag_bytes", &[("output", "http.0")]) > 0
            && router.counter("skiff_logrouter_buffer_bytes", &[]) > 0
    })
    .await;
    // the client is held back: it cannot have had every ack while nothing left the buffer
    assert!(acked.load(Ordering::SeqCst) < total);
    assert!(sink.records("/bp").is_empty());
    sink.failing.store(false, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    eventually(60, "every record delivered", || {
        sink.records("/bp").len() as u64 >= total
    })
    .await;
    assert_eq!(ids(&sink.records("/bp")), (0..total).collect::<Vec<_>>());
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fluent.sock");
    let out = dir.path().join("unix.log");
    let config = format!(
        "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[INPUT]\n    Name forward\n    Unix_Path {}\n[OUTPUT]\n    Name file\n    Match *\n    File {}\n    Format plain\n",
        sock.display(),
        out.display()
    );
    let router = Router::start(&config, dir.path()).await;
    assert!(router.forward.is_none());
    let host = format!("unix://{}", sock.display());
    let h = host.clone();
    tokio::task::spawn_blocking(move || python_send_to("message", &h, 0, "sock", 0, 100))
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || python_send_to("compressed", &host, 0, "sock", 100, 200))
        .await
        .unwrap();
    eventually(20, "records sent over the unix socket", || {
        file_records(&out).len() >= 300
    })
    .await;
    assert_eq!(ids(&file_records(&out)), (0..300).collect::<Vec<_>>());
    router.stop().await;
    assert!(!sock.exists(), "socket file removed on shutdown");
}
