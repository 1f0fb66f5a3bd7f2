//! What the loaders hand to the runner and the proxy: typed values with defaults applied.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_config::service::{AccessLogFormat, SchedulingStrategy};
use skiff_config::task::{
    AppProtocol, Compatibility, DependencyCondition, FirelensType, HealthCheckCommand, LogDriver,
    NetworkMode, TransportProtocol,
};
use skiff_config::{Definition, load_dir, load_files, parse_str};

fn valid(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/valid")
        .join(name)
}

#[test]
fn firelens_task_definition_reads_every_field_it_uses() {
    let stack = load_files(&[valid("firelens_web.task.json")]).unwrap();
    let td = &stack.task_definitions["web"];
    assert_eq!(td.network_mode, NetworkMode::Awsvpc);
    assert_eq!(td.requires_compatibilities, [Compatibility::Fargate]);
    assert_eq!((td.cpu_units, td.memory_mib), (Some(1024), Some(2048)));
    assert_eq!(
        td.task_role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/web-task")
    );
    assert!(td.other.contains_key("runtimePlatform") && td.other.contains_key("volumes"));

    let router = td.log_router().expect("log router");
    assert_eq!(router.name, "log_router");
    assert_eq!(
        router.firelens_configuration.as_ref().map(|f| f.kind),
        Some(FirelensType::Fluentbit)
    );
    assert_eq!(
        router.stop_timeout,
        Duration::from_secs(30),
        "stopTimeout defaults to 30 s"
    );

    let migrate = td.container("migrate").unwrap();
    assert!(!migrate.essential);
    assert_eq!(migrate.stop_timeout, Duration::from_secs(10));

    let app = td.container("app").unwrap();
    assert!(app.essential, "essential defaults to true");
    assert_eq!(
        app.log_configuration.as_ref().map(|l| l.log_driver),
        Some(LogDriver::Awsfirelens)
    );
    assert_eq!(
        app.depends_on
            .iter()
            .map(|d| (d.container_name.as_str(), d.condition))
            .collect::<Vec<_>>(),
        [
            ("log_router", DependencyCondition::Start),
            ("migrate", DependencyCondition::Success)
        ]
    );
    let hc = app.health_check.as_ref().unwrap();
    assert_eq!(
        hc.command,
        HealthCheckCommand::Shell("curl -fsS http://127.0.0.1:8080/health || exit 1".into())
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries.get(), hc.start_period),
        (
            Duration::from_secs(10),
            Duration::from_secs(3),
            5,
            Duration::from_secs(30)
        )
    );
    assert_eq!(app.stop_timeout, Duration::from_secs(60));
    assert_eq!(app.start_timeout, Some(Duration::from_secs(90)));
    assert_eq!(app.environment[1].name, "PORT");
    assert_eq!(app.secrets[0].name, "DATABASE_URL");
    assert_eq!(app.working_directory.as_deref(), Some("/srv"));
    assert_eq!(app.docker_labels["com.example.team"], "storefront");
    assert!(app.other.contains_key("mountPoints") && app.other.contains_key("ulimits"));
    let metrics = &app.port_mappings[1];
    assert_eq!(
        (metrics.protocol, metrics.app_protocol, metrics.host_port),
        (TransportProtocol::Tcp, None, None)
    );
}

#[test]
fn health_check_defaults_are_ecs_defaults() {
    let stack = load_files(&[valid("sidecar_health.task.json")]).unwrap();
    let td = &stack.task_definitions["cache-api"];
    assert_eq!(td.network_mode, NetworkMode::Bridge);
    let hc = td
        .container("redis")
        .unwrap()
        .health_check
        .as_ref()
        .unwrap();
    assert_eq!(hc.interval, Duration::from_secs(30));
    assert_eq!(hc.timeout, Duration::from_secs(5));
    assert_eq!(hc.retries, NonZeroU32::new(3).unwrap());
    assert_eq!(hc.start_period, Duration::ZERO);
    let api = td.container("api").unwrap();
    assert_eq!(
        api.health_check.as_ref().unwrap().command,
        HealthCheckCommand::Disabled
    );
    assert_eq!(api.port_mappings[0].app_protocol, Some(AppProtocol::Grpc));
}

#[test]
fn bridge_is_the_default_network_mode() {
    let stack = load_files(&[valid("minimal_bridge.task.json")]).unwrap();
    assert_eq!(
        stack.task_definitions["worker"].network_mode,
        NetworkMode::Bridge
    );
    assert!(stack.services.is_empty());
}

