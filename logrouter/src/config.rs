//! Fluent Bit classic configuration → typed, validated settings; every unsupported plugin or option is named with its line.
//!
//! Keys are case-insensitive as in Fluent Bit. Problems are collected, not stopped at, so a user
//! sees every one at once (`file:line: message`).

mod classic;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use thiserror::Error;

use crate::route::Matcher;
use classic::Section;

/// Fluent Bit's default `Flush` interval.
pub const DEFAULT_FLUSH: Duration = Duration::from_secs(1);
/// Fluent Bit's default `Grace` period on shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Fluent Bit's `scheduler.base` and `scheduler.cap` defaults.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(2000);
/// Fluent Bit's default `Retry_Limit`.
pub const DEFAULT_RETRY_LIMIT: u32 = 1;
/// Fluent Bit's forward input default `Buffer_Max_Size`.
pub const DEFAULT_FORWARD_BUFFER_MAX: usize = 6_144_000;
/// Fluent Bit's forward and HTTP server port defaults.
pub const DEFAULT_FORWARD_PORT: u16 = 24224;
pub const DEFAULT_HTTP_PORT: u16 = 2020;
/// Disk used by the scratch buffer (no `storage.path`) unless `Mem_Buf_Limit`s say otherwise.
pub const DEFAULT_SCRATCH_LIMIT: u64 = 128 * 1024 * 1024;
/// Default forward `net.max_connections`: each connection may hold a small window outside the
/// frame budget, so their number is capped to keep memory bounded.
pub const DEFAULT_FORWARD_MAX_CONNECTIONS: usize = 512;
/// Default `frames.mem_limit`: just above the default `Buffer_Max_Size` (6,144,000 bytes), so any
/// accepted frame fits; the largest share of the router's 30 MiB target.
pub const DEFAULT_FRAMES_MEM_LIMIT: usize = 6 * 1024 * 1024;
/// Smallest `frames.mem_limit` accepted.
pub const MIN_FRAMES_MEM_LIMIT: u64 = 64 * 1024;
/// Default output batch bounds (`Batch_Records`, `Batch_Size`; Skiff extensions).
pub const DEFAULT_BATCH_RECORDS: usize = 10_000;
pub const DEFAULT_BATCH_BYTES: usize = 1024 * 1024;
/// Largest line kept by the line input (longer lines are split).
pub const DEFAULT_MAX_LINE_BYTES: usize = 256 * 1024;

/// A configuration problem with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Errors loading a configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// The whole log router configuration.
#[derive(Debug, Clone)]
pub struct LogRouterConfig {
    pub service: ServiceConfig,
    pub inputs: Vec<InputConfig>,
    pub filters: Vec<FilterConfig>,
    pub outputs: Vec<OutputConfig>,
    /// Add ECS metadata to every record (FireLens `enable-ecs-log-metadata`, default on).
    pub enrich_ecs_metadata: bool,
}

/// `[SERVICE]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub flush: Duration,
    pub grace: Duration,
    pub log_level: String,
    /// Serve `/metrics` and `/health` (on by default, unlike Fluent Bit, loopback only).
    pub http_server: bool,
    pub http_listen: IpAddr,
    pub http_port: u16,
    /// `storage.path`: durable buffer directory; without it records are buffered in a scratch directory.
    pub storage_path: Option<PathBuf>,
    /// `storage.sync full`: fsync every append, not only those a client waits an ack for.
    pub storage_sync_full: bool,
    /// `storage.total_limit_size` (extension in `[SERVICE]`; also read from outputs): disk limit, 0 = none.
    pub storage_total_limit: u64,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// `frames.mem_limit` (Skiff extension): bytes of Forward frames all connections together may
    /// hold in memory while reading and buffering them; a larger frame is refused as oversized.
    pub frames_mem_limit: usize,
    pub parsers: Vec<ParserConfig>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            flush: DEFAULT_FLUSH,
            grace: DEFAULT_GRACE,
            log_level: "info".into(),
            http_server: true,
            http_listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: DEFAULT_HTTP_PORT,
            storage_path: None,
            storage_sync_full: false,
            storage_total_limit: 0,
            retry_base: DEFAULT_RETRY_BASE,
            retry_cap: DEFAULT_RETRY_CAP,
            frames_mem_limit: DEFAULT_FRAMES_MEM_LIMIT,
            parsers: Vec::new(),
        }
    }
}

