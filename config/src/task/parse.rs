//! Reads a task definition from JSON and checks ECS's rules, reporting every problem.

use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::check::{Checker, Obj, describe, nearest};
use crate::names::{PortName, check_resource_name};
use crate::units::{parse_cpu_units, parse_memory_mib};

/// Fields Skiff reads.
const FIELDS: &[&str] = &[
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "requiresCompatibilities",
    "cpu",
    "memory",
];
/// Fields AWS documents that Skiff keeps as written.
const OTHER_FIELDS: &[&str] = &[
    "volumes",
    "placementConstraints",
    "tags",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
    "enableFaultInjection",
];

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "essential",
    "entryPoint",
    "command",
    "environment",
    "secrets",
    "cpu",
    "memory",
    "memoryReservation",
    "portMappings",
    "healthCheck",
    "dependsOn",
    "logConfiguration",
    "firelensConfiguration",
    "stopTimeout",
    "startTimeout",
    "workingDirectory",
    "user",
    "dockerLabels",
];
const CONTAINER_OTHER_FIELDS: &[&str] = &[
    "links",
    "repositoryCredentials",
    "restartPolicy",
    "environmentFiles",
    "mountPoints",
    "volumesFrom",
    "linuxParameters",
    "versionConsistency",
    "hostname",
    "disableNetworking",
    "privileged",
    "readonlyRootFilesystem",
    "dnsServers",
    "dnsSearchDomains",
    "extraHosts",
    "dockerSecurityOptions",
    "interactive",
    "pseudoTerminal",
    "ulimits",
    "systemControls",
    "resourceRequirements",
    "credentialSpecs",
];

const PORT_MAPPING_FIELDS: &[&str] = &[
    "name",
    "containerPort",
    "hostPort",
    "protocol",
    "appProtocol",
    "containerPortRange",
];
const HEALTH_CHECK_FIELDS: &[&str] = &["command", "interval", "timeout", "retries", "startPeriod"];
const DEPENDENCY_FIELDS: &[&str] = &["containerName", "condition"];
const LOG_FIELDS: &[&str] = &["logDriver", "options", "secretOptions"];
const FIRELENS_FIELDS: &[&str] = &["type", "options"];
const FIRELENS_OPTIONS: &[&str] = &[
    "enable-ecs-log-metadata",
    "config-file-type",
    "config-file-value",
];

