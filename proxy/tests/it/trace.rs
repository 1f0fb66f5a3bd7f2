//! Traces across two sidecars into an OTLP receiver (HTTP/protobuf and gRPC), dropped spans
//! when the collector is away, retries as sibling spans, and access log lines joined to spans.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use skiff_proxy::config::{AccessLog, BalancerKind, ProxyConfig};
use skiff_proxy::trace::ExportSettings;
use skiff_proxy::{AccessLogSink, OtlpProtocol, TraceSettings};
use tokio::net::TcpListener;

use crate::harness::*;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    resource: Vec<KeyValue>,
    span: Span,
}

/// An OTLP trace receiver on loopback: HTTP/protobuf at `/v1/traces` and gRPC `Export`.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    grpc_calls: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let grpc_calls = Arc::new(Mutex::new(0));
        let (s, g) = (spans.clone(), grpc_calls.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, g) = (s.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s, g) = (s.clone(), g.clone());
                        async move { Ok::<_, Infallible>(receive(req, &s, &g).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            spans,
            grpc_calls,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn settings(&self, protocol: OtlpProtocol) -> TraceSettings {
        export_to(self.addr, protocol)
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn receive(
    req: Request<Incoming>,
    spans: &Mutex<Vec<Received>>,
    grpc_calls: &Mutex<usize>,
) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let message = match path.as_str() {
        "/v1/traces" => body,
        GRPC_PATH => {
            assert_eq!(body[0], 0, "uncompressed");
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            assert_eq!(body.len(), 5 + len, "one length-prefixed message");
            *grpc_calls.lock().unwrap() += 1;
            body.slice(5..)
        }
        other => panic!("unexpected OTLP path {other}"),
    };
    let req = ExportTraceServiceRequest::decode(message).unwrap();
    for rs in req.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let service = string_attr(&resource, "service.name").unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.lock().unwrap().push(Received {
                    service: service.clone(),
                    resource: resource.clone(),
                    span,
                });
            }
        }
    }
    if path == GRPC_PATH {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp
    } else {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        resp.headers_mut()
            .insert("content-type", "application/x-protobuf".parse().unwrap());
        resp
    }
}

fn export_to(addr: SocketAddr, protocol: OtlpProtocol) -> TraceSettings {
    let endpoint = match protocol {
        OtlpProtocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
        OtlpProtocol::Grpc => format!("http://{addr}"),
    };
    TraceSettings {
        export: Some(ExportSettings {
            endpoint: endpoint.parse().unwrap(),
            protocol,
            queue_capacity: 1024,
            batch_size: 64,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        }),
        ..TraceSettings::default()
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span id in a `traceparent`.
fn span_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap().to_owned()
}

/// A frontend app that calls `http://orders:8080/` through its sidecar's HTTP proxy,
/// propagating the `traceparent` it received; answers with what it and orders saw.
async fn frontend_app(listener: TcpListener, proxy: SocketAddr) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let seen = req
                    .headers()
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let mut onward = Request::get("http://orders:8080/items");
                if !seen.is_empty() {
                    onward = onward.header("traceparent", seen.as_str());
                }
                let reply = Client::new(proxy)
                    .send(onward.body(Full::new(Bytes::new())).unwrap())
                    .await;
                let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                *resp.status_mut() = reply.status;
                resp.headers_mut()
                    .insert("x-seen-traceparent", seen.parse().unwrap());
                if let Some(v) = reply.headers.get("x-seen-traceparent") {
                    resp.headers_mut()
                        .insert("x-orders-seen-traceparent", v.clone());
                }
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// client → caller sidecar → frontend's sidecar (inbound) → frontend app → frontend's
/// sidecar (outbound) → orders.
struct Chain {
    caller: Proxy,
    _frontend: Proxy,
    _orders: Upstream,
    caller_log: Arc<Mutex<Vec<String>>>,
    frontend_log: Arc<Mutex<Vec<String>>>,
}

async fn chain(trace: impl Fn() -> TraceSettings) -> Chain {
    let orders = Upstream::start("orders").await;
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    let frontend_log = Arc::new(Mutex::new(Vec::new()));
    let caller_log = Arc::new(Mutex::new(Vec::new()));
    let mut frontend_cfg = config();
    frontend_cfg.access_log = AccessLog::Text;
    frontend_cfg.access_log_query = true;
    let (t, sink) = (trace(), AccessLogSink::Memory(frontend_log.clone()));
    let frontend = Proxy::start_custom(
        frontend_cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("o1", orders.addr)],
        )],
        vec![ingress("frontend", app_port)],
        "frontend",
        move |o| {
            o.trace = t;
            o.access_log_sink = sink;
        },
    )
    .await;
    tokio::spawn(frontend_app(app, frontend.http));
    let mut caller_cfg: ProxyConfig = config();
    caller_cfg.access_log = AccessLog::Json;
    let (t, sink) = (trace(), AccessLogSink::Memory(caller_log.clone()));
    let caller = Proxy::start_custom(
        caller_cfg,
        vec![service(
            "frontend",
            "frontend:8080",
            vec![endpoint("f1", frontend.ingress[0])],
        )],
        Vec::new(),
        "caller",
        move |o| {
            o.trace = t;
            o.access_log_sink = sink;
        },
    )
    .await;
    Chain {
        caller,
        _frontend: frontend,
        _orders: orders,
        caller_log,
        frontend_log,
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn checkout(chain: &Chain) -> Reply {
    let req = Request::get("http://frontend:8080/checkout?user=7")
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Client::new(chain.caller.http).send(req).await
}

/// The one span of `service` with `kind` whose parent is `parent`.
fn child<'a>(spans: &'a [Received], service: &str, kind: i32, parent: &str) -> &'a Span {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|r| {
            r.service == service && r.span.kind == kind && hex(&r.span.parent_span_id) == parent
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {service} span of kind {kind} under {parent}: {spans:#?}"
    );
    &found[0].span
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

