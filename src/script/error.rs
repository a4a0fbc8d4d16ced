//! Errors raised by the DAG API while a file is evaluated, and their conversion to diagnostics.

use crate::model::{Diagnostic, SourcePos};
use rhai::{Dynamic, EvalAltResult, ParseErrorType, Position};

/// An error the DAG API raises: a message and a hint on what to do.
#[derive(Debug, Clone)]
pub struct ScriptError {
    pub message: String,
    pub help: Option<String>,
    /// A more precise place than the call (e.g. the offending key), when known.
    pub pos: Option<SourcePos>,
    /// The map key this error is about, so the caret can point at it.
    pub key: Option<String>,
    /// A limit was hit: the file stops here, and `try`/`catch` in the file cannot swallow it.
    pub fatal: bool,
}

pub type ScriptResult<T> = Result<T, ScriptError>;

/// A `ScriptError` raised into the running script.
pub fn lift<T>(r: ScriptResult<T>) -> Result<T, Box<EvalAltResult>> {
    r.map_err(Into::into)
}

impl ScriptError {
    pub fn new(message: impl Into<String>) -> Self {
        ScriptError { message: message.into(), help: None, pos: None, key: None, fatal: false }
    }

    /// An error that ends the file's evaluation (a cap or the deadline); scripts cannot catch it.
    pub fn fatal(message: impl Into<String>) -> Self {
        ScriptError { fatal: true, ..ScriptError::new(message) }
    }

    /// The wall-clock deadline passed inside a native call.
    pub fn deadline(limit_ms: u64) -> Self {
        ScriptError::fatal(format!("evaluation took longer than the {limit_ms} ms limit"))
            .with_help("a DAG file only declares DAGs; look for an endless loop, or raise `[core] dag_file_timeout`")
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Points at `key` unless the error already points somewhere.
    pub fn at_key_if_none(self, key: &str) -> Self {
        if self.key.is_some() || self.pos.is_some() { self } else { self.at_key(key) }
    }

    pub fn at_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// "unknown key `retires` in `BashOperator` — did you mean `retries`?"
    pub fn unknown_key(key: &str, owner: &str, known: &[&str]) -> Self {
        // A key can be megabytes of script text: quote only its start.
        let shown: String = key.chars().take(64).collect();
        let shown = if shown.len() < key.len() { format!("{shown}…") } else { shown };
        let message = format!("unknown key `{shown}` in `{owner}`");
        let e = match nearest(key, known) {
            Some(best) => ScriptError::new(format!("{message} — did you mean `{best}`?")),
            None => ScriptError::new(message).with_help(format!("known keys: {}", known.join(", "))),
        };
        e.at_key(key)
    }
}

/// The closest of `known` to `word` (`model::suggest`), for words short enough to be a typo:
/// similarity is quadratic in length, and a DAG file can hand in a 4 MiB key.
pub fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    if word.len() > 64 {
        return None;
    }
    crate::model::suggest::nearest(word, known)
}

impl From<ScriptError> for Box<EvalAltResult> {
    fn from(e: ScriptError) -> Self {
        if e.fatal {
            EvalAltResult::ErrorTerminated(Dynamic::from(e), Position::NONE).into()
        } else {
            EvalAltResult::ErrorRuntime(Dynamic::from(e), Position::NONE).into()
        }
    }
}

pub fn to_pos(p: Position) -> Option<SourcePos> {
    Some(SourcePos::new(p.line()?, p.position().unwrap_or(1)))
}

/// Converts a parse error to a diagnostic at its place in the file.
pub fn parse_diagnostic(file: &str, source: &str, err: &rhai::ParseError, limits: &LimitNames) -> Diagnostic {
    parse_diagnostic_with(file, source, err, limits, &mut None)
}

/// `parse_diagnostic`, sharing the file's declared names with the caller (found once).
fn parse_diagnostic_with(
    file: &str,
    source: &str,
    err: &rhai::ParseError,
    limits: &LimitNames,
    declared: &mut Option<Vec<String>>,
) -> Diagnostic {
    let (kind, pos) = (&*err.0, err.1);
    let (message, help) = match kind {
        ParseErrorType::BadInput(rhai::LexError::Runtime(token)) if token == DEADLINE_TOKEN => (
            format!("compiling took longer than the {} ms limit", limits.deadline_ms),
            Some("split this file, or raise `[core] dag_file_timeout`".to_string()),
        ),
        ParseErrorType::ExprTooDeep => (
            "expression nested too deeply".to_string(),
            Some("split long `a >> b >> c ...` chains: use `chain([...])` or a loop".to_string()),
        ),
        ParseErrorType::LiteralTooLarge(what, max) => (format!("{what} is longer than the limit of {max}"), None),
        ParseErrorType::VariableUndefined(name) if let Some(advice) = super::python::airflow_name(name) => {
            (advice.message, Some(advice.help))
        }
        ParseErrorType::VariableUndefined(name) => {
            let declared = declared.get_or_insert_with(|| declared_names(source));
            let known: Vec<&str> = declared.iter().map(String::as_str).collect();
            let message = match nearest(name, &known) {
                Some(best) => format!("unknown variable `{name}` — did you mean `{best}`?"),
                None => format!("unknown variable `{name}`"),
            };
            let help = if declared.iter().any(|d| d == name) {
                format!(
                    "`{name}` is declared in this file, but not where it is used: a `for` variable or a `let` \
                     inside `{{ ... }}` lives only inside that block"
                )
            } else {
                "declare it with `let` before using it".to_string()
            };
            (message, Some(help))
        }
        other => (format!("syntax error: {other}"), None),
    };
    let mut d = Diagnostic::new(file, to_pos(pos), message).with_source(source);
    d.help = help;
    d
}

