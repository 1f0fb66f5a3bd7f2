//! Instance attribute names: Cloud Map's own, the ones ECS sets, and Skiff's.

// === Cloud Map ===

/// IPv4 address of the instance.
pub const AWS_INSTANCE_IPV4: &str = "AWS_INSTANCE_IPV4";
/// IPv6 address of the instance.
pub const AWS_INSTANCE_IPV6: &str = "AWS_INSTANCE_IPV6";
/// Port of the instance.
pub const AWS_INSTANCE_PORT: &str = "AWS_INSTANCE_PORT";
/// `HEALTHY` (default) or `UNHEALTHY`: the first custom health status.
pub const AWS_INIT_HEALTH_STATUS: &str = "AWS_INIT_HEALTH_STATUS";

// === ECS ===

pub const ECS_CLUSTER_NAME: &str = "ECS_CLUSTER_NAME";
pub const ECS_SERVICE_NAME: &str = "ECS_SERVICE_NAME";
pub const ECS_TASK_DEFINITION_FAMILY: &str = "ECS_TASK_DEFINITION_FAMILY";
pub const ECS_TASK_ARN: &str = "ECS_TASK_ARN";
pub const AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";
pub const REGION: &str = "REGION";

// === Skiff ===

/// Seconds between heartbeats before the instance turns unhealthy; its presence enables
/// heartbeat health for the instance.
pub const SKIFF_HEARTBEAT_TTL_SECONDS: &str = "SKIFF_HEARTBEAT_TTL_SECONDS";
/// `http` | `http2` | `grpc` | `tcp`.
pub const SKIFF_APP_PROTOCOL: &str = "SKIFF_APP_PROTOCOL";
/// Comma-separated `dnsName:port` client aliases declared for this discovery name.
pub const SKIFF_CLIENT_ALIASES: &str = "SKIFF_CLIENT_ALIASES";
/// `ip:port` of the instance's sidecar or log router admin/metrics listener.
pub const SKIFF_ADMIN_ADDR: &str = "SKIFF_ADMIN_ADDR";
/// `sidecar` | `logrouter` | `registry`.
pub const SKIFF_COMPONENT: &str = "SKIFF_COMPONENT";
/// `true` while the instance drains.
pub const SKIFF_DRAINING: &str = "SKIFF_DRAINING";
