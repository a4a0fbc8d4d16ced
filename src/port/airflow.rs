//! Airflow's vocabulary → rhaiflow's: operator classes, DAG and task keyword arguments, and the
//! Python values each key takes, checked against rhaiflow's own key tables (`script::operator_keys`).

use super::eval::Evaluator;
use super::value::{DateVal, Val, XComForm, rhai_date, rhai_duration, rhai_str, xcom_template};
use crate::script::ArgKind;

/// Enums whose members port as their lower-case value (`TriggerRule.ALL_DONE` → `"all_done"`).
pub const ENUMS: &[&str] = &["TriggerRule", "DagRunState", "TaskInstanceState", "State", "WeightRule"];

/// What an Airflow operator class becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorClass {
    /// A rhaiflow operator of this name takes the same keyword arguments.
    Same(&'static str),
    /// A Python callable: `PythonOperator` and its variants.
    Python(PyKind),
    /// Not an operator rhaiflow has: an `EmptyOperator` with a `// port:` comment.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyKind {
    Plain,
    Branch,
    ShortCircuit,
    Virtualenv,
    External,
}

pub fn operator_class(name: &str) -> Option<OperatorClass> {
    use OperatorClass::*;
    Some(match name {
        "BashOperator" => Same("BashOperator"),
        "EmptyOperator" | "DummyOperator" => Same("EmptyOperator"),
        "EmailOperator" => Same("EmailOperator"),
        "SimpleHttpOperator" | "HttpOperator" => Same("HttpOperator"),
        "TriggerDagRunOperator" => Same("TriggerDagRunOperator"),
        "DingdingOperator" => Same("DingdingOperator"),
        "SlackWebhookOperator" => Same("SlackWebhookOperator"),
        "LatestOnlyOperator" => Same("LatestOnlyOperator"),
        "FileSensor" => Same("FileSensor"),
        "BashSensor" => Same("BashSensor"),
        "HttpSensor" => Same("HttpSensor"),
        "ExternalTaskSensor" => Same("ExternalTaskSensor"),
        "TimeDeltaSensor" => Same("TimeDeltaSensor"),
        "DateTimeSensor" => Same("DateTimeSensor"),
        "PythonOperator" => Python(PyKind::Plain),
        "BranchPythonOperator" | "BranchPythonVirtualenvOperator" | "BranchExternalPythonOperator" => {
            Python(PyKind::Branch)
        }
        "ShortCircuitOperator" => Python(PyKind::ShortCircuit),
        "PythonVirtualenvOperator" => Python(PyKind::Virtualenv),
        "ExternalPythonOperator" => Python(PyKind::External),
        _ => return None,
    })
}

/// The keys `PythonOperator` takes beyond every task's (it is another branch's operator, so not in
/// this branch's `script` tables).
const PYTHON_KEYS: &[(&str, ArgKind)] = &[
    ("op_args", ArgKind::Json),
    ("op_kwargs", ArgKind::Json),
    ("templates_dict", ArgKind::Json),
    ("python", ArgKind::Str),
    ("multiple_outputs", ArgKind::Bool),
];

/// Task context names a function may ask for by parameter name, each also a template variable.
const CONTEXT_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "logical_date",
    "execution_date",
    "data_interval_start",
    "data_interval_end",
    "prev_ds",
    "next_ds",
    "yesterday_ds",
    "tomorrow_ds",
    "run_id",
    "task_instance_key_str",
];

/// Arguments Airflow 2 accepts and ignores: leaving them out changes nothing.
const NO_OPS: &[&str] = &["provide_context", "dag", "task_group", "task_id", "is_setup", "is_teardown"];

/// A task's operator and its arguments as Rhai text.
pub struct PortedTask {
    pub operator: String,
    pub args: Vec<(String, String)>,
    /// Write `// port: was ...` above the task (an operator rhaiflow does not have).
    pub comment: bool,
}

