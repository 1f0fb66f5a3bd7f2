//! Unit tests of context propagation, sampling, settings and OTLP encoding.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;

use super::*;
use queue::SpanQueue;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn request<'a>(h: &'a HeaderMap) -> RequestInfo<'a> {
    RequestInfo {
        listener: "outbound",
        headers: h,
        method: &Method::GET,
        path: "/orders",
        query: Some("id=7"),
        authority: Some("orders:8080"),
        peer: Some("127.0.0.1:5555".parse().unwrap()),
        version: Version::HTTP_11,
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[test]
fn w3c_context_is_continued_with_child_spans() {
    let tracer = Tracer::disabled();
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=x"),
    ]);
    let server = tracer.server_span(&request(&h));
    assert_eq!(hex(&server.ctx.trace_id), TRACE);
    assert_ne!(hex(&server.ctx.span_id), SPAN);
    assert!(server.ctx.sampled);
    let mut up = h.clone();
    let addr = "127.0.0.1:1".parse().unwrap();
    let (_c, propagation) = tracer.client_span(
        &server,
        &Method::GET,
        &AttemptInfo {
            endpoint: &endpoint_attributes(addr),
            target: &"orders".into(),
            number: 1,
            start: Instant::now(),
        },
    );
    propagation.apply(&mut up);
    let tp = up["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    assert!(
        !tp.contains(SPAN) && !tp.contains(&hex(&server.ctx.span_id)),
        "{tp}"
    );
    assert_eq!(up["tracestate"], "vendor=x");
    assert!(!up.contains_key("b3"));
}

#[test]
fn an_unsampled_parent_stays_unsampled() {
    let tracer = Tracer::disabled();
    let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]);
    let server = tracer.server_span(&request(&h));
    assert!(!server.ctx.sampled);
    let mut up = HeaderMap::new();
    let (_c, propagation) = tracer.client_span(
        &server,
        &Method::GET,
        &AttemptInfo {
            endpoint: &endpoint_attributes("127.0.0.1:1".parse().unwrap()),
            target: &"orders".into(),
            number: 1,
            start: Instant::now(),
        },
    );
    propagation.apply(&mut up);
    assert!(up["traceparent"].to_str().unwrap().ends_with("-00"));
}

#[test]
fn invalid_or_missing_context_starts_a_trace() {
    for bad in [
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "zz-1-2-3",
    ] {
        let h = if bad.is_empty() {
            HeaderMap::new()
        } else {
            headers(&[("traceparent", bad)])
        };
        assert_eq!(Found::scan(&h).parent(), None, "{bad}");
        let server = Tracer::disabled().server_span(&request(&h));
        assert_ne!(server.ctx.trace_id, [0; 16]);
        assert!(server.ctx.sampled, "always on without a parent");
    }
}

