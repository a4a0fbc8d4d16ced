//! The Rhai host: a sandboxed, bounded engine that evaluates one DAG file into DAG specs.
//!
//! Rhai types never leave this module. `evaluate` does no I/O: the caller hands in the source text,
//! and gets back the DAGs it declared (not yet graph-checked) plus diagnostics.

mod api;
mod args;
mod error;
mod groups;
mod memory;
mod modules;
mod python;
mod sandbox;
mod state;
mod task;
mod values;

pub use args::{KeySpec, Kind as ArgKind};
pub use modules::{ImportedModule, Imports};
use state::Budget;
pub use state::{DeclaredDag, EvalContext, SourceMap};
pub use task::{
    CallArg, ClosureCall, HttpRequest, HttpResponse, ScriptFailure, TASK_MAX_OPERATIONS, TaskScripts, TaskServices,
    VersionSource,
};

use crate::model::Diagnostic;
use error::{DEADLINE_TOKEN, LimitNames, MEMORY_TOKEN, eval_diagnostic, parse_diagnostic, parse_diagnostics};
use rhai::module_resolvers::StaticModuleResolver;
use rhai::{AST, Dynamic, Engine, FnPtr, Module, Scope, Shared};

type SharedModule = Shared<Module>;
use state::{FileCell, FileState};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The keys an operator's constructor accepts (its own, the sensor keys for a sensor, then the
/// keys every task takes) and the keys it requires; `None` for a name rhaiflow has no operator of.
/// `port` writes only keys these tables accept.
pub fn operator_keys(name: &str) -> Option<(Vec<KeySpec>, &'static [&'static str])> {
    let op = args::OPERATORS.iter().find(|op| op.name == name)?;
    let mut keys: Vec<(&'static str, ArgKind)> = op.keys.to_vec();
    if op.sensor {
        keys.extend_from_slice(args::SENSOR_KEYS);
    }
    keys.extend_from_slice(args::TASK_KEYS);
    Some((keys, op.required))
}

/// The keys every task takes (`task_id`, `retries`, ...).
pub fn task_keys() -> &'static [(&'static str, ArgKind)] {
    args::TASK_KEYS
}

/// The keys `DAG(...)` takes.
pub fn dag_keys() -> &'static [(&'static str, ArgKind)] {
    args::DAG_KEYS
}

/// The keys `default_args` may hold.
pub fn default_args_keys() -> Vec<(&'static str, ArgKind)> {
    args::default_args_keys()
}

/// The Rhai sources shipped inside the binary: the prelude every file sees, and importable modules.
pub const STDLIB: &[(&str, &str)] = &[
    ("prelude", include_str!("../../stdlib/prelude.rhai")),
    ("alerts", include_str!("../../stdlib/alerts.rhai")),
    ("schedules", include_str!("../../stdlib/schedules.rhai")),
];

/// Bounds on one file's evaluation, so a runaway file becomes that file's error.
#[derive(Debug, Clone)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall-clock limit on compiling and running one file (`[core] dag_file_timeout`).
    pub deadline: Duration,
    /// Tasks one DAG may declare (`[core] max_tasks_per_dag`).
    pub max_tasks_per_dag: usize,
    /// Dependencies (edges) one DAG may declare (`[core] max_edges_per_dag`).
    pub max_edges_per_dag: usize,
    /// Bytes one file's declarations may hold: their text plus a fixed cost per DAG, task and
    /// edge (`[core] max_dag_file_memory_mib`, in MiB).
    pub max_declared_bytes: usize,
    /// Bytes the evaluating thread may hold while one file runs, measured by the counting
    /// allocator (Rhai values in variables included); 4 × `max_declared_bytes` by default.
    pub max_memory_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 50_000_000,
            max_call_levels: 96,
            max_expr_depth: 256,
            max_string_size: 4 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            deadline: Duration::from_secs(1),
            max_tasks_per_dag: 20_000,
            max_edges_per_dag: 100_000,
            max_declared_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// What evaluating one file produced.
pub struct FileOutcome {
    pub dags: Vec<DeclaredDag>,
    pub diagnostics: Vec<Diagnostic>,
    /// The compiled file, kept when it defines closures that later calls need.
    pub program: Option<Arc<ScriptProgram>>,
    /// The dags-folder modules the file imported (directly or through another module).
    pub modules: Vec<ImportedModule>,
    /// Every dags-folder module path the file asked for, read or not.
    pub module_paths: Vec<String>,
}

