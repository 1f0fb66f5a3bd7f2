//! What the runner starts: services, tasks and containers, resolved from the ECS JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// ECS's default for `stopTimeout`: SIGKILL this long after SIGTERM.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One ECS service: `desiredCount` copies of a task definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    pub name: String,
    pub cluster: String,
    pub namespace: Option<String>,
    /// The Cloud Map services this service's tasks register in (`discoveryName`s).
    pub discovery_names: Vec<String>,
    pub family: String,
    pub revision: u32,
    pub task_definition_path: PathBuf,
    pub service_path: PathBuf,
    pub desired_count: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    pub containers: Vec<ContainerPlan>,
    /// Port mappings with a `hostPort`, published on 127.0.0.1 through the sidecar ingress.
    pub published: Vec<PublishedPort>,
    /// The task's FireLens log router, when a container has `firelensConfiguration`.
    pub firelens: Option<crate::firelens::FirelensPlan>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PublishedPort {
    pub host_port: u16,
    pub port_name: Option<String>,
    pub container_port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    /// `entryPoint` followed by `command`.
    pub argv: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub essential: bool,
    pub health_check: Option<HealthCheckPlan>,
    pub depends_on: Vec<Dependency>,
    pub stop_timeout: Duration,
    /// `awsfirelens` log options: stdout/stderr go to the task's log router, which gets an
    /// `[OUTPUT]` from these options (`Name` and the plugin's own keys).
    pub firelens_options: Option<BTreeMap<String, String>>,
    /// This is the task's FireLens log router: Skiff's log router stands in for it.
    pub log_router: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCommand {
    /// `["CMD", prog, args...]`: executed directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "..."]`: run by `/bin/sh -c`.
    Shell(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckPlan {
    pub command: HealthCommand,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Start,
    Complete,
    Success,
    Healthy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dependency {
    pub container: String,
    pub condition: Condition,
}

// === impl ContainerPlan ===

impl ContainerPlan {
    /// Containers in an order that respects `dependsOn` (the config crate refuses cycles).
    pub fn start_order(containers: &[ContainerPlan]) -> Vec<usize> {
        let mut order = Vec::with_capacity(containers.len());
        let mut placed = vec![false; containers.len()];
        while order.len() < containers.len() {
            let before = order.len();
            for (i, c) in containers.iter().enumerate() {
                if placed[i] {
                    continue;
                }
                let ready = c.depends_on.iter().all(|d| {
                    containers
                        .iter()
                        .position(|o| o.name == d.container)
                        .is_none_or(|j| placed[j])
                });
                if ready {
                    placed[i] = true;
                    order.push(i);
                }
            }
            if order.len() == before {
                // A cycle slipped through: start the rest in file order rather than hang.
                order.extend((0..containers.len()).filter(|i| !placed[*i]));
                break;
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, deps: &[&str]) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            image: "x".into(),
            argv: vec!["true".into()],
            environment: BTreeMap::new(),
            essential: true,
            health_check: None,
            depends_on: deps
                .iter()
                .map(|d| Dependency {
                    container: (*d).into(),
                    condition: Condition::Start,
                })
                .collect(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            firelens_options: None,
            log_router: false,
        }
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let cs = vec![
            container("app", &["log_router", "init"]),
            container("init", &["log_router"]),
            container("log_router", &[]),
        ];
        let names: Vec<_> = ContainerPlan::start_order(&cs)
            .into_iter()
            .map(|i| cs[i].name.as_str())
            .collect();
        assert_eq!(names, ["log_router", "init", "app"]);
    }
}