/// Converts one value to the Rhai text of a key of `kind`; `Err` says why it cannot be.
pub fn convert(ev: &Evaluator, kind: ArgKind, v: &Val) -> Result<String, String> {
    let runtime = |v: &Val| match first_unknown(v) {
        Some(u) => format!("its value (`{u}`) is known only at run time"),
        None => format!("rhaiflow wants {} here, not {}", expected(kind), v.kind()),
    };
    Ok(match (kind, v) {
        (ArgKind::Str, Val::Str(s)) => rhai_str(s),
        (ArgKind::Str, Val::XCom { task, key }) => rhai_str(&xcom_template(&ev.task_id(*task), key.as_deref())),
        (ArgKind::Str, Val::Int(_) | Val::Float(_) | Val::Bool(_)) => {
            rhai_str(&super::value::py_str(v).unwrap_or_default())
        }
        (ArgKind::Str, Val::DateTime(DateVal::Fixed { at, .. })) => {
            rhai_str(&at.format("%Y-%m-%dT%H:%M:%S").to_string())
        }
        (ArgKind::Int, Val::Int(i)) => i.to_string(),
        (ArgKind::Bool, Val::Bool(b)) => b.to_string(),
        (ArgKind::Duration, Val::Duration(s)) => rhai_duration(*s),
        (ArgKind::Duration, Val::Int(i)) if *i >= 0 => rhai_duration(*i),
        (ArgKind::Duration, Val::Float(f)) if *f >= 0.0 => rhai_duration(f.round() as i64),
        (ArgKind::DateTime, Val::DateTime(d)) => rhai_date(d),
        (ArgKind::DateTime, Val::Str(s)) => format!("datetime({})", rhai_str(s)),
        (ArgKind::StrList, Val::Str(s)) => rhai_str(s),
        (ArgKind::StrList, Val::List(l) | Val::Tuple(l)) if l.iter().all(|x| matches!(x, Val::Str(_))) => {
            ev.data(&Val::List(l.clone()), XComForm::Template)?
        }
        (ArgKind::IntList, Val::Int(i)) => i.to_string(),
        (ArgKind::IntList, Val::List(l) | Val::Tuple(l)) if l.iter().all(|x| matches!(x, Val::Int(_))) => {
            ev.data(&Val::List(l.clone()), XComForm::Template)?
        }
        (ArgKind::StrMap, Val::Dict(d))
            if d.iter().all(|(_, x)| {
                matches!(x, Val::Str(_) | Val::Int(_) | Val::Float(_) | Val::Bool(_) | Val::XCom { .. })
            }) =>
        {
            ev.data(v, XComForm::Template)?
        }
        (
            ArgKind::Json | ArgKind::Body,
            v @ (Val::Dict(_)
            | Val::List(_)
            | Val::Tuple(_)
            | Val::Str(_)
            | Val::Int(_)
            | Val::Float(_)
            | Val::Bool(_)
            | Val::None
            | Val::XCom { .. }),
        ) => ev.data(&jsonify(v), XComForm::Template).map_err(|what| format!("it holds {what}, not plain data"))?,
        (ArgKind::Closure, _) => {
            return Err("a Python callable cannot become a Rhai closure".into());
        }
        (_, v) => return Err(runtime(v)),
    })
}

/// The first value inside `v` that is known only at run time.
fn first_unknown(v: &Val) -> Option<&str> {
    match v {
        Val::Unknown(u) => Some(u),
        Val::List(l) | Val::Tuple(l) => l.iter().find_map(first_unknown),
        Val::Dict(d) => d.iter().find_map(|(k, x)| first_unknown(k).or_else(|| first_unknown(x))),
        _ => None,
    }
}

fn expected(kind: ArgKind) -> &'static str {
    match kind {
        ArgKind::Str => "a string",
        ArgKind::Int => "an integer",
        ArgKind::Bool => "a bool",
        ArgKind::Duration => "a timedelta",
        ArgKind::DateTime => "a datetime",
        ArgKind::StrList => "a string or a list of strings",
        ArgKind::IntList => "an int or a list of ints",
        ArgKind::StrMap => "a dict of strings",
        ArgKind::Json | ArgKind::Body => "plain data",
        ArgKind::Closure => "a callable",
        ArgKind::Schedule => "a schedule",
        _ => "another kind of value",
    }
}

/// Dates as ISO strings and durations as seconds, for keys that hold plain data (`params`, `conf`).
fn jsonify(v: &Val) -> Val {
    match v {
        Val::DateTime(DateVal::Fixed { at, .. }) => Val::Str(at.format("%Y-%m-%dT%H:%M:%S").to_string()),
        Val::Duration(s) => Val::Int(*s),
        Val::List(l) | Val::Tuple(l) => Val::List(l.iter().map(jsonify).collect()),
        Val::Dict(d) => Val::Dict(d.iter().map(|(k, x)| (k.clone(), jsonify(x))).collect()),
        other => other.clone(),
    }
}