/// A parse error, explained by the Python forms in the file when there are some: each habit is
/// its own diagnostic, and the raw parse error is dropped when a habit comes before it (the habit
/// is what broke the parse).
pub fn parse_diagnostics(
    engine: &rhai::Engine,
    file: &str,
    source: &str,
    err: &rhai::ParseError,
    limits: &LimitNames,
) -> Vec<Diagnostic> {
    let mut declared = None;
    let raw = parse_diagnostic_with(file, source, err, limits, &mut declared);
    if matches!(&*err.0, ParseErrorType::BadInput(rhai::LexError::Runtime(_)) | ParseErrorType::ExprTooDeep) {
        return vec![raw];
    }
    let declared = declared.unwrap_or_else(|| declared_names(source));
    let habits = super::python::scan(engine, source, &declared);
    let explained = habits.first().is_some_and(|h| raw.pos.is_none_or(|p| h.pos.line <= p.line));
    let mut out: Vec<Diagnostic> = habits
        .into_iter()
        .map(|h| {
            let mut d = Diagnostic::new(file, Some(h.pos), h.message).with_source(source);
            d.help = h.help;
            d
        })
        .collect();
    if !explained {
        out.push(raw);
        out.sort_by_key(|d| d.pos);
    }
    out
}

/// Names declared with `let`/`const` or as function parameters, for "did you mean" hints.
pub fn declared_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let mut words = line.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty());
        while let Some(w) = words.next() {
            if (w == "let" || w == "const" || w == "fn" || w == "for" || w == "as")
                && let Some(name) = words.next()
            {
                names.push(name.to_string());
            }
        }
        // A function's parameters: `fn f(a, b)`.
        if let Some(at) = line.find("fn ")
            && let Some(open) = line[at..].find('(')
        {
            let params = &line[at + open + 1..];
            let params = &params[..params.find(')').unwrap_or(params.len())];
            names.extend(params.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned));
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// What the deadline hook returns to stop an evaluation.
pub const DEADLINE_TOKEN: &str = "rhaiflow:deadline";

/// What the progress hook returns when the file holds too much memory.
pub const MEMORY_TOKEN: &str = "rhaiflow:memory";

/// Limits to quote in messages about runaway scripts.
pub struct LimitNames {
    pub max_operations: u64,
    pub deadline_ms: u64,
    pub memory_mib: usize,
}

/// The message when one file's evaluation holds more memory than its cap.
pub fn memory_error(mib: usize) -> ScriptError {
    ScriptError::fatal(format!(
        "evaluating this file held more than {mib} MiB of memory (4 × `[core] max_dag_file_memory_mib`)"
    ))
    .with_help("keep large text out of DAG files, or raise `max_dag_file_memory_mib` under `[core]` in rhaiflow.toml")
}

/// Converts an evaluation error, keeping the outermost position in the user's file and the innermost cause.
pub fn eval_diagnostic(file: &str, source: &str, err: &EvalAltResult, limits: &LimitNames) -> Diagnostic {
    let pos = outer_position(err);
    let inner = err.unwrap_inner();
    let mut help = None;
    let mut inner_pos = None;
    let message = match inner {
        EvalAltResult::ErrorRuntime(value, _) => match value.clone().try_cast::<ScriptError>() {
            Some(e) => {
                help = e.help;
                inner_pos = e.pos;
                e.message
            }
            None => format!("error thrown: {value}"),
        },
        EvalAltResult::ErrorTerminated(value, _) => match value.clone().try_cast::<ScriptError>() {
            Some(e) => {
                help = e.help;
                inner_pos = e.pos;
                e.message
            }
            None if value.clone().into_string().is_ok_and(|t| t == MEMORY_TOKEN) => {
                let e = memory_error(limits.memory_mib);
                help = e.help;
                e.message
            }
            None => {
                help = Some("a DAG file only declares DAGs; look for an endless loop".into());
                format!("evaluation took longer than the {} ms limit", limits.deadline_ms)
            }
        },
        EvalAltResult::ErrorTooManyOperations(_) => {
            help = Some("a DAG file only declares DAGs; look for an endless loop".into());
            format!("evaluation exceeded the limit of {} operations", limits.max_operations)
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            help = Some("look for a function that calls itself without end".into());
            "function calls nested too deeply".into()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!("{what} exceeds the size limit for DAG files"),
        EvalAltResult::ErrorParsing(kind, _) => format!("syntax error: {kind}"),
        EvalAltResult::ErrorFunctionNotFound(signature, _) => {
            let (message, hint) = function_not_found(signature);
            help = hint;
            message
        }
        EvalAltResult::ErrorModuleNotFound(name, _) => {
            help = Some("stdlib modules are imported by name, e.g. `import \"alerts\" as alerts;`; modules of your own are `.rhai` files under the dags folder, imported by their path in it: `import \"lib/common\" as common;`".into());
            format!("no stdlib module named `{name}`")
        }
        other => {
            let mut text = other.to_string();
            if let Some(i) = text.rfind(" (line ") {
                text.truncate(i);
            }
            text
        }
    };
    let mut d = Diagnostic::new(file, inner_pos.or(pos), message).with_source(source);
    d.help = help;
    d
}

/// Names a DAG file can call, for "did you mean" on a misspelt function.
fn callable_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = super::args::OPERATORS.iter().map(|op| op.name).collect();
    names.extend([
        "DAG",
        "DummyOperator",
        "BranchPythonOperator",
        "SimpleHttpOperator",
        "DingTalkOperator",
        "timedelta",
        "datetime",
        "days_ago",
        "seconds",
        "minutes",
        "hours",
        "days",
        "weeks",
        "chain",
        "chain_all",
        "cross_downstream",
        "every_minutes",
        "range",
    ]);
    names
}

