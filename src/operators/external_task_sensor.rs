//! `ExternalTaskSensor`: waits for tasks of another DAG's run (or for the whole run) at the same
//! logical date or one shifted back by `execution_delta`, reading the store as Airflow's does:
//! done when every awaited task (or the run) is in `allowed_states`; any of them in
//! `failed_states` fails the try at once (skips it with `soft_fail`), any in `skipped_states`
//! skips it.

use super::sensor::{self, Poke};
use super::{Outcome, Start, TaskRun};
use crate::executor::template::render;
use crate::model::{Operator, SensorKind};
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::Sensor(s) => match &s.kind {
            SensorKind::ExternalTask { external_dag_id, external_task_ids, .. } => {
                std::iter::once(external_dag_id.as_str()).chain(external_task_ids.iter().map(String::as_str)).collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// What one sensor looks for, rendered.
#[derive(Clone)]
struct Target {
    dag_id: String,
    task_ids: Vec<String>,
    logical_date: DateTime<Utc>,
    allowed: Vec<String>,
    failed: Vec<String>,
    skipped: Vec<String>,
    soft_fail: bool,
    check_existence: bool,
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let target = match target(&run) {
        Ok(t) => t,
        Err(reason) => return Start::Done(Outcome::fail(reason)),
    };
    if run.env.store.is_none() {
        return Start::Done(Outcome::fail(
            "`ExternalTaskSensor` needs the database; create it with `rhaiflow db migrate`",
        ));
    }
    sensor::start(run, move |run| {
        let target = target.clone();
        async move { poke(&run, target).await }
    })
}

fn target(run: &TaskRun) -> Result<Target, String> {
    let Some(spec) = sensor::spec(run) else { return Err("not an ExternalTaskSensor".into()) };
    let SensorKind::ExternalTask {
        external_dag_id,
        external_task_ids,
        allowed_states,
        failed_states,
        skipped_states,
        execution_delta,
        check_existence,
    } = &spec.kind
    else {
        return Err("not an ExternalTaskSensor".into());
    };
    let dag_id = render("external_dag_id", external_dag_id, &run.ctx).map_err(|e| e.to_string())?;
    let task_ids = external_task_ids
        .iter()
        .map(|id| render("external_task_ids", id, &run.ctx).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let logical = run.task.run.logical_date;
    let logical_date = match execution_delta {
        Some(delta) => logical
            .checked_sub_signed(delta.as_chrono())
            .ok_or_else(|| format!("logical date {logical} minus `execution_delta` {delta} is out of the calendar"))?,
        None => logical,
    };
    Ok(Target {
        dag_id,
        task_ids,
        logical_date,
        allowed: allowed_states.clone(),
        failed: failed_states.clone(),
        skipped: skipped_states.clone(),
        soft_fail: spec.soft_fail,
        check_existence: *check_existence,
    })
}

async fn poke(run: &TaskRun, t: Target) -> Poke {
    let date = t.logical_date.to_rfc3339();
    if t.task_ids.is_empty() {
        run.log(&format!("Poking for DAG '{}' on {date} ... ", t.dag_id)).await;
    } else {
        run.log(&format!("Poking for tasks {:?} in dag {} on {date} ... ", t.task_ids, t.dag_id)).await;
    }
    let Some(store) = run.env.store.clone() else { return Poke::Fail("no database".into()) };
    if t.check_existence
        && let Err(reason) = exists(&store, &t).await
    {
        return Poke::Fail(reason);
    }
    let (dag_id, task_ids, at) = (t.dag_id.clone(), t.task_ids.clone(), t.logical_date);
    let states = store
        .read_async(move |tx| {
            let Some(other) = tx.dag_run_at(&dag_id, at)? else { return Ok(None) };
            if task_ids.is_empty() {
                return Ok(Some(vec![other.state.as_str().to_string()]));
            }
            let tis = tx.task_instances_of_run(&dag_id, &other.run_id)?;
            Ok(Some(
                tis.into_iter()
                    .filter(|ti| task_ids.contains(&ti.key.task_id))
                    .map(|ti| ti.state.as_str().to_string())
                    .collect(),
            ))
        })
        .await;
    let states = match states {
        Ok(Some(states)) => states,
        Ok(None) => return Poke::NotYet,
        Err(e) => return Poke::Fail(format!("could not read DAG `{}`'s run: {e}", t.dag_id)),
    };
    let what = if t.task_ids.is_empty() {
        format!("The external DAG {}", t.dag_id)
    } else {
        format!("Some of the external tasks {:?} in DAG {}", t.task_ids, t.dag_id)
    };
    if states.iter().any(|s| t.failed.contains(s)) {
        return if t.soft_fail {
            Poke::Skip(format!("{what} failed. Skipping due to soft_fail."))
        } else {
            Poke::Fail(format!("{what} failed"))
        };
    }
    if states.iter().any(|s| t.skipped.contains(s)) {
        return Poke::Skip(format!("{what} reached a state in our states-to-skip-on list. Skipping."));
    }
    let expected = t.task_ids.len().max(1);
    let allowed = states.iter().filter(|s| t.allowed.contains(s)).count();
    if allowed == expected { Poke::Done { xcom: None } } else { Poke::NotYet }
}

/// `check_existence`: the other DAG is known (and active) and, in its latest version, has every
/// awaited task; Airflow's messages otherwise.
async fn exists(store: &crate::store::Store, t: &Target) -> Result<(), String> {
    let dag_id = t.dag_id.clone();
    let found = store
        .read_async(move |tx| {
            let Some(dag) = tx.dags()?.into_iter().find(|d| d.dag_id == dag_id) else { return Ok(None) };
            Ok(Some(tx.dag_version_json(&dag.latest_version_hash)?))
        })
        .await
        .map_err(|e| format!("could not read DAG `{}`: {e}", t.dag_id))?;
    let Some(json) = found else { return Err(format!("The external DAG {} does not exist", t.dag_id)) };
    let spec = json.and_then(|j| serde_json::from_str::<crate::model::DagSpec>(&j).ok());
    for task_id in &t.task_ids {
        if spec.as_ref().is_some_and(|s| !s.tasks.iter().any(|task| &task.task_id == task_id)) {
            return Err(format!("The external task {task_id} in DAG {} does not exist", t.dag_id));
        }
    }
    Ok(())
}
