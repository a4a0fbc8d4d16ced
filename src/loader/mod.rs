//! The dags folder: scan for `*.rhai` (honouring `.rhaiflowignore`), evaluate files in parallel off
//! the async runtime, validate each DAG's graph and timetable, and return a `DagBag`: the DAGs that
//! loaded, each with its serialised form and version hash, plus one import error per broken file.

mod folder;
pub mod watch;

pub use folder::{Changes, Folder, render as render_import_error};

use crate::graph::{GraphError, TaskGraph};
use crate::model::{DagSpec, Diagnostic, SourcePos};
use crate::schedule::{CronCache, ScheduleError, Timetable};
use crate::script::{
    DeclaredDag, EvalContext, FileEngine, Imports, ScriptHost, ScriptLimits, ScriptProgram, VersionSource,
};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file Airflow calls `.airflowignore`: gitignore-style globs of paths to skip.
pub const IGNORE_FILE: &str = ".rhaiflowignore";

/// A file larger than this is refused rather than parsed.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("dags folder `{}` does not exist", path.display())]
    MissingFolder { path: PathBuf },
    #[error("cannot read dags folder `{}`: {reason}", path.display())]
    Walk { path: PathBuf, reason: String },
    #[error("the built-in stdlib does not compile (a bug):\n{}", render(.0))]
    Stdlib(Vec<Diagnostic>),
    #[error("cannot start DAG file evaluation threads: {0}")]
    Threads(String),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}

/// How to load a dags folder.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    pub dags_folder: PathBuf,
    pub limits: ScriptLimits,
    /// Evaluation threads; 0 means one per core.
    pub threads: usize,
}

/// One DAG that loaded.
#[derive(Clone)]
pub struct LoadedDag {
    pub spec: Arc<DagSpec>,
    /// The serialised form (`DagSpec` as JSON); runs pin it.
    pub json: Arc<str>,
    /// SHA-256 of `json`, hex; for a DAG with closures, of `json` and its file's text (a
    /// closure's captured variables and the functions it calls are not in the spec, so an edit
    /// of them must make a new version too).
    pub version_hash: String,
    /// The compiled file, when it defines closures.
    pub program: Option<Arc<ScriptProgram>>,
    /// The file's text, when this DAG has closures (its runs call them from this text).
    pub source: Option<Arc<VersionSource>>,
}

impl LoadedDag {
    fn new(spec: DagSpec, program: Option<Arc<ScriptProgram>>, file: Option<&Arc<VersionSource>>) -> Self {
        let json = spec.to_json();
        let closures = program.as_ref().is_some_and(|p| p.has_callbacks_of(&spec.dag_id));
        let source = file.filter(|_| closures).cloned();
        let mut hasher = Sha256::new();
        hasher.update(json.as_bytes());
        if let Some(file) = &source {
            hasher.update([0]);
            hasher.update(file.hash.as_bytes());
        }
        let version_hash = hex::encode(hasher.finalize());
        LoadedDag { spec: Arc::new(spec), json: json.into(), version_hash, program, source }
    }

    pub fn short_hash(&self) -> &str {
        &self.version_hash[..12]
    }
}

/// The errors of one file that did not load.
#[derive(Debug, Clone)]
pub struct ImportError {
    /// Path relative to the dags folder.
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// What loading a folder produced.
#[derive(Default, Clone)]
pub struct DagBag {
    pub dags: BTreeMap<String, LoadedDag>,
    /// Sorted by file.
    pub import_errors: Vec<ImportError>,
    /// Every file scanned, relative path → SHA-256 of its content.
    pub files: BTreeMap<String, String>,
}

impl DagBag {
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.import_errors.iter().flat_map(|e| e.diagnostics.iter())
    }
}

/// Loads dags folders. Holds the compiled stdlib, a thread pool with large stacks, and reusable engines.
pub struct Loader {
    settings: LoaderSettings,
    host: Arc<ScriptHost>,
    pool: rayon::ThreadPool,
    engines: Mutex<Vec<FileEngine>>,
    crons: CronCache,
}

/// What one file produced before cross-file checks.
struct FileResult {
    rel: String,
    content_hash: String,
    /// Each DAG with where it was declared (serialised and hashed here, in parallel).
    dags: Vec<(LoadedDag, Option<SourcePos>)>,
    diagnostics: Vec<Diagnostic>,
    /// The dags-folder modules the file imported, with the SHA-256 of the text it read of each.
    imports: Vec<(String, String)>,
}

