//! Watch API wire types: a complete, consistent view of one namespace at one revision.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The answer of `GET /v1/watch`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NamespaceSnapshot {
    /// e.g. `prod.internal`.
    pub namespace: String,
    /// `ns-…`; empty when the namespace does not exist (yet).
    pub namespace_id: String,
    /// `HTTP` | `DNS_PRIVATE` (| `DNS_PUBLIC`).
    pub namespace_type: String,
    /// Revision of the namespace: grows with every change to it, never goes backwards.
    pub revision: u64,
    pub services: Vec<ServiceSnapshot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub name: String,
    /// `srv-…`.
    pub id: String,
    pub revision: u64,
    pub instances: Vec<InstanceSnapshot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InstanceSnapshot {
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub health: HealthStatus,
}

/// Cloud Map's health status names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
}

// === impl NamespaceSnapshot ===

impl NamespaceSnapshot {
    /// The service named `name`, if any.
    pub fn service(&self, name: &str) -> Option<&ServiceSnapshot> {
        self.services.iter().find(|s| s.name == name)
    }
}

// === impl HealthStatus ===

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
            HealthStatus::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(s: &str) -> Option<HealthStatus> {
        match s {
            "HEALTHY" => Some(HealthStatus::Healthy),
            "UNHEALTHY" => Some(HealthStatus::Unhealthy),
            "UNKNOWN" => Some(HealthStatus::Unknown),
            _ => None,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_serializes_as_cloud_map_names() {
        assert_eq!(
            serde_json::to_string(&HealthStatus::Healthy).unwrap(),
            "\"HEALTHY\""
        );
        assert_eq!(
            serde_json::to_string(&HealthStatus::Unhealthy).unwrap(),
            "\"UNHEALTHY\""
        );
        let back: HealthStatus = serde_json::from_str("\"UNKNOWN\"").unwrap();
        assert_eq!(back, HealthStatus::Unknown);
        assert_eq!(HealthStatus::parse("HEALTHY"), Some(HealthStatus::Healthy));
        assert_eq!(HealthStatus::parse("healthy"), None);
    }

    #[test]
    fn snapshot_round_trips() {
        let snap = NamespaceSnapshot {
            namespace: "prod.internal".into(),
            namespace_id: "ns-0123456789abcdef".into(),
            namespace_type: "HTTP".into(),
            revision: 7,
            services: vec![ServiceSnapshot {
                name: "orders".into(),
                id: "srv-0123456789abcdef".into(),
                revision: 7,
                instances: vec![InstanceSnapshot {
                    id: "t1".into(),
                    attributes: BTreeMap::from([("AWS_INSTANCE_PORT".into(), "8080".into())]),
                    health: HealthStatus::Healthy,
                }],
            }],
        };
        let json = serde_json::to_string(&snap).unwrap();
        let back: NamespaceSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        assert!(back.service("orders").is_some());
        assert!(back.service("nope").is_none());
    }
}
