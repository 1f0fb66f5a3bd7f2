//! skiff-runner: starts ECS services from their JSON as local processes, with the sidecar injected.
//!
//! Each task is a set of child processes: the Service Connect sidecar (`skiff proxy`) first, then
//! the task definition's containers (`entryPoint` + `command`) in `dependsOn` order. Skiff does not
//! pull or run images; `image` is recorded and shown. Tasks share the host network and each gets
//! its own loopback address (`127.1.<service>.<slot>`), which its app binds (`SKIFF_APP_HOST`).

mod firelens;
mod health;
mod netns;
mod plan;
mod process;
mod publish;
mod service;
mod stack;
mod state;
mod task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};

pub use firelens::FirelensPlan;
pub use health::Health;
pub use netns::DEFAULT_TASK_CIDR;
pub use plan::{
    Condition, ContainerPlan, DEFAULT_STOP_TIMEOUT, Dependency, HealthCheckPlan, HealthCommand,
    PublishedPort, ServicePlan,
};
pub use service::ServiceState;
pub use stack::load;
pub use state::{StackState, print_ps, request_deploy};
pub use task::{ContainerInfo, IngressReady, SidecarReady, TaskInfo, TaskStatus};

/// The sidecar's drain window for tasks the runner stops (DESIGN.md: 20 s by default).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("container command is empty")]
    EmptyCommand,
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sidecar exited before it was ready ({0})")]
    SidecarExited(String),
    #[error("sidecar was not ready after {0:?}")]
    SidecarTimeout(Duration),
    #[error("cannot publish host port {port}")]
    Publish {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("too many services in one stack (at most 250)")]
    TooManyServices,
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("registry URL {0:?} is not http://HOST:PORT")]
    RegistryUrl(String),
    #[error("cannot listen for the registry on the task bridge")]
    Forwarder(#[source] std::io::Error),
    #[error("embedded registry")]
    Registry(#[from] skiff_registry::RegistryError),
    #[error("cannot prepare namespace {namespace} in the registry at {url}")]
    Namespace {
        namespace: String,
        url: String,
        #[source]
        source: skiff_registry_client::ClientError,
    },
}

/// Where the stack's registry comes from.
#[derive(Clone, Debug)]
pub enum RegistrySource {
    /// Started inside `skiff up`, like Cloud Map is just there on AWS.
    Embedded(skiff_registry::RegistryOptions),
    /// A registry already running at this URL (`http://host:port`).
    External(String),
}

/// How `skiff up` runs a stack.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The `skiff` executable, for sidecars and for `skiff ...` container commands.
    pub skiff_exe: PathBuf,
    /// The registry every sidecar talks to.
    pub registry: RegistrySource,
    /// Where task ready files and `state.json` (read by `skiff ps`) live.
    pub state_dir: PathBuf,
    pub drain: Duration,
    pub network_mode: NetworkMode,
    /// The stack directory, re-read on SIGHUP (`skiff deploy`) to roll changed services.
    pub stack_dir: Option<PathBuf>,
}

/// How tasks are networked (ECS's `networkMode`, as this machine can provide it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Tasks share the host network, each on its own loopback address (`bridge` maps here too).
    Host,
    /// Each task in its own network namespace (needs root), as ECS's awsvpc gives each its ENI.
    Awsvpc {
        /// The private range task addresses come from; the bridge takes its first address.
        cidr: (std::net::Ipv4Addr, u8),
    },
}

impl NetworkMode {
    /// `awsvpc` when running as root, else `host`.
    pub fn best_available() -> NetworkMode {
        if nix::unistd::Uid::effective().is_root() {
            NetworkMode::Awsvpc {
                cidr: netns::DEFAULT_TASK_CIDR,
            }
        } else {
            NetworkMode::Host
        }
    }
}

