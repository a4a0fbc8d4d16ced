//! `BashSensor`: each poke is the rendered `bash_command` under a task supervisor, as a
//! `BashOperator`'s (its output goes to the try's log); exit 0 is done, 1 is not yet, any other
//! code fails the try (skips it with `soft_fail`, as Airflow's `AirflowFailException`). Before a poke's command starts, its process group is recorded on the task
//! instance (so a takeover can kill what a dead owner left), and a poke abandoned (the try's
//! `execution_timeout`) takes its group down with it.

use super::sensor::{self, Poke};
use super::{Outcome, Start, TaskRun, context_env};
use crate::executor::process_token;
use crate::executor::template::render;
use crate::executor::{BashRun, Exit, RunningBash, kill_group, spawn_bash};
use crate::model::{Operator, SensorKind, TaskState};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::Sensor(s) => match &s.kind {
            SensorKind::Bash { bash_command } => vec![bash_command.as_str()],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let command = match sensor::spec(&run).map(|s| &s.kind) {
        Some(SensorKind::Bash { bash_command }) => render("bash_command", bash_command, &run.ctx),
        _ => return Start::Done(Outcome::fail("not a BashSensor")),
    };
    let command = match command {
        Ok(c) => c,
        Err(e) => return Start::Done(Outcome::fail(e.to_string())),
    };
    sensor::start(run, move |run| {
        let command = command.clone();
        async move { poke(&run, command).await }
    })
}

async fn poke(run: &TaskRun, command: String) -> Poke {
    let settings = &run.env.settings;
    let mut env = context_env(&run.task);
    env.extend(run.env.extra_env.iter().cloned());
    let bash = BashRun {
        command,
        env,
        replace_env: false,
        remove_env: settings
            .withheld_env
            .iter()
            .filter(|name| !run.env.extra_env.iter().any(|(n, _)| n == *name))
            .cloned()
            .collect(),
        cwd: None,
        log_path: run.log_path().to_path_buf(),
        max_log_bytes: settings.max_log_bytes,
        max_xcom_bytes: settings.max_xcom_bytes,
        // The try's `execution_timeout` bounds the whole sensor (the worker's), not each poke.
        timeout: None,
        kill_grace: settings.kill_grace,
        supervisor: settings.supervisor.clone(),
        masks: super::secrets(settings),
    };
    run.log(&format!("Running command: {}", bash.command)).await;
    // The process appends to the file: what was kept in memory goes there first.
    run.trylog.spill();
    let process = match spawn_bash(bash).await {
        Ok(p) => p,
        Err(e) => return Poke::Fail(e.to_string()),
    };
    if let Err(reason) = record_group(run, &process).await {
        process.abort().await;
        return Poke::Fail(reason);
    }
    let mut guard = GroupGuard { pgid: process.pid(), grace: settings.kill_grace, done: false };
    let outcome = process.wait().await;
    guard.done = true;
    match outcome.exit {
        Exit::Code(0) => Poke::Done { xcom: None },
        Exit::Code(1) => {
            run.log("Command exited with return code 1: not done yet").await;
            Poke::NotYet
        }
        Exit::Code(code) => Poke::Fatal(format!("Command exited with return code {code}")),
        Exit::Signal(sig) => Poke::Fatal(format!("Command killed by signal {sig}")),
        Exit::TimedOut => Poke::Fatal("Command timed out".into()),
    }
}

/// Records the poke's process group on the running try (guarded by this runner's ownership)
/// before the command starts. A try nobody claimed (`tasks test`, or no database) has nothing to
/// record; a try another runner owns now (taken over) must not poke again.
async fn record_group(run: &TaskRun, process: &RunningBash) -> Result<(), String> {
    let Some(store) = run.env.store.clone() else { return Ok(()) };
    let (key, owner, pid) = (run.task.key.clone(), run.env.settings.owner.clone(), process.pid());
    let token = process_token(pid);
    let taken = store
        .write_async(move |tx| {
            if tx.set_ti_process(&key, &owner, i64::from(pid), token.as_deref())? {
                return Ok(false);
            }
            let row = tx.task_instance(&key)?;
            Ok(row.is_some_and(|ti| ti.state == TaskState::Running && ti.owner.as_deref() != Some(owner.as_str())))
        })
        .await
        .map_err(|e| format!("could not record the poke's process group: {e}"))?;
    if taken { Err("the try is no longer this process's; the poke did not run".into()) } else { Ok(()) }
}

/// Kills a poke's process group when the poke is abandoned before its command ended (the future
/// dropped at `execution_timeout` or shutdown).
struct GroupGuard {
    pgid: u32,
    grace: std::time::Duration,
    done: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (pgid, grace) = (self.pgid, self.grace);
        crate::executor::signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { kill_group(pgid, grace).await });
        }
    }
}