/// Converts keyword arguments against a key table, reporting each one left out.
fn keyed(
    ev: &mut Evaluator,
    kwargs: &[(String, Val)],
    table: &[(&'static str, ArgKind)],
    owner: &str,
    line: usize,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, v) in kwargs {
        if NO_OPS.contains(&key.as_str()) {
            continue;
        }
        let key = match key.as_str() {
            "skip_exit_code" => "skip_on_exit_code",
            "doc" => "doc_md",
            k => k,
        };
        match table.iter().find(|(k, _)| *k == key) {
            Some((_, kind)) => match convert(ev, *kind, v) {
                Ok(text) => {
                    out.retain(|(k, _)| k != key);
                    out.push((key.to_string(), text));
                }
                Err(why) => ev.loss(line, format!("`{key}` of {owner}"), why, "left out"),
            },
            None => ev.loss(line, format!("`{key}` of {owner}"), format!("rhaiflow has no `{key}` here"), "left out"),
        }
    }
    out
}

/// A classic operator call.
pub fn operator_args(
    ev: &mut Evaluator,
    class: OperatorClass,
    class_name: &str,
    kwargs: &[(String, Val)],
    line: usize,
    local: &str,
) -> PortedTask {
    let owner = format!("{class_name} `{local}`");
    let mut args = vec![("task_id".to_string(), rhai_str(local))];
    match class {
        OperatorClass::Same(op) => {
            let Some((table, required)) = crate::script::operator_keys(op) else {
                return unknown_operator(ev, class_name, kwargs, line, local, "rhaiflow has no such operator");
            };
            let adjusted;
            let kwargs = if op == "ExternalTaskSensor" {
                adjusted = dag_level_states(ev, kwargs, &owner, line);
                &adjusted[..]
            } else {
                kwargs
            };
            let converted = keyed(ev, kwargs, &table, &owner, line);
            if let Some(missing) = required.iter().find(|r| !converted.iter().any(|(k, _)| k == *r)) {
                let why = format!("its `{missing}` could not be ported");
                return unknown_operator(ev, class_name, kwargs, line, local, &why);
            }
            args.extend(converted);
            PortedTask { operator: op.to_string(), args, comment: false }
        }
        OperatorClass::Python(kind) => {
            let callable = kwargs.iter().rev().find(|(k, _)| k == "python_callable").map(|(_, v)| v.clone());
            let Some(reference) = callable.as_ref().and_then(|c| ev.callable_ref(c, local)) else {
                return unknown_operator(
                    ev,
                    class_name,
                    kwargs,
                    line,
                    local,
                    "its python_callable is not a function of this file",
                );
            };
            args.push(("python_callable".into(), rhai_str(&reference)));
            let mut table: Vec<(&'static str, ArgKind)> = PYTHON_KEYS.to_vec();
            table.extend_from_slice(crate::script::task_keys());
            let mut rest: Vec<(String, Val)> = Vec::new();
            for (k, v) in kwargs {
                match k.as_str() {
                    "python_callable" => {}
                    "op_args" | "op_kwargs" => match ev.data(v, XComForm::Marker) {
                        Ok(text) => args.push((k.clone(), text)),
                        Err(what) => ev.loss(line, format!("`{k}` of {owner}"), format!("it holds {what}"), "left out"),
                    },
                    "requirements" | "system_site_packages" | "python_version" | "pip_install_options"
                        if kind == PyKind::Virtualenv =>
                    {
                        ev.loss(
                            line,
                            format!("`{k}` of {owner}"),
                            "rhaiflow runs the function with the `python` interpreter as it is; no virtualenv is built",
                            "left out",
                        )
                    }
                    "ignore_downstream_trigger_rules" if kind == PyKind::ShortCircuit => {}
                    _ => rest.push((k.clone(), v.clone())),
                }
            }
            args.extend(keyed(ev, &rest, &table, &owner, line));
            args.extend(python_mode(kind));
            PortedTask { operator: "PythonOperator".into(), args, comment: false }
        }
        OperatorClass::Unknown => {
            unknown_operator(ev, class_name, kwargs, line, local, "rhaiflow has no such operator")
        }
    }
}

/// An `ExternalTaskSensor` without `external_task_id(s)` waits for the DAG run in rhaiflow, whose
/// states are run states: task-only states (`skipped`, ...) in its state lists are left out.
fn dag_level_states(ev: &mut Evaluator, kwargs: &[(String, Val)], owner: &str, line: usize) -> Vec<(String, Val)> {
    const RUN_STATES: &[&str] = &["queued", "running", "success", "failed"];
    let per_task = kwargs.iter().any(|(k, _)| matches!(k.as_str(), "external_task_id" | "external_task_ids"));
    let mut out = Vec::new();
    for (k, v) in kwargs {
        let v = match (k.as_str(), v) {
            ("allowed_states" | "failed_states" | "skipped_states", Val::List(l)) if !per_task => {
                let kept: Vec<Val> =
                    l.iter().filter(|s| s.as_str().is_none_or(|s| RUN_STATES.contains(&s))).cloned().collect();
                if kept.len() != l.len() {
                    ev.loss(
                        line,
                        format!("`{k}` of {owner}"),
                        "without an external task id rhaiflow waits for the DAG run, whose states are run states",
                        "the run states of the list",
                    );
                }
                Val::List(kept)
            }
            (_, v) => v.clone(),
        };
        out.push((k.clone(), v));
    }
    out
}

/// The `PythonOperator` key that keeps a branch's or a short circuit's behaviour.
fn python_mode(kind: PyKind) -> Option<(String, String)> {
    match kind {
        PyKind::Branch => Some(("branch".into(), "true".into())),
        PyKind::ShortCircuit => Some(("short_circuit".into(), "true".into())),
        _ => None,
    }
}

/// An operator rhaiflow does not have: an `EmptyOperator` keeping the task's id, its place in the
/// graph and the arguments every task takes (trigger rule, retries, ...).
fn unknown_operator(
    ev: &mut Evaluator,
    class_name: &str,
    kwargs: &[(String, Val)],
    line: usize,
    local: &str,
    why: &str,
) -> PortedTask {
    let mut args = vec![("task_id".to_string(), rhai_str(local))];
    for (k, v) in kwargs {
        if NO_OPS.contains(&k.as_str()) {
            continue;
        }
        if let Some((_, kind)) = crate::script::task_keys().iter().find(|(key, _)| key == k)
            && let Ok(text) = convert(ev, *kind, v)
        {
            args.push((k.clone(), text));
        }
    }
    ev.loss(
        line,
        format!("{class_name} `{local}`"),
        why,
        "an EmptyOperator with the same task_id and a `// port: was ...` comment",
    );
    PortedTask { operator: "EmptyOperator".into(), args, comment: true }
}

/// Whether a function's return annotation is a dict (`dict`, `Dict[...]`, `typing.Dict[...]`).
fn returns_dict(def: &rustpython_parser::ast::StmtFunctionDef) -> bool {
    use rustpython_parser::ast::Expr;
    let named = |e: &Expr| match e {
        Expr::Name(n) => matches!(n.id.as_str(), "dict" | "Dict"),
        Expr::Attribute(a) => a.attr.as_str() == "Dict",
        _ => false,
    };
    match def.returns.as_deref() {
        Some(Expr::Subscript(s)) => named(&s.value),
        Some(e) => named(e),
        None => false,
    }
}

/// A TaskFlow call (`@task`, `@task.branch`, `@task.bash`, ...).
#[allow(clippy::too_many_arguments)]
pub fn taskflow_args(
    ev: &mut Evaluator,
    func: usize,
    flavor: &str,
    deco: &[(String, Val)],
    args: &[Val],
    kwargs: &[(String, Val)],
    line: usize,
    local: &str,
) -> PortedTask {
    let owner = format!("@task.{flavor} `{local}`");
    let deco: Vec<(String, Val)> = deco.iter().filter(|(k, _)| k.as_str() != "task_id").cloned().collect();
    match flavor {
        "python"
        | "branch"
        | "short_circuit"
        | "virtualenv"
        | "external_python"
        | "branch_virtualenv"
        | "branch_external_python" => {
            let name = ev.moved_name(func);
            let mut out = vec![
                ("task_id".to_string(), rhai_str(local)),
                ("python_callable".to_string(), rhai_str(&format!("{}:{name}", ev.module))),
            ];
            if !args.is_empty() {
                match ev.data(&Val::List(args.to_vec()), XComForm::Marker) {
                    Ok(text) => out.push(("op_args".into(), text)),
                    Err(what) => {
                        ev.loss(line, format!("arguments of {owner}"), format!("they hold {what}"), "left out")
                    }
                }
            }
            if !kwargs.is_empty() {
                let map = Val::Dict(kwargs.iter().map(|(k, v)| (Val::Str(k.clone()), v.clone())).collect());
                match ev.data(&map, XComForm::Marker) {
                    Ok(text) => out.push(("op_kwargs".into(), text)),
                    Err(what) => {
                        ev.loss(line, format!("arguments of {owner}"), format!("they hold {what}"), "left out")
                    }
                }
            }
            let mut table: Vec<(&'static str, ArgKind)> = PYTHON_KEYS.to_vec();
            table.extend_from_slice(crate::script::task_keys());
            let mut rest = Vec::new();
            for (k, v) in &deco {
                if matches!(k.as_str(), "requirements" | "system_site_packages" | "python_version") {
                    ev.loss(line, format!("`{k}` of {owner}"), "no virtualenv is built", "left out");
                } else {
                    rest.push((k.clone(), v.clone()));
                }
            }
            out.extend(keyed(ev, &rest, &table, &owner, line));
            // As Airflow: a function annotated to return a dict has `multiple_outputs` on.
            if !deco.iter().any(|(k, _)| k == "multiple_outputs") && returns_dict(ev.funcs[func].def) {
                out.push(("multiple_outputs".into(), "true".into()));
            }
            let kind = match flavor {
                "branch" | "branch_virtualenv" | "branch_external_python" => PyKind::Branch,
                "short_circuit" => PyKind::ShortCircuit,
                _ => PyKind::Plain,
            };
            out.extend(python_mode(kind));
            PortedTask { operator: "PythonOperator".into(), args: out, comment: false }
        }
        "bash" => {
            // The function returns the command: run it here with templates standing in for XComArgs,
            // which render to the same values at run time.
            let bound: Vec<Val> = args.iter().map(template_for_xcom(ev)).collect();
            let mut bound_kw: Vec<(String, Val)> =
                kwargs.iter().map(|(k, v)| (k.clone(), template_for_xcom(ev)(v))).collect();
            // Parameters named after the task context (`ds`, `task_instance_key_str`, ...) that the
            // call leaves out get the context's template, which renders to the value Airflow passes.
            let def = ev.funcs[func].def;
            for (i, p) in def.args.args.iter().enumerate() {
                let name = p.def.arg.as_str();
                if i >= args.len() && !kwargs.iter().any(|(k, _)| k == name) && CONTEXT_NAMES.contains(&name) {
                    bound_kw.push((name.to_string(), Val::Str(format!("{{{{ {name} }}}}"))));
                }
            }
            let command = ev.run_function_value(func, bound, bound_kw);
            let mut kw: Vec<(String, Val)> = vec![("bash_command".into(), command.clone())];
            kw.extend(deco);
            match command {
                Val::Str(_) => operator_args(ev, OperatorClass::Same("BashOperator"), "@task.bash", &kw, line, local),
                other => {
                    let why = format!("the command it returns ({}) is known only at run time", other.kind());
                    unknown_operator(ev, "@task.bash", &[], line, local, &why)
                }
            }
        }
        other => {
            let why = format!("rhaiflow has no `@task.{other}`");
            unknown_operator(ev, &format!("@task.{other}"), &deco, line, local, &why)
        }
    }
}

fn template_for_xcom<'e>(ev: &'e Evaluator<'_>) -> impl Fn(&Val) -> Val + 'e {
    move |v: &Val| match v {
        Val::XCom { task, key } => Val::Str(xcom_template(&ev.task_id(*task), key.as_deref())),
        other => other.clone(),
    }
}

/// A DAG's arguments.
pub struct DagArgs {
    pub args: Vec<(String, String)>,
    pub default_args: Option<Vec<(String, String)>>,
}

pub fn dag_args(ev: &mut Evaluator, kwargs: &[(String, Val)], line: usize) -> DagArgs {
    let mut args: Vec<(String, String)> = Vec::new();
    let mut default_args = None;
    let mut zone: Option<String> = None;
    let mut schedule_given = false;
    let table = crate::script::dag_keys();
    for (key, v) in kwargs {
        let key = key.as_str();
        match key {
            "dag_id" => {}
            "schedule" | "schedule_interval" | "timetable" => {
                schedule_given = true;
                args.push(("schedule".into(), schedule(ev, v, line)));
            }
            "default_args" => match v {
                Val::Dict(d) => {
                    let (converted, tz) = default_args_of(ev, d, "default_args", line);
                    zone = zone.or(tz);
                    default_args = Some(converted);
                }
                other => ev.loss(line, "`default_args`", format!("it is {}, not a dict", other.kind()), "left out"),
            },
            _ => {
                let key = if key == "concurrency" { "max_active_tasks" } else { key };
                if let ("start_date" | "end_date", Val::DateTime(DateVal::Fixed { tz: Some(tz), .. })) = (key, v) {
                    zone = zone.or(Some(tz.clone()));
                }
                match table.iter().find(|(k, _)| *k == key) {
                    Some((_, kind)) => match convert(ev, *kind, v) {
                        Ok(text) => args.push((key.to_string(), text)),
                        Err(why) => ev.loss(line, format!("`{key}` of DAG"), why, "left out"),
                    },
                    None => {
                        ev.loss(line, format!("`{key}` of DAG"), format!("rhaiflow's DAG has no `{key}`"), "left out")
                    }
                }
            }
        }
    }
    if !schedule_given {
        // Airflow 2's default schedule is `timedelta(days=1)`; rhaiflow's is "@daily".
        args.push(("schedule".into(), "days(1)".into()));
    }
    if let Some(tz) = zone
        && !tz.eq_ignore_ascii_case("utc")
        && !args.iter().any(|(k, _)| k == "timezone")
    {
        args.push(("timezone".into(), rhai_str(&tz)));
    }
    DagArgs { args, default_args }
}

fn schedule(ev: &mut Evaluator, v: &Val, line: usize) -> String {
    match v {
        Val::None => "()".into(),
        Val::Str(s) if s == "@continuous" => {
            ev.loss(line, "schedule \"@continuous\"", "rhaiflow has no continuous schedule", "no schedule (`()`)");
            "()".into()
        }
        Val::Str(s) => rhai_str(s),
        Val::Duration(d) if *d > 0 => rhai_duration(*d),
        other => {
            let shown = match other {
                Val::Unknown(u) => format!("`{u}`"),
                v => v.kind().to_string(),
            };
            ev.loss(
                line,
                format!("schedule {shown}"),
                "rhaiflow schedules by cron, preset or interval (no timetables or datasets)",
                "no schedule (`()`: manual runs only)",
            );
            "()".into()
        }
    }
}

/// `default_args` (of a DAG or a task group); also the time zone of its `start_date`, if any.
pub fn default_args_of(
    ev: &mut Evaluator,
    d: &[(Val, Val)],
    owner: &str,
    line: usize,
) -> (Vec<(String, String)>, Option<String>) {
    let table = crate::script::default_args_keys();
    let mut out = Vec::new();
    let mut zone = None;
    for (k, v) in d {
        let Val::Str(key) = k else { continue };
        if key == "start_date"
            && let Val::DateTime(DateVal::Fixed { tz: Some(tz), .. }) = v
        {
            zone = Some(tz.clone());
        }
        if key == "provide_context" {
            continue;
        }
        match table.iter().find(|(name, _)| name == key) {
            Some((_, kind)) => match convert(ev, *kind, v) {
                Ok(text) => out.push((key.clone(), text)),
                Err(why) => ev.loss(line, format!("`{key}` in {owner}"), why, "left out"),
            },
            None => ev.loss(line, format!("`{key}` in {owner}"), format!("rhaiflow has no `{key}`"), "left out"),
        }
    }
    (out, zone)
}

/// A task group's own arguments (the parent is written by the emitter).
pub fn group_args(ev: &mut Evaluator, kwargs: &[(String, Val)], full_id: &str, line: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in kwargs {
        match (k.as_str(), v) {
            ("tooltip", Val::Str(s)) => out.push(("tooltip".into(), rhai_str(s))),
            ("prefix_group_id", Val::Bool(b)) => out.push(("prefix_group_id".into(), b.to_string())),
            ("default_args", Val::Dict(d)) => {
                let (converted, _) = default_args_of(ev, d, &format!("task group `{full_id}`"), line);
                let body: Vec<String> = converted.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out.push(("default_args".into(), format!("#{{ {} }}", body.join(", "))));
            }
            ("group_id" | "parent_group" | "dag" | "ui_color" | "ui_fgcolor" | "add_suffix_on_collision", _) => {}
            (k, _) => ev.loss(
                line,
                format!("`{k}` of task group `{full_id}`"),
                "rhaiflow's TaskGroup has no such key",
                "left out",
            ),
        }
    }
    out
}
