//! Lexer for Fluent Bit's classic format: sections, `key value` entries, `@INCLUDE`, `@SET` and `${VAR}` expansion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, Problem};

/// One `[SECTION]` with its entries, each with where it was written.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

const MAX_INCLUDE_DEPTH: usize = 8;

/// Reads `path` and its includes into sections.
pub fn read(path: &Path) -> Result<(Vec<Section>, Vec<Problem>), ConfigError> {
    let mut st = Lexer {
        vars: HashMap::new(),
        sections: Vec::new(),
        problems: Vec::new(),
    };
    st.file(path, 0)?;
    Ok((st.sections, st.problems))
}

/// Lexes configuration text (for tests and callers holding the text).
pub fn read_str(text: &str, file: &Path) -> (Vec<Section>, Vec<Problem>) {
    let mut st = Lexer {
        vars: HashMap::new(),
        sections: Vec::new(),
        problems: Vec::new(),
    };
    st.text(text, file, 0);
    (st.sections, st.problems)
}

struct Lexer {
    vars: HashMap<String, String>,
    sections: Vec<Section>,
    problems: Vec<Problem>,
}

impl Lexer {
    fn file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.text(&text, path, depth);
        Ok(())
    }

    fn text(&mut self, text: &str, file: &Path, depth: usize) {
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            let problem = |message: String| Problem {
                file: file.to_owned(),
                line,
                message,
            };
            if let Some(rest) = strip_directive(t, "@INCLUDE") {
                let target = self.expand(rest.trim());
                let p = Path::new(&target);
                let p = if p.is_absolute() {
                    p.to_owned()
                } else {
                    file.parent().unwrap_or(Path::new(".")).join(p)
                };
                if depth >= MAX_INCLUDE_DEPTH {
                    self.problems
                        .push(problem("@INCLUDE nested too deeply".into()));
                    continue;
                }
                let files = match expand_glob(&p) {
                    Ok(files) => files,
                    Err(e) => {
                        self.problems
                            .push(problem(format!("@INCLUDE {}: {e}", p.display())));
                        continue;
                    }
                };
                for f in files {
                    if let Err(e) = self.file(&f, depth + 1) {
                        self.problems
                            .push(problem(format!("@INCLUDE {}: {e}", f.display())));
                    }
                }
                continue;
            }
            if let Some(rest) = strip_directive(t, "@SET") {
                match rest.split_once('=') {
                    Some((k, v)) => {
                        let v = self.expand(v.trim());
                        self.vars.insert(k.trim().to_owned(), v);
                    }
                    None => self.problems.push(problem("@SET expects KEY=VALUE".into())),
                }
                continue;
            }
            if t.starts_with('@') {
                self.problems
                    .push(problem(format!("unknown directive {t:?}")));
                continue;
            }
            if let Some(name) = t.strip_prefix('[') {
                let Some(name) = name.strip_suffix(']') else {
                    self.problems
                        .push(problem(format!("unterminated section header {t:?}")));
                    continue;
                };
                self.sections.push(Section {
                    name: name.trim().to_ascii_uppercase(),
                    file: file.to_owned(),
                    line,
                    entries: Vec::new(),
                });
                continue;
            }
            let (key, value) = match t.find(char::is_whitespace) {
                Some(at) => (&t[..at], t[at..].trim()),
                None => (t, ""),
            };
            let value = self.expand(value);
            match self.sections.last_mut() {
                Some(s) => s.entries.push(Entry {
                    key: key.to_owned(),
                    value,
                    line,
                }),
                None => self
                    .problems
                    .push(problem(format!("entry {key:?} outside of any section"))),
            }
        }
    }

    /// `${NAME}` from `@SET` variables, then the environment; unknown names expand to "".
    fn expand(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    if let Some(v) = self.vars.get(name) {
                        out.push_str(v);
                    } else if let Ok(v) = std::env::var(name) {
                        out.push_str(&v);
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[at..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// `dir/*.conf` → the matching files, sorted; a path without `*` → itself.
fn expand_glob(p: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(vec![p.to_owned()]);
    };
    if !name.contains('*') {
        return Ok(vec![p.to_owned()]);
    }
    let dir = p.parent().unwrap_or(Path::new("."));
    let pattern = crate::route::Matcher::Glob(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| pattern.matches(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

fn strip_directive<'a>(line: &'a str, directive: &str) -> Option<&'a str> {
    let head = line.get(..directive.len())?;
    let rest = &line[directive.len()..];
    (head.eq_ignore_ascii_case(directive) && rest.starts_with(char::is_whitespace)).then_some(rest)
}
