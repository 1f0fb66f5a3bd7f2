//! `skiff validate`: exit 0 on the quickstart, exit 2 with `file:line:col: path: message` otherwise.

use std::path::PathBuf;

use crate::harness::{repo, skiff, stderr, stdout};

fn fixture(name: &str) -> PathBuf {
    repo().join("config/tests/fixtures/invalid").join(name)
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    skiff()
        .arg("validate")
        .args(files)
        .output()
        .expect("run skiff validate")
}

/// Exit 2, nothing on stdout, and stderr holds `want` (a whole diagnostic line's tail).
fn assert_refused(files: &[PathBuf], want: &[&str]) {
    let out = validate(files);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "validate printed to stdout on failure");
    let err = stderr(&out);
    for w in want {
        assert!(
            err.lines().any(|l| l.ends_with(w)),
            "missing {w:?} in:\n{err}"
        );
    }
}

#[test]
fn quickstart_is_valid() {
    let files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/quickstart"))
        .expect("examples/quickstart")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 6);
    let out = validate(&files);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn trailing_comma_reports_line_and_column() {
    assert_refused(
        &[fixture("trailing_comma.json")],
        &["trailing_comma.json:7:5: invalid JSON: trailing comma"],
    );
}

#[test]
fn unknown_field_names_the_nearest_valid_one() {
    assert_refused(
        &[fixture("unknown_field_suggestion.json")],
        &[
            ":7:7: containerDefinitions[0].portMapping: unknown field `portMapping`, did you mean `portMappings`?",
        ],
    );
}

#[test]
fn port_name_must_match_a_port_mapping() {
    let dir = fixture("port_name_not_found");
    assert_refused(
        &[
            dir.join("orders.task.json"),
            dir.join("orders.service.json"),
        ],
        &[
            "orders.service.json:10:9: serviceConnectConfiguration.services[0].portName: no port mapping named \"htttp\" in task definition \"orders\"; did you mean \"http\"?",
            "orders.service.json:18:9: serviceConnectConfiguration.services[1].portName: no port mapping named \"grpc\" in task definition \"orders\" (port names: http, admin)",
        ],
    );
}

#[test]
fn per_request_timeout_is_refused_on_tcp_ports() {
    let dir = fixture("per_request_timeout_tcp");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_refused(
        &files,
        &[
            "db.service.json:18:11: serviceConnectConfiguration.services[0].timeout.perRequestTimeoutSeconds: port mapping \"pg\" has no appProtocol (TCP): only idleTimeoutSeconds applies",
        ],
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = validate(&[PathBuf::from("/nonexistent/task.json")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/task.json"),
        "{}",
        stderr(&out)
    );
}
