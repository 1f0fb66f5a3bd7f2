//! The command line itself: help, version, exit codes.

use crate::harness::{run, stderr, stdout};

#[test]
fn help_lists_every_subcommand() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for cmd in [
        "up",
        "registry",
        "proxy",
        "logrouter",
        "loadtest",
        "validate",
        "version",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`skiff --help` does not list `{cmd}`:\n{help}"
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for cmd in [
        "up",
        "registry",
        "proxy",
        "logrouter",
        "loadtest",
        "validate",
        "version",
    ] {
        let out = run(&[cmd, "--help"]);
        assert!(
            out.status.success(),
            "skiff {cmd} --help failed: {}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("Usage: skiff"), "skiff {cmd} --help");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = run(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("skiff {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["validate"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate without files is a usage error"
    );
}
