//! The runner under failure: a killed app under load, and stacks that cannot run.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{eventually, example, skiff};
use crate::quickstart::{Up, get};

const FRONTEND: &str = "127.0.0.1:8080";

fn state(up: &Up) -> serde_json::Value {
    let bytes = std::fs::read(up.state_dir.path().join("state.json")).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

fn tasks_of<'a>(state: &'a serde_json::Value, service: &str) -> Vec<&'a serde_json::Value> {
    state["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["tasks"].as_array().into_iter().flatten())
        .collect()
}

fn running_ids(state: &serde_json::Value, service: &str) -> Vec<String> {
    tasks_of(state, service)
        .into_iter()
        .filter(|t| t["status"]["status"] == "RUNNING")
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect()
}

/// Steady idempotent load through the published port, on a thread, until `finish`.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<(usize, Option<String>)>,
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut failed = 0;
            let mut first = None;
            // Bounded: at most 3,000 requests (about a minute), however the test goes.
            while !s.load(Ordering::Relaxed) && n.load(Ordering::Relaxed) < 3000 {
                n.fetch_add(1, Ordering::Relaxed);
                match get(FRONTEND, "/") {
                    Ok((200, _)) => {}
                    other => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20)); // the load's pace, ~50 req/s
            }
            (failed, first)
        });
        Load { stop, sent, thread }
    }

    /// Waits until `n` more requests have been sent (the load is flowing).
    fn wait_more(&self, n: usize) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        eventually(
            "the load to send more requests",
            Duration::from_secs(60),
            || (self.sent.load(Ordering::Relaxed) >= target).then_some(()),
        );
    }

    /// Stops the load: (sent, failed, first failure).
    fn finish(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (failed, first) = self.thread.join().expect("load thread");
        (self.sent.load(Ordering::Relaxed), failed, first)
    }
}

/// SIGKILL one `orders` app under steady load: no client request fails, the task is replaced
/// and the registry shows the replacement.
#[test]
fn serial_killed_app_is_replaced_without_client_failures() {
    let mut up = Up::start("host");
    up.wait_serving(FRONTEND);
    eventually("3 running orders tasks", Duration::from_secs(30), || {
        (running_ids(&state(&up), "orders").len() == 3).then_some(())
    });
    let before = state(&up);
    let victim = tasks_of(&before, "orders")[0].clone();
    let victim_id = victim["id"].as_str().expect("task id").to_owned();
    let pid = victim["containers"][0]["pid"].as_u64().expect("app pid");

    let load = Load::start();
    load.wait_more(20);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    // The dead task goes away and a new one takes its place.
    eventually("a replacement orders task", Duration::from_secs(30), || {
        let s = state(&up);
        let ids = running_ids(&s, "orders");
        (ids.len() == 3 && !ids.contains(&victim_id)).then_some(())
    });
    load.wait_more(40); // keep load flowing over the replacement
    let (sent, failed, first) = load.finish();
    assert!(sent > 50, "too little load to mean anything: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed; first: {first:?}"
    );
    // The registry shows the replacement and no longer the killed task.
    eventually(
        "the registry to show 3 healthy orders without the killed task",
        Duration::from_secs(30),
        || {
            let ids = crate::quickstart::healthy_instance_ids("orders");
            (ids.len() == 3 && !ids.contains(&victim_id)).then_some(())
        },
    );
    let ps = up.ps();
    assert!(ps.contains("Essential container in task exited"), "{ps}");
}

/// A stack with an error is refused before anything starts.
#[test]
fn stack_with_unknown_port_name_is_refused_before_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["orders.task.json", "orders.service.json"] {
        let text = std::fs::read_to_string(example("quickstart").join(f)).expect("read");
        let text = text.replace("\"portName\": \"http\"", "\"portName\": \"web\"");
        std::fs::write(dir.path().join(f), text).expect("write");
    }
    let out = skiff()
        .args(["up"])
        .arg(dir.path())
        .args(["--registry", "http://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .expect("skiff up");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("orders.service.json:") && err.contains("portName"),
        "{err}"
    );
    assert!(err.contains("nothing started"), "{err}");
}