#[test]
fn b3_single_and_multi_are_read_and_written_back() {
    let single = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
    let p = Found::scan(&single).parent().unwrap();
    assert_eq!(
        (hex(&p.ctx.trace_id), hex(&p.ctx.span_id)),
        (TRACE.into(), SPAN.into())
    );
    assert_eq!(p.b3, B3Format::Single);
    let short = headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-0"))]);
    let p = Found::scan(&short).parent().unwrap();
    assert_eq!(hex(&p.ctx.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert!(!p.ctx.sampled);
    assert_eq!(
        Found::scan(&headers(&[("b3", "0")])).parent(),
        None,
        "sampling state only"
    );

    let multi = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let tracer = Tracer::disabled();
    let server = tracer.server_span(&request(&multi));
    assert_eq!(hex(&server.ctx.trace_id), TRACE);
    let mut up = multi.clone();
    let (_c, propagation) = tracer.client_span(
        &server,
        &Method::GET,
        &AttemptInfo {
            endpoint: &endpoint_attributes("127.0.0.1:1".parse().unwrap()),
            target: &"orders".into(),
            number: 1,
            start: Instant::now(),
        },
    );
    propagation.apply(&mut up);
    assert_eq!(up["x-b3-traceid"], TRACE);
    assert_eq!(up["x-b3-parentspanid"], hex(&server.ctx.span_id).as_str());
    assert_ne!(up["x-b3-spanid"], SPAN);
    assert!(up["traceparent"].to_str().unwrap().contains(TRACE));

    let server = tracer.server_span(&request(&single));
    let mut up = single.clone();
    let (_c, propagation) = tracer.client_span(
        &server,
        &Method::GET,
        &AttemptInfo {
            endpoint: &endpoint_attributes("127.0.0.1:1".parse().unwrap()),
            target: &"orders".into(),
            number: 1,
            start: Instant::now(),
        },
    );
    propagation.apply(&mut up);
    let b3 = up["b3"].to_str().unwrap();
    assert!(
        b3.starts_with(TRACE) && b3.ends_with(&hex(&server.ctx.span_id)),
        "{b3}"
    );
}

#[test]
fn ratio_sampling_is_deterministic_per_trace() {
    let s = Sampler {
        parent_based: true,
        ratio: 0.25,
    };
    let mut sampled = 0;
    for _ in 0..4000 {
        let id: [u8; 16] = random_nonzero();
        let first = s.sample(None, &id);
        assert_eq!(first, s.sample(None, &id));
        sampled += usize::from(first);
    }
    assert!((700..1300).contains(&sampled), "{sampled} of 4000 at 25%");
    let parent = SpanContext {
        trace_id: [1; 16],
        span_id: [1; 8],
        sampled: true,
    };
    assert!(s.sample(Some(&parent), &[0xff; 16]), "parent-based");
    let root_only = Sampler {
        parent_based: false,
        ratio: 0.0,
    };
    assert!(!root_only.sample(Some(&parent), &[1; 16]));
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn settings_follow_otel_variables_over_skiff_settings() {
    let s = TraceSettings::from_vars(vars(&[]), None, 0.5).unwrap();
    assert_eq!(s.export, None);
    assert_eq!(
        s.sampler,
        Sampler {
            parent_based: true,
            ratio: 0.5
        }
    );

    let s = TraceSettings::from_vars(vars(&[]), Some("http://127.0.0.1:4318"), 1.0).unwrap();
    let e = s.export.unwrap();
    assert_eq!(e.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(e.queue_capacity, DEFAULT_QUEUE_CAPACITY);

    let s = TraceSettings::from_vars(
        vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_SERVICE_NAME", "frontend"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=dev, team = web",
            ),
        ]),
        Some("http://ignored:4318"),
        1.0,
    )
    .unwrap();
    let e = s.export.unwrap();
    assert_eq!(e.endpoint, "http://collector:4317/");
    assert_eq!(e.protocol, OtlpProtocol::Grpc);
    assert_eq!(e.interval, Duration::from_millis(100));
    assert_eq!(s.service_name, "frontend");
    assert_eq!(
        s.resource,
        [
            ("deployment.environment".to_owned(), "dev".to_owned()),
            ("team".to_owned(), "web".to_owned())
        ]
    );
    assert_eq!(
        s.sampler,
        Sampler {
            parent_based: true,
            ratio: 0.1
        }
    );

    let s = TraceSettings::from_vars(
        vars(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ]),
        None,
        1.0,
    )
    .unwrap();
    assert_eq!(s.export.unwrap().endpoint, "http://c:4318/custom");
    assert_eq!(
        s.sampler,
        Sampler {
            parent_based: false,
            ratio: 0.0
        }
    );

    let off = TraceSettings::from_vars(
        vars(&[("OTEL_SDK_DISABLED", "true")]),
        Some("http://c:4318"),
        1.0,
    )
    .unwrap();
    assert_eq!(off.export, None);

    for bad in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
    ] {
        let err = TraceSettings::from_vars(vars(&[bad]), Some("http://c:4318"), 1.0).unwrap_err();
        assert!(err.to_string().contains(bad.0), "{err}");
    }
}

/// A tracer recording every span into a one-worker queue the test reads (no exporter).
fn recording_tracer() -> (Tracer, Arc<SpanQueue>) {
    let dropped = IntCounter::new("dropped", "dropped").unwrap();
    let queue = Arc::new(SpanQueue::new(1, 64, 16, dropped));
    let tracer = Tracer {
        sampler: Sampler::default(),
        export: Some(Arc::new(ExportHandle {
            queue: queue.clone(),
            flush: mpsc::channel(1).0,
        })),
    };
    (tracer, queue)
}

fn decode(frame: &otlp::Frame, queue: &SpanQueue) -> ExportTraceServiceRequest {
    let chunk = queue.take(0, Vec::new()).ok().unwrap();
    let body = otlp::body_bytes(frame.request(chunk.bytes.into(), false));
    ExportTraceServiceRequest::decode(body.as_slice()).unwrap()
}

