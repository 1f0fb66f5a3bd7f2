//! The sidecar: binds every listener, wires discovery to the forwarder, gates registration on
//! the app's readiness, and drains on shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::collections::BTreeMap;

use serde_json::json;
use skiff_registry_client::{Client, attrs};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::access::AccessLogSink;
use crate::admin::{Admin, Status};
use crate::aliases::{AliasManager, VipMap};
use crate::concrete::{Concrete, Member};
use crate::config::{
    DEFAULT_ADMIN_PORT, DEFAULT_HTTP_PROXY_PORT, ProxyConfig, TargetPolicy, TimeoutConfig,
};
use crate::discovery::{Alias, AppProtocol, Discovery, TableBuilder, spawn_table};
use crate::dns::{DnsCtx, serve_dns, serve_dns_tcp, system_resolver};
use crate::error::ProxyError;
use crate::forward::{Forwarder, Route};
use crate::metrics::Metrics;
use crate::registry::{Registration, spawn_discovery};
use crate::server::{Handler, HttpListener, Phase, serve_http};
use crate::tcp::{TcpListenerCtx, TcpTarget, serve_tcp};
use crate::trace::{TraceSettings, Tracer};

/// One `serviceConnectConfiguration.services[]` entry, resolved against the task definition.
#[derive(Clone, Debug)]
pub struct IngressEntry {
    pub discovery_name: String,
    pub port_name: String,
    /// The app's port (reached at `app_host`).
    pub container_port: u16,
    /// `ingressPortOverride`; `None`: any free port.
    pub ingress_port: Option<u16>,
    pub app_protocol: AppProtocol,
    /// Aliases clients use for this service (registered as `SKIFF_CLIENT_ALIASES`).
    pub client_aliases: Vec<Alias>,
    pub timeouts: TimeoutConfig,
}

/// Where endpoints come from.
pub enum DiscoverySource {
    /// The registry at this base URL (`http://127.0.0.1:7070`): watch + registration.
    Registry { url: String },
    /// A fixed or test-driven feed; nothing is registered.
    Static(Discovery),
}

/// Everything needed to start a sidecar for one task.
pub struct SidecarOptions {
    pub namespace: String,
    pub cluster: String,
    /// `serviceName` of the ECS service (`client` label when empty).
    pub service_name: String,
    pub task_family: String,
    pub task_id: String,
    pub discovery: DiscoverySource,
    /// Every listener binds this address.
    pub bind_ip: IpAddr,
    /// Where the app listens.
    pub app_host: String,
    /// 0 picks a free port.
    pub admin_port: u16,
    /// 0 picks a free port.
    pub http_proxy_port: u16,
    /// Empty for a client-only sidecar.
    pub ingress: Vec<IngressEntry>,
    /// DNS listener port on `bind_ip` (53 as root, else 5353; 0: any); `None`: no DNS listener.
    pub dns_port: Option<u16>,
    /// Resolver for names that are not aliases; `None`: the first of /etc/resolv.conf.
    pub dns_upstream: Option<SocketAddr>,
    /// The app's readiness from elsewhere (the runner's container health check); `None`: the
    /// app is ready once every ingress `containerPort` accepts connections.
    pub app_ready: Option<watch::Receiver<bool>>,
    /// Where to keep a hosts file of alias VIPs (for `/etc/hosts` in the task); `None`: none.
    pub hosts_file: Option<PathBuf>,
    pub config: ProxyConfig,
    /// Sampling and OTLP export (`TraceSettings::from_env`); default: propagate, export nothing.
    pub trace: TraceSettings,
    /// Where access log lines go (stdout unless a test keeps them).
    pub access_log_sink: AccessLogSink,
}

/// A running sidecar.
pub struct Sidecar {
    admin_addr: SocketAddr,
    http_proxy_addr: SocketAddr,
    ingress_addrs: Vec<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    alias_addrs: Arc<RwLock<BTreeMap<String, SocketAddr>>>,
    phase: watch::Sender<Phase>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    config: Arc<ProxyConfig>,
    metrics: Metrics,
    tracer: Tracer,
    registration: Option<Arc<Registration>>,
}

// === impl SidecarOptions ===

