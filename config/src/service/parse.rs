//! Reads a service from JSON and checks ECS's rules that need only the service itself;
//! rules against the task definition and other services are in [`crate::stack`].

use std::collections::HashMap;
use std::num::NonZeroU16;

use serde_json::Value;

use super::*;
use crate::check::{Checker, seen_before};
use crate::names::check_resource_name;
use crate::task::parse_log_configuration;

const FIELDS: &[&str] = &[
    "serviceName",
    "cluster",
    "taskDefinition",
    "desiredCount",
    "schedulingStrategy",
    "deploymentConfiguration",
    "healthCheckGracePeriodSeconds",
    "serviceConnectConfiguration",
];
const OTHER_FIELDS: &[&str] = &[
    "availabilityZoneRebalancing",
    "loadBalancers",
    "serviceRegistries",
    "clientToken",
    "launchType",
    "capacityProviderStrategy",
    "platformVersion",
    "role",
    "placementConstraints",
    "placementStrategy",
    "networkConfiguration",
    "deploymentController",
    "tags",
    "enableECSManagedTags",
    "propagateTags",
    "enableExecuteCommand",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
];
const DEPLOYMENT_FIELDS: &[&str] = &[
    "minimumHealthyPercent",
    "maximumPercent",
    "deploymentCircuitBreaker",
    "alarms",
    "strategy",
    "bakeTimeInMinutes",
    "lifecycleHooks",
    "linearConfiguration",
    "canaryConfiguration",
];
const SERVICE_CONNECT_FIELDS: &[&str] = &[
    "enabled",
    "namespace",
    "services",
    "logConfiguration",
    "accessLogConfiguration",
];
const SC_SERVICE_FIELDS: &[&str] = &[
    "portName",
    "discoveryName",
    "clientAliases",
    "ingressPortOverride",
    "timeout",
    "tls",
];
const CLIENT_ALIAS_FIELDS: &[&str] = &["port", "dnsName", "testTrafficRules"];
const TIMEOUT_FIELDS: &[&str] = &["idleTimeoutSeconds", "perRequestTimeoutSeconds"];
const TLS_FIELDS: &[&str] = &["issuerCertificateAuthority", "kmsKey", "roleArn"];
const ACCESS_LOG_FIELDS: &[&str] = &["format", "includeQueryParameters"];

/// Reads and checks the service at the document root.
pub(crate) fn parse(cx: &mut Checker<'_>, root: &Value) -> Option<Service> {
    let fields: Vec<&str> = FIELDS.iter().chain(OTHER_FIELDS).copied().collect();
    let o = cx.object("", root, &fields)?;

    let service_name = cx.str_field_with(&o, "serviceName", true, |s| {
        check_resource_name(s).map(|()| s.to_owned())
    });
    let cluster = cx
        .str_field_with(&o, "cluster", false, |s| {
            // A cluster is given by name or by ARN (`arn:aws:ecs:REGION:ACCOUNT:cluster/NAME`).
            let name = match s.strip_prefix("arn:") {
                Some(_) => s.rsplit_once(":cluster/").map_or("", |(_, name)| name),
                None => s,
            };
            check_resource_name(name).map(|()| name.to_owned())
        })
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_owned());
    let task_definition = cx.str_field_with(&o, "taskDefinition", true, TaskDefinitionRef::parse);
    let scheduling_strategy = cx
        .choice_field::<SchedulingStrategy>(&o, "schedulingStrategy", false)
        .unwrap_or(SchedulingStrategy::Replica);
    let desired_count = match scheduling_strategy {
        SchedulingStrategy::Replica => cx.u32_field(&o, "desiredCount", true, 0..=u32::MAX),
        SchedulingStrategy::Daemon => {
            if o.has("desiredCount") {
                cx.report(
                    &o.child("desiredCount"),
                    "a DAEMON service runs one task per host; remove desiredCount",
                );
            }
            Some(1)
        }
    };
    let deployment_configuration = cx
        .object_field(
            &o,
            "deploymentConfiguration",
            false,
            deployment_configuration,
        )
        .unwrap_or(DeploymentConfiguration {
            minimum_healthy_percent: DEFAULT_MINIMUM_HEALTHY_PERCENT,
            maximum_percent: DEFAULT_MAXIMUM_PERCENT,
        });
    let health_check_grace_period = cx
        .u32_field(
            &o,
            "healthCheckGracePeriodSeconds",
            false,
            0..=2_147_483_647,
        )
        .map(|s| Duration::from_secs(u64::from(s)));
    let service_connect = cx
        .object_field(&o, "serviceConnectConfiguration", false, service_connect)
        .flatten();

    Some(Service {
        service_name: service_name?,
        cluster,
        task_definition: task_definition?,
        desired_count: desired_count?,
        scheduling_strategy,
        deployment_configuration,
        health_check_grace_period,
        service_connect,
        other: o.others(OTHER_FIELDS),
    })
}

