//! Telemetry as an on-call engineer meets it: `promtool` accepts every component's `/metrics`
//! and the shipped rules, and a real Prometheus, finding the mesh through the registry's HTTP
//! service discovery, answers every panel of every dashboard in `dashboards/`.
//!
//! The quickstart uses fixed ports, so the tests that start it are `serial_`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{eventually, repo, skiff};
use crate::quickstart::{Up, get};

const FRONTEND: &str = "127.0.0.1:8080";
const REGISTRY: &str = "127.0.0.1:7070";
const SD_URL: &str = "http://127.0.0.1:7070/v1/prometheus/targets";
/// Sidecars of the quickstart: frontend ×2, orders ×3, payments ×2.
const QUICKSTART_SIDECARS: usize = 7;
/// What `$__rate_interval` stands for with the tests' 1 s scrape interval.
const RATE_INTERVAL: &str = "10s";
/// The dashboards and their uids, which links and bookmarks depend on: never change them.
const DASHBOARDS: [(&str, &str); 4] = [
    ("service-overview.json", "skiff-service-overview"),
    ("sidecar.json", "skiff-sidecar"),
    ("registry.json", "skiff-registry"),
    ("logrouter.json", "skiff-logrouter"),
];

fn dashboards_dir() -> PathBuf {
    repo().join("dashboards")
}

fn prometheus_dir() -> PathBuf {
    dashboards_dir().join("prometheus")
}

// === promtool ===

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool (Debian package `prometheus`)")
}

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_scrape_config() {
    let dir = prometheus_dir();
    for args in [
        &["check", "rules", "rules.yml"][..],
        &["test", "rules", "rules.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = promtool(args, &dir);
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert the issue asks for exists and has a unit test.
    let rules = std::fs::read_to_string(dir.join("rules.yml")).expect("rules.yml");
    let tests = std::fs::read_to_string(dir.join("rules.test.yml")).expect("rules.test.yml");
    for alert in [
        "SkiffHighErrorRatio",
        "SkiffLatencyP99OverTarget",
        "SkiffRetryBudgetExhausted",
        "SkiffEndpointsEjected",
        "SkiffRegistryUnreachable",
        "SkiffRegistryDown",
        "SkiffLogRecordsDropped",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "rules.yml has no {alert}"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "rules.test.yml does not test {alert}"
        );
    }
    let config = std::fs::read_to_string(dir.join("prometheus.yml")).expect("prometheus.yml");
    assert!(
        config.contains(SD_URL),
        "prometheus.yml must discover through {SD_URL}"
    );
}

/// `promtool check metrics` on one exposition: no problems at all.
fn assert_promtool_accepts(what: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems in the {what}'s /metrics:\n{report}"
    );
}

// === HTTP through curl (URL encoding included) ===

