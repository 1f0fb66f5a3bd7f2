//! Test harness: fake upstream apps, discovery feeds, a sidecar and a client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_proxy::config::ProxyConfig;
use skiff_proxy::{
    Alias, AppProtocol, DiscoverySource, EndpointInfo, IngressEntry, ServiceInfo, Sidecar,
    SidecarOptions, Snapshot,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub const NS: &str = "prod.internal";

/// Polls `cond` until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a fake upstream answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    Ok,
    Status(u16),
    Delay(Duration),
    /// gRPC answer: status in trailers, or alone in the headers (trailers-only).
    Grpc {
        status: u32,
        trailers_only: bool,
    },
    /// Accepts an upgrade (101) and echoes bytes.
    Echo,
}

/// A fake app: answers with its name, counts requests and connections.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    behavior: Arc<Mutex<Behavior>>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let behavior = Arc::new(Mutex::new(Behavior::Ok));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (n, r, c, b) = (
            name.to_owned(),
            requests.clone(),
            connections.clone(),
            behavior.clone(),
        );
        tokio::spawn(async move {
            // Dropping the set (on kill) aborts every open connection, like a SIGKILL.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stop_rx => return,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (n, r, b) = (n.clone(), r.clone(), b.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, r, b) = (n.clone(), r.clone(), b.clone());
                        async move {
                            r.fetch_add(1, Ordering::SeqCst);
                            let behavior = b.lock().unwrap().clone();
                            let traceparent = req
                                .headers()
                                .get("traceparent")
                                .map(|h| h.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let host = req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let version = format!("{:?}", req.version());
                            let mut req = req;
                            let upgrade = hyper::upgrade::on(&mut req);
                            let body_len = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(0);
                            let status = match behavior {
                                Behavior::Ok | Behavior::Grpc { .. } | Behavior::Echo => 200,
                                Behavior::Status(s) => s,
                                Behavior::Delay(d) => {
                                    tokio::time::sleep(d).await;
                                    200
                                }
                            };
                            let body: BoxBody<Bytes, Infallible> = match behavior {
                                Behavior::Grpc {
                                    status,
                                    trailers_only: false,
                                } => {
                                    let mut t = http::HeaderMap::new();
                                    t.insert("grpc-status", status.to_string().parse().unwrap());
                                    let frames = vec![
                                        Ok::<_, Infallible>(Frame::data(Bytes::from(n.clone()))),
                                        Ok(Frame::trailers(t)),
                                    ];
                                    StreamBody::new(futures_util::stream::iter(frames)).boxed()
                                }
                                Behavior::Grpc {
                                    trailers_only: true,
                                    ..
                                } => Full::new(Bytes::new()).boxed(),
                                _ => Full::new(Bytes::from(n)).boxed(),
                            };
                            let mut resp = Response::new(body);
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("x-seen-host", host.parse().unwrap());
                            resp.headers_mut()
                                .insert("x-seen-version", version.parse().unwrap());
                            resp.headers_mut().insert("x-body-len", body_len.into());
                            resp.headers_mut()
                                .insert("x-seen-traceparent", traceparent.parse().unwrap());
                            match behavior {
                                Behavior::Grpc {
                                    status,
                                    trailers_only,
                                } => {
                                    resp.headers_mut().insert(
                                        "content-type",
                                        "application/grpc".parse().unwrap(),
                                    );
                                    if trailers_only {
                                        resp.headers_mut().insert(
                                            "grpc-status",
                                            status.to_string().parse().unwrap(),
                                        );
                                    }
                                }
                                Behavior::Echo => {
                                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                                    resp.headers_mut()
                                        .insert("upgrade", "echo".parse().unwrap());
                                    resp.headers_mut()
                                        .insert("connection", "upgrade".parse().unwrap());
                                    tokio::spawn(async move {
                                        if let Ok(up) = upgrade.await {
                                            let mut io = TokioIo::new(up);
                                            let mut buf = [0u8; 1024];
                                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                            while let Ok(n) = io.read(&mut buf).await {
                                                if n == 0 || io.write_all(&buf[..n]).await.is_err()
                                                {
                                                    break;
                                                }
                                            }
                                        }
                                    });
                                }
                                _ => {}
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            behavior,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
        }
    }

    /// The app dies: listener closed, open connections cut.
    pub fn kill(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    pub fn set(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    pub fn hits(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn conns(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An address nobody listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub fn endpoint(id: &str, addr: SocketAddr) -> EndpointInfo {
    EndpointInfo {
        id: id.into(),
        addr,
        healthy: true,
        draining: false,
    }
}

pub fn service(name: &str, alias: &str, endpoints: Vec<EndpointInfo>) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        protocol: AppProtocol::Http,
        aliases: vec![alias.parse::<Alias>().unwrap()],
        endpoints,
    }
}

pub fn snapshot(revision: u64, services: Vec<ServiceInfo>) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        namespace: NS.into(),
        revision,
        services,
    })
}

/// A test config: round robin unless asked otherwise, quick drain.
pub fn config() -> ProxyConfig {
    ProxyConfig {
        drain_window: Duration::from_millis(300),
        drain_grace: Duration::from_secs(2),
        readiness_interval: Duration::from_millis(20),
        ..ProxyConfig::default()
    }
}

/// A running sidecar fed by a test-controlled discovery channel.
pub struct Proxy {
    pub sidecar: Option<Sidecar>,
    pub discovery: watch::Sender<Arc<Snapshot>>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub ingress: Vec<SocketAddr>,
}

impl Proxy {
    /// Default settings and one service `name` at `alias` with a single endpoint `id` at `addr`.
    pub async fn single(name: &str, alias: &str, id: &str, addr: SocketAddr) -> Proxy {
        Proxy::single_with(config(), name, alias, id, addr).await
    }

    /// `single` with the given settings.
    pub async fn single_with(
        config: ProxyConfig,
        name: &str,
        alias: &str,
        id: &str,
        addr: SocketAddr,
    ) -> Proxy {
        Proxy::start(config, vec![service(name, alias, vec![endpoint(id, addr)])]).await
    }

    pub async fn start(config: ProxyConfig, services: Vec<ServiceInfo>) -> Proxy {
        Self::start_with(config, services, Vec::new(), "client").await
    }

    pub async fn start_with(
        config: ProxyConfig,
        services: Vec<ServiceInfo>,
        ingress: Vec<IngressEntry>,
        name: &str,
    ) -> Proxy {
        Self::start_custom(config, services, ingress, name, |_| {}).await
    }

    /// Like `start_with`, letting the test adjust the options last.
    pub async fn start_custom(
        config: ProxyConfig,
        services: Vec<ServiceInfo>,
        ingress: Vec<IngressEntry>,
        name: &str,
        adjust: impl FnOnce(&mut SidecarOptions),
    ) -> Proxy {
        let (tx, rx) = watch::channel(snapshot(1, services));
        Self::start_source(
            config,
            DiscoverySource::Static(rx),
            tx,
            ingress,
            name,
            "task-1",
            adjust,
        )
        .await
    }

    /// A sidecar using the registry at `url`.
    pub async fn start_registry(
        config: ProxyConfig,
        url: &str,
        ingress: Vec<IngressEntry>,
        name: &str,
        task: &str,
    ) -> Proxy {
        let (tx, _) = watch::channel(snapshot(0, vec![]));
        Self::start_source(
            config,
            DiscoverySource::Registry { url: url.into() },
            tx,
            ingress,
            name,
            task,
            |_| {},
        )
        .await
    }

    async fn start_source(
        config: ProxyConfig,
        source: DiscoverySource,
        tx: watch::Sender<Arc<Snapshot>>,
        ingress: Vec<IngressEntry>,
        name: &str,
        task: &str,
        adjust: impl FnOnce(&mut SidecarOptions),
    ) -> Proxy {
        let mut opts = SidecarOptions::new(NS, task, source);
        opts.admin_port = 0;
        opts.http_proxy_port = 0;
        opts.service_name = name.into();
        opts.ingress = ingress;
        opts.config = config;
        adjust(&mut opts);
        let registry = prometheus::Registry::new();
        let sidecar = Sidecar::start(opts, &registry).await.unwrap();
        Proxy {
            http: sidecar.http_proxy_addr(),
            admin: sidecar.admin_addr(),
            ingress: sidecar.ingress_addrs(),
            sidecar: Some(sidecar),
            discovery: tx,
        }
    }

    pub fn publish(&self, revision: u64, services: Vec<ServiceInfo>) {
        self.discovery.send_replace(snapshot(revision, services));
    }

    /// Starts the drain; the returned handle resolves when the sidecar has stopped.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let sidecar = self.sidecar.take().expect("running");
        tokio::spawn(async move { sidecar.run(async {}).await.unwrap() })
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        Client::new(self.admin)
            .get(&format!("http://{}{path}", self.admin))
            .await
    }
}

/// What a client saw.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// An HTTP/1.1 client speaking to one address over one keep-alive connection (reconnecting
/// when the server closes it), sending request targets exactly as given.
pub struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    pub connects: usize,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            sender: None,
            connects: 0,
        }
    }

    pub async fn get(&mut self, target: &str) -> Reply {
        self.send(Request::get(target).body(Full::new(Bytes::new())).unwrap())
            .await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.try_send(req).await.expect("request failed")
    }

    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let ready = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
            self.connects += 1;
        }
        let sender = self.sender.as_mut().ok_or("no connection")?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

