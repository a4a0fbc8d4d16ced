//! Task closures: the closures a DAG file hands to `RhaiOperator`, `BranchOperator`,
//! `ShortCircuitOperator` (and `HttpOperator`'s `response_check`/`response_filter`), called when
//! their task runs.
//!
//! **The closure-call API.** [`TaskScripts`] is one per process (the operators' `Env` holds it).
//! [`TaskScripts::call`] takes the DAG version the run is pinned to (its hash), a loader for that
//! version's file text (called only on a cache miss: the operators read it from the store,
//! `Tx::dag_version_source`), a [`ClosureCall`] (the `CallbackRef`, the arguments as
//! [`CallArg`]s — plain JSON, or the task context `ctx` built from JSON — and a wall-clock
//! timeout), and the [`TaskServices`] the closure may use (XCom, variables, the task's log, HTTP).
//! It re-evaluates the version's file once in the sandbox (so the closures come back with their
//! captured variables), caches the result by version hash (bounded, least recently used out),
//! and calls the closure on the calling thread with an engine from a pool: call it from a
//! blocking thread (`tokio::task::spawn_blocking`), never from an async one. A closure gets as many
//! of the given arguments as it declares parameters (`|ctx|` gets the first, `|ctx, args|` two,
//! ...). The answer is the closure's value as JSON, or a [`ScriptFailure`]: the message and the
//! place in the DAG file (`boom.rhai:4:5`), for a `throw`, a runtime error, a value with no JSON
//! form, the timeout, or the operation limit.
//!
//! Rhai types stay here: closures see `ctx` (`TaskCtx`, `ctx.ti` is `TaskTi`) and the `json` and
//! `http` modules, whose natives reach the outside only through [`TaskServices`] found in the
//! engine's tag, so while a DAG file is parsed (no such tag) they fail.

use super::error::{DEADLINE_TOKEN, MEMORY_TOKEN, ScriptError};
use super::{EvalContext, FileEngine, ScriptHost, ScriptLimits, ScriptProgram, elapsed_ns, memory};
use crate::model::CallbackRef;
use rhai::{Array, Dynamic, Engine, EvalAltResult, FLOAT, INT, ImmutableString, Map, Module, NativeCallContext};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Operations one closure call may take: a bound besides the wall-clock deadline (a closure doing
/// ~10 M operations per second runs out of these in well over 10 minutes).
pub const TASK_MAX_OPERATIONS: u64 = 10_000_000_000;

/// DAG versions whose compiled file is kept (each holds an AST and its closures).
pub const VERSION_CACHE: usize = 128;

/// How long an `http::get`/`http::post` waits by default (capped by the closure's deadline).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A DAG file's text as a version keeps it, with the dags-folder modules it imports: `hash`
/// covers the file name, the text and each module's path and text.
#[derive(Debug, Clone)]
pub struct VersionSource {
    pub hash: String,
    /// The file's path relative to the dags folder, as positions show it (`boom.rhai:4:5`).
    pub file: String,
    pub text: Arc<str>,
    /// (path relative to the dags folder, text) of each module imported, in import order.
    pub modules: Arc<[(String, Arc<str>)]>,
}

impl VersionSource {
    pub fn new(file: impl Into<String>, text: Arc<str>) -> VersionSource {
        VersionSource::with_modules(file, text, Vec::new())
    }

    pub fn with_modules(file: impl Into<String>, text: Arc<str>, modules: Vec<(String, Arc<str>)>) -> VersionSource {
        let file = file.into();
        let mut hasher = Sha256::new();
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        // A file without modules keeps the hash it had before modules existed.
        for (path, text) in &modules {
            hasher.update([0]);
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        VersionSource { hash: hex::encode(hasher.finalize()), file, text, modules: modules.into() }
    }

    /// A version's source as the store kept it.
    pub fn kept(file: String, text: String, modules: Vec<(String, String)>) -> VersionSource {
        let modules = modules.into_iter().map(|(p, t)| (p, Arc::from(t))).collect();
        VersionSource::with_modules(file, Arc::from(text), modules)
    }
}

/// An HTTP request a closure makes (`http::get`, `http::post`).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout: Duration,
}

/// Its answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub text: String,
}

/// What a task closure may reach outside the sandbox; the operators implement it.
pub trait TaskServices: Send + Sync {
    /// The XCom `key` that `task_id` pushed in this run.
    fn xcom_pull(&self, task_id: &str, key: &str) -> Result<Option<serde_json::Value>, String>;
    fn xcom_push(&self, key: &str, value: serde_json::Value) -> Result<(), String>;
    /// `[variables]` by name.
    fn variable(&self, name: &str) -> Option<String>;
    /// A line in the task's log.
    fn log(&self, line: &str);
    fn http(&self, request: HttpRequest) -> Result<HttpResponse, String>;
    /// Sends `text` through the alert channel `channel` (`alerts::send`), with `title` where the
    /// channel has one (a mail's subject, a DingTalk markdown title); the service's answer.
    fn send_alert(&self, channel: &str, title: Option<&str>, text: &str) -> Result<String, String> {
        let _ = (channel, title, text);
        Err("alert channels are not reachable here".into())
    }
}

