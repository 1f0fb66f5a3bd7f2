//! Settings: defaults, the documented example, typed values and every kind of error.

use std::collections::BTreeSet;

use super::*;

const EXAMPLE: &str = include_str!("../../settings.example.toml");

/// `# key = value` or `# [section]`: a commented-out setting, not a description.
fn setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let is_key = rest
        .split_once(" = ")
        .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
    (rest.starts_with('[') || is_key).then_some(rest)
}

/// The example with every commented-out setting switched on.
fn uncommented_example() -> String {
    EXAMPLE
        .lines()
        .map(|line| setting(line).unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn defaults_are_valid_and_equal_an_empty_file() {
    assert_eq!(
        Settings::from_toml("empty.toml", "").unwrap(),
        Settings::default()
    );
    assert_eq!(
        RawSettings::default().validate().unwrap(),
        Settings::default()
    );
}

#[test]
fn the_example_as_written_is_the_defaults() {
    assert_eq!(
        Settings::from_toml("example.toml", EXAMPLE).unwrap(),
        Settings::default()
    );
}

#[test]
fn the_example_uncommented_shows_the_defaults() {
    let settings = Settings::from_toml("example.toml", &uncommented_example()).unwrap();
    let mut expected = Settings::default();
    expected.logrouter.unix_socket = Some(PathBuf::from("/run/skiff/logrouter.sock"));
    expected.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318".to_owned());
    let orders = RetryPolicy {
        max_retries: 3,
        ..RetryPolicy::DEFAULT
    };
    expected
        .proxy
        .retry
        .services
        .insert(DiscoveryName::parse("orders").unwrap(), orders);
    assert_eq!(settings, expected);
}

/// Every key of every section, as dotted paths.
fn keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => keys(&path, t, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_example_documents_every_key() {
    let mut raw = RawSettings::default();
    raw.logrouter.unix_socket = Some(PathBuf::from("x"));
    raw.telemetry.otlp_endpoint = Some("http://x".to_owned());
    let all = toml::Table::try_from(&raw).unwrap();
    let mut expected = BTreeSet::new();
    keys("", &all, &mut expected);
    let example: toml::Table = toml::from_str(&uncommented_example()).unwrap();
    let mut documented = BTreeSet::new();
    keys("", &example, &mut documented);
    documented.retain(|k| !k.starts_with("proxy.retry.services."));
    assert_eq!(documented, expected);
    for key in &expected {
        let leaf = key.rsplit('.').next().unwrap();
        let line = EXAMPLE
            .lines()
            .position(|l| l.starts_with(&format!("# {leaf} = ")))
            .unwrap();
        let doc = EXAMPLE.lines().nth(line - 1).unwrap();
        assert!(
            doc.starts_with("# ") && setting(doc).is_none(),
            "{key} has no description above it"
        );
    }
}

#[test]
fn values_become_typed() {
    let s = Settings::from_toml(
        "s.toml",
        r#"
        [registry]
        http_addr = "127.0.0.2:7171"
        [proxy]
        dns_port = 5300
        default_per_request_timeout_ms = 0
        balancer = "round_robin"
        access_log = "json"
        vip_cidr = "127.200.0.0/24"
        [proxy.retry]
        per_try_timeout_ms = 500
        [proxy.retry.services.payments]
        max_retries = 0
        backoff_max_ms = 1000
        [telemetry]
        trace_sampling_ratio = 0.25
        "#,
    )
    .unwrap();
    assert_eq!(s.registry.http_addr, "127.0.0.2:7171".parse().unwrap());
    assert_eq!(s.proxy.dns_port, DnsPort::Fixed(5300));
    assert_eq!(DnsPort::Auto.resolve(true), 53);
    assert_eq!(DnsPort::Auto.resolve(false), 5353);
    assert_eq!(s.proxy.default_per_request_timeout, None);
    assert_eq!(
        (s.proxy.balancer, s.proxy.access_log),
        (Balancer::RoundRobin, AccessLog::Json)
    );
    assert!(s.proxy.vip_cidr.contains(Ipv4Addr::new(127, 200, 0, 9)));
    assert!(!s.proxy.vip_cidr.contains(Ipv4Addr::new(127, 200, 1, 0)));
    assert_eq!(
        s.proxy.retry.default.per_try_timeout,
        Some(Duration::from_millis(500))
    );
    let payments = s.proxy.retry.policy_for("payments");
    assert_eq!(payments.max_retries, 0);
    assert_eq!(payments.backoff_max, Duration::from_secs(1));
    assert_eq!(
        payments.per_try_timeout,
        Some(Duration::from_millis(500)),
        "overrides inherit [proxy.retry]"
    );
    assert_eq!(s.proxy.retry.policy_for("orders"), &s.proxy.retry.default);
    assert_eq!(s.telemetry.trace_sampling_ratio, 0.25);
}

#[test]
fn an_unknown_key_names_the_nearest_one_with_its_position() {
    let e = Settings::from_toml(
        "s.toml",
        "[proxy]\nadmin_port = 9901\nconect_timeout_ms = 5\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:3:1: unknown key `conect_timeout_ms`, did you mean `connect_timeout_ms`?"
    );
    let e = Settings::from_toml("s.toml", "[proxy.retri]\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:1:8: unknown key `retri`, did you mean `retry`?"
    );
    let e =
        Settings::from_toml("s.toml", "[proxy.retry.services.orders]\nretries = 3\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("s.toml:2:1: unknown key `retries`, did you mean `max_retries`?"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_syntax_have_positions() {
    let e = Settings::from_toml("s.toml", "[proxy]\nadmin_port = \"9901\"\n").unwrap_err();
    assert!(matches!(e, SettingsError::Parse { line: 2, .. }), "{e}");
    let e = Settings::from_toml("s.toml", "[proxy]\nbalancer = \"random\"\n").unwrap_err();
    assert!(matches!(e, SettingsError::Parse { line: 2, .. }), "{e}");
    let e = Settings::from_toml("s.toml", "[proxy\n").unwrap_err();
    assert!(matches!(e, SettingsError::Parse { line: 1, .. }), "{e}");
}

#[test]
fn every_invalid_value_is_reported_at_once() {
    let e = Settings::from_toml(
        "s.toml",
        r#"
        [registry]
        max_body_bytes = 0
        watch_default_wait_ms = 1000
        watch_max_wait_ms = 10
        [proxy]
        connect_timeout_ms = 0
        vip_cidr = "127.255.0.1/16"
        max_connections_per_endpoint = 0
        busy_poll_us = 5000
        [proxy.retry]
        backoff_base_ms = 100
        backoff_max_ms = 50
        budget_percent = 2000
        [proxy.retry.services.Orders]
        max_retries = 1
        [proxy.outlier_detection]
        consecutive_failures = 0
        max_ejection_percent = 101
        [logrouter]
        storage_max_bytes = 0
        [telemetry]
        otlp_endpoint = "collector:4318"
        trace_sampling_ratio = 1.5
        "#,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        [
            "s.toml: registry.max_body_bytes: must be at least 1",
            "s.toml: registry.watch_max_wait_ms: 10 is less than watch_default_wait_ms (1000)",
            "s.toml: proxy.vip_cidr: \"127.255.0.1/16\" has host bits set; the block starts at 127.255.0.0/16",
            "s.toml: proxy.max_connections_per_endpoint: must be at least 1",
            "s.toml: proxy.busy_poll_us: must be between 0 and 1000, found 5000",
            "s.toml: proxy.retry.backoff_max_ms: 50 is less than backoff_base_ms (100)",
            "s.toml: proxy.retry.budget_percent: must be between 0 and 1000, found 2000",
            "s.toml: proxy.retry.services.Orders.backoff_max_ms: 50 is less than backoff_base_ms (100)",
            "s.toml: proxy.retry.services.Orders.budget_percent: must be between 0 and 1000, found 2000",
            "s.toml: proxy.retry.services.Orders: not a discovery name: \"Orders\" must be lowercase",
            "s.toml: proxy.outlier_detection.consecutive_failures: must be at least 1",
            "s.toml: proxy.outlier_detection.max_ejection_percent: must be between 0 and 100, found 101",
            "s.toml: proxy.connect_timeout_ms: must be at least 1",
            "s.toml: logrouter.storage_max_bytes: must be at least 1",
            "s.toml: telemetry.otlp_endpoint: \"collector:4318\" must start with http:// or https://",
            "s.toml: telemetry.trace_sampling_ratio: must be between 0.0 and 1.0, found 1.5",
        ]
        .join("\n")
    );
}

#[test]
fn cidr_parsing() {
    assert_eq!(Ipv4Cidr::parse("127.255.0.0/16"), Ok(DEFAULT_VIP_CIDR));
    assert_eq!(DEFAULT_VIP_CIDR.to_string(), "127.255.0.0/16");
    assert!(Ipv4Cidr::parse("127.255.0.0").is_err());
    assert!(Ipv4Cidr::parse("127.255.0.0/31").is_err());
    assert!(Ipv4Cidr::parse("300.0.0.0/8").is_err());
    assert!(Ipv4Cidr::parse("0.0.0.0/0").is_ok());
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("skiff-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("skiff.toml");
    std::fs::write(&path, "[proxy]\nadmin_port = 9902\n").unwrap();
    assert_eq!(Settings::load(&path).unwrap().proxy.admin_port, 9902);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Settings::load(&path).unwrap_err();
    assert!(matches!(e, SettingsError::Read { .. }), "{e}");
}
