//! `rhaiflow port`: Airflow 2 Python DAG files become Rhai DAG files with the same DAG ids, task ids
//! and edges, their Python callables moved into a `NAME_tasks.py` module beside them, and a report of
//! every construct that could not be ported faithfully.
//!
//! The Python is parsed to an AST (rustpython-parser) and its module-level code evaluated statically
//! (`eval.rs`): nothing of the file runs, nothing is imported. Layer 3, beside `loader`: it reads and
//! writes the files it is given and never touches the store, the scheduler or the CLI.

mod airflow;
mod emit;
mod eval;
mod value;

use rustpython_parser::{Parse, ast};
use std::path::{Path, PathBuf};

/// The first line of every file `port` writes; a file that starts otherwise is never overwritten.
pub const HEADER: &str = "// ported by rhaiflow port from ";
/// The first line of the Python tasks modules `port` writes (also how a rerun skips them as input).
pub const PY_HEADER: &str = "# ported by rhaiflow port from ";
/// The largest Python file ported.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// One construct that was not ported faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub line: usize,
    /// What it was (`SqlOperator \`load\``).
    pub what: String,
    /// Why it could not be ported.
    pub why: String,
    /// What was written instead.
    pub instead: String,
}

/// What the evaluator declared.
pub struct Model {
    pub dags: Vec<eval::DagOut>,
    pub tasks: Vec<eval::TaskOut>,
    pub groups: Vec<eval::GroupOut>,
    pub losses: Vec<Loss>,
}

/// One DAG of a ported file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagSummary {
    pub dag_id: String,
    pub line: usize,
    pub tasks: usize,
    pub edges: usize,
}

/// One file ported in memory.
#[derive(Debug, Clone)]
pub struct Ported {
    /// The `.rhai` text; `None` when the file declares no DAG.
    pub rhai: Option<String>,
    /// The `_tasks.py` module, when some task runs Python.
    pub python: Option<String>,
    /// The tasks module's name (`etl_tasks`).
    pub module: String,
    pub dags: Vec<DagSummary>,
    pub losses: Vec<Loss>,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("line {line}, column {column}: {message}")]
    Parse { line: usize, column: usize, message: String },
}

/// The tasks module's name for a file stem: a Python identifier (`my-etl` → `my_etl_tasks`).
pub fn tasks_module(stem: &str) -> String {
    let mut name: String = stem.chars().map(|c| if c.is_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.push_str("_tasks");
    name
}

/// Ports one file's text. `source_name` is shown in the header (`etl.py`), `stem` names the tasks module.
pub fn port_source(source_name: &str, src: &str, stem: &str) -> Result<Ported, PortError> {
    let body = ast::Suite::parse(src, source_name).map_err(|e| {
        let offset = (e.offset.to_usize()).min(src.len());
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        PortError::Parse { line, column, message: e.error.to_string() }
    })?;
    let module = tasks_module(stem);
    let mut ev = eval::Evaluator::new(src, module.clone());
    ev.run_module(&body);
    let python = emit::python_module(&mut ev, &body, src, source_name);
    let rhai =
        (!ev.dags.is_empty()).then(|| emit::rhai_file(&ev, source_name, python.as_ref().map(|_| module.as_str())));
    let model = ev.into_model();
    let dags = model
        .dags
        .iter()
        .enumerate()
        .map(|(d, dag)| DagSummary {
            dag_id: dag.dag_id.clone(),
            line: dag.line,
            tasks: model.tasks.iter().filter(|t| t.dag == d).count(),
            edges: dag.edges.len(),
        })
        .collect();
    let mut losses = model.losses;
    losses.sort_by_key(|l| l.line);
    losses.dedup();
    Ok(Ported { rhai, python: if model.dags.is_empty() { None } else { python }, module, dags, losses })
}

// --- files ---------------------------------------------------------------------------------------

/// What `rhaiflow port` was asked to do.
#[derive(Debug, Clone)]
pub struct PortOptions {
    pub paths: Vec<PathBuf>,
    pub output_dir: Option<PathBuf>,
    /// Write nothing; report only.
    pub check: bool,
}

/// A usage error: nothing was ported.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no such file or folder: `{0}`")]
    NoSuchPath(String),
    #[error("`{0}` is not a Python file (port takes `.py` files and folders of them)")]
    NotPython(String),
    #[error("no `.py` files in {0}")]
    NoPythonFiles(String),
    #[error("cannot read folder `{path}`: {error}")]
    ReadDir { path: String, error: std::io::Error },
}

/// One input file and what became of it.
#[derive(Debug)]
pub struct FileReport {
    /// The input, as the user named it (a path under a folder they gave).
    pub input: PathBuf,
    pub outcome: FileOutcome,
}

#[derive(Debug)]
pub enum FileOutcome {
    /// Ported (and written, unless `--check`).
    Ported { rhai_path: PathBuf, python_path: Option<PathBuf>, ported: Ported },
    /// The file declares no DAG (a helper module): nothing written.
    NoDag,
    /// The file could not be ported at all (unreadable, not Python, an output in the way); skipped.
    Failed(String),
}

