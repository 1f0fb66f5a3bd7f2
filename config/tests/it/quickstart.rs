//! `examples/quickstart` is a valid stack with the shape the README describes.

use std::path::Path;
use std::time::Duration;

use skiff_config::load_dir;
use skiff_config::task::{AppProtocol, HealthCheckCommand, NetworkMode};

#[test]
fn quickstart_is_frontend_calling_orders_in_prod_internal() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let stack = load_dir(&dir).unwrap_or_else(|d| panic!("quickstart rejected:\n{d}"));

    assert_eq!(
        stack.task_definitions.keys().collect::<Vec<_>>(),
        ["frontend", "orders", "payments"]
    );
    let mut services: Vec<_> = stack
        .services
        .iter()
        .map(|s| (s.service_name.as_str(), s.desired_count))
        .collect();
    services.sort();
    assert_eq!(services, [("frontend", 2), ("orders", 3), ("payments", 2)]);

    // payments is the gRPC service: its port says so, and its per-request timeout applies.
    let payments = stack
        .services
        .iter()
        .find(|s| s.service_name == "payments")
        .expect("payments");
    let entry = &payments
        .service_connect
        .as_ref()
        .expect("service connect")
        .services[0];
    assert_eq!(entry.port_name.as_str(), "grpc");
    let (_, port) = stack
        .task_definition(payments)
        .and_then(|td| td.port_mapping("grpc"))
        .expect("grpc port mapping");
    assert_eq!(port.app_protocol, Some(AppProtocol::Grpc));
    assert_eq!(
        entry.per_request_timeout(Duration::from_secs(15)),
        Some(Duration::from_secs(5))
    );

    for service in stack
        .services
        .iter()
        .filter(|s| s.service_name != "payments")
    {
        assert_eq!(service.cluster, "quickstart");
        let sc = service
            .service_connect
            .as_ref()
            .expect("service connect enabled");
        assert_eq!(sc.namespace, "prod.internal");
        let [entry] = sc.services.as_slice() else {
            panic!("one service connect entry")
        };
        assert_eq!(entry.port_name.as_str(), "http");
        assert_eq!(entry.discovery_name.as_str(), service.service_name);
        let [alias] = entry.client_aliases.as_slice() else {
            panic!("one alias")
        };
        assert_eq!(
            (alias.dns_name.as_str(), alias.port.get()),
            (service.service_name.as_str(), 8080)
        );

        let td = stack
            .task_definition(service)
            .expect("task definition given");
        assert_eq!(td.network_mode, NetworkMode::Awsvpc);
        let (container, port) = td.port_mapping("http").expect("http port");
        assert_eq!(container.name, "app");
        assert!(container.essential);
        assert_eq!(container.entry_point, ["skiff"]);
        assert_eq!(port.container_port.get(), 8080);
        assert_eq!(port.app_protocol, Some(AppProtocol::Http));
        assert_eq!(
            entry.idle_timeout(port.app_protocol),
            Some(Duration::from_secs(300))
        );
        let hc = container.health_check.as_ref().expect("health check");
        // The app binds the task's address (SKIFF_APP_HOST in host mode, loopback in awsvpc).
        assert_eq!(
            hc.command,
            HealthCheckCommand::Shell(
                "skiff demo probe http://${SKIFF_APP_HOST:-127.0.0.1}:8080/health".into()
            )
        );
    }

    let frontend = &stack.task_definitions["frontend"].container_definitions[0];
    assert!(
        frontend
            .command
            .windows(2)
            .any(|w| w == ["--call", "http://orders:8080/"])
    );
    assert_eq!(frontend.port_mappings[0].host_port, Some(8080));
}