/// Reads and checks the task definition at the document root.
pub(crate) fn parse(cx: &mut Checker<'_>, root: &Value) -> Option<TaskDefinition> {
    let fields: Vec<&str> = FIELDS.iter().chain(OTHER_FIELDS).copied().collect();
    let o = cx.object("", root, &fields)?;

    let family = cx.str_field_with(&o, "family", true, |s| {
        check_resource_name(s).map(|()| s.to_owned())
    });
    let task_role_arn = cx.str_field(&o, "taskRoleArn", false);
    let execution_role_arn = cx.str_field(&o, "executionRoleArn", false);
    let network_mode_given = cx.choice_field::<NetworkMode>(&o, "networkMode", false);
    let network_mode = network_mode_given.unwrap_or(NetworkMode::Bridge);
    let requires_compatibilities = cx
        .list_field(&o, "requiresCompatibilities", false, |cx, p, v| {
            cx.as_choice::<Compatibility>(p, v)
        })
        .unwrap_or_default();
    let cpu_units = amount_field(cx, &o, "cpu", "\"256\" or \"0.25 vCPU\"", |s| {
        let units = parse_cpu_units(s)?;
        if units < MIN_TASK_CPU_UNITS {
            return Err(format!(
                "{s:?} is {units} CPU units; a task needs at least {MIN_TASK_CPU_UNITS}"
            ));
        }
        Ok(units)
    });
    let memory_mib = amount_field(cx, &o, "memory", "\"512\" or \"1 GB\"", |s| {
        let mib = parse_memory_mib(s)?;
        if mib < MIN_CONTAINER_MEMORY_MIB {
            return Err(format!(
                "{s:?} is {mib} MiB; a task needs at least {MIN_CONTAINER_MEMORY_MIB}"
            ));
        }
        Ok(mib)
    });

    if requires_compatibilities.contains(&Compatibility::Fargate) {
        let invalid_already_reported = o.has("networkMode") && network_mode_given.is_none();
        if network_mode != NetworkMode::Awsvpc && !invalid_already_reported {
            cx.report(
                &o.child("networkMode"),
                "tasks that require FARGATE must use networkMode \"awsvpc\"",
            );
        }
        for key in ["cpu", "memory"] {
            if !o.has(key) {
                cx.report(
                    &o.child(key),
                    "tasks that require FARGATE must set a task-level value",
                );
            }
        }
    }

    let containers = cx.list_field(&o, "containerDefinitions", true, |cx, p, v| {
        container(cx, p, v, network_mode)
    });
    if let Some(raw) = o.get("containerDefinitions").and_then(Value::as_array) {
        if raw.is_empty() {
            cx.report(
                &o.child("containerDefinitions"),
                "a task definition needs at least one container",
            );
        } else if raw.len() > MAX_CONTAINERS {
            cx.report(
                &o.child("containerDefinitions"),
                format!(
                    "{} containers; a task definition holds at most {MAX_CONTAINERS}",
                    raw.len()
                ),
            );
        }
    }
    let containers = containers?;
    check_containers(cx, &containers, network_mode, cpu_units, memory_mib);

    Some(TaskDefinition {
        family: family?,
        network_mode,
        requires_compatibilities,
        cpu_units,
        memory_mib,
        task_role_arn,
        execution_role_arn,
        container_definitions: containers,
        other: o.others(OTHER_FIELDS),
    })
}

/// Task-level `cpu` and `memory`: strings, as AWS takes them.
fn amount_field(
    cx: &mut Checker<'_>,
    o: &Obj<'_>,
    key: &str,
    example: &str,
    parse: impl FnOnce(&str) -> Result<u32, String>,
) -> Option<u32> {
    if let Some(v @ Value::Number(_)) = o.get(key) {
        cx.report(
            &o.child(key),
            format!("expected a string such as {example}, found {}", describe(v)),
        );
        return None;
    }
    cx.str_field_with(o, key, false, parse)
}