/// One argument of a closure call.
#[derive(Debug, Clone)]
pub enum CallArg {
    /// A plain value.
    Json(serde_json::Value),
    /// The task context: an object of plain values (`ds`, `params`, `dag_run`, ...), whose `ti`
    /// member (`try_number`, `task_id`, ...) becomes `ctx.ti` with `xcom_pull`/`xcom_push`.
    Context(serde_json::Value),
}

/// A closure to call and what it gets.
#[derive(Debug, Clone)]
pub struct ClosureCall {
    pub callback: CallbackRef,
    pub args: Vec<CallArg>,
    /// Wall-clock bound on the call (the task's `execution_timeout`, else `[core] task_script_timeout`).
    pub timeout: Duration,
}

/// Why a closure call failed: the message, and where in the DAG file when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptFailure {
    pub message: String,
    /// `file:line:col`.
    pub position: Option<String>,
}

impl ScriptFailure {
    fn new(message: impl Into<String>) -> ScriptFailure {
        ScriptFailure { message: message.into(), position: None }
    }
}

impl fmt::Display for ScriptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A version's file, evaluated for its closures.
struct Compiled {
    file: String,
    program: Arc<ScriptProgram>,
    /// Parameters each closure declares (its captured variables not counted), by callback id.
    arity: HashMap<String, usize>,
    /// The file's top-level `import "path" as alias;`: a closure calling `alias::f` finds them.
    /// A dags-folder module comes evaluated from the version's own text of it; the stdlib's are
    /// looked up per call.
    imports: Vec<(ImmutableString, ImmutableString, Option<super::SharedModule>)>,
}

thread_local! {
    /// The services of the closure running on this thread, for `print` (engine-wide callback).
    static PRINTING: std::cell::RefCell<Option<Arc<dyn TaskServices>>> = const { std::cell::RefCell::new(None) };
}

/// While alive, `print` and `debug` on this thread go to the task's log (as Python's `print` in
/// an Airflow task does).
struct PrintTo;

impl PrintTo {
    fn task(services: Arc<dyn TaskServices>) -> PrintTo {
        PRINTING.with(|p| *p.borrow_mut() = Some(services));
        PrintTo
    }
}

impl Drop for PrintTo {
    fn drop(&mut self) {
        PRINTING.with(|p| *p.borrow_mut() = None);
    }
}

/// Writes `text` to the log of the task whose closure runs on this thread; `false` when none does
/// (a DAG file being parsed: its `print` goes to rhaiflow's trace log).
pub(super) fn print_to_task(text: &str) -> bool {
    let services = PRINTING.with(|p| p.borrow().clone());
    match services {
        Some(s) => {
            s.log(text);
            true
        }
        None => false,
    }
}

/// Calls a closure as `FnPtr::call` does, with the file's top-level imports in scope (a later
/// call has no trace of the evaluation that imported them; the stdlib modules are static, so
/// resolving them again is a lookup).
fn call_closure(
    engine: &Engine,
    compiled: &Compiled,
    fn_ptr: &rhai::FnPtr,
    mut args: Vec<Dynamic>,
) -> RhaiResult<Dynamic> {
    let mut global = engine.new_global_runtime_state();
    global.lib.push(compiled.program.ast.shared_lib().clone());
    // A closure made inside a module's function, and the functions it calls, live there.
    for m in &compiled.program.modules {
        global.lib.push(m.ast.shared_lib().clone());
    }
    for (alias, path, kept) in &compiled.imports {
        let module = match kept {
            Some(m) => m.clone(),
            None => engine.module_resolver().resolve(engine, None, path, rhai::Position::NONE)?,
        };
        global.push_import(alias.clone(), module);
    }
    let ctx = NativeCallContext::new_with_all_fields(engine, fn_ptr.fn_name(), None, &global, rhai::Position::NONE);
    fn_ptr.call_raw(&ctx, None, args.as_mut_slice())
}

type Slot = Arc<OnceLock<Result<Arc<Compiled>, ScriptFailure>>>;

struct VersionCache {
    entries: HashMap<String, (Slot, u64)>,
    tick: u64,
}

/// The closure host of one process: compiled versions (cached) and a pool of engines.
pub struct TaskScripts {
    limits: ScriptLimits,
    eval: EvalContext,
    host: OnceLock<Result<ScriptHost, String>>,
    engines: Mutex<Vec<FileEngine>>,
    cache: Mutex<VersionCache>,
}

/// What natives of a running closure find in the engine's tag.
#[derive(Clone)]
struct TaskCell {
    services: Arc<dyn TaskServices>,
    deadline: Instant,
}

