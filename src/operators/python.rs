//! `PythonOperator`: a Python function (`module:function`, its module beside the DAG file) run in
//! its own `python` process under the task supervisor, as `BashOperator`'s command is.
//!
//! The supervisor runs `PYTHON WORKDIR/runner.py WORKDIR` (the runner is `python_runner.py`,
//! embedded in the binary). `WORKDIR` is `attempt=N.python/` beside the try's log, private like
//! the log folder. The runner reads `payload.json` there (the callable, rendered `op_args` /
//! `op_kwargs` / `templates_dict` with their `#{ xcom_pull: ... }` markers replaced, the context,
//! the run's XComs for `ti.xcom_pull`) and deletes it; it writes `result.jsonl` (pushed XComs and
//! how the call ended), which [`process_end`] reads when the process is gone — also after a
//! takeover, since the files outlive the owner. Nothing travels on the command line or on stdout.

use super::rhai_op::render_json;
use super::{Outcome, Pushed, Start, TaskRun, WorkerSettings, context_env, mask_secrets, size};
use crate::executor::{BashOutcome, BashRun, Exit, spawn_bash};
use crate::model::{Operator, QueuedTask};
use std::io::BufRead;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The runner the interpreter runs.
const RUNNER: &str = include_str!("python_runner.py");

/// The most bytes of the run's XComs handed to Python for `ti.xcom_pull`.
const MAX_PRELOADED_BYTES: usize = 64 << 20;

/// The most lines of `result.jsonl` read (pushes and the end).
const MAX_RESULT_LINES: usize = 10_000;

/// The most bytes of `result.jsonl` read, unless one XCom line may be larger.
const MAX_RESULT_BYTES: u64 = 64 << 20;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let mut texts = Vec::new();
    if let Operator::PythonOperator(spec) = operator {
        let dict = spec.templates_dict.iter().flat_map(|d| d.values());
        for v in spec.op_args.iter().chain(spec.op_kwargs.values()).chain(dict) {
            super::rhai_op::strings(v, &mut texts);
        }
    }
    texts
}

/// `attempt=N.python/` beside a try's log: the runner, its payload and its results.
pub fn work_dir(log_path: &Path) -> PathBuf {
    log_path.with_extension("python")
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    match prepare(&run).await {
        Ok(bash) => match spawn_bash(bash).await {
            Ok(process) => Start::Process { process: Box::new(process), outcome: process_end },
            Err(e) => {
                let _ = std::fs::remove_dir_all(work_dir(run.log_path()));
                Start::Done(Outcome::fail(e.to_string()))
            }
        },
        Err(reason) => {
            let _ = std::fs::remove_dir_all(work_dir(run.log_path()));
            Start::Done(Outcome::fail(mask_secrets(&reason, &run.env.settings)))
        }
    }
}

