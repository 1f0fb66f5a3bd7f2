//! End-to-end tests: the real `skiff` binary, started as a user would start it.

mod cli;
mod harness;
mod quickstart;
mod runner;
mod validate;
