//! ECS JSON to sidecar options: the service's `accessLogConfiguration`.

use skiff_config::Definition;
use skiff_proxy::config::AccessLog;
use skiff_proxy::{DiscoverySource, ecs};

fn definition(file: &str, text: &str) -> Definition {
    skiff_config::parse_str(file, text).unwrap()
}

fn task() -> skiff_config::TaskDefinition {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart/frontend.task.json"
    ))
    .unwrap();
    match definition("frontend.task.json", &text) {
        Definition::TaskDefinition(t) => t,
        Definition::Service(_) => panic!("a task definition"),
    }
}

fn service(access_log: &str) -> skiff_config::Service {
    let text = format!(
        r#"{{
  "cluster": "quickstart",
  "serviceName": "frontend",
  "taskDefinition": "frontend",
  "desiredCount": 1,
  "serviceConnectConfiguration": {{
    "enabled": true,
    "namespace": "prod.internal",
    {access_log}
    "services": [{{ "portName": "http", "discoveryName": "frontend",
                    "clientAliases": [{{ "port": 8080, "dnsName": "frontend" }}] }}]
  }}
}}"#
    );
    match definition("frontend.service.json", &text) {
        Definition::Service(s) => s,
        Definition::TaskDefinition(_) => panic!("a service"),
    }
}

fn options(access_log: &str) -> skiff_proxy::ProxyConfig {
    let settings = skiff_config::Settings::default();
    ecs::sidecar_options(
        &task(),
        &service(access_log),
        &settings.proxy,
        "task-1",
        DiscoverySource::Registry {
            url: "http://127.0.0.1:7070".into(),
        },
    )
    .unwrap()
    .config
}

#[test]
fn access_log_configuration_sets_format_and_query() {
    let c = options("");
    assert_eq!((c.access_log, c.access_log_query), (AccessLog::Off, false));
    let c = options(r#""accessLogConfiguration": { "format": "JSON" },"#);
    assert_eq!((c.access_log, c.access_log_query), (AccessLog::Json, false));
    let c = options(
        r#""accessLogConfiguration": { "format": "TEXT", "includeQueryParameters": "ENABLED" },"#,
    );
    assert_eq!((c.access_log, c.access_log_query), (AccessLog::Text, true));
}