/// A container whose command does not exist is reported per task with the reason, and the
/// service backs off instead of restarting in a storm.
#[test]
fn serial_missing_command_is_reported_without_a_restart_storm() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["orders.task.json", "orders.service.json"] {
        let text = std::fs::read_to_string(example("quickstart").join(f)).expect("read");
        let text = text.replace(
            "\"entryPoint\": [\"skiff\"]",
            "\"entryPoint\": [\"/nonexistent/orders-server\"]",
        );
        std::fs::write(dir.path().join(f), text).expect("write");
    }
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut child = skiff()
        .args(["up"])
        .arg(dir.path())
        .args(["--drain-seconds", "0", "--state-dir"])
        .arg(state_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff up");
    let ps = || {
        let out = skiff()
            .args(["ps", "--state-dir"])
            .arg(state_dir.path())
            .output()
            .expect("skiff ps");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = eventually(
        "the failure to be reported",
        Duration::from_secs(30),
        || {
            let p = ps();
            p.contains("CannotStartContainerError").then_some(p)
        },
    );
    assert!(first.contains("/nonexistent/orders-server"), "{first}");
    // Three tasks failing at once, then back-off (1 s, 2 s, 4 s...): a few seconds later the
    // stop events number far fewer than a tight loop would make.
    std::thread::sleep(Duration::from_secs(3));
    let events = ps().matches("CannotStartContainerError").count();
    assert!(
        events <= 10,
        "restart storm: {events} failures in ~3 s:\n{}",
        ps()
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = eventually("skiff up to exit", Duration::from_secs(30), || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success());
}

/// A changed task definition rolls onto new tasks under load with no client failure
/// (minimumHealthyPercent 100, maximumPercent 200: new tasks start before old ones drain).
#[test]
fn serial_rolling_update_under_load_has_no_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(example("quickstart")).expect("quickstart") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    let mut up = Up::start_dir(dir.path(), "host");
    up.wait_serving(FRONTEND);
    let old = eventually("3 running orders tasks", Duration::from_secs(30), || {
        let ids = running_ids(&state(&up), "orders");
        (ids.len() == 3).then_some(ids)
    });

    let load = Load::start();
    load.wait_more(20);
    // A new revision of orders: one more environment variable.
    let task = dir.path().join("orders.task.json");
    let text = std::fs::read_to_string(&task).expect("read");
    let text = text.replacen("\"essential\": true,", "\"essential\": true,\n      \"environment\": [{ \"name\": \"ORDERS_VERSION\", \"value\": \"2\" }],", 1);
    std::fs::write(&task, text).expect("write");
    let deploy = skiff()
        .args(["deploy", "--state-dir"])
        .arg(up.state_dir.path())
        .output()
        .expect("skiff deploy");
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );

    eventually(
        "every orders task replaced",
        Duration::from_secs(60),
        || {
            let s = state(&up);
            let ids = running_ids(&s, "orders");
            let all_tasks = tasks_of(&s, "orders").len();
            (ids.len() == 3 && all_tasks == 3 && ids.iter().all(|i| !old.contains(i))).then_some(())
        },
    );
    load.wait_more(20);
    let (sent, failed, first) = load.finish();
    assert!(sent > 50, "too little load to mean anything: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed; first: {first:?}"
    );
    assert!(up.ps().contains("has started a deployment"), "{}", up.ps());
}

/// `kill -9` of `skiff up` itself leaves no task process behind (they die with the runner).
#[test]
fn serial_killed_runner_leaves_no_task_process() {
    let mut up = Up::start("host");
    up.wait_serving(FRONTEND);
    let s = eventually(
        "every task with its processes",
        Duration::from_secs(30),
        || {
            let s = state(&up);
            (running_ids(&s, "orders").len() == 3).then_some(s)
        },
    );
    let mut pids = Vec::new();
    for svc in ["frontend", "orders", "payments"] {
        for t in tasks_of(&s, svc) {
            pids.extend(t["sidecar_pid"].as_u64());
            pids.extend(
                t["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["pid"].as_u64()),
            );
        }
    }
    assert!(pids.len() >= 10, "{pids:?}");
    up.kill9();
    eventually(
        "every task process to be gone",
        Duration::from_secs(10),
        || {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                .then_some(())
        },
    );
}
