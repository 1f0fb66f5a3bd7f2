//! The validator's toolkit: walks a `serde_json::Value`, reads typed fields and
//! records every problem with its path and position.
//!
//! Each getter returns `None` when the value is absent *or* wrong; a wrong
//! value has then already been reported. Definition parsers read every field
//! first and build their typed struct last, so one pass reports everything.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::Hash;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::diagnostic::Diagnostic;
use crate::position::{self, PositionIndex};

/// Collects the problems of one file.
pub(crate) struct Checker<'a> {
    file: &'a str,
    index: &'a PositionIndex,
    problems: Vec<Diagnostic>,
}

/// A JSON object being read, with its path and the fields it allows.
pub(crate) struct Obj<'v> {
    pub path: String,
    map: &'v Map<String, Value>,
}

/// A closed set of string values, spelled as AWS spells them.
pub(crate) trait Choice: Sized + Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

/// Defines an enum whose JSON spellings are listed once, with `as_str` and `Display`.
macro_rules! choice_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// The value as AWS spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::check::Choice for $name {
            const CHOICES: &'static [(&'static str, Self)] = &[$(($text, $name::$variant),)*];
        }
    };
}
pub(crate) use choice_enum;

/// The closest of `candidates` to `given`, if any is close enough to be a likely typo.
pub(crate) fn nearest<'c>(
    given: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let given_lower = given.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let score = if c.to_ascii_lowercase() == given_lower {
                2.0
            } else {
                strsim::jaro_winkler(&given_lower, &c.to_ascii_lowercase())
            };
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The value recorded for `key` before `here`, if any; records `here` otherwise.
/// Uniqueness checks use it to name the first holder of a name.
pub(crate) fn seen_before<K: Hash + Eq, V: Copy>(
    seen: &mut HashMap<K, V>,
    key: K,
    here: V,
) -> Option<V> {
    match seen.entry(key) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(slot) => {
            slot.insert(here);
            None
        }
    }
}

/// How a JSON value is described in "expected X, found Y" messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

impl<'v> Obj<'v> {
    /// The member `key`, treating `null` as absent (as the AWS CLI does).
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn child(&self, key: &str) -> String {
        position::child(&self.path, key)
    }

    /// The members in `keys` that are present, kept as written.
    pub fn others(&self, keys: &[&str]) -> BTreeMap<String, Value> {
        keys.iter()
            .filter_map(|k| self.get(k).map(|v| ((*k).to_owned(), v.clone())))
            .collect()
    }
}

// === impl Checker ===

