//! Integration tests of the log router: real Forward clients, real outputs, crashes and bad input.

// helpers outside #[test] functions panic on purpose too
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backpressure;
mod bad_input;
mod chain;
mod crash;
mod harness;
mod lines;
mod memory;
mod modes;
