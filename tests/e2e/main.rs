//! End-to-end tests: the real `skiff` binary, started as a user would start it.

// These tests drive real processes in real time (std::time::Instant is the right clock here)
// and fail loudly on any broken expectation.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::disallowed_types)]

mod bench;
mod cli;
mod firelens;
mod harness;
mod quickstart;
mod runner;
mod telemetry;
mod validate;