impl TaskScripts {
    /// `limits` bound re-evaluating a version's file (as the loader's do); closure calls get
    /// [`TASK_MAX_OPERATIONS`] and their own deadline. `eval` is the loader's context (its `now`
    /// is replaced by the time of each evaluation).
    pub fn new(limits: ScriptLimits, eval: EvalContext) -> TaskScripts {
        TaskScripts {
            limits: ScriptLimits { max_operations: TASK_MAX_OPERATIONS, ..limits },
            eval,
            host: OnceLock::new(),
            engines: Mutex::new(Vec::new()),
            cache: Mutex::new(VersionCache { entries: HashMap::new(), tick: 0 }),
        }
    }

    /// Seeds the cache with a program the loader already evaluated (`tasks test`, which may have
    /// no database to read the version's source from). `file` is the path positions show.
    pub fn preload(&self, version_hash: &str, file: &str, program: Arc<ScriptProgram>) {
        let compiled = Arc::new(compile_info(file.to_string(), program));
        let slot: Slot = Arc::new(OnceLock::new());
        let _ = slot.set(Ok(compiled));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        cache.entries.insert(version_hash.to_string(), (slot, tick));
        evict(&mut cache);
    }

    /// Calls a closure of DAG version `version_hash` (see the module's doc). `load` gives the
    /// version's file (`Ok(None)`: the version keeps no source) and runs only on a cache miss.
    pub fn call(
        &self,
        version_hash: &str,
        load: &dyn Fn() -> Result<Option<VersionSource>, String>,
        call: ClosureCall,
        services: Arc<dyn TaskServices>,
    ) -> Result<serde_json::Value, ScriptFailure> {
        let started = Instant::now();
        let compiled = self.compiled(version_hash, load)?;
        let id = &call.callback.0;
        let Some(fn_ptr) = compiled.program.callbacks.get(id).cloned() else {
            return Err(ScriptFailure::new(format!(
                "the closure given as {} is not in this DAG version's file `{}` (was it declared conditionally?)",
                field_of(id),
                compiled.file
            )));
        };
        let wanted = compiled.arity.get(id).copied().unwrap_or(call.args.len());
        if wanted > call.args.len() {
            return Err(ScriptFailure::new(format!(
                "the closure given as {} takes {wanted} parameters; it is given at most {}",
                field_of(id),
                call.args.len()
            )));
        }
        let cell = TaskCell {
            services,
            deadline: started.checked_add(call.timeout).unwrap_or(started + Duration::from_secs(86_400 * 365)),
        };
        let args: Vec<Dynamic> = call.args.into_iter().take(wanted).map(call_arg).collect();
        let mut engine = self.take_engine()?;
        let timeout = call.timeout;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let deadline_ns = elapsed_ns(engine.base).saturating_add(
                u64::try_from(timeout.saturating_sub(started.elapsed()).as_nanos()).unwrap_or(u64::MAX),
            );
            engine.memory_base.store(memory::live_bytes(), Ordering::Relaxed);
            engine.deadline.store(deadline_ns, Ordering::Relaxed);
            engine.imports.lock().unwrap_or_else(|p| p.into_inner()).pin(&compiled.program.modules);
            let _printing = PrintTo::task(cell.services.clone());
            engine.engine.set_default_tag(Dynamic::from(cell));
            let r = call_closure(&engine.engine, &compiled, &fn_ptr, args);
            engine.engine.set_default_tag(Dynamic::UNIT);
            engine.deadline.store(u64::MAX, Ordering::Relaxed);
            r
        }));
        let result = match result {
            Ok(r) => {
                self.engines.lock().unwrap_or_else(|p| p.into_inner()).push(engine);
                r
            }
            Err(_) => return Err(ScriptFailure::new("internal error while calling the closure (a bug in rhaiflow)")),
        };
        match result {
            Ok(value) => {
                to_json(&value, "the closure's value").map_err(|message| ScriptFailure { message, position: None })
            }
            Err(e) => Err(failure(&e, &compiled.file, timeout, self.limits.max_operations)),
        }
    }

    fn host(&self) -> Result<&ScriptHost, ScriptFailure> {
        let host = self.host.get_or_init(|| {
            ScriptHost::new(self.limits.clone()).map_err(|errors| {
                let text: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
                format!("the built-in stdlib does not compile (a bug): {}", text.join("; "))
            })
        });
        host.as_ref().map_err(|e| ScriptFailure::new(e.clone()))
    }

    fn take_engine(&self) -> Result<FileEngine, ScriptFailure> {
        if let Some(engine) = self.engines.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(engine);
        }
        Ok(self.host()?.engine())
    }

    /// The version's compiled file: from the cache, else loaded and evaluated once (concurrent
    /// callers of the same version wait for the first).
    fn compiled(
        &self,
        version_hash: &str,
        load: &dyn Fn() -> Result<Option<VersionSource>, String>,
    ) -> Result<Arc<Compiled>, ScriptFailure> {
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.tick += 1;
            let tick = cache.tick;
            match cache.entries.get_mut(version_hash) {
                Some((slot, used)) => {
                    *used = tick;
                    slot.clone()
                }
                None => {
                    let slot: Slot = Arc::new(OnceLock::new());
                    cache.entries.insert(version_hash.to_string(), (slot.clone(), tick));
                    evict(&mut cache);
                    slot
                }
            }
        };
        let result = slot.get_or_init(|| self.evaluate(version_hash, load)).clone();
        if result.is_err() {
            // A failed load (the store was busy, say) is tried again by the next call.
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.entries.get(version_hash).is_some_and(|(s, _)| Arc::ptr_eq(s, &slot)) {
                cache.entries.remove(version_hash);
            }
        }
        result
    }

    fn evaluate(
        &self,
        version_hash: &str,
        load: &dyn Fn() -> Result<Option<VersionSource>, String>,
    ) -> Result<Arc<Compiled>, ScriptFailure> {
        let short = version_hash.get(..12).unwrap_or(version_hash);
        let source = load()
            .map_err(|e| ScriptFailure::new(format!("cannot read the source of DAG version {short}: {e}")))?
            .ok_or_else(|| {
                ScriptFailure::new(format!(
                    "DAG version {short} keeps no source text (recorded by an older rhaiflow, or it has no closures); \
                     its closures cannot run: trigger a new run of the DAG"
                ))
            })?;
        let mut engine = self.take_engine()?;
        let ctx = EvalContext { now: chrono::Utc::now(), ..self.eval.clone() };
        let imports = super::Imports::Pinned(source.modules.clone());
        let outcome = engine.evaluate_with(&source.file, &source.text, &ctx, imports);
        self.engines.lock().unwrap_or_else(|p| p.into_inner()).push(engine);
        match outcome.program {
            Some(program) => Ok(Arc::new(compile_info(source.file, program))),
            None => {
                let first = outcome.diagnostics.first().map(|d| d.to_string()).unwrap_or_default();
                Err(ScriptFailure::new(format!(
                    "the DAG file `{}` of version {short} did not evaluate to its closures: {first}",
                    source.file
                )))
            }
        }
    }
}

