//! Skiff's own settings: a TOML file with snake_case keys and units in the key
//! names, read into typed values with every problem reported.
//!
//! The file is read in two steps, as quickwit reads its configs: serde fills
//! the `Raw*` shapes (which deny unknown keys and hold the documented
//! defaults), then `validate` turns them into the public types, which cannot
//! hold a wrong value: `Duration`, `SocketAddr`, `NonZero*`, enums.
//! `config/settings.example.toml` documents every key with its default.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::nearest;
use crate::names::DiscoveryName;

mod raw;

use raw::*;

// --- defaults, next to the types they fill ---

/// `[registry] http_addr`: the Cloud Map API, watch API, `/metrics`, `/health`.
pub const DEFAULT_REGISTRY_HTTP_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070));
/// `[registry] dns_addr`: DNS over UDP and TCP.
pub const DEFAULT_REGISTRY_DNS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8600));
/// `[registry] data_dir`.
pub const DEFAULT_REGISTRY_DATA_DIR: &str = ".skiff/registry";
/// `[registry] instance_removal_grace_ms`: how long an unhealthy instance stays listed.
pub const DEFAULT_INSTANCE_REMOVAL_GRACE: Duration = Duration::from_secs(180);
/// `[registry] max_body_bytes`: the largest request body.
pub const DEFAULT_MAX_BODY_BYTES: NonZeroUsize = NonZeroUsize::MIN.saturating_add(1024 * 1024 - 1);
/// `[registry] watch_default_wait_ms`: a watch's wait when the client names none.
pub const DEFAULT_WATCH_DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// `[registry] watch_max_wait_ms`: the longest wait a client may ask for.
pub const DEFAULT_WATCH_MAX_WAIT: Duration = Duration::from_secs(600);

/// `[proxy] bind_ip`: every sidecar listener binds this address.
pub const DEFAULT_PROXY_BIND_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `[proxy] app_host`: where the sidecar reaches its app.
pub const DEFAULT_PROXY_APP_HOST: &str = "127.0.0.1";
/// `[proxy] admin_port`: `/ready`, `/metrics`, `/endpoints`, `/config` (Envoy's admin port).
pub const DEFAULT_PROXY_ADMIN_PORT: u16 = 9901;
/// `[proxy] http_proxy_port`: the `HTTP_PROXY` listener.
pub const DEFAULT_PROXY_HTTP_PROXY_PORT: u16 = 15001;
/// `[proxy] dns_port = 0`: 53 when running as root, else [`FALLBACK_DNS_PORT`].
pub const ROOT_DNS_PORT: u16 = 53;
/// The automatic DNS port when not root.
pub const FALLBACK_DNS_PORT: u16 = 5353;
/// `[proxy] vip_cidr`: client aliases resolve to addresses from this block.
pub const DEFAULT_VIP_CIDR: Ipv4Cidr = Ipv4Cidr {
    network: Ipv4Addr::new(127, 255, 0, 0),
    prefix_len: 16,
};
/// `[proxy] connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `[proxy] default_per_request_timeout_ms`: Service Connect's default per-request timeout.
pub const DEFAULT_PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// `[proxy] drain_ms`: how long a stopping sidecar keeps serving.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(20);
/// `[proxy] busy_poll_us`: while a response is awaited, the sidecar's thread polls for up to
/// this long before it sleeps (see `src/park.rs`).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);
/// The largest `busy_poll_us`: a spin longer than a millisecond costs more than any sleep.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);
/// `[proxy] heartbeat_ttl_ms`: an instance is unhealthy when not renewed for this long.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// `[proxy] pool_idle_timeout_ms`: shorter than common application keep-alive timeouts
/// (Node.js: 5 s), so the app rarely closes a pooled connection just as a request is sent on it.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// `[proxy] pool_max_idle_per_endpoint`.
pub const DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT: usize = 64;
/// `[proxy] max_connections_per_endpoint`.
pub const DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT: NonZeroU32 = NonZeroU32::MIN.saturating_add(1023);
/// `[proxy] max_pending_requests`.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 1024;
/// `[proxy] replay_buffer_bytes`: request bytes kept so a request can be retried.
pub const DEFAULT_REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// `[proxy.retry] max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// `[proxy.retry] backoff_base_ms`.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// `[proxy.retry] backoff_max_ms`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// `[proxy.retry] budget_percent`: retries allowed, in percent of requests.
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// The largest `budget_percent` (tower's `TpsBudget` takes 0–1000 %).
pub const MAX_BUDGET_PERCENT: u32 = 1000;
/// `[proxy.retry] budget_min_per_second`: retries always allowed per second.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;

/// `[proxy.outlier_detection] consecutive_failures`.
pub const DEFAULT_CONSECUTIVE_FAILURES: NonZeroU32 = NonZeroU32::MIN.saturating_add(4);
/// `[proxy.outlier_detection] base_ejection_ms`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// `[proxy.outlier_detection] max_ejection_ms`.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// `[proxy.outlier_detection] max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 50;