fn deployment_configuration(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
) -> Option<DeploymentConfiguration> {
    let o = cx.object(path, v, DEPLOYMENT_FIELDS)?;
    let min = cx.u32_field(&o, "minimumHealthyPercent", false, 0..=100);
    let max = cx.u32_field(&o, "maximumPercent", false, 100..=u32::MAX);
    Some(DeploymentConfiguration {
        minimum_healthy_percent: min.unwrap_or(DEFAULT_MINIMUM_HEALTHY_PERCENT),
        maximum_percent: max.unwrap_or(DEFAULT_MAXIMUM_PERCENT),
    })
}

/// `Some(None)` for a valid but disabled configuration.
fn service_connect(
    cx: &mut Checker<'_>,
    path: &str,
    v: &Value,
) -> Option<Option<ServiceConnectConfiguration>> {
    let o = cx.object(path, v, SERVICE_CONNECT_FIELDS)?;
    let enabled = cx
        .field(&o, "enabled", true)
        .and_then(|(p, v)| cx.as_bool(&p, v));
    let namespace = cx.str_field_with(&o, "namespace", enabled == Some(true), |s| {
        if s.is_empty() || s.len() > 1024 || !s.chars().all(|c| c.is_ascii_graphic()) {
            Err(format!(
                "{s:?} is not a namespace name: 1 to 1024 printable characters without spaces"
            ))
        } else {
            Ok(s.to_owned())
        }
    });
    let services = cx
        .list_field(&o, "services", false, sc_service)
        .unwrap_or_default();
    let log_configuration = cx.object_field(&o, "logConfiguration", false, parse_log_configuration);
    let access_log_configuration = cx.object_field(&o, "accessLogConfiguration", false, access_log);

    // Discovery names and client aliases are unique within the service
    // (across services of a namespace, `stack` checks them).
    let mut discovery: HashMap<&str, usize> = HashMap::new();
    let mut aliases: HashMap<(&str, u16), usize> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let here = format!("{path}.services[{i}]");
        if let Some(first) = seen_before(&mut discovery, s.discovery_name.as_str(), i) {
            let field = if has_member(v, i, "discoveryName") {
                "discoveryName"
            } else {
                "portName"
            };
            cx.report(
                &format!("{here}.{field}"),
                format!(
                    "discovery name {:?} is already used by services[{first}]",
                    s.discovery_name.as_str()
                ),
            );
        }
        for (j, a) in s.client_aliases.iter().enumerate() {
            if let Some(first) = seen_before(&mut aliases, (a.dns_name.as_str(), a.port.get()), i) {
                cx.report(
                    &format!("{here}.clientAliases[{j}]"),
                    format!(
                        "client alias {}:{} is already used by services[{first}]",
                        a.dns_name, a.port
                    ),
                );
            }
        }
    }

    match enabled {
        Some(true) => Some(Some(ServiceConnectConfiguration {
            namespace: namespace?,
            services,
            log_configuration,
            access_log_configuration,
        })),
        Some(false) => Some(None),
        None => None,
    }
}

fn has_member(sc: &Value, i: usize, key: &str) -> bool {
    sc.get("services")
        .and_then(|s| s.get(i))
        .and_then(|s| s.get(key))
        .is_some_and(|v| !v.is_null())
}