/// `callable` of `dag.task.callable#anon$…`, for messages.
fn field_of(id: &str) -> String {
    let named = id.split('#').next().unwrap_or(id);
    match named.rsplit_once('.') {
        Some((_, field)) => format!("`{field}`"),
        None => format!("`{named}`"),
    }
}

fn compile_info(file: String, program: Arc<ScriptProgram>) -> Compiled {
    let params: HashMap<&str, usize> = program
        .ast
        .iter_functions()
        .chain(program.modules.iter().flat_map(|m| m.ast.iter_functions()))
        .map(|f| (f.name, f.params.len()))
        .collect();
    let arity = program
        .callbacks
        .iter()
        .filter_map(|(id, f)| {
            let declared = params.get(f.fn_name())?;
            Some((id.clone(), declared.saturating_sub(f.curry().len())))
        })
        .collect();
    let imports = program
        .ast
        .statements()
        .iter()
        .filter_map(|stmt| match stmt {
            rhai::Stmt::Import(import, _) => match &import.0 {
                rhai::Expr::StringConstant(path, _) => {
                    let name = super::modules::module_path(path).ok();
                    let kept =
                        program.modules.iter().find(|m| Some(&m.path) == name.as_ref()).map(|m| m.module.clone());
                    Some((import.1.name.clone(), path.clone(), kept))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    Compiled { file, program, arity, imports }
}

fn evict(cache: &mut VersionCache) {
    while cache.entries.len() > VERSION_CACHE {
        let Some(oldest) = cache.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else {
            break;
        };
        cache.entries.remove(&oldest);
    }
}

/// A failed call in words, with the innermost position in the DAG file.
fn failure(err: &EvalAltResult, file: &str, timeout: Duration, max_operations: u64) -> ScriptFailure {
    let inner = innermost(err);
    let message = match inner {
        EvalAltResult::ErrorRuntime(value, _) => match value.clone().try_cast::<ScriptError>() {
            Some(e) => e.message,
            None => format!("error thrown: {}", thrown_text(value)),
        },
        EvalAltResult::ErrorTerminated(value, _) => match value.clone().try_cast::<ScriptError>() {
            Some(e) => e.message,
            None if value.clone().into_string().is_ok_and(|t| t == MEMORY_TOKEN) => {
                "the closure held more memory than a DAG file may (`[core] max_dag_file_memory_mib` × 4)".into()
            }
            None if value.clone().into_string().is_ok_and(|t| t == DEADLINE_TOKEN) => format!(
                "the closure ran longer than its {} limit (the task's `execution_timeout`, else `[core] task_script_timeout`)",
                crate::model::TimeSpan::from_millis(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            ),
            None => format!("the closure was stopped: {value}"),
        },
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("the closure exceeded the limit of {max_operations} operations; look for an endless loop")
        }
        EvalAltResult::ErrorStackOverflow(_) => "function calls nested too deeply".into(),
        other => other.to_string(),
    };
    let message = strip_position(&message);
    let pos = inner.position();
    let position = pos.line().map(|line| format!("{file}:{line}:{}", pos.position().unwrap_or(1)));
    ScriptFailure { message, position }
}

/// Rhai appends ` (line 4, position 5)` to some messages; the position is given separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(at) if message.ends_with(')') => message[..at].to_string(),
        _ => message.to_string(),
    }
}

fn innermost(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
            innermost(inner)
        }
        other => other,
    }
}

