//! `skiff up examples/quickstart`: the whole system, as the README's first command runs it.
//!
//! The quickstart uses fixed ports (registry 7070/8600, frontend published on 8080), so these
//! tests are `serial_`: nextest runs them alone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{eventually, example, skiff};

const FRONTEND: &str = "127.0.0.1:8080";
const REGISTRY: &str = "http://127.0.0.1:7070";

/// A running `skiff up`, stopped with SIGINT (Ctrl-C) when dropped.
pub struct Up {
    child: Child,
    pub state_dir: tempfile::TempDir,
}

impl Up {
    pub fn start(mode: &str) -> Up {
        Up::start_dir(&example("quickstart"), mode)
    }

    pub fn start_dir(dir: &std::path::Path, mode: &str) -> Up {
        let state_dir = tempfile::tempdir().expect("tempdir");
        let child = skiff()
            .args(["up"])
            .arg(dir)
            .args([
                "--network-mode",
                mode,
                "--drain-seconds",
                "1",
                "--state-dir",
            ])
            .arg(state_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start skiff up");
        Up { child, state_dir }
    }

    pub fn ps(&self) -> String {
        let out = skiff()
            .args(["ps", "--state-dir"])
            .arg(self.state_dir.path())
            .output()
            .expect("skiff ps");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `addr` until it answers 200; fails at once (with the log) if `skiff up` exits.
    pub fn wait_serving(&mut self, addr: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if matches!(get(addr, "/"), Ok((200, _))) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("skiff up exited with {status} before {addr} answered");
            }
            assert!(
                Instant::now() < deadline,
                "{addr} did not answer 200 within 90 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: what a crash of the runner looks like.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ctrl-C, then wait for a clean exit.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        eventually(
            "skiff up to exit after SIGINT",
            Duration::from_secs(60),
            || self.child.try_wait().ok().flatten(),
        )
    }
}

/// Where each thread of a hung process is: its state and kernel wait channel from /proc, and
/// every thread's backtrace when gdb is installed (bounded by `timeout`).
fn dump_threads(pid: u32) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            eprintln!(
                "thread {} {}: state {state}, wchan {}",
                task.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim()
            );
        }
    }
    let _ = Command::new("timeout")
        .args([
            "20",
            "gdb",
            "-batch",
            "-p",
            &pid.to_string(),
            "-ex",
            "thread apply all bt",
        ])
        .status();
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                eprintln!("skiff up did not stop after SIGINT; its threads, then killing it");
                dump_threads(self.child.id());
                let _ = self.child.kill();
            }
        }
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.state_dir.path().join("up.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of skiff up's output ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// One HTTP/1.1 GET with a fresh connection; the status and body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn healthy_instances(service: &str) -> usize {
    healthy_instance_ids(service).len()
}

/// Instance ids `aws servicediscovery discover-instances` returns as HEALTHY.
pub fn healthy_instance_ids(service: &str) -> Vec<String> {
    healthy_instances_json(service)
        .into_iter()
        .filter_map(|i| i["InstanceId"].as_str().map(str::to_owned))
        .collect()
}