#[test]
fn service_connect_defaults_follow_ecs() {
    let stack = load_dir(&valid("shop")).unwrap();
    let catalog = stack
        .services
        .iter()
        .find(|s| s.service_name == "catalog")
        .unwrap();
    let td = stack.task_definition(catalog).unwrap();
    let sc = catalog.service_connect.as_ref().unwrap();
    assert_eq!(sc.namespace, "shop.local");
    assert_eq!(
        sc.access_log_configuration
            .map(|a| (a.format, a.include_query_parameters)),
        Some((AccessLogFormat::Json, true))
    );
    assert_eq!(
        sc.log_configuration.as_ref().map(|l| l.log_driver),
        Some(LogDriver::Awslogs)
    );

    let [http, grpc, admin, db] = sc.services.as_slice() else {
        panic!("four entries")
    };
    // discoveryName defaults to portName; dnsName to discoveryName.
    assert_eq!(http.discovery_name.as_str(), "http");
    assert_eq!(grpc.client_aliases[0].dns_name.as_str(), "catalog-grpc");
    assert_eq!(grpc.ingress_port_override.map(|p| p.get()), Some(19090));
    assert!(admin.tls.is_some());

    let proto = |name: &str| td.port_mapping(name).unwrap().1.app_protocol;
    let default_per_request = Duration::from_secs(15);
    assert_eq!(
        http.idle_timeout(proto("http")),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        http.per_request_timeout(default_per_request),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        grpc.idle_timeout(proto("grpc")),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        grpc.per_request_timeout(default_per_request),
        Some(default_per_request)
    );
    assert_eq!(
        db.idle_timeout(proto("postgres-wire")),
        None,
        "0 disables the idle timeout"
    );
    assert_eq!(
        admin.idle_timeout(None),
        Some(Duration::from_secs(3600)),
        "TCP idles for an hour"
    );

    assert_eq!(
        catalog.deployment_configuration.minimum_healthy_percent,
        100
    );
    let storefront = stack
        .services
        .iter()
        .find(|s| s.service_name == "storefront")
        .unwrap();
    assert_eq!(
        storefront.task_definition.revision.map(|r| r.get()),
        Some(3)
    );
    assert_eq!(
        stack.task_definition(storefront).unwrap().family,
        "storefront"
    );
    let reporter = stack
        .services
        .iter()
        .find(|s| s.service_name == "reporter")
        .unwrap();
    assert!(
        reporter
            .service_connect
            .as_ref()
            .unwrap()
            .services
            .is_empty(),
        "client-only"
    );
}

#[test]
fn a_service_alone_is_checked_without_its_task_definition() {
    let stack = load_files(&[valid("client_only.service.json")]).unwrap();
    let s = &stack.services[0];
    assert_eq!(
        (
            s.task_definition.family.as_str(),
            s.task_definition.revision.map(|r| r.get())
        ),
        ("report", Some(7))
    );
    assert!(stack.task_definition(s).is_none());
    assert_eq!(s.scheduling_strategy, SchedulingStrategy::Replica);
    assert_eq!(s.deployment_configuration.maximum_percent, 200);
}

#[test]
fn documented_aws_fields_are_kept_and_disabled_service_connect_is_none() {
    let stack = load_files(&[valid("aws_fields.service.json")]).unwrap();
    let s = &stack.services[0];
    assert!(s.service_connect.is_none());
    assert_eq!(s.cluster, "prod", "the name of a cluster given by ARN");
    assert_eq!(s.desired_count, 0);
    assert_eq!(s.health_check_grace_period, Some(Duration::from_secs(60)));
    assert_eq!(
        (
            s.deployment_configuration.minimum_healthy_percent,
            s.deployment_configuration.maximum_percent
        ),
        (50, 150)
    );
    for key in [
        "launchType",
        "loadBalancers",
        "tags",
        "enableExecuteCommand",
        "networkConfiguration",
    ] {
        assert!(
            s.other.contains_key(key) || key == "networkConfiguration",
            "{key} kept"
        );
    }
}

#[test]
fn parse_str_tells_task_definitions_from_services_by_content() {
    let td = parse_str(
        "t.json",
        r#"{"family":"a","containerDefinitions":[{"name":"a","image":"i"}]}"#,
    )
    .unwrap();
    assert!(matches!(td, Definition::TaskDefinition(_)));
    let s = parse_str(
        "s.json",
        r#"{"serviceName":"a","taskDefinition":"a","desiredCount":1}"#,
    )
    .unwrap();
    assert!(matches!(s, Definition::Service(_)));
    let neither = parse_str("x.json", r#"{"name":"a"}"#).unwrap_err();
    assert_eq!(
        neither.to_string(),
        "x.json:1:1: neither a task definition (no `family` or `containerDefinitions`) nor a service (no `serviceName`)"
    );
}

#[test]
fn diagnostics_are_sorted_by_file_then_position_and_counted() {
    let text = "{\n  \"family\": \"a b\",\n  \"containerDefinitions\": [{\"name\": \"x\"}],\n  \"cpu\": 1\n}";
    let d = parse_str("t.json", text).unwrap_err();
    assert_eq!(d.len(), 3);
    assert_eq!(
        d.to_string(),
        "t.json:2:3: family: \"a b\" contains ' '; only letters, digits, '_' and '-' are allowed\n\
         t.json:3:28: containerDefinitions[0].image: missing required field\n\
         t.json:4:3: cpu: expected a string such as \"256\" or \"0.25 vCPU\", found number 1"
    );
}

#[test]
fn a_directory_without_services_is_an_error() {
    let dir = valid("shop");
    let tmp = std::env::temp_dir().join(format!("skiff-config-noservice-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("catalog.task.json"), tmp.join("catalog.task.json")).unwrap();
    let d = load_dir(&tmp).unwrap_err();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(d.len(), 1);
    assert!(
        d.to_string()
            .ends_with(": no service definitions (a file with `serviceName`): nothing to run"),
        "{d}"
    );
}

#[test]
fn an_unreadable_file_is_reported_without_a_position() {
    let d = load_files(&[PathBuf::from("/nonexistent/skiff/task.json")]).unwrap_err();
    let line = d.to_string();
    assert!(
        line.starts_with("/nonexistent/skiff/task.json: cannot read file: "),
        "{line}"
    );
}
