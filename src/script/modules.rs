//! `import "lib/common" as common;`: the stdlib by name, else a `.rhai` module under the dags folder
//! (relative to the folder, never outside it, symlinks included), or, when a version's closures
//! run, the module texts that version kept. Each evaluation records the modules it read, so the
//! loader can re-evaluate a file when a module it imports changes and a version can keep them.

use super::SharedModule;
use super::error::{LimitNames, ScriptError, eval_diagnostic, parse_diagnostic};
use rhai::module_resolvers::StaticModuleResolver;
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where `import` finds modules other than the stdlib.
#[derive(Clone, Default)]
pub enum Imports {
    /// Only the stdlib.
    #[default]
    Stdlib,
    /// `PATH.rhai` under this folder (canonical).
    Folder(Arc<Path>),
    /// The modules a version kept: (path relative to the dags folder, text).
    Pinned(Arc<[(String, Arc<str>)]>),
}

/// A module one evaluation imported from the dags folder.
#[derive(Clone)]
pub struct ImportedModule {
    /// Relative to the dags folder, with `.rhai` (`lib/common.rhai`).
    pub path: String,
    pub text: Arc<str>,
    pub(super) module: SharedModule,
    /// The module's compiled text: its functions, private ones and closures included, which a
    /// closure it created needs in scope when a task calls it later.
    pub(super) ast: Arc<rhai::AST>,
}

#[derive(Default)]
pub(super) struct Session {
    mode: Imports,
    /// Modules being evaluated (an import cycle shows as a path already here).
    loading: Vec<String>,
    done: Vec<ImportedModule>,
    /// Every dags-folder module asked for, read or not (a missing or broken one too: the file
    /// depends on it becoming good).
    asked: Vec<String>,
}

impl Session {
    /// Starts an evaluation with `mode`.
    pub(super) fn begin(&mut self, mode: Imports) {
        *self = Session { mode, ..Session::default() };
    }

    /// Starts a closure call of a version whose modules are `kept` (already evaluated): an
    /// `import` run inside a function finds them, not whatever this engine evaluated last.
    pub(super) fn pin(&mut self, kept: &[ImportedModule]) {
        let texts: Vec<(String, Arc<str>)> = kept.iter().map(|m| (m.path.clone(), m.text.clone())).collect();
        *self = Session { mode: Imports::Pinned(texts.into()), done: kept.to_vec(), ..Session::default() };
    }

    /// The modules read so far.
    pub(super) fn done(&self) -> &[ImportedModule] {
        &self.done
    }

    /// The modules read since `begin`, in the order they were first imported, and every module
    /// path asked for.
    pub(super) fn take(&mut self) -> (Vec<ImportedModule>, Vec<String>) {
        (std::mem::take(&mut self.done), std::mem::take(&mut self.asked))
    }
}

pub(super) type SharedSession = Arc<Mutex<Session>>;

/// The engine's module resolver.
pub(super) struct Resolver {
    pub(super) stdlib: StaticModuleResolver,
    pub(super) session: SharedSession,
    /// The largest module text read (`max_string_size`).
    pub(super) max_bytes: usize,
}

/// The most module texts one evaluation may read (besides Rhai's own `max_modules`).
const MAX_MODULES: usize = 64;

fn refuse(message: String, help: &str, pos: Position) -> Box<EvalAltResult> {
    let mut e: Box<EvalAltResult> = ScriptError::new(message).with_help(help).into();
    e.set_position(pos);
    e
}

/// `lib/common` or `lib/common.rhai` → `lib/common.rhai`: relative, plain names separated by
/// single `/`s (no empty, `.` or `..` segment, no control character).
pub(super) fn module_path(path: &str) -> Result<String, String> {
    let trimmed = path.strip_suffix(".rhai").unwrap_or(path);
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} is not a module path: it holds a control character"));
    }
    if trimmed.is_empty() || path.contains('\\') {
        return Err(format!("`{path}` is not a module path"));
    }
    if trimmed.starts_with('/') {
        return Err(format!("`{path}` is absolute: modules are imported relative to the dags folder"));
    }
    for segment in trimmed.split('/') {
        match segment {
            ".." => return Err(format!("`{path}` leaves the dags folder (`..` is not allowed)")),
            "" | "." => {
                return Err(format!("`{path}` is not plain: write the path from the dags folder, like `lib/common`"));
            }
            _ => {}
        }
    }
    Ok(format!("{trimmed}.rhai"))
}

