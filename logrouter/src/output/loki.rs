//! The `loki` output: Loki's JSON push API, static labels, each record's JSON as the line.

use super::OutputError;
use super::format;
use super::http::{HttpClient, client, post};
use crate::buffer::Batch;
use crate::msgpack;

pub struct LokiOut {
    url: String,
    labels: Vec<(String, String)>,
    tenant_id: Option<String>,
    client: HttpClient,
}

// === impl LokiOut ===

impl LokiOut {
    pub fn new(
        host: &str,
        port: u16,
        uri: &str,
        labels: Vec<(String, String)>,
        tenant_id: Option<String>,
    ) -> Self {
        Self {
            url: format!("http://{host}:{port}{uri}"),
            labels,
            tenant_id,
            client: client(),
        }
    }

    pub async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"streams\":[{\"stream\":{");
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            msgpack::write_json_str(&mut body, k);
            body.push(b':');
            msgpack::write_json_str(&mut body, v);
        }
        body.extend_from_slice(b"},\"values\":[");
        let mut first = true;
        let mut line = Vec::new();
        for b in batches {
            format::each_record(b, |t, rec| {
                if !first {
                    body.push(b',');
                }
                first = false;
                let ns = i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
                body.extend_from_slice(format!("[\"{ns}\",").as_bytes());
                line.clear();
                format::record_json(&mut line, t, rec, None)?;
                msgpack::write_json_str(&mut body, &String::from_utf8_lossy(&line));
                body.push(b']');
                Ok(())
            })?;
        }
        body.extend_from_slice(b"]}]}");
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(t) = &self.tenant_id {
            headers.push(("x-scope-orgid".into(), t.clone()));
        }
        post(&self.client, &self.url, headers, body, false).await
    }
}