fn sc_service(cx: &mut Checker<'_>, path: &str, v: &Value) -> Option<ServiceConnectService> {
    let o = cx.object(path, v, SC_SERVICE_FIELDS)?;
    let port_name = cx.str_field_with(&o, "portName", true, PortName::parse);
    let discovery_name = cx
        .str_field_with(&o, "discoveryName", false, DiscoveryName::parse)
        .or_else(|| port_name.clone().map(DiscoveryName::from));
    let client_aliases = cx.list_field(&o, "clientAliases", false, |cx, p, v| {
        let a = cx.object(p, v, CLIENT_ALIAS_FIELDS)?;
        let port = cx.u32_field(&a, "port", true, 1..=65535);
        let dns_name = cx.str_field_with(&a, "dnsName", false, DnsName::parse);
        Some((
            port.and_then(|p| u16::try_from(p).ok())
                .and_then(NonZeroU16::new)?,
            dns_name,
        ))
    });
    match o
        .get("clientAliases")
        .and_then(Value::as_array)
        .map(Vec::len)
    {
        None | Some(0) => cx.report(
            &o.child("clientAliases"),
            "missing required field: a client-server entry needs a client alias with a port",
        ),
        Some(n) if n > MAX_CLIENT_ALIASES => cx.report(
            &o.child("clientAliases"),
            format!("{n} client aliases; ECS allows {MAX_CLIENT_ALIASES} per service entry"),
        ),
        Some(_) => {}
    }
    let ingress_port_override = cx
        .u32_field(&o, "ingressPortOverride", false, 1..=65535)
        .and_then(|p| u16::try_from(p).ok())
        .and_then(NonZeroU16::new);
    let timeout = cx.object_field(&o, "timeout", false, |cx, p, v| {
        let t = cx.object(p, v, TIMEOUT_FIELDS)?;
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        Some(TimeoutConfiguration {
            idle_timeout: cx
                .u32_field(&t, "idleTimeoutSeconds", false, 0..=2_147_483_647)
                .map(secs),
            per_request_timeout: cx
                .u32_field(&t, "perRequestTimeoutSeconds", false, 0..=2_147_483_647)
                .map(secs),
        })
    });
    let tls = cx.object_field(&o, "tls", false, |cx, p, v| {
        let t = cx.object(p, v, TLS_FIELDS)?;
        let arn = cx.object_field(&t, "issuerCertificateAuthority", true, |cx, p, v| {
            let ca = cx.object(p, v, &["awsPcaAuthorityArn"])?;
            cx.str_field(&ca, "awsPcaAuthorityArn", true)
        });
        let kms_key = cx.str_field(&t, "kmsKey", false);
        let role_arn = cx.str_field(&t, "roleArn", false);
        Some(TlsConfiguration {
            aws_pca_authority_arn: arn?,
            kms_key,
            role_arn,
        })
    });

    let discovery_name = discovery_name?;
    let client_aliases = client_aliases?
        .into_iter()
        .map(|(port, dns_name)| ClientAlias {
            port,
            dns_name: dns_name.unwrap_or_else(|| DnsName::from(discovery_name.clone())),
        })
        .collect();
    Some(ServiceConnectService {
        port_name: port_name?,
        discovery_name,
        client_aliases,
        ingress_port_override,
        timeout: timeout.unwrap_or_default(),
        tls,
    })
}

fn access_log(cx: &mut Checker<'_>, path: &str, v: &Value) -> Option<AccessLogConfiguration> {
    let o = cx.object(path, v, ACCESS_LOG_FIELDS)?;
    let format = cx.choice_field::<AccessLogFormat>(&o, "format", true);
    let include = cx
        .field(&o, "includeQueryParameters", false)
        .and_then(|(p, v)| match cx.as_str(&p, v)? {
            "ENABLED" => Some(true),
            "DISABLED" => Some(false),
            other => {
                cx.report(
                    &p,
                    format!("{other:?} is not one of \"ENABLED\", \"DISABLED\""),
                );
                None
            }
        });
    Some(AccessLogConfiguration {
        format: format?,
        include_query_parameters: include.unwrap_or(false),
    })
}
