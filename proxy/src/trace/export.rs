//! The exporter task: batches finished spans and sends them over OTLP (HTTP/protobuf or gRPC).
//!
//! It owns the receiving end of the bounded span queue; while an export is in flight the queue
//! absorbs new spans, and once full the request path drops (and counts) them instead of waiting.
//! A failed or timed-out export drops its batch (counted too): spans are telemetry, never worth
//! memory or latency when the collector is away.

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;

use super::otlp::encode_request;
use super::{ExportSettings, Msg, OtlpProtocol, SpanData, SpanMetrics};

/// The gRPC method of OTLP trace export.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Exporter {
    settings: ExportSettings,
    resource: Vec<(String, String)>,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: SpanMetrics,
    batch: Vec<SpanData>,
    /// The last export failed (logged once per streak).
    failing: bool,
}

/// Runs until every sender is gone, exporting what is left at the end.
pub(super) async fn run(
    settings: ExportSettings,
    resource: Vec<(String, String)>,
    mut rx: mpsc::Receiver<Msg>,
    metrics: SpanMetrics,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(settings.protocol == OtlpProtocol::Grpc)
        .build(connector);
    let mut tick =
        tokio::time::interval(settings.interval.max(std::time::Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut exporter = Exporter {
        batch: Vec::with_capacity(settings.batch_size),
        settings,
        resource,
        client,
        metrics,
        failing: false,
    };
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => {
                    exporter.flush().await;
                    return;
                }
                Some(Msg::Span(span)) => {
                    exporter.batch.push(span);
                    if exporter.batch.len() >= exporter.settings.batch_size {
                        exporter.flush().await;
                    }
                }
                Some(Msg::Flush(done)) => {
                    exporter.flush().await;
                    let _ = done.send(());
                }
            },
            _ = tick.tick() => exporter.flush().await,
        }
    }
}

// === impl Exporter ===

impl Exporter {
    /// Sends the batch (if any); counts its spans exported or dropped.
    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let body = encode_request(&self.resource, &self.batch);
        self.batch.clear();
        let sent = tokio::time::timeout(self.settings.timeout, self.send(body)).await;
        let result = sent.unwrap_or_else(|_| Err("timed out".to_owned()));
        match result {
            Ok(()) => {
                self.metrics.exported.inc_by(n);
                if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.settings.endpoint, "otlp export recovered");
                }
            }
            Err(error) => {
                self.metrics.dropped.inc_by(n);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(endpoint = %self.settings.endpoint, %error, spans = n, "otlp export failed: dropping spans until the collector answers");
                } else {
                    tracing::debug!(%error, spans = n, "otlp export failed");
                }
            }
        }
    }

    async fn send(&self, message: Vec<u8>) -> Result<(), String> {
        let req = match self.settings.protocol {
            OtlpProtocol::HttpProtobuf => Request::post(self.settings.endpoint.clone())
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(Bytes::from(message))),
            OtlpProtocol::Grpc => {
                let mut uri = self.settings.endpoint.clone().into_parts();
                uri.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH));
                let uri = http::Uri::from_parts(uri).map_err(|e| e.to_string())?;
                // Length-prefixed message: compressed flag (0), then the big-endian length.
                let mut framed = BytesMut::with_capacity(5 + message.len());
                framed.put_u8(0);
                framed.put_u32(message.len() as u32);
                framed.put_slice(&message);
                Request::post(uri)
                    .version(http::Version::HTTP_2)
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header(header::TE, "trailers")
                    .body(Full::new(framed.freeze()))
            }
        }
        .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        match self.settings.protocol {
            OtlpProtocol::HttpProtobuf if parts.status.is_success() => Ok(()),
            OtlpProtocol::HttpProtobuf => Err(format!("collector answered {}", parts.status)),
            OtlpProtocol::Grpc => {
                let status = parts
                    .headers
                    .get("grpc-status")
                    .or_else(|| collected.trailers().and_then(|t| t.get("grpc-status")))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match (parts.status, status.as_deref()) {
                    (StatusCode::OK, Some("0")) => Ok(()),
                    (s, g) => Err(format!("collector answered {s}, grpc-status {g:?}")),
                }
            }
        }
    }
}
