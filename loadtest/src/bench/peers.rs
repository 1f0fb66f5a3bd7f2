//! The proxies compared: generated HAProxy and nginx configurations and the sidecar's command line.
//!
//! Each peer gets the same job: one worker thread, plaintext HTTP/1.1 on
//! loopback, no access log, keep-alive to the origin.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// Where the benchmarked sidecar listens.
pub const SIDECAR_BIND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

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

/// The sidecar's default command line (placeholders in braces, see [`expand`]). It binds a
/// loopback address of its own ([`SIDECAR_BIND_IP`]) so that its admin, HTTP proxy and DNS
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
