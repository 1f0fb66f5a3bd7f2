//! The few Cloud Map calls the benchmark makes (AWS JSON 1.1 over plain HTTP), and a bounded fan-out to make many at once.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::LoadtestError;

/// `X-Amz-Target` is this prefix and the operation.
pub const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
/// The AWS JSON 1.1 content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The port every registered instance advertises.
pub const INSTANCE_PORT: &str = "8080";

/// The headers of a call to `operation`, as `(name, value)` pairs (for the load generator too).
pub fn headers(operation: &str) -> Vec<(String, String)> {
    vec![
        (
            "x-amz-target".to_string(),
            format!("{TARGET_PREFIX}{operation}"),
        ),
        ("content-type".to_string(), CONTENT_TYPE.to_string()),
    ]
}

/// A pooled keep-alive client of one registry.
#[derive(Clone)]
pub struct CloudMap {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
}

// === impl CloudMap ===

impl CloudMap {
    /// Must be created on the runtime that makes the calls (it spawns connection tasks there).
    pub fn new(http_addr: SocketAddr) -> CloudMap {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        CloudMap {
            client,
            url: format!("http://{http_addr}/"),
        }
    }

    /// One call; the parsed JSON answer, or an error naming the operation and the AWS error.
    pub async fn call(&self, operation: &str, body: &Value) -> Result<Value, LoadtestError> {
        let failed = |reason: String| LoadtestError::Process {
            what: format!("cloud map {operation}"),
            reason,
        };
        let mut request = Request::post(&self.url);
        for (name, value) in headers(operation) {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|error| failed(error.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| failed(format!("request failed: {error}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| failed(format!("reading the answer: {error}")))?
                .to_bytes();
            Ok::<_, LoadtestError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
        if status != StatusCode::OK {
            return Err(failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|error| failed(format!("answer is not JSON: {error}")))
    }

    /// Creates a `DNS_PRIVATE` namespace and returns its id (looked up with `ListNamespaces`, as
    /// the creation answers an operation id).
    pub async fn create_dns_namespace(&self, name: &str) -> Result<String, LoadtestError> {
        self.call(
            "CreatePrivateDnsNamespace",
            &json!({"Name": name, "Vpc": "vpc-local", "CreatorRequestId": format!("bench-{name}")}),
        )
        .await?;
        let started = Instant::now();
        loop {
            let listed = self.call("ListNamespaces", &json!({})).await?;
            if let Some(id) = namespace_id(&listed, name) {
                return Ok(id);
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(LoadtestError::Process {
                    what: "cloud map ListNamespaces".into(),
                    reason: format!("namespace {name} not listed 5 s after its creation"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a service with an A record of TTL 60; its id.
    pub async fn create_service(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<String, LoadtestError> {
        let answer = self
            .call(
                "CreateService",
                &json!({
                    "Name": name,
                    "NamespaceId": namespace_id,
                    "DnsConfig": {"DnsRecords": [{"Type": "A", "TTL": super::zone::TTL}]},
                }),
            )
            .await?;
        answer["Service"]["Id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| LoadtestError::Process {
                what: "cloud map CreateService".into(),
                reason: format!("no Service.Id in {answer}"),
            })
    }

    /// Registers (or re-registers) an instance at `ip`:8080.
    pub async fn register(
        &self,
        service_id: &str,
        instance_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), LoadtestError> {
        self.call(
            "RegisterInstance",
            &register_body(service_id, instance_id, ip),
        )
        .await
        .map(drop)
    }
}

/// The body of a `RegisterInstance` call.
pub fn register_body(service_id: &str, instance_id: &str, ip: Ipv4Addr) -> Value {
    json!({
        "ServiceId": service_id,
        "InstanceId": instance_id,
        "Attributes": {"AWS_INSTANCE_IPV4": ip.to_string(), "AWS_INSTANCE_PORT": INSTANCE_PORT},
    })
}

/// The body of a `DiscoverInstances` call.
pub fn discover_body(namespace: &str, service: &str) -> Value {
    json!({"NamespaceName": namespace, "ServiceName": service})
}

/// The id of the namespace called `name` in a `ListNamespaces` answer.
pub fn namespace_id(listed: &Value, name: &str) -> Option<String> {
    listed["Namespaces"]
        .as_array()?
        .iter()
        .find(|namespace| namespace["Name"].as_str() == Some(name))?["Id"]
        .as_str()
        .map(str::to_string)
}

/// Runs `call(i)` for every `i` in `0..count`, at most `concurrency` at a time; the results in
/// index order.
pub async fn fan_out<T, F, Fut>(
    count: usize,
    concurrency: usize,
    call: F,
) -> Vec<Result<T, LoadtestError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, LoadtestError>> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (call, next) = (call.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return done;
                }
                done.push((index, call(index).await));
            }
        });
    }
    let mut results: Vec<Option<Result<T, LoadtestError>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        let Ok(done) = joined else { continue };
        for (index, result) in done {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(LoadtestError::Process {
                    what: "cloud map call".into(),
                    reason: "its task failed".into(),
                })
            })
        })
        .collect()
}