/// `[logrouter] forward_addr`: Fluent Forward input (Fluentd's port).
pub const DEFAULT_FORWARD_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 24224));
/// `[logrouter] metrics_addr` (Fluent Bit's port).
pub const DEFAULT_LOGROUTER_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2020));
/// `[logrouter] storage_path`: the filesystem buffer.
pub const DEFAULT_STORAGE_PATH: &str = ".skiff/logrouter";
/// `[logrouter] storage_max_bytes`.
pub const DEFAULT_STORAGE_MAX_BYTES: NonZeroU64 =
    NonZeroU64::MIN.saturating_add(256 * 1024 * 1024 - 1);

/// `[telemetry] trace_sampling_ratio`.
pub const DEFAULT_TRACE_SAMPLING_RATIO: f64 = 1.0;

/// Everything Skiff's components read from `skiff.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub registry: RegistrySettings,
    pub proxy: ProxySettings,
    pub logrouter: LogRouterSettings,
    pub telemetry: TelemetrySettings,
}

/// `[registry]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySettings {
    pub http_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub instance_removal_grace: Duration,
    pub max_body_bytes: NonZeroUsize,
    pub watch_default_wait: Duration,
    /// At least `watch_default_wait`.
    pub watch_max_wait: Duration,
}

/// `[proxy]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    pub bind_ip: IpAddr,
    pub app_host: String,
    pub admin_port: u16,
    pub http_proxy_port: u16,
    pub dns_port: DnsPort,
    pub vip_cidr: Ipv4Cidr,
    pub connect_timeout: Duration,
    /// `None` when `default_per_request_timeout_ms = 0`.
    pub default_per_request_timeout: Option<Duration>,
    pub drain: Duration,
    pub balancer: Balancer,
    pub heartbeat_ttl: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub max_connections_per_endpoint: NonZeroU32,
    pub max_pending_requests: usize,
    pub replay_buffer_bytes: usize,
    pub debug_attempts_header: bool,
    pub access_log: AccessLog,
    /// Zero: never poll before sleeping.
    pub busy_poll: Duration,
    pub retry: RetrySettings,
    pub outlier_detection: OutlierDetection,
}

/// `[proxy.retry]`: the default policy and per-service overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    pub default: RetryPolicy,
    /// `[proxy.retry.services.<discovery name>]`, each already merged over `default`.
    pub services: BTreeMap<DiscoveryName, RetryPolicy>,
}

/// One retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_base: Duration,
    /// At least `backoff_base`.
    pub backoff_max: Duration,
    /// 0–1000.
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
    /// `None` when `per_try_timeout_ms = 0`.
    pub per_try_timeout: Option<Duration>,
}

/// `[proxy.outlier_detection]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_failures: NonZeroU32,
    pub base_ejection: Duration,
    /// At least `base_ejection`.
    pub max_ejection: Duration,
    /// 0–100.
    pub max_ejection_percent: u8,
}

/// `[logrouter]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRouterSettings {
    pub forward_addr: SocketAddr,
    pub unix_socket: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub storage_path: PathBuf,
    pub storage_max_bytes: NonZeroU64,
}

/// `[telemetry]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// An `http://` or `https://` OTLP/HTTP endpoint; no traces are exported when `None`.
    pub otlp_endpoint: Option<String>,
    /// 0.0–1.0.
    pub trace_sampling_ratio: f64,
}

/// `[proxy] dns_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsPort {
    /// `0`: 53 as root, else 5353.
    Auto,
    Fixed(u16),
}

/// `[proxy] balancer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency.
    P2cEwma,
    RoundRobin,
}

/// `[proxy] access_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

/// An IPv4 block such as `127.255.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{file}: cannot read settings: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Values that are each well-formed but wrong; one line per problem.
    #[error("{}", .problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<String> },
}

// === impl Settings ===

impl Settings {
    /// Reads and validates a settings file.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            file: file.clone(),
            source,
        })?;
        Settings::from_toml(&file, &text)
    }

    /// Parses and validates settings text; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Settings, SettingsError> {
        let raw: RawSettings = toml::from_str(text).map_err(|e| parse_error(file, text, &e))?;
        raw.validate().map_err(|problems| SettingsError::Invalid {
            file: file.to_owned(),
            problems,
        })
    }
}