fn curl_json(url: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-G", url]);
    for (k, v) in params {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.output().map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn metrics_of(addr: &str) -> String {
    let (status, body) =
        get(addr, "/metrics").unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(status, 200, "GET {addr}/metrics");
    body
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn stop(child: &mut Child, what: &str) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().ok().flatten().is_none() {
        eprintln!("{what} did not stop after SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

// === a real Prometheus server ===

/// `prometheus` (Debian package) on loopback with a temporary data dir; killed by PID on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready = format!("127.0.0.1:{port}");
        eventually("prometheus to be ready", Duration::from_secs(60), || {
            if let Some(status) = p.child.try_wait().ok().flatten() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            matches!(get(&ready, "/-/ready"), Ok((200, _))).then_some(())
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        curl_json(&format!("{}{path}", self.url), params)
    }

    /// An instant query: `Ok(result)` or the error Prometheus gave (a parse error, say).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.api("/api/v1/query", &[("query", expr)])?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>, String> {
        let v = self.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", selector)],
        )?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child, "prometheus");
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of prometheus's log ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

// === a standalone log router ===

/// `skiff logrouter` with a Forward input and a file output; stopped by PID on drop.
struct LogRouter {
    child: Child,
    forward_addr: String,
    metrics_addr: String,
    _dir: tempfile::TempDir,
}

impl LogRouter {
    fn start() -> LogRouter {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("fluent-bit.conf");
        let ready = dir.path().join("ready.json");
        std::fs::write(
            &conf,
            format!(
                "[SERVICE]\n    Flush 0.05\n    HTTP_Port 0\n[INPUT]\n    Name forward\n    Port 0\n\
                 [OUTPUT]\n    Name file\n    Match *\n    File {}\n    Format plain\n",
                dir.path().join("out.log").display()
            ),
        )
        .expect("write config");
        let mut child = skiff()
            .args(["logrouter", "-c"])
            .arg(&conf)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start skiff logrouter");
        let v: Value = eventually(
            "the log router's ready file",
            Duration::from_secs(30),
            || {
                if let Some(status) = child.try_wait().ok().flatten() {
                    panic!("skiff logrouter exited: {status}");
                }
                serde_json::from_slice(&std::fs::read(&ready).ok()?).ok()
            },
        );
        LogRouter {
            child,
            forward_addr: v["forward_addr"].as_str().expect("forward_addr").to_owned(),
            metrics_addr: v["metrics_addr"].as_str().expect("metrics_addr").to_owned(),
            _dir: dir,
        }
    }

    /// Sends `n` Forward-protocol messages (`[tag, time, {"log": line}]`, message mode).
    fn send(&self, n: usize) {
        let mut s = TcpStream::connect(&self.forward_addr).expect("connect to the log router");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as u32;
        for i in 0..n {
            let line = format!("request {i} served");
            let mut msg = vec![0x93];
            fixstr(&mut msg, "app.telemetry");
            msg.push(0xce);
            msg.extend_from_slice(&now.to_be_bytes());
            msg.push(0x81);
            fixstr(&mut msg, "log");
            fixstr(&mut msg, &line);
            s.write_all(&msg).expect("send a record");
        }
    }

    fn records_out(&self) -> u64 {
        metrics_of(&self.metrics_addr)
            .lines()
            .filter(|l| l.starts_with("skiff_logrouter_output_records_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

fn fixstr(buf: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32, "fixstr only");
    buf.push(0xa0 | s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
}

impl Drop for LogRouter {
    fn drop(&mut self) {
        stop(&mut self.child, "skiff logrouter");
    }
}

// === the mesh under load ===

/// GETs through the frontend on a background thread until stopped (bounded in count).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            for _ in 0..50_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((200, _)) = get(FRONTEND, "/") {
                    o.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Load {
            stop,
            ok,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_mesh() -> Up {
    let up = Up::start("host");
    eventually(
        "the frontend to answer 200 through the mesh",
        Duration::from_secs(90),
        || matches!(get(FRONTEND, "/"), Ok((200, _))).then_some(()),
    );
    up
}

/// The sidecars' admin addresses, as the registry's HTTP service discovery lists them.
fn discovered_sidecars(want: usize) -> Vec<String> {
    eventually(
        "every quickstart sidecar in the registry's Prometheus targets",
        Duration::from_secs(60),
        || {
            let (status, body) = get(REGISTRY, "/v1/prometheus/targets").ok()?;
            let groups: Vec<Value> = serde_json::from_str(&body).ok()?;
            let sidecars: BTreeSet<String> = groups
                .iter()
                .filter(|g| g["labels"]["component"] == "sidecar")
                .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            (status == 200 && sidecars.len() >= want).then(|| sidecars.into_iter().collect())
        },
    )
}

#[test]
fn serial_promtool_check_metrics_accepts_every_component() {
    let _up = start_mesh();
    for _ in 0..50 {
        assert!(matches!(get(FRONTEND, "/"), Ok((200, _))));
    }
    let router = LogRouter::start();
    router.send(10);
    eventually("the log router to deliver", Duration::from_secs(30), || {
        (router.records_out() >= 10).then_some(())
    });

    let registry = metrics_of(REGISTRY);
    assert_promtool_accepts("registry", &registry);
    for family in [
        "skiff_registry_api_requests_total",
        "skiff_registry_instances",
        "skiff_registry_health_transitions_total",
        "skiff_registry_dns_queries_total",
        "skiff_registry_watchers",
        "skiff_registry_build_info",
    ] {
        assert!(
            registry.contains(&format!("# TYPE {family} ")),
            "registry lacks {family}"
        );
    }

    let sidecars = discovered_sidecars(QUICKSTART_SIDECARS);
    let mut served = 0;
    let mut polls = 0.0;
    for addr in &sidecars {
        let text = metrics_of(addr);
        assert_promtool_accepts(&format!("sidecar {addr}"), &text);
        for family in [
            "skiff_proxy_inbound_requests_total",
            "skiff_proxy_requests_total",
            "skiff_proxy_target_response_time_seconds",
            "skiff_proxy_new_connections_total",
            "skiff_proxy_active_connections",
            "skiff_proxy_processed_bytes_total",
            "skiff_proxy_target_processed_bytes_total",
            "skiff_proxy_client_tls_negotiation_errors_total",
            "skiff_proxy_target_tls_negotiation_errors_total",
            "skiff_proxy_retries_total",
            "skiff_proxy_retry_budget_exhausted_total",
            "skiff_proxy_outlier_ejections_total",
            "skiff_proxy_outlier_ejected_endpoints",
            "skiff_proxy_target_endpoints",
            "skiff_proxy_failed_requests_total",
            "skiff_proxy_discovery_stale",
            "skiff_proxy_discovery_last_update_timestamp_seconds",
            "skiff_proxy_build_info",
            "skiff_proxy_busy_polls_total",
            "skiff_proxy_busy_poll_seconds_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "sidecar {addr} lacks {family}"
            );
        }
        // The frontend's sidecar waited for the backend's answers: it polled before sleeping.
        polls += text
            .lines()
            .filter(|l| l.starts_with("skiff_proxy_busy_polls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if text.contains("skiff_proxy_inbound_requests_total{cluster_name=\"quickstart\",discovery_name=\"frontend\",service_name=\"frontend\",status_class=\"2xx\"}") {
            served += 1;
        }
    }
    assert!(
        served >= 1,
        "no frontend sidecar counted its inbound 2xx requests"
    );
    assert!(polls > 0.0, "no sidecar polled while awaiting a response");

    let logrouter = metrics_of(&router.metrics_addr);
    assert_promtool_accepts("log router", &logrouter);
    assert!(logrouter.contains("skiff_logrouter_input_records_total{input=\"forward.0\"} 10"));
}

// === dashboards ===

fn load_dashboards() -> Vec<(String, Value)> {
    DASHBOARDS
        .iter()
        .map(|(file, _)| {
            let text = std::fs::read_to_string(dashboards_dir().join(file))
                .unwrap_or_else(|e| panic!("dashboards/{file}: {e}"));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("dashboards/{file} is not JSON: {e}"));
            ((*file).to_owned(), v)
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(title, expr)` of every target of every panel.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        title.clone(),
                        t["expr"].as_str().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect()
}

/// `(name, label, selector)` of each `label_values(selector, label)` query variable, in order.
fn query_variables(dashboard: &Value) -> Vec<(String, String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().expect("variable name").to_owned();
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .expect("variable query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {q}"));
            let (selector, label) = inner
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("variable {name}: label_values needs a label: {q}"));
            (name, label.trim().to_owned(), selector.trim().to_owned())
        })
        .collect()
}

/// Replaces `$name` / `${name}` of every variable and Grafana's `$__rate_interval`.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut e = expr.replace("$__rate_interval", RATE_INTERVAL);
    // Longest names first, so `$service` does not eat into `$service_x`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        e = e
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    assert!(!e.contains('$'), "unsubstituted variable left in {e}");
    e
}

#[test]
fn dashboards_are_grafana_json_with_stable_uids_datasource_variable_and_valid_queries() {
    let dashboards = load_dashboards();
    let mut uids = BTreeSet::new();
    for ((file, d), (_, uid)) in dashboards.iter().zip(DASHBOARDS) {
        assert_eq!(d["uid"], uid, "{file}: the uid is part of the contract");
        assert!(uids.insert(uid), "{file}: duplicate uid {uid}");
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: needs a `datasource` variable of type datasource"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{file}: variable {}",
                v["name"]
            );
        }
        let mut ids = BTreeSet::new();
        let all = panels(d);
        assert!(all.len() >= 5, "{file}: too few panels");
        for p in all {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{file}: duplicate panel id"
            );
            if p["type"] == "row" {
                continue;
            }
            let title = &p["title"];
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: panel {title}"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: panel {title} has no query");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{file}: panel {title}"
                );
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{file}: panel {title} has an empty expr");
                if expr.contains("rate(") || expr.contains("increase(") {
                    assert!(
                        expr.contains("[$__rate_interval]"),
                        "{file}: panel {title}: use $__rate_interval: {expr}"
                    );
                }
            }
        }
    }
    // Every expression and variable query parses: Prometheus's own parser says so.
    let prom = Prometheus::start("global:\n  scrape_interval: 15s\nscrape_configs: []\n");
    let mut problems = Vec::new();
    for (file, d) in &dashboards {
        let mut vars = BTreeMap::new();
        for (name, label, selector) in query_variables(d) {
            let sel = substitute(&selector, &vars);
            if let Err(e) = prom.label_values(&label, &sel) {
                problems.push(format!("{file}: variable {name}: {sel}: {e}"));
            }
            vars.insert(name, "x".to_owned());
        }
        for (title, expr) in exprs(d) {
            let e = substitute(&expr, &vars);
            if let Err(err) = prom.query(&e) {
                problems.push(format!("{file}: panel {title:?}: {e}: {err}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries Prometheus rejects:\n{}",
        problems.join("\n")
    );
}

/// Which value of a variable the big test looks at: one with traffic under the quickstart.
fn preferred(uid: &str, var: &str) -> Option<&'static str> {
    match (uid, var) {
        (_, "namespace") => Some("prod.internal"),
        ("skiff-service-overview", "service") => Some("orders"),
        ("skiff-service-overview", "caller") => Some("frontend"),
        ("skiff-sidecar", "service") => Some("frontend"),
        ("skiff-registry", "service") => Some("orders"),
        _ => None,
    }
}

#[test]
fn serial_every_dashboard_panel_returns_data_from_a_real_prometheus_scraping_the_mesh() {
    let _up = start_mesh();
    let load = Load::start();
    let router = LogRouter::start();
    router.send(20);
    let sidecars = discovered_sidecars(QUICKSTART_SIDECARS);
    let expected_targets = sidecars.len() + 2; // + the registry + the log router

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: skiff\n    http_sd_configs:\n      - url: {SD_URL}\n        refresh_interval: 1s\n\
         \x20 - job_name: skiff-logrouter\n    static_configs:\n      - targets: [\"{lr}\"]\n        labels:\n          component: logrouter\n",
        rules = prometheus_dir().join("rules.yml").display(),
        lr = router.metrics_addr,
    );
    let prom = Prometheus::start(&config);

    // Every target discovered and scraped.
    eventually(
        "prometheus to scrape every sidecar, the registry and the log router",
        Duration::from_secs(90),
        || {
            let v = prom.api("/api/v1/targets", &[("state", "active")]).ok()?;
            let targets = v["data"]["activeTargets"].as_array()?;
            let up = targets.iter().filter(|t| t["health"] == "up").count();
            (targets.len() >= expected_targets && up == targets.len()).then_some(())
        },
    );
    let jobs: BTreeSet<String> = prom
        .query("count by (job) (up)")
        .expect("query")
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str().map(str::to_owned))
        .collect();
    for job in ["skiff-sidecar", "skiff-registry", "skiff-logrouter"] {
        assert!(jobs.contains(job), "no {job} targets scraped: {jobs:?}");
    }
    // Traffic is visible as a rate before panels are judged.
    eventually(
        "a non-zero request rate to orders",
        Duration::from_secs(60),
        || {
            let r = prom
            .query(&format!(
                "sum(rate(skiff_proxy_requests_total{{target_discovery_name=\"orders\",status_class=\"2xx\"}}[{RATE_INTERVAL}])) > 0"
            ))
            .ok()?;
            (!r.is_empty()).then_some(())
        },
    );
    router.send(20);

    let mut problems = Vec::new();
    let mut evaluated = 0;
    for (file, d) in load_dashboards() {
        let uid = d["uid"].as_str().unwrap_or_default().to_owned();
        let mut vars = BTreeMap::new();
        for (name, label, selector) in query_variables(&d) {
            let sel = substitute(&selector, &vars);
            let values = prom.label_values(&label, &sel).expect("label values");
            assert!(
                !values.is_empty(),
                "{file}: variable {name} has no values ({sel})"
            );
            let pick = preferred(&uid, &name)
                .filter(|p| values.iter().any(|v| v == p))
                .map(str::to_owned)
                .unwrap_or_else(|| values[0].clone());
            vars.insert(name, pick);
        }
        for (title, expr) in exprs(&d) {
            let e = substitute(&expr, &vars);
            evaluated += 1;
            let deadline = Instant::now() + Duration::from_secs(20);
            let outcome = loop {
                match prom.query(&e) {
                    Ok(r) if !r.is_empty() => break Ok(()),
                    Ok(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Ok(_) => break Err("no data".to_owned()),
                    Err(err) => break Err(err),
                }
            };
            if let Err(why) = outcome {
                problems.push(format!("{file}: panel {title:?} ({why}): {e}"));
            }
        }
    }
    let served = load.ok.load(Ordering::Relaxed);
    drop(load);
    assert!(served > 0, "the load saw no 200 through the frontend");
    assert!(evaluated >= 60, "only {evaluated} panel queries found");
    assert!(
        problems.is_empty(),
        "{} of {evaluated} panel queries return nothing:\n{}\nvariables picked from Prometheus",
        problems.len(),
        problems.join("\n")
    );
    // The recording rules ran against real data too.
    eventually(
        "the recording rule skiff:target_requests:rate5m to have data",
        Duration::from_secs(30),
        || {
            let r = prom
                .query("skiff:target_requests:rate5m{target_discovery_name=\"orders\"} > 0")
                .ok()?;
            (!r.is_empty()).then_some(())
        },
    );
}
