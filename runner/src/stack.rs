//! From a validated stack directory to what the runner starts.

use std::path::{Path, PathBuf};

use skiff_config::task::{DependencyCondition, HealthCheckCommand, LogDriver};
use skiff_config::{Diagnostics, Stack};

use crate::firelens::FirelensPlan;
use crate::plan::{
    Condition, ContainerPlan, Dependency, HealthCheckPlan, HealthCommand, PublishedPort,
    ServicePlan,
};

/// Loads and checks `dir` as a whole (nothing starts if any file has a problem) and plans
/// every service in it.
pub fn load(dir: &Path) -> Result<Vec<ServicePlan>, Diagnostics> {
    let stack = skiff_config::load_dir(dir)?;
    Ok(plan(&stack))
}

/// The absolute form of a definition's file: the sidecar reads it from its own directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn plan(stack: &Stack) -> Vec<ServicePlan> {
    let mut plans = Vec::new();
    for (service, service_file) in stack.services.iter().zip(&stack.service_files) {
        let Some(task) = stack.task_definition(service) else {
            continue; // load_dir refuses a service without its task definition
        };
        let containers = task
            .container_definitions
            .iter()
            .map(|c| ContainerPlan {
                name: c.name.clone(),
                image: c.image.clone(),
                argv: c.entry_point.iter().chain(&c.command).cloned().collect(),
                environment: c
                    .environment
                    .iter()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect(),
                essential: c.essential,
                health_check: c.health_check.as_ref().and_then(|h| {
                    let command = match &h.command {
                        HealthCheckCommand::Exec(argv) => HealthCommand::Exec(argv.clone()),
                        HealthCheckCommand::Shell(s) => HealthCommand::Shell(s.clone()),
                        HealthCheckCommand::Disabled => return None,
                    };
                    Some(HealthCheckPlan {
                        command,
                        interval: h.interval,
                        timeout: h.timeout,
                        retries: h.retries.get(),
                        start_period: h.start_period,
                    })
                }),
                depends_on: c
                    .depends_on
                    .iter()
                    .map(|d| Dependency {
                        container: d.container_name.clone(),
                        condition: match d.condition {
                            DependencyCondition::Start => Condition::Start,
                            DependencyCondition::Complete => Condition::Complete,
                            DependencyCondition::Success => Condition::Success,
                            DependencyCondition::Healthy => Condition::Healthy,
                        },
                    })
                    .collect(),
                stop_timeout: c.stop_timeout,
                firelens_options: c
                    .log_configuration
                    .as_ref()
                    .filter(|l| l.log_driver == LogDriver::Awsfirelens)
                    .map(|l| l.options.clone()),
                log_router: c.firelens_configuration.is_some(),
            })
            .collect();
        let published = task
            .container_definitions
            .iter()
            .flat_map(|c| &c.port_mappings)
            .filter_map(|p| {
                let host_port = p.host_port.filter(|h| *h != 0)?;
                Some(PublishedPort {
                    host_port,
                    port_name: p.name.as_ref().map(|n| n.as_str().to_owned()),
                    container_port: p.container_port.get(),
                })
            })
            .collect();
        plans.push(ServicePlan {
            name: service.service_name.clone(),
            cluster: service.cluster.clone(),
            namespace: service
                .service_connect
                .as_ref()
                .map(|sc| sc.namespace.clone()),
            discovery_names: service
                .service_connect
                .iter()
                .flat_map(|sc| &sc.services)
                .map(|s| s.discovery_name.as_str().to_owned())
                .collect(),
            family: task.family.clone(),
            revision: service.task_definition.revision.map_or(1, |r| r.get()),
            task_definition_path: stack
                .task_definition_files
                .get(&task.family)
                .map(|p| absolute(p))
                .unwrap_or_default(),
            service_path: absolute(service_file),
            desired_count: service.desired_count,
            minimum_healthy_percent: service.deployment_configuration.minimum_healthy_percent,
            maximum_percent: service.deployment_configuration.maximum_percent,
            containers,
            published,
            firelens: task.log_router().and_then(|c| {
                c.firelens_configuration.as_ref().map(|f| FirelensPlan {
                    router_container: c.name.clone(),
                    options: f.options.clone(),
                })
            }),
        });
    }
    plans
}
