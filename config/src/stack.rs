//! A stack: the task definitions and services given together, checked against
//! each other as ECS checks a service against its task definition and namespace.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::check::{Checker, nearest, seen_before};
use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::position::PositionIndex;
use crate::service::{self, Service};
use crate::task::{self, NetworkMode, TaskDefinition, TransportProtocol};

/// Task definitions by family, and the services that run them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stack {
    pub task_definitions: BTreeMap<String, TaskDefinition>,
    /// In the order the files were given.
    pub services: Vec<Service>,
    /// The file each task definition came from, by family.
    pub task_definition_files: BTreeMap<String, PathBuf>,
    /// The file each service came from, in the order of `services`.
    pub service_files: Vec<PathBuf>,
}

/// One parsed file: a task definition or a service.
#[derive(Clone, Debug, PartialEq)]
pub enum Definition {
    TaskDefinition(TaskDefinition),
    Service(Service),
}

impl Stack {
    /// The task definition a service runs, if it was given.
    pub fn task_definition(&self, service: &Service) -> Option<&TaskDefinition> {
        self.task_definitions.get(&service.task_definition.family)
    }
}

/// Reads, parses and checks `paths` together. Cross-file rules run once every
/// file is valid on its own; a service's `taskDefinition` must name one of the
/// given task definitions whenever any task definition is given.
pub fn load_files(paths: &[PathBuf]) -> Result<Stack, Diagnostics> {
    let docs = read_documents(paths)?;
    let require = docs
        .iter()
        .any(|d| matches!(d.definition, Definition::TaskDefinition(_)));
    assemble(docs, require)
}

