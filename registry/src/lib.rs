//! Skiff's registry: a Cloud Map–compatible service registry with health, watches and DNS.
//!
//! `ls src/` is the design: `model` (records and Cloud Map's rules) → `store` (durable,
//! revisioned key-value trait: redb or memory) → `catalog` (the in-memory state and the one
//! write path) → the surfaces reading it: `api` (Cloud Map JSON 1.1), `http` (listener, watch
//! long-poll, heartbeats, history, Prometheus targets), `dns`; and `health`, the loops that
//! turn heartbeats and active checks into writes.

pub mod api;
pub mod catalog;
pub mod dns;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::{Catalog, CatalogError};
use crate::health::HealthOptions;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);
pub const DEFAULT_DNS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8600);
pub const DEFAULT_INSTANCE_REMOVAL_GRACE: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub http_addr: SocketAddr,
    /// UDP and TCP. With port 0 both get the same, OS-chosen port.
    pub dns_addr: SocketAddr,
    /// `None`: in memory, nothing survives a restart.
    pub data_dir: Option<PathBuf>,
    /// Instances whose heartbeat stopped are deregistered after this long.
    pub instance_removal_grace: Duration,
    /// Cap on a Cloud Map request body.
    pub max_body_bytes: usize,
    /// Time between two active health checks of one instance.
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            http_addr: DEFAULT_HTTP_ADDR,
            dns_addr: DEFAULT_DNS_ADDR,
            data_dir: None,
            instance_removal_grace: DEFAULT_INSTANCE_REMOVAL_GRACE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            health_check_timeout: DEFAULT_HEALTH_CHECK_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open the registry store")]
    Store(#[from] StoreError),
    #[error("cannot load the registry catalog")]
    Catalog(#[from] CatalogError),
    #[error("cannot bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register registry metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// A started registry: store open, catalog loaded, listeners bound; `run` serves.
pub struct Registry {
    opts: RegistryOptions,
    catalog: Arc<Catalog>,
    prometheus: prometheus::Registry,
    http: TcpListener,
    http_addr: SocketAddr,
    dns_udp: std::net::UdpSocket,
    dns_tcp: TcpListener,
    dns_addr: SocketAddr,
}

// === impl Registry ===

impl Registry {
    /// Opens the store, loads the catalog, registers metrics into `metrics` and binds the
    /// listeners.
    pub async fn start(
        opts: RegistryOptions,
        metrics: &prometheus::Registry,
    ) -> Result<Registry, RegistryError> {
        let store: Arc<dyn Store> = match &opts.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                Arc::new(tokio::task::spawn_blocking(move || RedbStore::open(&dir)).await??)
            }
            None => Arc::new(MemoryStore::new()),
        };
        let m = Metrics::register(metrics)?;
        let catalog = Arc::new(Catalog::open(store, m).await?);
        let http =
            TcpListener::bind(opts.http_addr)
                .await
                .map_err(|source| RegistryError::Bind {
                    what: "http",
                    addr: opts.http_addr,
                    source,
                })?;
        let http_addr = http.local_addr().map_err(|source| RegistryError::Bind {
            what: "http",
            addr: opts.http_addr,
            source,
        })?;
        let (dns_udp, dns_tcp) = bind_dns(opts.dns_addr).await?;
        let dns_addr = dns_udp.local_addr().map_err(|source| RegistryError::Bind {
            what: "dns",
            addr: opts.dns_addr,
            source,
        })?;
        tracing::info!(%http_addr, %dns_addr, data_dir = ?opts.data_dir, revision = catalog.read().revision, "registry started");
        Ok(Registry {
            opts,
            catalog,
            prometheus: metrics.clone(),
            http,
            http_addr,
            dns_udp,
            dns_tcp,
            dns_addr,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Serves HTTP and DNS and runs health checks until `shutdown` completes; then answers
    /// waiting long-polls, lets open requests finish (bounded) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RegistryError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let health = HealthOptions {
            instance_removal_grace: self.opts.instance_removal_grace,
            check_interval: self.opts.health_check_interval,
            check_timeout: self.opts.health_check_timeout,
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(health::run_heartbeats(self.catalog.clone(), health));
        tasks.spawn(health::run_active_checks(self.catalog.clone(), health));
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut dns_tasks = tokio::task::JoinSet::new();
        dns_tasks.spawn(dns::run_udp(
            self.dns_udp,
            self.catalog.clone(),
            stopped(stop_rx.clone()),
        ));
        dns_tasks.spawn(dns::run_tcp(
            self.dns_tcp,
            self.catalog.clone(),
            stopped(stop_rx.clone()),
        ));
        let state = Arc::new(http::HttpState::new(
            self.catalog.clone(),
            self.prometheus,
            self.opts.max_body_bytes,
            self.http_addr,
            stop_rx,
        ));
        let on_shutdown = async {
            shutdown.await;
            tracing::info!("registry shutting down");
            let _ = stop_tx.send(true);
        };
        http::run(self.http, state, on_shutdown).await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // The DNS servers stop on the shutdown signal; waiting for them means the catalog
        // (and the store file) is released when `run` returns.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while dns_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("dns servers did not stop in time");
        }
        tracing::info!("registry stopped");
        Ok(())
    }
}

/// Binds UDP and TCP on the same port (an OS-chosen one when the port is 0).
async fn bind_dns(addr: SocketAddr) -> Result<(std::net::UdpSocket, TcpListener), RegistryError> {
    let bind_err = |source| RegistryError::Bind {
        what: "dns",
        addr,
        source,
    };
    let mut last_err = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        let port = udp.local_addr().map_err(bind_err)?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(bind_err(e)),
        }
    }
    Err(bind_err(last_err.unwrap_or_else(|| {
        std::io::Error::other("no free port for dns")
    })))
}