/// One container; rules that need the whole task are in [`check_containers`].
fn container(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
    network_mode: NetworkMode,
) -> Option<ContainerDefinition> {
    let fields: Vec<&str> = CONTAINER_FIELDS
        .iter()
        .chain(CONTAINER_OTHER_FIELDS)
        .copied()
        .collect();
    let o = cx.object(path, v, &fields)?;

    let name = cx.str_field_with(&o, "name", true, |s| {
        check_resource_name(s).map(|()| s.to_owned())
    });
    let image = cx.str_field_with(&o, "image", true, |s| {
        if s.trim().is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(s.to_owned())
        }
    });
    let essential = cx.bool_field(&o, "essential").unwrap_or(true);
    let entry_point = cx.strings_field(&o, "entryPoint").unwrap_or_default();
    let command = cx.strings_field(&o, "command").unwrap_or_default();
    let environment = cx
        .list_field(&o, "environment", false, |cx, p, v| {
            let e = cx.object(p, v, &["name", "value"])?;
            let name = cx.str_field(&e, "name", true);
            let value = cx.str_field(&e, "value", false).unwrap_or_default();
            Some(EnvironmentVariable { name: name?, value })
        })
        .unwrap_or_default();
    let secrets = cx
        .list_field(&o, "secrets", false, secret)
        .unwrap_or_default();
    let cpu_units = cx.u32_field(&o, "cpu", false, 0..=u32::MAX);
    let memory_mib = cx.u32_field(&o, "memory", false, MIN_CONTAINER_MEMORY_MIB..=u32::MAX);
    let memory_reservation_mib = cx.u32_field(
        &o,
        "memoryReservation",
        false,
        MIN_CONTAINER_MEMORY_MIB..=u32::MAX,
    );
    if let (Some(hard), Some(soft)) = (memory_mib, memory_reservation_mib)
        && soft > hard
    {
        cx.report(
            &o.child("memoryReservation"),
            format!("{soft} MiB is more than the hard limit `memory` ({hard} MiB)"),
        );
    }
    let port_mappings = cx
        .list_field(&o, "portMappings", false, |cx, p, v| {
            port_mapping(cx, p, v, network_mode)
        })
        .unwrap_or_default();
    if network_mode == NetworkMode::None
        && o.get("portMappings")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        cx.report(
            &o.child("portMappings"),
            "networkMode \"none\" allows no port mappings",
        );
    }
    if matches!(network_mode, NetworkMode::Awsvpc | NetworkMode::Host) && o.has("links") {
        cx.report(
            &o.child("links"),
            format!(
                "links are not supported in networkMode {:?}",
                network_mode.as_str()
            ),
        );
    }
    let health_check = cx.object_field(&o, "healthCheck", false, health_check);
    let depends_on = cx
        .list_field(&o, "dependsOn", false, |cx, p, v| {
            let d = cx.object(p, v, DEPENDENCY_FIELDS)?;
            let container_name = cx.str_field(&d, "containerName", true);
            let condition = cx.choice_field::<DependencyCondition>(&d, "condition", true);
            Some(ContainerDependency {
                container_name: container_name?,
                condition: condition?,
            })
        })
        .unwrap_or_default();
    let log_configuration = cx.object_field(&o, "logConfiguration", false, log_configuration);
    let firelens_configuration =
        cx.object_field(&o, "firelensConfiguration", false, firelens_configuration);
    let stop_timeout = cx
        .u32_field(&o, "stopTimeout", false, 0..=MAX_STOP_TIMEOUT_SECONDS)
        .map_or(DEFAULT_STOP_TIMEOUT, seconds);
    let start_timeout = cx
        .u32_field(&o, "startTimeout", false, 2..=120)
        .map(seconds);
    let working_directory = cx.str_field(&o, "workingDirectory", false);
    let user = cx.str_field(&o, "user", false);
    let docker_labels = cx.map_field(&o, "dockerLabels").unwrap_or_default();

    Some(ContainerDefinition {
        name: name?,
        image: image?,
        essential,
        entry_point,
        command,
        environment,
        secrets,
        cpu_units,
        memory_mib,
        memory_reservation_mib,
        port_mappings,
        health_check,
        depends_on,
        log_configuration,
        firelens_configuration,
        stop_timeout,
        start_timeout,
        working_directory,
        user,
        docker_labels,
        other: o.others(CONTAINER_OTHER_FIELDS),
    })
}