/// Loads every `*.json` file of `dir` (not recursing) as one stack, which must
/// hold at least one service; every service's task definition must be there.
pub fn load_dir(dir: &Path) -> Result<Stack, Diagnostics> {
    let name = dir.display().to_string();
    let fail = |message: String| Diagnostics::new(vec![whole_file(&name, message)]);
    let entries = fs::read_dir(dir).map_err(|e| fail(format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(fail(
            "no *.json files: a stack directory holds ECS task definitions and services".into(),
        ));
    }
    let docs = read_documents(&paths)?;
    if !docs
        .iter()
        .any(|d| matches!(d.definition, Definition::Service(_)))
    {
        return Err(fail(
            "no service definitions (a file with `serviceName`): nothing to run".into(),
        ));
    }
    assemble(docs, true)
}

/// Reads and parses every file, reporting the problems of all of them.
fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, Diagnostics> {
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        match fs::read_to_string(path) {
            Ok(text) => match parse_document(&file, &text) {
                Ok(doc) => docs.push(doc),
                Err(mut p) => problems.append(&mut p),
            },
            Err(e) => problems.push(whole_file(&file, format!("cannot read file: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(Diagnostics::new(problems))
    }
}

/// Parses one file's text: a task definition or a service, told apart by content.
pub fn parse_str(file: &str, text: &str) -> Result<Definition, Diagnostics> {
    parse_document(file, text)
        .map(|d| d.definition)
        .map_err(Diagnostics::new)
}

fn whole_file(file: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        position: None,
        path: String::new(),
        message: message.into(),
    }
}

/// A parsed file with what is needed to point at its fields later.
struct Document {
    file: String,
    index: PositionIndex,
    definition: Definition,
}

fn parse_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    let root: Value = serde_json::from_str(text).map_err(|e| vec![syntax_error(file, &e)])?;
    let index = PositionIndex::build(text);
    let mut cx = Checker::new(file, &index);
    cx.report_duplicate_keys();
    let definition = match kind(&root) {
        Ok(Kind::TaskDefinition) => task::parse(&mut cx, &root).map(Definition::TaskDefinition),
        Ok(Kind::Service) => service::parse(&mut cx, &root).map(Definition::Service),
        Err(message) => {
            cx.report("", message);
            None
        }
    };
    match definition {
        Some(definition) if !cx.has_problems() => Ok(Document {
            file: file.to_owned(),
            index,
            definition,
        }),
        _ => Err(cx.into_problems()),
    }
}

/// serde_json's message without its " at line L column C" suffix, which goes in front instead.
fn syntax_error(file: &str, e: &serde_json::Error) -> Diagnostic {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    let message = format!("invalid JSON: {message}");
    Diagnostic {
        file: file.to_owned(),
        position: Some(Position {
            line: u32::try_from(e.line()).unwrap_or(u32::MAX),
            // serde_json says column 0 at the very start of a line.
            column: u32::try_from(e.column().max(1)).unwrap_or(u32::MAX),
        }),
        path: String::new(),
        message,
    }
}

enum Kind {
    TaskDefinition,
    Service,
}

fn kind(root: &Value) -> Result<Kind, String> {
    let Value::Object(map) = root else {
        return Err("expected a JSON object: an ECS task definition or service".to_owned());
    };
    let has = |k: &str| map.contains_key(k);
    if has("serviceName") && has("containerDefinitions") {
        return Err("both `serviceName` (a service) and `containerDefinitions` (a task definition): put each in its own file".to_owned());
    }
    if has("serviceName") {
        return Ok(Kind::Service);
    }
    if has("containerDefinitions") || has("family") {
        return Ok(Kind::TaskDefinition);
    }
    if map.get("taskDefinition").is_some_and(Value::is_object) {
        return Err("this looks like `aws ecs describe-task-definition` output: use the object under `taskDefinition`".to_owned());
    }
    if has("taskDefinition") || has("serviceConnectConfiguration") || has("desiredCount") {
        return Ok(Kind::Service);
    }
    Err("neither a task definition (no `family` or `containerDefinitions`) nor a service (no `serviceName`)".to_owned())
}

/// Cross-file rules; problems point at the service file's fields.
fn assemble(docs: Vec<Document>, require_task_definitions: bool) -> Result<Stack, Diagnostics> {
    let mut problems = Vec::new();
    let mut task_definitions: BTreeMap<String, TaskDefinition> = BTreeMap::new();
    let mut family_files: HashMap<String, String> = HashMap::new();
    let mut task_definition_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut services = Vec::new();
    for doc in docs {
        match doc.definition {
            Definition::TaskDefinition(td) => {
                if let Some(first) = family_files.get(&td.family) {
                    let mut cx = Checker::new(&doc.file, &doc.index);
                    cx.report(
                        "family",
                        format!("family {:?} is already defined in {first}", td.family),
                    );
                    problems.append(&mut cx.into_problems());
                    continue;
                }
                family_files.insert(td.family.clone(), doc.file.clone());
                task_definition_files.insert(td.family.clone(), PathBuf::from(&doc.file));
                task_definitions.insert(td.family.clone(), td);
            }
            Definition::Service(s) => services.push((doc.file, doc.index, s)),
        }
    }

    // (cluster, serviceName) -> file; namespace -> discovery name / alias -> (file, serviceName)
    let mut names: HashMap<(&str, &str), &str> = HashMap::new();
    let mut discovery: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    let mut aliases: HashMap<(&str, String, u16), (&str, &str)> = HashMap::new();
    for (file, index, s) in &services {
        let mut cx = Checker::new(file, index);
        if let Some(first) = seen_before(&mut names, (&s.cluster, &s.service_name), file.as_str()) {
            cx.report(
                "serviceName",
                format!(
                    "service {:?} is already defined in cluster {:?} by {first}",
                    s.service_name, s.cluster
                ),
            );
        }
        let td = task_definitions.get(&s.task_definition.family);
        if td.is_none() && require_task_definitions {
            let mut message = format!(
                "no task definition with family {:?} among the given files",
                s.task_definition.family
            );
            match nearest(
                &s.task_definition.family,
                task_definitions.keys().map(String::as_str),
            ) {
                Some(near) => message.push_str(&format!("; did you mean {near:?}?")),
                None if !task_definitions.is_empty() => {
                    let known: Vec<&str> = task_definitions.keys().map(String::as_str).collect();
                    message.push_str(&format!(" (families: {})", known.join(", ")));
                }
                None => {}
            }
            cx.report("taskDefinition", message);
        }
        if let Some(sc) = &s.service_connect {
            if let Some(td) = td
                && matches!(td.network_mode, NetworkMode::Host | NetworkMode::None)
            {
                cx.report(
                        "serviceConnectConfiguration.enabled",
                        format!(
                            "Service Connect needs networkMode \"awsvpc\" or \"bridge\"; task definition {:?} uses {:?}",
                            td.family,
                            td.network_mode.as_str()
                        ),
                    );
            }
            for (i, entry) in sc.services.iter().enumerate() {
                let here = format!("serviceConnectConfiguration.services[{i}]");
                if let Some(td) = td {
                    match td.port_mapping(entry.port_name.as_str()) {
                        None => {
                            let known: Vec<&str> = td
                                .container_definitions
                                .iter()
                                .flat_map(|c| &c.port_mappings)
                                .filter_map(|p| p.name.as_ref().map(|n| n.as_str()))
                                .collect();
                            let mut message = format!(
                                "no port mapping named {:?} in task definition {:?}",
                                entry.port_name.as_str(),
                                td.family
                            );
                            match nearest(entry.port_name.as_str(), known.iter().copied()) {
                                Some(near) => {
                                    message.push_str(&format!("; did you mean {near:?}?"))
                                }
                                None if known.is_empty() => {
                                    message.push_str(" (it names no port mappings)")
                                }
                                None => message
                                    .push_str(&format!(" (port names: {})", known.join(", "))),
                            }
                            cx.report(&format!("{here}.portName"), message);
                        }
                        Some((_, pm)) => {
                            if pm.protocol == TransportProtocol::Udp {
                                cx.report(
                                    &format!("{here}.portName"),
                                    format!("port mapping {:?} is udp; Service Connect carries tcp only", entry.port_name.as_str()),
                                );
                            }
                            if pm.app_protocol.is_none()
                                && entry.timeout.per_request_timeout.is_some()
                            {
                                cx.report(
                                    &format!("{here}.timeout.perRequestTimeoutSeconds"),
                                    format!(
                                        "port mapping {:?} has no appProtocol (TCP): only idleTimeoutSeconds applies",
                                        entry.port_name.as_str()
                                    ),
                                );
                            }
                        }
                    }
                }
                let written = |field: &str| index.get(&format!("{here}.{field}")).is_some();
                let key = (sc.namespace.as_str(), entry.discovery_name.as_str());
                match discovery.get(&key) {
                    Some(&(first_file, first_service)) if first_file != file.as_str() => {
                        let field = if written("discoveryName") {
                            "discoveryName"
                        } else {
                            "portName"
                        };
                        cx.report(
                            &format!("{here}.{field}"),
                            format!(
                                "discovery name {:?} is already used in namespace {:?} by service {first_service:?} ({first_file})",
                                key.1, key.0
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        discovery.insert(key, (file, &s.service_name));
                    }
                }
                for (j, alias) in entry.client_aliases.iter().enumerate() {
                    let key = (
                        sc.namespace.as_str(),
                        alias.dns_name.to_string(),
                        alias.port.get(),
                    );
                    match aliases.get(&key) {
                        Some(&(first_file, first_service)) if first_file != file.as_str() => cx.report(
                            &format!("{here}.clientAliases[{j}]"),
                            format!(
                                "client alias {}:{} is already used in namespace {:?} by service {first_service:?} ({first_file})",
                                alias.dns_name, alias.port, sc.namespace
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            aliases.insert(key, (file, &s.service_name));
                        }
                    }
                }
            }
        }
        problems.append(&mut cx.into_problems());
    }

    if !problems.is_empty() {
        return Err(Diagnostics::new(problems));
    }
    let (service_files, services) = services
        .into_iter()
        .map(|(file, _, s)| (PathBuf::from(file), s))
        .unzip();
    Ok(Stack {
        task_definitions,
        services,
        task_definition_files,
        service_files,
    })
}
