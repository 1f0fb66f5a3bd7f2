//! The exporter task: takes chunks of encoded spans from the span queue and sends them over
//! OTLP (HTTP/protobuf or gRPC).
//!
//! It wakes when a worker's chunk holds a full batch, when the schedule delay passes (partial
//! batches), and on a flush; it swaps an empty chunk in and sends the full one, so while an
//! export is in flight the chunks absorb new spans, and once full the request path drops (and
//! counts) them instead of waiting. A failed or timed-out export drops its spans (counted too):
//! spans are telemetry, never worth memory or latency when the collector is away.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, oneshot};

use super::otlp::{self, Body, Frame};
use super::queue::{Chunk, SpanQueue};
use super::{ExportSettings, OtlpProtocol, SpanMetrics};

/// The gRPC method of OTLP trace export.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Bounds of a new chunk's first room (it is sized like the last one taken).
const CHUNK_MIN: usize = 4 << 10;
const CHUNK_MAX: usize = 1 << 20;
/// Sent chunks kept for reuse: refilling the same few buffers keeps the request path writing
/// to memory that is still in cache, where a new one would be cold.
const SPARES: usize = 4;

struct Exporter {
    settings: ExportSettings,
    client: Client<HttpConnector, Full<Body>>,
    metrics: SpanMetrics,
    frame: Frame,
    queue: Arc<SpanQueue>,
    /// Empty chunks for the next takes to swap in.
    spares: Vec<Vec<u8>>,
    /// Span bytes of the last chunk taken: the next fresh chunk's room.
    room: usize,
    /// The last export failed (logged once per streak).
    failing: bool,
}

/// Runs until every tracer is gone, exporting what is left at the end.
pub(super) async fn run(
    settings: ExportSettings,
    frame: Frame,
    queue: Arc<SpanQueue>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
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
        room: CHUNK_MIN,
        spares: Vec::with_capacity(SPARES),
        frame,
        queue,
        settings,
        client,
        metrics,
        failing: false,
    };
    let queue = exporter.queue.clone();
    loop {
        tokio::select! {
            _ = queue.full.notified() => exporter.export().await,
            _ = tick.tick() => exporter.export().await,
            flush = flushes.recv() => {
                exporter.export().await;
                match flush {
                    Some(done) => {
                        let _ = done.send(());
                    }
                    None => return,
                }
            }
        }
        // Behind: batches filled up during the export go at once.
        while queue.has_batch() {
            exporter.export().await;
        }
    }
}

/// A chunk's spans cut into requests of at most `batch` spans: byte ranges and span counts
/// (one range for a chunk of one batch; the entries are walked only for a chunk that fell
/// behind).
fn batches(chunk: &Chunk, batch: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    if chunk.spans <= batch {
        return vec![(0..chunk.bytes.len(), chunk.spans)];
    }
    let mut out = Vec::with_capacity(chunk.spans.div_ceil(batch));
    let (mut from, mut n) = (0, 0);
    for end in otlp::span_ends(&chunk.bytes) {
        n += 1;
        if n == batch || end == chunk.bytes.len() {
            out.push((from..end, n));
            (from, n) = (end, 0);
        }
    }
    out
}

// === impl Exporter ===

impl Exporter {
    /// Takes every worker's spans and sends them.
    async fn export(&mut self) {
        for i in 0..self.queue.shards() {
            let fresh = self
                .spares
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.room));
            match self.queue.take(i, fresh) {
                Ok(chunk) => self.send_chunk(chunk).await,
                Err(fresh) => self.spares.push(fresh),
            }
        }
    }

    /// Sends a chunk: whole when it is one batch, else one request per batch (slices of it,
    /// not copies); then keeps its buffer for reuse.
    async fn send_chunk(&mut self, chunk: Chunk) {
        self.room = chunk.bytes.len().clamp(CHUNK_MIN, CHUNK_MAX);
        let grpc = self.settings.protocol == OtlpProtocol::Grpc;
        let parts = batches(&chunk, self.queue.batch());
        let spans = Bytes::from(chunk.bytes);
        for (range, n) in parts {
            let body = self.frame.request(spans.slice(range), grpc);
            self.send_counted(body, n).await;
        }
        // The client has let go of the body once the request was written (a request that
        // failed midway may still hold it: then the buffer is simply freed).
        if let Ok(mut back) = spans.try_into_mut()
            && self.spares.len() < SPARES
            && back.capacity() <= CHUNK_MAX * 2
        {
            back.clear();
            self.spares.push(Vec::from(back));
        }
    }

    /// Sends one request of `n` spans; counts them exported or dropped.
    async fn send_counted(&mut self, body: Body, n: usize) {
        let n = n as u64;
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
    async fn send(&self, body: Body) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_behind_goes_out_in_batches() {
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let queue = SpanQueue::new(1, 5, 2, dropped.clone());
        for i in 0..7u8 {
            queue.push(&[i; 3]);
        }
        assert_eq!(dropped.get(), 2, "a full chunk drops what comes after");
        assert!(queue.has_batch());
        let chunk = queue.take(0, Vec::new()).ok().unwrap();
        assert_eq!(chunk.spans, 5);
        assert!(queue.take(0, Vec::new()).is_err(), "taken: empty");
        let parts = batches(&chunk, 2);
        let counts: Vec<usize> = parts.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [2, 2, 1]);
        // Each part is whole `spans` entries (tag, length 3, the bytes) in order.
        let mut next = 0u8;
        for (range, n) in parts {
            let part = &chunk.bytes[range];
            assert_eq!(part.len(), n * 5);
            for entry in part.chunks(5) {
                let mut expected = Vec::new();
                otlp::push_span(&mut expected, &[next; 3]);
                assert_eq!(entry, expected);
                next += 1;
            }
        }
        assert_eq!(next, 5);
    }
}