impl Loader {
    pub fn new(settings: LoaderSettings) -> Result<Loader, LoaderError> {
        let host = Arc::new(ScriptHost::new(settings.limits.clone()).map_err(LoaderError::Stdlib)?);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            // Rhai recurses on nested expressions; a generous stack keeps the expression-depth
            // limit, not a stack overflow, the thing that stops a pathological file.
            .stack_size(64 << 20)
            .thread_name(|i| format!("rhaiflow-parse-{i}"))
            .build()
            .map_err(|e| LoaderError::Threads(e.to_string()))?;
        Ok(Loader { settings, host, pool, engines: Mutex::new(Vec::new()), crons: CronCache::default() })
    }

    pub fn dags_folder(&self) -> &Path {
        &self.settings.dags_folder
    }

    /// Where `import "lib/common"` looks: the dags folder with its links resolved, so a module
    /// whose real path leaves it is refused.
    fn modules_root(&self) -> Arc<Path> {
        let folder = &self.settings.dags_folder;
        Arc::from(std::fs::canonicalize(folder).unwrap_or_else(|_| folder.clone()))
    }

    /// Every `*.rhai` file under the dags folder not excluded by `.rhaiflowignore`, sorted.
    /// Entries that cannot be read (see `scan_entries`) are left out.
    pub fn scan(&self) -> Result<Vec<PathBuf>, LoaderError> {
        let entries = self.scan_entries()?;
        Ok(entries.into_iter().filter_map(|e| e.error.is_none().then_some(e.path)).collect())
    }

