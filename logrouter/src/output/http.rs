//! The `http` output: JSON array or JSON lines, custom headers, optional gzip; any non-2xx answer is retried.

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::OutputError;
use super::format;
use crate::buffer::Batch;
use crate::config::{HttpFormat, HttpOutput};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct HttpOut {
    cfg: HttpOutput,
    client: HttpClient,
}

// === impl HttpOut ===

impl HttpOut {
    pub fn new(cfg: HttpOutput) -> Self {
        Self {
            cfg,
            client: client(),
        }
    }

    pub async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        let date = self
            .cfg
            .date_key
            .as_deref()
            .map(|k| (k, self.cfg.date_format));
        let mut body = Vec::new();
        let array = self.cfg.format == HttpFormat::JsonArray;
        if array {
            body.push(b'[');
        }
        let mut first = true;
        for b in batches {
            format::each_record(b, |t, rec| {
                if array && !first {
                    body.push(b',');
                }
                first = false;
                format::record_json(&mut body, t, rec, date)?;
                if !array {
                    body.push(b'\n');
                }
                Ok(())
            })?;
        }
        if array {
            body.push(b']');
        }
        let content_type = if array {
            "application/json"
        } else {
            "application/x-ndjson"
        };
        let url = format!("http://{}:{}{}", self.cfg.host, self.cfg.port, self.cfg.uri);
        let mut headers: Vec<(String, String)> = vec![("content-type".into(), content_type.into())];
        headers.extend(self.cfg.headers.iter().cloned());
        post(&self.client, &url, headers, body, self.cfg.gzip).await
    }
}

/// POSTs `body` (gzipped when asked); `Ok` on 2xx.
pub async fn post(
    client: &HttpClient,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    gzip: bool,
) -> Result<(), OutputError> {
    let mut req = http::Request::post(url);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body)?;
        enc.finish()?
    } else {
        body
    };
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| OutputError::Http(e.to_string()))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| OutputError::Http("timed out".into()))?
        .map_err(|e| OutputError::Http(e.to_string()))?;
    let status = resp.status();
    // read the body so the connection can be reused
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(OutputError::Status(status.as_u16()))
    }
}
