//! Data-driven: every file in `tests/dag_files/broken` yields exactly the diagnostics in its
//! `.expected` file. Run with `BLESS=1` to rewrite the expectations, then review the diff.

mod common;

use std::path::Path;

#[test]
fn broken_files_give_their_expected_diagnostics() {
    let folder = Path::new("tests/dag_files/broken");
    let bag = common::load(folder);
    assert!(bag.dags.contains_key("still_loads"), "the good file among broken ones still loads");
    assert_eq!(bag.dags.len(), 1, "only the good file loads: {:?}", bag.dags.keys().collect::<Vec<_>>());
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "rhai")) {
        let rel = path.file_name().unwrap().to_string_lossy().to_string();
        if rel == "good.rhai" {
            continue;
        }
        let actual = bag
            .import_errors
            .iter()
            .find(|e| e.file == rel)
            .map(|e| e.diagnostics.iter().map(|d| format!("{d}\n")).collect::<String>())
            .unwrap_or_else(|| "(no diagnostics)\n".into());
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!("--- {rel}\nexpected:\n{expected}\nactual:\n{actual}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