/// Runs every service of the stack until `shutdown` resolves, then stops every task
/// (drain, SIGTERM, SIGKILL after `stopTimeout`) and returns once nothing is left running.
pub async fn up(
    services: Vec<ServicePlan>,
    opts: UpOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunnerError> {
    if services.len() > 250 {
        return Err(RunnerError::TooManyServices);
    }
    tokio::fs::create_dir_all(&opts.state_dir)
        .await
        .map_err(|source| RunnerError::StateDir {
            path: opts.state_dir.clone(),
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // The embedded registry stops last, so every sidecar can deregister while draining.
    let (registry_stop_tx, registry_stop_rx) = watch::channel(false);

    // The registry: embedded (like Cloud Map, it is simply there) or the user's.
    let (registry_url, registry_task) = match opts.registry.clone() {
        RegistrySource::Embedded(ropts) => {
            let metrics = prometheus::Registry::new();
            let registry = skiff_registry::Registry::start(ropts, &metrics).await?;
            let url = format!("http://{}", registry.http_addr());
            eprintln!(
                "registry: Cloud Map API {url}  DNS {} (udp+tcp)",
                registry.dns_addr()
            );
            let mut stop = registry_stop_rx.clone();
            let task = tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = registry.run(stopped).await {
                    tracing::error!(error = %e, "embedded registry failed");
                }
            });
            (url, Some(task))
        }
        RegistrySource::External(url) => (url, None),
    };
    prepare_namespaces(&registry_url, &services).await?;
    let opts = UpOptions {
        registry: RegistrySource::External(registry_url.clone()),
        ..opts
    };
    let (network, task_registry_url, forwarder) = match opts.network_mode {
        NetworkMode::Host => (None, registry_url.clone(), None),
        NetworkMode::Awsvpc { cidr } => {
            let net = Arc::new(netns::Network::create(&opts.state_dir, cidr).await?);
            // Sidecars inside task namespaces reach the registry through the bridge address.
            let (url, fwd) = match registry_forwarder(&registry_url, &net, stop_rx.clone()).await {
                Ok(v) => v,
                Err(e) => {
                    net.destroy().await;
                    return Err(e);
                }
            };
            (Some(net), url, Some(fwd))
        }
    };
    let (log_tx, log_rx) = mpsc::channel(4096);
    let printer = tokio::spawn(print_logs(log_rx));
    let ctx = task::TaskContext {
        skiff_exe: opts.skiff_exe.clone(),
        registry_url: task_registry_url,
        state_dir: opts.state_dir.clone(),
        logs: log_tx,
        drain: opts.drain,
        network: network.clone(),
    };

    let mut schedulers = Vec::new();
    let mut plan_txs = Vec::new();
    let mut publishers = Vec::new();
    let mut states = Vec::new();
    let mut published_urls = Vec::new();
    for (index, plan) in services.into_iter().enumerate() {
        let plan = Arc::new(plan);
        let (state_tx, state_rx) = watch::channel(ServiceState {
            name: plan.name.clone(),
            desired_count: plan.desired_count,
            tasks: Vec::new(),
            events: Vec::new(),
        });
        for port in &plan.published {
            let addr = SocketAddr::from(([127, 0, 0, 1], port.host_port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunnerError::Publish {
                    port: port.host_port,
                    source,
                })?;
            published_urls.push(format!("{} -> http://{addr}/", plan.name));
            publishers.push(tokio::spawn(publish::run(
                listener,
                port.clone(),
                state_rx.clone(),
                stop_rx.clone(),
            )));
        }
        states.push(state_rx);
        let index = u8::try_from(index).map_err(|_| RunnerError::TooManyServices)?;
        let (plan_tx, plan_rx) = watch::channel(plan);
        plan_txs.push(plan_tx);
        schedulers.push(tokio::spawn(service::run(
            ctx.clone(),
            plan_rx,
            index,
            stop_rx.clone(),
            state_tx,
        )));
    }
    drop(ctx);

    let writer = tokio::spawn(state::write_loop(
        opts.state_dir.join("state.json"),
        registry_url.clone(),
        states.clone(),
        stop_rx.clone(),
    ));
    let banner = tokio::spawn(banner(registry_url.clone(), published_urls, states));
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                if let Some(dir) = &opts.stack_dir {
                    redeploy(dir, &plan_txs);
                }
            }
        }
    }
    banner.abort();
    tracing::info!("stopping every task (drain, SIGTERM, SIGKILL after stopTimeout)");
    let _ = stop_tx.send(true);
    for s in schedulers {
        let _ = s.await;
    }
    for p in publishers {
        let _ = p.await;
    }
    let _ = writer.await;
    let _ = printer.await;
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    if let Some(net) = network {
        net.destroy().await;
    }
    let _ = registry_stop_tx.send(true);
    if let Some(r) = registry_task {
        let _ = r.await;
    }
    let _ = tokio::fs::remove_file(opts.state_dir.join("state.json")).await;
    Ok(())
}

