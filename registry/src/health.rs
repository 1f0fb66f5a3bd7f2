//! Health checking run by the registry: heartbeat TTL expiry (and removal after a grace
//! period) and active HTTP/TCP checks for services with a `HealthCheckConfig`.
//!
//! Custom health (`UpdateInstanceCustomHealthStatus`) needs no loop: it is a plain write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skiff_registry_client::{HealthStatus, attrs};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::model::HealthCheckType;

/// How often heartbeat leases are checked.
const HEARTBEAT_TICK: Duration = Duration::from_millis(200);
/// Most probes in flight at once.
const MAX_CONCURRENT_PROBES: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct HealthOptions {
    /// Heartbeat-lost instances are deregistered after this long.
    pub instance_removal_grace: Duration,
    /// Time between two active checks of one instance.
    pub check_interval: Duration,
    pub check_timeout: Duration,
}

/// Expires heartbeats until the task is dropped.
pub async fn run_heartbeats(catalog: Arc<Catalog>, opts: HealthOptions) {
    let mut tick = tokio::time::interval(HEARTBEAT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match catalog
            .expire_heartbeats(Instant::now(), opts.instance_removal_grace)
            .await
        {
            Ok((0, 0)) => {}
            Ok((lapsed, removed)) => tracing::info!(lapsed, removed, "heartbeat expiry"),
            Err(e) => tracing::warn!(error = %e, "heartbeat expiry failed"),
        }
    }
}

#[derive(Debug, Default)]
struct Probe {
    successes: u32,
    failures: u32,
    next: Option<Instant>,
}

struct Target {
    service_id: String,
    instance_id: String,
    kind: HealthCheckType,
    addr: SocketAddr,
    path: String,
    threshold: u32,
    current: Option<HealthStatus>,
}

/// Runs active checks until the task is dropped.
pub async fn run_active_checks(catalog: Arc<Catalog>, opts: HealthOptions) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(opts.check_timeout));
    let client: HyperClient<HttpConnector, Empty<Bytes>> =
        HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
    let mut probes: HashMap<(String, String), Probe> = HashMap::new();
    let tick_every = opts
        .check_interval
        .min(Duration::from_millis(500))
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due = due_targets(&catalog, &mut probes, now);
        if due.is_empty() {
            continue;
        }
        let mut set = JoinSet::new();
        let mut results = Vec::new();
        for t in due {
            if set.len() >= MAX_CONCURRENT_PROBES
                && let Some(Ok(r)) = set.join_next().await
            {
                results.push(r);
            }
            let client = client.clone();
            set.spawn(async move {
                let outcome = probe(&client, &t, opts.check_timeout).await;
                (t, outcome)
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                results.push(r);
            }
        }
        let mut verdicts = Vec::new();
        for (t, outcome) in results {
            let p = probes
                .entry((t.service_id.clone(), t.instance_id.clone()))
                .or_default();
            p.next = Some(Instant::now() + opts.check_interval);
            let verdict = match outcome {
                Ok(()) => {
                    p.successes += 1;
                    p.failures = 0;
                    let flip =
                        t.current == Some(HealthStatus::Unknown) || p.successes >= t.threshold;
                    (flip && t.current != Some(HealthStatus::Healthy)).then(|| {
                        (
                            HealthStatus::Healthy,
                            format!("{:?} check of {} passed", t.kind, t.addr),
                        )
                    })
                }
                Err(why) => {
                    p.failures += 1;
                    p.successes = 0;
                    let flip =
                        t.current == Some(HealthStatus::Unknown) || p.failures >= t.threshold;
                    (flip && t.current != Some(HealthStatus::Unhealthy)).then(|| {
                        (
                            HealthStatus::Unhealthy,
                            format!("{:?} check of {} failed: {why}", t.kind, t.addr),
                        )
                    })
                }
            };
            if let Some((status, reason)) = verdict {
                verdicts.push((t.service_id, t.instance_id, status, reason));
            }
        }
        if let Err(e) = catalog.set_active_health(verdicts).await {
            tracing::warn!(error = %e, "recording active health check results failed");
        }
    }
}

fn due_targets(
    catalog: &Catalog,
    probes: &mut HashMap<(String, String), Probe>,
    now: Instant,
) -> Vec<Target> {
    let st = catalog.read();
    let mut out = Vec::new();
    let mut live = std::collections::HashSet::new();
    for svc in st.services.values() {
        let Some(hc) = &svc.health_check_config else {
            continue;
        };
        for i in st.instances_of(&svc.id) {
            let key = (svc.id.clone(), i.id.clone());
            live.insert(key.clone());
            let p = probes.entry(key).or_default();
            if p.next.is_some_and(|n| n > now) {
                continue;
            }
            let Some(ip) = i
                .attributes
                .get(attrs::AWS_INSTANCE_IPV4)
                .and_then(|v| v.parse::<std::net::Ipv4Addr>().ok())
            else {
                continue;
            };
            let port = i
                .attributes
                .get(attrs::AWS_INSTANCE_PORT)
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(80);
            out.push(Target {
                service_id: svc.id.clone(),
                instance_id: i.id.clone(),
                kind: hc.kind,
                addr: SocketAddr::from((ip, port)),
                path: hc.resource_path.clone().unwrap_or_else(|| "/".to_string()),
                threshold: hc.failure_threshold.unwrap_or(1).max(1),
                current: i.active,
            });
        }
    }
    probes.retain(|k, _| live.contains(k));
    out
}

async fn probe(
    client: &HyperClient<HttpConnector, Empty<Bytes>>,
    t: &Target,
    timeout: Duration,
) -> Result<(), String> {
    match t.kind {
        // No TLS stack in the registry: an HTTPS check verifies the port accepts connections.
        HealthCheckType::Tcp | HealthCheckType::Https => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(t.addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect: {e}")),
                Err(_) => Err(format!("connect timed out after {timeout:?}")),
            }
        }
        HealthCheckType::Http => {
            let uri = format!("http://{}{}", t.addr, t.path);
            let req = hyper::Request::get(uri)
                .header("user-agent", "skiff-registry-health-check")
                .body(Empty::new());
            let req = req.map_err(|e| format!("bad request: {e}"))?;
            match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(resp)) if (200..400).contains(&resp.status().as_u16()) => Ok(()),
                Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
                Ok(Err(e)) => Err(format!("request: {e}")),
                Err(_) => Err(format!("timed out after {timeout:?}")),
            }
        }
    }
}