fn thrown_text(value: &Dynamic) -> String {
    if value.is_string() {
        return value.clone().into_string().unwrap_or_default();
    }
    match to_json(value, "thrown value") {
        Ok(json) => json.to_string(),
        Err(_) => value.to_string(),
    }
}

// ---- values ---------------------------------------------------------------------------------

/// A JSON value as Rhai sees it: `null` is `()`, integers are `INT`, other numbers `FLOAT`.
pub(super) fn from_json(value: &serde_json::Value) -> Dynamic {
    match value {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => Dynamic::from_bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        serde_json::Value::Array(items) => Dynamic::from_array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(map) => {
            Dynamic::from_map(map.iter().map(|(k, v)| (k.as_str().into(), from_json(v))).collect::<Map>())
        }
    }
}

/// A Rhai value as JSON, or what at `path` has no JSON form.
pub(super) fn to_json(value: &Dynamic, path: &str) -> Result<serde_json::Value, String> {
    let value = value.flatten_clone();
    if value.is_unit() {
        return Ok(serde_json::Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(b.into());
    }
    if let Ok(i) = value.as_int() {
        return Ok(i.into());
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{path} is {f}, which JSON cannot hold"));
    }
    if let Ok(c) = value.as_char() {
        return Ok(c.to_string().into());
    }
    if value.is_string() {
        return Ok(value.into_string().unwrap_or_default().into());
    }
    if value.is_blob() {
        let blob = value.into_blob().unwrap_or_default();
        return Ok(blob.into_iter().map(serde_json::Value::from).collect());
    }
    if value.is_array() {
        let items = value.into_array().unwrap_or_default();
        return items.iter().enumerate().map(|(i, v)| to_json(v, &format!("{path}[{i}]"))).collect();
    }
    if value.is_map() {
        let map = value.cast::<Map>();
        let mut out = serde_json::Map::new();
        for (k, v) in &map {
            out.insert(k.to_string(), to_json(v, &format!("{path}.{k}"))?);
        }
        return Ok(serde_json::Value::Object(out));
    }
    if value.is::<rhai::FnPtr>() {
        return Err(format!("{path} is a function, which has no JSON form"));
    }
    Err(format!("{path} is a value of type `{}`, which has no JSON form", short_type(value.type_name())))
}

fn short_type(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

fn call_arg(arg: CallArg) -> Dynamic {
    match arg {
        CallArg::Json(v) => from_json(&v),
        CallArg::Context(v) => {
            let mut data = from_json(&v).try_cast::<Map>().unwrap_or_default();
            let ti = data.remove("ti").and_then(|t| t.try_cast::<Map>()).unwrap_or_default();
            let ti = Dynamic::from(TaskTi(Arc::new(ti)));
            data.insert("task_instance".into(), ti.clone());
            data.insert("ti".into(), ti);
            Dynamic::from(TaskCtx(Arc::new(data)))
        }
    }
}

// ---- what closures see ---------------------------------------------------------------------

/// `ctx`: the task's context, read-only.
#[derive(Clone)]
struct TaskCtx(Arc<Map>);

/// `ctx.ti`.
#[derive(Clone)]
struct TaskTi(Arc<Map>);

/// `ctx`'s members (each a property: `ctx.ds`; also `ctx["ds"]`).
const CTX_FIELDS: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "params",
    "dag_run",
    "run_id",
    "dag_id",
    "task_id",
    "ti",
    "task_instance",
    "conf",
    // A callback's ctx: the alert context (`alert::AlertContext`).
    "event",
    "event_text",
    "state",
    "try_number",
    "max_tries",
    "tries",
    "next_try_at",
    "error",
    "exception",
    "reason",
    "log_tail",
    "log_url",
    "duration",
    "duration_text",
    "hostname",
    "email",
];

const TI_FIELDS: &[&str] = &[
    "try_number",
    "max_tries",
    "task_id",
    "dag_id",
    "run_id",
    // A callback's ctx.ti.
    "state",
    "tries",
    "log_url",
    "hostname",
    "duration",
    "next_try_at",
];

fn member(map: &Map, name: &str, of: &str) -> RhaiResult<Dynamic> {
    map.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        ScriptError::new(format!("`{of}` has no `{name}`; it has {}", known.join(", "))).into()
    })
}