fn seconds(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

fn secret(cx: &mut Checker<'_>, path: &str, v: &Value) -> Option<Secret> {
    let s = cx.object(path, v, &["name", "valueFrom"])?;
    let name = cx.str_field(&s, "name", true);
    let value_from = cx.str_field(&s, "valueFrom", true);
    Some(Secret {
        name: name?,
        value_from: value_from?,
    })
}

fn port_mapping(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
    network_mode: NetworkMode,
) -> Option<PortMapping> {
    let o = cx.object(path, v, PORT_MAPPING_FIELDS)?;
    if o.has("containerPortRange") {
        cx.report(
            &o.child("containerPortRange"),
            "port ranges are not supported by Skiff; map each port with `containerPort`",
        );
        return None;
    }
    let name = cx.str_field_with(&o, "name", false, PortName::parse);
    let container_port = cx.u32_field(&o, "containerPort", true, 1..=65535);
    let host_port = cx.u32_field(&o, "hostPort", false, 0..=65535);
    let protocol = cx
        .choice_field::<TransportProtocol>(&o, "protocol", false)
        .unwrap_or(TransportProtocol::Tcp);
    let app_protocol = cx.choice_field::<AppProtocol>(&o, "appProtocol", false);
    if let (Some(c), Some(h)) = (container_port, host_port)
        && matches!(network_mode, NetworkMode::Awsvpc | NetworkMode::Host)
        && c != h
    {
        cx.report(
            &o.child("hostPort"),
            format!(
                "must equal containerPort ({c}) in networkMode {:?}, found {h}",
                network_mode.as_str()
            ),
        );
    }
    if app_protocol.is_some() && protocol == TransportProtocol::Udp {
        cx.report(
            &o.child("appProtocol"),
            "appProtocol applies to tcp port mappings only",
        );
    }
    Some(PortMapping {
        name,
        container_port: NonZeroU16::new(u16::try_from(container_port?).ok()?)?,
        host_port: host_port.and_then(|h| u16::try_from(h).ok()),
        protocol,
        app_protocol,
    })
}

fn health_check(cx: &mut Checker<'_>, path: &str, v: &Value) -> Option<HealthCheck> {
    let o = cx.object(path, v, HEALTH_CHECK_FIELDS)?;
    let command = cx.field(&o, "command", true).and_then(|(p, v)| {
        let words = cx.as_strings(&p, v)?;
        let (first, rest) = match words.split_first() {
            Some((first, rest)) => (first.as_str(), rest),
            None => {
                cx.report(&p, "must start with \"CMD\", \"CMD-SHELL\" or \"NONE\", found an empty array");
                return None;
            }
        };
        match first {
            "CMD" if !rest.is_empty() => Some(HealthCheckCommand::Exec(rest.to_vec())),
            "CMD-SHELL" if !rest.is_empty() => Some(HealthCheckCommand::Shell(rest.join(" "))),
            "NONE" => Some(HealthCheckCommand::Disabled),
            "CMD" | "CMD-SHELL" => {
                cx.report(&p, format!("{first:?} must be followed by the command to run"));
                None
            }
            other => {
                cx.report(
                    &crate::position::element(&p, 0),
                    format!("{other:?} is not \"CMD\", \"CMD-SHELL\" or \"NONE\"; write [\"CMD-SHELL\", {other:?}] to run it with a shell"),
                );
                None
            }
        }
    });
    let interval = cx
        .u32_field(&o, "interval", false, HEALTH_CHECK_INTERVAL_SECONDS)
        .map_or(DEFAULT_HEALTH_CHECK_INTERVAL, seconds);
    let timeout = cx
        .u32_field(&o, "timeout", false, HEALTH_CHECK_TIMEOUT_SECONDS)
        .map_or(DEFAULT_HEALTH_CHECK_TIMEOUT, seconds);
    let retries = cx
        .u32_field(&o, "retries", false, HEALTH_CHECK_RETRIES)
        .and_then(NonZeroU32::new)
        .unwrap_or(DEFAULT_HEALTH_CHECK_RETRIES);
    let start_period = cx
        .u32_field(&o, "startPeriod", false, HEALTH_CHECK_START_PERIOD_SECONDS)
        .map_or(DEFAULT_HEALTH_CHECK_START_PERIOD, seconds);
    Some(HealthCheck {
        command: command?,
        interval,
        timeout,
        retries,
        start_period,
    })
}

pub(crate) fn log_configuration(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
) -> Option<LogConfiguration> {
    let o = cx.object(path, v, LOG_FIELDS)?;
    let log_driver = cx.choice_field::<LogDriver>(&o, "logDriver", true);
    let options = cx.map_field(&o, "options").unwrap_or_default();
    let secret_options = cx
        .list_field(&o, "secretOptions", false, secret)
        .unwrap_or_default();
    Some(LogConfiguration {
        log_driver: log_driver?,
        options,
        secret_options,
    })
}

fn firelens_configuration(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
) -> Option<FirelensConfiguration> {
    let o = cx.object(path, v, FIRELENS_FIELDS)?;
    let kind = cx.choice_field::<FirelensType>(&o, "type", true);
    let options = cx.field(&o, "options", false).and_then(|(p, v)| {
        let options = cx.object(&p, v, FIRELENS_OPTIONS)?;
        // Type errors are left to `as_string_map` below.
        for (key, allowed) in [
            ("enable-ecs-log-metadata", ["true", "false"]),
            ("config-file-type", ["s3", "file"]),
        ] {
            if let Some(value) = options.get(key).and_then(Value::as_str)
                && !allowed.contains(&value)
            {
                cx.report(
                    &options.child(key),
                    format!(
                        "must be {:?} or {:?}, found {value:?}",
                        allowed[0], allowed[1]
                    ),
                );
            }
        }
        match (
            options.has("config-file-type"),
            options.has("config-file-value"),
        ) {
            (true, false) => cx.report(
                &options.child("config-file-value"),
                "missing required field: config-file-type needs a config-file-value",
            ),
            (false, true) => cx.report(
                &options.child("config-file-type"),
                "missing required field: config-file-value needs a config-file-type",
            ),
            _ => {}
        }
        cx.as_string_map(&p, v)
    });
    Some(FirelensConfiguration {
        kind: kind?,
        options: options.unwrap_or_default(),
    })
}

/// Rules across the containers of one task.
fn check_containers(
    cx: &mut Checker<'_>,
    containers: &[ContainerDefinition],
    network_mode: NetworkMode,
    cpu_units: Option<u32>,
    memory_mib: Option<u32>,
) {
    let at = |i: usize| format!("containerDefinitions[{i}]");

    // Names are unique.
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, c) in containers.iter().enumerate() {
        if let Some(&first) = by_name.get(c.name.as_str()) {
            cx.report(
                &format!("{}.name", at(i)),
                format!(
                    "{:?} is already the name of containerDefinitions[{first}]",
                    c.name
                ),
            );
        } else {
            by_name.insert(&c.name, i);
        }
    }

    if !containers.is_empty() && !containers.iter().any(|c| c.essential) {
        cx.report(
            "containerDefinitions",
            "at least one container must be essential (`essential` defaults to true)",
        );
    }

    // Port mapping names are unique in the task; in awsvpc and host mode so are ports.
    let mut port_names: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut ports: HashMap<(u16, TransportProtocol), (usize, usize)> = HashMap::new();
    for (i, c) in containers.iter().enumerate() {
        for (j, p) in c.port_mappings.iter().enumerate() {
            let here = format!("{}.portMappings[{j}]", at(i));
            if let Some(name) = &p.name {
                match port_names.get(name.as_str()) {
                    Some(&(fi, fj)) => cx.report(
                        &format!("{here}.name"),
                        format!("{name:?} is already the name of containerDefinitions[{fi}].portMappings[{fj}]", name = name.as_str()),
                    ),
                    None => {
                        port_names.insert(name.as_str(), (i, j));
                    }
                }
            }
            if matches!(network_mode, NetworkMode::Awsvpc | NetworkMode::Host) {
                let key = (p.container_port.get(), p.protocol);
                match ports.get(&key) {
                    Some(&(fi, fj)) => cx.report(
                        &format!("{here}.containerPort"),
                        format!(
                            "{}/{} is already mapped by containerDefinitions[{fi}].portMappings[{fj}]; containers of a task share one network",
                            key.0, key.1
                        ),
                    ),
                    None => {
                        ports.insert(key, (i, j));
                    }
                }
            }
        }
    }

    // Task-level limits hold their containers.
    if let Some(task_cpu) = cpu_units {
        let total: u64 = containers
            .iter()
            .filter_map(|c| c.cpu_units)
            .map(u64::from)
            .sum();
        if total > u64::from(task_cpu) {
            cx.report(
                "cpu",
                format!(
                    "the containers reserve {total} CPU units, more than the task's {task_cpu}"
                ),
            );
        }
    }
    if let Some(task_memory) = memory_mib {
        for (i, c) in containers.iter().enumerate() {
            if let Some(m) = c.memory_mib.filter(|&m| m > task_memory) {
                cx.report(
                    &format!("{}.memory", at(i)),
                    format!("{m} MiB is more than the task's memory ({task_memory} MiB)"),
                );
            }
        }
    }

    check_dependencies(cx, containers, &by_name);
    check_firelens(cx, containers);
}

