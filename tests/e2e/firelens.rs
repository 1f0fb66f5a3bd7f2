//! FireLens: an `awsfirelens` container's stdout/stderr reach its log router's outputs with
//! the task's ECS metadata, as `examples/firelens` shows.

use std::time::Duration;

use crate::harness::{eventually, example};
use crate::quickstart::{Up, get};

#[test]
fn serial_awsfirelens_logs_reach_the_output_with_ecs_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    for f in ["web.task.json", "web.service.json"] {
        let text = std::fs::read_to_string(example("firelens").join(f)).expect("read");
        let text = text.replace(
            "/tmp/skiff-firelens-demo",
            &out.path().display().to_string(),
        );
        std::fs::write(dir.path().join(f), text).expect("write");
    }
    let mut up = Up::start_dir(dir.path(), "host");
    up.wait_serving("127.0.0.1:8090");
    for _ in 0..10 {
        assert!(matches!(get("127.0.0.1:8090", "/ping"), Ok((404 | 200, _))));
    }
    // The demo app logs one JSON line per request on stdout: all of them arrive, enriched.
    let records = eventually(
        "the requests' log lines in the file output",
        Duration::from_secs(30),
        || {
            let file = std::fs::read_dir(out.path()).ok()?.next()?.ok()?.path();
            let text = std::fs::read_to_string(&file).ok()?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("\\\"path\\\":\\\"/ping\\\""))
                .map(str::to_owned)
                .collect();
            (lines.len() >= 10).then_some(lines)
        },
    );
    let line = &records[0];
    let (tag, record) = line
        .split_once(": ")
        .expect("file output format `tag: [time, record]`");
    assert!(tag.starts_with("app-firelens-"), "{line}");
    let v: serde_json::Value = serde_json::from_str(record).expect("record json");
    let r = &v[1];
    assert_eq!(r["container_name"], "app", "{line}");
    assert!(
        r["container_id"]
            .as_str()
            .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "a Docker-style container id: {line}"
    );
    assert_eq!(r["source"], "stdout", "{line}");
    assert_eq!(r["ecs_cluster"], "firelens-demo", "{line}");
    assert!(
        r["ecs_task_arn"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:ecs:")),
        "{line}"
    );
    assert_eq!(r["ecs_task_definition"], "web:1", "{line}");
    // The log router is discoverable for Prometheus, like every sidecar, and serves metrics.
    let (_, targets) = get("127.0.0.1:7070", "/v1/prometheus/targets").expect("targets");
    let targets: serde_json::Value = serde_json::from_str(&targets).expect("http_sd json");
    let router = targets
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["labels"]["component"] == "logrouter")
        .unwrap_or_else(|| panic!("no log router in {targets}"));
    let addr = router["targets"][0].as_str().expect("target address");
    let (status, metrics) = get(addr, "/metrics").expect("log router /metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("skiff_logrouter_"), "{metrics}");
    drop(up);
}
