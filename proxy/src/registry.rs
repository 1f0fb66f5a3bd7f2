//! The registry seen from a sidecar: discovery from the watch API, and this task's
//! registration (ensure namespace + services, register once the app is ready, heartbeat,
//! deregister on drain).
//!
//! The watcher (`skiff_registry_client::spawn_watcher_with_state`) keeps the last snapshot
//! when the registry is unreachable, so traffic keeps flowing to the last known endpoints;
//! this module says so through `/ready` details and `skiff_proxy_discovery_stale`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_registry_client::{
    Client, HealthStatus, NamespaceSnapshot, attrs, spawn_watcher_with_state,
};
use tokio::sync::watch;

use crate::admin::Status;
use crate::discovery::{Alias, AppProtocol, Discovery, EndpointInfo, ServiceInfo, Snapshot};
use crate::metrics::Metrics;

/// Converts the registry's view of a namespace into the proxy's discovery snapshot.
///
/// Endpoints come from `AWS_INSTANCE_IPV4` (else `AWS_INSTANCE_IPV6`) and `AWS_INSTANCE_PORT`;
/// aliases from the union of the instances' `SKIFF_CLIENT_ALIASES`; the protocol from
/// `SKIFF_APP_PROTOCOL` (HTTP when absent). Instances without an address are skipped.
pub fn snapshot_from_namespace(ns: &NamespaceSnapshot) -> Snapshot {
    let services = ns
        .services
        .iter()
        .map(|svc| {
            let mut aliases: Vec<Alias> = Vec::new();
            let mut protocol = None;
            let mut endpoints = Vec::with_capacity(svc.instances.len());
            for inst in &svc.instances {
                let a = &inst.attributes;
                if let Some(list) = a.get(attrs::SKIFF_CLIENT_ALIASES) {
                    for alias in list.split(',').filter(|s| !s.trim().is_empty()) {
                        match alias.parse::<Alias>() {
                            Ok(alias) if !aliases.contains(&alias) => aliases.push(alias),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(service = %svc.name, error = %e, "bad client alias")
                            }
                        }
                    }
                }
                if protocol.is_none() {
                    protocol = a
                        .get(attrs::SKIFF_APP_PROTOCOL)
                        .and_then(|p| p.parse::<AppProtocol>().ok());
                }
                let ip = a
                    .get(attrs::AWS_INSTANCE_IPV4)
                    .or_else(|| a.get(attrs::AWS_INSTANCE_IPV6))
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                let port = a
                    .get(attrs::AWS_INSTANCE_PORT)
                    .and_then(|p| p.parse::<u16>().ok());
                let (Some(ip), Some(port)) = (ip, port) else {
                    continue;
                };
                endpoints.push(EndpointInfo {
                    id: inst.id.clone(),
                    addr: SocketAddr::new(ip, port),
                    healthy: inst.health == HealthStatus::Healthy,
                    draining: a.get(attrs::SKIFF_DRAINING).is_some_and(|d| d == "true"),
                });
            }
            ServiceInfo {
                name: svc.name.clone(),
                protocol: protocol.unwrap_or_default(),
                aliases,
                endpoints,
            }
        })
        .collect();
    Snapshot {
        namespace: ns.namespace.clone(),
        revision: ns.revision,
        services,
    }
}

/// Watches `namespace` and feeds the proxy's discovery channel; reports the watch's health.
pub(crate) fn spawn_discovery(
    client: Client,
    namespace: &str,
    status: Arc<Status>,
    metrics: Metrics,
) -> Discovery {
    let (mut snaps, mut state) = spawn_watcher_with_state(client, namespace.to_owned());
    let empty = Snapshot {
        namespace: namespace.to_owned(),
        ..Snapshot::default()
    };
    let (tx, rx) = watch::channel(Arc::new(empty));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = snaps.changed() => {
                    if changed.is_err() { break; }
                    let snap = snaps.borrow_and_update().clone();
                    if let Some(ns) = snap {
                        metrics.discovery_updated();
                        tx.send_replace(Arc::new(snapshot_from_namespace(&ns)));
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() { break; }
                    let st = state.borrow_and_update().clone();
                    status.discovery_connected.store(st.connected, Ordering::Relaxed);
                    status.discovery_errors.store(u64::from(st.consecutive_errors), Ordering::Relaxed);
                    status.set_error(st.last_error.clone());
                    metrics.discovery_stale.set(i64::from(!st.connected));
                    metrics.discovery_errors.set(i64::from(st.consecutive_errors));
                    if !st.connected && st.consecutive_errors == 1 {
                        tracing::warn!(error = ?st.last_error, "registry unreachable; serving the last known endpoints");
                    }
                }
                () = tx.closed() => break,
            }
        }
    });
    rx
}

/// One Cloud Map service this task registers in.
#[derive(Clone, Debug)]
pub(crate) struct Registered {
    pub(crate) service: String,
    pub(crate) service_id: String,
    pub(crate) attributes: BTreeMap<String, String>,
}

/// This task's registration.
pub(crate) struct Registration {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) instance_id: String,
    /// (discovery name, attributes) per ingress entry.
    pub(crate) wanted: Vec<(String, BTreeMap<String, String>)>,
    done: Mutex<Vec<Registered>>,
}

// === impl Registration ===