impl SidecarOptions {
    /// Options with Skiff's defaults: loopback, admin 9901, HTTP proxy 15001, client only.
    pub fn new(namespace: &str, task_id: &str, discovery: DiscoverySource) -> Self {
        SidecarOptions {
            namespace: namespace.to_owned(),
            cluster: "default".to_owned(),
            service_name: String::new(),
            task_family: String::new(),
            task_id: task_id.to_owned(),
            discovery,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_host: "127.0.0.1".to_owned(),
            admin_port: DEFAULT_ADMIN_PORT,
            http_proxy_port: DEFAULT_HTTP_PROXY_PORT,
            ingress: Vec::new(),
            dns_port: None,
            app_ready: None,
            dns_upstream: None,
            hosts_file: None,
            config: ProxyConfig::default(),
            trace: TraceSettings::default(),
            access_log_sink: AccessLogSink::Stdout,
        }
    }
}

// === impl Sidecar ===

impl Sidecar {
    /// Binds every listener and starts serving; registration follows once the app is ready.
    pub async fn start(
        opts: SidecarOptions,
        registry: &prometheus::Registry,
    ) -> Result<Sidecar, ProxyError> {
        let label = if opts.service_name.is_empty() {
            "client"
        } else {
            opts.service_name.as_str()
        };
        let metrics = Metrics::with_cluster(registry, label, &opts.cluster)
            .map_err(|e| ProxyError::Internal(format!("metrics: {e}")))?;
        let config = Arc::new(opts.config.clone());
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
        let registry_client = match &opts.discovery {
            DiscoverySource::Registry { url } => {
                Some(Client::new(url).map_err(|e| ProxyError::Registry(e.to_string()))?)
            }
            DiscoverySource::Static(_) => None,
        };
        let status = Arc::new(Status {
            needs_registration: registry_client.is_some() && !opts.ingress.is_empty(),
            watches_registry: registry_client.is_some(),
            ..Status::default()
        });
        let mut background = Vec::new();

        let mut builder = TableBuilder::new(config.clone(), metrics.clone());
        // Inbound: one fixed target per entry, the app at app_host:containerPort.
        let mut inbound = Vec::with_capacity(opts.ingress.len());
        for entry in &opts.ingress {
            let app = resolve(&opts.app_host, entry.container_port).await?;
            let policy = TargetPolicy {
                retry: config.default_policy.retry.clone(),
                timeouts: entry.timeouts.clone(),
            };
            let target = builder.target(&format!("inbound/{}", entry.discovery_name), Some(policy));
            let member = Member {
                id: "app".to_owned(),
                healthy: true,
                draining: false,
                endpoint: builder.endpoint(&format!("inbound/{}", entry.discovery_name), app),
            };
            inbound.push(Arc::new(Concrete::new(
                target,
                entry.app_protocol,
                Vec::new(),
                vec![member],
            )));
        }

        let discovery = match (&opts.discovery, &registry_client) {
            (DiscoverySource::Registry { .. }, Some(client)) => spawn_discovery(
                client.clone(),
                &opts.namespace,
                status.clone(),
                metrics.clone(),
            ),
            (DiscoverySource::Static(d), _) => {
                status.discovery_connected.store(true, Ordering::Relaxed);
                d.clone()
            }
            (DiscoverySource::Registry { .. }, None) => {
                return Err(ProxyError::Internal("registry client missing".into()));
            }
        };
        let table = spawn_table(discovery, builder);
        let mut resource = vec![
            ("service.namespace".to_owned(), opts.namespace.clone()),
            ("service.instance.id".to_owned(), opts.task_id.clone()),
            ("aws.ecs.task.arn".to_owned(), task_arn(&opts)),
        ];
        if !opts.task_family.is_empty() {
            resource.push(("aws.ecs.task.family".to_owned(), opts.task_family.clone()));
        }
        let tracer = Tracer::start(&opts.trace, registry, label, &opts.cluster, resource)
            .map_err(|e| ProxyError::Internal(format!("tracing: {e}")))?;
        let forwarder = Arc::new(Forwarder::new(
            config.clone(),
            tracer.clone(),
            opts.access_log_sink.clone(),
        ));

        let bind = |port: u16| SocketAddr::new(opts.bind_ip, port);
        let mut servers = Vec::new();
        let listener = |name: &'static str, handler: Handler, idle: Option<Duration>| {
            Arc::new(HttpListener::new(
                name,
                handler,
                phase_rx.clone(),
                idle,
                config.drain_grace,
                &config.limits,
                metrics.clone(),
            ))
        };

        // Outbound HTTP proxy.
        let http_proxy = bind_listener(bind(opts.http_proxy_port)).await?;
        let http_proxy_addr = local_addr(&http_proxy)?;
        let outbound = listener(
            "outbound",
            Handler::Proxy {
                forwarder: forwarder.clone(),
                route: Route::ByHost(table.clone()),
                inbound: false,
            },
            config.default_policy.timeouts.idle,
        );
        servers.push(tokio::spawn(serve_http(http_proxy, outbound)));