/// A compiled DAG file and the closures it handed to the DAG API, callable later by `CallbackRef`.
pub struct ScriptProgram {
    ast: Arc<AST>,
    callbacks: BTreeMap<String, FnPtr>,
    /// The dags-folder modules the file imported, evaluated (its closures may call them).
    modules: Vec<ImportedModule>,
}

impl ScriptProgram {
    pub fn has_callback(&self, id: &str) -> bool {
        self.callbacks.contains_key(id)
    }

    /// Whether DAG `dag_id` handed closures to the API (its runs then need the file's text).
    pub fn has_callbacks_of(&self, dag_id: &str) -> bool {
        let prefix = format!("{dag_id}.");
        self.callbacks.range(prefix.clone()..).next().is_some_and(|(id, _)| id.starts_with(&prefix))
    }
}

/// The stdlib compiled once, shared by every engine.
pub struct ScriptHost {
    limits: ScriptLimits,
    prelude: SharedModule,
    modules: StaticModuleResolver,
}

impl ScriptHost {
    /// Compiles the stdlib. An error here is a bug in the shipped stdlib.
    pub fn new(limits: ScriptLimits) -> Result<Self, Vec<Diagnostic>> {
        fix_hashing_seed();
        let mut host = ScriptHost { limits, prelude: Module::new().into(), modules: StaticModuleResolver::new() };
        let mut errors = Vec::new();
        let compile_engine = host.raw_engine();
        for (name, source) in STDLIB {
            let file = format!("stdlib/{name}.rhai");
            match compile_module(&compile_engine, &file, source) {
                Ok(module) if *name == "prelude" => host.prelude = module,
                Ok(module) if *name == "alerts" => {
                    let mut module = (*module).clone();
                    task::register_alert_natives(&mut module);
                    host.modules.insert(*name, module);
                }
                Ok(module) => host.modules.insert(*name, (*module).clone()),
                Err(d) => errors.push(d),
            }
        }
        if errors.is_empty() { Ok(host) } else { Err(errors) }
    }

    pub fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    /// An engine with the DAG API and limits, without the stdlib.
    fn raw_engine(&self) -> Engine {
        let mut engine = Engine::new();
        let l = &self.limits;
        engine
            .set_max_operations(l.max_operations)
            .set_max_call_levels(l.max_call_levels)
            .set_max_expr_depths(l.max_expr_depth, l.max_expr_depth)
            .set_max_string_size(l.max_string_size)
            .set_max_array_size(l.max_array_size)
            .set_max_map_size(l.max_map_size)
            .set_max_modules(32)
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(true);
        // A DAG file runs once per parse: optimising its AST costs more than it saves, and Rhai's
        // string interner scans its whole table to evict on every new string (measured: ~15 % of a
        // 1,000-file load; BENCHMARKS.md).
        engine.set_optimization_level(rhai::OptimizationLevel::None).set_max_strings_interned(0);
        // Sandbox: no `eval` of strings, imports only of the stdlib and of modules under the dags
        // folder (`modules`), output goes to the trace log.
        engine.disable_symbol("eval");
        engine.set_module_resolver(self.modules.clone());
        engine.on_print(|text| {
            if !task::print_to_task(text) {
                tracing::debug!(target: "rhaiflow::dag_file", "{text}");
            }
        });
        engine.on_debug(|text, _, pos| {
            if !task::print_to_task(text) {
                tracing::debug!(target: "rhaiflow::dag_file", "{pos:?} {text}");
            }
        });
        api::register(&mut engine);
        values::register(&mut engine);
        sandbox::register(&mut engine);
        task::register(&mut engine);
        engine
    }