/// `[INPUT]`.
#[derive(Debug, Clone)]
pub struct InputConfig {
    /// Alias or `plugin.N`: the metric label.
    pub name: String,
    pub tag: Option<String>,
    /// `storage.type filesystem`: acks wait for fsync.
    pub durable: bool,
    /// `Mem_Buf_Limit`: bounds the scratch buffer when no `storage.path` is set.
    pub mem_buf_limit: Option<u64>,
    pub kind: InputKind,
}

#[derive(Debug, Clone)]
pub enum InputKind {
    Forward(ForwardInput),
    Tcp(TcpInput),
    Stdin,
}

#[derive(Debug, Clone)]
pub struct ForwardInput {
    pub listen: IpAddr,
    /// `None` when only a unix socket is configured.
    pub port: Option<u16>,
    pub unix_path: Option<PathBuf>,
    pub unix_perm: Option<u32>,
    pub shared_key: Option<String>,
    pub self_hostname: String,
    pub buffer_max_size: usize,
    pub tag_prefix: Option<String>,
    /// `net.max_connections`: clients served at once; the kernel backlog holds the rest.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct TcpInput {
    pub listen: IpAddr,
    pub port: u16,
    /// `Format json` (default) or `none` (each line goes to `log`).
    pub json: bool,
    pub buffer_size: usize,
}

/// `[FILTER]`.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub name: String,
    pub matcher: Matcher,
    pub kind: FilterKind,
}

#[derive(Debug, Clone)]
pub enum FilterKind {
    Grep {
        rules: Vec<GrepRule>,
        and: bool,
    },
    Modify(Vec<ModifyOp>),
    RecordModifier {
        records: Vec<(String, String)>,
        remove: Vec<String>,
        allowlist: Vec<String>,
    },
    Parser {
        key_name: String,
        parsers: Vec<ParserConfig>,
        reserve_data: bool,
        preserve_key: bool,
    },
}

#[derive(Debug, Clone)]
pub struct GrepRule {
    pub key: String,
    pub regex: Regex,
    pub exclude: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModifyOp {
    Set(String, String),
    Add(String, String),
    Remove(String),
    RemoveWildcard(String),
    Rename(String, String),
    HardRename(String, String),
    Copy(String, String),
    HardCopy(String, String),
}

/// `[PARSER]` (format json or regex).
#[derive(Debug, Clone)]
pub struct ParserConfig {
    pub name: String,
    pub regex: Option<Regex>,
}

/// `[OUTPUT]`.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// Alias or `plugin.N`: the metric label and cursor name.
    pub name: String,
    pub matcher: Matcher,
    /// `None`: retry forever (`no_limits` / `False`).
    pub retry_limit: Option<u32>,
    pub batch: BatchConfig,
    pub kind: OutputKind,
}

/// When an output sends: whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub flush: Duration,
}

#[derive(Debug, Clone)]
pub enum OutputKind {
    Stdout {
        json_lines: bool,
    },
    File {
        path: Option<PathBuf>,
        file: Option<String>,
        plain: bool,
        rotate_bytes: u64,
        rotate_keep: u32,
    },
    Http(HttpOutput),
    Forward {
        host: String,
        port: u16,
        tag: Option<String>,
        shared_key: Option<String>,
        self_hostname: String,
        require_ack: bool,
    },
    Loki {
        host: String,
        port: u16,
        uri: String,
        labels: Vec<(String, String)>,
        tenant_id: Option<String>,
    },
    Null,
}

#[derive(Debug, Clone)]
pub struct HttpOutput {
    pub host: String,
    pub port: u16,
    pub uri: String,
    pub format: HttpFormat,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub date_key: Option<String>,
    pub date_format: DateFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFormat {
    JsonArray,
    JsonLines,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateFormat {
    Double,
    Epoch,
    Iso8601,
}

// === impl LogRouterConfig ===

impl LogRouterConfig {
    /// Reads and validates a Fluent Bit classic configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (sections, problems) = classic::read(path)?;
        build(sections, problems)
    }

    /// Parses configuration text (`file` names it in errors; includes resolve beside it).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let (sections, problems) = classic::read_str(text, file);
        build(sections, problems)
    }
}

