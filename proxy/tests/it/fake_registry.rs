//! A small in-memory stand-in for the registry's Cloud Map and watch APIs.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use skiff_registry_client::{HealthStatus, InstanceSnapshot, NamespaceSnapshot, ServiceSnapshot};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// (namespace id, name, instance id → attributes)
pub type ServiceEntry = (String, String, BTreeMap<String, BTreeMap<String, String>>);

#[derive(Default)]
pub struct State {
    pub revision: u64,
    /// name → id
    pub namespaces: BTreeMap<String, String>,
    /// service id → (namespace id, name, instances: id → attributes)
    pub services: BTreeMap<String, ServiceEntry>,
    pub heartbeats: HashMap<String, usize>,
    /// instance id → custom health (`HEALTHY` / `UNHEALTHY`)
    pub health: HashMap<String, String>,
}

pub struct FakeRegistry {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (st, ch) = (state.clone(), changed.clone());
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stop_rx => return, // dropping `conns` aborts every connection
                };
                let (st, ch) = (st.clone(), ch.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (st, ch) = (st.clone(), ch.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, ch).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeRegistry {
            url: format!("http://{addr}"),
            state,
            changed,
            stop: Some(stop_tx),
        }
    }

    /// The registry goes away: listener closed, open connections cut.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Attributes of `instance` in service `service`, if registered.
    pub fn instance(&self, service: &str, instance: &str) -> Option<BTreeMap<String, String>> {
        let st = self.state.lock().unwrap();
        st.services
            .values()
            .find(|(_, name, _)| name == service)
            .and_then(|(_, _, i)| i.get(instance).cloned())
    }

    pub fn health(&self, instance: &str) -> Option<String> {
        self.state.lock().unwrap().health.get(instance).cloned()
    }

    pub fn heartbeats(&self, instance: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .heartbeats
            .get(instance)
            .copied()
            .unwrap_or(0)
    }

    pub fn notify(&self) {
        self.changed.notify_waiters();
    }
}

fn reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    changed: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if req.method() == Method::PUT && path.ends_with("/heartbeat") {
        let id = path
            .trim_end_matches("/heartbeat")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned();
        *st.lock().unwrap().heartbeats.entry(id).or_default() += 1;
        return reply(StatusCode::OK, json!({}));
    }
    if req.method() == Method::GET && path == "/v1/watch" {
        let q: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let ns = q.get("namespace").copied().unwrap_or("").to_owned();
        let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        let wait = Duration::from_millis(
            q.get("wait_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1000),
        )
        .min(Duration::from_millis(300));
        let notified = changed.notified();
        if st.lock().unwrap().revision <= since {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        let st = st.lock().unwrap();
        let ns_id = st.namespaces.get(&ns).cloned().unwrap_or_default();
        let services = st
            .services
            .iter()
            .filter(|(_, (nid, _, _))| *nid == ns_id)
            .map(|(id, (_, name, inst))| ServiceSnapshot {
                name: name.clone(),
                id: id.clone(),
                revision: st.revision,
                instances: inst
                    .iter()
                    .map(|(iid, attrs)| InstanceSnapshot {
                        id: iid.clone(),
                        attributes: attrs.clone(),
                        health: match st.health.get(iid).map(String::as_str) {
                            Some("UNHEALTHY") => HealthStatus::Unhealthy,
                            _ => HealthStatus::Healthy,
                        },
                    })
                    .collect(),
            })
            .collect();
        let snap = NamespaceSnapshot {
            namespace: ns,
            namespace_id: ns_id,
            namespace_type: "HTTP".into(),
            revision: st.revision,
            services,
        };
        return reply(StatusCode::OK, serde_json::to_value(snap).unwrap());
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let op = target.rsplit('.').next().unwrap_or("").to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let input: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let s = |k: &str| {
        input
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut st = st.lock().unwrap();
    let out = match op.as_str() {
        "ListNamespaces" => {
            let list: Vec<Value> = st
                .namespaces
                .iter()
                .map(|(n, id)| json!({"Name": n, "Id": id}))
                .collect();
            json!({ "Namespaces": list })
        }
        "CreateHttpNamespace" => {
            let name = s("Name");
            let id = format!("ns-{}", st.namespaces.len() + 1);
            st.namespaces.insert(name, id.clone());
            json!({ "OperationId": id })
        }
        "GetOperation" => json!({ "Operation": { "Targets": { "NAMESPACE": s("OperationId") } } }),
        "ListServices" => {
            let filter = input
                .pointer("/Filters/0/Values/0")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let list: Vec<Value> = st
                .services
                .iter()
                .filter(|(_, (ns, _, _))| *ns == filter)
                .map(|(id, (_, n, _))| json!({"Name": n, "Id": id}))
                .collect();
            json!({ "Services": list })
        }
        "CreateService" => {
            let id = format!("srv-{}", st.services.len() + 1);
            st.services
                .insert(id.clone(), (s("NamespaceId"), s("Name"), BTreeMap::new()));
            json!({ "Service": { "Id": id } })
        }
        "UpdateInstanceCustomHealthStatus" => {
            st.health.insert(s("InstanceId"), s("Status"));
            st.revision += 1;
            changed.notify_waiters();
            json!({})
        }
        "RegisterInstance" | "DeregisterInstance" => {
            let (sid, iid) = (s("ServiceId"), s("InstanceId"));
            let attrs: BTreeMap<String, String> =
                serde_json::from_value(input.get("Attributes").cloned().unwrap_or(json!({})))
                    .unwrap_or_default();
            let Some(svc) = st.services.get_mut(&sid) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"__type": "ServiceNotFound", "Message": sid}),
                );
            };
            if op == "RegisterInstance" {
                svc.2.insert(iid, attrs);
            } else {
                svc.2.remove(&iid);
            }
            st.revision += 1;
            changed.notify_waiters();
            json!({ "OperationId": "op" })
        }
        other => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"__type": "InvalidInput", "Message": other}),
            );
        }
    };
    reply(StatusCode::OK, out)
}
