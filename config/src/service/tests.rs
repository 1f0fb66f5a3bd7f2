//! Task definition references and the timeout defaults of Service Connect.

use std::num::NonZeroU32;
use std::time::Duration;

use super::*;

#[test]
fn task_definition_refs_take_family_revision_and_arn() {
    let r =
        |s: &str| TaskDefinitionRef::parse(s).map(|r| (r.family, r.revision.map(NonZeroU32::get)));
    assert_eq!(r("orders"), Ok(("orders".into(), None)));
    assert_eq!(r("orders:12"), Ok(("orders".into(), Some(12))));
    assert_eq!(
        r("arn:aws:ecs:eu-west-1:123456789012:task-definition/orders:3"),
        Ok(("orders".into(), Some(3)))
    );
    assert!(r("orders:0").is_err());
    assert!(r("orders:").is_err());
    assert!(r("").is_err());
    assert!(r("arn:aws:ecs:eu-west-1:123456789012:service/orders").is_err());
    assert_eq!(
        TaskDefinitionRef::parse("orders:7").unwrap().to_string(),
        "orders:7"
    );
}

fn entry(timeout: TimeoutConfiguration) -> ServiceConnectService {
    let port_name = PortName::parse("http").unwrap();
    ServiceConnectService {
        discovery_name: port_name.clone().into(),
        port_name,
        client_aliases: Vec::new(),
        ingress_port_override: None,
        timeout,
        tls: None,
    }
}

#[test]
fn idle_timeout_defaults_by_protocol_and_zero_disables() {
    let default = entry(TimeoutConfiguration::default());
    assert_eq!(
        default.idle_timeout(Some(AppProtocol::Http)),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        default.idle_timeout(Some(AppProtocol::Grpc)),
        Some(Duration::from_secs(300))
    );
    assert_eq!(default.idle_timeout(None), Some(Duration::from_secs(3600)));
    let off = entry(TimeoutConfiguration {
        idle_timeout: Some(Duration::ZERO),
        per_request_timeout: Some(Duration::ZERO),
    });
    assert_eq!(off.idle_timeout(None), None);
    assert_eq!(off.per_request_timeout(Duration::from_secs(15)), None);
    let set = entry(TimeoutConfiguration {
        idle_timeout: Some(Duration::from_secs(9)),
        per_request_timeout: None,
    });
    assert_eq!(set.idle_timeout(None), Some(Duration::from_secs(9)));
    assert_eq!(
        set.per_request_timeout(Duration::from_secs(15)),
        Some(Duration::from_secs(15))
    );
}
