//! ECS services, as `aws ecs create-service --cli-input-json` takes them, with
//! their Service Connect configuration.
//!
//! Timeouts are kept *as written*: their defaults depend on the `appProtocol`
//! of the port mapping, which lives in the task definition, so
//! [`ServiceConnectService::idle_timeout`] and
//! [`ServiceConnectService::per_request_timeout`] resolve them given that.

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use serde_json::Value;

use crate::check::choice_enum;
use crate::names::{DiscoveryName, DnsName, PortName};
use crate::task::{AppProtocol, LogConfiguration};

mod parse;

pub(crate) use parse::parse;

/// The cluster a service runs in when `cluster` is not given.
pub const DEFAULT_CLUSTER: &str = "default";
/// `deploymentConfiguration.minimumHealthyPercent` when not given.
pub const DEFAULT_MINIMUM_HEALTHY_PERCENT: u32 = 100;
/// `deploymentConfiguration.maximumPercent` when not given.
pub const DEFAULT_MAXIMUM_PERCENT: u32 = 200;
/// Idle timeout of `http`, `http2` and `grpc` ports when not given.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle timeout of TCP ports (no `appProtocol`) when not given.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// At most this many client aliases per Service Connect service (ECS's limit).
pub const MAX_CLIENT_ALIASES: usize = 1;

/// A validated service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// `serviceName`, unique in its cluster.
    pub service_name: String,
    /// The name of `cluster` (also when given by ARN), [`DEFAULT_CLUSTER`] when not given.
    pub cluster: String,
    /// `taskDefinition`: which task definition family (and revision) to run.
    pub task_definition: TaskDefinitionRef,
    /// `desiredCount`: how many tasks to keep running (1 per host for `DAEMON`).
    pub desired_count: u32,
    /// `schedulingStrategy`, `REPLICA` when not given.
    pub scheduling_strategy: SchedulingStrategy,
    pub deployment_configuration: DeploymentConfiguration,
    /// `healthCheckGracePeriodSeconds`.
    pub health_check_grace_period: Option<Duration>,
    /// `serviceConnectConfiguration`, only when `enabled` is true.
    pub service_connect: Option<ServiceConnectConfiguration>,
    /// Other fields AWS documents (`launchType`, `networkConfiguration`, `tags`, ...), kept as written.
    pub other: BTreeMap<String, Value>,
}

/// A service's `taskDefinition`: `family`, `family:revision` or a task definition ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDefinitionRef {
    pub family: String,
    pub revision: Option<NonZeroU32>,
}

/// `deploymentConfiguration`, with ECS's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeploymentConfiguration {
    /// Tasks that must stay running during a deployment, in percent of `desiredCount` (0–100).
    pub minimum_healthy_percent: u32,
    /// Tasks allowed to run during a deployment, in percent of `desiredCount` (at least 100).
    pub maximum_percent: u32,
}

/// An enabled `serviceConnectConfiguration`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConnectConfiguration {
    /// `namespace`: the Cloud Map namespace name (or ARN) the service joins.
    pub namespace: String,
    /// `services`: what this service offers; empty for a client-only service.
    pub services: Vec<ServiceConnectService>,
    /// `logConfiguration` of the Service Connect agent.
    pub log_configuration: Option<LogConfiguration>,
    pub access_log_configuration: Option<AccessLogConfiguration>,
}

/// A `serviceConnectConfiguration.services[]` entry, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConnectService {
    /// `portName`: a `portMappings[].name` of the task definition.
    pub port_name: PortName,
    /// `discoveryName`, the port name when not given; unique in the namespace.
    pub discovery_name: DiscoveryName,
    /// `clientAliases`: the names clients use (exactly one, as ECS allows).
    pub client_aliases: Vec<ClientAlias>,
    /// `ingressPortOverride`: the port the proxy listens on for this service.
    pub ingress_port_override: Option<NonZeroU16>,
    pub timeout: TimeoutConfiguration,
    pub tls: Option<TlsConfiguration>,
}

/// A `clientAliases[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientAlias {
    pub port: NonZeroU16,
    /// `dnsName`, the discovery name when not given.
    pub dns_name: DnsName,
}

/// `timeout` as written; `Some(Duration::ZERO)` disables a timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutConfiguration {
    pub idle_timeout: Option<Duration>,
    pub per_request_timeout: Option<Duration>,
}

/// `tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfiguration {
    /// `issuerCertificateAuthority.awsPcaAuthorityArn`.
    pub aws_pca_authority_arn: String,
    pub kms_key: Option<String>,
    pub role_arn: Option<String>,
}

/// `accessLogConfiguration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessLogConfiguration {
    pub format: AccessLogFormat,
    /// `includeQueryParameters` is `"ENABLED"`.
    pub include_query_parameters: bool,
}

choice_enum! {
    /// `accessLogConfiguration.format`.
    pub enum AccessLogFormat {
        Text = "TEXT",
        Json = "JSON",
    }
}

choice_enum! {
    /// `schedulingStrategy`.
    pub enum SchedulingStrategy {
        Replica = "REPLICA",
        Daemon = "DAEMON",
    }
}

// === impl ServiceConnectService ===

impl ServiceConnectService {
    /// The idle timeout for a port of `app_protocol` (`None` = TCP); `None` when disabled.
    pub fn idle_timeout(&self, app_protocol: Option<AppProtocol>) -> Option<Duration> {
        let default = match app_protocol {
            Some(_) => DEFAULT_HTTP_IDLE_TIMEOUT,
            None => DEFAULT_TCP_IDLE_TIMEOUT,
        };
        Some(self.timeout.idle_timeout.unwrap_or(default)).filter(|d| !d.is_zero())
    }

    /// The per-request timeout, `default` when not given; `None` when disabled.
    pub fn per_request_timeout(&self, default: Duration) -> Option<Duration> {
        Some(self.timeout.per_request_timeout.unwrap_or(default)).filter(|d| !d.is_zero())
    }
}

// === impl TaskDefinitionRef ===

impl TaskDefinitionRef {
    /// Reads `family`, `family:revision` or
    /// `arn:aws:ecs:region:account:task-definition/family:revision`.
    pub fn parse(text: &str) -> Result<TaskDefinitionRef, String> {
        let short = match text.strip_prefix("arn:") {
            Some(rest) => {
                let resource = rest.splitn(5, ':').nth(4).unwrap_or("");
                resource.strip_prefix("task-definition/").ok_or_else(|| {
                    format!("{text:?} is not a task definition ARN (arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION)")
                })?
            }
            None => text,
        };
        let (family, revision) = match short.split_once(':') {
            Some((family, revision)) => {
                let revision = revision
                    .parse::<NonZeroU32>()
                    .map_err(|_| format!("{revision:?} is not a revision number (1, 2, ...)"))?;
                (family, Some(revision))
            }
            None => (short, None),
        };
        crate::names::check_resource_name(family)?;
        Ok(TaskDefinitionRef {
            family: family.to_owned(),
            revision,
        })
    }
}

impl std::fmt::Display for TaskDefinitionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.family)?;
        if let Some(r) = self.revision {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