    /// Every `*.rhai` entry of the dags folder, sorted, each with why it cannot be loaded if so.
    ///
    /// Only the folder itself failing is an error; one bad entry is that entry's error: a dangling
    /// `*.rhai` symlink, a symlink loop, a `*.rhai` symlink leaving the dags folder (not followed),
    /// a subfolder that cannot be read. Symlinked folders are not descended into (one inside the
    /// folder is walked anyway; one outside is left, with a warning). Hidden entries (`.#x.rhai`
    /// Emacs locks, `.x.rhai.swp`) and editor backups (`x.rhai~`) are skipped.
    pub fn scan_entries(&self) -> Result<Vec<ScanEntry>, LoaderError> {
        let root = &self.settings.dags_folder;
        if !root.is_dir() {
            return Err(LoaderError::MissingFolder { path: root.clone() });
        }
        let real_root =
            root.canonicalize().map_err(|e| LoaderError::Walk { path: root.clone(), reason: e.to_string() })?;
        let mut entries = Vec::new();
        let walker = ignore::WalkBuilder::new(root)
            .standard_filters(false)
            .hidden(true)
            .add_custom_ignore_filename(".airflowignore")
            .add_custom_ignore_filename(IGNORE_FILE)
            .follow_links(false)
            .build();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = error_path(&e).unwrap_or_else(|| root.clone());
                    if path == *root {
                        return Err(LoaderError::Walk { path: root.clone(), reason: e.to_string() });
                    }
                    if path.is_file() && !is_dag_file(&path) {
                        warn_once(
                            &path,
                            || tracing::warn!(entry = %path.display(), "skipping a dags folder entry: {e}"),
                        );
                        continue;
                    }
                    entries.push(ScanEntry { path, error: Some(format!("cannot read: {}", strip_path(&e))) });
                    continue;
                }
            };
            let path = entry.path();
            let Some(file_type) = entry.file_type() else { continue };
            if file_type.is_file() {
                if is_dag_file(path) {
                    entries.push(ScanEntry { path: path.to_path_buf(), error: None });
                }
            } else if file_type.is_symlink()
                && let Some(e) = symlink_entry(path, &real_root)
            {
                entries.push(e);
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Loads the whole folder. Never fails as a whole once the folder can be listed: a broken file
    /// or folder entry is an import error, every other DAG still loads.
    pub fn load_all(&self, ctx: &EvalContext) -> Result<DagBag, LoaderError> {
        let entries = self.scan_entries()?;
        let results: Vec<FileResult> = self.pool.install(|| {
            entries
                .par_iter()
                .map(|entry| match &entry.error {
                    Some(message) => self.entry_error(&entry.path, message.clone()),
                    None => self.load_file_guarded(&entry.path, ctx),
                })
                .collect()
        });
        Ok(self.assemble(results))
    }

    fn entry_error(&self, path: &Path, message: String) -> FileResult {
        let shown = path.to_string_lossy().to_string();
        FileResult {
            rel: self.rel(path),
            content_hash: String::new(),
            dags: Vec::new(),
            diagnostics: vec![Diagnostic::new(&shown, None, message)],
            imports: Vec::new(),
        }
    }

    /// `load_file`, with a panic (a bug) turned into this file's import error.
    fn load_file_guarded(&self, path: &Path, ctx: &EvalContext) -> FileResult {
        let began = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load_file(path, ctx)))
            .unwrap_or_else(|_| {
                let mut r = self.entry_error(path, "internal error while loading this file".into());
                r.diagnostics[0].help = Some("this is a bug in rhaiflow; please report it with the file".into());
                r
            });
        crate::metrics::global().dag_file_parsed(began.elapsed());
        result
    }

    /// The limits each file is evaluated under.
    pub fn limits(&self) -> &ScriptLimits {
        self.host.limits()
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.settings.dags_folder).unwrap_or(path).to_string_lossy().replace('\\', "/")
    }

    fn load_file(&self, path: &Path, ctx: &EvalContext) -> FileResult {
        let rel = self.rel(path);
        let shown = path.to_string_lossy().to_string();
        let mut result = FileResult {
            rel,
            content_hash: String::new(),
            dags: Vec::new(),
            diagnostics: Vec::new(),
            imports: Vec::new(),
        };
        let source = match read_source(path) {
            Ok(s) => s,
            Err(message) => {
                result.diagnostics.push(Diagnostic::new(&shown, None, message));
                return result;
            }
        };
        result.content_hash = hex::encode(Sha256::digest(source.as_bytes()));
        let mut engine = self.take_engine();
        let root = self.modules_root();
        let outcome = engine.evaluate_with(&shown, &source, ctx, Imports::Folder(root.clone()));
        // What each module was when read; one that did not load, what it is on disk now.
        result.imports = outcome
            .module_paths
            .iter()
            .map(|path| {
                let hash = match outcome.modules.iter().find(|m| m.path == *path) {
                    Some(m) => hex::encode(Sha256::digest(m.text.as_bytes())),
                    None => folder::content_hash(&root.join(path)),
                };
                (path.clone(), hash)
            })
            .collect();
        // Only a file with closures keeps its text and its modules' (for its runs to call them).
        let file = outcome.program.as_ref().map(|_| {
            let modules = outcome.modules.iter().map(|m| (m.path.clone(), m.text.clone())).collect();
            Arc::new(VersionSource::with_modules(result.rel.clone(), Arc::from(source.as_str()), modules))
        });
        self.engines.lock().unwrap_or_else(|p| p.into_inner()).push(engine);
        result.diagnostics = outcome.diagnostics;
        for mut declared in outcome.dags {
            declared.spec.fileloc = result.rel.clone();
            let errors = validate(&declared, &shown, &source, &self.crons);
            if errors.is_empty() {
                let pos = declared.source_map.dag;
                result.dags.push((LoadedDag::new(declared.spec, outcome.program.clone(), file.as_ref()), pos));
            } else {
                result.diagnostics.extend(errors);
            }
        }
        if !result.diagnostics.is_empty() {
            result.dags.clear();
        }
        result
    }

    /// The import error of `rel` declaring `dag_id` (at `pos`) that `first` (relative) already declares.
    fn duplicate(&self, rel: &str, dag_id: &str, pos: Option<SourcePos>, first: &str) -> Diagnostic {
        let path = self.settings.dags_folder.join(rel);
        let first_file = self.settings.dags_folder.join(first);
        Diagnostic::new(
            path.to_string_lossy(),
            pos,
            format!("DAG `{dag_id}` is already declared in `{}`", first_file.to_string_lossy()),
        )
        .with_source(&read_source(&path).unwrap_or_default())
        .with_help("every DAG needs its own dag_id across the dags folder; rename one of them")
    }

    fn take_engine(&self) -> FileEngine {
        let reused = self.engines.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| self.host.engine())
    }

    /// Cross-file checks (duplicate `dag_id`s), then the bag.
    fn assemble(&self, results: Vec<FileResult>) -> DagBag {
        let mut bag = DagBag::default();
        for mut r in results {
            bag.files.insert(r.rel.clone(), r.content_hash.clone());
            for (dag, pos) in &r.dags {
                if let Some(first) = bag.dags.get(&dag.spec.dag_id) {
                    r.diagnostics.push(self.duplicate(&r.rel, &dag.spec.dag_id, *pos, &first.spec.fileloc));
                }
            }
            if r.diagnostics.is_empty() {
                for (dag, _) in r.dags {
                    bag.dags.insert(dag.spec.dag_id.clone(), dag);
                }
            } else {
                bag.import_errors.push(ImportError { file: r.rel, diagnostics: r.diagnostics });
            }
        }
        bag
    }

    /// Loads one file of the dags folder (`rel_path` relative to it) as `load_all` loads each file,
    /// on the loader's pool (its large stacks), without scanning the folder: for commands that act
    /// on one DAG whose file the store names. Cross-file checks (a `dag_id` declared in another
    /// file too) are not made: only the folder's loader sees every file.
    pub fn load_one(&self, rel_path: &str, ctx: &EvalContext) -> DagBag {
        let path = self.settings.dags_folder.join(rel_path);
        let result = self.pool.install(|| self.load_file_guarded(&path, ctx));
        self.assemble(vec![result])
    }
}

