//! skiff-config: ECS task definitions and services, and Skiff's own settings: parse, validate, defaults.
//!
//! ECS JSON is read as `aws ecs register-task-definition` and `aws ecs
//! create-service` take it, camelCase and all, and checked with ECS's rules.
//! Every problem in every file is reported at once, each as
//! `file:line:column: json.path: message`, so `skiff validate` can be fixed
//! against in one pass. What comes out is typed: durations are `Duration`,
//! names that must be valid are newtypes, defaults are applied.
//!
//! * [`task`] and [`service`]: the definitions, one file each.
//! * [`stack`]: files checked together (a service against its task
//!   definition and its namespace).
//! * [`settings`]: Skiff's TOML settings (registry, proxy, log router, telemetry).
//! * [`diagnostic`] and [`position`]: problems and where they are.

mod check;
pub mod diagnostic;
pub mod names;
pub mod position;
pub mod service;
pub mod settings;
pub mod stack;
pub mod task;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics, Position};
pub use names::{DiscoveryName, DnsName, PortName};
pub use service::Service;
pub use settings::{Settings, SettingsError};
pub use stack::{Definition, Stack, load_dir, load_files, parse_str};
pub use task::TaskDefinition;