fn attrs_of(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, any_value::Value> {
    let map: HashMap<_, _> = attrs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap().value.unwrap()))
        .collect();
    assert_eq!(map.len(), attrs.len(), "no key twice: {attrs:?}");
    map
}

#[test]
fn recorded_spans_decode_with_the_official_types() {
    let resource = [("service.name".to_owned(), "orders".to_owned())];
    let frame = otlp::Frame::new(&resource);
    let (tracer, queue) = recording_tracer();
    let mut h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=x"),
        ("user-agent", "curl/8"),
    ]);
    h.append("user-agent", HeaderValue::from_static("second"));
    let server = tracer.server_span(&request(&h));
    assert!(server.is_recording());
    let target: Arc<str> = "orders".into();
    let endpoint: SocketAddr = "10.0.100.9:8080".parse().unwrap();
    let (client, _) = tracer.client_span(
        &server,
        &Method::GET,
        &AttemptInfo {
            endpoint: &endpoint_attributes(endpoint),
            target: &target,
            number: 2,
            start: Instant::now(),
        },
    );
    let server_span_id = server.ctx.span_id;
    tracer.end_client(client, Ok(503), Instant::now());
    tracer.end_server(server, 503, None, Some(&target));

    let req = decode(&frame, &queue);
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let resource = attrs_of(&rs.resource.as_ref().unwrap().attributes);
    assert_eq!(
        resource["service.name"],
        any_value::Value::StringValue("orders".into())
    );
    assert_eq!(
        rs.scope_spans[0].scope.as_ref().unwrap().name,
        "skiff-proxy"
    );
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let (c, s) = (&spans[0], &spans[1]);
    let text = |v: &str| any_value::Value::StringValue(v.to_owned());
    let int = any_value::Value::IntValue;

    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(hex(&s.parent_span_id), SPAN);
    assert_eq!(s.span_id, server_span_id.to_vec());
    assert_eq!(s.trace_state, "vendor=x");
    assert_eq!((s.name.as_str(), s.kind), ("GET", 2));
    assert_eq!(s.flags, 1);
    assert!(s.start_time_unix_nano > 1_700_000_000_000_000_000);
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    assert_eq!(
        s.status.as_ref().unwrap().code,
        2,
        "a 5xx server span fails"
    );
    let a = attrs_of(&s.attributes);
    let expected = [
        ("http.request.method", text("GET")),
        ("url.path", text("/orders")),
        ("url.scheme", text("http")),
        ("url.query", text("id=7")),
        ("server.address", text("orders")),
        ("server.port", int(8080)),
        ("network.peer.address", text("127.0.0.1")),
        ("network.peer.port", int(5555)),
        ("network.protocol.version", text("1.1")),
        ("user_agent.original", text("curl/8")),
        ("skiff.listener", text("outbound")),
        ("skiff.target", text("orders")),
        ("http.response.status_code", int(503)),
        ("error.type", text("503")),
    ];
    assert_eq!(a, expected.map(|(k, v)| (k.to_owned(), v)).into());

    assert_eq!(hex(&c.trace_id), TRACE);
    assert_eq!(c.parent_span_id, server_span_id.to_vec());
    assert_eq!(c.trace_state, "vendor=x");
    assert_eq!((c.name.as_str(), c.kind), ("GET", 3));
    assert!(c.start_time_unix_nano >= s.start_time_unix_nano);
    assert!(c.end_time_unix_nano >= c.start_time_unix_nano);
    assert!(c.end_time_unix_nano <= s.end_time_unix_nano);
    assert_eq!(c.status.as_ref().unwrap().code, 2);
    let a = attrs_of(&c.attributes);
    let expected = [
        ("http.request.method", text("GET")),
        ("server.address", text("10.0.100.9")),
        ("server.port", int(8080)),
        ("skiff.target", text("orders")),
        ("skiff.endpoint", text("10.0.100.9:8080")),
        ("skiff.attempt", int(2)),
        ("http.response.status_code", int(503)),
        ("error.type", text("503")),
    ];
    assert_eq!(a, expected.map(|(k, v)| (k.to_owned(), v)).into());
}