    /// An engine for one thread; evaluate many files with it, one at a time.
    pub fn engine(&self) -> FileEngine {
        let mut engine = self.raw_engine();
        engine.register_global_module(self.prelude.clone());
        let base = Instant::now();
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let watched = deadline.clone();
        let memory_base = Arc::new(AtomicIsize::new(0));
        let base_bytes = memory_base.clone();
        let max_memory = isize::try_from(self.limits.max_memory_bytes).unwrap_or(isize::MAX);
        // Reading the clock costs ~25 ns; every 64 operations keeps that under a few per cent while
        // a slow native (a 4 MiB string copy) can overshoot the deadline by only a few dozen ms.
        engine.on_progress(move |ops| {
            if ops % 64 != 0 {
                return None;
            }
            if elapsed_ns(base) > watched.load(Ordering::Relaxed) {
                return Some(Dynamic::from(DEADLINE_TOKEN));
            }
            let held = memory::live_bytes().saturating_sub(base_bytes.load(Ordering::Relaxed));
            (held > max_memory).then(|| Dynamic::from(MEMORY_TOKEN))
        });
        // Compiling cannot be interrupted from outside, and some sources compile in quadratic time
        // (tens of thousands of top-level `let`s); the tokenizer reads the same deadline per token.
        let watched = deadline.clone();
        // `var` is reserved in Rhai, but `ctx.var("name")` is the task context's method (as
        // Airflow's `var`): after a `.` or `?.` the word is read as a name.
        let after_dot = std::sync::atomic::AtomicBool::new(false);
        #[allow(deprecated)] // "volatile", not deprecated: the only hook into Rhai's parser
        engine.on_parse_token(move |token, _, _| {
            if elapsed_ns(base) > watched.load(Ordering::Relaxed) {
                return rhai::Token::LexError(Box::new(rhai::LexError::Runtime(DEADLINE_TOKEN.into())));
            }
            let dot = after_dot.swap(matches!(token, rhai::Token::Period | rhai::Token::Elvis), Ordering::Relaxed);
            match token {
                rhai::Token::Reserved(word) if dot && word.as_str() == "var" => rhai::Token::Identifier(word),
                token => token,
            }
        });
        let imports = modules::SharedSession::default();
        engine.set_module_resolver(modules::Resolver {
            stdlib: self.modules.clone(),
            session: imports.clone(),
            max_bytes: self.limits.max_string_size,
        });
        FileEngine { engine, base, deadline, memory_base, limits: self.limits.clone(), imports }
    }

    /// Evaluates one file with a fresh engine (convenient; the loader reuses engines per thread).
    pub fn evaluate(&self, file: &str, source: &str, ctx: &EvalContext) -> FileOutcome {
        self.engine().evaluate(file, source, ctx)
    }
}

/// Rhai names a closure `anon$<hash of its text>`, with a hasher seeded at random per process
/// unless a seed is set before Rhai's first use. A `CallbackRef` (and so a DAG's version hash) must
/// be the same in every process — the scheduler calls a closure that `dags trigger` recorded —
/// so the seed is fixed, here, before any engine exists (`ScriptHost::new` is Rhai's first use).
fn fix_hashing_seed() {
    static SEED: std::sync::Once = std::sync::Once::new();
    SEED.call_once(|| {
        let _ = rhai::config::hashing::set_hashing_seed(Some([0x5248_4146, 0x6c6f_7700, 0x7461_736b, 0x0000_0001]));
    });
}

/// Where `key:` is written at or after `from` (else before it), for a caret on a key of a call.
pub fn locate_key(source: &str, from: crate::model::SourcePos, key: &str) -> Option<crate::model::SourcePos> {
    api::locate_key(source, from, key)
}

