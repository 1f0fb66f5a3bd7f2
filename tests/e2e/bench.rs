//! `skiff loadtest bench proxy` with the real sidecar: its rows run, and the settings file the
//! benchmark writes for the sidecars is the one they read.

use serde_json::Value;

use crate::harness::{run, stderr, stdout};

/// The JSON report of a quick proxy benchmark without HAProxy or nginx.
fn bench(extra: &[&str]) -> Value {
    let mut args = vec![
        "loadtest",
        "bench",
        "proxy",
        "--quick",
        "--no-install",
        "--own-generator",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("a JSON report")
}

fn sidecar_row(report: &Value) -> &Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["peer"] == "skiff sidecar"))
        .unwrap_or_else(|| panic!("no sidecar row in {report}"))
}

#[test]
fn the_sidecar_rows_run_with_busy_polling_set_and_a_bad_setting_is_reported() {
    // Polling for 50 µs while responses are due: every request answered.
    let report = bench(&["--peers", "sidecar", "--sidecar-busy-poll-us", "50"]);
    let row = sidecar_row(&report);
    assert!(row["skipped"].is_null(), "sidecar row skipped: {row}");
    assert_eq!(row["errors"], 0, "{row}");
    assert!(row["max_throughput"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    assert!(row["rate_cpu_us_per_request"].as_f64().is_some(), "{row}");
    // Out of range: the sidecar refuses its settings file, and the row says so.
    let report = bench(&["--peers", "sidecar", "--sidecar-busy-poll-us", "5000"]);
    let reason = sidecar_row(&report)["skipped"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("sidecar.toml: proxy.busy_poll_us: must be between 0 and 1000, found 5000"),
        "{reason}"
    );
}
