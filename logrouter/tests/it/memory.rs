//! Memory stays bounded whatever the load: many clients sending big frames at once wait for the frame budget instead of growing the router.

use std::path::Path;

use crate::crash::spawn_router_child;
use crate::harness::*;

const CLIENTS: u64 = 64;
const FRAMES_PER_CLIENT: u64 = 2;
/// ~175-byte records: ~700 KB PackedForward frames, ~45 MB in flight if every client sent at once.
const RECORDS_PER_FRAME: u64 = 4_000;
/// The target for the router's peak RSS.
const MAX_PEAK_RSS_KIB: u64 = 30 * 1024;

/// A value in KiB from /proc/PID/status (`VmHWM`: peak RSS, `VmRSS`: current).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Complete lines written so far: cheap enough to poll on a large file.
fn line_count(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_many_clients_sending_big_frames_stay_within_the_memory_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    // the default frame budget (`frames.mem_limit`, 8 MiB) and the default Buffer_Max_Size (6 MB)
    let config = format!(
        "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[INPUT]\n    Name forward\n    Port 0\n[OUTPUT]\n    Name file\n    Match *\n    File {}\n    Format plain\n",
        out.display()
    );
    let (mut child, addr) = spawn_router_child(&config, dir.path()).await;
    let pid = child.id();
    let before = proc_status_kib(pid, "VmHWM");

    let per_client = FRAMES_PER_CLIENT * RECORDS_PER_FRAME;
    let total = CLIENTS * per_client;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS as usize));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = ForwardClient::connect(addr).unwrap();
                // every client starts its first frame together: the worst case for memory
                barrier.wait();
                let first = c * per_client;
                for start in (first..first + per_client).step_by(RECORDS_PER_FRAME as usize) {
                    client
                        .send("mem", start..start + RECORDS_PER_FRAME)
                        .unwrap();
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for c in clients {
            c.join().expect("every frame acknowledged");
        }
    })
    .await
    .unwrap();

    eventually(120, "every acknowledged record in the file output", || {
        line_count(&out) >= total
    })
    .await;
    let peak = proc_status_kib(pid, "VmHWM");
    let now = proc_status_kib(pid, "VmRSS");
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "router peak RSS {peak} KiB (at start {before} KiB, after the run {now} KiB) for {CLIENTS} clients x {FRAMES_PER_CLIENT} frames of {RECORDS_PER_FRAME} records"
    );

    let mut got = ids(&file_records(&out));
    got.dedup();
    assert_eq!(
        got,
        (0..total).collect::<Vec<_>>(),
        "every acked record delivered"
    );
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "peak RSS {peak} KiB above {MAX_PEAK_RSS_KIB} KiB"
    );
}
