//! Integration tests of the sidecar: real sockets on loopback, fake apps, real clients.

// Helpers outside #[test] functions panic on broken fixtures, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aliases;
mod curl;
mod dns;
mod ecs;
mod fake_registry;
mod grpc;
mod h2load;
mod harness;
mod http1;
mod inbound;
mod limits;
mod outbound;
mod process;
mod protocols;
mod registry;
mod trace;
