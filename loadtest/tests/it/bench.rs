//! The proxy benchmark's orchestration, with rows that need no installed peer.

use std::time::Duration;

use skiff_loadtest::bench::{BenchOptions, Origin, Peer};
use skiff_loadtest::bench_proxy;

fn tiny(peers: Vec<Peer>) -> BenchOptions {
    BenchOptions {
        peers,
        origin: Origin::InProcess,
        warmup: Duration::from_millis(50),
        max_duration: Duration::from_millis(200),
        max_connections: 4,
        rate: 500.0,
        rate_duration: Duration::from_millis(200),
        rate_connections: 4,
        proxy_cpu: None,
        load_cpu: None,
        install_missing: false,
        wrk: false,
        ..BenchOptions::quick()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_row_measures_throughput_and_latency_without_errors() {
    let report = bench_proxy(tiny(vec![Peer::Direct])).await.unwrap();
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    assert_eq!(row.peer, "direct");
    assert_eq!(row.skipped, None);
    assert_eq!(row.errors, 0);
    assert!(row.max_throughput.unwrap() > 0.0);
    assert_eq!(row.latency.as_ref().unwrap().count, 100);
    let markdown = report.to_markdown();
    assert!(markdown.contains("| direct |"), "{markdown}");
    assert!(markdown.contains("Latency at 500 req/s over 4 connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_phase_runs_real_time_and_watches_for_host_stalls() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut opts = tiny(vec![Peer::Direct]);
    (opts.proxy_cpu, opts.load_cpu) = (Some(0), Some(1));
    let report = bench_proxy(opts.clone()).await.unwrap();
    let row = &report.rows[0];
    assert_eq!((row.skipped.as_deref(), row.errors), (None, 0));
    let realtime = report
        .notes
        .iter()
        .any(|n| n.contains("under SCHED_FIFO 1"));
    // CI runs as root on two cores: the phase is real-time there. Elsewhere the notes say why not.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    if root && cpus >= 2 {
        assert!(realtime, "{:?}", report.notes);
        let host = row.host.expect("host stalls watched");
        // Whatever the host did, no request of the row is worse than the run's max.
        assert!(host.max_without_stalls_us <= row.latency.as_ref().unwrap().max_us);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("in-process origin keeps its normal priority"))
        );
        assert!(report.to_markdown().contains("max, host stalls taken out"));
    } else {
        assert!(!realtime && row.host.is_none(), "{:?}", report.notes);
    }
    opts.realtime = false;
    let report = bench_proxy(opts).await.unwrap();
    assert_eq!(report.rows[0].host, None);
    assert!(
        report.notes.iter().any(|n| n.contains("--no-realtime")),
        "{:?}",
        report.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrk_drives_the_closed_loop_phase() {
    // scripts/test installs wrk (Debian `wrk`).
    let mut opts = tiny(vec![Peer::Direct]);
    opts.wrk = true;
    opts.max_duration = Duration::from_secs(1);
    let report = bench_proxy(opts).await.unwrap();
    assert!(
        report.notes.iter().any(|n| n.contains("driven by wrk")),
        "{:?}",
        report.notes
    );
    let row = &report.rows[0];
    assert_eq!((row.skipped.as_deref(), row.errors), (None, 0));
    assert!(row.max_throughput.unwrap() > 100.0, "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_exits_is_skipped_with_its_reason() {
    let mut opts = tiny(vec![Peer::Sidecar]);
    opts.sidecar_command = ["sh", "-c", "echo no such flag {listen_port} >&2; exit 3"]
        .map(String::from)
        .to_vec();
    let report = bench_proxy(opts).await.unwrap();
    let reason = report.rows[0].skipped.clone().unwrap();
    assert!(
        reason.starts_with("sidecar not available: exited with"),
        "{reason}"
    );
    assert!(reason.contains("no such flag"), "{reason}");
    assert!(
        report
            .to_markdown()
            .contains("- skiff sidecar: sidecar not available")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_cannot_start_is_skipped() {
    let mut opts = tiny(vec![Peer::Sidecar]);
    opts.sidecar_command = vec!["/nonexistent/skiff-sidecar".to_string()];
    let report = bench_proxy(opts).await.unwrap();
    let reason = report.rows[0].skipped.clone().unwrap();
    assert!(reason.starts_with("sidecar not available:"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_time_budget_are_skipped() {
    let mut opts = tiny(vec![Peer::Direct, Peer::Direct]);
    opts.budget = Duration::from_millis(1);
    let report = bench_proxy(opts).await.unwrap();
    assert!(report.rows.iter().all(|row| {
        row.skipped
            .as_deref()
            .is_some_and(|reason| reason.contains("time budget"))
    }));
}
