//! Every fixture under `tests/fixtures`: valid ones load, invalid ones give exactly the
//! diagnostics in their `.expected` file.
//!
//! `invalid/NAME.json` is loaded alone; `invalid/NAME/` is loaded as a stack
//! directory. Run with `SKIFF_BLESS=1` to (re)write the `.expected` files,
//! then read the diff.

use std::fs;
use std::path::{Path, PathBuf};

use skiff_config::{Diagnostics, load_dir, load_files};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

/// Diagnostics as text, with file names relative to `base`.
fn render(diagnostics: &Diagnostics, base: &Path) -> String {
    let prefix = format!("{}/", base.display());
    diagnostics.to_string().replace(&prefix, "")
}

#[test]
fn valid_fixtures_load() {
    let dir = fixtures().join("valid");
    let mut failures = Vec::new();
    let mut count = 0;
    for path in entries(&dir) {
        let result = if path.is_dir() {
            load_dir(&path).map(|_| ())
        } else if path.extension().is_some_and(|x| x == "json") {
            load_files(std::slice::from_ref(&path)).map(|_| ())
        } else {
            continue;
        };
        count += 1;
        if let Err(d) = result {
            failures.push(format!("{}:\n{}", path.display(), render(&d, &dir)));
        }
    }
    assert!(count >= 6, "only {count} valid fixtures");
    assert!(
        failures.is_empty(),
        "valid fixtures rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_fixtures_report_exactly_the_expected_diagnostics() {
    let dir = fixtures().join("invalid");
    let bless = std::env::var_os("SKIFF_BLESS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in entries(&dir) {
        let result = if path.is_dir() {
            load_dir(&path)
        } else if path.extension().is_some_and(|x| x == "json") {
            load_files(std::slice::from_ref(&path))
        } else {
            continue;
        };
        count += 1;
        let expected_path = path.with_extension("expected");
        let actual = match result {
            Ok(_) => {
                failures.push(format!(
                    "{}: accepted, but should be rejected",
                    path.display()
                ));
                continue;
            }
            Err(d) => render(&d, &dir),
        };
        if bless {
            fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing", expected_path.display()));
        if expected.trim_end() != actual {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}",
                path.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(count >= 35, "only {count} invalid fixtures");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_expected_file_has_its_fixture() {
    let dir = fixtures().join("invalid");
    for path in entries(&dir) {
        if path.extension().is_some_and(|x| x == "expected") {
            let json = path.with_extension("json");
            let case_dir = path.with_extension("");
            assert!(
                json.is_file() || case_dir.is_dir(),
                "{} has no fixture",
                path.display()
            );
        }
    }
}
