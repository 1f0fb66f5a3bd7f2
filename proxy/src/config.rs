//! The proxy's own typed settings: durations and limits that cannot be wrong once built.
//!
//! The CLI maps `skiff_config::settings` and the ECS JSON onto these values; nothing here
//! parses files. Every default is a named constant beside the type, as Service Connect's
//! Envoy documents them where it has one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

/// `perRequestTimeoutSeconds` when unset (Service Connect's Envoy default).
pub const DEFAULT_PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// `idleTimeoutSeconds` when unset for HTTP listeners.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `idleTimeoutSeconds` when unset for TCP listeners.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Upstream TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Request bodies up to this size are kept so that the request can be replayed.
pub const DEFAULT_REPLAY_BUFFER_BYTES: usize = 64 * 1024;
/// Exponential back-off base between attempts (full jitter).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Back-off cap.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_millis(250);
/// Retries may add this fraction of the recent request rate.
pub const DEFAULT_BUDGET_RETRY_PERCENT: f64 = 0.2;
/// Retries always allowed per second, whatever the request rate.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// Window over which the budget remembers requests and retries.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Consecutive failures that eject an endpoint.
pub const DEFAULT_OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
/// Ejection time, multiplied by the number of times the endpoint was ejected.
pub const DEFAULT_OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Longest ejection.
pub const DEFAULT_OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
/// At most this share of a service's endpoints is ejected at once.
pub const DEFAULT_OUTLIER_MAX_EJECTION_PERCENT: u8 = 50;
/// Peak-EWMA decay time constant.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint that has not answered yet.
pub const DEFAULT_EWMA_INITIAL_RTT: Duration = Duration::from_millis(5);
/// Pooled upstream connections are closed after this idle time: shorter than common
/// application keep-alive timeouts (Node.js: 5 s), so the app rarely closes one under us.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle pooled connections kept per endpoint.
pub const DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Requests waiting on or in flight to one target service before new ones get 503.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 1024;
/// HTTP/1.1 requests in flight to one endpoint (each holds one upstream connection) before
/// the balancer avoids it; when every endpoint is full, new requests get 503.
pub const DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT: usize = 1024;
/// Downstream connections per listener before new ones are refused.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Largest request head accepted (HTTP/1.1); larger gets 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time a client has to send a full request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the sidecar keeps serving after a shutdown request.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(20);
/// In-flight requests get this much longer after the drain window.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Heartbeat TTL registered with the instance.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// Prefix length of the alias VIP block.
pub const DEFAULT_VIP_PREFIX_LEN: u8 = 16;
/// Admin listener port.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;
/// HTTP proxy listener port.
pub const DEFAULT_HTTP_PROXY_PORT: u16 = 15001;
/// How often the app's port is probed before registration.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_millis(200);

/// Which balancer picks an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Power of two choices over peak-EWMA latency × in-flight requests.
    #[default]
    PeakEwma,
    RoundRobin,
}

/// Access log format (lines on stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    #[default]
    Off,
    Text,
    Json,
}

/// Retry behaviour for one target service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryConfig {
    pub max_retries: u32,
    /// Timeout of one attempt (until response headers); `None`: only the request timeout.
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Fraction (0.0..=1.0) of recent requests that may be retried.
    pub budget_retry_percent: f64,
    pub budget_min_per_second: u32,
    pub budget_ttl: Duration,
    pub replay_buffer_bytes: usize,
}

/// Timeouts with Service Connect's meaning.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeoutConfig {
    /// Whole request until response headers, retries included; `None`: no limit.
    pub per_request: Option<Duration>,
    /// A connection with nothing in flight and no bytes moving is closed after this.
    pub idle: Option<Duration>,
    pub connect: Duration,
}

/// Policy applied to requests towards one target service.
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
pub struct TargetPolicy {
    pub retry: RetryConfig,
    pub timeouts: TimeoutConfig,
}

/// Outlier detection (consecutive failures → ejection).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u8,
}

/// Circuit-breaker limits and pool bounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitsConfig {
    pub max_pending_requests: usize,
    pub max_connections_per_endpoint: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
}

