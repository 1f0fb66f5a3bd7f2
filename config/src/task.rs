//! ECS task definitions, as `aws ecs register-task-definition --cli-input-json` takes them.
//!
//! The types here are the *validated* shape: defaults applied, ranges checked,
//! times as [`Duration`]. The `parse` submodule builds them from JSON; [`crate::load_files`] is the way in.

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use serde_json::Value;

use crate::check::choice_enum;
use crate::names::PortName;

mod parse;

pub(crate) use parse::{log_configuration as parse_log_configuration, parse};

/// At most this many containers in one task definition (an ECS quota).
pub const MAX_CONTAINERS: usize = 10;
/// How long a container gets between SIGTERM and SIGKILL when `stopTimeout` is not given.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `stopTimeout`.
pub const MAX_STOP_TIMEOUT_SECONDS: u32 = 120;
/// The smallest task-level `cpu`, in CPU units.
pub const MIN_TASK_CPU_UNITS: u32 = 128;
/// The smallest hard memory limit Docker gives a container, in MiB.
pub const MIN_CONTAINER_MEMORY_MIB: u32 = 6;

/// `healthCheck.interval` default and range, in seconds.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
pub const HEALTH_CHECK_INTERVAL_SECONDS: std::ops::RangeInclusive<u32> = 5..=300;
/// `healthCheck.timeout` default and range, in seconds.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
pub const HEALTH_CHECK_TIMEOUT_SECONDS: std::ops::RangeInclusive<u32> = 2..=120;
/// `healthCheck.retries` default and range.
pub const DEFAULT_HEALTH_CHECK_RETRIES: NonZeroU32 = NonZeroU32::MIN.saturating_add(2);
pub const HEALTH_CHECK_RETRIES: std::ops::RangeInclusive<u32> = 1..=10;
/// `healthCheck.startPeriod` default (off) and range, in seconds.
pub const DEFAULT_HEALTH_CHECK_START_PERIOD: Duration = Duration::ZERO;
pub const HEALTH_CHECK_START_PERIOD_SECONDS: std::ops::RangeInclusive<u32> = 0..=300;

/// A validated task definition.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDefinition {
    /// `family`: the name services refer to.
    pub family: String,
    /// `networkMode`, `bridge` when not given (as on EC2 Linux).
    pub network_mode: NetworkMode,
    /// `requiresCompatibilities`.
    pub requires_compatibilities: Vec<Compatibility>,
    /// Task-level `cpu` in CPU units (1024 = 1 vCPU).
    pub cpu_units: Option<u32>,
    /// Task-level `memory` in MiB.
    pub memory_mib: Option<u32>,
    /// `taskRoleArn`, kept but not used by Skiff.
    pub task_role_arn: Option<String>,
    /// `executionRoleArn`, kept but not used by Skiff.
    pub execution_role_arn: Option<String>,
    /// `containerDefinitions`, in order; names are unique and at least one is essential.
    pub container_definitions: Vec<ContainerDefinition>,
    /// Other fields AWS documents (`volumes`, `tags`, `runtimePlatform`, ...), kept as written.
    pub other: BTreeMap<String, Value>,
}

/// A validated `containerDefinitions[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    /// `essential`, true when not given: the task stops when an essential container stops.
    pub essential: bool,
    pub entry_point: Vec<String>,
    pub command: Vec<String>,
    /// `environment`, in order.
    pub environment: Vec<EnvironmentVariable>,
    /// `secrets`: environment variables whose values come from elsewhere.
    pub secrets: Vec<Secret>,
    /// `cpu` in CPU units.
    pub cpu_units: Option<u32>,
    /// `memory`: the hard limit in MiB.
    pub memory_mib: Option<u32>,
    /// `memoryReservation`: the soft limit in MiB.
    pub memory_reservation_mib: Option<u32>,
    pub port_mappings: Vec<PortMapping>,
    pub health_check: Option<HealthCheck>,
    pub depends_on: Vec<ContainerDependency>,
    pub log_configuration: Option<LogConfiguration>,
    /// Present on the task's log router container.
    pub firelens_configuration: Option<FirelensConfiguration>,
    /// `stopTimeout`: SIGTERM to SIGKILL, 30 s when not given, at most 120 s.
    pub stop_timeout: Duration,
    /// `startTimeout`: how long to wait for `dependsOn` conditions.
    pub start_timeout: Option<Duration>,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub docker_labels: BTreeMap<String, String>,
    /// Other fields AWS documents (`mountPoints`, `ulimits`, `linuxParameters`, ...), kept as written.
    pub other: BTreeMap<String, Value>,
}