        // Inbound listeners.
        let mut ingress_addrs = Vec::with_capacity(opts.ingress.len());
        for (entry, concrete) in opts.ingress.iter().zip(&inbound) {
            let l = bind_listener(bind(entry.ingress_port.unwrap_or(0))).await?;
            ingress_addrs.push(local_addr(&l)?);
            if entry.app_protocol == AppProtocol::Tcp {
                let ctx = Arc::new(TcpListenerCtx {
                    name: "inbound_tcp",
                    target: TcpTarget::Fixed(concrete.clone()),
                    config: config.clone(),
                    phase: phase_rx.clone(),
                    idle: entry.timeouts.idle,
                    metrics: metrics.clone(),
                });
                servers.push(tokio::spawn(serve_tcp(l, ctx)));
                continue;
            }
            let ctx = listener(
                "inbound",
                Handler::Proxy {
                    forwarder: forwarder.clone(),
                    route: Route::Fixed(concrete.clone()),
                    inbound: true,
                },
                entry.timeouts.idle,
            );
            servers.push(tokio::spawn(serve_http(l, ctx)));
        }

        // Alias VIP listeners, the DNS listener and the hosts file.
        let vips: VipMap = Arc::new(RwLock::new(BTreeMap::new()));
        let alias_addrs = Arc::new(RwLock::new(BTreeMap::new()));
        if let Some(base) = config.vip_base {
            let manager = AliasManager {
                table: table.clone(),
                vips: vips.clone(),
                base,
                prefix_len: config.vip_prefix_len,
                forwarder: forwarder.clone(),
                config: config.clone(),
                phase: phase_rx.clone(),
                metrics: metrics.clone(),
                hosts_file: opts.hosts_file.clone(),
                bound: alias_addrs.clone(),
            };
            servers.push(tokio::spawn(manager.run()));
        }
        let dns_addr = match opts.dns_port {
            Some(port) => {
                let (socket, tcp, addr) = bind_dns(bind(port)).await?;
                let upstream = opts.dns_upstream.or_else(|| system_resolver(addr));
                let ctx = Arc::new(DnsCtx {
                    vips: vips.clone(),
                    namespace: opts.namespace.clone(),
                    upstream,
                    phase: phase_rx.clone(),
                });
                servers.push(tokio::spawn(serve_dns(socket, ctx.clone())));
                servers.push(tokio::spawn(serve_dns_tcp(tcp, ctx)));
                Some(addr)
            }
            None => None,
        };

        // Admin.
        let admin_listener = bind_listener(bind(opts.admin_port)).await?;
        let admin_addr = local_addr(&admin_listener)?;
        let config_json = json!({
            "namespace": opts.namespace,
            "cluster": opts.cluster,
            "service_name": opts.service_name,
            "task_family": opts.task_family,
            "task_id": opts.task_id,
            "bind_ip": opts.bind_ip.to_string(),
            "app_host": opts.app_host,
            "admin_addr": admin_addr.to_string(),
            "http_proxy_addr": http_proxy_addr.to_string(),
            "dns_addr": dns_addr.map(|a| a.to_string()),
            "vip_base": config.vip_base.map(|a| a.to_string()),
            "ingress": opts.ingress.iter().zip(&ingress_addrs).map(|(e, a)| json!({
                "discovery_name": e.discovery_name,
                "port_name": e.port_name,
                "container_port": e.container_port,
                "ingress_addr": a.to_string(),
                "app_protocol": e.app_protocol,
                "client_aliases": e.client_aliases.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "timeouts": e.timeouts,
            })).collect::<Vec<_>>(),
            "proxy": &*config,
            "trace": json!({
                "service_name": opts.trace.service_name,
                "sampler": if opts.trace.sampler.parent_based { "parentbased_traceidratio" } else { "traceidratio" },
                "sampling_ratio": opts.trace.sampler.ratio,
                "otlp_endpoint": opts.trace.export.as_ref().map(|e| e.endpoint.to_string()),
                "otlp_protocol": opts.trace.export.as_ref().map(|e| match e.protocol {
                    crate::trace::OtlpProtocol::Grpc => "grpc",
                    crate::trace::OtlpProtocol::HttpProtobuf => "http/protobuf",
                }),
            }),
        });
        let admin = Arc::new(Admin {
            status: status.clone(),
            phase: phase_rx.clone(),
            registry: registry.clone(),
            config: config_json,
            table: table.clone(),
            inbound: inbound.clone(),
            decay: config.ewma_decay,
        });
        let admin_ctx = listener("admin", Handler::Admin(admin), None);
        servers.push(tokio::spawn(serve_http(admin_listener, admin_ctx)));

