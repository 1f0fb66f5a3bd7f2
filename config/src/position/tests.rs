//! The position index against serde_json's own rendering of random documents.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

/// Byte offset of a 1-based line and character column.
fn offset(text: &str, at: Position) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(at.line as usize - 1)
        .map(str::len)
        .sum();
    let line = &text[line_start..];
    line_start
        + line
            .char_indices()
            .nth(at.column as usize - 1)
            .map_or(line.len(), |(i, _)| i)
}

/// Every path of `v` with the value there (members and elements).
fn paths(path: &str, v: &Value, out: &mut Vec<(String, Value, Option<String>)>) {
    match v {
        Value::Object(map) => {
            for (k, child_v) in map {
                let p = child(path, k);
                out.push((p.clone(), child_v.clone(), Some(k.clone())));
                paths(&p, child_v, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = element(path, i);
                out.push((p.clone(), item.clone(), None));
                paths(&p, item, out);
            }
        }
        _ => {}
    }
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-zA-Z0-9 é\"\\\\\n\t\u{1F600}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            // Keys without '.', '[' or ']' so that paths are unambiguous.
            prop::collection::btree_map("[a-z\"\\\\é\u{1F600}_-]{1,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// In pretty and compact text alike, each member's position is its key and
    /// each element's position is the start of its value.
    #[test]
    fn every_path_points_at_its_key_or_value(v in json(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
        let index = PositionIndex::build(&text);
        let mut all = Vec::new();
        paths("", &v, &mut all);
        for (path, value, key) in all {
            let at = index.get(&path).unwrap_or_else(|| panic!("{path} not indexed in {text}"));
            let rest = &text[offset(&text, at)..];
            match key {
                Some(key) => {
                    let quoted = serde_json::to_string(&key).unwrap();
                    prop_assert!(rest.starts_with(&quoted), "{path}: {rest:?} should start with {quoted}");
                }
                None => {
                    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                    let first = stream.next().unwrap().unwrap();
                    prop_assert_eq!(first, value, "{}", path);
                }
            }
        }
        prop_assert!(index.duplicates().is_empty());
    }
}

#[test]
fn missing_paths_fall_back_to_the_nearest_ancestor() {
    let text = "{\n  \"a\": [\n    {\"b\": 1}\n  ]\n}";
    let index = PositionIndex::build(text);
    assert_eq!(index.locate("a[0].b"), Position { line: 3, column: 6 });
    assert_eq!(
        index.locate("a[0].missing"),
        Position { line: 3, column: 5 }
    );
    assert_eq!(index.locate("a[7]"), Position { line: 2, column: 3 });
    assert_eq!(index.locate("nothing"), Position { line: 1, column: 1 });
}

#[test]
fn duplicate_keys_are_recorded_at_the_later_key() {
    let index = PositionIndex::build("{\"a\": 1,\n \"a\": 2}");
    assert_eq!(
        index.duplicates(),
        [("a".to_owned(), Position { line: 2, column: 2 })]
    );
}

#[test]
fn parent_strips_one_segment() {
    assert_eq!(parent("a.b[0].c"), "a.b[0]");
    assert_eq!(parent("a.b[0]"), "a.b");
    assert_eq!(parent("a"), "");
    assert_eq!(parent(""), "");
}
