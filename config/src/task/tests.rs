//! Task-wide rules that fixtures show less directly: cycles, null fields, lookups.

use serde_json::json;

use super::*;
use crate::check::Checker;
use crate::position::PositionIndex;

fn problems(v: serde_json::Value) -> Vec<String> {
    let text = serde_json::to_string_pretty(&v).unwrap();
    let index = PositionIndex::build(&text);
    let mut cx = Checker::new("t.json", &index);
    let parsed = parse(&mut cx, &v);
    let problems: Vec<String> = cx
        .into_problems()
        .into_iter()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    assert_eq!(
        parsed.is_some() && problems.is_empty(),
        problems.is_empty(),
        "a valid document parses"
    );
    problems
}

fn c(name: &str, deps: &[&str]) -> serde_json::Value {
    let deps: Vec<_> = deps
        .iter()
        .map(|d| json!({"containerName": d, "condition": "START"}))
        .collect();
    json!({"name": name, "image": "i", "dependsOn": deps})
}

#[test]
fn two_separate_cycles_are_both_reported() {
    let p = problems(json!({"family": "f", "containerDefinitions": [
        c("a", &["b"]), c("b", &["a"]), c("x", &["y"]), c("y", &["x"]), c("z", &["a", "x"]),
    ]}));
    assert_eq!(
        p,
        [
            "containerDefinitions[1].dependsOn[0]: dependency cycle: a -> b -> a",
            "containerDefinitions[3].dependsOn[0]: dependency cycle: x -> y -> x",
        ]
    );
}

#[test]
fn a_diamond_is_not_a_cycle() {
    let p = problems(json!({"family": "f", "containerDefinitions": [
        c("top", &["left", "right"]), c("left", &["bottom"]), c("right", &["bottom"]), c("bottom", &[]),
    ]}));
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn null_fields_count_as_absent_as_with_the_aws_cli() {
    let p = problems(
        json!({"family": "f", "taskRoleArn": null, "containerDefinitions": [
            {"name": "a", "image": "i", "essential": null, "healthCheck": null}
        ]}),
    );
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn port_mappings_are_looked_up_by_name() {
    let v = json!({"family": "f", "containerDefinitions": [
        {"name": "a", "image": "i", "portMappings": [{"containerPort": 1}]},
        {"name": "b", "image": "i", "portMappings": [{"name": "web", "containerPort": 80, "appProtocol": "http2"}]},
    ]});
    let text = v.to_string();
    let index = PositionIndex::build(&text);
    let mut cx = Checker::new("t.json", &index);
    let td = parse(&mut cx, &v).unwrap();
    let (container, port) = td.port_mapping("web").unwrap();
    assert_eq!(
        (
            container.name.as_str(),
            port.container_port.get(),
            port.app_protocol
        ),
        ("b", 80, Some(AppProtocol::Http2))
    );
    assert!(td.port_mapping("nope").is_none());
    assert!(td.log_router().is_none());
}
