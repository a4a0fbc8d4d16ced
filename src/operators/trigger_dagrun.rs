//! `TriggerDagRunOperator`: creates a manual run of another DAG, as Airflow 2.10's does, and
//! optionally waits for it to finish.
//!
//! Creating a run is the service layer's rule (`app::service::trigger_run`: the CLI, the API and
//! this operator create runs one way), and `app` is two layers up. So the operator reaches it
//! through a capability `app` injects into [`Env::trigger`](super::Env): a [`TriggerRuns`]
//! object. Only the plain request and answer types live here.

use super::{Outcome, Start, TaskRun};
use crate::executor::template::{TemplateContext, TemplateError, render};
use crate::model::{DagRunState, Operator, TriggerSpec};
use crate::store::DagRunRow;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::sync::Arc;

/// The XCom keys Airflow's operator pushes.
pub const XCOM_RUN_ID: &str = "trigger_run_id";
pub const XCOM_LOGICAL_DATE_ISO: &str = "trigger_logical_date_iso";

/// A manual run to create.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    pub dag_id: String,
    /// Default: `manual__<logical date>`.
    pub run_id: Option<String>,
    pub logical_date: DateTime<Utc>,
    /// `dag_run.conf` of the new run: a JSON object.
    pub conf: serde_json::Value,
    /// A run already at that logical date (or with that run id) is cleared and runs again.
    pub reset_dag_run: bool,
}

/// A run created, or an existing one cleared (`reset_dag_run`).
#[derive(Debug, Clone)]
pub struct Triggered {
    pub run: DagRunRow,
    pub reset: bool,
    /// Its DAG is paused: the run waits until it is unpaused (as in Airflow).
    pub paused: bool,
    /// Anything else the task's log should say (no scheduler is running to start the run).
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub enum TriggerError {
    /// A run exists at that logical date or with that run id (Airflow's `DagRunAlreadyExists`).
    AlreadyExists(Box<DagRunRow>),
    /// Anything else (no such DAG, a bad run id, the store), said in full.
    Refused(String),
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerError::AlreadyExists(run) => write!(
                f,
                "a run of DAG `{}` already exists at {} (run `{}`, {})",
                run.dag_id,
                run.logical_date.to_rfc3339(),
                run.run_id,
                run.state
            ),
            TriggerError::Refused(reason) => f.write_str(reason),
        }
    }
}

/// Creates manual runs the way the service layer does; `app` implements it and injects it into
/// [`Env::trigger`](super::Env). It writes the store, so it blocks: call it off the async threads.
pub trait TriggerRuns: Send + Sync {
    fn trigger(&self, req: &TriggerRequest, now: DateTime<Utc>) -> Result<Triggered, TriggerError>;
}

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::TriggerDagRunOperator(spec) = operator else { return Vec::new() };
    let mut out = vec![spec.trigger_dag_id.as_str()];
    out.extend(spec.trigger_run_id.as_deref());
    out.extend(spec.logical_date.as_deref());
    json_strings(&spec.conf, &mut out);
    out
}

fn json_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::TriggerDagRunOperator(spec) = &run.task.task().operator else {
        return Start::Done(Outcome::fail("not a TriggerDagRunOperator"));
    };
    let spec = spec.clone();
    let req = match request(&spec, &run.ctx, Utc::now()) {
        Ok(req) => req,
        Err(reason) => return Start::Done(Outcome::fail(reason)),
    };
    let Some(trigger) = run.env.trigger.get().cloned() else {
        return Start::Done(Outcome::fail(
            "`TriggerDagRunOperator` needs the database to create a run; create it with `rhaiflow db migrate`",
        ));
    };
    Start::Later(Box::pin(trigger_and_wait(run, spec, req, trigger)))
}

/// The request the rendered fields make.
fn request(spec: &TriggerSpec, ctx: &TemplateContext, now: DateTime<Utc>) -> Result<TriggerRequest, String> {
    let text = |e: TemplateError| e.to_string();
    let dag_id = render("trigger_dag_id", &spec.trigger_dag_id, ctx).map_err(text)?.trim().to_string();
    if dag_id.is_empty() {
        return Err("`trigger_dag_id` is empty".into());
    }
    let run_id = match &spec.trigger_run_id {
        Some(t) => Some(render("trigger_run_id", t, ctx).map_err(text)?.trim().to_string()),
        None => None,
    };
    let logical_date = match &spec.logical_date {
        Some(t) => {
            let rendered = render("logical_date", t, ctx).map_err(text)?;
            parse_date(&rendered).ok_or_else(|| {
                format!(
                    "`logical_date` is `{}`, which is not a date; use 2024-01-01, 2024-01-01T06:00:00 or RFC 3339",
                    rendered.trim()
                )
            })?
        }
        None => now,
    };
    let conf = match &spec.conf {
        serde_json::Value::String(t) => {
            let rendered = render("conf", t, ctx).map_err(text)?;
            serde_json::from_str(&rendered)
                .map_err(|e| format!("`conf` rendered to `{rendered}`, which is not JSON: {e}"))?
        }
        other => render_json("conf", other, ctx).map_err(text)?,
    };
    if !conf.is_object() {
        return Err(format!("`conf` must be a JSON object, not `{conf}`"));
    }
    Ok(TriggerRequest { dag_id, run_id, logical_date, conf, reset_dag_run: spec.reset_dag_run })
}