impl<'a> Checker<'a> {
    pub fn new(file: &'a str, index: &'a PositionIndex) -> Checker<'a> {
        Checker {
            file,
            index,
            problems: Vec::new(),
        }
    }

    /// Reports members written twice in one object (serde_json keeps the last silently).
    pub fn report_duplicate_keys(&mut self) {
        for (path, at) in self.index.duplicates() {
            self.problems.push(Diagnostic {
                file: self.file.to_owned(),
                position: Some(*at),
                path: path.clone(),
                message: "field is written more than once; the last one would win".to_owned(),
            });
        }
    }

    pub fn into_problems(self) -> Vec<Diagnostic> {
        self.problems
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// Records a problem at `path` (or its nearest ancestor when `path` is not written).
    pub fn report(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.to_owned(),
            position: Some(self.index.locate(path)),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Reads `value` as an object allowing `fields`; unknown members are
    /// reported with the nearest allowed name.
    pub fn object<'v>(&mut self, path: &str, value: &'v Value, fields: &[&str]) -> Option<Obj<'v>> {
        let Value::Object(map) = value else {
            self.report(
                path,
                format!("expected an object, found {}", describe(value)),
            );
            return None;
        };
        for key in map.keys() {
            if !fields.contains(&key.as_str()) {
                let mut message = format!("unknown field `{key}`");
                if let Some(near) = nearest(key, fields.iter().copied()) {
                    let _ = write!(message, ", did you mean `{near}`?");
                }
                self.report(&position::child(path, key), message);
            }
        }
        Some(Obj {
            path: path.to_owned(),
            map,
        })
    }

    /// The member `key` of `obj` with its path; a missing required member is reported.
    pub fn field<'v>(
        &mut self,
        obj: &Obj<'v>,
        key: &str,
        required: bool,
    ) -> Option<(String, &'v Value)> {
        let path = obj.child(key);
        match obj.get(key) {
            Some(v) => Some((path, v)),
            None => {
                if required {
                    self.report(&path, "missing required field");
                }
                None
            }
        }
    }

    // --- value readers ---

    pub fn as_str<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.report(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    pub fn as_bool(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.report(
                    path,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    pub fn as_int(&mut self, path: &str, v: &Value, range: RangeInclusive<i64>) -> Option<i64> {
        let Some(n) = v.as_i64() else {
            let found = match v {
                Value::Number(n) if n.is_f64() => format!("number {n}"),
                Value::Number(n) => format!("number {n}, which is too large"),
                other => describe(other),
            };
            self.report(path, format!("expected an integer, found {found}"));
            return None;
        };
        if !range.contains(&n) {
            let message = if *range.end() >= i64::from(u32::MAX) {
                format!("must be at least {}, found {n}", range.start())
            } else {
                format!(
                    "must be between {} and {}, found {n}",
                    range.start(),
                    range.end()
                )
            };
            self.report(path, message);
            return None;
        }
        Some(n)
    }

    pub fn as_u32(&mut self, path: &str, v: &Value, range: RangeInclusive<u32>) -> Option<u32> {
        let wide = i64::from(*range.start())..=i64::from(*range.end());
        self.as_int(path, v, wide)
            .and_then(|n| u32::try_from(n).ok())
    }

    pub fn as_array<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v [Value]> {
        match v {
            Value::Array(items) => Some(items),
            other => {
                self.report(
                    path,
                    format!("expected an array, found {}", describe(other)),
                );
                None
            }
        }
    }

    pub fn as_strings(&mut self, path: &str, v: &Value) -> Option<Vec<String>> {
        let items = self.as_array(path, v)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.as_str(&position::element(path, i), item) {
                Some(s) => out.push(s.to_owned()),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// An object whose every member is a string (`options`, `dockerLabels`).
    pub fn as_string_map(&mut self, path: &str, v: &Value) -> Option<BTreeMap<String, String>> {
        let Value::Object(map) = v else {
            self.report(
                path,
                format!("expected an object of strings, found {}", describe(v)),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in map {
            match self.as_str(&position::child(path, key), value) {
                Some(s) => {
                    out.insert(key.clone(), s.to_owned());
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub fn as_choice<T: Choice>(&mut self, path: &str, v: &Value) -> Option<T> {
        let s = self.as_str(path, v)?;
        if let Some((_, choice)) = T::CHOICES.iter().find(|(text, _)| *text == s) {
            return Some(*choice);
        }
        let names: Vec<String> = T::CHOICES
            .iter()
            .map(|(text, _)| format!("{text:?}"))
            .collect();
        let mut message = format!("{s:?} is not one of {}", names.join(", "));
        if let Some(near) = nearest(s, T::CHOICES.iter().map(|(text, _)| *text)) {
            let _ = write!(message, "; did you mean {near:?}?");
        }
        self.report(path, message);
        None
    }

    /// Reads an array, giving each element with its path to `each`.
    pub fn each<'v, T>(
        &mut self,
        path: &str,
        v: &'v Value,
        mut each: impl FnMut(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.as_array(path, v)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match each(self, &position::element(path, i), item) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    // --- field readers: `None` when absent or wrong ---

    pub fn str_field(&mut self, obj: &Obj<'_>, key: &str, required: bool) -> Option<String> {
        let (path, v) = self.field(obj, key, required)?;
        self.as_str(&path, v).map(str::to_owned)
    }

    pub fn bool_field(&mut self, obj: &Obj<'_>, key: &str) -> Option<bool> {
        let (path, v) = self.field(obj, key, false)?;
        self.as_bool(&path, v)
    }

    pub fn u32_field(
        &mut self,
        obj: &Obj<'_>,
        key: &str,
        required: bool,
        range: RangeInclusive<u32>,
    ) -> Option<u32> {
        let (path, v) = self.field(obj, key, required)?;
        self.as_u32(&path, v, range)
    }

    pub fn strings_field(&mut self, obj: &Obj<'_>, key: &str) -> Option<Vec<String>> {
        let (path, v) = self.field(obj, key, false)?;
        self.as_strings(&path, v)
    }

    pub fn map_field(&mut self, obj: &Obj<'_>, key: &str) -> Option<BTreeMap<String, String>> {
        let (path, v) = self.field(obj, key, false)?;
        self.as_string_map(&path, v)
    }

    pub fn choice_field<T: Choice>(
        &mut self,
        obj: &Obj<'_>,
        key: &str,
        required: bool,
    ) -> Option<T> {
        let (path, v) = self.field(obj, key, required)?;
        self.as_choice(&path, v)
    }

    /// A string field read by `rule` (a name rule, a number format...), whose error is reported.
    pub fn str_field_with<T>(
        &mut self,
        obj: &Obj<'_>,
        key: &str,
        required: bool,
        rule: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (path, v) = self.field(obj, key, required)?;
        let s = self.as_str(&path, v)?;
        match rule(s) {
            Ok(t) => Some(t),
            Err(message) => {
                self.report(&path, message);
                None
            }
        }
    }

    /// An array field whose elements are read by `each`.
    pub fn list_field<'v, T>(
        &mut self,
        obj: &Obj<'v>,
        key: &str,
        required: bool,
        each: impl FnMut(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let (path, v) = self.field(obj, key, required)?;
        self.each(&path, v, each)
    }

    /// An object field read by `read`.
    pub fn object_field<'v, T>(
        &mut self,
        obj: &Obj<'v>,
        key: &str,
        required: bool,
        read: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let (path, v) = self.field(obj, key, required)?;
        read(self, &path, v)
    }
}