impl Default for Settings {
    /// The documented defaults (a unit test holds them equal to an empty file's).
    fn default() -> Settings {
        Settings {
            registry: RegistrySettings {
                http_addr: DEFAULT_REGISTRY_HTTP_ADDR,
                dns_addr: DEFAULT_REGISTRY_DNS_ADDR,
                data_dir: PathBuf::from(DEFAULT_REGISTRY_DATA_DIR),
                instance_removal_grace: DEFAULT_INSTANCE_REMOVAL_GRACE,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                watch_default_wait: DEFAULT_WATCH_DEFAULT_WAIT,
                watch_max_wait: DEFAULT_WATCH_MAX_WAIT,
            },
            proxy: ProxySettings {
                bind_ip: DEFAULT_PROXY_BIND_IP,
                app_host: DEFAULT_PROXY_APP_HOST.to_owned(),
                admin_port: DEFAULT_PROXY_ADMIN_PORT,
                http_proxy_port: DEFAULT_PROXY_HTTP_PROXY_PORT,
                dns_port: DnsPort::Auto,
                vip_cidr: DEFAULT_VIP_CIDR,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                default_per_request_timeout: Some(DEFAULT_PER_REQUEST_TIMEOUT),
                drain: DEFAULT_DRAIN,
                balancer: Balancer::P2cEwma,
                heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
                pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
                pool_max_idle_per_endpoint: DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT,
                max_connections_per_endpoint: DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT,
                max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
                replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
                debug_attempts_header: false,
                access_log: AccessLog::Off,
                busy_poll: DEFAULT_BUSY_POLL,
                retry: RetrySettings {
                    default: RetryPolicy::DEFAULT,
                    services: BTreeMap::new(),
                },
                outlier_detection: OutlierDetection {
                    consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
                    base_ejection: DEFAULT_BASE_EJECTION,
                    max_ejection: DEFAULT_MAX_EJECTION,
                    max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
                },
            },
            logrouter: LogRouterSettings {
                forward_addr: DEFAULT_FORWARD_ADDR,
                unix_socket: None,
                metrics_addr: DEFAULT_LOGROUTER_METRICS_ADDR,
                storage_path: PathBuf::from(DEFAULT_STORAGE_PATH),
                storage_max_bytes: DEFAULT_STORAGE_MAX_BYTES,
            },
            telemetry: TelemetrySettings {
                otlp_endpoint: None,
                trace_sampling_ratio: DEFAULT_TRACE_SAMPLING_RATIO,
            },
        }
    }
}

// === impl RetrySettings ===

impl RetrySettings {
    /// The policy for calls to `discovery_name`: its override, else the default.
    pub fn policy_for(&self, discovery_name: &str) -> &RetryPolicy {
        self.services
            .iter()
            .find(|(name, _)| name.as_str() == discovery_name)
            .map_or(&self.default, |(_, policy)| policy)
    }
}

impl RetryPolicy {
    /// The documented defaults.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_retries: DEFAULT_MAX_RETRIES,
        backoff_base: DEFAULT_BACKOFF_BASE,
        backoff_max: DEFAULT_BACKOFF_MAX,
        budget_percent: DEFAULT_BUDGET_PERCENT,
        budget_min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
        per_try_timeout: None,
    };
}

// === impl DnsPort ===

impl DnsPort {
    /// The port to bind: a fixed one, or 53 when `is_root`, else 5353.
    pub fn resolve(self, is_root: bool) -> u16 {
        match self {
            DnsPort::Fixed(port) => port,
            DnsPort::Auto if is_root => ROOT_DNS_PORT,
            DnsPort::Auto => FALLBACK_DNS_PORT,
        }
    }
}

// === impl Ipv4Cidr ===

impl Ipv4Cidr {
    /// Reads `a.b.c.d/len`; host bits must be zero and the block must hold at least 4 addresses.
    pub fn parse(text: &str) -> Result<Ipv4Cidr, String> {
        let Some((addr, len)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not an IPv4 block such as \"127.255.0.0/16\""
            ));
        };
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = match len.parse() {
            Ok(n) if n <= 30 => n,
            _ => return Err(format!("prefix length {len:?} must be between 0 and 30")),
        };
        let cidr = Ipv4Cidr {
            network,
            prefix_len,
        };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(format!(
                "{text:?} has host bits set; the block starts at {}/{prefix_len}",
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            ));
        }
        Ok(cidr)
    }

    /// The netmask as a number.
    pub fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// True when `ip` is in the block.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Turns a toml error into `file:line:column: message`, with a nearest-name
/// hint for an unknown key.
fn parse_error(file: &str, text: &str, e: &toml::de::Error) -> SettingsError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        }
        None => (1, 1),
    };
    let message = e.message().trim().to_owned();
    let message = unknown_key_hint(&message).unwrap_or(message);
    SettingsError::Parse {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" → "unknown key `x`, did you mean `a`?".
fn unknown_key_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    Some(match nearest(key, expected.iter().copied()) {
        Some(near) => format!("unknown key `{key}`, did you mean `{near}`?"),
        None => format!(
            "unknown key `{key}`; expected one of {}",
            expected.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests;
