//! One ECS task: its sidecar, its containers in `dependsOn` order, their health, and its stop.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep};

use crate::RunnerError;
use crate::firelens;
use crate::health::{self, Health};
use crate::netns::{self, Network, TaskNetns};
use crate::plan::{Condition, ContainerPlan, ServicePlan};
use crate::process::{self, LogLine};
use skiff_logrouter::LogRouterHandle;

/// How long a sidecar may take to bind its listeners and write its ready file.
pub const SIDECAR_START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the runner shares with every task it starts.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The `skiff` executable: runs the sidecar and stands in for `skiff` in container commands.
    pub skiff_exe: PathBuf,
    pub registry_url: String,
    pub state_dir: PathBuf,
    pub logs: mpsc::Sender<LogLine>,
    /// The sidecar's drain window when a task stops normally.
    pub drain: Duration,
    /// `awsvpc` mode: tasks get their own network namespace on this bridge.
    pub network: Option<Arc<Network>>,
}

// === impl TaskContext ===

impl TaskContext {
    /// The address of slot `slot` of the service at `service_index`.
    pub fn task_ip(&self, service_index: u8, slot: u8) -> Ipv4Addr {
        match &self.network {
            // 10.213.<service>.<slot>: the bridge holds .0.1.
            Some(net) => {
                let [a, b, _, _] = net.gateway().octets();
                Ipv4Addr::new(a, b, service_index.saturating_add(1), slot)
            }
            // 127.1.<service>.<slot>: one loopback address per task.
            None => Ipv4Addr::new(127, 1, service_index.saturating_add(1), slot),
        }
    }
}

/// The addresses a sidecar bound, read back from the ready file it writes once listening.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SidecarReady {
    pub admin_addr: SocketAddr,
    pub http_proxy_addr: Option<SocketAddr>,
    pub dns_addr: Option<SocketAddr>,
    #[serde(default)]
    pub ingress: Vec<IngressReady>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngressReady {
    pub port_name: String,
    pub discovery_name: String,
    pub addr: SocketAddr,
}

/// ECS's task lifecycle, as `skiff ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Running { healthy: Health },
    Stopping { reason: String },
    Stopped { reason: String },
}

/// A task as the service controller sees it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskInfo {
    pub id: String,
    pub arn: String,
    pub ip: Ipv4Addr,
    pub sidecar: Option<SidecarReady>,
    /// The sidecar's process id.
    pub sidecar_pid: Option<u32>,
    pub containers: Vec<ContainerInfo>,
    pub status: TaskStatus,
}

/// One started container of a task.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    pub pid: Option<u32>,
}

/// Handle on a running task.
pub struct TaskHandle {
    pub info: watch::Receiver<TaskInfo>,
    /// The plan this task was started from (a deployment replaces tasks of older plans).
    pub plan: Arc<ServicePlan>,
    stop: Option<tokio::sync::oneshot::Sender<String>>,
    join: tokio::task::JoinHandle<()>,
}

// === impl TaskHandle ===