fn check_dependencies(
    cx: &mut Checker<'_>,
    containers: &[ContainerDefinition],
    by_name: &HashMap<&str, usize>,
) {
    for (i, c) in containers.iter().enumerate() {
        for (j, d) in c.depends_on.iter().enumerate() {
            let here = format!("containerDefinitions[{i}].dependsOn[{j}]");
            let Some(&target) = by_name.get(d.container_name.as_str()) else {
                let mut message = format!("no container is named {:?}", d.container_name);
                if let Some(near) = nearest(
                    &d.container_name,
                    containers.iter().map(|c| c.name.as_str()),
                ) {
                    message.push_str(&format!("; did you mean {near:?}?"));
                }
                cx.report(&format!("{here}.containerName"), message);
                continue;
            };
            if target == i {
                cx.report(
                    &format!("{here}.containerName"),
                    "a container cannot depend on itself",
                );
                continue;
            }
            let t = &containers[target];
            match d.condition {
                DependencyCondition::Healthy if t.health_check.is_none() => cx.report(
                    &format!("{here}.condition"),
                    format!("HEALTHY needs a healthCheck on container {:?}, which has none", t.name),
                ),
                DependencyCondition::Complete | DependencyCondition::Success if t.essential => cx.report(
                    &format!("{here}.condition"),
                    format!("{} cannot be used with the essential container {:?}: an essential container that exits stops the task", d.condition, t.name),
                ),
                _ => {}
            }
        }
    }

    // No cycles: depth-first search, reporting each cycle once at the container that closes it.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        containers: &[ContainerDefinition],
        by_name: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        cycles: &mut Vec<(usize, usize, Vec<usize>)>,
    ) {
        marks[i] = Mark::Active;
        stack.push(i);
        for (j, d) in containers[i].depends_on.iter().enumerate() {
            let Some(&t) = by_name.get(d.container_name.as_str()) else {
                continue;
            };
            if t == i {
                continue;
            }
            match marks[t] {
                Mark::New => visit(t, containers, by_name, marks, stack, cycles),
                Mark::Active => {
                    let from = stack.iter().position(|&s| s == t).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(t);
                    cycles.push((i, j, cycle));
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
    }
    let mut marks = vec![Mark::New; containers.len()];
    let mut cycles = Vec::new();
    for i in 0..containers.len() {
        if marks[i] == Mark::New {
            visit(
                i,
                containers,
                by_name,
                &mut marks,
                &mut Vec::new(),
                &mut cycles,
            );
        }
    }
    for (i, j, cycle) in cycles {
        let names: Vec<&str> = cycle.iter().map(|&k| containers[k].name.as_str()).collect();
        cx.report(
            &format!("containerDefinitions[{i}].dependsOn[{j}]"),
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
}

fn check_firelens(cx: &mut Checker<'_>, containers: &[ContainerDefinition]) {
    let routers: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| c.firelens_configuration.is_some())
        .map(|(i, _)| i)
        .collect();
    for &extra in routers.iter().skip(1) {
        cx.report(
            &format!("containerDefinitions[{extra}].firelensConfiguration"),
            format!("a task has one log router; containerDefinitions[{}] already has a firelensConfiguration", routers[0]),
        );
    }
    for (i, c) in containers.iter().enumerate() {
        let Some(log) = &c.log_configuration else {
            continue;
        };
        if log.log_driver != LogDriver::Awsfirelens {
            continue;
        }
        let here = format!("containerDefinitions[{i}].logConfiguration.logDriver");
        if routers.is_empty() {
            cx.report(&here, "awsfirelens needs a log router: a container with firelensConfiguration in this task");
        } else if c.firelens_configuration.is_some() {
            cx.report(
                &here,
                "the log router cannot send its own logs to awsfirelens",
            );
        }
    }
}