/// Renders the arguments, reads the XComs they and `ti.xcom_pull` need, writes the runner and its
/// payload, and returns the supervised command.
async fn prepare(run: &Arc<TaskRun>) -> Result<BashRun, String> {
    let Operator::PythonOperator(spec) = &run.task.task().operator else {
        return Err("not a PythonOperator".into());
    };
    let settings = &run.env.settings;
    let render = |field: &str, v: &serde_json::Value| render_json(field, v, &run.ctx).map_err(|e| e.to_string());
    let mut args = Vec::new();
    for (i, v) in spec.op_args.iter().enumerate() {
        args.push(render(&format!("op_args[{i}]"), v)?);
    }
    let mut kwargs = serde_json::Map::new();
    for (k, v) in &spec.op_kwargs {
        kwargs.insert(k.clone(), render(&format!("op_kwargs.{k}"), v)?);
    }
    let templates_dict = match &spec.templates_dict {
        None => serde_json::Value::Null,
        Some(d) => {
            let mut out = serde_json::Map::new();
            for (k, v) in d {
                out.insert(k.clone(), render(&format!("templates_dict.{k}"), v)?);
            }
            serde_json::Value::Object(out)
        }
    };
    let xcoms = run_xcoms(run).await?;
    let mut args = serde_json::Value::Array(args);
    let mut kwargs = serde_json::Value::Object(kwargs);
    let run_id = &run.task.key.run_id;
    replace_markers("op_args", &mut args, &xcoms, run_id)?;
    replace_markers("op_kwargs", &mut kwargs, &xcoms, run_id)?;
    // Lines the runner prints first, so they follow the log's header.
    let mut notes = Vec::new();
    if !spec.requirements.is_empty() {
        notes.push(format!(
            "[rhaiflow] `requirements` are not installed by rhaiflow ({}); the task runs with `{}` as it is",
            spec.requirements.join(", "),
            spec.python
        ));
    }
    let (xcoms, left_out) = bounded_xcoms(xcoms);
    if left_out > 0 {
        notes.push(format!(
            "[rhaiflow] {left_out} XComs of this run are past {} and not passed to Python: `ti.xcom_pull` of them returns None",
            size(MAX_PRELOADED_BYTES as u64)
        ));
    }
    let dag_folder = dag_folder(settings, &run.task.dag.fileloc);
    let python = interpreter(&spec.python, &dag_folder)?;
    let payload = serde_json::json!({
        "callable": spec.python_callable,
        "args": args,
        "kwargs": kwargs,
        "templates_dict": templates_dict,
        "context": context(run),
        "xcoms": xcoms.iter().map(|(t, k, v)| serde_json::json!([t, k, v])).collect::<Vec<_>>(),
        "dag_folder": dag_folder,
        "dags_folder": std::path::absolute(&settings.dags_folder).unwrap_or_else(|_| settings.dags_folder.clone()),
        "max_xcom_bytes": settings.max_xcom_bytes,
        "show_return_value_in_logs": spec.show_return_value_in_logs,
        "notes": notes,
    });
    let dir = work_dir(run.log_path());
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let written = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || write_work_dir(&dir, &payload)).await
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("cannot write the Python task's files in `{}`: {e}", dir.display())),
        Err(_) => return Err("internal error while writing the Python task's files (a bug in rhaiflow)".into()),
    }
    let mut env = context_env(&run.task);
    // Lines reach the log as they are printed, and in order with the traceback on stderr.
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    let extra = &run.env.extra_env;
    env.extend(extra.iter().cloned());
    let runner = dir.join("runner.py");
    Ok(BashRun {
        // `exec`: a first word such as `a=b` is then a command, not an assignment.
        command: format!(
            "exec {} {} {}",
            quote(&python),
            quote(&runner.to_string_lossy()),
            quote(&dir.to_string_lossy())
        ),
        env,
        replace_env: false,
        cwd: None,
        log_path: run.log_path().to_path_buf(),
        max_log_bytes: settings.max_log_bytes,
        max_xcom_bytes: settings.max_xcom_bytes,
        remove_env: settings
            .withheld_env
            .iter()
            .filter(|name| !extra.iter().any(|(n, _)| n == *name))
            .cloned()
            .collect(),
        supervisor: settings.supervisor.clone(),
        masks: super::secrets(settings),
        timeout: run.task.task().execution_timeout.map(|t| t.as_std()),
        kill_grace: settings.kill_grace,
    })
}

/// The folder of the DAG file, which the runner puts first on `sys.path`.
fn dag_folder(settings: &WorkerSettings, fileloc: &str) -> PathBuf {
    let file = settings.dags_folder.join(fileloc);
    let folder = file.parent().map(Path::to_path_buf).unwrap_or_else(|| settings.dags_folder.clone());
    std::path::absolute(&folder).unwrap_or(folder)
}

/// The interpreter to run: a command looked up on `PATH` (`python3`), or a path (relative ones from
/// the DAG file's folder); a virtualenv's folder (`/opt/venv`, `venv` beside the DAG file) means
/// its `bin/python`.
fn interpreter(python: &str, dag_folder: &Path) -> Result<String, String> {
    let path = dag_folder.join(python);
    if !python.contains('/') && !path.is_dir() {
        return Ok(python.to_string());
    }
    if path.is_dir() {
        let inside = path.join("bin").join("python");
        if !inside.exists() {
            return Err(format!(
                "the Python interpreter `{python}` is a folder without `bin/python`; give a virtualenv's folder or an interpreter"
            ));
        }
        return Ok(inside.to_string_lossy().into_owned());
    }
    Ok(path.to_string_lossy().into_owned())
}

