//! Integration tests of skiff-loadtest: the demo app, the generator against it, the bench's pieces.

// Test helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod demo;
mod harness;
mod load;