impl TaskHandle {
    /// Starts a task of `service` at `ip`; returns at once, the task runs in the background.
    pub fn start(ctx: TaskContext, service: Arc<ServicePlan>, ip: Ipv4Addr) -> TaskHandle {
        let id = new_task_id();
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_owned());
        let arn = format!(
            "arn:aws:ecs:{region}:000000000000:task/{}/{id}",
            service.cluster
        );
        let (info_tx, info) = watch::channel(TaskInfo {
            id,
            arn,
            ip,
            sidecar: None,
            sidecar_pid: None,
            containers: Vec::new(),
            status: TaskStatus::Provisioning,
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(run(ctx, service.clone(), info_tx, stop_rx));
        TaskHandle {
            info,
            plan: service,
            stop: Some(stop),
            join,
        }
    }

    /// Asks the task to stop (drain, SIGTERM, SIGKILL after `stopTimeout`).
    pub fn request_stop(&mut self, reason: impl Into<String>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reason.into());
        }
    }

    /// Whether the runner asked this task to stop (rather than it failing by itself).
    pub fn stop_requested(&self) -> bool {
        self.stop.is_none()
    }

    /// Running, and healthy where the task definition has health checks: it serves traffic.
    pub fn serving(&self, checked: bool) -> bool {
        match self.info.borrow().status {
            TaskStatus::Running { healthy } => {
                healthy == Health::Healthy || (!checked && healthy == Health::Unknown)
            }
            _ => false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits until the task has stopped and every process of it has exited.
    pub async fn wait(&mut self) {
        let _ = (&mut self.join).await;
    }
}

fn new_task_id() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// A started container and what its dependants wait on.
struct Running {
    plan: ContainerPlan,
    child: Child,
    health: watch::Receiver<Health>,
    exit: Option<ExitStatus>,
}

async fn run(
    ctx: TaskContext,
    service: Arc<ServicePlan>,
    info: watch::Sender<TaskInfo>,
    mut stop: tokio::sync::oneshot::Receiver<String>,
) {
    let (id, ip) = {
        let i = info.borrow();
        (i.id.clone(), i.ip)
    };
    let short = &id[..8];
    let task_dir = ctx.state_dir.join("tasks").join(&id);
    let _ = tokio::fs::create_dir_all(&task_dir).await;

    // 0. awsvpc: the task's own network namespace; every process of the task runs inside it.
    let mut task_netns: Option<TaskNetns> = None;
    if let Some(net) = &ctx.network {
        match net.add_task(&id, ip, "").await {
            Ok(ns) => task_netns = Some(ns),
            Err(e) => {
                let reason = format!("ResourceInitializationError: network namespace: {e}");
                tracing::warn!(service = %service.name, task = short, %reason, "task failed");
                info.send_modify(|i| i.status = TaskStatus::Stopped { reason });
                return;
            }
        }
    }
    let wrap = task_netns
        .as_ref()
        .map(netns::exec_prefix)
        .unwrap_or_default();

    // 1. The sidecar first, as ECS starts the Service Connect agent before the app.
    let mut sidecar = None;
    if service.namespace.is_some() {
        match start_sidecar(
            &ctx,
            &service,
            &id,
            ip,
            &task_dir,
            &wrap,
            task_netns.as_ref(),
        )
        .await
        {
            Ok((child, ready)) => {
                let pid = child.id();
                sidecar = Some(child);
                info.send_modify(|i| {
                    i.sidecar = Some(ready);
                    i.sidecar_pid = pid;
                });
            }
            Err(e) => {
                let reason = format!("sidecar failed to start: {e}");
                tracing::warn!(service = %service.name, task = short, %reason, "task failed");
                if let (Some(net), Some(ns)) = (&ctx.network, &task_netns) {
                    net.remove_task(ns).await;
                }
                info.send_modify(|i| i.status = TaskStatus::Stopped { reason });
                return;
            }
        }
    }
    info.send_modify(|i| i.status = TaskStatus::Pending);

    // 2. Containers in dependsOn order, each waiting on its dependencies' conditions.
    let env = task_environment(&ctx, &service, &info.borrow(), task_netns.is_some());
    let argv0 = {
        let exe = ctx.skiff_exe.clone();
        move |p: &str| {
            if p == "skiff" {
                exe.display().to_string()
            } else {
                p.to_owned()
            }
        }
    };
    let mut running: Vec<Running> = Vec::new();
    let mut failure: Option<String> = None;

    // FireLens: the task's log router stands in for the container with firelensConfiguration.
    let mut log_router: Option<(
        LogRouterHandle,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )> = None;
    let mut log_router_registration: Option<firelens::Registration> = None;
    if let Some(fl) = &service.firelens {
        let outputs: Vec<(String, BTreeMap<String, String>)> = service
            .containers
            .iter()
            .filter_map(|c| c.firelens_options.clone().map(|o| (c.name.clone(), o)))
            .collect();
        let metadata = skiff_logrouter::EcsMetadata {
            cluster: Some(service.cluster.clone()),
            task_arn: Some(info.borrow().arn.clone()),
            task_definition: Some(format!("{}:{}", service.family, service.revision)),
            ..skiff_logrouter::EcsMetadata::default()
        };
        match firelens::start(fl, &outputs, &id, ip, &task_dir, metadata).await {
            Ok(router) => {
                if let Some(addr) = router.metrics_addr() {
                    use skiff_registry_client::attrs;
                    let a = BTreeMap::from([
                        (attrs::ECS_CLUSTER_NAME.to_owned(), service.cluster.clone()),
                        (attrs::ECS_SERVICE_NAME.to_owned(), service.name.clone()),
                        (
                            attrs::ECS_TASK_DEFINITION_FAMILY.to_owned(),
                            service.family.clone(),
                        ),
                        (attrs::ECS_TASK_ARN.to_owned(), info.borrow().arn.clone()),
                    ]);
                    let ns = service
                        .namespace
                        .as_deref()
                        .unwrap_or(firelens::DEFAULT_NAMESPACE);
                    match firelens::register(&ctx.registry_url, ns, &id, addr, a).await {
                        Ok(r) => log_router_registration = Some(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "log router not registered for scraping")
                        }
                    }
                }
                let handle = router.handle();
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let join = tokio::spawn(async move {
                    if let Err(e) = router
                        .run(async {
                            let _ = rx.await;
                        })
                        .await
                    {
                        tracing::warn!(error = %e, "log router stopped with an error");
                    }
                });
                info.send_modify(|i| {
                    i.containers.push(ContainerInfo {
                        name: fl.router_container.clone(),
                        image: "skiff logrouter (FireLens)".into(),
                        pid: None,
                    })
                });
                log_router = Some((handle, tx, join));
            }
            Err(e) => {
                failure = Some(format!(
                    "ResourceInitializationError: FireLens log router: {e}"
                ))
            }
        }
    }

    for idx in ContainerPlan::start_order(&service.containers) {
        if failure.is_some() {
            break;
        }
        let plan = service.containers[idx].clone();
        if plan.log_router && log_router.is_some() {
            continue; // Skiff's log router runs in its place (above).
        }
        if let Err(reason) = wait_dependencies(&plan, &mut running).await {
            failure = Some(reason);
            break;
        }
        let mut argv = wrap.clone();
        argv.extend(plan.argv.iter().cloned());
        if let Some(first) = argv.get_mut(wrap.len()) {
            *first = argv0(first);
        }
        let mut cenv = env.clone();
        cenv.extend(plan.environment.clone());
        cenv.insert("ECS_CONTAINER_NAME".into(), plan.name.clone());
        let sink = match (&plan.firelens_options, &log_router) {
            (Some(_), Some((router, _, _))) => process::Sink::Route {
                router: Box::new(router.clone()),
                tag: firelens::tag(&plan.name, &id),
                container: plan.name.clone(),
            },
            _ => process::Sink::Print {
                prefix: format!("{}/{short} {}", service.name, plan.name).into(),
                logs: ctx.logs.clone(),
            },
        };
        let child = match process::spawn(&argv, &cenv, None, sink) {
            Ok(c) => c,
            Err(e) => {
                failure = Some(format!(
                    "CannotStartContainerError: container {}: {e}",
                    plan.name
                ));
                break;
            }
        };
        info.send_modify(|i| {
            i.containers.push(ContainerInfo {
                name: plan.name.clone(),
                image: plan.image.clone(),
                pid: child.id(),
            })
        });
        let (htx, hrx) = watch::channel(Health::Unknown);
        if let Some(hc) = plan.health_check.clone() {
            tokio::spawn(health::run(
                hc,
                wrap.clone(),
                argv0.clone(),
                cenv.clone(),
                htx,
            ));
        } else {
            drop(htx);
        }
        running.push(Running {
            plan,
            child,
            health: hrx,
            exit: None,
        });
    }

    // 3. Running until an essential container stops or turns unhealthy, or we are asked to stop.
    let reason = match failure {
        Some(reason) => reason,
        None => {
            info.send_modify(|i| {
                i.status = TaskStatus::Running {
                    healthy: Health::Unknown,
                }
            });
            supervise(&mut running, &mut sidecar, &info, &mut stop).await
        }
    };
    tracing::info!(service = %service.name, task = short, %reason, "task stopping");
    info.send_modify(|i| {
        i.status = TaskStatus::Stopping {
            reason: reason.clone(),
        }
    });

    // 4. Stop: the sidecar drains first (clients learn the change while the app still serves),
    // then containers in reverse start order get SIGTERM and, after stopTimeout, SIGKILL.
    if let Some(mut sc) = sidecar.take() {
        process::stop(&mut sc, ctx.drain + Duration::from_secs(5)).await;
    }
    for r in running.iter_mut().rev() {
        if r.exit.is_none() {
            r.exit = process::stop(&mut r.child, r.plan.stop_timeout).await;
        }
    }
    // The log router goes last, so it carries every line the containers wrote.
    if let Some(r) = log_router_registration.take() {
        r.deregister().await;
    }
    if let Some((_, stop, join)) = log_router.take() {
        let _ = stop.send(());
        let _ = join.await;
    }
    if let (Some(net), Some(ns)) = (&ctx.network, &task_netns) {
        net.remove_task(ns).await;
    }
    let _ = tokio::fs::remove_dir_all(&task_dir).await;
    info.send_modify(|i| i.status = TaskStatus::Stopped { reason });
}