const HELP: &str = "a module is a `.rhai` file under the dags folder, imported by its path from the folder without `.rhai`: \
                    `import \"lib/common\" as common;` reads `<dags folder>/lib/common.rhai`; the stdlib modules are `alerts` and `schedules`";

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        if self.stdlib.contains_path(path) {
            return self.stdlib.resolve(engine, source, path, pos);
        }
        let name = module_path(path).map_err(|m| refuse(m, HELP, pos))?;
        let mode = {
            let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = s.done.iter().find(|m| m.path == name) {
                return Ok(m.module.clone());
            }
            if s.loading.contains(&name) {
                let chain = s.loading.join("` → `");
                return Err(refuse(
                    format!("import cycle: `{chain}` → `{name}`"),
                    "a module may not import itself, directly or through others",
                    pos,
                ));
            }
            if s.loading.len() + s.done.len() >= MAX_MODULES {
                return Err(refuse(format!("more than {MAX_MODULES} modules imported"), "import fewer modules", pos));
            }
            if matches!(s.mode, Imports::Stdlib) {
                return Err(EvalAltResult::ErrorModuleNotFound(path.to_string(), pos).into());
            }
            if !s.asked.contains(&name) {
                s.asked.push(name.clone());
            }
            s.loading.push(name.clone());
            s.mode.clone()
        };
        let read = match &mode {
            Imports::Folder(root) => read_module(root, &name, self.max_bytes).map_err(|m| {
                // `import "alert"`: a misspelt stdlib module more likely than a missing file.
                let stdlib: Vec<&str> = super::STDLIB.iter().map(|(n, _)| *n).filter(|n| *n != "prelude").collect();
                match crate::model::suggest::nearest(path, &stdlib) {
                    Some(near) if !path.contains('/') => {
                        format!("no module `{path}`: not a stdlib module, and no `{name}` in the dags folder; did you mean `{near}`?")
                    }
                    _ => m,
                }
            }),
            Imports::Pinned(kept) => kept
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| format!("module `{name}` was not kept with this DAG version")),
            Imports::Stdlib => unreachable!("refused above"),
        };
        let result = read.map_err(|m| refuse(m, HELP, pos)).and_then(|text| {
            let (module, ast) = evaluate_module(engine, &name, &text, pos)?;
            Ok(ImportedModule { path: name.clone(), text, module, ast })
        });
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        s.loading.retain(|l| *l != name);
        let imported = result?;
        s.done.push(imported.clone());
        Ok(imported.module)
    }
}

/// The text of `name` under `root`, if it is a regular file that stays inside `root`. Messages
/// name the module as imported (relative to the dags folder), never the machine's absolute path.
fn read_module(root: &Path, name: &str, max_bytes: usize) -> Result<Arc<str>, String> {
    let joined = root.join(name);
    if std::fs::symlink_metadata(&joined).is_ok_and(|m| m.file_type().is_symlink()) && !joined.exists() {
        return Err(format!("module `{name}` is a symlink to nothing"));
    }
    let real = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("no module `{name}` in the dags folder"),
        _ => format!("cannot read module `{name}`: {e}"),
    })?;
    if !real.starts_with(root) {
        return Err(format!("module `{name}` is a link to `{}`, outside the dags folder", real.display()));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read module `{name}`: {e}"))?;
    // Checked before opening: a FIFO or a device would block the read.
    if !meta.is_file() {
        return Err(format!("module `{name}` is not a regular file"));
    }
    if meta.len() > max_bytes as u64 {
        return Err(format!("module `{name}` is {} bytes; modules are limited to {max_bytes} bytes", meta.len()));
    }
    let text = std::fs::read_to_string(&real).map_err(|e| format!("cannot read module `{name}`: {e}"))?;
    Ok(Arc::from(text))
}

/// Compiles and runs a module with the importing file's engine (its deadline and limits hold).
/// An error in it names the module's own line; the deadline and the limits stay what they are.
fn evaluate_module(
    engine: &Engine,
    name: &str,
    text: &str,
    pos: Position,
) -> Result<(SharedModule, Arc<rhai::AST>), Box<EvalAltResult>> {
    let names = LimitNames { max_operations: 0, deadline_ms: 0, memory_mib: 0 };
    let wrap = |d: crate::model::Diagnostic| {
        let at = d.pos.map(|p| format!(", line {}, column {}", p.line, p.col)).unwrap_or_default();
        let mut e = ScriptError::new(format!("in module `{name}`{at}: {}", d.message));
        e.help = d.help;
        let mut e: Box<EvalAltResult> = e.into();
        e.set_position(pos);
        e
    };
    let mut ast = match engine.compile(text) {
        Ok(ast) => ast,
        Err(e) if matches!(*e.0, rhai::ParseErrorType::BadInput(rhai::LexError::Runtime(_))) => {
            // The deadline, read by the tokenizer.
            return Err(EvalAltResult::ErrorTerminated(rhai::Dynamic::from(super::error::DEADLINE_TOKEN), pos).into());
        }
        Err(e) => return Err(wrap(parse_diagnostic(name, text, &e, &names))),
    };
    ast.set_source(name);
    let evaluated = Module::eval_ast_as_new(Scope::new(), &ast, engine);
    evaluated.map(|m| (m.into(), Arc::new(ast))).map_err(|mut e| {
        // A limit stops the importing file as it is, at its `import` (the module's position
        // means nothing in the importer's text).
        let fatal = match &*e {
            EvalAltResult::ErrorTerminated(..) | EvalAltResult::ErrorTooManyOperations(_) => true,
            EvalAltResult::ErrorRuntime(v, _) => v.clone().try_cast::<ScriptError>().is_some_and(|s| s.fatal),
            _ => false,
        };
        if fatal {
            e.set_position(pos);
            return e;
        }
        wrap(eval_diagnostic(name, text, &e, &names))
    })
}
