//! HTTP client for the registry: the Cloud Map calls sidecars and the runner make, plus the
//! watch long-poll and heartbeats.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::wire::NamespaceSnapshot;

/// Cloud Map's JSON 1.1 target prefix.
const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
/// Time allowed for a non-watch call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a watch is given past its `wait_ms`.
const WATCH_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("request to registry failed")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("reading registry response failed")]
    Body(#[source] hyper::Error),
    #[error("registry did not answer within {0:?}")]
    Timeout(Duration),
    #[error("registry error {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected registry response status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot decode registry response")]
    Decode(#[source] serde_json::Error),
    #[error("registry response lacks {0}")]
    Missing(&'static str),
}

// === impl ClientError ===

impl ClientError {
    /// The AWS error code (`NamespaceNotFound`, …) when the registry answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the error is about the registry being unreachable or slow, not about the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::Body(_) | ClientError::Timeout(_) => true,
            ClientError::Status { status, .. } | ClientError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A cheap-to-clone handle on one registry.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(rename = "Message", alias = "message", default)]
    message: String,
}

// === impl Client ===

impl Client {
    /// `base_url` is `http://host:port` (a trailing `/` is ignored).
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::InvalidUrl {
                    url: base_url.to_string(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::InvalidUrl {
                url: base_url.to_string(),
                reason: "expected http://host:port".to_string(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    // --- Cloud Map calls ---

    /// Returns the id of the HTTP namespace `name`, creating it if missing.
    pub async fn ensure_http_namespace(&self, name: &str) -> Result<String, ClientError> {
        if let Some(id) = self.find_namespace(name).await? {
            return Ok(id);
        }
        let created = self
            .call(
                "CreateHttpNamespace",
                json!({ "Name": name, "CreatorRequestId": name }),
            )
            .await;
        match created {
            Ok(out) => {
                let op = str_field(&out, "OperationId")?;
                let op = self
                    .call("GetOperation", json!({ "OperationId": op }))
                    .await?;
                op.pointer("/Operation/Targets/NAMESPACE")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(ClientError::Missing("Operation.Targets.NAMESPACE"))
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("NamespaceAlreadyExists" | "DuplicateRequest")
                ) =>
            {
                self.find_namespace(name).await?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn find_namespace(&self, name: &str) -> Result<Option<String>, ClientError> {
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({
                "Filters": [{ "Name": "NAME", "Values": [name], "Condition": "EQ" }],
            });
            if let Some(t) = &token {
                req["NextToken"] = json!(t);
            }
            let out = self.call("ListNamespaces", req).await?;
            let list = out.get("Namespaces").and_then(Value::as_array);
            for ns in list.into_iter().flatten() {
                if ns.get("Name").and_then(Value::as_str) == Some(name) {
                    return Ok(ns.get("Id").and_then(Value::as_str).map(str::to_string));
                }
            }
            match out.get("NextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(None),
            }
        }
    }

    /// Returns the id of service `name` in `namespace_id`, creating it (with custom health)
    /// if missing.
    pub async fn ensure_service(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<String, ClientError> {
        if let Some(id) = self.find_service(namespace_id, name).await? {
            return Ok(id);
        }
        let created = self
            .call(
                "CreateService",
                json!({
                    "Name": name,
                    "NamespaceId": namespace_id,
                    "HealthCheckCustomConfig": { "FailureThreshold": 1 },
                }),
            )
            .await;
        match created {
            Ok(out) => out
                .pointer("/Service/Id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(ClientError::Missing("Service.Id")),
            Err(e) if e.code() == Some("ServiceAlreadyExists") => {
                self.find_service(namespace_id, name).await?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn find_service(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<Option<String>, ClientError> {
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({
                "Filters": [{ "Name": "NAMESPACE_ID", "Values": [namespace_id], "Condition": "EQ" }],
            });
            if let Some(t) = &token {
                req["NextToken"] = json!(t);
            }
            let out = self.call("ListServices", req).await?;
            let list = out.get("Services").and_then(Value::as_array);
            for svc in list.into_iter().flatten() {
                if svc.get("Name").and_then(Value::as_str) == Some(name) {
                    return Ok(svc.get("Id").and_then(Value::as_str).map(str::to_string));
                }
            }
            match out.get("NextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(None),
            }
        }
    }

    /// Registers (or re-registers, which updates) an instance.
    pub async fn register_instance(
        &self,
        service_id: &str,
        instance_id: &str,
        attributes: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        self.call(
            "RegisterInstance",
            json!({ "ServiceId": service_id, "InstanceId": instance_id, "Attributes": attributes }),
        )
        .await
        .map(drop)
    }

    pub async fn deregister_instance(
        &self,
        service_id: &str,
        instance_id: &str,
    ) -> Result<(), ClientError> {
        self.call(
            "DeregisterInstance",
            json!({ "ServiceId": service_id, "InstanceId": instance_id }),
        )
        .await
        .map(drop)
    }

    pub async fn update_custom_health(
        &self,
        service_id: &str,
        instance_id: &str,
        healthy: bool,
    ) -> Result<(), ClientError> {
        let status = if healthy { "HEALTHY" } else { "UNHEALTHY" };
        self.call(
            "UpdateInstanceCustomHealthStatus",
            json!({ "ServiceId": service_id, "InstanceId": instance_id, "Status": status }),
        )
        .await
        .map(drop)
    }

    /// Any Cloud Map operation: `op` is the bare operation name (`GetNamespace`).
    pub async fn call(&self, op: &str, body: Value) -> Result<Value, ClientError> {
        let bytes = self.call_raw(op, body).await?;
        if bytes.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Like [`Client::call`], returning the response body undecoded.
    pub async fn call_raw(&self, op: &str, body: Value) -> Result<Bytes, ClientError> {
        let body = serde_json::to_vec(&body).map_err(ClientError::Decode)?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri("/")?)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("{TARGET_PREFIX}{op}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.bad_url(e))?;
        let (status, bytes) = self.send(req, CALL_TIMEOUT).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(api_error(status, &bytes))
    }

    // --- Skiff calls ---

    /// Renews the heartbeat TTL of an instance.
    pub async fn heartbeat(
        &self,
        namespace: &str,
        service: &str,
        instance_id: &str,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/v1/instances/{}/{}/{}/heartbeat",
            encode(namespace),
            encode(service),
            encode(instance_id)
        );
        let req = Request::builder()
            .method(Method::PUT)
            .uri(self.uri(&path)?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.bad_url(e))?;
        let (status, bytes) = self.send(req, CALL_TIMEOUT).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// One long-poll: answers at once if the namespace is past `since`, else on change or
    /// after `wait` (with the same revision).
    pub async fn watch(
        &self,
        namespace: &str,
        since: u64,
        wait: Duration,
    ) -> Result<NamespaceSnapshot, ClientError> {
        let path = format!(
            "/v1/watch?namespace={}&since={since}&wait_ms={}",
            encode(namespace),
            wait.as_millis()
        );
        let req = Request::builder()
            .method(Method::GET)
            .uri(self.uri(&path)?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.bad_url(e))?;
        let (status, bytes) = self.send(req, wait + WATCH_GRACE).await?;
        if status.is_success() {
            return decode(&bytes);
        }
        Err(api_error(status, &bytes))
    }

    // --- plumbing ---

    fn uri(&self, path_and_query: &str) -> Result<Uri, ClientError> {
        format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| self.bad_url(e))
    }

    fn bad_url(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::InvalidUrl {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let fut = async {
            let resp = self.http.request(req).await.map_err(ClientError::Connect)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Body)?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(ClientError::Decode)
}

fn str_field(v: &Value, name: &'static str) -> Result<String, ClientError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(ClientError::Missing(name))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(e) if !e.kind.is_empty() => {
            let code = e.kind.rsplit('#').next().unwrap_or_default().to_string();
            ClientError::Api {
                status: status.as_u16(),
                code,
                message: e.message,
            }
        }
        _ => ClientError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_urls() {
        assert!(Client::new("http://127.0.0.1:7070").is_ok());
        assert!(Client::new("http://127.0.0.1:7070/").is_ok());
        assert!(matches!(
            Client::new("127.0.0.1:7070"),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Client::new("https://x:1"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn parses_aws_errors() {
        let e = api_error(
            StatusCode::BAD_REQUEST,
            br#"{"__type":"com.amazonaws#NamespaceNotFound","Message":"nope"}"#,
        );
        assert_eq!(e.code(), Some("NamespaceNotFound"));
        assert!(!e.is_transient());
        let e = api_error(StatusCode::BAD_GATEWAY, b"oops");
        assert!(e.is_transient());
        assert_eq!(e.code(), None);
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("prod.internal"), "prod.internal");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
