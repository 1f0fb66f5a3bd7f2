//! The router configuration both contenders get: Fluent Bit's classic format, Forward in, a null or file output.
//!
//! The same text is read by `skiff logrouter -c` and by `fluent-bit -c`, so
//! both run the same plugins with the same options. The monitoring server
//! listens on a port of the benchmark's choosing rather than 2020, which
//! something else on the machine may hold.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Discarded (`Name null`).
    Null,
    /// Appended to `dir/file` (`Name file`, Fluent Bit's `out_file` format).
    File { dir: PathBuf, file: String },
}

/// One router's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub forward_port: u16,
    pub http_port: u16,
    /// `storage.path` in `[SERVICE]` and `storage.type filesystem` on the input when set.
    pub storage_path: Option<PathBuf>,
    pub output: Output,
}

/// The classic configuration text of `config`.
pub fn classic_config(config: &RouterConfig) -> String {
    let mut out = String::new();
    out.push_str("[SERVICE]\n    Flush        1\n    Log_Level    warn\n");
    out.push_str("    HTTP_Server  On\n    HTTP_Listen  127.0.0.1\n");
    let _ = writeln!(out, "    HTTP_Port    {}", config.http_port);
    if let Some(path) = &config.storage_path {
        let _ = writeln!(out, "    storage.path {}", path.display());
    }
    out.push_str("\n[INPUT]\n    Name         forward\n    Listen       127.0.0.1\n");
    let _ = writeln!(out, "    Port         {}", config.forward_port);
    if config.storage_path.is_some() {
        out.push_str("    storage.type filesystem\n");
    }
    out.push_str("\n[OUTPUT]\n");
    match &config.output {
        Output::Null => out.push_str("    Name         null\n    Match        *\n"),
        Output::File { dir, file } => {
            out.push_str("    Name         file\n    Match        *\n");
            let _ = writeln!(out, "    Path         {}", dir.display());
            let _ = writeln!(out, "    File         {file}");
        }
    }
    out
}

/// `skiff logrouter -c FILE --ready-file PATH`.
pub fn skiff_argv(skiff: &Path, config: &Path, ready_file: &Path) -> Vec<String> {
    vec![
        skiff.display().to_string(),
        "logrouter".to_string(),
        "-c".to_string(),
        config.display().to_string(),
        "--ready-file".to_string(),
        ready_file.display().to_string(),
    ]
}

/// `fluent-bit -c FILE`.
pub fn fluent_bit_argv(fluent_bit: &Path, config: &Path) -> Vec<String> {
    vec![
        fluent_bit.display().to_string(),
        "-c".to_string(),
        config.display().to_string(),
    ]
}