/// An error of a native, placed at its call in the closure (Rhai leaves natives' errors unplaced).
fn at<T>(ctx: &NativeCallContext, r: RhaiResult<T>) -> RhaiResult<T> {
    r.map_err(|mut e| {
        if e.position().is_none() {
            e.set_position(ctx.call_position());
        }
        e
    })
}

fn cell(ctx: &NativeCallContext, what: &str) -> RhaiResult<TaskCell> {
    ctx.tag().and_then(|t| t.clone().try_cast::<TaskCell>()).ok_or_else(|| {
        ScriptError::new(format!("`{what}` is only available inside a task's closure, not while a DAG file is parsed"))
            .into()
    })
}

fn pull(ctx: &NativeCallContext, ti: &TaskTi, task_id: &str, key: &str) -> RhaiResult<Dynamic> {
    at(ctx, pull_raw(ctx, ti, task_id, key))
}

fn pull_raw(ctx: &NativeCallContext, ti: &TaskTi, task_id: &str, key: &str) -> RhaiResult<Dynamic> {
    let cell = cell(ctx, "ti.xcom_pull")?;
    let _ = ti;
    let value = cell.services.xcom_pull(task_id, key).map_err(|e| ScriptError::new(format!("xcom_pull: {e}")))?;
    Ok(value.as_ref().map(from_json).unwrap_or(Dynamic::UNIT))
}

fn push(ctx: &NativeCallContext, key: &str, value: &Dynamic) -> RhaiResult<()> {
    at(ctx, push_raw(ctx, key, value))
}

fn push_raw(ctx: &NativeCallContext, key: &str, value: &Dynamic) -> RhaiResult<()> {
    let cell = cell(ctx, "ti.xcom_push")?;
    let json = to_json(value, &format!("the XCom `{key}`")).map_err(ScriptError::new)?;
    cell.services.xcom_push(key, json).map_err(|e| ScriptError::new(format!("xcom_push: {e}")).into())
}

fn variable(ctx: &NativeCallContext, name: &str, default: Option<Dynamic>) -> RhaiResult<Dynamic> {
    at(ctx, variable_raw(ctx, name, default))
}

fn variable_raw(ctx: &NativeCallContext, name: &str, default: Option<Dynamic>) -> RhaiResult<Dynamic> {
    let cell = cell(ctx, "ctx.var")?;
    match (cell.services.variable(name), default) {
        (Some(v), _) => Ok(Dynamic::from(ImmutableString::from(v))),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ScriptError::new(format!(
            "no variable `{name}`; set it under `[variables]` in rhaiflow.toml (or pass a default: `ctx.var(\"{name}\", default)`)"
        ))
        .into()),
    }
}

fn log_value(ctx: &NativeCallContext, value: &Dynamic) -> RhaiResult<()> {
    at(ctx, log_value_raw(ctx, value))
}

fn log_value_raw(ctx: &NativeCallContext, value: &Dynamic) -> RhaiResult<()> {
    let cell = cell(ctx, "ctx.log")?;
    let text = if value.is_string() { value.clone().into_string().unwrap_or_default() } else { value.to_string() };
    cell.services.log(&text);
    Ok(())
}

// ---- json and http modules ------------------------------------------------------------------

fn json_parse(text: &str) -> RhaiResult<Dynamic> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ScriptError::new(format!("json::parse: not JSON: {e}")))?;
    Ok(from_json(&value))
}

fn json_stringify(value: &Dynamic, pretty: bool) -> RhaiResult<ImmutableString> {
    let json = to_json(value, "the value").map_err(|e| ScriptError::new(format!("json::stringify: {e}")))?;
    let text = if pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) };
    Ok(text.unwrap_or_default().into())
}

