//! Maps every JSON path of a document to the line and column where it is written.
//!
//! `serde_json::Value` forgets positions, and a serde-derived struct stops at the
//! first error; so the document is parsed twice: once by serde_json (which also
//! reports syntax errors with their exact position) and once by this small
//! scanner, which only runs on text serde_json accepted and records, for each
//! path, the position of the member's key (or of the value for an array
//! element). Validators then look positions up by path.

use std::collections::HashMap;

use crate::diagnostic::Position;

/// Positions by JSON path (`a.b[0].c`; the root is the empty path).
#[derive(Clone, Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
    duplicates: Vec<(String, Position)>,
}

impl PositionIndex {
    /// Scans `text`, which must be JSON that serde_json accepted; on anything
    /// else the index is simply incomplete (lookups fall back to ancestors).
    pub fn build(text: &str) -> PositionIndex {
        let mut scanner = Scanner {
            chars: text.chars().peekable(),
            at: Position { line: 1, column: 1 },
            index: PositionIndex::default(),
        };
        scanner.skip_ws();
        let start = scanner.at;
        scanner.index.positions.insert(String::new(), start);
        scanner.value(String::new());
        scanner.index
    }

    /// The position recorded for exactly this path.
    pub fn get(&self, path: &str) -> Option<Position> {
        self.positions.get(path).copied()
    }

    /// The position of this path or, when it is absent (a missing field), of
    /// its nearest ancestor.
    pub fn locate(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(p) = self.get(path) {
                return p;
            }
            if path.is_empty() {
                return Position { line: 1, column: 1 };
            }
            path = parent(path);
        }
    }

    /// Object members written twice: their path and the position of the later key.
    pub fn duplicates(&self) -> &[(String, Position)] {
        &self.duplicates
    }
}

/// The path of a member `key` of the object at `parent`.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of element `i` of the array at `parent`.
pub fn element(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The path one level up (`a.b[0]` → `a.b` → `a` → ``).
pub fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

struct Scanner<'t> {
    chars: std::iter::Peekable<std::str::Chars<'t>>,
    at: Position,
    index: PositionIndex,
}

// === impl Scanner ===

impl Scanner<'_> {
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.at.line += 1;
            self.at.column = 1;
        } else {
            self.at.column += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.bump();
        }
    }

    fn value(&mut self, path: String) {
        match self.chars.peek() {
            Some('{') => self.object(&path),
            Some('[') => self.array(&path),
            Some('"') => {
                self.string();
            }
            Some(_) => {
                while self
                    .chars
                    .peek()
                    .is_some_and(|c| !matches!(c, ',' | ']' | '}') && !c.is_ascii_whitespace())
                {
                    self.bump();
                }
            }
            None => {}
        }
    }

    fn object(&mut self, path: &str) {
        self.bump(); // '{'
        loop {
            self.skip_ws();
            match self.chars.peek() {
                Some('"') => {}
                Some('}') => {
                    self.bump();
                    return;
                }
                _ => return,
            }
            let key_at = self.at;
            let key = self.string();
            let member = child(path, &key);
            if self
                .index
                .positions
                .insert(member.clone(), key_at)
                .is_some()
            {
                self.index.duplicates.push((member.clone(), key_at));
            }
            self.skip_ws();
            if self.chars.peek() != Some(&':') {
                return;
            }
            self.bump();
            self.skip_ws();
            self.value(member);
            self.skip_ws();
            match self.bump() {
                Some(',') => continue,
                _ => return,
            }
        }
    }

    fn array(&mut self, path: &str) {
        self.bump(); // '['
        let mut i = 0;
        loop {
            self.skip_ws();
            match self.chars.peek() {
                Some(']') => {
                    self.bump();
                    return;
                }
                None => return,
                Some(_) => {}
            }
            let item = element(path, i);
            self.index.positions.insert(item.clone(), self.at);
            self.value(item);
            i += 1;
            self.skip_ws();
            match self.bump() {
                Some(',') => continue,
                _ => return,
            }
        }
    }

    /// Reads a string literal and returns its decoded value.
    fn string(&mut self) -> String {
        self.bump(); // '"'
        let mut out = String::new();
        while let Some(c) = self.bump() {
            match c {
                '"' => break,
                '\\' => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('u') => {
                        let hi = self.hex4();
                        let code =
                            if (0xD800..0xDC00).contains(&hi) && self.chars.peek() == Some(&'\\') {
                                self.bump();
                                self.bump(); // 'u'
                                let lo = self.hex4();
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                        out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                    }
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        out
    }

    fn hex4(&mut self) -> u32 {
        let mut code = 0;
        for _ in 0..4 {
            let digit = self.bump().and_then(|c| c.to_digit(16)).unwrap_or(0);
            code = code * 16 + digit;
        }
        code
    }
}

#[cfg(test)]
mod tests;