pub fn ingress(name: &str, app_port: u16) -> IngressEntry {
    IngressEntry {
        discovery_name: name.into(),
        port_name: "http".into(),
        container_port: app_port,
        ingress_port: None,
        app_protocol: AppProtocol::Http,
        client_aliases: vec![format!("{name}:8080").parse().unwrap()],
        timeouts: skiff_proxy::config::TimeoutConfig::default(),
    }
}

/// What an HTTP/2 client saw, trailers included.
#[derive(Debug)]
pub struct H2Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

/// One request over a fresh h2c (prior knowledge) connection.
pub async fn h2_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> H2Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    H2Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

pub fn grpc_service(name: &str, alias: &str, endpoints: Vec<EndpointInfo>) -> ServiceInfo {
    ServiceInfo {
        protocol: AppProtocol::Grpc,
        ..service(name, alias, endpoints)
    }
}

pub fn grpc_request(uri: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

/// A TCP echo server; counts connections.
pub async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, conns)
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

/// A VIP block of this test process: concurrent test runs do not share addresses. Each test
/// that binds alias VIPs takes its own `third_octet`.
pub fn vip_base(third_octet: u8) -> std::net::Ipv4Addr {
    let second = 100 + (std::process::id() % 150) as u8;
    std::net::Ipv4Addr::new(127, second, third_octet, 0)
}

pub fn vip(third_octet: u8, n: u8) -> std::net::Ipv4Addr {
    let b = vip_base(third_octet).octets();
    std::net::Ipv4Addr::new(b[0], b[1], b[2], n)
}

pub fn vip_config(third_octet: u8) -> ProxyConfig {
    let mut c = config();
    c.vip_base = Some(vip_base(third_octet));
    c.vip_prefix_len = 24;
    c
}

pub fn alias_addr(proxy: &Proxy, alias: &str) -> Option<SocketAddr> {
    proxy
        .sidecar
        .as_ref()
        .unwrap()
        .alias_addrs()
        .get(alias)
        .copied()
}

/// Waits for the alias listener of `alias` and returns its VIP address.
pub async fn wait_alias(proxy: &Proxy, alias: &str) -> SocketAddr {
    eventually(5, &format!("alias listener {alias}"), || async {
        alias_addr(proxy, alias).is_some()
    })
    .await;
    alias_addr(proxy, alias).unwrap()
}

/// The value of the sample of `name` carrying every label in `labels` (others ignored).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}
