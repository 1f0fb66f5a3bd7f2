//! The settings file as serde reads it: plain numbers in the key's unit, the
//! documented defaults, unknown keys denied; `validate` makes the typed settings.

use super::*;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSettings {
    pub registry: RawRegistry,
    pub proxy: RawProxy,
    pub logrouter: RawLogRouter,
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRegistry {
    pub http_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub instance_removal_grace_ms: u64,
    pub max_body_bytes: usize,
    pub watch_default_wait_ms: u64,
    pub watch_max_wait_ms: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    pub bind_ip: IpAddr,
    pub app_host: String,
    pub admin_port: u16,
    pub http_proxy_port: u16,
    pub dns_port: u16,
    pub vip_cidr: String,
    pub connect_timeout_ms: u64,
    pub default_per_request_timeout_ms: u64,
    pub drain_ms: u64,
    pub balancer: Balancer,
    pub heartbeat_ttl_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_endpoint: usize,
    pub max_connections_per_endpoint: u32,
    pub max_pending_requests: usize,
    pub replay_buffer_bytes: usize,
    pub debug_attempts_header: bool,
    pub access_log: AccessLog,
    pub busy_poll_us: u64,
    pub retry: RawRetry,
    pub outlier_detection: RawOutlierDetection,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
    pub per_try_timeout_ms: u64,
    pub services: BTreeMap<String, RawRetryOverride>,
}

/// `[proxy.retry.services.<name>]`: any of the `[proxy.retry]` keys.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryOverride {
    pub max_retries: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub budget_percent: Option<u32>,
    pub budget_min_per_second: Option<u32>,
    pub per_try_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOutlierDetection {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u8,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogRouter {
    pub forward_addr: SocketAddr,
    pub unix_socket: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub storage_path: PathBuf,
    pub storage_max_bytes: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub trace_sampling_ratio: f64,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `0` turns the timeout off.
fn optional_ms(n: u64) -> Option<Duration> {
    (n > 0).then(|| ms(n))
}

/// Collects problems as `key: message`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    fn nonzero_ms(&mut self, key: &str, n: u64) -> Duration {
        if n == 0 {
            self.push(key, "must be at least 1");
        }
        ms(n)
    }
}

// === defaults ===

impl Default for RawRegistry {
    fn default() -> Self {
        RawRegistry {
            http_addr: DEFAULT_REGISTRY_HTTP_ADDR,
            dns_addr: DEFAULT_REGISTRY_DNS_ADDR,
            data_dir: PathBuf::from(DEFAULT_REGISTRY_DATA_DIR),
            instance_removal_grace_ms: millis(DEFAULT_INSTANCE_REMOVAL_GRACE),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES.get(),
            watch_default_wait_ms: millis(DEFAULT_WATCH_DEFAULT_WAIT),
            watch_max_wait_ms: millis(DEFAULT_WATCH_MAX_WAIT),
        }
    }
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            bind_ip: DEFAULT_PROXY_BIND_IP,
            app_host: DEFAULT_PROXY_APP_HOST.to_owned(),
            admin_port: DEFAULT_PROXY_ADMIN_PORT,
            http_proxy_port: DEFAULT_PROXY_HTTP_PROXY_PORT,
            dns_port: 0,
            vip_cidr: DEFAULT_VIP_CIDR.to_string(),
            connect_timeout_ms: millis(DEFAULT_CONNECT_TIMEOUT),
            default_per_request_timeout_ms: millis(DEFAULT_PER_REQUEST_TIMEOUT),
            drain_ms: millis(DEFAULT_DRAIN),
            balancer: Balancer::P2cEwma,
            heartbeat_ttl_ms: millis(DEFAULT_HEARTBEAT_TTL),
            pool_idle_timeout_ms: millis(DEFAULT_POOL_IDLE_TIMEOUT),
            pool_max_idle_per_endpoint: DEFAULT_POOL_MAX_IDLE_PER_ENDPOINT,
            max_connections_per_endpoint: DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT.get(),
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
            debug_attempts_header: false,
            access_log: AccessLog::Off,
            busy_poll_us: micros(DEFAULT_BUSY_POLL),
            retry: RawRetry::default(),
            outlier_detection: RawOutlierDetection::default(),
        }
    }
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base_ms: millis(DEFAULT_BACKOFF_BASE),
            backoff_max_ms: millis(DEFAULT_BACKOFF_MAX),
            budget_percent: DEFAULT_BUDGET_PERCENT,
            budget_min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            per_try_timeout_ms: 0,
            services: BTreeMap::new(),
        }
    }
}

