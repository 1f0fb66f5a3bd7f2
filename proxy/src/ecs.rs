//! From ECS JSON and Skiff's settings to a sidecar's options: what the ECS agent derives for the
//! Service Connect proxy from the task definition and the service.

use std::time::Duration;

use skiff_config::service::AccessLogFormat;
use skiff_config::settings::{self, ProxySettings, RetryPolicy};
use skiff_config::task::AppProtocol as EcsAppProtocol;
use skiff_config::{Service, TaskDefinition};

use crate::config::{
    AccessLog, BalancerKind, OutlierConfig, ProxyConfig, RetryConfig, TargetPolicy, TimeoutConfig,
};
use crate::discovery::{Alias, AppProtocol};
use crate::sidecar::{DiscoverySource, IngressEntry, SidecarOptions};

/// Why a task definition and service cannot make a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error("service {0} has no enabled serviceConnectConfiguration")]
    NoServiceConnect(String),
    #[error("service {service}: portName {port} names no port mapping of task definition {family}")]
    UnknownPort {
        service: String,
        port: String,
        family: String,
    },
}

/// The data plane's settings from `[proxy]` of `skiff.toml`.
pub fn proxy_config(s: &ProxySettings) -> ProxyConfig {
    let timeouts = TimeoutConfig {
        per_request: s.default_per_request_timeout,
        connect: s.connect_timeout,
        ..TimeoutConfig::default()
    };
    let policy = |p: &RetryPolicy| TargetPolicy {
        retry: RetryConfig {
            max_retries: p.max_retries,
            per_try_timeout: p.per_try_timeout,
            backoff_base: p.backoff_base,
            backoff_cap: p.backoff_max,
            budget_retry_percent: f64::from(p.budget_percent) / 100.0,
            budget_min_per_second: p.budget_min_per_second,
            replay_buffer_bytes: s.replay_buffer_bytes,
            ..RetryConfig::default()
        },
        timeouts: timeouts.clone(),
    };
    let mut config = ProxyConfig {
        balancer: match s.balancer {
            settings::Balancer::P2cEwma => BalancerKind::PeakEwma,
            settings::Balancer::RoundRobin => BalancerKind::RoundRobin,
        },
        default_policy: policy(&s.retry.default),
        targets: s
            .retry
            .services
            .iter()
            .map(|(name, p)| (name.as_str().to_owned(), policy(p)))
            .collect(),
        outlier: OutlierConfig {
            consecutive_failures: s.outlier_detection.consecutive_failures.get(),
            base_ejection: s.outlier_detection.base_ejection,
            max_ejection: s.outlier_detection.max_ejection,
            max_ejection_percent: s.outlier_detection.max_ejection_percent,
        },
        drain_window: s.drain,
        heartbeat_ttl: s.heartbeat_ttl,
        busy_poll: s.busy_poll,
        debug_attempts_header: s.debug_attempts_header,
        access_log: match s.access_log {
            settings::AccessLog::Off => AccessLog::Off,
            settings::AccessLog::Text => AccessLog::Text,
            settings::AccessLog::Json => AccessLog::Json,
        },
        ..ProxyConfig::default()
    };
    config.limits.max_pending_requests = s.max_pending_requests;
    config.limits.max_connections_per_endpoint = s.max_connections_per_endpoint.get() as usize;
    config.limits.pool_idle_timeout = s.pool_idle_timeout;
    config.limits.pool_max_idle_per_endpoint = s.pool_max_idle_per_endpoint;
    config
}

/// The sidecar of one task of `service`, running `task`: one ingress per Service Connect entry
/// (the app's `containerPort` behind it), every alias of the namespace reachable outbound.
pub fn sidecar_options(
    task: &TaskDefinition,
    service: &Service,
    settings: &ProxySettings,
    task_id: &str,
    discovery: DiscoverySource,
) -> Result<SidecarOptions, EcsError> {
    let sc = service
        .service_connect
        .as_ref()
        .ok_or_else(|| EcsError::NoServiceConnect(service.service_name.clone()))?;
    let mut opts = SidecarOptions::new(&sc.namespace, task_id, discovery);
    opts.cluster = service.cluster.clone();
    opts.service_name = service.service_name.clone();
    opts.task_family = task.family.clone();
    opts.bind_ip = settings.bind_ip;
    opts.app_host = settings.app_host.clone();
    opts.admin_port = settings.admin_port;
    opts.http_proxy_port = settings.http_proxy_port;
    opts.config = proxy_config(settings);
    // The service's `accessLogConfiguration` turns access logs on, as in Service Connect.
    if let Some(log) = &sc.access_log_configuration {
        opts.config.access_log = match log.format {
            AccessLogFormat::Text => AccessLog::Text,
            AccessLogFormat::Json => AccessLog::Json,
        };
        opts.config.access_log_query = log.include_query_parameters;
    }
    for entry in &sc.services {
        let Some((_, port)) = task.port_mapping(entry.port_name.as_str()) else {
            return Err(EcsError::UnknownPort {
                service: service.service_name.clone(),
                port: entry.port_name.as_str().to_owned(),
                family: task.family.clone(),
            });
        };
        let app_protocol = match port.app_protocol {
            Some(EcsAppProtocol::Http) => AppProtocol::Http,
            Some(EcsAppProtocol::Http2) => AppProtocol::Http2,
            Some(EcsAppProtocol::Grpc) => AppProtocol::Grpc,
            None => AppProtocol::Tcp,
        };
        let default_per_request = settings
            .default_per_request_timeout
            .unwrap_or(Duration::ZERO);
        opts.ingress.push(IngressEntry {
            discovery_name: entry.discovery_name.as_str().to_owned(),
            port_name: entry.port_name.as_str().to_owned(),
            container_port: port.container_port.get(),
            ingress_port: entry.ingress_port_override.map(|p| p.get()),
            app_protocol,
            client_aliases: entry
                .client_aliases
                .iter()
                .map(|a| Alias {
                    dns_name: a.dns_name.as_str().to_owned(),
                    port: a.port.get(),
                })
                .collect(),
            timeouts: TimeoutConfig {
                per_request: if port.app_protocol.is_some() {
                    entry.per_request_timeout(default_per_request)
                } else {
                    None
                },
                idle: entry.idle_timeout(port.app_protocol),
                connect: settings.connect_timeout,
            },
        });
    }
    Ok(opts)
}
