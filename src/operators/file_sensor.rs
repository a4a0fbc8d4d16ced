//! `FileSensor`: done when its rendered `filepath` (a glob: `*`, `?`, `[..]`, `{a,b}`, and `**`
//! for any depth of folders with `recursive: true`, else it is `*`) names a file, or a folder
//! holding a file somewhere below it, as Airflow's.

use super::sensor::{self, Poke};
use super::{Start, TaskRun};
use crate::executor::template::render;
use crate::model::{Operator, SensorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// At most this many folder entries are read per poke: a pattern over a huge tree fails clearly
/// instead of holding a thread for minutes.
const MAX_ENTRIES: usize = 200_000;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::Sensor(s) => match &s.kind {
            SensorKind::File { filepath, .. } => vec![filepath.as_str()],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let (pattern, recursive) = match sensor::spec(&run).map(|s| &s.kind) {
        Some(SensorKind::File { filepath, recursive }) => (render("filepath", filepath, &run.ctx), *recursive),
        _ => return Start::Done(super::Outcome::fail("not a FileSensor")),
    };
    let pattern = match pattern {
        Ok(p) if p.trim().is_empty() => return Start::Done(super::Outcome::fail("`filepath` rendered empty")),
        Ok(p) => p,
        Err(e) => return Start::Done(super::Outcome::fail(e.to_string())),
    };
    sensor::start(run, move |run| {
        let pattern = pattern.clone();
        async move {
            run.log(&format!("Poking for file {pattern}")).await;
            let search = pattern.clone();
            match tokio::task::spawn_blocking(move || find(&search, recursive)).await {
                Ok(Ok(Some(found))) => {
                    run.log(&format!("Found file {}", found.display())).await;
                    Poke::Done { xcom: None }
                }
                Ok(Ok(None)) => Poke::NotYet,
                Ok(Err(reason)) => Poke::Fail(reason),
                Err(e) => Poke::Fail(format!("FileSensor's search for `{pattern}` failed: {e}")),
            }
        }
    })
}

/// The first file the pattern names (a folder counts through a file below it).
pub fn find(pattern: &str, recursive: bool) -> Result<Option<PathBuf>, String> {
    if !has_glob(pattern) {
        return Ok(file_in(Path::new(pattern), &mut 0));
    }
    // As Python's `glob` without `recursive`: `**` is `*`.
    let flat;
    let pattern = if recursive {
        pattern
    } else {
        flat = pattern.replace("**", "*");
        flat.as_str()
    };
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("`filepath` `{pattern}` is not a valid glob pattern: {e}"))?
        .compile_matcher();
    // Walk from the longest folder of the pattern without wildcards.
    let fixed = Path::new(pattern).components().take_while(|c| !has_glob(&c.as_os_str().to_string_lossy())).count();
    let root: PathBuf = match Path::new(pattern).components().take(fixed).collect::<PathBuf>() {
        root if root.as_os_str().is_empty() => PathBuf::from("."),
        root => root,
    };
    let recursive = recursive && pattern.contains("**");
    let depth = Path::new(pattern).components().count().saturating_sub(fixed);
    let mut seen = 0usize;
    let mut stack = vec![(root.clone(), 0usize)];
    let relative = !Path::new(pattern).is_absolute() && !pattern.starts_with("./");
    // As Python's `glob`: a wildcard does not match a name starting with a dot (a partial upload
    // `.day.csv.tmp`), unless the pattern itself names dot entries.
    let dots = Path::new(pattern).components().skip(fixed).any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.starts_with('.') && c != "." && c != ".."
    });
    while let Some((dir, level)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if !dots && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!(
                    "`filepath` `{pattern}` walks more than {MAX_ENTRIES} entries; narrow the pattern"
                ));
            }
            let shown = if relative { path.strip_prefix(".").unwrap_or(&path).to_path_buf() } else { path.clone() };
            if matcher.is_match(&shown)
                && let Some(found) = file_in(&path, &mut seen)
            {
                let found =
                    if relative { found.strip_prefix(".").map(Path::to_path_buf).unwrap_or(found) } else { found };
                return Ok(Some(found));
            }
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir && (recursive || level + 1 < depth) {
                stack.push((path, level + 1));
            }
        }
    }
    Ok(None)
}

/// `path` if it is a file, else the first file below it if it is a folder (Airflow's `os.walk`).
fn file_in(path: &Path, seen: &mut usize) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some(path.to_path_buf());
    }
    if !meta.is_dir() {
        return None;
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.filter_map(Result::ok) {
            *seen += 1;
            if *seen > MAX_ENTRIES {
                return None;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) => return Some(entry.path()),
                _ => {}
            }
        }
    }
    None
}

fn has_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_patterns_walk_from_the_working_folder() {
        // `cargo test` runs in the crate's folder.
        assert_eq!(find("Cargo.*", false).unwrap(), Some(PathBuf::from("Cargo.lock")));
        assert_eq!(find("*/operators/sensor.rs", false).unwrap(), Some(PathBuf::from("src/operators/sensor.rs")));
        assert_eq!(find("src/*/file_sensor.rs", false).unwrap(), Some(PathBuf::from("src/operators/file_sensor.rs")));
        assert_eq!(find("*/sensor.rs", false).unwrap(), None);
    }

    #[test]
    fn globs_find_files_and_folders_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_string_lossy().to_string();
        assert_eq!(find(&format!("{base}/in/*.csv"), true).unwrap(), None);
        std::fs::create_dir_all(dir.path().join("in/deep/er")).unwrap();
        assert_eq!(find(&format!("{base}/in/*.csv"), true).unwrap(), None);
        assert_eq!(find(&format!("{base}/in/deep"), true).unwrap(), None, "an empty folder is not done");
        std::fs::write(dir.path().join("in/deep/er/x.csv"), "1").unwrap();
        assert_eq!(find(&format!("{base}/in/*.csv"), true).unwrap(), None, "`*` does not cross `/`");
        assert!(find(&format!("{base}/in/**/*.csv"), true).unwrap().is_some());
        assert!(find(&format!("{base}/in/deep"), true).unwrap().is_some(), "a folder with a file below it");
        assert!(find(&format!("{base}/in/d*"), true).unwrap().is_some());
        std::fs::write(dir.path().join("in/a.csv"), "1").unwrap();
        assert_eq!(find(&format!("{base}/in/*.csv"), true).unwrap(), Some(dir.path().join("in/a.csv")));
        assert!(find(&format!("{base}/in/["), true).is_err());
        std::fs::create_dir_all(dir.path().join("up")).unwrap();
        std::fs::write(dir.path().join("up/.day.csv"), "partial").unwrap();
        assert_eq!(find(&format!("{base}/up/*.csv"), false).unwrap(), None, "a dot file is hidden from `*`");
        assert!(find(&format!("{base}/up/.*.csv"), false).unwrap().is_some());
    }
}