/// Prints container output like `docker compose` does: `service/task container | line`, each
/// line to the runner's own stdout or stderr as the container wrote it.
async fn print_logs(mut rx: mpsc::Receiver<process::LogLine>) {
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    while let Some(l) = rx.recv().await {
        let line = format!("{} | {}\n", l.prefix, l.line);
        let w = match l.stream {
            process::Stream::Stdout => out.write_all(line.as_bytes()).await,
            process::Stream::Stderr => err.write_all(line.as_bytes()).await,
        };
        if w.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

/// Listens on the bridge address at the registry's port and splices to the registry, so sidecars
/// in task namespaces reach it; returns the URL they use.
async fn registry_forwarder(
    registry_url: &str,
    net: &netns::Network,
    stop: watch::Receiver<bool>,
) -> Result<(String, tokio::task::JoinHandle<()>), RunnerError> {
    let target: SocketAddr = registry_url
        .strip_prefix("http://")
        .map(|s| s.trim_end_matches('/'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RunnerError::RegistryUrl(registry_url.to_owned()))?;
    let listener = tokio::net::TcpListener::bind((net.gateway(), target.port()))
        .await
        .map_err(RunnerError::Forwarder)?;
    let url = format!("http://{}:{}", net.gateway(), target.port());
    Ok((
        url,
        tokio::spawn(publish::splice(listener, vec![target], stop)),
    ))
}

/// Creates each namespace (DNS_PRIVATE, so `dig` answers) and each Cloud Map service with A
/// records, before any sidecar registers into them. Existing ones are kept as they are.
async fn prepare_namespaces(url: &str, services: &[ServicePlan]) -> Result<(), RunnerError> {
    use serde_json::json;
    use skiff_registry_client::Client;
    let mut namespaces: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for s in services {
        if let Some(ns) = &s.namespace {
            namespaces
                .entry(ns.as_str())
                .or_default()
                .extend(s.discovery_names.iter().map(String::as_str));
        }
    }
    for (ns, discovery_names) in namespaces {
        let fail = |source| RunnerError::Namespace {
            namespace: ns.to_owned(),
            url: url.to_owned(),
            source,
        };
        let client = Client::new(url).map_err(fail)?;
        // A registry started a moment ago (or by the user) may still be coming up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let created = loop {
            let r = client
                .call(
                    "CreatePrivateDnsNamespace",
                    json!({ "Name": ns, "Vpc": "skiff-local", "CreatorRequestId": ns }),
                )
                .await;
            match r {
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        match created {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.code(),
                    Some("NamespaceAlreadyExists" | "DuplicateRequest")
                ) => {}
            Err(e) => return Err(fail(e)),
        }
        let namespace_id = client.ensure_http_namespace(ns).await.map_err(fail)?;
        for name in discovery_names {
            let r = client
                .call(
                    "CreateService",
                    json!({
                        "Name": name,
                        "NamespaceId": namespace_id,
                        "CreatorRequestId": format!("{ns}/{name}"),
                        "DnsConfig": { "RoutingPolicy": "MULTIVALUE", "DnsRecords": [{ "Type": "A", "TTL": 10 }, { "Type": "SRV", "TTL": 10 }] },
                        "HealthCheckCustomConfig": { "FailureThreshold": 1 },
                    }),
                )
                .await;
            match r {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some("ServiceAlreadyExists" | "DuplicateRequest")) => {
                }
                Err(e) => return Err(fail(e)),
            }
        }
    }
    Ok(())
}

/// Once every service has its desired tasks running (or after a minute), prints the table of
/// tasks and where to look next.
async fn banner(
    registry_url: String,
    published: Vec<String>,
    states: Vec<watch::Receiver<ServiceState>>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = states.iter().all(|s| {
            let s = s.borrow();
            s.tasks
                .iter()
                .filter(|t| matches!(t.status, TaskStatus::Running { .. }))
                .count() as u32
                >= s.desired_count
        });
        if ready || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = StackState {
        pid: std::process::id(),
        registry_url: registry_url.clone(),
        services: states
            .iter()
            .filter_map(|s| serde_json::to_value(&*s.borrow()).ok())
            .collect(),
    };
    let mut msg = String::from("\n");
    msg.push_str(&state::format_table(&state));
    for p in &published {
        msg.push_str(&format!(
            "\npublished: {p}   (try: curl {})",
            p.rsplit(' ').next().unwrap_or("")
        ));
    }
    msg.push_str(&format!(
        "\nregistry:  {registry_url}   (aws servicediscovery --endpoint-url {registry_url} list-services)"
    ));
    msg.push_str(
        "\nmetrics:   each sidecar's ADMIN address above serves /metrics, /ready, /endpoints",
    );
    msg.push_str("\nstatus:    skiff ps        stop: Ctrl-C\n");
    eprintln!("{msg}");
}

/// Re-reads the stack and hands each changed service its new plan: its scheduler then rolls
/// tasks within `minimumHealthyPercent`/`maximumPercent`. A stack with problems changes nothing.
fn redeploy(dir: &std::path::Path, plans: &[watch::Sender<Arc<ServicePlan>>]) {
    let new = match stack::load(dir) {
        Ok(new) => new,
        Err(problems) => {
            eprintln!(
                "{problems}\n{} problem(s) found; nothing deployed",
                problems.len()
            );
            return;
        }
    };
    for plan in new {
        let Some(tx) = plans.iter().find(|tx| tx.borrow().name == plan.name) else {
            eprintln!(
                "service {} is new: restart `skiff up` to add services (changed ones roll in place)",
                plan.name
            );
            continue;
        };
        if **tx.borrow() != plan {
            eprintln!("deploying service {}", plan.name);
            tx.send_replace(Arc::new(plan));
        }
    }
}