/// Seconds from an option (`timeout: 5`, `timeout: 0.5`).
fn seconds(value: &Dynamic) -> Option<Duration> {
    let secs = value.as_float().ok().or_else(|| value.as_int().ok().map(|i| i as FLOAT))?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn http_call(
    ctx: &NativeCallContext,
    method: &str,
    url: &str,
    body: Option<Dynamic>,
    opts: Option<Map>,
) -> RhaiResult<Map> {
    at(ctx, http_call_raw(ctx, method, url, body, opts))
}

fn http_call_raw(
    ctx: &NativeCallContext,
    method: &str,
    url: &str,
    body: Option<Dynamic>,
    opts: Option<Map>,
) -> RhaiResult<Map> {
    let what = format!("http::{}", method.to_ascii_lowercase());
    let cell = cell(ctx, &what)?;
    let opts = opts.unwrap_or_default();
    for key in opts.keys() {
        if !["headers", "timeout"].contains(&key.as_str()) {
            return Err(
                ScriptError::new(format!("{what}: unknown option `{key}`; options are `headers`, `timeout`")).into()
            );
        }
    }
    let mut headers = Vec::new();
    if let Some(h) = opts.get("headers") {
        let map =
            h.clone().try_cast::<Map>().ok_or_else(|| ScriptError::new(format!("{what}: `headers` must be a map")))?;
        for (k, v) in map {
            let text = if v.is_string() { v.into_string().unwrap_or_default() } else { v.to_string() };
            headers.push((k.to_string(), text));
        }
    }
    let body = match body {
        None => None,
        Some(b) if b.is_string() => Some(b.into_string().unwrap_or_default()),
        Some(b) => {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            Some(to_json(&b, "the body").map_err(|e| ScriptError::new(format!("{what}: {e}")))?.to_string())
        }
    };
    let asked = match opts.get("timeout") {
        Some(t) => seconds(t)
            .ok_or_else(|| ScriptError::new(format!("{what}: `timeout` must be a positive number of seconds")))?,
        None => HTTP_TIMEOUT,
    };
    let left = cell.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(EvalAltResult::ErrorTerminated(Dynamic::from(DEADLINE_TOKEN), ctx.call_position()).into());
    }
    let request = HttpRequest { method: method.into(), url: url.into(), headers, body, timeout: asked.min(left) };
    let response = cell.services.http(request).map_err(|e| ScriptError::new(format!("{what} {url}: {e}")))?;
    let mut out = Map::new();
    let json =
        serde_json::from_str::<serde_json::Value>(&response.text).map(|v| from_json(&v)).unwrap_or(Dynamic::UNIT);
    out.insert("status".into(), Dynamic::from_int(INT::from(response.status)));
    out.insert("ok".into(), Dynamic::from_bool((200..300).contains(&response.status)));
    let headers: Map =
        response.headers.into_iter().map(|(k, v)| (k.into(), Dynamic::from(ImmutableString::from(v)))).collect();
    out.insert("headers".into(), Dynamic::from_map(headers));
    out.insert("text".into(), Dynamic::from(ImmutableString::from(response.text)));
    out.insert("json".into(), json);
    Ok(out)
}

fn send_alert(ctx: &NativeCallContext, channel: &str, text: &str, opts: Option<Map>) -> RhaiResult<ImmutableString> {
    at(ctx, send_alert_raw(ctx, channel, text, opts))
}

fn send_alert_raw(
    ctx: &NativeCallContext,
    channel: &str,
    text: &str,
    opts: Option<Map>,
) -> RhaiResult<ImmutableString> {
    let cell = cell(ctx, "alerts::send")?;
    let opts = opts.unwrap_or_default();
    let mut title = None;
    for (key, value) in &opts {
        match key.as_str() {
            "title" => title = Some(value.to_string()),
            other => {
                return Err(
                    ScriptError::new(format!("alerts::send: unknown option `{other}`; the option is `title`")).into()
                );
            }
        }
    }
    let answer = cell
        .services
        .send_alert(channel, title.as_deref(), text)
        .map_err(|e| ScriptError::new(format!("alerts::send(\"{channel}\"): {e}")))?;
    Ok(answer.into())
}

/// The natives of the stdlib's `alerts` module: `alerts::send(channel, text [, #{ title }])`
/// sends through a configured channel from a callback or a task closure (through
/// [`TaskServices::send_alert`]); while a DAG file is parsed it fails.
pub(super) fn register_alert_natives(module: &mut Module) {
    module.set_native_fn("send", |ctx: NativeCallContext, channel: &str, text: &str| {
        send_alert(&ctx, channel, text, None)
    });
    module.set_native_fn("send", |ctx: NativeCallContext, channel: &str, text: &str, opts: Map| {
        send_alert(&ctx, channel, text, Some(opts))
    });
}

