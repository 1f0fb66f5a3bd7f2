//! The exporter task: batches finished spans and sends them over OTLP (HTTP/protobuf or gRPC).
//!
//! It owns the receiving end of the bounded span queue; while an export is in flight the queue
//! absorbs new spans, and once full the request path drops (and counts) them instead of waiting.
//! A failed or timed-out export drops its batch (counted too): spans are telemetry, never worth
//! memory or latency when the collector is away.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;

use super::otlp::Batch;
use super::{ExportSettings, Msg, OtlpProtocol, SpanMetrics};

/// While spans keep coming, the queue is drained this often (at the default queue size of
/// 2,048, up to ~200,000 spans a second before any is dropped).
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The gRPC method of OTLP trace export.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Exporter {
    settings: ExportSettings,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: SpanMetrics,
    /// Spans are encoded as they arrive, so an export never stalls the thread encoding
    /// a whole batch at once.
    batch: Batch,
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
        batch: Batch::new(&resource),
        settings,
        client,
        metrics,
        failing: false,
    };
    loop {
        // Quiet: sleep until a span comes (one wake-up) or a partial batch is due.
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = tick.tick() => {
                exporter.flush().await;
                continue;
            }
        };
        let Some(msg) = msg else {
            exporter.flush().await;
            return;
        };
        exporter.handle(msg).await;
        // Busy: take what the request path queued every `DRAIN_TICK`, without asking to be
        // woken for each span (a wake-up per span cost more than encoding it).
        loop {
            tokio::time::sleep(DRAIN_TICK).await;
            let mut drained = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        drained += 1;
                        exporter.handle(msg).await;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        exporter.flush().await;
                        return;
                    }
                }
            }
            if futures_util::FutureExt::now_or_never(tick.tick()).is_some() {
                exporter.flush().await;
            }
            if drained == 0 {
                break;
            }
        }
    }
}

// === impl Exporter ===

impl Exporter {
    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Span(span) => {
                self.batch.push(&span);
                if self.batch.len() >= self.settings.batch_size {
                    self.flush().await;
                }
            }
            Msg::Flush(done) => {
                self.flush().await;
                let _ = done.send(());
            }
        }
    }

    /// Sends the batch (if any); counts its spans exported or dropped.
    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let body = self
            .batch
            .take_request(self.settings.protocol == OtlpProtocol::Grpc);
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

    /// Posts one request body (already framed for gRPC).
    async fn send(&self, body: Bytes) -> Result<(), String> {
        let req = match self.settings.protocol {
            OtlpProtocol::HttpProtobuf => Request::post(self.settings.endpoint.clone())
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body)),
            OtlpProtocol::Grpc => {
                let mut uri = self.settings.endpoint.clone().into_parts();
                uri.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH));
                let uri = http::Uri::from_parts(uri).map_err(|e| e.to_string())?;
                Request::post(uri)
                    .version(http::Version::HTTP_2)
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header(header::TE, "trailers")
                    .body(Full::new(body))
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
