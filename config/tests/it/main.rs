//! Integration tests of skiff-config: fixtures, the quickstart example, the typed results.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] functions too

mod fixtures;
mod quickstart;
mod robustness;
mod typed;