/// One `*.rhai` entry found in the dags folder.
#[derive(Debug, Clone)]
pub struct ScanEntry {
    pub path: PathBuf,
    /// Why the entry cannot be loaded, if so (it becomes the entry's import error).
    pub error: Option<String>,
}

/// A DAG file by name: `*.rhai`, not an editor's lock, swap or backup file.
fn is_dag_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let editor = name.starts_with(".#") || name.starts_with('#') || name.ends_with('~') || name.ends_with(".swp");
    !editor && path.extension().is_some_and(|e| e == "rhai")
}

/// A symlink in the dags folder: a `*.rhai` link to a file inside the folder loads; any other
/// `*.rhai` link is that entry's error; links to folders and other files are skipped.
fn symlink_entry(path: &Path, real_root: &Path) -> Option<ScanEntry> {
    let dag_named = is_dag_file(path);
    let broken = |error: String| dag_named.then(|| ScanEntry { path: path.to_path_buf(), error: Some(error) });
    let target = match path.canonicalize() {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return broken("symlink loop".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return broken(format!("dangling symlink to `{}`", link_text(path)));
        }
        Err(e) => return broken(format!("cannot follow symlink: {e}")),
    };
    if !target.starts_with(real_root) {
        if !dag_named && target.is_dir() {
            warn_once(
                path,
                || tracing::warn!(link = %path.display(), target = %target.display(), "not following a symlinked folder outside the dags folder"),
            );
        }
        return broken(format!(
            "symlink to `{}`, outside the dags folder; links that leave the dags folder are not followed",
            target.display()
        ));
    }
    if target.is_file() { dag_named.then(|| ScanEntry { path: path.to_path_buf(), error: None }) } else { None }
}

/// A warning about a folder entry is logged once per process, not at every rescan.
fn warn_once(path: &Path, warn: impl FnOnce()) {
    static WARNED: Mutex<Option<std::collections::HashSet<PathBuf>>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.get_or_insert_with(Default::default).insert(path.to_path_buf()) {
        warn();
    }
}

fn link_text(path: &Path) -> String {
    std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default()
}

/// The path an `ignore` walk error is about.
fn error_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => error_path(err),
        ignore::Error::Loop { child, .. } => Some(child.clone()),
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

/// An `ignore` error's reason without the path it repeats (the diagnostic names the entry).
fn strip_path(e: &ignore::Error) -> String {
    match e {
        ignore::Error::WithPath { err, .. }
        | ignore::Error::WithDepth { err, .. }
        | ignore::Error::WithLineNumber { err, .. } => strip_path(err),
        other => other.to_string(),
    }
}

fn read_source(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    // A FIFO or a device would block the read (and every command with it).
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, socket or device); DAG files are regular files".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is {} bytes; DAG files are limited to {} MiB", meta.len(), MAX_FILE_BYTES >> 20));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// Graph, timetable and template checks of one declared DAG, positioned with its source map;
/// every error found, not only the first.
fn validate(declared: &DeclaredDag, shown: &str, source: &str, crons: &CronCache) -> Vec<Diagnostic> {
    let spec = &declared.spec;
    let mut errors = Vec::new();
    if let Err(e) = TaskGraph::build(spec) {
        let pos = match &e {
            GraphError::Cycle { path, .. } if path.len() >= 2 => {
                let closing = (path[path.len() - 2].clone(), path[path.len() - 1].clone());
                declared.source_map.edges.get(&closing).copied().flatten()
            }
            _ => None,
        };
        errors.push(
            Diagnostic::new(shown, pos.or(declared.source_map.dag), e.to_string())
                .with_source(source)
                .with_help("a DAG's dependencies must not loop back; remove one of these edges"),
        );
    }
    if let Err(e) = Timetable::new_cached(spec, crons)
        && !declared.tainted
    {
        let message = match &e {
            ScheduleError::InvalidCron { .. } => format!("DAG `{}`: {e}", spec.dag_id),
            ScheduleError::NoStartDate { .. } => e.to_string(),
        };
        errors.push(Diagnostic::new(shown, declared.source_map.dag, message).with_source(source).with_help(e.help()));
    }
    for (task_id, e) in crate::executor::template_syntax::check_dag(spec) {
        let task_pos = declared.source_map.tasks.get(&task_id).copied().flatten();
        let key = e.field.rsplit('.').next().unwrap_or(&e.field);
        let pos = task_pos.and_then(|from| crate::script::locate_key(source, from, key)).or(task_pos);
        errors.push(Diagnostic::new(shown, pos, format!("task `{task_id}`: {e}")).with_source(source).with_help(
            "templates are Jinja, rendered when the task runs: close every `{{` with `}}` and every `{%` block \
                 with its `{% end... %}`",
        ));
    }
    errors
}