/// Registers `ctx`, `ctx.ti` and the `json` and `http` modules. They are in every engine (so a
/// DAG file whose closures use them compiles); their natives work only inside a task's closure.
pub(super) fn register(engine: &mut Engine) {
    engine.register_type_with_name::<TaskCtx>("TaskContext");
    engine.register_type_with_name::<TaskTi>("TaskInstance");
    for name in CTX_FIELDS {
        engine.register_get(name, move |c: &mut TaskCtx| member(&c.0, name, "ctx"));
    }
    engine.register_indexer_get(|c: &mut TaskCtx, name: &str| member(&c.0, name, "ctx"));
    for name in TI_FIELDS {
        engine.register_get(name, move |t: &mut TaskTi| member(&t.0, name, "ctx.ti"));
    }
    engine.register_fn("to_string", |_: &mut TaskCtx| -> ImmutableString { "<task context>".into() });
    engine.register_fn("to_debug", |_: &mut TaskCtx| -> ImmutableString { "<task context>".into() });
    engine.register_fn("to_string", |t: &mut TaskTi| -> ImmutableString {
        let id = t.0.get("task_id").map(|v| v.to_string()).unwrap_or_default();
        format!("<TaskInstance: {id}>").into()
    });
    engine.register_fn("var", |ctx: NativeCallContext, _: &mut TaskCtx, name: &str| variable(&ctx, name, None));
    engine.register_fn("var", |ctx: NativeCallContext, _: &mut TaskCtx, name: &str, default: Dynamic| {
        variable(&ctx, name, Some(default))
    });
    engine.register_fn("log", |ctx: NativeCallContext, _: &mut TaskCtx, value: Dynamic| log_value(&ctx, &value));
    engine.register_fn("xcom_pull", |ctx: NativeCallContext, ti: &mut TaskTi, task_id: &str| {
        pull(&ctx, ti, task_id, "return_value")
    });
    engine.register_fn("xcom_pull", |ctx: NativeCallContext, ti: &mut TaskTi, task_id: &str, key: &str| {
        pull(&ctx, ti, task_id, key)
    });
    engine.register_fn("xcom_pull", |ctx: NativeCallContext, ti: &mut TaskTi, task_ids: Array| -> RhaiResult<Array> {
        let mut out = Array::new();
        for id in task_ids {
            let id =
                id.into_string().map_err(|t| ScriptError::new(format!("xcom_pull: a task id is a string, not {t}")))?;
            out.push(pull(&ctx, ti, &id, "return_value")?);
        }
        Ok(out)
    });
    engine.register_fn("xcom_push", |ctx: NativeCallContext, _: &mut TaskTi, key: &str, value: Dynamic| {
        push(&ctx, key, &value)
    });

    let mut json = Module::new();
    json.set_native_fn("parse", |ctx: NativeCallContext, text: &str| at(&ctx, json_parse(text)));
    json.set_native_fn("stringify", |ctx: NativeCallContext, value: Dynamic| at(&ctx, json_stringify(&value, false)));
    json.set_native_fn("stringify", |ctx: NativeCallContext, value: Dynamic, pretty: bool| {
        at(&ctx, json_stringify(&value, pretty))
    });
    engine.register_static_module("json", json.into());

    let mut http = Module::new();
    http.set_native_fn("get", |ctx: NativeCallContext, url: &str| http_call(&ctx, "GET", url, None, None));
    http.set_native_fn("get", |ctx: NativeCallContext, url: &str, opts: Map| {
        http_call(&ctx, "GET", url, None, Some(opts))
    });
    http.set_native_fn("post", |ctx: NativeCallContext, url: &str, body: Dynamic| {
        http_call(&ctx, "POST", url, Some(body), None)
    });
    http.set_native_fn("post", |ctx: NativeCallContext, url: &str, body: Dynamic, opts: Map| {
        http_call(&ctx, "POST", url, Some(body), Some(opts))
    });
    engine.register_static_module("http", http.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_rhai_values() {
        let value = serde_json::json!({"a": [1, 2.5, null, true, "x"], "b": {"c": -3}});
        assert_eq!(to_json(&from_json(&value), "v"), Ok(value));
    }

    #[test]
    fn values_without_a_json_form_are_named_by_their_place() {
        let mut map = Map::new();
        map.insert("f".into(), Dynamic::from(rhai::FnPtr::new("x").unwrap()));
        let value = Dynamic::from_array(vec![Dynamic::from_map(map)]);
        assert_eq!(to_json(&value, "v"), Err("v[0].f is a function, which has no JSON form".to_string()));
        assert_eq!(to_json(&Dynamic::from_float(FLOAT::NAN), "v"), Err("v is NaN, which JSON cannot hold".to_string()));
    }

    #[test]
    fn a_source_hash_covers_the_file_name_and_the_text() {
        let text: Arc<str> = Arc::from("let x = 1;");
        let a = VersionSource::new("a.rhai", text.clone());
        assert_eq!(a.hash, VersionSource::new("a.rhai", text.clone()).hash);
        assert_ne!(a.hash, VersionSource::new("b.rhai", text).hash);
        assert_ne!(a.hash, VersionSource::new("a.rhai", Arc::from("let x = 2;")).hash);
    }

    #[test]
    fn the_version_cache_keeps_the_most_recently_used() {
        let mut cache = VersionCache { entries: HashMap::new(), tick: 0 };
        for i in 0..=VERSION_CACHE as u64 {
            cache.entries.insert(format!("v{i}"), (Arc::new(OnceLock::new()), i + 1));
        }
        cache.entries.get_mut("v0").unwrap().1 = 10_000;
        evict(&mut cache);
        assert_eq!(cache.entries.len(), VERSION_CACHE);
        assert!(cache.entries.contains_key("v0") && !cache.entries.contains_key("v1"));
    }
}
