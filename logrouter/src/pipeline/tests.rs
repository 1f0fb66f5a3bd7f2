//! Unit tests for enrichment and filters.

use rmpv::Value;

use super::*;
use crate::config::LogRouterConfig;

fn entry(fields: &[(&str, &str)]) -> Vec<u8> {
    let rec = Value::Map(
        fields
            .iter()
            .map(|(k, v)| (Value::from(*k), Value::from(*v)))
            .collect(),
    );
    let v = Value::Array(vec![Value::from(1_700_000_000u64), rec]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &v).unwrap();
    out
}

fn records(entries: &[u8]) -> Vec<serde_json::Value> {
    let mut r = Reader::new(entries);
    let mut out = Vec::new();
    while !r.is_empty() {
        r.array_len().unwrap();
        r.skip().unwrap();
        let mut j = Vec::new();
        msgpack::write_json(&mut r, &mut j).unwrap();
        out.push(serde_json::from_slice(&j).unwrap());
    }
    out
}

fn metrics() -> Metrics {
    Metrics::register(&prometheus::Registry::new()).unwrap()
}

#[test]
fn enrichment_adds_only_missing_fields() {
    let meta = EcsMetadata {
        cluster: Some("prod".into()),
        task_arn: Some("arn:aws:ecs:task/1".into()),
        ..Default::default()
    };
    let p = Pipeline::new(Vec::new(), Some(&meta), metrics());
    let mut e = entry(&[("log", "a")]);
    e.extend(entry(&[("log", "b"), ("ecs_cluster", "mine")]));
    let out = p
        .process("t", e, 2, &[("source".into(), "stdout".into())])
        .unwrap();
    let recs = records(&out.entries);
    assert_eq!(
        recs[0],
        serde_json::json!({"log":"a","ecs_cluster":"prod","ecs_task_arn":"arn:aws:ecs:task/1","source":"stdout"})
    );
    assert_eq!(recs[1]["ecs_cluster"], "mine");
    assert_eq!(out.count, 2);
}

#[test]
fn grep_modify_record_modifier_and_parser() {
    let cfg = LogRouterConfig::parse(
        r#"
[PARSER]
    Name kv
    Format regex
    Regex ^(?<level>\w+) (?<msg>.*)$
[FILTER]
    Name grep
    Match app.*
    Exclude log ^health
[FILTER]
    Name modify
    Match *
    Rename log message
    Add env prod
    Remove secret
[FILTER]
    Name record_modifier
    Match *
    Record host box
[FILTER]
    Name parser
    Match *
    Key_Name message
    Parser kv
    Reserve_Data On
"#,
        std::path::Path::new("t.conf"),
    )
    .unwrap();
    let p = Pipeline::new(cfg.filters, None, metrics());
    let mut e = entry(&[("log", "healthcheck ok")]);
    e.extend(entry(&[("log", "INFO started"), ("secret", "x")]));
    let out = p.process("app.web", e, 2, &[]).unwrap();
    assert_eq!(out.count, 1);
    assert_eq!(
        records(&out.entries),
        vec![serde_json::json!({"env":"prod","host":"box","level":"INFO","msg":"started"})]
    );
    // grep matches app.* only: other tags keep their health checks
    let e = entry(&[("log", "healthcheck")]);
    let out = p.process("other", e, 1, &[]).unwrap();
    assert_eq!(out.count, 1);
    assert_eq!(records(&out.entries)[0]["message"], "healthcheck");
}