impl Registration {
    pub(crate) fn new(
        client: Client,
        namespace: String,
        instance_id: String,
        wanted: Vec<(String, BTreeMap<String, String>)>,
    ) -> Self {
        Registration {
            client,
            namespace,
            instance_id,
            wanted,
            done: Mutex::new(Vec::new()),
        }
    }

    /// Ensures the namespace and services exist and registers the instance in each, retrying
    /// with capped back-off until it works.
    pub(crate) async fn register(&self, status: &Status) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_register().await {
                Ok(done) => {
                    *self.done.lock().unwrap_or_else(|e| e.into_inner()) = done;
                    status.registered.store(true, Ordering::Relaxed);
                    tracing::info!(instance = %self.instance_id, namespace = %self.namespace, "registered");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "registration failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_register(&self) -> Result<Vec<Registered>, skiff_registry_client::ClientError> {
        let ns_id = self.client.ensure_http_namespace(&self.namespace).await?;
        let mut done = Vec::with_capacity(self.wanted.len());
        for (service, attributes) in &self.wanted {
            let service_id = self.client.ensure_service(&ns_id, service).await?;
            self.client
                .register_instance(&service_id, &self.instance_id, attributes.clone())
                .await?;
            done.push(Registered {
                service: service.clone(),
                service_id,
                attributes: attributes.clone(),
            });
        }
        Ok(done)
    }

    fn registered(&self) -> Vec<Registered> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Renews the TTL of every registration; re-registers an instance the registry forgot.
    pub(crate) async fn heartbeat(&self) {
        for r in self.registered() {
            match self
                .client
                .heartbeat(&self.namespace, &r.service, &self.instance_id)
                .await
            {
                Ok(()) => {}
                Err(e) if !e.is_transient() => {
                    tracing::warn!(service = %r.service, error = %e, "heartbeat refused; registering again");
                    if let Err(e) = self
                        .client
                        .register_instance(&r.service_id, &self.instance_id, r.attributes.clone())
                        .await
                    {
                        tracing::warn!(service = %r.service, error = %e, "re-registration failed");
                    }
                }
                Err(e) => tracing::debug!(service = %r.service, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Reports the app's health as the instance's custom health status.
    pub(crate) async fn set_health(&self, healthy: bool) {
        for r in self.registered() {
            if let Err(e) = self
                .client
                .update_custom_health(&r.service_id, &self.instance_id, healthy)
                .await
            {
                tracing::warn!(service = %r.service, healthy, error = %e, "health update failed");
            }
        }
    }

    /// Removes the instance from every service (best effort, bounded).
    pub(crate) async fn deregister(&self) {
        for r in self.registered() {
            let call = self
                .client
                .deregister_instance(&r.service_id, &self.instance_id);
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(Ok(())) => tracing::info!(service = %r.service, "deregistered"),
                Ok(Err(e)) => {
                    tracing::warn!(service = %r.service, error = %e, "deregistration failed")
                }
                Err(_) => tracing::warn!(service = %r.service, "deregistration timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_registry_client::{InstanceSnapshot, ServiceSnapshot};

    fn inst(
        id: &str,
        ip: &str,
        port: &str,
        health: HealthStatus,
        extra: &[(&str, &str)],
    ) -> InstanceSnapshot {
        let mut attributes = BTreeMap::from([
            (attrs::AWS_INSTANCE_IPV4.to_owned(), ip.to_owned()),
            (attrs::AWS_INSTANCE_PORT.to_owned(), port.to_owned()),
        ]);
        for (k, v) in extra {
            attributes.insert((*k).to_owned(), (*v).to_owned());
        }
        InstanceSnapshot {
            id: id.into(),
            attributes,
            health,
        }
    }

    #[test]
    fn namespace_snapshot_becomes_discovery() {
        let ns = NamespaceSnapshot {
            namespace: "prod.internal".into(),
            namespace_id: "ns-1".into(),
            namespace_type: "HTTP".into(),
            revision: 9,
            services: vec![ServiceSnapshot {
                name: "orders".into(),
                id: "srv-1".into(),
                revision: 9,
                instances: vec![
                    inst(
                        "a",
                        "127.0.0.2",
                        "8080",
                        HealthStatus::Healthy,
                        &[
                            (attrs::SKIFF_CLIENT_ALIASES, "orders:8080,orders.api:80"),
                            (attrs::SKIFF_APP_PROTOCOL, "grpc"),
                        ],
                    ),
                    inst(
                        "b",
                        "127.0.0.3",
                        "8080",
                        HealthStatus::Unhealthy,
                        &[
                            (attrs::SKIFF_CLIENT_ALIASES, "orders:8080"),
                            (attrs::SKIFF_DRAINING, "true"),
                        ],
                    ),
                    inst("c", "not-an-ip", "8080", HealthStatus::Healthy, &[]),
                ],
            }],
        };
        let s = snapshot_from_namespace(&ns);
        assert_eq!(s.revision, 9);
        let svc = &s.services[0];
        assert_eq!(svc.protocol, AppProtocol::Grpc);
        assert_eq!(svc.aliases.len(), 2);
        assert_eq!(svc.endpoints.len(), 2);
        assert!(svc.endpoints[0].healthy && !svc.endpoints[0].draining);
        assert!(!svc.endpoints[1].healthy && svc.endpoints[1].draining);
    }
}