/// "Function not found: BashOperator (&str | ImmutableString | String, ...)" in words: positional
/// arguments to a constructor that takes a map, Airflow names rhaiflow lacks, misspelt names.
fn function_not_found(signature: &str) -> (String, Option<String>) {
    let name = signature.split([' ', '(']).next().unwrap_or(signature).trim();
    let args = signature.get(name.len()..).unwrap_or("").trim();
    let empty_block = args.contains("()");
    if let Some(advice) = super::python::airflow_name(name) {
        return (advice.message, Some(advice.help));
    }
    let map_hint = |example: String| {
        let mut help = format!("write `{example}`");
        if empty_block {
            help.push_str("; `{}` is an empty block in Rhai (its value is `()`), an empty map is `#{}`");
        }
        help
    };
    if let Some(op) = super::args::OPERATORS.iter().find(|op| op.name == name) {
        let keys: Vec<String> =
            std::iter::once("task_id").chain(op.required.iter().copied()).map(|k| format!("{k}: ...")).collect();
        return (
            format!("`{name}` takes its arguments as one map, not `{name}{}`", shown_args(args)),
            Some(map_hint(format!("{name}(#{{ {} }})", keys.join(", ")))),
        );
    }
    match name {
        "DAG" => {
            return (
                format!("`DAG` takes an id and a map, not `DAG{}`", shown_args(args)),
                Some(map_hint("DAG(\"my_dag\", #{ schedule: \"@daily\", start_date: days_ago(1) })".into())),
            );
        }
        "timedelta" => {
            return (
                format!("`timedelta` takes a map of units, not `timedelta{}`", shown_args(args)),
                Some("write `timedelta(#{ days: 1, hours: 2 })`, or `days(1)`, `hours(2)`, `minutes(5)`".into()),
            );
        }
        "DummyOperator" | "BranchPythonOperator" | "SimpleHttpOperator" | "DingTalkOperator" => {
            return (
                format!("`{name}` takes its arguments as one map, not `{name}{}`", shown_args(args)),
                Some(map_hint(format!("{name}(#{{ task_id: \"t\", ... }})"))),
            );
        }
        _ => {}
    }
    let known = callable_names();
    let missing = format!("unknown function `{name}`");
    match nearest(name, &known) {
        Some(best) if !args.is_empty() => (format!("{missing} — did you mean `{best}`?"), None),
        _ if name.ends_with("Operator") || name.ends_with("Sensor") => (
            format!("rhaiflow has no `{name}`"),
            Some(format!(
                "its operators are {}; a `BashOperator` runs any command",
                super::args::OPERATORS.iter().map(|op| op.name).collect::<Vec<_>>().join(", ")
            )),
        ),
        _ => (format!("unknown function `{name}` for arguments {}", shown_args(args)), None),
    }
}

/// Rhai's argument types (`&str | ImmutableString | String`) as a DAG author reads them.
fn shown_args(args: &str) -> String {
    let inner = args.strip_prefix('(').unwrap_or(args);
    let inner = inner.strip_suffix(')').unwrap_or(inner);
    if inner.is_empty() {
        return "()".into();
    }
    let words: Vec<&str> = inner
        .split(", ")
        .map(|a| match a {
            a if a.contains("String") => "a string",
            "i64" => "an integer",
            "f64" => "a number",
            "bool" => "a bool",
            "()" => "()",
            "map" => "a map",
            "array" => "an array",
            other => other,
        })
        .collect();
    format!("({})", words.join(", "))
}

/// The position of the call in the user's own file: the outermost one with a line.
fn outer_position(err: &EvalAltResult) -> Option<SourcePos> {
    let mut current = err;
    loop {
        if let Some(p) = to_pos(current.position()) {
            return Some(p);
        }
        match current {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
                current = inner;
            }
            _ => return None,
        }
    }
}
