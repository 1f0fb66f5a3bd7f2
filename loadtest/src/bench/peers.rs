//! The proxies compared: generated HAProxy and nginx configurations and the sidecar's command line.
//!
//! Each peer gets the same job: one worker thread, plaintext HTTP/1.1 on
//! loopback, no access log, keep-alive to the origin.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// Where the benchmarked sidecar listens.
pub const SIDECAR_BIND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
/// The sidecar's admin listener (`/metrics`), on its bind IP.
pub const SIDECAR_ADMIN_PORT: u16 = 9901;
/// The sidecar's HTTP proxy listener, on its bind IP.
pub const SIDECAR_HTTP_PROXY_PORT: u16 = 15001;
/// Loopback addresses tried after [`SIDECAR_BIND_IP`] when another process holds its ports.
const SIDECAR_BIND_IP_TRIES: u8 = 20;

/// [`SIDECAR_BIND_IP`], or the next loopback address on which the sidecar's fixed ports are
/// free (the machine may be shared with another sidecar on that address).
pub fn sidecar_bind_ip() -> Ipv4Addr {
    let [a, b, c, d] = SIDECAR_BIND_IP.octets();
    let candidates = (0..SIDECAR_BIND_IP_TRIES).map(|i| Ipv4Addr::new(a, b, c, d.wrapping_add(i)));
    first_free_ip(candidates, &[SIDECAR_ADMIN_PORT, SIDECAR_HTTP_PROXY_PORT])
        .unwrap_or(SIDECAR_BIND_IP)
}

/// The first of `candidates` on which every TCP port of `ports` can be bound now.
pub fn first_free_ip(
    candidates: impl IntoIterator<Item = Ipv4Addr>,
    ports: &[u16],
) -> Option<Ipv4Addr> {
    candidates.into_iter().find(|ip| {
        ports
            .iter()
            .all(|port| std::net::TcpListener::bind((*ip, *port)).is_ok())
    })
}

/// Telemetry settings the sidecar reads from its environment: none is inherited from the
/// benchmark's own, so "telemetry off" is off and the traced row exports where it is told.
pub const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// HAProxy, one thread, keep-alive both sides, connections to the origin reused.
pub fn haproxy_config(listen_port: u16, origin_port: u16) -> String {
    format!(
        "global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:{listen_port}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin_port}
"
    )
}

/// nginx as one foreground process, upstream keep-alive on, access log off.
pub fn nginx_config(dir: &Path, listen_port: u16, origin_port: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    keepalive_requests 1000000;

    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

/// A task definition whose one container is the origin, so a sidecar's inbound listener fronts it.
pub fn sidecar_task_definition(origin_port: u16) -> serde_json::Value {
    serde_json::json!({
        "family": "bench-origin",
        "networkMode": "awsvpc",
        "containerDefinitions": [{
            "name": "app",
            "image": "skiff-demo",
            "essential": true,
            "portMappings": [{
                "name": "http",
                "containerPort": origin_port,
                "protocol": "tcp",
                "appProtocol": "http"
            }]
        }]
    })
}

/// The matching service: Service Connect with the inbound listener on `listen_port`.
pub fn sidecar_service(listen_port: u16) -> serde_json::Value {
    serde_json::json!({
        "serviceName": "bench-origin",
        "cluster": "skiff-bench",
        "taskDefinition": "bench-origin",
        "desiredCount": 1,
        "serviceConnectConfiguration": {
            "enabled": true,
            "namespace": "bench.internal",
            "services": [{
                "portName": "http",
                "discoveryName": "bench-origin",
                "ingressPortOverride": listen_port,
                "clientAliases": [{"port": 8080, "dnsName": "bench-origin"}]
            }]
        }
    })
}

/// The traced row's service: [`sidecar_service`] with Service Connect's JSON access log on.
pub fn sidecar_service_with_access_log(listen_port: u16) -> serde_json::Value {
    let mut service = sidecar_service(listen_port);
    service["serviceConnectConfiguration"]["accessLogConfiguration"] =
        serde_json::json!({ "format": "JSON" });
    service
}

/// The traced row's telemetry: every span sampled and exported over OTLP HTTP/protobuf to `sink`.
pub fn traced_env(sink: SocketAddr) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_string()),
    ]
    .map(|(name, value)| (name.to_string(), value))
    .to_vec()
}

/// `argv` run through `env`, with every [`OTEL_VARS`] removed and then `set` added; `env`
/// execs the command, so the process ID (and its /proc figures) stays the command's.
pub fn with_env(argv: &[String], set: &[(String, String)]) -> Vec<String> {
    let mut out = vec!["env".to_string()];
    for var in OTEL_VARS {
        out.push("-u".to_string());
        out.push((*var).to_string());
    }
    out.extend(set.iter().map(|(name, value)| format!("{name}={value}")));
    out.extend(argv.iter().cloned());
    out
}

/// The sidecars' settings file (`{dir}/sidecar.toml`): the defaults, or `busy_poll_us` as given.
pub fn sidecar_settings(busy_poll_us: Option<u64>) -> String {
    match busy_poll_us {
        Some(us) => format!("[proxy]\nbusy_poll_us = {us}\n"),
        None => "# The defaults (config/settings.example.toml).\n".to_string(),
    }
}

/// The sidecar's default command line (placeholders in braces, see [`expand`]). It binds a
/// loopback address of its own ([`SIDECAR_BIND_IP`] or, see [`sidecar_bind_ip`], the next free one) so that its admin, HTTP proxy and DNS
/// listeners cannot collide with a sidecar already running on 127.0.0.1.
pub fn default_sidecar_command() -> Vec<String> {
    [
        "{exe}",
        "proxy",
        "--task-definition",
        "{dir}/sidecar.task.json",
        "--service",
        "{dir}/sidecar.service.json",
        "--registry",
        "{registry_url}",
        "--task-id",
        "skiff-bench",
        "--bind-ip",
        "{bind_ip}",
        "--settings",
        "{dir}/sidecar.toml",
        // The benchmark stops it by SIGTERM: no clients to drain for.
        "--drain-ms",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

/// The origin's default command line: the demo app of this very binary.
pub fn default_origin_command() -> Vec<String> {
    [
        "{exe}",
        "demo",
        "serve",
        "--name",
        "origin",
        "--host",
        "127.0.0.1",
        "--port",
        "{origin_port}",
    ]
    .map(String::from)
    .to_vec()
}

/// Replaces every `{name}` of `vars` in every argument.
pub fn expand(argv: &[String], vars: &BTreeMap<&str, String>) -> Vec<String> {
    argv.iter()
        .map(|arg| {
            vars.iter().fold(arg.clone(), |arg, (name, value)| {
                arg.replace(&format!("{{{name}}}"), value)
            })
        })
        .collect()
}