#[test]
fn outcomes_set_status_and_error_type_as_the_conventions_say() {
    let frame = otlp::Frame::new(&[]);
    let (tracer, queue) = recording_tracer();
    let h = HeaderMap::new();
    let mut info = request(&h);
    let odd = Method::from_bytes(b"PURGE").unwrap();
    info.method = &odd;
    let server = tracer.server_span(&info);
    let target: Arc<str> = "orders".into();
    let attempt = AttemptInfo {
        endpoint: &endpoint_attributes("[fd00::1]:8080".parse().unwrap()),
        target: &target,
        number: 1,
        start: Instant::now(),
    };
    // Refused, not found, fine.
    for outcome in [Err("connect"), Ok(404), Ok(200)] {
        let (span, _) = tracer.client_span(&server, &odd, &attempt);
        tracer.end_client(span, outcome, Instant::now());
    }
    tracer.end_server(server, 404, Some("no_service"), None);
    // An abandoned span (its request dropped) is not exported.
    drop(tracer.server_span(&request(&h)));

    let req = decode(&frame, &queue);
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 4);
    let text = |v: &str| any_value::Value::StringValue(v.to_owned());
    let error_type = |i: usize| attrs_of(&spans[i].attributes).get("error.type").cloned();
    let failed = |i: usize| spans[i].status.as_ref().is_some_and(|s| s.code == 2);
    assert_eq!(error_type(0), Some(text("connect")));
    assert!(failed(0));
    assert!(!attrs_of(&spans[0].attributes).contains_key("http.response.status_code"));
    assert_eq!(error_type(1), Some(text("404")), "4xx fails a client span");
    assert!(failed(1));
    assert_eq!(error_type(2), None);
    assert!(!failed(2));
    assert_eq!(
        error_type(3),
        Some(text("no_service")),
        "the proxy's own error"
    );
    assert!(!failed(3), "4xx does not fail a server span");
    for s in spans {
        let a = attrs_of(&s.attributes);
        assert_eq!(a["http.request.method"], text("_OTHER"));
        assert_eq!(a["http.request.method_original"], text("PURGE"));
        assert_eq!(s.name, "PURGE");
    }
    assert_eq!(
        attrs_of(&spans[0].attributes)["skiff.endpoint"],
        text("[fd00::1]:8080")
    );
    assert!(queue.take(0, Vec::new()).is_err(), "nothing more");
}

#[test]
fn each_request_gets_its_own_connection_attributes() {
    let frame = otlp::Frame::new(&[]);
    let (tracer, queue) = recording_tracer();
    let h = HeaderMap::new();
    let cases = [
        ("outbound", Version::HTTP_11, "127.0.0.1:5555"),
        ("outbound", Version::HTTP_11, "127.0.0.1:5555"),
        ("inbound", Version::HTTP_11, "127.0.0.1:5555"),
        ("inbound", Version::HTTP_2, "127.0.0.1:5555"),
        ("inbound", Version::HTTP_2, "[::1]:6666"),
        ("inbound", Version::HTTP_2, "10.0.0.2:7777"),
    ];
    for (listener, version, peer) in cases {
        let mut info = request(&h);
        info.listener = listener;
        info.version = version;
        info.peer = Some(peer.parse().unwrap());
        let span = tracer.server_span(&info);
        tracer.end_server(span, 200, None, None);
    }
    let req = decode(&frame, &queue);
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), cases.len());
    let text = |v: &str| any_value::Value::StringValue(v.to_owned());
    for ((listener, version, peer), span) in cases.iter().zip(spans) {
        let a = attrs_of(&span.attributes);
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(a["skiff.listener"], text(listener));
        assert_eq!(a["url.scheme"], text("http"));
        let v = if *version == Version::HTTP_2 {
            "2"
        } else {
            "1.1"
        };
        assert_eq!(a["network.protocol.version"], text(v));
        assert_eq!(a["network.peer.address"], text(&peer.ip().to_string()));
        assert_eq!(
            a["network.peer.port"],
            any_value::Value::IntValue(i64::from(peer.port()))
        );
    }
}