impl FileReport {
    pub fn losses(&self) -> usize {
        match &self.outcome {
            FileOutcome::Ported { ported, .. } => ported.losses.len(),
            _ => 0,
        }
    }
}

/// Ports every `.py` file named or under a folder named, in path order.
pub fn run(options: &PortOptions) -> Result<Vec<FileReport>, UsageError> {
    let mut inputs: Vec<(PathBuf, PathBuf)> = Vec::new(); // (file, path relative to its root)
    for path in &options.paths {
        let meta = std::fs::metadata(path).map_err(|_| UsageError::NoSuchPath(path.display().to_string()))?;
        if meta.is_dir() {
            let before = inputs.len();
            collect(path, path, &mut inputs)?;
            if inputs.len() == before {
                return Err(UsageError::NoPythonFiles(format!("`{}`", path.display())));
            }
        } else if path.extension().is_some_and(|e| e == "py") {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            inputs.push((path.clone(), name));
        } else {
            return Err(UsageError::NotPython(path.display().to_string()));
        }
    }
    Ok(inputs.into_iter().map(|(file, rel)| port_file_on_big_stack(file, rel, options)).collect())
}

/// Stack for one file's parse and evaluation: the parser, the evaluator and dropping the AST
/// recurse once per nesting level (the evaluator stops at `MAX_EXPR_DEPTH`).
const STACK_BYTES: usize = 256 * 1024 * 1024;

fn port_file_on_big_stack(file: PathBuf, rel: PathBuf, options: &PortOptions) -> FileReport {
    let shown = file.clone();
    let options = options.clone();
    let worker = std::thread::Builder::new()
        .name("port".into())
        .stack_size(STACK_BYTES)
        .spawn(move || port_file(&file, &rel, &options));
    let failed = |why: &str| FileReport { input: shown.clone(), outcome: FileOutcome::Failed(why.to_string()) };
    match worker {
        Ok(handle) => handle.join().unwrap_or_else(|_| failed("internal error (a bug) while porting it")),
        Err(e) => failed(&format!("cannot start a thread to port it: {e}")),
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), UsageError> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| UsageError::ReadDir { path: dir.display().to_string(), error })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        // Symlinked folders are not followed (a loop would never end); symlinked files are read.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if name.ends_with(".py") && !is_our_python(&path) {
            let rel = path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_else(|_| PathBuf::from(&name));
            out.push((path, rel));
        }
    }
    Ok(())
}

/// A tasks module an earlier `port` wrote: not an Airflow DAG file.
fn is_our_python(path: &Path) -> bool {
    first_line(path).is_some_and(|l| l.starts_with(PY_HEADER))
}

fn first_line(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 256];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string())
}

/// Whether an existing output may be overwritten: only a file `port` wrote before.
fn ours_or_absent(path: &Path, header: &str) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(_) => true,
        Ok(meta) => meta.is_file() && first_line(path).is_some_and(|l| l.starts_with(header)),
    }
}

fn port_file(file: &Path, rel: &Path, options: &PortOptions) -> FileReport {
    let report = |outcome| FileReport { input: file.to_path_buf(), outcome };
    match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return report(FileOutcome::Failed(format!("larger than {} MiB; not ported", MAX_FILE_BYTES >> 20)));
        }
        Err(e) => return report(FileOutcome::Failed(format!("cannot read it: {e}"))),
        _ => {}
    }
    let src = match std::fs::read(file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => return report(FileOutcome::Failed("not UTF-8 text; not ported".into())),
        },
        Err(e) => return report(FileOutcome::Failed(format!("cannot read it: {e}"))),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let stem = file.file_stem().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let ported = match port_source(&name, &src, &stem) {
        Ok(p) => p,
        Err(e) => return report(FileOutcome::Failed(format!("not valid Python: {e}; not ported"))),
    };
    let Some(rhai) = &ported.rhai else { return report(FileOutcome::NoDag) };
    let out_dir = match &options.output_dir {
        Some(dir) => dir.join(rel.parent().unwrap_or(Path::new(""))),
        None => file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let rhai_path = out_dir.join(format!("{stem}.rhai"));
    let python_path = ported.python.as_ref().map(|_| out_dir.join(format!("{}.py", ported.module)));
    for (path, header) in [(Some(&rhai_path), HEADER), (python_path.as_ref(), PY_HEADER)] {
        if let Some(path) = path
            && !ours_or_absent(path, header)
        {
            return report(FileOutcome::Failed(format!(
                "`{}` exists and was not written by `rhaiflow port`; not overwritten (move it away, or use --output-dir)",
                path.display()
            )));
        }
    }
    if !options.check {
        let written = std::fs::create_dir_all(&out_dir).and_then(|_| std::fs::write(&rhai_path, rhai)).and_then(|_| {
            match (&python_path, &ported.python) {
                (Some(p), Some(text)) => std::fs::write(p, text),
                _ => Ok(()),
            }
        });
        if let Err(e) = written {
            return report(FileOutcome::Failed(format!("cannot write `{}`: {e}", rhai_path.display())));
        }
    }
    report(FileOutcome::Ported { rhai_path, python_path, ported })
}