/// The HEALTHY instances `aws servicediscovery discover-instances` returns, as JSON.
pub fn healthy_instances_json(service: &str) -> Vec<serde_json::Value> {
    let out = Command::new("aws")
        .args([
            "servicediscovery",
            "discover-instances",
            "--endpoint-url",
            REGISTRY,
            "--region",
            "us-east-1",
            "--namespace-name",
            "prod.internal",
            "--service-name",
            service,
            "--health-status",
            "HEALTHY",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
        .output()
        .expect("aws cli");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["Instances"].as_array().cloned().unwrap_or_default()
}

fn quickstart_end_to_end(mode: &str) {
    let mut up = Up::start(mode);
    up.wait_serving(FRONTEND);

    // 200 requests through the frontend, which calls `orders` by its alias: all succeed, and
    // the answers name the orders tasks that served them.
    let mut orders_tasks = std::collections::BTreeSet::new();
    for i in 0..200 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("http://{FRONTEND}/")])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "request {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("frontend answers JSON");
        assert_eq!(body["service"], "frontend");
        let call = &body["calls"][0];
        assert_eq!(
            call["service"], "orders",
            "frontend did not reach orders: {body}"
        );
        if let Some(task) = call["task"].as_str() {
            orders_tasks.insert(task.to_owned());
        }
    }
    assert!(
        orders_tasks.len() >= 2,
        "balancing used only {orders_tasks:?}"
    );

    // The registry shows every task healthy, over the Cloud Map API and DNS.
    eventually(
        "3 healthy orders instances",
        Duration::from_secs(30),
        || (healthy_instances("orders") == 3).then_some(()),
    );
    eventually(
        "2 healthy frontend instances",
        Duration::from_secs(30),
        || (healthy_instances("frontend") == 2).then_some(()),
    );
    // Each task is registered with ECS's attributes, as Service Connect registers it.
    for i in healthy_instances_json("orders") {
        let a = &i["Attributes"];
        assert_eq!(a["ECS_CLUSTER_NAME"], "quickstart", "{i}");
        assert_eq!(a["ECS_SERVICE_NAME"], "orders", "{i}");
        assert_eq!(a["ECS_TASK_DEFINITION_FAMILY"], "orders", "{i}");
        let arn = a["ECS_TASK_ARN"].as_str().unwrap_or_default();
        assert!(
            arn.starts_with("arn:aws:ecs:")
                && arn.ends_with(i["InstanceId"].as_str().unwrap_or("?")),
            "{i}"
        );
        assert!(
            a["AVAILABILITY_ZONE"]
                .as_str()
                .is_some_and(|z| !z.is_empty()),
            "{i}"
        );
        assert!(
            a["AWS_INSTANCE_IPV4"].as_str().is_some() && a["AWS_INSTANCE_PORT"].as_str().is_some(),
            "{i}"
        );
    }
    let dig = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            "8600",
            "+short",
            "orders.prod.internal",
            "A",
        ])
        .output()
        .expect("dig");
    let answers = String::from_utf8_lossy(&dig.stdout).lines().count();
    assert_eq!(
        answers,
        3,
        "dig orders.prod.internal: {}",
        String::from_utf8_lossy(&dig.stdout)
    );

    let ps = up.ps();
    assert_eq!(
        ps.lines().filter(|l| l.starts_with("orders")).count(),
        3,
        "{ps}"
    );
    assert_eq!(
        ps.lines().filter(|l| l.starts_with("frontend")).count(),
        2,
        "{ps}"
    );

    // Every process of every task, to check that Ctrl-C leaves none behind.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(up.state_dir.path().join("state.json")).expect("state"),
    )
    .expect("state json");
    let mut pids = Vec::new();
    for svc in state["services"].as_array().into_iter().flatten() {
        for t in svc["tasks"].as_array().into_iter().flatten() {
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
    assert!(
        pids.len() >= 14,
        "7 tasks, each a sidecar and an app: {pids:?}"
    );

    let started = Instant::now();
    let status = up.interrupt();
    assert!(
        status.success(),
        "skiff up exited with {status} after Ctrl-C"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        get(FRONTEND, "/").is_err(),
        "the published port is still served after exit"
    );
}

#[test]
fn serial_quickstart_host_mode() {
    quickstart_end_to_end("host");
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

fn leftover_network() -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    left.extend(
        String::from_utf8_lossy(&ns.stdout)
            .lines()
            .filter(|l| l.starts_with("skiff-"))
            .map(str::to_owned),
    );
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    left.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.contains(": skbr") || l.contains(": skv"))
            .map(str::to_owned),
    );
    left
}

/// awsvpc: each task in its own network namespace; Ctrl-C leaves no namespace, veth or bridge.
/// Needs root, as network namespaces do (CI runs as root).
#[test]
fn serial_quickstart_awsvpc_mode() {
    if !is_root() {
        eprintln!("skipped: awsvpc mode needs root");
        return;
    }
    // The kernel removes a deleted namespace's veth a moment later: poll, with a deadline.
    let gone = || leftover_network().is_empty().then_some(());
    eventually(
        "no skiff namespace, veth or bridge before the test",
        Duration::from_secs(10),
        gone,
    );
    quickstart_end_to_end("awsvpc");
    eventually(
        "no skiff namespace, veth or bridge left after Ctrl-C",
        Duration::from_secs(10),
        gone,
    );
}

/// Inside an awsvpc task, the alias resolves through /etc/hosts to a VIP on the task's own
/// loopback, as ECS's /etc/hosts entries do, with no HTTP_PROXY involved.
#[test]
fn serial_awsvpc_alias_resolves_through_etc_hosts() {
    if !is_root() {
        eprintln!("skipped: awsvpc mode needs root");
        return;
    }
    let mut up = Up::start("awsvpc");
    up.wait_serving(FRONTEND);
    let ns = eventually("a task namespace", Duration::from_secs(10), || {
        let out = Command::new("ip").args(["netns", "list"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("skiff-"))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
    });
    let out = eventually(
        "curl http://orders:8080/ inside a task",
        Duration::from_secs(20),
        || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    "--noproxy",
                    "*",
                    "http://orders:8080/",
                ])
                .output()
                .ok()?;
            out.status.success().then_some(out)
        },
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["service"], "orders");
    drop(up);
}