async fn one_trace_across_two_sidecars(protocol: OtlpProtocol) {
    let receiver = Receiver::start().await;
    let chain = chain(|| receiver.settings(protocol)).await;
    let reply = checkout(&chain).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "orders");
    eventually(10, "six spans exported", || async {
        receiver.spans().len() >= 6
    })
    .await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert!(
        spans.iter().all(|r| hex(&r.span.trace_id) == TRACE),
        "one trace id: {spans:#?}"
    );
    // caller sidecar: server span under the client's span, one attempt under it.
    let s1 = child(&spans, "caller", SERVER, CLIENT_SPAN);
    let c1 = child(&spans, "caller", CLIENT, &hex(&s1.span_id));
    // frontend's sidecar, inbound: under the caller's attempt.
    let s2 = child(&spans, "frontend", SERVER, &hex(&c1.span_id));
    let c2 = child(&spans, "frontend", CLIENT, &hex(&s2.span_id));
    // the app passed the context on: frontend's outbound request is under its inbound attempt.
    let s3 = child(&spans, "frontend", SERVER, &hex(&c2.span_id));
    let c3 = child(&spans, "frontend", CLIENT, &hex(&s3.span_id));
    // the apps received the context of the attempt that reached them.
    let seen = reply.headers["x-seen-traceparent"].to_str().unwrap();
    assert!(seen.starts_with(&format!("00-{TRACE}-")), "{seen}");
    assert_eq!(span_of(seen), hex(&c2.span_id));
    let orders_seen = reply.headers["x-orders-seen-traceparent"].to_str().unwrap();
    assert_eq!(span_of(orders_seen), hex(&c3.span_id));
    assert!(orders_seen.ends_with("-01"), "{orders_seen}");

    // semantic-convention attributes
    assert_eq!(
        string_attr(&s1.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        string_attr(&s1.attributes, "url.path").as_deref(),
        Some("/checkout")
    );
    assert_eq!(
        string_attr(&s1.attributes, "server.address").as_deref(),
        Some("frontend")
    );
    assert_eq!(int_attr(&s1.attributes, "server.port"), Some(8080));
    assert_eq!(
        string_attr(&s1.attributes, "network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        string_attr(&s1.attributes, "skiff.target").as_deref(),
        Some("frontend")
    );
    assert_eq!(
        int_attr(&s1.attributes, "http.response.status_code"),
        Some(200)
    );
    let frontend_ingress = chain._frontend.ingress[0].to_string();
    assert_eq!(
        string_attr(&c1.attributes, "skiff.endpoint").as_deref(),
        Some(frontend_ingress.as_str())
    );
    assert_eq!(
        string_attr(&c1.attributes, "skiff.target").as_deref(),
        Some("frontend")
    );
    assert_eq!(int_attr(&c1.attributes, "skiff.attempt"), Some(1));
    assert_eq!(
        int_attr(&c1.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        string_attr(&c3.attributes, "skiff.target").as_deref(),
        Some("orders")
    );
    assert_eq!(
        string_attr(&s2.attributes, "skiff.listener").as_deref(),
        Some("inbound")
    );
    assert_eq!(
        string_attr(&s3.attributes, "url.path").as_deref(),
        Some("/items")
    );
    // the query is recorded only where the service lets access logs keep it
    assert_eq!(string_attr(&s1.attributes, "url.query"), None);
    assert_eq!(
        string_attr(&s2.attributes, "url.query").as_deref(),
        Some("user=7")
    );
    for r in &spans {
        assert_eq!(
            string_attr(&r.resource, "service.namespace").as_deref(),
            Some(NS)
        );
        assert_eq!(
            string_attr(&r.resource, "service.instance.id").as_deref(),
            Some("task-1")
        );
        assert!(r.span.end_time_unix_nano >= r.span.start_time_unix_nano);
        assert!(r.span.status.is_none(), "no errors: {r:#?}");
    }

    // access log lines carry the trace and this hop's span; the query only where enabled.
    let caller_log = chain.caller_log.lock().unwrap().clone();
    assert_eq!(caller_log.len(), 1, "{caller_log:?}");
    let line: serde_json::Value = serde_json::from_str(&caller_log[0]).unwrap();
    assert_eq!(line["trace_id"], TRACE);
    assert_eq!(line["span_id"], hex(&s1.span_id));
    assert_eq!(line["path"], "/checkout", "query left out by default");
    let frontend_log = chain.frontend_log.lock().unwrap().clone();
    assert_eq!(frontend_log.len(), 2, "{frontend_log:?}");
    let inbound = frontend_log
        .iter()
        .find(|l| l.contains(" inbound "))
        .unwrap();
    assert!(
        inbound.contains("/checkout?user=7 200"),
        "query kept: {inbound}"
    );
    assert!(inbound.contains(&format!("trace_id={TRACE}")), "{inbound}");
    assert!(
        inbound.contains(&format!("span_id={}", hex(&s2.span_id))),
        "{inbound}"
    );
}

#[tokio::test]
async fn one_trace_across_two_sidecars_over_otlp_http() {
    one_trace_across_two_sidecars(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn one_trace_across_two_sidecars_over_otlp_grpc() {
    one_trace_across_two_sidecars(OtlpProtocol::Grpc).await;
}

async fn dropped_spans(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.body;
    metric(
        &text,
        "skiff_proxy_spans_dropped_total",
        &[("service_name", "caller")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn collector_down_changes_no_answer_and_counts_dropped_spans() {
    // A privileged port nobody listens on: a freed ephemeral port could be taken by another
    // test's server (answering 200) while this one runs.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(tokio::net::TcpStream::connect(dead).await.is_err());
    let chain = chain(|| export_to(dead, OtlpProtocol::HttpProtobuf)).await;
    for _ in 0..10 {
        let reply = checkout(&chain).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "orders");
        assert!(
            reply.headers["x-seen-traceparent"]
                .to_str()
                .unwrap()
                .contains(TRACE)
        );
    }
    eventually(10, "dropped spans counted", || async {
        dropped_spans(&chain.caller).await >= 20.0
    })
    .await;
}

#[tokio::test]
async fn a_stalled_collector_fills_the_queue_and_requests_go_on() {
    // A collector that accepts connections and never answers.
    let stalled = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalled.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            held.push(s);
        }
    });
    let chain = chain(|| {
        let mut s = export_to(addr, OtlpProtocol::HttpProtobuf);
        if let Some(e) = s.export.as_mut() {
            e.queue_capacity = 2;
            e.batch_size = 1;
            e.timeout = Duration::from_secs(60);
        }
        s
    })
    .await;
    for _ in 0..10 {
        assert_eq!(checkout(&chain).await.status, StatusCode::OK);
    }
    eventually(10, "spans dropped at the full queue", || async {
        dropped_spans(&chain.caller).await >= 1.0
    })
    .await;
}

#[tokio::test]
async fn retries_are_sibling_client_spans_of_the_request_span() {
    let receiver = Receiver::start().await;
    let bad = Upstream::start("bad").await;
    bad.set(Behavior::Status(503));
    let good = Upstream::start("good").await;
    let mut cfg = config();
    cfg.debug_attempts_header = true;
    cfg.balancer = BalancerKind::RoundRobin;
    let proxy = Proxy::start_custom(
        cfg,
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("bad", bad.addr), endpoint("good", good.addr)],
        )],
        Vec::new(),
        "client",
        |o| o.trace = receiver.settings(OtlpProtocol::HttpProtobuf),
    )
    .await;
    let mut c = Client::new(proxy.http);
    // Round robin: within a few requests one starts at the failing endpoint.
    let mut retried = None;
    for i in 0..10u32 {
        let trace = format!("{:032x}", 0xabc0 + i);
        let r = c
            .send(
                Request::get("http://orders:8080/")
                    .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        if r.headers["x-skiff-attempts"] == "2" {
            retried = Some(trace);
            break;
        }
    }
    let trace = retried.expect("a retried request");
    let of_trace = || {
        receiver
            .spans()
            .into_iter()
            .filter(|r| hex(&r.span.trace_id) == trace)
            .collect::<Vec<_>>()
    };
    eventually(10, "the retried request's spans", || async {
        of_trace().len() >= 3
    })
    .await;
    let spans = of_trace();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = child(&spans, "client", SERVER, CLIENT_SPAN);
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|r| r.span.kind == CLIENT)
        .map(|r| &r.span)
        .collect();
    attempts.sort_by_key(|s| int_attr(&s.attributes, "skiff.attempt"));
    assert_eq!(attempts.len(), 2);
    for (n, s) in attempts.iter().enumerate() {
        assert_eq!(
            s.parent_span_id, server.span_id,
            "siblings under the request span"
        );
        assert_eq!(int_attr(&s.attributes, "skiff.attempt"), Some(n as i64 + 1));
    }
    assert_eq!(
        int_attr(&attempts[0].attributes, "http.response.status_code"),
        Some(503)
    );
    assert_eq!(
        attempts[0].status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    assert_eq!(
        string_attr(&attempts[0].attributes, "skiff.endpoint"),
        Some(bad.addr.to_string())
    );
    assert_eq!(
        int_attr(&attempts[1].attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        int_attr(&server.attributes, "http.response.status_code"),
        Some(200)
    );
}

#[tokio::test]
async fn sampled_out_traces_are_propagated_but_not_exported() {
    let receiver = Receiver::start().await;
    let up = Upstream::start("orders").await;
    let proxy = Proxy::start_custom(
        config(),
        vec![service(
            "orders",
            "orders:8080",
            vec![endpoint("o", up.addr)],
        )],
        Vec::new(),
        "client",
        |o| {
            o.trace = receiver.settings(OtlpProtocol::HttpProtobuf);
            o.trace.sampler.ratio = 0.0;
        },
    )
    .await;
    let mut c = Client::new(proxy.http);
    // No parent: the ratio (0) decides; the context still goes upstream, unsampled.
    let r = c.get("http://orders:8080/").await;
    let seen = r.headers["x-seen-traceparent"].to_str().unwrap().to_owned();
    assert!(seen.ends_with("-00"), "{seen}");
    // A sampled parent wins (parent-based).
    let r = c
        .send(
            Request::get("http://orders:8080/")
                .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(
        r.headers["x-seen-traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-01")
    );
    eventually(10, "the sampled request's spans", || async {
        receiver.spans().len() >= 2
    })
    .await;
    // Flushes whatever else was queued: still only the sampled trace's two spans.
    let mut proxy = proxy;
    proxy.shutdown().await.unwrap();
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|r| hex(&r.span.trace_id) == TRACE));
    assert_eq!(*receiver.grpc_calls.lock().unwrap(), 0);
}
