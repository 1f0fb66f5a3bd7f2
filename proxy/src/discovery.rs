//! Discovery input and the routing table built from it.
//!
//! The proxy consumes a plain [`Snapshot`] of a namespace (services, their aliases and
//! endpoints) through a `watch` channel; `registry.rs` fills that channel from the registry's
//! watch API, tests fill it directly. Each new snapshot is turned into one immutable
//! `Table` that the hot path only loads; endpoint state (EWMA, outlier, counters) and
//! per-target state (budget, metrics) carry over from one table to the next.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::concrete::{Concrete, Member, Target};
use crate::config::ProxyConfig;
use crate::endpoint::Endpoint;
use crate::logical::Table;
use crate::metrics::Metrics;

/// `appProtocol` of a port mapping; `Tcp` when none is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

/// A client alias `dnsName:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Alias {
    pub dns_name: String,
    pub port: u16,
}

/// One endpoint as discovery reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub healthy: bool,
    pub draining: bool,
}

/// One service of the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The discovery name.
    pub name: String,
    pub protocol: AppProtocol,
    pub aliases: Vec<Alias>,
    pub endpoints: Vec<EndpointInfo>,
}

/// A consistent view of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub namespace: String,
    pub revision: u64,
    pub services: Vec<ServiceInfo>,
}

/// What the proxy reads discovery from.
pub type Discovery = watch::Receiver<Arc<Snapshot>>;

// === impl AppProtocol ===

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }

    /// Whether upstream connections speak HTTP/2 with prior knowledge.
    pub fn is_h2(self) -> bool {
        matches!(self, AppProtocol::Http2 | AppProtocol::Grpc)
    }
}

impl FromStr for AppProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(AppProtocol::Http),
            "http2" => Ok(AppProtocol::Http2),
            "grpc" => Ok(AppProtocol::Grpc),
            "tcp" | "" => Ok(AppProtocol::Tcp),
            other => Err(format!("unknown app protocol {other:?}")),
        }
    }
}

// === impl Alias ===

impl FromStr for Alias {
    type Err = String;
    /// `dnsName:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, port) = s
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("alias {s:?} has no port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("alias {s:?} has a bad port"))?;
        if name.is_empty() {
            return Err(format!("alias {s:?} has no name"));
        }
        Ok(Alias {
            dns_name: name.trim_end_matches('.').to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dns_name, self.port)
    }
}

/// Builds tables from snapshots, keeping endpoint and target state across them.
pub(crate) struct TableBuilder {
    config: Arc<ProxyConfig>,
    metrics: Metrics,
    targets: HashMap<String, Arc<Target>>,
    endpoints: HashMap<(String, SocketAddr), Arc<Endpoint>>,
}

// === impl TableBuilder ===

impl TableBuilder {
    pub(crate) fn new(config: Arc<ProxyConfig>, metrics: Metrics) -> Self {
        TableBuilder {
            config,
            metrics,
            targets: HashMap::new(),
            endpoints: HashMap::new(),
        }
    }

    /// The shared state of target `name` (created on first use).
    pub(crate) fn target(
        &mut self,
        name: &str,
        policy: Option<crate::config::TargetPolicy>,
    ) -> Arc<Target> {
        if let Some(t) = self.targets.get(name) {
            return t.clone();
        }
        let policy = policy.unwrap_or_else(|| self.config.policy(name).clone());
        let t = Arc::new(Target::new(
            name,
            policy,
            self.metrics.target(name),
            Instant::now(),
        ));
        self.targets.insert(name.to_owned(), t.clone());
        t
    }

    /// The endpoint state for `addr` of `service` (created on first use).
    pub(crate) fn endpoint(&mut self, service: &str, addr: SocketAddr) -> Arc<Endpoint> {
        let initial = self.config.ewma_initial_rtt;
        self.endpoints
            .entry((service.to_owned(), addr))
            .or_insert_with(|| Arc::new(Endpoint::new(addr, initial, Instant::now())))
            .clone()
    }

    pub(crate) fn build(&mut self, snap: &Snapshot) -> Table {
        let mut services = HashMap::with_capacity(snap.services.len());
        let mut aliases: HashMap<String, Vec<(u16, String)>> = HashMap::new();
        let mut seen_endpoints = Vec::new();
        for svc in &snap.services {
            let target = self.target(&svc.name, None);
            let members: Vec<Member> = svc
                .endpoints
                .iter()
                .map(|e| {
                    seen_endpoints.push((svc.name.clone(), e.addr));
                    Member {
                        id: e.id.clone(),
                        healthy: e.healthy,
                        draining: e.draining,
                        endpoint: self.endpoint(&svc.name, e.addr),
                    }
                })
                .collect();
            for a in &svc.aliases {
                let entry = aliases.entry(a.dns_name.clone()).or_default();
                if !entry.iter().any(|(p, s)| *p == a.port && *s == svc.name) {
                    entry.push((a.port, svc.name.clone()));
                }
            }
            let concrete = Concrete::new(target, svc.protocol, svc.aliases.clone(), members);
            concrete
                .target
                .metrics
                .record_members(concrete.members.iter().map(|m| (m.healthy, m.draining)));
            services.insert(svc.name.clone(), Arc::new(concrete));
        }
        // Forget endpoints that left, so a returning address starts fresh.
        let seen: std::collections::HashSet<_> = seen_endpoints.into_iter().collect();
        self.endpoints.retain(|k, _| seen.contains(k));
        self.metrics
            .discovery_revision
            .set(i64::try_from(snap.revision).unwrap_or(i64::MAX));
        Table::new(snap.namespace.clone(), snap.revision, services, aliases)
    }
}

/// Rebuilds the table whenever discovery changes; the last table stays when discovery ends.
pub(crate) fn spawn_table(
    mut discovery: Discovery,
    mut builder: TableBuilder,
) -> watch::Receiver<Arc<Table>> {
    let first = {
        let snap = discovery.borrow_and_update().clone();
        Arc::new(builder.build(&snap))
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while discovery.changed().await.is_ok() {
            let snap = discovery.borrow_and_update().clone();
            let table = Arc::new(builder.build(&snap));
            if tx.send(table).is_err() {
                break;
            }
        }
        // Discovery ended: keep the sender alive so receivers keep the last table.
        tx.closed().await;
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse() {
        let a: Alias = "Orders.:8080".parse().unwrap();
        assert_eq!(
            a,
            Alias {
                dns_name: "orders".into(),
                port: 8080
            }
        );
        assert!("orders".parse::<Alias>().is_err());
        assert!(":80".parse::<Alias>().is_err());
        assert_eq!("GRPC".parse::<AppProtocol>(), Ok(AppProtocol::Grpc));
    }

    #[tokio::test]
    async fn endpoint_state_survives_rebuilds() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry, "client").unwrap();
        let mut b = TableBuilder::new(Arc::new(ProxyConfig::default()), metrics);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let snap = |rev| Snapshot {
            namespace: "ns".into(),
            revision: rev,
            services: vec![ServiceInfo {
                name: "orders".into(),
                protocol: AppProtocol::Http,
                aliases: vec!["orders:8080".parse().unwrap()],
                endpoints: vec![EndpointInfo {
                    id: "a".into(),
                    addr,
                    healthy: true,
                    draining: false,
                }],
            }],
        };
        let t1 = b.build(&snap(1));
        let t2 = b.build(&snap(2));
        let e1 = &t1.service("orders").unwrap().active[0];
        let e2 = &t2.service("orders").unwrap().active[0];
        assert!(Arc::ptr_eq(e1, e2));
        assert!(t2.route("orders", Some(8080)).is_some());
    }
}