async fn start_sidecar(
    ctx: &TaskContext,
    service: &ServicePlan,
    task_id: &str,
    ip: Ipv4Addr,
    task_dir: &std::path::Path,
    wrap: &[String],
    netns: Option<&TaskNetns>,
) -> Result<(Child, SidecarReady), RunnerError> {
    let ready_file = task_dir.join("sidecar.json");
    let _ = tokio::fs::remove_file(&ready_file).await;
    let app_host = if netns.is_some() {
        "127.0.0.1".to_owned()
    } else {
        ip.to_string()
    };
    let mut argv: Vec<String> = wrap.to_vec();
    argv.extend([
        ctx.skiff_exe.display().to_string(),
        "proxy".into(),
        "--task-definition".into(),
        service.task_definition_path.display().to_string(),
        "--service".into(),
        service.service_path.display().to_string(),
        "--registry".into(),
        ctx.registry_url.clone(),
        "--task-id".into(),
        task_id.into(),
        "--bind-ip".into(),
        ip.to_string(),
        "--app-host".into(),
        app_host,
        "--drain-ms".into(),
        ctx.drain.as_millis().to_string(),
        "--ready-file".into(),
        ready_file.display().to_string(),
    ]);
    if let Some(ns) = netns {
        // The task's own loopback carries the alias VIPs; its /etc/hosts names them.
        argv.extend([
            "--vip-cidr".to_owned(),
            "127.255.0.0/16".to_owned(),
            "--hosts-file".to_owned(),
            format!("/etc/netns/{}/hosts", ns.name),
        ]);
    }
    let prefix: Arc<str> = format!("{}/{} ~sidecar", service.name, &task_id[..8]).into();
    let sink = process::Sink::Print {
        prefix,
        logs: ctx.logs.clone(),
    };
    let mut child = process::spawn(&argv, &BTreeMap::new(), None, sink)?;
    let deadline = Instant::now() + SIDECAR_START_TIMEOUT;
    loop {
        if let Ok(bytes) = tokio::fs::read(&ready_file).await
            && let Ok(ready) = serde_json::from_slice::<SidecarReady>(&bytes)
        {
            return Ok((child, ready));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(RunnerError::SidecarExited(status.to_string()));
        }
        if Instant::now() >= deadline {
            process::stop(&mut child, Duration::from_secs(1)).await;
            return Err(RunnerError::SidecarTimeout(SIDECAR_START_TIMEOUT));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// The environment every container of the task gets on top of its own `environment`.
fn task_environment(
    ctx: &TaskContext,
    service: &ServicePlan,
    info: &TaskInfo,
    own_netns: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    // Where the app listens: its own address in host mode; in awsvpc mode the task has its own
    // network, and its sidecar reaches it on loopback.
    let app_host = if own_netns {
        "127.0.0.1".to_owned()
    } else {
        info.ip.to_string()
    };
    env.insert("SKIFF_APP_HOST".into(), app_host);
    if let Some(dir) = ctx.skiff_exe.parent() {
        // `skiff ...` in commands and health checks finds this binary first.
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        env.insert("PATH".into(), format!("{}:{path}", dir.display()));
    }
    env.insert("ECS_TASK_ID".into(), info.id.clone());
    env.insert("ECS_TASK_ARN".into(), info.arn.clone());
    env.insert("ECS_CLUSTER".into(), service.cluster.clone());
    env.insert("ECS_SERVICE_NAME".into(), service.name.clone());
    env.insert(
        "ECS_TASK_DEFINITION".into(),
        format!("{}:{}", service.family, service.revision),
    );
    env.insert("SKIFF_REGISTRY_URL".into(), ctx.registry_url.clone());
    if let Some(sc) = &info.sidecar {
        if let Some(proxy) = sc.http_proxy_addr {
            let url = format!("http://{proxy}");
            env.insert("HTTP_PROXY".into(), url.clone());
            env.insert("http_proxy".into(), url);
            let no_proxy = format!("localhost,127.0.0.1,{}", info.ip);
            env.insert("NO_PROXY".into(), no_proxy.clone());
            env.insert("no_proxy".into(), no_proxy);
        }
        env.insert("SKIFF_SIDECAR_ADMIN".into(), sc.admin_addr.to_string());
    }
    env
}

/// Waits until every dependency's condition holds; an impossible condition fails the task.
async fn wait_dependencies(plan: &ContainerPlan, running: &mut [Running]) -> Result<(), String> {
    for dep in &plan.depends_on {
        let Some(r) = running.iter_mut().find(|r| r.plan.name == dep.container) else {
            continue;
        };
        match dep.condition {
            Condition::Start => {}
            Condition::Complete | Condition::Success => {
                let status = match r.exit {
                    Some(s) => s,
                    None => {
                        let s = r.child.wait().await.map_err(|e| e.to_string())?;
                        r.exit = Some(s);
                        s
                    }
                };
                if dep.condition == Condition::Success && !status.success() {
                    return Err(format!(
                        "dependency {} of container {} exited with {status}, SUCCESS was required",
                        dep.container, plan.name
                    ));
                }
            }
            Condition::Healthy => {
                let mut rx = r.health.clone();
                let state = rx
                    .wait_for(|h| *h != Health::Unknown)
                    .await
                    .map(|h| *h)
                    .unwrap_or(Health::Unhealthy);
                if state != Health::Healthy {
                    return Err(format!(
                        "dependency {} of container {} is unhealthy, HEALTHY was required",
                        dep.container, plan.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Watches the running task; returns the reason it must stop.
async fn supervise(
    running: &mut [Running],
    sidecar: &mut Option<Child>,
    info: &watch::Sender<TaskInfo>,
    stop: &mut tokio::sync::oneshot::Receiver<String>,
) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            reason = &mut *stop => {
                return reason.unwrap_or_else(|_| "runner stopped".into());
            }
            _ = tick.tick() => {}
        }
        for r in running.iter_mut() {
            if r.exit.is_none()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                r.exit = Some(status);
                if r.plan.essential {
                    return format!(
                        "Essential container in task exited: {} ({status})",
                        r.plan.name
                    );
                }
            }
            if r.plan.essential && *r.health.borrow() == Health::Unhealthy {
                return format!(
                    "Task failed container health checks: {} is unhealthy",
                    r.plan.name
                );
            }
        }
        if let Some(sc) = sidecar.as_mut()
            && let Ok(Some(status)) = sc.try_wait()
        {
            *sidecar = None;
            return format!("Service Connect sidecar exited ({status})");
        }
        let healthy = task_health(running);
        info.send_if_modified(|i| {
            let new = TaskStatus::Running { healthy };
            if i.status != new {
                i.status = new;
                true
            } else {
                false
            }
        });
    }
}

/// ECS's task health: HEALTHY when every essential container with a check is healthy.
fn task_health(running: &[Running]) -> Health {
    let mut any = false;
    for r in running
        .iter()
        .filter(|r| r.plan.essential && r.plan.health_check.is_some())
    {
        any = true;
        match *r.health.borrow() {
            Health::Healthy => {}
            other => return other,
        }
    }
    if any {
        Health::Healthy
    } else {
        Health::Unknown
    }
}
