//! The registry's records (namespace → service → instance, plus operations), in the shapes
//! they are stored in, and Cloud Map's validation rules and limits for them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff_registry_client::HealthStatus;

/// The account every resource belongs to (a registry has one tenant).
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";
/// Cloud Map's limits.
pub const MAX_ATTRIBUTES: usize = 30;
pub const MAX_ATTRIBUTES_CHARS: usize = 5_000;
pub const MAX_INSTANCES_PER_SERVICE: usize = 1_000;
/// Transitions kept per instance.
pub const HISTORY_LEN: usize = 32;
/// Operations kept (oldest dropped first).
pub const MAX_OPERATIONS: usize = 1_000;
/// DNS TTL for services without a `DnsConfig` (a Skiff extension: every service answers DNS).
pub const DEFAULT_DNS_TTL: u32 = 10;
pub const DEFAULT_SOA_TTL: u32 = 15;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NamespaceType {
    Http,
    DnsPrivate,
    DnsPublic,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Namespace {
    pub id: String,
    pub name: String,
    pub kind: NamespaceType,
    pub description: Option<String>,
    pub creator_request_id: Option<String>,
    pub operation_id: String,
    pub created: f64,
    pub soa_ttl: u32,
    /// Store revision of the last change to the namespace or anything in it.
    #[serde(skip)]
    pub revision: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub namespace_id: String,
    pub description: Option<String>,
    pub dns_config: Option<DnsConfig>,
    pub health_check_config: Option<HealthCheckConfig>,
    pub health_check_custom_config: Option<HealthCheckCustomConfig>,
    pub creator_request_id: Option<String>,
    pub created: f64,
    #[serde(skip)]
    pub revision: u64,
}

/// AWS shape (`DnsConfig`), stored as received.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    #[serde(
        rename = "NamespaceId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace_id: Option<String>,
    #[serde(
        rename = "RoutingPolicy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub routing_policy: Option<RoutingPolicy>,
    #[serde(rename = "DnsRecords")]
    pub dns_records: Vec<DnsRecord>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum RoutingPolicy {
    Multivalue,
    Weighted,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    #[serde(rename = "Type")]
    pub kind: RecordType,
    #[serde(rename = "TTL")]
    pub ttl: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    A,
    AAAA,
    SRV,
    CNAME,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    #[serde(rename = "Type")]
    pub kind: HealthCheckType,
    #[serde(
        rename = "ResourcePath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_path: Option<String>,
    #[serde(
        rename = "FailureThreshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_threshold: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthCheckType {
    Http,
    Https,
    Tcp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HealthCheckCustomConfig {
    #[serde(
        rename = "FailureThreshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_threshold: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Instance {
    pub service_id: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    pub creator_request_id: Option<String>,
    pub operation_id: String,
    /// Status set through `UpdateInstanceCustomHealthStatus` (services with custom health).
    pub custom: Option<HealthStatus>,
    /// Status of the registry's active checks (services with `HealthCheckConfig`).
    pub active: Option<HealthStatus>,
    /// Status of the heartbeat TTL (instances with `SKIFF_HEARTBEAT_TTL_SECONDS`).
    pub heartbeat: Option<HealthStatus>,
    /// The status discovery and DNS use: the worst of the above, `HEALTHY` when none apply.
    pub health: HealthStatus,
    pub history: VecDeque<Transition>,
    #[serde(skip)]
    pub revision: u64,
}

/// One health change of an instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// RFC 3339, UTC.
    pub at: String,
    pub from: HealthStatus,
    pub to: HealthStatus,
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Operation {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub created: f64,
    pub updated: f64,
    pub targets: BTreeMap<String, String>,
}

// === impl NamespaceType ===

impl NamespaceType {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceType::Http => "HTTP",
            NamespaceType::DnsPrivate => "DNS_PRIVATE",
            NamespaceType::DnsPublic => "DNS_PUBLIC",
        }
    }

    pub fn parse(s: &str) -> Option<NamespaceType> {
        match s {
            "HTTP" => Some(NamespaceType::Http),
            "DNS_PRIVATE" => Some(NamespaceType::DnsPrivate),
            "DNS_PUBLIC" => Some(NamespaceType::DnsPublic),
            _ => None,
        }
    }
}

// === impl Namespace ===

impl Namespace {
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:servicediscovery:{REGION}:{ACCOUNT}:namespace/{}",
            self.id
        )
    }

    pub fn hosted_zone_id(&self) -> String {
        // Stable per namespace, shaped like Route 53's.
        format!("Z{}", self.id.trim_start_matches("ns-").to_uppercase())
    }
}

// === impl Service ===

impl Service {
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:servicediscovery:{REGION}:{ACCOUNT}:service/{}",
            self.id
        )
    }

    /// Cloud Map's `Type`: `DNS_HTTP` with a DNS config, else `HTTP`.
    pub fn kind(&self) -> &'static str {
        if self.dns_config.is_some() {
            "DNS_HTTP"
        } else {
            "HTTP"
        }
    }

    pub fn has_record(&self, t: RecordType) -> bool {
        match &self.dns_config {
            Some(c) => c.dns_records.iter().any(|r| r.kind == t),
            None => matches!(t, RecordType::A | RecordType::AAAA | RecordType::SRV),
        }
    }

    pub fn record_ttl(&self, t: RecordType) -> u32 {
        let ttl = self
            .dns_config
            .as_ref()
            .and_then(|c| c.dns_records.iter().find(|r| r.kind == t));
        ttl.map_or(DEFAULT_DNS_TTL, |r| {
            u32::try_from(r.ttl).unwrap_or(u32::MAX)
        })
    }

    pub fn weighted(&self) -> bool {
        self.dns_config.as_ref().and_then(|c| c.routing_policy) == Some(RoutingPolicy::Weighted)
    }
}

