//! Damaged input never panics, and every problem points inside the file.

use std::path::Path;

use proptest::prelude::*;
use skiff_config::parse_str;

fn samples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            out.push(std::fs::read_to_string(path).unwrap());
        }
    }
    out.sort();
    out
}

/// An edit: replace `len` characters at a relative position with `insert`.
fn edit() -> impl Strategy<Value = (f64, usize, String)> {
    (0.0..1.0f64, 0usize..4, r#"[{}\[\]",:0-9a-zA-Z \n\\-]{0,3}"#)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn damaged_definitions_give_diagnostics_inside_the_file(
        sample in 0usize..64,
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let all = samples();
        let mut chars: Vec<char> = all[sample % all.len()].chars().collect();
        for (at, len, insert) in edits {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let start = ((chars.len() as f64) * at) as usize;
            let end = (start + len).min(chars.len());
            chars.splice(start..end, insert.chars());
        }
        let text: String = chars.into_iter().collect();
        let lines = text.lines().count().max(1) + 1;
        if let Err(diagnostics) = parse_str("t.json", &text) {
            prop_assert!(!diagnostics.is_empty());
            for d in &diagnostics {
                let at = d.position.expect("parsed text has positions");
                prop_assert!(at.line >= 1 && (at.line as usize) <= lines, "{d} outside {lines} lines");
                prop_assert!(at.column >= 1, "{d}");
                prop_assert!(!d.message.is_empty());
            }
        }
    }
}