        // Registration of every ingress entry, once the app is ready.
        let registration = match &registry_client {
            Some(client) if !opts.ingress.is_empty() => {
                let wanted = opts
                    .ingress
                    .iter()
                    .zip(&ingress_addrs)
                    .map(|(e, a)| {
                        (
                            e.discovery_name.clone(),
                            instance_attributes(&opts, e, *a, admin_addr, config.heartbeat_ttl),
                        )
                    })
                    .collect();
                Some(Arc::new(Registration::new(
                    client.clone(),
                    opts.namespace.clone(),
                    opts.task_id.clone(),
                    wanted,
                )))
            }
            _ => None,
        };

        // Readiness: the app's ports accept connections (or the external signal says so);
        // then register, and keep checking: heartbeats only while the app is healthy.
        let apps: Vec<SocketAddr> = inbound
            .iter()
            .filter_map(|c| c.active.first().map(|e| e.addr))
            .collect();
        let probe = match opts.app_ready.clone() {
            Some(rx) => AppProbe::External(rx),
            None => AppProbe::Ports(apps, config.default_policy.timeouts.connect),
        };
        let life = app_life(
            probe,
            status.clone(),
            registration.clone(),
            config.readiness_interval,
            (config.heartbeat_ttl / 3).max(Duration::from_millis(100)),
        );
        let mut life_phase = phase_rx.clone();
        background.push(tokio::spawn(async move {
            tokio::select! {
                () = life => {}
                () = crate::server::wait_for(&mut life_phase, Phase::Draining) => {}
            }
        }));

        tracing::info!(%admin_addr, %http_proxy_addr, ingress = ?ingress_addrs, "sidecar started");
        Ok(Sidecar {
            admin_addr,
            http_proxy_addr,
            ingress_addrs,
            dns_addr,
            alias_addrs,
            phase: phase_tx,
            servers,
            background,
            config,
            metrics,
            tracer,
            registration,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// This sidecar's metrics (the binary records its busy polling there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn http_proxy_addr(&self) -> SocketAddr {
        self.http_proxy_addr
    }

    /// Inbound listener addresses, in the order of `SidecarOptions::ingress`.
    pub fn ingress_addrs(&self) -> Vec<SocketAddr> {
        self.ingress_addrs.clone()
    }

    /// The DNS listener's address, when one was asked for.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Alias listeners bound so far (`dnsName:port` → VIP address); grows as aliases appear.
    pub fn alias_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.alias_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves until `shutdown` resolves, then drains: fails `/ready`, keeps serving for the
    /// drain window with `Connection: close` on inbound responses, then stops every listener
    /// gracefully (HTTP/2 GOAWAY) and returns once connections are done or the grace is over.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        shutdown.await;
        tracing::info!(window = ?self.config.drain_window, "draining");
        self.phase.send_replace(Phase::Draining);
        self.metrics.draining.set(1);
        let deregister = async {
            if let Some(r) = &self.registration {
                r.deregister().await;
            }
        };
        tokio::join!(deregister, tokio::time::sleep(self.config.drain_window));
        self.phase.send_replace(Phase::Stopping);
        let deadline = Instant::now() + self.config.drain_grace + Duration::from_secs(1);
        for server in self.servers {
            if tokio::time::timeout_at(deadline, server).await.is_err() {
                tracing::warn!("listener did not stop within the drain grace");
            }
        }
        for task in self.background {
            task.abort();
        }
        // Spans of the last requests go out before the process exits (bounded).
        self.tracer.flush(self.config.drain_grace).await;
        tracing::info!("drained");
        Ok(())
    }
}

