//! Test harness: an in-process router, an HTTP sink that can be told to fail, Forward clients and polling helpers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use skiff_logrouter::{EcsMetadata, LogRouter, LogRouterConfig, LogRouterHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Polls `cond` until it holds or `secs` pass (then panics with `what`).
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn metadata() -> EcsMetadata {
    EcsMetadata {
        cluster: Some("it-cluster".into()),
        task_arn: Some("arn:aws:ecs:us-east-1:123456789012:task/it-cluster/abc".into()),
        task_definition: Some("orders:7".into()),
        container_name: None,
        container_id: None,
    }
}

/// A router running in this process.
pub struct Router {
    pub forward: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub handle: LogRouterHandle,
    pub registry: prometheus::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Router {
    pub async fn start(config: &str, dir: &Path) -> Router {
        let path = dir.join(format!("fluent-bit-{}.conf", rand_suffix()));
        std::fs::write(&path, config).unwrap();
        let cfg = LogRouterConfig::load(&path).unwrap();
        let registry = prometheus::Registry::new();
        let router = LogRouter::start(cfg, metadata(), &registry).await.unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let forward = router.forward_addr();
        let metrics = router.metrics_addr();
        let handle = router.handle();
        let task = tokio::spawn(async move {
            router
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Router {
            forward,
            metrics,
            handle,
            registry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// Sum of a counter family's samples whose labels include all of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        counter(&self.registry, name, labels)
    }
}

pub fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut total = 0u64;
    for f in registry.gather().iter().filter(|f| f.name() == name) {
        let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in f.get_metric() {
            let all = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if all {
                total += if counter {
                    m.get_counter().get_value() as u64
                } else {
                    m.get_gauge().get_value() as u64
                };
            }
        }
    }
    total
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One request the HTTP sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP server that stores request bodies (gunzipped) and answers 503 while told to fail.
#[derive(Clone)]
pub struct HttpSink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub failing: Arc<AtomicBool>,
    pub refused: Arc<AtomicU64>,
}

impl HttpSink {
    pub async fn start() -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = HttpSink {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            failing: Arc::default(),
            refused: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        sink
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
        let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            body
        };
        self.received.lock().unwrap().push(Received {
            path,
            headers,
            body,
        });
        resp
    }

    /// Every JSON record received on `path` (JSON lines or arrays).
    pub fn records(&self, path: &str) -> Vec<serde_json::Value> {
        let got = self.received.lock().unwrap();
        let mut out = Vec::new();
        for r in got.iter().filter(|r| r.path == path) {
            if r.body.first() == Some(&b'[') {
                let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
                out.extend(v);
            } else {
                for line in r.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    out.push(serde_json::from_slice(line).unwrap());
                }
            }
        }
        out
    }
}

/// JSON records of a file written with `Format plain`.
pub fn file_records(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // only complete lines: the output may be writing the next one
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs the Python sender (`fluent-logger` + `msgpack`), panicking with its output on failure.
pub fn python_send(mode: &str, addr: SocketAddr, tag: &str, start: u64, count: u64) {
    python_send_to(mode, &addr.ip().to_string(), addr.port(), tag, start, count);
}

/// Like `python_send`, to `host` (`unix:///path` for a unix socket) and `port`.
pub fn python_send_to(mode: &str, host: &str, port: u16, tag: &str, start: u64, count: u64) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fluent_send.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([
            mode,
            host,
            &port.to_string(),
            tag,
            &start.to_string(),
            &count.to_string(),
        ])
        .output()
        .expect(
            "python3 must be installed (with fluent-logger and msgpack: pip install fluent-logger)",
        );
    assert!(
        out.status.success(),
        "python sender ({mode}) failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ids of records (field `id`), sorted, with duplicates kept.
pub fn ids(records: &[serde_json::Value]) -> Vec<u64> {
    let mut v: Vec<u64> = records.iter().filter_map(|r| r["id"].as_u64()).collect();
    v.sort_unstable();
    v
}

/// Packs `[tag, bin(entries), {"chunk": chunk}]` for ids in `range`.
pub fn packed_frame(tag: &str, range: std::ops::Range<u64>, chunk: &str) -> Vec<u8> {
    use rmpv::Value as V;
    let mut entries = Vec::new();
    for i in range {
        let e = V::Array(vec![
            V::from(1_700_000_000u64),
            V::Map(vec![
                (V::from("id"), V::from(i)),
                (V::from("log"), V::from("x".repeat(150))),
            ]),
        ]);
        rmpv::encode::write_value(&mut entries, &e).unwrap();
    }
    let frame = V::Array(vec![
        V::from(tag),
        V::Binary(entries),
        V::Map(vec![(V::from("chunk"), V::from(chunk))]),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &frame).unwrap();
    out
}

/// Packs `[tag, bin(gzip(entries)), {"chunk": chunk, "compressed": "gzip"}]` for ids in `range`:
/// CompressedPackedForward, whose records (`log` of 150 `x`) inflate ~50 times.
pub fn compressed_frame(tag: &str, range: std::ops::Range<u64>, chunk: &str) -> Vec<u8> {
    use rmpv::Value as V;
    use std::io::Write;
    let mut entries = Vec::new();
    for i in range {
        let e = V::Array(vec![
            V::from(1_700_000_000u64),
            V::Map(vec![
                (V::from("id"), V::from(i)),
                (V::from("log"), V::from("x".repeat(150))),
            ]),
        ]);
        rmpv::encode::write_value(&mut entries, &e).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&entries).unwrap();
    let frame = V::Array(vec![
        V::from(tag),
        V::Binary(gz.finish().unwrap()),
        V::Map(vec![
            (V::from("chunk"), V::from(chunk)),
            (V::from("compressed"), V::from("gzip")),
        ]),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &frame).unwrap();
    out
}

/// A blocking Forward client sending packed batches and waiting for each ack.
pub struct ForwardClient {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl ForwardClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<ForwardClient> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(ForwardClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends ids `range` in one PackedForward frame; `Ok` once acked.
    pub fn send(&mut self, tag: &str, range: std::ops::Range<u64>) -> std::io::Result<()> {
        let chunk = format!("c{}-{}", range.start, range.end);
        let frame = packed_frame(tag, range, &chunk);
        self.send_frame(&frame, &chunk)
    }

    /// Sends ids `range` in one CompressedPackedForward frame; `Ok` once acked.
    pub fn send_compressed(
        &mut self,
        tag: &str,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<()> {
        let chunk = format!("c{}-{}", range.start, range.end);
        let frame = compressed_frame(tag, range, &chunk);
        self.send_frame(&frame, &chunk)
    }

    /// Sends `frame` (whose `chunk` option is `chunk`); `Ok` once acked.
    pub fn send_frame(&mut self, frame: &[u8], chunk: &str) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(frame)?;
        loop {
            if let Ok(v) = rmpv::decode::read_value(&mut &self.buf[..]) {
                let mut enc = Vec::new();
                rmpv::encode::write_value(&mut enc, &v).unwrap();
                self.buf.drain(..enc.len());
                let ok = v["ack"].as_str() == Some(chunk);
                return if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("bad ack {v}")))
                };
            }
            let mut tmp = [0u8; 4096];
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}