impl Default for RawOutlierDetection {
    fn default() -> Self {
        RawOutlierDetection {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES.get(),
            base_ejection_ms: millis(DEFAULT_BASE_EJECTION),
            max_ejection_ms: millis(DEFAULT_MAX_EJECTION),
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl Default for RawLogRouter {
    fn default() -> Self {
        RawLogRouter {
            forward_addr: DEFAULT_FORWARD_ADDR,
            unix_socket: None,
            metrics_addr: DEFAULT_LOGROUTER_METRICS_ADDR,
            storage_path: PathBuf::from(DEFAULT_STORAGE_PATH),
            storage_max_bytes: DEFAULT_STORAGE_MAX_BYTES.get(),
        }
    }
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            trace_sampling_ratio: DEFAULT_TRACE_SAMPLING_RATIO,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// === validation ===

impl RawSettings {
    pub fn validate(self) -> Result<Settings, Vec<String>> {
        let mut p = Problems::default();
        let registry = self.registry.validate(&mut p);
        let proxy = self.proxy.validate(&mut p);
        let logrouter = self.logrouter.validate(&mut p);
        let telemetry = self.telemetry.validate(&mut p);
        if p.0.is_empty() {
            Ok(Settings {
                registry,
                proxy,
                logrouter,
                telemetry,
            })
        } else {
            Err(p.0)
        }
    }
}

impl RawRegistry {
    fn validate(self, p: &mut Problems) -> RegistrySettings {
        let max_body_bytes = NonZeroUsize::new(self.max_body_bytes).unwrap_or_else(|| {
            p.push("registry.max_body_bytes", "must be at least 1");
            DEFAULT_MAX_BODY_BYTES
        });
        let watch_default_wait =
            p.nonzero_ms("registry.watch_default_wait_ms", self.watch_default_wait_ms);
        if self.watch_max_wait_ms < self.watch_default_wait_ms {
            p.push(
                "registry.watch_max_wait_ms",
                format_args!(
                    "{} is less than watch_default_wait_ms ({})",
                    self.watch_max_wait_ms, self.watch_default_wait_ms
                ),
            );
        }
        RegistrySettings {
            http_addr: self.http_addr,
            dns_addr: self.dns_addr,
            data_dir: self.data_dir,
            instance_removal_grace: ms(self.instance_removal_grace_ms),
            max_body_bytes,
            watch_default_wait,
            watch_max_wait: ms(self.watch_max_wait_ms),
        }
    }
}

impl RawProxy {
    fn validate(self, p: &mut Problems) -> ProxySettings {
        if self.app_host.trim().is_empty() {
            p.push("proxy.app_host", "must not be empty");
        }
        let vip_cidr = Ipv4Cidr::parse(&self.vip_cidr).unwrap_or_else(|e| {
            p.push("proxy.vip_cidr", e);
            DEFAULT_VIP_CIDR
        });
        let max_connections_per_endpoint = NonZeroU32::new(self.max_connections_per_endpoint)
            .unwrap_or_else(|| {
                p.push("proxy.max_connections_per_endpoint", "must be at least 1");
                DEFAULT_MAX_CONNECTIONS_PER_ENDPOINT
            });
        let busy_poll = Duration::from_micros(self.busy_poll_us);
        if busy_poll > MAX_BUSY_POLL {
            p.push(
                "proxy.busy_poll_us",
                format_args!(
                    "must be between 0 and {}, found {}",
                    micros(MAX_BUSY_POLL),
                    self.busy_poll_us
                ),
            );
        }
        let retry = self.retry.validate(p);
        let outlier_detection = self.outlier_detection.validate(p);
        ProxySettings {
            bind_ip: self.bind_ip,
            app_host: self.app_host,
            admin_port: self.admin_port,
            http_proxy_port: self.http_proxy_port,
            dns_port: match self.dns_port {
                0 => DnsPort::Auto,
                port => DnsPort::Fixed(port),
            },
            vip_cidr,
            connect_timeout: p.nonzero_ms("proxy.connect_timeout_ms", self.connect_timeout_ms),
            default_per_request_timeout: optional_ms(self.default_per_request_timeout_ms),
            drain: ms(self.drain_ms),
            balancer: self.balancer,
            heartbeat_ttl: p.nonzero_ms("proxy.heartbeat_ttl_ms", self.heartbeat_ttl_ms),
            pool_idle_timeout: ms(self.pool_idle_timeout_ms),
            pool_max_idle_per_endpoint: self.pool_max_idle_per_endpoint,
            max_connections_per_endpoint,
            max_pending_requests: self.max_pending_requests,
            replay_buffer_bytes: self.replay_buffer_bytes,
            debug_attempts_header: self.debug_attempts_header,
            access_log: self.access_log,
            busy_poll,
            retry,
            outlier_detection,
        }
    }
}

impl RawRetry {
    fn validate(self, p: &mut Problems) -> RetrySettings {
        let base = RawRetryOverride {
            max_retries: Some(self.max_retries),
            backoff_base_ms: Some(self.backoff_base_ms),
            backoff_max_ms: Some(self.backoff_max_ms),
            budget_percent: Some(self.budget_percent),
            budget_min_per_second: Some(self.budget_min_per_second),
            per_try_timeout_ms: Some(self.per_try_timeout_ms),
        };
        let default = base.policy("proxy.retry", &RetryPolicy::DEFAULT, p);
        let mut services = BTreeMap::new();
        for (name, over) in self.services {
            let key = format!("proxy.retry.services.{name}");
            let policy = over.policy(&key, &default, p);
            match DiscoveryName::parse(&name) {
                Ok(name) => {
                    services.insert(name, policy);
                }
                Err(e) => p.push(&key, format_args!("not a discovery name: {e}")),
            }
        }
        RetrySettings { default, services }
    }
}

impl RawRetryOverride {
    /// This override over `base`, checked; problems name keys under `key`.
    fn policy(&self, key: &str, base: &RetryPolicy, p: &mut Problems) -> RetryPolicy {
        let backoff_base = self.backoff_base_ms.map_or(base.backoff_base, |n| {
            p.nonzero_ms(&format!("{key}.backoff_base_ms"), n)
        });
        let backoff_max = self.backoff_max_ms.map_or(base.backoff_max, ms);
        if backoff_max < backoff_base {
            p.push(
                &format!("{key}.backoff_max_ms"),
                format_args!(
                    "{} is less than backoff_base_ms ({})",
                    millis(backoff_max),
                    millis(backoff_base)
                ),
            );
        }
        let budget_percent = self.budget_percent.unwrap_or(base.budget_percent);
        if budget_percent > MAX_BUDGET_PERCENT {
            p.push(
                &format!("{key}.budget_percent"),
                format_args!("must be between 0 and {MAX_BUDGET_PERCENT}, found {budget_percent}"),
            );
        }
        RetryPolicy {
            max_retries: self.max_retries.unwrap_or(base.max_retries),
            backoff_base,
            backoff_max,
            budget_percent,
            budget_min_per_second: self
                .budget_min_per_second
                .unwrap_or(base.budget_min_per_second),
            per_try_timeout: self
                .per_try_timeout_ms
                .map_or(base.per_try_timeout, optional_ms),
        }
    }
}

impl RawOutlierDetection {
    fn validate(self, p: &mut Problems) -> OutlierDetection {
        let consecutive_failures =
            NonZeroU32::new(self.consecutive_failures).unwrap_or_else(|| {
                p.push(
                    "proxy.outlier_detection.consecutive_failures",
                    "must be at least 1",
                );
                DEFAULT_CONSECUTIVE_FAILURES
            });
        let base_ejection = p.nonzero_ms(
            "proxy.outlier_detection.base_ejection_ms",
            self.base_ejection_ms,
        );
        if self.max_ejection_ms < self.base_ejection_ms {
            p.push(
                "proxy.outlier_detection.max_ejection_ms",
                format_args!(
                    "{} is less than base_ejection_ms ({})",
                    self.max_ejection_ms, self.base_ejection_ms
                ),
            );
        }
        if self.max_ejection_percent > 100 {
            p.push(
                "proxy.outlier_detection.max_ejection_percent",
                format_args!(
                    "must be between 0 and 100, found {}",
                    self.max_ejection_percent
                ),
            );
        }
        OutlierDetection {
            consecutive_failures,
            base_ejection,
            max_ejection: ms(self.max_ejection_ms),
            max_ejection_percent: self.max_ejection_percent.min(100),
        }
    }
}

impl RawLogRouter {
    fn validate(self, p: &mut Problems) -> LogRouterSettings {
        let storage_max_bytes = NonZeroU64::new(self.storage_max_bytes).unwrap_or_else(|| {
            p.push("logrouter.storage_max_bytes", "must be at least 1");
            DEFAULT_STORAGE_MAX_BYTES
        });
        if self
            .unix_socket
            .as_ref()
            .is_some_and(|s| s.as_os_str().is_empty())
        {
            p.push(
                "logrouter.unix_socket",
                "must not be empty; leave the key out for no unix socket",
            );
        }
        LogRouterSettings {
            forward_addr: self.forward_addr,
            unix_socket: self.unix_socket,
            metrics_addr: self.metrics_addr,
            storage_path: self.storage_path,
            storage_max_bytes,
        }
    }
}

impl RawTelemetry {
    fn validate(self, p: &mut Problems) -> TelemetrySettings {
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            p.push(
                "telemetry.otlp_endpoint",
                format_args!("{endpoint:?} must start with http:// or https://"),
            );
        }
        if !(0.0..=1.0).contains(&self.trace_sampling_ratio) {
            p.push(
                "telemetry.trace_sampling_ratio",
                format_args!(
                    "must be between 0.0 and 1.0, found {}",
                    self.trace_sampling_ratio
                ),
            );
        }
        TelemetrySettings {
            otlp_endpoint: self.otlp_endpoint,
            trace_sampling_ratio: self.trace_sampling_ratio,
        }
    }
}