/// The run's XComs (`task_id`, `key`, value), oldest first, without this task's own (a new try
/// starts with none; the claim clears the last try's).
async fn run_xcoms(run: &TaskRun) -> Result<Vec<(String, String, serde_json::Value)>, String> {
    let key = run.task.key.clone();
    let mut xcoms = match &run.env.store {
        Some(store) => {
            let (dag_id, run_id) = (key.dag_id.clone(), key.run_id.clone());
            store
                .read_async(move |tx| tx.xcoms_of_run(&dag_id, &run_id))
                .await
                .map_err(|e| format!("cannot read the XComs of run `{}`: {e}", key.run_id))?
        }
        // `tasks test` without a database: what the template context read.
        None => run.ctx.xcoms.clone(),
    };
    xcoms.retain(|(task_id, _, _)| *task_id != key.task_id);
    Ok(xcoms)
}

/// The newest XComs that fit in [`MAX_PRELOADED_BYTES`], oldest first, and how many were left out.
fn bounded_xcoms(xcoms: Vec<(String, String, serde_json::Value)>) -> (Vec<(String, String, serde_json::Value)>, usize) {
    let total = xcoms.len();
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    for x in xcoms.into_iter().rev() {
        bytes = bytes.saturating_add(x.2.to_string().len() + x.0.len() + x.1.len());
        if bytes > MAX_PRELOADED_BYTES {
            break;
        }
        kept.push(x);
    }
    kept.reverse();
    let left_out = total - kept.len();
    (kept, left_out)
}