#[test]
fn every_kind_of_attribute_value_decodes_as_written() {
    let long = "p".repeat(300);
    let text = |s: &str| any_value::Value::StringValue(s.to_owned());
    let mut span = Vec::new();
    otlp::span_start(
        &mut span,
        &[1; 16],
        &[2; 8],
        Some(&[3; 8]),
        Some(long.as_bytes()),
        long.as_bytes(),
        SpanKind::Server,
    );
    let mut expected = Vec::new();
    // Past one-byte lengths too.
    for s in ["", "GET", &long, &long[..100]] {
        otlp::attr_str(&mut span, key!("k"), s.as_bytes());
        expected.push(("k", text(s)));
    }
    for i in [0, 300, -1, i64::MAX, i64::MIN] {
        otlp::attr_int(&mut span, key!("k"), i);
        expected.push(("k", any_value::Value::IntValue(i)));
    }
    for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "fe80::1:2"] {
        otlp::attr_ip(&mut span, key!("k"), ip.parse().unwrap());
        expected.push(("k", text(ip)));
    }
    for (addr, ip) in [
        ("127.0.0.1:65535", "127.0.0.1"),
        ("[fd00::1]:8080", "fd00::1"),
        ("1.2.3.4:0", "1.2.3.4"),
    ] {
        otlp::attr_ip_and_addr(&mut span, key!("ip"), key!("k"), addr.parse().unwrap());
        expected.push(("ip", text(ip)));
        expected.push(("k", text(addr)));
    }
    // A key long enough that its KeyValue needs more than one byte of length.
    otlp::attr_int(&mut span, key!(LONG_KEY), 1);
    expected.push((LONG_KEY, any_value::Value::IntValue(1)));
    otlp::attr_str(&mut span, key!(LONG_KEY), b"v");
    expected.push((LONG_KEY, text("v")));
    otlp::span_end(&mut span, 7, 5, false);
    let bytes = otlp::encode_request(&[], &[span]);
    let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let s = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(s.name, long);
    assert_eq!(s.trace_state, long);
    assert_eq!(s.parent_span_id, vec![3; 8]);
    assert_eq!(
        (s.start_time_unix_nano, s.end_time_unix_nano),
        (7, 7),
        "an end before the start is the start"
    );
    assert!(s.status.is_none());
    assert_eq!(s.flags, 1);
    let decoded: Vec<_> = s
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
        .collect();
    assert_eq!(decoded, expected);
}

const LONG_KEY: &str = "skiff.a.key.long.enough.that.its.key.value.needs.more.than.one.byte.of.length.prefix.for.sure.yes.it.does.indeed";

#[test]
fn stack_encoded_context_matches_the_formats() {
    let ctx = SpanContext {
        trace_id: [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        sampled: true,
    };
    let parent = [0xab, 0, 0, 0, 0, 0, 0, 0x01];
    assert_eq!(hex(&ctx.span_id), SPAN);
    let mut h = HeaderMap::new();
    Propagation::new(&ctx, parent, B3Format::Single).apply(&mut h);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-01").as_str());
    assert_eq!(
        h["b3"],
        format!("{TRACE}-{SPAN}-1-ab00000000000001").as_str()
    );
    let unsampled = SpanContext {
        sampled: false,
        ..ctx.clone()
    };
    let mut h = headers(&[("x-b3-flags", "1")]);
    Propagation::new(&unsampled, parent, B3Format::Multi).apply(&mut h);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-00").as_str());
    assert_eq!(h["x-b3-traceid"], TRACE);
    assert_eq!(h["x-b3-spanid"], SPAN);
    assert_eq!(h["x-b3-parentspanid"], "ab00000000000001");
    assert_eq!(h["x-b3-sampled"], "0");
    assert!(!h.contains_key("x-b3-flags"));
}

#[test]
fn propagation_writes_the_fields_it_replaces() {
    let ctx = SpanContext {
        trace_id: [7; 16],
        span_id: [9; 8],
        sampled: true,
    };
    for format in [B3Format::None, B3Format::Single, B3Format::Multi] {
        let p = Propagation::new(&ctx, [1; 8], format);
        let mut written = HeaderMap::new();
        p.for_each(|name, value| {
            assert!(p.replaces(name), "{name}");
            written.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
        });
        let mut applied = headers(&[("x-b3-flags", "1"), ("x-other", "1")]);
        p.apply(&mut applied);
        assert_eq!(applied["x-other"], "1", "{format:?}");
        assert_eq!(
            applied.contains_key("x-b3-flags"),
            format != B3Format::Multi,
            "multi-header B3 drops the caller's flags"
        );
        applied.remove("x-other");
        applied.remove("x-b3-flags");
        assert_eq!(written, applied, "{format:?}");
        assert!(!p.replaces(&HeaderName::from_static("x-other")));
    }
}
