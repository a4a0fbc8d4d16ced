//! `BashOperator`: the rendered command as `bash -c` under a task supervisor (`executor`).

use super::{Outcome, Start, TaskRun, WorkerSettings, mask_secrets, size};
use crate::executor::template::{TemplateContext, TemplateError, render};
use crate::executor::{BashOutcome, BashRun, Exit, spawn_bash};
use crate::model::{Operator, QueuedTask};
use std::path::PathBuf;
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::BashOperator { bash_command, env, cwd, .. } => std::iter::once(bash_command.as_str())
            .chain(env.values().map(String::as_str))
            .chain(cwd.as_deref())
            .collect(),
        _ => Vec::new(),
    }
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let prepared = bash_run(&run.task, &run.ctx, &run.env.settings, run.log_path()).map(|mut bash| {
        let extra = &run.env.extra_env;
        bash.remove_env.retain(|name| !extra.iter().any(|(n, _)| n == name));
        bash.env.extend(extra.iter().cloned());
        bash
    });
    match prepared {
        Err(e) => Start::Done(Outcome::fail(e.to_string())),
        Ok(bash) => match spawn_bash(bash).await {
            Ok(process) => Start::Process { process: Box::new(process), outcome: process_end },
            Err(e) => Start::Done(Outcome::fail(e.to_string())),
        },
    }
}

/// The `bash -c` for a `BashOperator` task: rendered command and env, context variables, limits.
pub fn bash_run(
    task: &QueuedTask,
    ctx: &TemplateContext,
    settings: &WorkerSettings,
    log_path: &std::path::Path,
) -> Result<BashRun, TemplateError> {
    let Operator::BashOperator { bash_command, env, append_env, cwd, .. } = &task.task().operator else {
        return Err(TemplateError { field: "operator".into(), line: None, reason: "not a BashOperator".into() });
    };
    let command = render("bash_command", bash_command, ctx)?;
    let mut vars = Vec::new();
    for (k, v) in env {
        vars.push((k.clone(), render(&format!("env.{k}"), v, ctx)?));
    }
    vars.extend(context_env(task));
    let cwd = match cwd {
        Some(c) => Some(PathBuf::from(render("cwd", c, ctx)?)),
        None => None,
    };
    Ok(BashRun {
        command,
        env: vars,
        replace_env: !env.is_empty() && !append_env,
        cwd,
        log_path: log_path.to_path_buf(),
        max_log_bytes: settings.max_log_bytes,
        max_xcom_bytes: settings.max_xcom_bytes,
        remove_env: settings.withheld_env.iter().filter(|name| !env.contains_key(*name)).cloned().collect(),
        supervisor: settings.supervisor.clone(),
        masks: super::secrets(settings),
        timeout: task.task().execution_timeout.map(|t| t.as_std()),
        kill_grace: settings.kill_grace,
    })
}

/// `AIRFLOW_CTX_*` (and `RHAIFLOW_CTX_*`) variables every task process sees.
pub fn context_env(task: &QueuedTask) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let logical = task.run.logical_date.to_rfc3339();
    let try_number = task.try_number.to_string();
    for prefix in ["RHAIFLOW_CTX", "AIRFLOW_CTX"] {
        vars.push((format!("{prefix}_DAG_ID"), task.key.dag_id.clone()));
        vars.push((format!("{prefix}_TASK_ID"), task.key.task_id.clone()));
        vars.push((format!("{prefix}_RUN_ID"), task.key.run_id.clone()));
        vars.push((format!("{prefix}_LOGICAL_DATE"), logical.clone()));
        vars.push((format!("{prefix}_TRY_NUMBER"), try_number.clone()));
        vars.push((format!("{prefix}_DAG_OWNER"), task.task().owner.to_string()));
    }
    vars.push(("AIRFLOW_CTX_EXECUTION_DATE".into(), logical));
    vars
}

/// A `BashOperator`'s end: exit 0 succeeds (the last stdout line is the XCom, up to
/// `max_xcom_bytes`), `skip_on_exit_code` skips, anything else fails.
/// Also how a takeover reads the outcome a try recorded while its owner was dead.
pub fn process_outcome(task: &QueuedTask, outcome: BashOutcome, settings: &WorkerSettings) -> Outcome {
    let skip_on = match &task.task().operator {
        Operator::BashOperator { skip_on_exit_code, .. } => skip_on_exit_code.as_slice(),
        _ => &[],
    };
    exit_outcome(task, outcome, settings.max_xcom_bytes, skip_on)
}

/// [`process_outcome`] as the runner table holds it: a bash command pushes no other XCom.
pub fn process_end(task: &QueuedTask, outcome: BashOutcome, settings: &WorkerSettings) -> (Outcome, super::Pushed) {
    (process_outcome(task, outcome, settings), Vec::new())
}

/// How a supervised command's exit reads as an outcome.
pub fn exit_outcome(task: &QueuedTask, outcome: BashOutcome, max_xcom_bytes: u64, skip_on: &[i32]) -> Outcome {
    match outcome.exit {
        Exit::Code(0) if outcome.last_line_bytes > max_xcom_bytes => Outcome::fail(format!(
            "XCom `return_value` of task `{}` is {}, over `core.max_xcom_bytes` ({})",
            task.key.task_id,
            size(outcome.last_line_bytes),
            size(max_xcom_bytes)
        )),
        Exit::Code(0) => Outcome::Success { xcom: outcome.last_line.map(serde_json::Value::String) },
        Exit::Code(code) if skip_on.contains(&code) => {
            Outcome::Skip { reason: format!("bash command exited with code {code}") }
        }
        Exit::Code(code) => Outcome::fail(format!("bash command failed: exit code {code}")),
        Exit::Signal(sig) => Outcome::fail(format!("bash command killed by signal {sig}")),
        Exit::TimedOut => Outcome::fail(format!(
            "execution_timeout of {} exceeded",
            task.task().execution_timeout.unwrap_or_default()
        )),
    }
}

/// The log header's second line for a process: the command exactly as `bash -c` received it.
pub fn command_line(command: &str, settings: &WorkerSettings) -> String {
    let command = mask_secrets(command, settings);
    format!("[rhaiflow] running: bash -c '{}'", command.replace('\'', "'\\''"))
}