fn elapsed_ns(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn compile_module(engine: &Engine, file: &str, source: &str) -> Result<SharedModule, Diagnostic> {
    let limits = LimitNames { max_operations: 0, deadline_ms: 0, memory_mib: 0 };
    let mut ast = engine.compile(source).map_err(|e| parse_diagnostic(file, source, &e, &limits))?;
    ast.set_source(file);
    let module =
        Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(|e| eval_diagnostic(file, source, &e, &limits))?;
    Ok(module.into())
}

/// One thread's engine. Not shared: a shared engine serialises on its string cache.
pub struct FileEngine {
    engine: Engine,
    base: Instant,
    deadline: Arc<AtomicU64>,
    /// The thread's live bytes when the current file started.
    memory_base: Arc<AtomicIsize>,
    limits: ScriptLimits,
    /// Where the current evaluation's `import`s go, and what they read.
    imports: modules::SharedSession,
}

impl FileEngine {
    /// Compiles and runs one DAG file. `file` is the name diagnostics show.
    pub fn evaluate(&mut self, file: &str, source: &str, ctx: &EvalContext) -> FileOutcome {
        self.evaluate_with(file, source, ctx, Imports::Stdlib)
    }

    /// As [`FileEngine::evaluate`], with `import`s of modules other than the stdlib found as
    /// `imports` says.
    pub fn evaluate_with(&mut self, file: &str, source: &str, ctx: &EvalContext, imports: Imports) -> FileOutcome {
        self.imports.lock().unwrap_or_else(|p| p.into_inner()).begin(imports);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.evaluate_inner(file, source, ctx)));
        let (modules, module_paths) = self.imports.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = outcome.map(|o| FileOutcome { modules, module_paths: module_paths.clone(), ..o });
        outcome.unwrap_or_else(|_| FileOutcome {
            dags: Vec::new(),
            diagnostics: vec![
                Diagnostic::new(file, None, "internal error while evaluating this file")
                    .with_help("this is a bug in rhaiflow; please report it with the file"),
            ],
            program: None,
            modules: Vec::new(),
            module_paths,
        })
    }

    fn evaluate_inner(&mut self, file: &str, source: &str, ctx: &EvalContext) -> FileOutcome {
        let fail = |diagnostics: Vec<Diagnostic>| FileOutcome {
            dags: Vec::new(),
            diagnostics,
            program: None,
            modules: Vec::new(),
            module_paths: Vec::new(),
        };
        let shared_source: Arc<str> = Arc::from(source);
        let started = Instant::now();
        let deadline_ms = u64::try_from(self.limits.deadline.as_millis()).unwrap_or(u64::MAX);
        let memory_base = memory::live_bytes();
        self.memory_base.store(memory_base, Ordering::Relaxed);
        let budget = Budget {
            memory_base,
            max_memory: isize::try_from(self.limits.max_memory_bytes).unwrap_or(isize::MAX),
            deadline: started.checked_add(self.limits.deadline).unwrap_or(started + Duration::from_secs(86_400)),
            deadline_ms,
            max_tasks_per_dag: self.limits.max_tasks_per_dag,
            max_edges_per_dag: self.limits.max_edges_per_dag,
            max_declared_bytes: self.limits.max_declared_bytes,
        };
        let state = FileState::new(file.to_string(), shared_source, ctx.clone(), budget);
        let cell = FileCell(Arc::new(Mutex::new(state)));
        let limit_ns =
            elapsed_ns(self.base).saturating_add(u64::try_from(self.limits.deadline.as_nanos()).unwrap_or(u64::MAX));
        self.deadline.store(limit_ns, Ordering::Relaxed);
        let names = LimitNames {
            max_operations: self.limits.max_operations,
            deadline_ms,
            memory_mib: self.limits.max_memory_bytes >> 20,
        };
        let compiled = self.engine.compile(source);
        let ast = match compiled {
            Ok(ast) => ast,
            Err(e) => {
                self.deadline.store(u64::MAX, Ordering::Relaxed);
                return fail(parse_diagnostics(&self.engine, file, source, &e, &names));
            }
        };
        self.engine.set_default_tag(Dynamic::from(cell.clone()));
        let result = self.engine.run_ast_with_scope(&mut Scope::new(), &ast);
        self.engine.set_default_tag(Dynamic::UNIT);
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        let mut state = {
            let mut guard = cell.0.lock().unwrap_or_else(|p| p.into_inner());
            let empty = FileState::new(String::new(), Arc::from(""), ctx.clone(), Budget::unlimited());
            std::mem::replace(&mut *guard, empty)
        };
        if let Err(e) = result {
            // The errors recorded before the one that stopped the file are reported too.
            let mut diagnostics = state.take_recorded();
            diagnostics.push(eval_diagnostic(file, source, &e, &names));
            return fail(diagnostics);
        }
        let callbacks = state.callbacks.clone();
        let (dags, diagnostics) = state.finish();
        let modules = self.imports.lock().unwrap_or_else(|p| p.into_inner()).done().to_vec();
        let program =
            (!callbacks.is_empty()).then(|| Arc::new(ScriptProgram { ast: Arc::new(ast), callbacks, modules }));
        FileOutcome { dags, diagnostics, program, modules: Vec::new(), module_paths: Vec::new() }
    }
}