/// An `environment[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentVariable {
    pub name: String,
    pub value: String,
}

/// A `secrets[]` or `secretOptions[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub value_from: String,
}

/// A validated `portMappings[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// `name`, what a service's `portName` refers to.
    pub name: Option<PortName>,
    pub container_port: NonZeroU16,
    /// `hostPort`; in `awsvpc` and `host` mode it equals `containerPort` when given; 0 = dynamic.
    pub host_port: Option<u16>,
    /// `protocol`, `tcp` when not given.
    pub protocol: TransportProtocol,
    /// `appProtocol`; `None` means plain TCP for Service Connect.
    pub app_protocol: Option<AppProtocol>,
}

/// A validated `healthCheck`, with ECS's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub command: HealthCheckCommand,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: NonZeroU32,
    /// Failures during this grace period do not count; zero = none.
    pub start_period: Duration,
}

/// `healthCheck.command`, by its first element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckCommand {
    /// `["CMD", program, args...]`: run directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "script"]`: run with `/bin/sh -c`.
    Shell(String),
    /// `["NONE"]`: no health check.
    Disabled,
}

/// A `dependsOn[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerDependency {
    pub container_name: String,
    pub condition: DependencyCondition,
}

/// A `logConfiguration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfiguration {
    pub log_driver: LogDriver,
    pub options: BTreeMap<String, String>,
    pub secret_options: Vec<Secret>,
}

/// A `firelensConfiguration`: this container is the task's log router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirelensConfiguration {
    /// `type`.
    pub kind: FirelensType,
    /// `options`: `enable-ecs-log-metadata`, `config-file-type`, `config-file-value`.
    pub options: BTreeMap<String, String>,
}

choice_enum! {
    /// `networkMode`.
    pub enum NetworkMode {
        Awsvpc = "awsvpc",
        Bridge = "bridge",
        Host = "host",
        None = "none",
    }
}

choice_enum! {
    /// `requiresCompatibilities[]`.
    pub enum Compatibility {
        Ec2 = "EC2",
        Fargate = "FARGATE",
        External = "EXTERNAL",
        ManagedInstances = "MANAGED_INSTANCES",
    }
}

choice_enum! {
    /// `portMappings[].protocol`.
    pub enum TransportProtocol {
        Tcp = "tcp",
        Udp = "udp",
    }
}

choice_enum! {
    /// `portMappings[].appProtocol`: how Service Connect treats the port.
    pub enum AppProtocol {
        Http = "http",
        Http2 = "http2",
        Grpc = "grpc",
    }
}

choice_enum! {
    /// `dependsOn[].condition`.
    pub enum DependencyCondition {
        /// The dependency has started.
        Start = "START",
        /// The dependency has exited.
        Complete = "COMPLETE",
        /// The dependency has exited with status 0.
        Success = "SUCCESS",
        /// The dependency's health check passed.
        Healthy = "HEALTHY",
    }
}

choice_enum! {
    /// `logConfiguration.logDriver`.
    pub enum LogDriver {
        Awslogs = "awslogs",
        Awsfirelens = "awsfirelens",
        Fluentd = "fluentd",
        Gelf = "gelf",
        JsonFile = "json-file",
        Journald = "journald",
        Logentries = "logentries",
        Syslog = "syslog",
        Splunk = "splunk",
    }
}

choice_enum! {
    /// `firelensConfiguration.type`.
    pub enum FirelensType {
        Fluentbit = "fluentbit",
        Fluentd = "fluentd",
    }
}

// === impl TaskDefinition ===

impl TaskDefinition {
    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerDefinition> {
        self.container_definitions.iter().find(|c| c.name == name)
    }

    /// The port mapping named `name` and the container that declares it.
    pub fn port_mapping(&self, name: &str) -> Option<(&ContainerDefinition, &PortMapping)> {
        self.container_definitions.iter().find_map(|c| {
            c.port_mappings
                .iter()
                .find(|p| p.name.as_ref().is_some_and(|n| n.as_str() == name))
                .map(|p| (c, p))
        })
    }

    /// The container with `firelensConfiguration`, if any.
    pub fn log_router(&self) -> Option<&ContainerDefinition> {
        self.container_definitions
            .iter()
            .find(|c| c.firelens_configuration.is_some())
    }
}

#[cfg(test)]
mod tests;
