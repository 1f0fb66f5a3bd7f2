//! Test harness: demo apps on port 0, a fake HTTP proxy, and a small client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_loadtest::{DemoServeOptions, demo_serve_listener};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A demo app running on a port-0 listener; stops when dropped or on `stop()`.
pub struct Demo {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), skiff_loadtest::LoadtestError>>>,
}

impl Demo {
    pub async fn start(name: &str, configure: impl FnOnce(&mut DemoServeOptions)) -> Demo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = DemoServeOptions::new(name, addr.port());
        opts.host = "127.0.0.1".to_string();
        opts.proxy = None;
        opts.task = format!("task-{name}");
        configure(&mut opts);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(demo_serve_listener(listener, opts, async move {
            let _ = stopped.await;
        }));
        Demo {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn get(url: &str) -> (StatusCode, String) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    send(&client, url).await
}

pub async fn get_h2c(url: &str) -> (StatusCode, String) {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    send(&client, url).await
}

async fn send(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> (StatusCode, String) {
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().unwrap()))
        .await
        .expect("request timed out")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not json ({e}): {body}"))
}

/// A forward HTTP proxy that routes absolute-form requests by host name from a table, and
/// records every request line it saw.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeProxy {
    pub async fn start(routes: BTreeMap<String, SocketAddr>) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let routes = routes.clone();
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(forward(request, &routes, &recorded).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeProxy { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    request: Request<hyper::body::Incoming>,
    routes: &BTreeMap<String, SocketAddr>,
    seen: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    let uri = request.uri().clone();
    seen.lock().unwrap().push(uri.to_string());
    let reply = |status: StatusCode, body: &str| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return reply(StatusCode::BAD_REQUEST, "not absolute-form");
    };
    let Some(target) = routes.get(&format!("{host}:{port}")) else {
        return reply(StatusCode::NOT_FOUND, "no such host");
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (status, body) = get(&format!("http://{target}{path}")).await;
    reply(status, &body)
}

/// One unary gRPC call over h2c: the answer's HTTP status, content type, message and grpc-status.
pub async fn grpc_call(
    addr: SocketAddr,
    method: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (StatusCode, String, Option<Vec<u8>>, String) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let framed = skiff_loadtest::demo::grpc::frame(message);
    let mut request = Request::post(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request.body(Full::new(framed)).unwrap()),
    )
    .await
    .expect("grpc call timed out")
    .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let message = skiff_loadtest::demo::grpc::unframe(&body).map(<[u8]>::to_vec);
    let grpc_status = trailers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, message, grpc_status)
}