impl Default for LogRouterConfig {
    /// A forward input on 127.0.0.1:24224 to stdout.
    fn default() -> Self {
        Self {
            service: ServiceConfig::default(),
            inputs: vec![InputConfig {
                name: "forward.0".into(),
                tag: None,
                durable: false,
                mem_buf_limit: None,
                kind: InputKind::Forward(ForwardInput {
                    listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: Some(DEFAULT_FORWARD_PORT),
                    unix_path: None,
                    unix_perm: None,
                    shared_key: None,
                    self_hostname: "localhost".into(),
                    buffer_max_size: DEFAULT_FORWARD_BUFFER_MAX,
                    tag_prefix: None,
                    max_connections: DEFAULT_FORWARD_MAX_CONNECTIONS,
                }),
            }],
            filters: Vec::new(),
            outputs: vec![OutputConfig {
                name: "stdout.0".into(),
                matcher: Matcher::Glob("*".into()),
                retry_limit: Some(DEFAULT_RETRY_LIMIT),
                batch: BatchConfig {
                    max_records: DEFAULT_BATCH_RECORDS,
                    max_bytes: DEFAULT_BATCH_BYTES,
                    flush: DEFAULT_FLUSH,
                },
                kind: OutputKind::Stdout { json_lines: false },
            }],
            enrich_ecs_metadata: true,
        }
    }
}