/// Everything the sidecar's data plane needs, typed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyConfig {
    pub balancer: BalancerKind,
    pub ewma_decay: Duration,
    pub ewma_initial_rtt: Duration,
    /// Policy for any target without an entry in `targets`.
    pub default_policy: TargetPolicy,
    /// Per target discovery name.
    pub targets: BTreeMap<String, TargetPolicy>,
    pub outlier: OutlierConfig,
    pub limits: LimitsConfig,
    pub drain_window: Duration,
    pub drain_grace: Duration,
    pub heartbeat_ttl: Duration,
    pub readiness_interval: Duration,
    /// Adds `x-skiff-attempts` to proxied responses.
    pub debug_attempts_header: bool,
    pub access_log: AccessLog,
    /// Access log lines keep the query string (`includeQueryParameters: ENABLED`).
    pub access_log_query: bool,
    /// Network of the alias VIP block (e.g. 127.255.0.0); `None`: no VIP listeners.
    pub vip_base: Option<Ipv4Addr>,
    /// Prefix length of the VIP block (16 for 127.255.0.0/16).
    pub vip_prefix_len: u8,
    /// While a response is awaited, how long the thread polls before it sleeps (zero: never);
    /// applied by the binary's runtime, which reads [`crate::responses_awaited`].
    pub busy_poll: Duration,
}

// === impl ProxyConfig ===

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            balancer: BalancerKind::PeakEwma,
            ewma_decay: DEFAULT_EWMA_DECAY,
            ewma_initial_rtt: DEFAULT_EWMA_INITIAL_RTT,
            default_policy: TargetPolicy::default(),
            targets: BTreeMap::new(),
            outlier: OutlierConfig::default(),
            limits: LimitsConfig::default(),
            drain_window: DEFAULT_DRAIN_WINDOW,
            drain_grace: DEFAULT_DRAIN_GRACE,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            readiness_interval: DEFAULT_READINESS_INTERVAL,
            debug_attempts_header: false,
            access_log: AccessLog::Off,
            access_log_query: false,
            vip_base: None,
            vip_prefix_len: DEFAULT_VIP_PREFIX_LEN,
            busy_poll: skiff_config::settings::DEFAULT_BUSY_POLL,
        }
    }
}

impl ProxyConfig {
    /// The policy for requests to `target`.
    pub fn policy(&self, target: &str) -> &TargetPolicy {
        self.targets.get(target).unwrap_or(&self.default_policy)
    }
}

// === impl RetryConfig ===

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: DEFAULT_MAX_RETRIES,
            per_try_timeout: None,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            budget_retry_percent: DEFAULT_BUDGET_RETRY_PERCENT,
            budget_min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            budget_ttl: DEFAULT_BUDGET_TTL,
            replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            per_request: Some(DEFAULT_PER_REQUEST_TIMEOUT),
            idle: Some(DEFAULT_HTTP_IDLE_TIMEOUT),
            connect: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl TimeoutConfig {
    /// Service Connect's seconds, where 0 means "none" and absent means the default.
    pub fn from_ecs_seconds(per_request: Option<u64>, idle: Option<u64>, tcp: bool) -> Self {
        let idle_default = if tcp {
            DEFAULT_TCP_IDLE_TIMEOUT
        } else {
            DEFAULT_HTTP_IDLE_TIMEOUT
        };
        let secs = |v: Option<u64>, d: Duration| match v {
            None => Some(d),
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        };
        TimeoutConfig {
            per_request: secs(per_request, DEFAULT_PER_REQUEST_TIMEOUT),
            idle: secs(idle, idle_default),
            connect: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: DEFAULT_OUTLIER_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_OUTLIER_BASE_EJECTION,
            max_ejection: DEFAULT_OUTLIER_MAX_EJECTION,
            max_ejection_percent: DEFAULT_OUTLIER_MAX_EJECTION_PERCENT,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_connections_per_endpoint: DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_endpoint: DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecs_zero_means_none_and_absent_means_default() {
        let t = TimeoutConfig::from_ecs_seconds(Some(0), None, true);
        assert_eq!(t.per_request, None);
        assert_eq!(t.idle, Some(DEFAULT_TCP_IDLE_TIMEOUT));
        let t = TimeoutConfig::from_ecs_seconds(None, Some(7), false);
        assert_eq!(t.per_request, Some(DEFAULT_PER_REQUEST_TIMEOUT));
        assert_eq!(t.idle, Some(Duration::from_secs(7)));
    }

    #[test]
    fn per_target_policy_overrides_default() {
        let mut cfg = ProxyConfig::default();
        let mut p = TargetPolicy::default();
        p.retry.max_retries = 0;
        cfg.targets.insert("orders".into(), p);
        assert_eq!(cfg.policy("orders").retry.max_retries, 0);
        assert_eq!(cfg.policy("other").retry.max_retries, DEFAULT_MAX_RETRIES);
    }
}
