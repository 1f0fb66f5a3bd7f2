//! Integration tests of the registry with real clients: the AWS CLI, `dig`, our own client,
//! and a crash test that SIGKILLs a registry process.

// Helpers here are test code too: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws_cli;
mod crash;
mod dns;
mod harness;
mod health;
mod http_api;
mod restart;
mod watch;