// === impl Instance ===

impl Instance {
    /// Recomputes `health` from the signals; records a transition when it changes.
    /// Returns true on change.
    pub fn recompute(&mut self, reason: &str) -> bool {
        let next = combine([self.custom, self.active, self.heartbeat]);
        if next == self.health {
            return false;
        }
        self.history.push_back(Transition {
            at: rfc3339(SystemTime::now()),
            from: self.health,
            to: next,
            reason: reason.to_string(),
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
        self.health = next;
        true
    }

    pub fn heartbeat_ttl(&self) -> Option<std::time::Duration> {
        let secs = self
            .attributes
            .get(skiff_registry_client::attrs::SKIFF_HEARTBEAT_TTL_SECONDS)?;
        let secs: f64 = secs.trim().parse().ok()?;
        (secs.is_finite() && secs > 0.0)
            .then(|| std::time::Duration::from_secs_f64(secs.min(86_400.0)))
    }
}

/// The worst of the signals that apply: UNHEALTHY > UNKNOWN > HEALTHY.
pub fn combine(signals: [Option<HealthStatus>; 3]) -> HealthStatus {
    let mut out = HealthStatus::Healthy;
    for s in signals.into_iter().flatten() {
        match s {
            HealthStatus::Unhealthy => return HealthStatus::Unhealthy,
            HealthStatus::Unknown => out = HealthStatus::Unknown,
            HealthStatus::Healthy => {}
        }
    }
    out
}

// === ids and time ===

/// `ns-` / `srv-` followed by 16 lowercase letters and digits, as Cloud Map's ids look.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_chars(16))
}

/// Shaped like Cloud Map's operation ids.
pub fn new_operation_id() -> String {
    format!("{}-{}", random_chars(32), random_chars(8))
}

fn random_chars(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// Seconds since the epoch, as AWS JSON timestamps are.
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// `2026-11-25T09:41:59.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    // (humantime refuses instants before the epoch; a clock that far off reads as the epoch)
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

// === validation (Cloud Map's patterns, as botocore's model states them) ===

/// `^[0-9a-zA-Z_/:.@-]+$`, at most 64.
pub fn valid_instance_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b':' | b'.' | b'@' | b'-')
        })
}

/// Dot-separated labels of `[a-zA-Z0-9_-]`, not starting or ending with `-`, at most 63 each,
/// 127 in all.
pub fn valid_service_name(s: &str) -> bool {
    if s == "." {
        return true;
    }
    if s.is_empty() || s.len() > 127 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// `^(?!arn:)[!-~]{1,max}$`.
pub fn valid_namespace_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with("arn:")
        && s.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// A DNS namespace also has to be a domain name.
pub fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks Cloud Map's attribute rules; the error names the offending attribute.
pub fn validate_attributes(attrs: &BTreeMap<String, String>) -> Result<(), String> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "Attributes: at most {MAX_ATTRIBUTES} attributes are allowed, got {}",
            attrs.len()
        ));
    }
    let mut total = 0;
    for (k, v) in attrs {
        if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(format!(
                "Attributes: key {k:?} must be 1-255 printable ASCII characters without spaces"
            ));
        }
        let printable = |b: u8| (b'!'..=b'~').contains(&b);
        let ok = v.len() <= 1024
            && v.bytes().all(|b| printable(b) || b == b' ' || b == b'\t')
            && v.bytes().next().is_none_or(printable)
            && v.bytes().last().is_none_or(printable);
        if !ok {
            return Err(format!(
                "Attributes.{k}: value must be at most 1024 printable ASCII characters, without leading or trailing spaces"
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ATTRIBUTES_CHARS {
        return Err(format!(
            "Attributes: total size {total} exceeds {MAX_ATTRIBUTES_CHARS} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_cloud_map_ids() {
        let id = new_id("ns");
        assert_eq!(id.len(), 19);
        assert!(id.starts_with("ns-"));
        assert!(
            id[3..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_599_719_123);
        assert_eq!(rfc3339(t), "2026-11-25T09:41:59.123Z");
    }

    #[test]
    fn names_follow_cloud_map_patterns() {
        assert!(valid_service_name("orders"));
        assert!(valid_service_name("_http._tcp"));
        assert!(!valid_service_name("-orders"));
        assert!(!valid_service_name("a..b"));
        assert!(!valid_service_name("has space"));
        assert!(valid_instance_id("task-1/abc:1@x.y"));
        assert!(!valid_instance_id("a b"));
        assert!(!valid_instance_id(&"x".repeat(65)));
        assert!(valid_namespace_name("prod.internal", 253));
        assert!(!valid_namespace_name("arn:aws:x", 253));
        assert!(valid_dns_name("prod.internal."));
        assert!(!valid_dns_name("a b.internal"));
    }

    #[test]
    fn attributes_are_limited() {
        let mut a = BTreeMap::new();
        a.insert("AWS_INSTANCE_IPV4".to_string(), "10.0.0.1".to_string());
        assert!(validate_attributes(&a).is_ok());
        a.insert("bad".to_string(), " leading".to_string());
        assert!(
            validate_attributes(&a)
                .unwrap_err()
                .contains("Attributes.bad")
        );
        let many: BTreeMap<String, String> = (0..31)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(validate_attributes(&many).is_err());
    }

    #[test]
    fn worst_signal_wins() {
        use HealthStatus::*;
        assert_eq!(combine([None, None, None]), Healthy);
        assert_eq!(combine([Some(Healthy), Some(Unknown), None]), Unknown);
        assert_eq!(
            combine([Some(Unknown), Some(Unhealthy), Some(Healthy)]),
            Unhealthy
        );
    }
}
