//! Rules of the codebase, checked by `cargo test` (after rust-analyzer's tidy test):
//! modules import only layers below them, Rhai types stay in `script`, and only `config` reads
//! environment variables.

use std::path::{Path, PathBuf};

/// Each module's layer (DESIGN.md §6); a module may use modules of lower layers only.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("graph", 1),
    ("schedule", 1),
    ("script", 1),
    ("store", 1),
    ("executor", 1),
    ("config", 1),
    ("metrics", 0),
    ("operators", 2),
    ("loader", 3),
    ("port", 3),
    ("scheduler", 3),
    ("worker", 3),
    ("alert", 3),
    ("web", 3),
    ("app", 4),
    ("cli", 5),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix("src").unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Lines of code, without `//` comments and without `#[cfg(test)]` modules at the end of a file.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let body = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines().enumerate().map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("").to_string())).collect()
}

fn files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    files.sort();
    files
}

#[test]
fn every_module_is_in_the_layer_table() {
    for file in files() {
        let m = module_of(&file);
        if m == "lib" || m == "main" || m == "bin" {
            continue;
        }
        assert!(layer(&m).is_some(), "{} belongs to module `{m}`, which has no layer in tests/tidy.rs", file.display());
    }
}

#[test]
fn modules_import_only_layers_below() {
    let mut violations = Vec::new();
    for file in files() {
        let m = module_of(&file);
        let Some(own) = layer(&m) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            for (other, their) in LAYERS {
                if *other == m {
                    continue;
                }
                let used = line.contains(&format!("crate::{other}::"))
                    || line.contains(&format!("crate::{other};"))
                    || line.contains(&format!("crate::{other}}}"))
                    || line.contains(&format!("crate::{{{other}"))
                    || line.contains(&format!(" {other}::")) && line.trim_start().starts_with("use crate::{");
                if used && *their >= own {
                    violations
                        .push(format!("{}:{n}: `{m}` (layer {own}) uses `{other}` (layer {their})", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.join("\n"));
}

#[test]
fn rhai_types_stay_in_script() {
    let mut violations = Vec::new();
    for file in files() {
        if module_of(&file) == "script" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            if line.contains("rhai::") || line.contains("use rhai") {
                violations.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "Rhai types outside `script`:\n{}", violations.join("\n"));
}

#[test]
fn only_config_reads_the_environment() {
    let mut violations = Vec::new();
    for file in files() {
        if module_of(&file) == "config" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            if ["env::var", "env::vars", "env::var_os", "option_env!", "std::env::args"]
                .iter()
                .any(|p| line.contains(p))
            {
                violations.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "environment read outside `config`:\n{}", violations.join("\n"));
}

#[test]
fn every_source_file_says_what_it_is_for() {
    for file in files() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("//!"), "{} should open with a `//!` line saying what it is for", file.display());
    }
}