/// Replaces every map `{ "xcom_pull": "task" [, "key": "k"] }` inside `value` by that XCom of the
/// run; a missing one is an error naming the task, the key and where the marker is.
pub fn replace_markers(
    field: &str,
    value: &mut serde_json::Value,
    xcoms: &[(String, String, serde_json::Value)],
    run_id: &str,
) -> Result<(), String> {
    if let Some((task_id, key)) = marker(value) {
        let found = xcoms.iter().rev().find(|(t, k, _)| *t == task_id && *k == key);
        return match found {
            Some((_, _, v)) => {
                *value = v.clone();
                Ok(())
            }
            None => Err(format!(
                "`{field}` pulls XCom `{key}` of task `{task_id}`, which run `{run_id}` does not have \
                 (did `{task_id}` run and push it?)"
            )),
        };
    }
    match value {
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                replace_markers(&format!("{field}[{i}]"), v, xcoms, run_id)?;
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                replace_markers(&format!("{field}.{k}"), v, xcoms, run_id)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `(task_id, key)` of a map that is exactly `{xcom_pull: "task"}` or `{xcom_pull: "task", key: "k"}`.
fn marker(value: &serde_json::Value) -> Option<(String, String)> {
    let map = value.as_object()?;
    let task_id = map.get("xcom_pull")?.as_str()?;
    let key = match map.get("key") {
        None => "return_value",
        Some(k) => k.as_str()?,
    };
    let expected = if map.contains_key("key") { 2 } else { 1 };
    (map.len() == expected).then(|| (task_id.to_string(), key.to_string()))
}

/// What the callable may ask for by name, as plain JSON (the runner makes dates `datetime`s, `ti`
/// a `TaskInstance` and `dag_run` an object).
fn context(run: &TaskRun) -> serde_json::Value {
    let mut ctx = match super::closure::context(run) {
        crate::script::CallArg::Context(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    ctx.insert("execution_date".into(), ctx.get("logical_date").cloned().unwrap_or_default());
    ctx.insert("run_type".into(), serde_json::json!(run.ctx.run_type));
    serde_json::Value::Object(ctx)
}

/// Creates `dir` afresh (0700) with the runner and the payload (0600).
fn write_work_dir(dir: &Path, payload: &serde_json::Value) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let write = |name: &str, bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(dir.join(name))?;
        std::io::Write::write_all(&mut f, bytes)
    };
    write("runner.py", RUNNER.as_bytes())?;
    write("payload.json", &serde_json::to_vec(payload).map_err(std::io::Error::other)?)
}

/// A word for `bash -c`: as it is when bash reads it so (the log's header shows the command),
/// else single-quoted.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// What the runner wrote in `result.jsonl`.
#[derive(Debug, Default)]
struct Results {
    started: bool,
    pushed: Pushed,
    /// `Ok(value)` when the callable returned (`Null`: `None`), `Err(message)` when it failed.
    end: Option<Result<serde_json::Value, String>>,
}

fn read_results(path: &Path, max_line: u64) -> Result<Results, String> {
    let mut results = Results::default();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(results),
        Err(e) => return Err(format!("cannot read the Python runner's results: {e}")),
    };
    let cap = MAX_RESULT_BYTES.max(max_line.saturating_mul(2));
    if file.metadata().map(|m| m.len()).unwrap_or(0) > cap {
        return Err(format!(
            "the Python task pushed more than {} of XComs (`ti.xcom_push`); push less, or keep data in files",
            size(cap)
        ));
    }
    let mut reader = std::io::BufReader::new(std::io::Read::take(file, cap));
    for _ in 0..MAX_RESULT_LINES {
        let mut line = Vec::new();
        let n = std::io::Read::take(&mut reader, max_line + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the Python runner's results: {e}"))?;
        if n == 0 {
            return Ok(results);
        }
        if line.len() as u64 > max_line {
            return Err(format!(
                "an XCom of the Python task is larger than `[core] max_xcom_bytes` ({})",
                size(max_line.saturating_sub(64 << 10))
            ));
        }
        let Ok(serde_json::Value::Object(mut entry)) = serde_json::from_slice(&line) else { continue };
        if entry.contains_key("started") {
            results.started = true;
        } else if let Some(serde_json::Value::String(key)) = entry.remove("push") {
            let value = entry.remove("value").unwrap_or_default();
            results.pushed.retain(|(k, _)| *k != key);
            results.pushed.push((key, value));
        } else if let Some(end) = entry.get("end").and_then(|e| e.as_str()) {
            results.end = Some(match end {
                "success" => Ok(entry.remove("value").unwrap_or_default()),
                _ => Err(entry.get("message").and_then(|m| m.as_str()).unwrap_or("the callable failed").to_string()),
            });
        }
    }
    Err(format!("the Python runner's results have more than {MAX_RESULT_LINES} lines (too many `xcom_push` calls)"))
}

/// A `PythonOperator` process's end, with the XComs it pushed: what the runner recorded, read
/// with the exit. Also how a takeover reads a try that ended while its owner was dead.
pub fn process_end(task: &QueuedTask, exit: BashOutcome, settings: &WorkerSettings) -> (Outcome, Pushed) {
    let dir = work_dir(&settings.log_path(&task.key, task.try_number));
    let read = read_results(&dir.join("result.jsonl"), settings.max_xcom_bytes.saturating_add(64 << 10));
    let _ = std::fs::remove_dir_all(&dir);
    let (python, callable, multiple_outputs, branch, short_circuit) = match &task.task().operator {
        Operator::PythonOperator(spec) => (
            spec.python.as_str(),
            spec.python_callable.as_str(),
            spec.multiple_outputs,
            spec.branch,
            spec.short_circuit,
        ),
        _ => ("python3", "?", false, false, false),
    };
    let results = match read {
        Ok(r) => r,
        Err(reason) => return (Outcome::fail(reason), Vec::new()),
    };
    let outcome = end_outcome(task, exit.exit, &results, settings, (python, callable));
    let mut pushed = results.pushed;
    // `multiple_outputs`: a returned dict's keys become XComs of their own, as in Airflow.
    let outcome = match outcome {
        Outcome::Success { xcom: Some(serde_json::Value::Object(map)) } if multiple_outputs => {
            pushed.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
            Outcome::Success { xcom: Some(serde_json::Value::Object(map)) }
        }
        Outcome::Success { xcom: Some(other) } if multiple_outputs => Outcome::fail(format!(
            "`{callable}` returned {}, but `multiple_outputs` needs a dict (each key becomes an XCom)",
            json_kind(&other)
        )),
        other => other,
    };
    // `branch`: the result names the task(s) to follow; `short_circuit`: a falsy one skips the rest.
    let outcome = match outcome {
        Outcome::Success { xcom } if branch => match follow_of(xcom.as_ref()) {
            Some(follow) => Outcome::Branch { follow, xcom },
            None => Outcome::fail(format!(
                "`{callable}` is a branch and returned {}; it must return a task id or a list of task ids",
                xcom.as_ref().map_or("None", json_kind)
            )),
        },
        Outcome::Success { xcom } if short_circuit && !truthy(xcom.as_ref()) => Outcome::SkipDownstream { xcom },
        other => other,
    };
    let outcome = match outcome {
        Outcome::Fail { reason, final_try } => Outcome::Fail { reason: mask_secrets(&reason, settings), final_try },
        other => other,
    };
    (outcome, pushed)
}

/// The task ids a branch's result names: a string or a list of strings (`None`: follow none).
fn follow_of(v: Option<&serde_json::Value>) -> Option<Vec<String>> {
    match v {
        None | Some(serde_json::Value::Null) => Some(Vec::new()),
        Some(serde_json::Value::String(s)) => Some(vec![s.clone()]),
        Some(serde_json::Value::Array(items)) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        Some(_) => None,
    }
}

/// Python's truthiness of a JSON result.
fn truthy(v: Option<&serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
    }
}

/// What a JSON value is, in Python's words.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "None",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a str",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a dict",
    }
}