/// Typed access to one section's entries; records which keys were used and every problem.
struct Opts<'a> {
    section: &'a Section,
    used: Vec<bool>,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Opts<'a> {
    fn new(section: &'a Section, problems: &'a mut Vec<Problem>) -> Self {
        Self {
            section,
            used: vec![false; section.entries.len()],
            problems,
        }
    }

    fn problem(&mut self, line: usize, message: String) {
        self.problems.push(Problem {
            file: self.section.file.clone(),
            line,
            message,
        });
    }

    /// Last value of `key` (case-insensitive), with its line.
    fn get(&mut self, key: &str) -> Option<(String, usize)> {
        let mut found = None;
        for (i, e) in self.section.entries.iter().enumerate() {
            if e.key.eq_ignore_ascii_case(key) {
                self.used[i] = true;
                found = Some((e.value.clone(), e.line));
            }
        }
        found
    }

    /// Every value of a repeatable key, in order.
    fn all(&mut self, key: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (i, e) in self.section.entries.iter().enumerate() {
            if e.key.eq_ignore_ascii_case(key) {
                self.used[i] = true;
                out.push((e.value.clone(), e.line));
            }
        }
        out
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.get(key).map(|(v, _)| v)
    }

    fn parse<T>(&mut self, key: &str, what: &str, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let (v, line) = self.get(key)?;
        match f(&v) {
            Some(t) => Some(t),
            None => {
                self.problem(line, format!("{key}: {v:?} is not {what}"));
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        self.parse(key, "a boolean (on/off)", parse_bool)
    }

    fn port(&mut self, key: &str) -> Option<u16> {
        self.parse(key, "a port number", |s| s.parse().ok())
    }

    fn ip(&mut self, key: &str) -> Option<IpAddr> {
        self.parse(key, "an IP address", |s| {
            if s.eq_ignore_ascii_case("localhost") {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                s.parse().ok()
            }
        })
    }

    fn size(&mut self, key: &str) -> Option<u64> {
        self.parse(key, "a size (e.g. 512K, 10M)", parse_size)
    }

    fn seconds(&mut self, key: &str) -> Option<Duration> {
        self.parse(key, "a number of seconds", |s| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(Duration::from_secs_f64)
        })
    }

    /// Marks accepted-but-inert keys as used.
    fn accept(&mut self, keys: &[&str]) {
        for k in keys {
            let _ = self.all(k);
        }
    }

    /// Reports every entry no reader asked for.
    fn finish(self, what: &str) {
        for (i, e) in self.section.entries.iter().enumerate() {
            if !self.used[i] {
                self.problems.push(Problem {
                    file: self.section.file.clone(),
                    line: e.line,
                    message: format!("{what}: unsupported option {:?}", e.key),
                });
            }
        }
    }
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Fluent Bit sizes: plain bytes or with K/KB/M/MB/G/GB suffixes (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let upper = s.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(upper.len());
    let (num, unit) = upper.split_at(digits_end);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

const COMMON_INPUT: &[&str] = &[
    "Threaded",
    "storage.pause_on_chunks_overlimit",
    "Log_Level",
    "Buffer_Chunk_Size",
    "Routable",
];
const COMMON_OUTPUT: &[&str] = &[
    "Workers",
    "Log_Level",
    "storage.total_limit_size",
    "net.keepalive",
    "net.connect_timeout",
];

fn build(
    sections: Vec<Section>,
    mut problems: Vec<Problem>,
) -> Result<LogRouterConfig, ConfigError> {
    let mut cfg = LogRouterConfig {
        service: ServiceConfig::default(),
        inputs: Vec::new(),
        filters: Vec::new(),
        outputs: Vec::new(),
        enrich_ecs_metadata: true,
    };
    let hostname = hostname();
    // parsers first: filters refer to them by name
    for s in sections.iter().filter(|s| s.name == "PARSER") {
        let mut o = Opts::new(s, &mut problems);
        let name = o.string("Name").unwrap_or_default();
        let format = o.string("Format").unwrap_or_default().to_ascii_lowercase();
        o.accept(&[
            "Time_Key",
            "Time_Format",
            "Time_Keep",
            "Types",
            "Decode_Field_As",
        ]);
        let regex = match format.as_str() {
            "json" => None,
            "regex" => match o.get("Regex") {
                Some((r, line)) => match Regex::new(&r) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        o.problem(line, format!("Regex: {e}"));
                        None
                    }
                },
                None => {
                    o.problem(s.line, "[PARSER] regex needs Regex".into());
                    None
                }
            },
            other => {
                o.problem(
                    s.line,
                    format!("[PARSER] {name}: unsupported format {other:?} (json, regex)"),
                );
                None
            }
        };
        o.finish("[PARSER]");
        cfg.service.parsers.push(ParserConfig { name, regex });
    }
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut instance = |plugin: &str| {
        let n = counts.entry(plugin.to_owned()).or_default();
        let name = format!("{plugin}.{n}");
        *n += 1;
        name
    };
    for s in &sections {
        match s.name.as_str() {
            "PARSER" => {}
            "SERVICE" => service(s, &mut cfg, &mut problems),
            "INPUT" => {
                let mut o = Opts::new(s, &mut problems);
                let plugin = o.string("Name").unwrap_or_default().to_ascii_lowercase();
                let name = o.string("Alias").unwrap_or_else(|| instance(&plugin));
                let tag = o.string("Tag");
                let durable = o
                    .get("storage.type")
                    .is_some_and(|(v, _)| v.eq_ignore_ascii_case("filesystem"));
                let mem_buf_limit = o.size("Mem_Buf_Limit");
                o.accept(COMMON_INPUT);
                let kind = match plugin.as_str() {
                    "forward" => {
                        let unix_path = o.string("Unix_Path").map(PathBuf::from);
                        let port = o.port("Port");
                        let port = match (port, &unix_path) {
                            (Some(p), _) => Some(p),
                            (None, Some(_)) => None,
                            (None, None) => Some(DEFAULT_FORWARD_PORT),
                        };
                        Some(InputKind::Forward(ForwardInput {
                            listen: o.ip("Listen").unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                            port,
                            unix_perm: o.parse("Unix_Perm", "an octal mode", |v| {
                                u32::from_str_radix(v, 8).ok()
                            }),
                            unix_path,
                            shared_key: o.string("Shared_Key"),
                            self_hostname: o
                                .string("Self_Hostname")
                                .unwrap_or_else(|| hostname.clone()),
                            buffer_max_size: o
                                .size("Buffer_Max_Size")
                                .map_or(DEFAULT_FORWARD_BUFFER_MAX, |v| v as usize),
                            tag_prefix: o.string("Tag_Prefix"),
                            max_connections: o
                                .parse("net.max_connections", "a positive integer", |v| {
                                    v.parse::<usize>().ok().filter(|n| *n > 0)
                                })
                                .unwrap_or(DEFAULT_FORWARD_MAX_CONNECTIONS),
                        }))
                    }
                    "tcp" => {
                        let format = o
                            .string("Format")
                            .unwrap_or_else(|| "json".into())
                            .to_ascii_lowercase();
                        if format != "json" && format != "none" {
                            o.problem(
                                s.line,
                                format!("[INPUT] tcp: unsupported Format {format:?} (json, none)"),
                            );
                        }
                        o.accept(&["Separator", "Chunk_Size"]);
                        Some(InputKind::Tcp(TcpInput {
                            listen: o.ip("Listen").unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                            port: o.port("Port").unwrap_or(5170),
                            json: format == "json",
                            buffer_size: o
                                .size("Buffer_Size")
                                .map_or(DEFAULT_MAX_LINE_BYTES, |v| v as usize),
                        }))
                    }
                    "stdin" => {
                        o.accept(&["Parser", "Buffer_Size"]);
                        Some(InputKind::Stdin)
                    }
                    other => {
                        o.problem(
                            s.line,
                            format!("[INPUT]: unsupported plugin {other:?} (forward, tcp, stdin)"),
                        );
                        None
                    }
                };
                let what = format!("[INPUT] {plugin}");
                o.finish(&what);
                if let Some(kind) = kind {
                    cfg.inputs.push(InputConfig {
                        name,
                        tag,
                        durable,
                        mem_buf_limit,
                        kind,
                    });
                }
            }
            "FILTER" => {
                let mut o = Opts::new(s, &mut problems);
                let plugin = o.string("Name").unwrap_or_default().to_ascii_lowercase();
                let name = o.string("Alias").unwrap_or_else(|| instance(&plugin));
                let matcher = matcher(&mut o, s.line);
                let kind = filter(&plugin, &mut o, s.line, &cfg.service.parsers);
                let what = format!("[FILTER] {plugin}");
                o.finish(&what);
                if let (Some(kind), Some(matcher)) = (kind, matcher) {
                    cfg.filters.push(FilterConfig {
                        name,
                        matcher,
                        kind,
                    });
                }
            }
            "OUTPUT" => {
                let mut o = Opts::new(s, &mut problems);
                let plugin = o.string("Name").unwrap_or_default().to_ascii_lowercase();
                let name = o.string("Alias").unwrap_or_else(|| instance(&plugin));
                let matcher = matcher(&mut o, s.line);
                let retry_limit = match o.get("Retry_Limit") {
                    None => Some(DEFAULT_RETRY_LIMIT),
                    Some((v, line)) => match v.to_ascii_lowercase().as_str() {
                        "no_limits" | "false" | "off" | "no_retries_limit" => None,
                        "no_retries" => Some(0),
                        n => n.parse().ok().or_else(|| {
                            o.problem(
                                line,
                                format!("Retry_Limit: {v:?} is not a number or no_limits"),
                            );
                            None
                        }),
                    },
                };
                let mut batch = BatchConfig {
                    max_records: o
                        .parse("Batch_Records", "a count", |v| v.parse().ok())
                        .unwrap_or(DEFAULT_BATCH_RECORDS),
                    max_bytes: o
                        .size("Batch_Size")
                        .map_or(DEFAULT_BATCH_BYTES, |v| v as usize),
                    flush: cfg.service.flush,
                };
                if let Some(f) = o.seconds("Flush") {
                    batch.flush = f;
                }
                if let Some((v, line)) = o.get("storage.total_limit_size") {
                    match parse_size(&v) {
                        Some(n) => {
                            cfg.service.storage_total_limit = cfg.service.storage_total_limit.max(n)
                        }
                        None => o.problem(
                            line,
                            format!("storage.total_limit_size: {v:?} is not a size"),
                        ),
                    }
                }
                o.accept(COMMON_OUTPUT);
                let kind = output(&plugin, &mut o, s.line, &hostname);
                let what = format!("[OUTPUT] {plugin}");
                o.finish(&what);
                if let (Some(kind), Some(matcher)) = (kind, matcher) {
                    cfg.outputs.push(OutputConfig {
                        name,
                        matcher,
                        retry_limit,
                        batch,
                        kind,
                    });
                }
            }
            other => problems.push(Problem {
                file: s.file.clone(),
                line: s.line,
                message: format!(
                    "unsupported section [{other}] (SERVICE, INPUT, FILTER, OUTPUT, PARSER)"
                ),
            }),
        }
    }
    // outputs follow the service Flush unless they set their own
    let flush = cfg.service.flush;
    for (o, s) in cfg
        .outputs
        .iter_mut()
        .zip(sections.iter().filter(|s| s.name == "OUTPUT"))
    {
        if !s
            .entries
            .iter()
            .any(|e| e.key.eq_ignore_ascii_case("Flush"))
        {
            o.batch.flush = flush;
        }
    }
    let mut names = std::collections::HashSet::new();
    let output_sections = sections.iter().filter(|s| s.name == "OUTPUT");
    for (o, s) in cfg.outputs.iter().zip(output_sections) {
        if !names.insert(o.name.clone()) {
            problems.push(Problem {
                file: s.file.clone(),
                line: s.line,
                message: format!(
                    "two outputs are named {:?}; give each a distinct Alias",
                    o.name
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn service(s: &Section, cfg: &mut LogRouterConfig, problems: &mut Vec<Problem>) {
    let mut o = Opts::new(s, problems);
    let sv = &mut cfg.service;
    if let Some(f) = o.seconds("Flush") {
        sv.flush = f;
    }
    if let Some(g) = o.seconds("Grace") {
        sv.grace = g;
    }
    if let Some(l) = o.string("Log_Level") {
        sv.log_level = l;
    }
    if let Some(b) = o.bool("HTTP_Server") {
        sv.http_server = b;
    }
    if let Some(ip) = o.ip("HTTP_Listen") {
        sv.http_listen = ip;
    }
    if let Some(p) = o.port("HTTP_Port") {
        sv.http_port = p;
    }
    sv.storage_path = o.string("storage.path").map(PathBuf::from);
    if let Some((v, line)) = o.get("storage.sync") {
        match v.to_ascii_lowercase().as_str() {
            "normal" => sv.storage_sync_full = false,
            "full" => sv.storage_sync_full = true,
            _ => o.problem(line, format!("storage.sync: {v:?} is not normal or full")),
        }
    }
    if let Some(n) = o.size("storage.total_limit_size") {
        sv.storage_total_limit = n;
    }
    if let Some(b) = o.seconds("scheduler.base") {
        sv.retry_base = b;
    }
    if let Some(c) = o.seconds("scheduler.cap") {
        sv.retry_cap = c;
    }
    if let Some((v, line)) = o.get("frames.mem_limit") {
        match parse_size(&v) {
            Some(n) if n >= MIN_FRAMES_MEM_LIMIT => {
                sv.frames_mem_limit = usize::try_from(n).unwrap_or(usize::MAX);
            }
            _ => o.problem(
                line,
                format!("frames.mem_limit: {v:?} is not a size of at least 64K"),
            ),
        }
    }
    o.accept(&[
        "Daemon",
        "Log_File",
        "Parsers_File",
        "Plugins_File",
        "storage.max_chunks_up",
        "storage.backlog.mem_limit",
        "storage.checksum",
        "storage.metrics",
        "Health_Check",
        "HC_Errors_Count",
        "HC_Retry_Failure_Count",
        "HC_Period",
        "Coro_Stack_Size",
    ]);
    o.finish("[SERVICE]");
}

fn matcher(o: &mut Opts<'_>, line: usize) -> Option<Matcher> {
    if let Some((r, l)) = o.get("Match_Regex") {
        return match Regex::new(&r) {
            Ok(r) => Some(Matcher::Regex(r)),
            Err(e) => {
                o.problem(l, format!("Match_Regex: {e}"));
                None
            }
        };
    }
    match o.string("Match") {
        Some(m) => Some(Matcher::Glob(m)),
        None => {
            o.problem(line, "missing Match or Match_Regex".into());
            None
        }
    }
}

fn pair(v: &str) -> Option<(String, String)> {
    let v = v.trim();
    let at = v.find(char::is_whitespace)?;
    Some((v[..at].to_owned(), v[at..].trim().to_owned()))
}

fn filter(
    plugin: &str,
    o: &mut Opts<'_>,
    line: usize,
    parsers: &[ParserConfig],
) -> Option<FilterKind> {
    match plugin {
        "grep" => {
            let mut rules = Vec::new();
            for (key, exclude) in [("Regex", false), ("Exclude", true)] {
                for (v, l) in o.all(key) {
                    match pair(&v).map(|(k, r)| (k, Regex::new(&r))) {
                        Some((key, Ok(regex))) => rules.push(GrepRule {
                            key,
                            regex,
                            exclude,
                        }),
                        Some((_, Err(e))) => o.problem(l, format!("{key}: {e}")),
                        None => o.problem(l, format!("{key}: expected KEY REGEX")),
                    }
                }
            }
            // legacy (no Logical_Op) and AND: every rule must hold; OR: any Regex rule
            let and = !o
                .string("Logical_Op")
                .is_some_and(|v| v.eq_ignore_ascii_case("or"));
            Some(FilterKind::Grep { rules, and })
        }
        "modify" => {
            let mut ops = Vec::new();
            for (e_i, e) in o.section.entries.clone().iter().enumerate() {
                let k = e.key.to_ascii_lowercase();
                let two = |f: fn(String, String) -> ModifyOp| pair(&e.value).map(|(a, b)| f(a, b));
                let op = match k.as_str() {
                    "set" => two(ModifyOp::Set),
                    "add" => two(ModifyOp::Add),
                    "rename" => two(ModifyOp::Rename),
                    "hard_rename" => two(ModifyOp::HardRename),
                    "copy" => two(ModifyOp::Copy),
                    "hard_copy" => two(ModifyOp::HardCopy),
                    "remove" => Some(ModifyOp::Remove(e.value.clone())),
                    "remove_wildcard" => Some(ModifyOp::RemoveWildcard(e.value.clone())),
                    _ => continue,
                };
                o.used[e_i] = true;
                match op {
                    Some(op) => ops.push(op),
                    None => o.problem(e.line, format!("{}: expected KEY VALUE", e.key)),
                }
            }
            Some(FilterKind::Modify(ops))
        }
        "record_modifier" => {
            let mut records = Vec::new();
            for (v, l) in o.all("Record") {
                match pair(&v) {
                    Some(p) => records.push(p),
                    None => o.problem(l, "Record: expected KEY VALUE".into()),
                }
            }
            let mut remove: Vec<String> = o.all("Remove_key").into_iter().map(|(v, _)| v).collect();
            let mut allowlist: Vec<String> =
                o.all("Allowlist_key").into_iter().map(|(v, _)| v).collect();
            allowlist.extend(o.all("Whitelist_key").into_iter().map(|(v, _)| v));
            remove.dedup();
            Some(FilterKind::RecordModifier {
                records,
                remove,
                allowlist,
            })
        }
        "parser" => {
            let Some(key_name) = o.string("Key_Name") else {
                o.problem(line, "[FILTER] parser needs Key_Name".into());
                return None;
            };
            let mut chosen = Vec::new();
            for (p, l) in o.all("Parser") {
                match parsers.iter().find(|x| x.name == p) {
                    Some(x) => chosen.push(x.clone()),
                    None if p.eq_ignore_ascii_case("json") || p.eq_ignore_ascii_case("docker") => {
                        chosen.push(ParserConfig {
                            name: p,
                            regex: None,
                        })
                    }
                    None => o.problem(l, format!("Parser: no [PARSER] named {p:?}")),
                }
            }
            Some(FilterKind::Parser {
                key_name,
                parsers: chosen,
                reserve_data: o.bool("Reserve_Data").unwrap_or(false),
                preserve_key: o.bool("Preserve_Key").unwrap_or(false),
            })
        }
        other => {
            o.problem(
                line,
                format!(
                    "[FILTER]: unsupported plugin {other:?} (grep, modify, record_modifier, parser)"
                ),
            );
            None
        }
    }
}

fn output(plugin: &str, o: &mut Opts<'_>, line: usize, hostname: &str) -> Option<OutputKind> {
    match plugin {
        "stdout" => {
            let format = o
                .string("Format")
                .unwrap_or_else(|| "msgpack".into())
                .to_ascii_lowercase();
            o.accept(&["json_date_key", "json_date_format"]);
            match format.as_str() {
                "msgpack" => Some(OutputKind::Stdout { json_lines: false }),
                "json_lines" | "json" | "json_stream" => {
                    Some(OutputKind::Stdout { json_lines: true })
                }
                other => {
                    o.problem(
                        line,
                        format!("[OUTPUT] stdout: unsupported Format {other:?}"),
                    );
                    None
                }
            }
        }
        "file" => {
            let format = o
                .string("Format")
                .unwrap_or_else(|| "out_file".into())
                .to_ascii_lowercase();
            let plain = match format.as_str() {
                "out_file" => false,
                "plain" => true,
                other => {
                    o.problem(
                        line,
                        format!("[OUTPUT] file: unsupported Format {other:?} (out_file, plain)"),
                    );
                    false
                }
            };
            o.accept(&["Mkdir"]);
            Some(OutputKind::File {
                path: o.string("Path").map(PathBuf::from),
                file: o.string("File"),
                plain,
                rotate_bytes: o.size("Rotate_Size").unwrap_or(0),
                rotate_keep: o
                    .parse("Rotate_Keep", "a count", |v| v.parse().ok())
                    .unwrap_or(5),
            })
        }
        "http" => {
            let format = o
                .string("Format")
                .unwrap_or_else(|| "json".into())
                .to_ascii_lowercase();
            let format = match format.as_str() {
                "json" => HttpFormat::JsonArray,
                "json_lines" | "json_stream" => HttpFormat::JsonLines,
                other => {
                    o.problem(
                        line,
                        format!("[OUTPUT] http: unsupported Format {other:?} (json, json_lines)"),
                    );
                    HttpFormat::JsonArray
                }
            };
            let mut headers = Vec::new();
            for (v, l) in o.all("Header") {
                match pair(&v) {
                    Some(p) => headers.push(p),
                    None => o.problem(l, "Header: expected NAME VALUE".into()),
                }
            }
            let gzip = match o.string("Compress") {
                None => false,
                Some(c) if c.eq_ignore_ascii_case("gzip") => true,
                Some(c) => {
                    o.problem(
                        line,
                        format!("[OUTPUT] http: unsupported Compress {c:?} (gzip)"),
                    );
                    false
                }
            };
            let date_format = match o.string("json_date_format").map(|s| s.to_ascii_lowercase()) {
                None => DateFormat::Double,
                Some(s) if s == "double" => DateFormat::Double,
                Some(s) if s == "epoch" => DateFormat::Epoch,
                Some(s) if s == "iso8601" => DateFormat::Iso8601,
                Some(s) => {
                    o.problem(line, format!("json_date_format: unsupported {s:?}"));
                    DateFormat::Double
                }
            };
            let date_key = match o.string("json_date_key") {
                None => Some("date".to_owned()),
                Some(k) if parse_bool(&k) == Some(false) => None,
                Some(k) => Some(k),
            };
            Some(OutputKind::Http(HttpOutput {
                host: o.string("Host").unwrap_or_else(|| "127.0.0.1".into()),
                port: o.port("Port").unwrap_or(80),
                uri: o.string("URI").unwrap_or_else(|| "/".into()),
                format,
                headers,
                gzip,
                date_key,
                date_format,
            }))
        }
        "forward" => Some(OutputKind::Forward {
            host: o.string("Host").unwrap_or_else(|| "127.0.0.1".into()),
            port: o.port("Port").unwrap_or(DEFAULT_FORWARD_PORT),
            tag: o.string("Tag"),
            shared_key: o.string("Shared_Key"),
            self_hostname: o
                .string("Self_Hostname")
                .unwrap_or_else(|| hostname.to_owned()),
            require_ack: o.bool("Require_ack_response").unwrap_or(true),
        }),
        "loki" => {
            let mut labels = Vec::new();
            for (v, l) in o.all("Labels") {
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match part.split_once('=') {
                        Some((k, val)) => labels.push((k.trim().to_owned(), val.trim().to_owned())),
                        None => o.problem(l, format!("Labels: {part:?} is not key=value")),
                    }
                }
            }
            if labels.is_empty() {
                labels.push(("job".into(), "fluent-bit".into()));
            }
            o.accept(&["line_format", "auto_kubernetes_labels", "drop_single_key"]);
            Some(OutputKind::Loki {
                host: o.string("Host").unwrap_or_else(|| "127.0.0.1".into()),
                port: o.port("Port").unwrap_or(3100),
                uri: o
                    .string("Uri")
                    .unwrap_or_else(|| "/loki/api/v1/push".into()),
                labels,
                tenant_id: o.string("Tenant_ID"),
            })
        }
        "null" => Some(OutputKind::Null),
        other => {
            o.problem(
                line,
                format!("[OUTPUT]: unsupported plugin {other:?} (stdout, file, http, forward, loki, null)"),
            );
            None
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests;
