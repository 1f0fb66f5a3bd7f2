//! Unit tests for the Fluent Bit classic configuration reader.

use super::*;

fn parse(text: &str) -> Result<LogRouterConfig, ConfigError> {
    LogRouterConfig::parse(text, Path::new("fluent-bit.conf"))
}

#[test]
fn firelens_style_config_parses() {
    // SAFETY-free: env var read by ${} expansion; unique name for this test
    let cfg = parse(
        r#"
@SET region=eu-west-1
[SERVICE]
    Flush        0.5
    log_level    debug
    HTTP_Server  On
    HTTP_Port    0
    storage.path /tmp/x
    storage.sync full
    storage.total_limit_size 10M

[INPUT]
    Name   forward
    unix_path /var/run/fluent.sock
    Shared_Key secret

[INPUT]
    Name forward
    Listen 127.0.0.1
    Port 24224
    storage.type filesystem

[FILTER]
    Name   grep
    Match  app-firelens*
    Regex  log ^\d+
    Exclude log healthcheck

[FILTER]
    Name   modify
    Match  *
    Add    region ${region}
    Rename log message
    Remove secret

[FILTER]
    Name record_modifier
    Match *
    Record hostname box
    Remove_key password

[OUTPUT]
    Name  http
    Match *
    Host  127.0.0.1
    Port  8080
    URI   /logs
    Format json_lines
    Header X-Key abc
    Compress gzip
    Retry_Limit no_limits

[OUTPUT]
    name  loki
    match_regex ^app
    labels job=skiff, env=prod

[OUTPUT]
    Name file
    Match *
    Path /tmp/out
    Format plain
"#,
    )
    .unwrap();
    assert_eq!(cfg.service.flush, Duration::from_millis(500));
    assert!(cfg.service.storage_sync_full);
    assert_eq!(cfg.service.storage_total_limit, 10 << 20);
    assert_eq!(cfg.inputs.len(), 2);
    let InputKind::Forward(f) = &cfg.inputs[0].kind else {
        panic!()
    };
    assert_eq!(f.port, None);
    assert_eq!(f.shared_key.as_deref(), Some("secret"));
    assert!(cfg.inputs[1].durable);
    assert_eq!(cfg.filters.len(), 3);
    let FilterKind::Modify(ops) = &cfg.filters[1].kind else {
        panic!()
    };
    assert_eq!(ops[0], ModifyOp::Add("region".into(), "eu-west-1".into()));
    assert_eq!(cfg.outputs.len(), 3);
    assert_eq!(cfg.outputs[0].retry_limit, None);
    assert_eq!(cfg.outputs[0].batch.flush, Duration::from_millis(500));
    let OutputKind::Http(h) = &cfg.outputs[0].kind else {
        panic!()
    };
    assert!(h.gzip && h.format == HttpFormat::JsonLines);
    assert_eq!(h.headers, vec![("X-Key".into(), "abc".into())]);
    let OutputKind::Loki { labels, .. } = &cfg.outputs[1].kind else {
        panic!()
    };
    assert_eq!(labels.len(), 2);
    assert_eq!(cfg.outputs[2].retry_limit, Some(DEFAULT_RETRY_LIMIT));
}

#[test]
fn every_unsupported_thing_is_reported_with_its_line() {
    let err = parse(
        "[SERVICE]\n    Flush 1\n    Bogus 2\n[INPUT]\n    Name tail\n[OUTPUT]\n    Name s3\n    Match *\n[OUTPUT]\n    Name null\n    Match *\n    Frobnicate yes\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("fluent-bit.conf:3: [SERVICE]: unsupported option \"Bogus\""),
        "{text}"
    );
    assert!(
        text.contains("fluent-bit.conf:4: [INPUT]: unsupported plugin \"tail\""),
        "{text}"
    );
    assert!(
        text.contains("fluent-bit.conf:6: [OUTPUT]: unsupported plugin \"s3\""),
        "{text}"
    );
    assert!(
        text.contains("fluent-bit.conf:12: [OUTPUT] null: unsupported option \"Frobnicate\""),
        "{text}"
    );
}

#[test]
fn include_and_env_expansion() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("outputs.conf"),
        "[OUTPUT]\n    Name null\n    Match ${SKIFF_TEST_MATCH_PATTERN_X}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.conf"), "@INCLUDE outputs.conf\n").unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    for (i, m) in ["a.*", "b.*"].iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("conf.d/{i}.conf")),
            format!("[OUTPUT]\n    Name null\n    Alias n{i}\n    Match {m}\n"),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("glob.conf"), "@INCLUDE conf.d/*.conf\n").unwrap();
    let cfg = LogRouterConfig::load(&dir.path().join("glob.conf")).unwrap();
    assert_eq!(
        cfg.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["n0", "n1"]
    );
    // PATH is always set: use it to show environment expansion without mutating the environment
    let cfg = LogRouterConfig::load(&dir.path().join("main.conf")).unwrap();
    let Matcher::Glob(m) = &cfg.outputs[0].matcher else {
        panic!()
    };
    assert_eq!(m, "");
    let cfg = parse("[OUTPUT]\n    Name null\n    Match ${PATH}\n").unwrap();
    let Matcher::Glob(m) = &cfg.outputs[0].matcher else {
        panic!()
    };
    assert_eq!(m, &std::env::var("PATH").unwrap());
}

#[test]
fn sizes_and_bools() {
    assert_eq!(parse_size("512K"), Some(512 * 1024));
    assert_eq!(parse_size("10MB"), Some(10 << 20));
    assert_eq!(parse_size("6144000"), Some(6_144_000));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_bool("On"), Some(true));
    assert_eq!(parse_bool("false"), Some(false));
}

#[test]
fn duplicate_output_names_are_refused() {
    let err = parse("[OUTPUT]\n    Name null\n    Match *\n[OUTPUT]\n    Name null\n    Alias null.0\n    Match *\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fluent-bit.conf:4: two outputs are named \"null.0\""),
        "{err}"
    );
}

#[test]
fn frames_mem_limit_defaults_parses_and_refuses_tiny_values() {
    assert_eq!(
        parse("[OUTPUT]\n    Name null\n    Match *\n")
            .unwrap()
            .service
            .frames_mem_limit,
        DEFAULT_FRAMES_MEM_LIMIT
    );
    let cfg = parse("[SERVICE]\n    frames.mem_limit 16M\n[OUTPUT]\n    Name null\n    Match *\n")
        .unwrap();
    assert_eq!(cfg.service.frames_mem_limit, 16 << 20);
    let err = parse("[SERVICE]\n    frames.mem_limit 1K\n[OUTPUT]\n    Name null\n    Match *\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fluent-bit.conf:2: frames.mem_limit: \"1K\" is not a size of at least 64K"),
        "{err}"
    );
}

#[test]
fn forward_max_connections_defaults_to_512_and_is_configurable() {
    let conf = |extra: &str| {
        format!(
            "[INPUT]\n    Name forward\n    Port 0\n{extra}[OUTPUT]\n    Name stdout\n    Match *\n"
        )
    };
    let max = |text: &str| {
        let cfg = parse(text).unwrap();
        let InputKind::Forward(f) = &cfg.inputs[0].kind else {
            panic!()
        };
        f.max_connections
    };
    assert_eq!(max(&conf("")), 512);
    assert_eq!(max(&conf("    net.max_connections 64\n")), 64);
    assert!(parse(&conf("    net.max_connections 0\n")).is_err());
}