fn end_outcome(
    task: &QueuedTask,
    exit: Exit,
    results: &Results,
    settings: &WorkerSettings,
    (python, callable): (&str, &str),
) -> Outcome {
    match (exit, &results.end) {
        (Exit::TimedOut, _) => Outcome::fail(format!(
            "execution_timeout of {} exceeded; `{callable}` was killed",
            task.task().execution_timeout.unwrap_or_default()
        )),
        (_, Some(Err(message))) => Outcome::fail(message.clone()),
        (Exit::Code(0), Some(Ok(value))) => {
            let bytes = value.to_string().len() as u64;
            if bytes > settings.max_xcom_bytes {
                return Outcome::fail(format!(
                    "the return value of `{callable}` is {} as JSON, more than `[core] max_xcom_bytes` ({})",
                    size(bytes),
                    size(settings.max_xcom_bytes)
                ));
            }
            Outcome::Success { xcom: (!value.is_null()).then(|| value.clone()) }
        }
        (Exit::Code(127), _) if !results.started => Outcome::fail(format!(
            "the Python interpreter `{python}` was not found; install it or set `python` to an interpreter's path or a virtualenv's folder"
        )),
        (Exit::Code(126), _) if !results.started => {
            Outcome::fail(format!("the Python interpreter `{python}` cannot be run (not executable)"))
        }
        (Exit::Code(code), _) if !results.started => Outcome::fail(format!(
            "the Python interpreter `{python}` could not run rhaiflow's runner (exit code {code}); see the task's log"
        )),
        (Exit::Code(0), _) => Outcome::fail(format!(
            "the Python process ended before `{callable}` returned (exit code 0 without a result: `os._exit`?)"
        )),
        (Exit::Code(code), _) => {
            Outcome::fail(format!("the Python process running `{callable}` failed: exit code {code}"))
        }
        (Exit::Signal(sig), _) => {
            Outcome::fail(format!("the Python process running `{callable}` was killed by signal {sig}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PythonSpec;

    fn xcoms() -> Vec<(String, String, serde_json::Value)> {
        vec![
            ("extract".into(), "return_value".into(), serde_json::json!([1, 2])),
            ("extract".into(), "rows".into(), serde_json::json!(7)),
        ]
    }

    #[test]
    fn markers_are_replaced_by_the_runs_xcoms() {
        let mut v = serde_json::json!({"a": {"xcom_pull": "extract"}, "b": [{"xcom_pull": "extract", "key": "rows"}],
            "c": {"xcom_pull": "extract", "other": 1}});
        replace_markers("op_kwargs", &mut v, &xcoms(), "r1").unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2], "b": [7], "c": {"xcom_pull": "extract", "other": 1}}));
    }

    #[test]
    fn a_missing_xcom_names_the_task_the_key_and_the_place() {
        let mut v = serde_json::json!({"rows": {"xcom_pull": "load", "key": "n"}});
        let err = replace_markers("op_kwargs", &mut v, &xcoms(), "r1").unwrap_err();
        assert!(
            err.contains("`op_kwargs.rows`") && err.contains("XCom `n` of task `load`") && err.contains("`r1`"),
            "{err}"
        );
    }

    #[test]
    fn callables_are_module_colon_function() {
        assert_eq!(PythonSpec::split_callable("etl_tasks:load"), Some(("etl_tasks", "load")));
        assert_eq!(PythonSpec::split_callable("pkg.mod:Cls.run"), Some(("pkg.mod", "Cls.run")));
        for bad in ["load", ":load", "etl:", "etl:lo ad", "a..b:f", "1mod:f"] {
            assert_eq!(PythonSpec::split_callable(bad), None, "{bad}");
        }
    }
}