/// The attributes this task registers for one ingress entry.
fn instance_attributes(
    opts: &SidecarOptions,
    entry: &IngressEntry,
    ingress: SocketAddr,
    admin: SocketAddr,
    ttl: Duration,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(k.to_owned(), v);
    };
    match ingress.ip() {
        IpAddr::V4(ip) => put(attrs::AWS_INSTANCE_IPV4, ip.to_string()),
        IpAddr::V6(ip) => put(attrs::AWS_INSTANCE_IPV6, ip.to_string()),
    }
    put(attrs::AWS_INSTANCE_PORT, ingress.port().to_string());
    put(attrs::AWS_INIT_HEALTH_STATUS, "HEALTHY".to_owned());
    put(attrs::ECS_CLUSTER_NAME, opts.cluster.clone());
    if !opts.service_name.is_empty() {
        put(attrs::ECS_SERVICE_NAME, opts.service_name.clone());
    }
    if !opts.task_family.is_empty() {
        put(attrs::ECS_TASK_DEFINITION_FAMILY, opts.task_family.clone());
    }
    put(attrs::ECS_TASK_ARN, task_arn(opts));
    let region = region();
    put(attrs::AVAILABILITY_ZONE, format!("{region}a"));
    put(attrs::REGION, region);
    let aliases: Vec<String> = entry.client_aliases.iter().map(|a| a.to_string()).collect();
    put(attrs::SKIFF_CLIENT_ALIASES, aliases.join(","));
    put(
        attrs::SKIFF_APP_PROTOCOL,
        entry.app_protocol.as_str().to_owned(),
    );
    put(attrs::SKIFF_ADMIN_ADDR, admin.to_string());
    put(
        attrs::SKIFF_HEARTBEAT_TTL_SECONDS,
        ttl.as_secs().max(1).to_string(),
    );
    put(attrs::SKIFF_COMPONENT, "sidecar".to_owned());
    a
}

/// The task's ARN as Skiff registers it (the runner gives tasks the same one).
fn task_arn(opts: &SidecarOptions) -> String {
    format!(
        "arn:aws:ecs:{}:000000000000:task/{}/{}",
        region(),
        opts.cluster,
        opts.task_id
    )
}

/// The AWS region Skiff pretends to be in: `AWS_REGION`, `AWS_DEFAULT_REGION`, else us-east-1.
fn region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".to_owned())
}

/// How the sidecar knows the app is healthy.
enum AppProbe {
    /// The runner's container health check.
    External(watch::Receiver<bool>),
    /// Every app port accepts a TCP connection within the timeout.
    Ports(Vec<SocketAddr>, Duration),
}

impl AppProbe {
    async fn healthy(&mut self) -> bool {
        match self {
            AppProbe::External(rx) => *rx.borrow_and_update(),
            AppProbe::Ports(apps, timeout) => {
                for app in apps.iter() {
                    let connect = tokio::net::TcpStream::connect(*app);
                    if !matches!(tokio::time::timeout(*timeout, connect).await, Ok(Ok(_))) {
                        return false;
                    }
                }
                true
            }
        }
    }
}

/// Waits for the app, registers, then follows its health: `/ready`, heartbeats and the
/// instance's custom health status track it.
async fn app_life(
    mut probe: AppProbe,
    status: Arc<Status>,
    registration: Option<Arc<Registration>>,
    first_interval: Duration,
    interval: Duration,
) {
    while !probe.healthy().await {
        tokio::time::sleep(first_interval).await;
    }
    status.app_ready.store(true, Ordering::Relaxed);
    tracing::info!("app ready");
    if let Some(r) = &registration {
        r.register(&status).await;
    }
    let mut healthy = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = probe.healthy().await;
        status.app_ready.store(now, Ordering::Relaxed);
        if now != healthy {
            healthy = now;
            if healthy {
                tracing::info!("app healthy again");
            } else {
                tracing::warn!(
                    "app unhealthy: failing /ready and reporting the instance unhealthy"
                );
            }
            if let Some(r) = &registration {
                r.set_health(healthy).await;
            }
        }
        if healthy && let Some(r) = &registration {
            r.heartbeat().await;
        }
    }
}

/// UDP and TCP sockets on the same port; with port 0, a free port for both.
async fn bind_dns(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), ProxyError> {
    let err = |source| ProxyError::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut tries = if addr.port() == 0 { 20 } else { 1 };
    loop {
        let socket = UdpSocket::bind(addr).await.map_err(err)?;
        let bound = socket.local_addr().map_err(err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((socket, tcp, bound)),
            // The UDP port picked for us is taken for TCP: pick again.
            Err(_) if tries > 1 => tries -= 1,
            Err(source) => {
                return Err(ProxyError::Bind {
                    addr: bound.to_string(),
                    source,
                });
            }
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ProxyError::Internal(format!("resolve app host {host}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ProxyError::Internal(format!("app host {host} has no address")))
}

async fn bind_listener(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, ProxyError> {
    l.local_addr().map_err(|source| ProxyError::Bind {
        addr: "listener".into(),
        source,
    })
}