/// Every string inside `value` rendered as a template (Airflow renders `conf` this way).
fn render_json(
    path: &str,
    value: &serde_json::Value,
    ctx: &TemplateContext,
) -> Result<serde_json::Value, TemplateError> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => Value::String(render(path, s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_json(&format!("{path}[{i}]"), v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(&format!("{path}.{k}"), v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// A date as templates render them (`{{ ds }}`, `{{ ts }}`, `{{ logical_date }}`) or people write
/// them; without an offset, UTC.
pub fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in
        ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"]
    {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
}

fn states(list: &[DagRunState]) -> String {
    list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

async fn trigger_and_wait(
    run: Arc<TaskRun>,
    spec: Box<TriggerSpec>,
    req: TriggerRequest,
    trigger: Arc<dyn TriggerRuns>,
) -> Outcome {
    let dag_id = req.dag_id.clone();
    let created =
        tokio::task::spawn_blocking(move || crate::model::caught::caught(|| trigger.trigger(&req, Utc::now()))).await;
    let triggered = match created {
        Ok(Ok(t)) => t,
        Ok(Err(TriggerError::AlreadyExists(existing))) if spec.skip_when_already_exists => {
            let reason =
                format!("{}; skipping, as `skip_when_already_exists` is set", TriggerError::AlreadyExists(existing));
            return Outcome::Skip { reason };
        }
        Ok(Err(e @ TriggerError::AlreadyExists(_))) => {
            return Outcome::fail(format!(
                "{e}; set `reset_dag_run: true` to clear it and run it again, or `skip_when_already_exists: true`"
            ));
        }
        Ok(Err(e)) => return Outcome::fail(format!("cannot trigger DAG `{dag_id}`: {e}")),
        Err(join) => return Outcome::fail(format!("cannot trigger DAG `{dag_id}`: internal error (a bug): {join}")),
    };
    let created = &triggered.run;
    let date = created.logical_date.to_rfc3339();
    let verb = if triggered.reset { "Cleared and restarted" } else { "Triggered" };
    run.log(&format!("{verb} DAG `{dag_id}`: run `{}` at logical date {date}", created.run_id)).await;
    if triggered.paused {
        run.log(&format!("DAG `{dag_id}` is paused: its run waits until it is unpaused")).await;
    } else if let Some(note) = &triggered.note {
        run.log(note).await;
    }
    run.push_xcom(XCOM_LOGICAL_DATE_ISO.into(), serde_json::Value::String(date));
    run.push_xcom(XCOM_RUN_ID.into(), serde_json::Value::String(created.run_id.clone()));
    (run.env.wake)();
    if !spec.wait_for_completion {
        return Outcome::Success { xcom: None };
    }
    wait_for(&run, &spec, created).await
}

/// Polls the triggered run every `poke_interval` (as Airflow does, first poke after one
/// interval) until it is in `allowed_states` or `failed_states`. Holds no store connection
/// between polls; `execution_timeout` bounds the wait (the worker's).
async fn wait_for(run: &TaskRun, spec: &TriggerSpec, created: &DagRunRow) -> Outcome {
    let store = match run.env.store("TriggerDagRunOperator") {
        Ok(s) => s.clone(),
        Err(outcome) => return outcome,
    };
    let (dag_id, run_id) = (created.dag_id.clone(), created.run_id.clone());
    loop {
        run.log(&format!(
            "Waiting for DAG `{dag_id}` run `{run_id}` to be in an allowed state ({})",
            states(&spec.allowed_states)
        ))
        .await;
        tokio::time::sleep(spec.poke_interval.as_std()).await;
        let (d, r) = (dag_id.clone(), run_id.clone());
        let state = match store.read_async(move |tx| tx.dag_run(&d, &r)).await {
            Ok(Some(row)) => row.state,
            Ok(None) => return Outcome::fail(format!("the triggered run `{run_id}` of DAG `{dag_id}` was deleted")),
            Err(e) => {
                run.log(&format!("could not read the state of run `{run_id}` of DAG `{dag_id}`: {e}")).await;
                continue;
            }
        };
        if spec.failed_states.contains(&state) {
            return Outcome::fail(format!(
                "DAG `{dag_id}` run `{run_id}` ended `{state}`, one of `failed_states` ({})",
                states(&spec.failed_states)
            ));
        }
        if spec.allowed_states.contains(&state) {
            run.log(&format!("DAG `{dag_id}` run `{run_id}` finished with allowed state `{state}`")).await;
            return Outcome::Success { xcom: None };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_date;

    #[test]
    fn dates_as_templates_render_them() {
        let expect = |text: &str, rfc: &str| {
            assert_eq!(parse_date(text).map(|d| d.to_rfc3339()).as_deref(), Some(rfc), "{text}");
        };
        expect("2024-01-02", "2024-01-02T00:00:00+00:00");
        expect("2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05+00:00");
        expect("2024-01-02T03:04:05.123456+08:00", "2024-01-01T19:04:05.123456+00:00");
        expect("2024-01-02 03:04:05+00:00", "2024-01-02T03:04:05+00:00");
        expect(" 2024-01-02T03:04 ", "2024-01-02T03:04:00+00:00");
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(parse_date("2024-13-01"), None);
    }
}
