//! The `/api/v1` routes: one table ([`routes`]) that both the router and the OpenAPI document
//! are built from, and the handlers. Reads go to the store; actions to [`super::Actions`].

use super::auth::Role;
use super::json;
use super::{ActionError, Actions, ClearTasks, Problem, Web};
use crate::model::{DagRunState, TaskState, TiKey};
use crate::operators::TriggerRequest;
use crate::schedule::DataInterval;
use crate::store::{DagFilter, DagRunRow, Page, RunOrder, TiRow, Tx};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

/// One route: method, path (OpenAPI's `{param}` syntax, which axum 0.8 shares), what it does, and
/// the role it needs (checked by the router's guard, `auth::require`, in one place).
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub handler: MethodRouter<Web>,
    pub role: Role,
}

/// Reads need a viewer, anything else an operator.
fn route(method: &'static str, path: &'static str, summary: &'static str, handler: MethodRouter<Web>) -> Route {
    let role = if method == "get" { Role::Viewer } else { Role::Operator };
    Route { method, path, summary, handler, role }
}

/// A route only admins may use (users).
fn admin(method: &'static str, path: &'static str, summary: &'static str, handler: MethodRouter<Web>) -> Route {
    Route { role: Role::Admin, ..route(method, path, summary, handler) }
}

const RUN: &str = "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}";

/// Every route served, in the OpenAPI document's order.
pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/api/v1/health", "Health of the metadatabase and the scheduler (public)", get(health)),
        route("get", "/api/v1/version", "The version of rhaiflow", get(version)),
        route("get", "/api/v1/openapi.json", "This document", get(openapi)),
        route("get", "/api/v1/dags", "List DAGs", get(list_dags)),
        route("get", "/api/v1/dags/{dag_id}", "Get a DAG", get(get_dag)),
        route("patch", "/api/v1/dags/{dag_id}", "Pause or unpause a DAG (`is_paused`)", patch(patch_dag)),
        route("get", "/api/v1/dags/{dag_id}/details", "Get a DAG's details", get(dag_details)),
        route(
            "get",
            "/api/v1/dags/{dag_id}/versions",
            "rhaiflow: a DAG's recorded versions and the runs pinned to each",
            get(dag_versions),
        ),
        route("get", "/api/v1/dags/{dag_id}/dagRuns", "List DAG runs (`~` for every DAG)", get(list_runs)),
        route("post", "/api/v1/dags/{dag_id}/dagRuns", "Trigger a DAG run", post(trigger)),
        route("get", RUN, "Get a DAG run", get(get_run)),
        route("patch", RUN, "Set a DAG run's state (success, failed, queued)", patch(patch_run)),
        route("post", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/clear", "Clear a DAG run", post(clear_run)),
        route(
            "get",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
            "List a run's task instances",
            get(list_tis),
        ),
        route(
            "get",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
            "Get a task instance",
            get(get_ti),
        ),
        route(
            "patch",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
            "Set a task instance's state (success, failed, skipped)",
            patch(patch_ti),
        ),
        route(
            "get",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{task_try_number}",
            "A try's log: text/plain, or JSON with a continuation token",
            get(logs),
        ),
        route(
            "get",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
            "List a task instance's XComs",
            get(list_xcoms),
        ),
        route(
            "get",
            "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
            "Get one XCom",
            get(get_xcom),
        ),
        route("post", "/api/v1/dags/{dag_id}/clearTaskInstances", "Clear task instances", post(clear_tis)),
        route("get", "/api/v1/dagSources/{file_token}", "A DAG file's source (`file_token` of a DAG)", get(dag_source)),
        route("get", "/api/v1/importErrors", "List import errors", get(list_import_errors)),
        route("get", "/api/v1/importErrors/{import_error_id}", "Get an import error", get(get_import_error)),
        route("get", "/api/v1/pools", "List pools", get(list_pools)),
        route("get", "/api/v1/pools/{pool_name}", "Get a pool", get(get_pool)),
        route(
            "get",
            "/api/v1/alertDeliveries",
            "rhaiflow: the alert outbox by `state` and `channel` (no addresses or secrets)",
            get(alert_deliveries),
        ),
        admin("get", "/api/v1/users", "List web users (admin)", get(list_users)),
        admin("post", "/api/v1/users", "Create a web user (admin)", post(create_user)),
        admin("get", "/api/v1/users/{username}", "Get a web user (admin)", get(get_user)),
        admin("delete", "/api/v1/users/{username}", "Delete a web user (admin)", delete(delete_user)),
    ]
}

type Answer = Result<Response, Problem>;
type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn ok(v: Value) -> Answer {
    Ok(axum::Json(v).into_response())
}

/// Airflow's `[api] maximum_page_limit` and default page size.
const MAX_PAGE: u32 = 100;

/// The query string's pairs, read as Airflow reads them.
struct Params(Vec<(String, String)>);

impl Params {
    fn of(q: RawQuery) -> Result<Params, Problem> {
        q.map(|Query(pairs)| Params(pairs)).map_err(|e| Problem::bad_request(format!("bad query string: {e}")))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).flat_map(|(_, v)| v.split(',')).map(str::to_owned).collect()
    }

    /// `limit` (1.., default and at most 100, as Airflow clamps) and `offset` (0..).
    fn page(&self) -> Result<Page, Problem> {
        let limit = match self.get("limit") {
            None => MAX_PAGE,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => n.min(u64::from(MAX_PAGE)) as u32,
                _ => return Err(Problem::bad_request(format!("`limit` must be an integer of at least 1, not `{v}`"))),
            },
        };
        let offset =
            match self.get("offset") {
                None => 0,
                Some(v) => v.parse::<u64>().ok().filter(|n| *n <= i64::MAX as u64).ok_or_else(|| {
                    Problem::bad_request(format!("`offset` must be a non-negative integer, not `{v}`"))
                })?,
            };
        Ok(Page::new(limit, offset))
    }

    /// A parameter this route does not read is a 400 naming it, never silently ignored.
    fn only(&self, known: &[&str]) -> Result<(), Problem> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(Problem::bad_request(format!(
                "query parameter `{k}` is not supported here (supported: {})",
                known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// An optional date parameter.
    fn date(&self, key: &str) -> Result<Option<DateTime<Utc>>, Problem> {
        self.get(key).map(|v| date(key, v)).transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Problem::bad_request(format!("`{key}` must be `true` or `false`, not `{v}`"))),
        }
    }
}

/// A JSON body (an empty one reads as `{}`); bad JSON or a wrong field is a 400 naming it.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Problem> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!(" at `{path}`") };
        Problem::bad_request(format!("bad request body{at}: {}", e.inner()))
    })
}

fn date(field: &str, text: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(text).map(|d| d.with_timezone(&Utc)).map_err(|_| {
        Problem::bad_request(format!(
            "`{field}` `{text}` is not a date with a time zone (RFC 3339, like 2024-01-01T00:00:00+00:00)"
        ))
    })
}

/// A read on the blocking pool; store errors are 500s.
async fn read<T: Send + 'static>(
    web: &Web,
    f: impl FnOnce(&Tx) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    web.store.read_async(move |tx| Ok(f(tx))).await?
}

/// An action on the blocking pool.
async fn act<T: Send + 'static>(
    web: &Web,
    f: impl FnOnce(&dyn Actions) -> Result<T, ActionError> + Send + 'static,
) -> Result<T, Problem> {
    let actions = web.actions.clone();
    match tokio::task::spawn_blocking(move || f(actions.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ActionError::Conflict(m))) => Err(Problem::conflict("Conflict", m)),
        Ok(Err(ActionError::Invalid(m))) => Err(Problem::bad_request(m)),
        Ok(Err(ActionError::Failed(m))) => Err(Problem::internal(m)),
        Err(e) => Err(Problem::internal(format!("the action failed: {e}"))),
    }
}

fn no_dag(dag_id: &str) -> Problem {
    Problem::not_found("DAG not found", format!("DAG with dag_id: '{dag_id}' not found"))
}

fn no_run(dag_id: &str, run_id: &str) -> Problem {
    Problem::not_found(
        "DAGRun not found",
        format!("DAGRun with DAG ID: '{dag_id}' and DagRun ID: '{run_id}' not found"),
    )
}

fn no_ti(key: &TiKey) -> Problem {
    Problem::not_found(
        "Task instance not found",
        format!(
            "Task instance with task_id: '{}' of DAGRun '{}' of DAG '{}' not found",
            key.task_id, key.run_id, key.dag_id
        ),
    )
}

fn entry(tx: &Tx, dag_id: &str) -> Result<crate::store::DagEntry, Problem> {
    tx.dag_entry(dag_id)?.ok_or_else(|| no_dag(dag_id))
}

fn run_of(tx: &Tx, dag_id: &str, run_id: &str) -> Result<DagRunRow, Problem> {
    if tx.dag_entry(dag_id)?.is_none() {
        return Err(no_dag(dag_id));
    }
    tx.dag_run(dag_id, run_id)?.ok_or_else(|| no_run(dag_id, run_id))
}

fn ti_of(tx: &Tx, key: &TiKey) -> Result<(DagRunRow, TiRow), Problem> {
    let run = run_of(tx, &key.dag_id, &key.run_id)?;
    let ti = tx.task_instance(key)?.ok_or_else(|| no_ti(key))?;
    Ok((run, ti))
}

// ---- health, version, document ------------------------------------------------------------------

async fn health(State(web): State<Web>) -> Response {
    let timeout = chrono::Duration::from_std(web.settings.heartbeat_timeout).unwrap_or(chrono::Duration::seconds(30));
    let beat = web.store.read_async(|tx| tx.latest_scheduler_heartbeat()).await;
    let (db, beat) = match beat {
        Ok(beat) => ("healthy", beat),
        Err(_) => ("unhealthy", None),
    };
    let scheduler = if beat.is_some_and(|b| Utc::now() - b <= timeout) { "healthy" } else { "unhealthy" };
    axum::Json(json!({
        "metadatabase": {"status": db},
        "scheduler": {"status": scheduler, "latest_scheduler_heartbeat": beat.as_ref().map(json::time)},
        "triggerer": {"status": null, "latest_triggerer_heartbeat": null},
        "dag_processor": {"status": null, "latest_dag_processor_heartbeat": null},
    }))
    .into_response()
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "git_version": null})).into_response()
}

async fn openapi() -> Response {
    axum::Json(super::openapi::document()).into_response()
}

// ---- DAGs ---------------------------------------------------------------------------------------

async fn list_dags(State(web): State<Web>, q: RawQuery) -> Answer {
    let p = Params::of(q)?;
    let page = p.page()?;
    if let Some(o) = p.get("order_by").filter(|o| !matches!(*o, "dag_id" | "-dag_id")) {
        return Err(Problem::bad_request(format!("ordering with `{o}` is not supported; use `dag_id` or `-dag_id`")));
    }
    let filter = DagFilter {
        tags: p.all("tags"),
        dag_id_pattern: p.get("dag_id_pattern").map(str::to_owned),
        only_active: p.bool("only_active")?.unwrap_or(true),
        paused: p.bool("paused")?,
        descending: p.get("order_by") == Some("-dag_id"),
        failed_only: false,
    };
    let out = read(&web, move |tx| {
        let (dags, total) = tx.dag_page(&filter, page)?;
        let out = dags.iter().map(|e| dag_object(tx, e, json::dag)).collect::<Result<Vec<Value>, Problem>>()?;
        Ok(json!({"dags": out, "total_entries": total}))
    })
    .await?;
    ok(out)
}

/// A DAG's JSON (`json::dag` or `json::dag_detail`) with its next run, as the scheduler's
/// timetable computes it after the DAG's latest scheduled run.
fn dag_object(
    tx: &Tx,
    e: &crate::store::DagEntry,
    shape: fn(&crate::store::DagEntry, Option<&crate::model::DagSpec>) -> Value,
) -> Result<Value, Problem> {
    let spec = json::spec_of(e);
    let mut v = shape(e, spec.as_ref());
    if let Some(spec) = &spec {
        let last = tx.latest_scheduled_interval(&e.dag_id)?.map(|(start, end)| DataInterval { start, end });
        json::set_next_dagrun(&mut v, crate::schedule::next_dagrun(spec, last, Utc::now()).as_ref());
    }
    Ok(v)
}

async fn get_dag(State(web): State<Web>, Path(dag_id): Path<String>) -> Answer {
    ok(read(&web, move |tx| dag_object(tx, &entry(tx, &dag_id)?, json::dag)).await?)
}

async fn dag_details(State(web): State<Web>, Path(dag_id): Path<String>) -> Answer {
    ok(read(&web, move |tx| dag_object(tx, &entry(tx, &dag_id)?, json::dag_detail)).await?)
}

/// rhaiflow's own: every recorded version of a DAG, oldest first, with the runs pinned to each.
async fn dag_versions(State(web): State<Web>, Path(dag_id): Path<String>, q: RawQuery) -> Answer {
    let page = Params::of(q)?.page()?;
    let id = dag_id.clone();
    let (e, versions) = read(&web, move |tx| Ok((entry(tx, &id)?, tx.dag_versions(&id)?))).await?;
    let total = versions.len();
    let out: Vec<Value> = versions
        .iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(page.limit as usize)
        .map(|v| json::dag_version(&dag_id, v, &e.latest_version_hash))
        .collect();
    ok(json!({"versions": out, "total_entries": total}))
}

/// The outbox's states (`store/alerts.rs`).
const ALERT_STATES: [&str; 6] = ["held", "pending", "sending", "sent", "failed", "coalesced"];

/// rhaiflow's own: the alert outbox, newest first, by `state` and `channel`.
async fn alert_deliveries(State(web): State<Web>, q: RawQuery) -> Answer {
    let p = Params::of(q)?;
    let page = p.page()?;
    let state = p.get("state").map(str::to_owned);
    if let Some(s) = state.as_deref().filter(|s| !ALERT_STATES.contains(s)) {
        return Err(Problem::bad_request(format!(
            "`state` `{s}` is not an alert delivery state ({})",
            ALERT_STATES.join(", ")
        )));
    }
    let channel = p.get("channel").map(str::to_owned);
    let (rows, total) = read(&web, move |tx| Ok(tx.alert_page(state.as_deref(), channel.as_deref(), page)?)).await?;
    ok(json!({"alert_deliveries": rows.iter().map(json::alert_delivery).collect::<Vec<_>>(), "total_entries": total}))
}

async fn patch_dag(State(web): State<Web>, Path(dag_id): Path<String>, q: RawQuery, bytes: Bytes) -> Answer {
    let p = Params::of(q)?;
    if let Some(bad) = p.all("update_mask").into_iter().find(|m| m != "is_paused") {
        return Err(Problem::bad_request(format!("only `is_paused` can be updated, not `{bad}`")));
    }
    let body: Value = body(&bytes)?;
    let Some(paused) = body.get("is_paused").and_then(Value::as_bool) else {
        return Err(Problem::bad_request("the body must hold `is_paused`: true or false"));
    };
    let id = dag_id.clone();
    read(&web, move |tx| entry(tx, &id)).await?;
    let id = dag_id.clone();
    act(&web, move |a| a.set_paused(&id, paused)).await?;
    ok(read(&web, move |tx| dag_object(tx, &entry(tx, &dag_id)?, json::dag)).await?)
}

// ---- DAG runs -----------------------------------------------------------------------------------

fn run_order(text: Option<&str>) -> Result<(RunOrder, bool), Problem> {
    let Some(text) = text else { return Ok((RunOrder::LogicalDate, false)) };
    let (name, descending) = match text.strip_prefix('-') {
        Some(n) => (n, true),
        None => (text, false),
    };
    let order = match name {
        "logical_date" | "execution_date" | "id" => RunOrder::LogicalDate,
        "start_date" => RunOrder::StartDate,
        "end_date" => RunOrder::EndDate,
        "dag_run_id" | "run_id" => RunOrder::RunId,
        "state" => RunOrder::State,
        _ => {
            return Err(Problem::bad_request(format!(
                "ordering with `{name}` is not supported; use logical_date, start_date, end_date, dag_run_id or state"
            )));
        }
    };
    Ok((order, descending))
}

async fn list_runs(State(web): State<Web>, Path(dag_id): Path<String>, q: RawQuery) -> Answer {
    let p = Params::of(q)?;
    p.only(&[
        "limit",
        "offset",
        "order_by",
        "state",
        "execution_date_gte",
        "execution_date_lte",
        "start_date_gte",
        "start_date_lte",
        "end_date_gte",
        "end_date_lte",
    ])?;
    let page = p.page()?;
    let dates = crate::store::RunDates {
        logical: (p.date("execution_date_gte")?, p.date("execution_date_lte")?),
        start: (p.date("start_date_gte")?, p.date("start_date_lte")?),
        end: (p.date("end_date_gte")?, p.date("end_date_lte")?),
    };
    let order = run_order(p.get("order_by"))?;
    let states = p.all("state");
    if let Some(bad) = states.iter().find(|s| s.parse::<DagRunState>().is_err()) {
        return Err(Problem::bad_request(format!(
            "`state` `{bad}` is not a DAG run state (queued, running, success, failed)"
        )));
    }
    let (runs, total) = read(&web, move |tx| {
        let dag = (dag_id != "~").then_some(dag_id);
        if let Some(d) = &dag {
            entry(tx, d)?;
        }
        Ok(tx.dag_run_page(dag.as_deref(), &states, &dates, order, page)?)
    })
    .await?;
    ok(json!({"dag_runs": runs.iter().map(json::dag_run).collect::<Vec<_>>(), "total_entries": total}))
}

async fn get_run(State(web): State<Web>, Path((dag_id, run_id)): Path<(String, String)>) -> Answer {
    let run = read(&web, move |tx| run_of(tx, &dag_id, &run_id)).await?;
    ok(json::dag_run(&run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    dag_run_id: Option<String>,
    logical_date: Option<String>,
    execution_date: Option<String>,
    data_interval_start: Option<String>,
    data_interval_end: Option<String>,
    conf: Option<Value>,
    /// Accepted for Airflow's clients; rhaiflow keeps no notes yet.
    #[allow(dead_code)]
    note: Option<String>,
}

async fn trigger(State(web): State<Web>, Path(dag_id): Path<String>, bytes: Bytes) -> Answer {
    let b: TriggerBody = body(&bytes)?;
    if b.data_interval_start.is_some() || b.data_interval_end.is_some() {
        return Err(Problem::bad_request(
            "rhaiflow infers a manual run's data interval from the DAG's timetable; leave out `data_interval_start` and `data_interval_end`",
        ));
    }
    let logical_date = match (&b.logical_date, &b.execution_date) {
        (Some(l), Some(e)) if l != e => {
            return Err(Problem::bad_request("`logical_date` and `execution_date` differ; give one"));
        }
        (Some(d), _) => date("logical_date", d)?,
        (None, Some(d)) => date("execution_date", d)?,
        (None, None) => Utc::now(),
    };
    let conf = b.conf.unwrap_or_else(|| json!({}));
    if !conf.is_object() {
        return Err(Problem::bad_request(format!("`conf` must be a JSON object, not `{conf}`")));
    }
    let (id, run_id) = (dag_id.clone(), b.dag_run_id.clone());
    read(&web, move |tx| {
        entry(tx, &id)?;
        if let Some(run_id) = run_id
            && tx.dag_run(&id, &run_id)?.is_some()
        {
            return Err(Problem::conflict(
                "DAGRun already exists",
                format!("DAGRun with DAG ID: '{id}' and DAGRun ID: '{run_id}' already exists"),
            ));
        }
        Ok(())
    })
    .await?;
    let req = TriggerRequest { dag_id, run_id: b.dag_run_id, logical_date, conf, reset_dag_run: false };
    let run = act(&web, move |a| a.trigger(&req)).await.map_err(|p| match p.status {
        StatusCode::CONFLICT => Problem::conflict("DAGRun already exists", p.detail),
        _ => p,
    })?;
    ok(json::dag_run(&run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunStateBody {
    state: String,
}

async fn patch_run(State(web): State<Web>, Path((dag_id, run_id)): Path<(String, String)>, bytes: Bytes) -> Answer {
    let b: RunStateBody = body(&bytes)?;
    let to = match b.state.as_str() {
        "success" => DagRunState::Success,
        "failed" => DagRunState::Failed,
        "queued" => DagRunState::Queued,
        other => {
            return Err(Problem::bad_request(format!("`state` must be success, failed or queued, not `{other}`")));
        }
    };
    let (d, r) = (dag_id.clone(), run_id.clone());
    read(&web, move |tx| run_of(tx, &d, &r)).await?;
    let (d, r) = (dag_id.clone(), run_id.clone());
    act(&web, move |a| a.set_run_state(&d, &r, to)).await?;
    let run = read(&web, move |tx| run_of(tx, &dag_id, &run_id)).await?;
    ok(json::dag_run(&run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRunBody {
    dry_run: Option<bool>,
    only_failed: Option<bool>,
}

async fn clear_run(State(web): State<Web>, Path((dag_id, run_id)): Path<(String, String)>, bytes: Bytes) -> Answer {
    let b: ClearRunBody = body(&bytes)?;
    let (d, r) = (dag_id.clone(), run_id.clone());
    let run = read(&web, move |tx| run_of(tx, &d, &r)).await?;
    let dry_run = b.dry_run.unwrap_or(true);
    let req = ClearTasks {
        dag_id: dag_id.clone(),
        run_id: Some(run_id.clone()),
        only_failed: b.only_failed.unwrap_or(false),
        dry_run,
        ..ClearTasks::default()
    };
    let tis = act(&web, move |a| a.clear(&req)).await?;
    if dry_run {
        let refs: Vec<Value> = tis.iter().map(|ti| json::task_instance_reference(ti, &run.logical_date)).collect();
        return ok(json!({"task_instances": refs}));
    }
    let run = read(&web, move |tx| run_of(tx, &dag_id, &run_id)).await?;
    ok(json::dag_run(&run))
}

// ---- task instances -----------------------------------------------------------------------------

async fn list_tis(State(web): State<Web>, Path((dag_id, run_id)): Path<(String, String)>, q: RawQuery) -> Answer {
    let p = Params::of(q)?;
    p.only(&["limit", "offset", "state"])?;
    let page = p.page()?;
    let states = p.all("state");
    if let Some(bad) = states.iter().find(|s| s.parse::<TaskState>().is_err() && s.as_str() != "none") {
        return Err(Problem::bad_request(format!("`state` `{bad}` is not a task instance state")));
    }
    let (run, (tis, total)) = read(&web, move |tx| {
        let run = run_of(tx, &dag_id, &run_id)?;
        Ok((run, tx.task_instance_page(&dag_id, &run_id, &states, page)?))
    })
    .await?;
    let out: Vec<Value> = tis.iter().map(|ti| json::task_instance(ti, &run.logical_date)).collect();
    ok(json!({"task_instances": out, "total_entries": total}))
}

async fn get_ti(State(web): State<Web>, Path((dag_id, run_id, task_id)): Path<(String, String, String)>) -> Answer {
    let key = TiKey { dag_id, run_id, task_id };
    let (run, ti) = read(&web, move |tx| ti_of(tx, &key)).await?;
    ok(json::task_instance(&ti, &run.logical_date))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TiStateBody {
    dry_run: Option<bool>,
    new_state: String,
}

async fn patch_ti(
    State(web): State<Web>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let b: TiStateBody = body(&bytes)?;
    let to = match b.new_state.as_str() {
        "success" => TaskState::Success,
        "failed" => TaskState::Failed,
        "skipped" => TaskState::Skipped,
        other => {
            return Err(Problem::bad_request(format!("`new_state` must be success, failed or skipped, not `{other}`")));
        }
    };
    let key = TiKey { dag_id, run_id, task_id };
    let k = key.clone();
    let (run, ti) = read(&web, move |tx| ti_of(tx, &k)).await?;
    if !b.dry_run.unwrap_or(false) {
        act(&web, move |a| a.mark(&key, to)).await?;
    }
    ok(json::task_instance_reference(&ti, &run.logical_date))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    dry_run: Option<bool>,
    task_ids: Option<Vec<String>>,
    start_date: Option<String>,
    end_date: Option<String>,
    only_failed: Option<bool>,
    only_running: Option<bool>,
    include_subdags: Option<bool>,
    include_parentdag: Option<bool>,
    reset_dag_runs: Option<bool>,
    dag_run_id: Option<String>,
    include_upstream: Option<bool>,
    include_downstream: Option<bool>,
    include_future: Option<bool>,
    include_past: Option<bool>,
}

async fn clear_tis(State(web): State<Web>, Path(dag_id): Path<String>, bytes: Bytes) -> Answer {
    let b: ClearBody = body(&bytes)?;
    let unsupported = [
        ("only_running", b.only_running),
        ("include_upstream", b.include_upstream),
        ("include_future", b.include_future),
        ("include_past", b.include_past),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, v)| *v == Some(true)) {
        return Err(Problem::bad_request(format!("`{name}: true` is not supported by rhaiflow yet")));
    }
    let _ = (b.include_subdags, b.include_parentdag, b.reset_dag_runs);
    let start = b.start_date.as_deref().map(|d| date("start_date", d)).transpose()?;
    let end = b.end_date.as_deref().map(|d| date("end_date", d)).transpose()?;
    let (id, run_id) = (dag_id.clone(), b.dag_run_id.clone());
    let runs = read(&web, move |tx| {
        entry(tx, &id)?;
        if let Some(r) = &run_id {
            run_of(tx, &id, r)?;
        }
        Ok(tx.dag_runs(&id)?)
    })
    .await?;
    let req = ClearTasks {
        dag_id,
        task_ids: b.task_ids,
        run_id: b.dag_run_id,
        start,
        end,
        only_failed: b.only_failed.unwrap_or(true),
        include_downstream: b.include_downstream.unwrap_or(false),
        dry_run: b.dry_run.unwrap_or(true),
    };
    let tis = act(&web, move |a| a.clear(&req)).await?;
    let refs: Vec<Value> = tis
        .iter()
        .filter_map(|ti| {
            let run = runs.iter().find(|r| r.run_id == ti.key.run_id)?;
            Some(json::task_instance_reference(ti, &run.logical_date))
        })
        .collect();
    ok(json!({"task_instances": refs}))
}

// ---- logs ---------------------------------------------------------------------------------------

/// The most log text one answer carries; the continuation token gives the rest.
const MAX_LOG_CHUNK: u64 = 4 << 20;

async fn logs(
    State(web): State<Web>,
    Path((dag_id, run_id, task_id, try_text)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    q: RawQuery,
) -> Answer {
    let p = Params::of(q)?;
    let try_number = try_text.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        Problem::bad_request(format!("`task_try_number` must be an integer of at least 1, not `{try_text}`"))
    })?;
    let offset = match p.get("token") {
        None => 0,
        Some(t) => {
            t.parse::<u64>().map_err(|_| Problem::bad_request(format!("`token` `{t}` is not a continuation token")))?
        }
    };
    let key = TiKey { dag_id, run_id, task_id };
    let k = key.clone();
    let (ti, stored) = read(&web, move |tx| {
        let (_, ti) = ti_of(tx, &k)?;
        let stored = if ti.try_number >= try_number { tx.task_log(&k, try_number)? } else { None };
        Ok((ti, stored))
    })
    .await?;
    if try_number > ti.try_number {
        return Err(Problem::not_found(
            "Log not found",
            format!(
                "task `{}` of run `{}` of DAG `{}` has had {} tries, so try {try_number} has no log",
                key.task_id, key.run_id, key.dag_id, ti.try_number
            ),
        ));
    }
    let path = web.actions.log_path(&key, try_number);
    let chunk = tokio::task::spawn_blocking(move || read_log(stored.as_deref(), &path, offset))
        .await
        .map_err(|e| Problem::internal(e.to_string()))??;
    let finished = ti.try_number > try_number || ti.state.is_finished();
    if wants_text(&headers) {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], chunk.text).into_response());
    }
    let token = (!finished || chunk.more).then(|| chunk.next.to_string());
    ok(json!({"content": chunk.text, "continuation_token": token}))
}

struct LogChunk {
    text: String,
    /// The offset after this chunk (the continuation token).
    next: u64,
    /// More text is there already (the chunk was cut at `MAX_LOG_CHUNK`).
    more: bool,
}

/// A try's log from byte `offset`: the text the store kept, then its file (as `tasks logs`
/// prints it), at most `MAX_LOG_CHUNK` bytes.
fn read_log(stored: Option<&str>, path: &std::path::Path, offset: u64) -> Result<LogChunk, Problem> {
    use std::io::{Read, Seek};
    let stored = stored.unwrap_or("").as_bytes();
    let mut out = Vec::new();
    let stored_len = stored.len() as u64;
    if offset < stored_len {
        out.extend_from_slice(&stored[offset as usize..]);
    }
    let file_from = offset.saturating_sub(stored_len);
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.seek(std::io::SeekFrom::Start(file_from))
                .map_err(|e| Problem::internal(format!("cannot read the log: {e}")))?;
            let room = MAX_LOG_CHUNK.saturating_sub(out.len() as u64);
            f.take(room + 1)
                .read_to_end(&mut out)
                .map_err(|e| Problem::internal(format!("cannot read the log: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Problem::internal(format!("cannot read the log: {e}"))),
    }
    let more = out.len() as u64 > MAX_LOG_CHUNK;
    out.truncate(MAX_LOG_CHUNK as usize);
    let next = offset + out.len() as u64;
    Ok(LogChunk { text: String::from_utf8_lossy(&out).into_owned(), next, more })
}

// ---- XComs --------------------------------------------------------------------------------------

async fn list_xcoms(
    State(web): State<Web>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    q: RawQuery,
) -> Answer {
    let page = Params::of(q)?.page()?;
    let key = TiKey { dag_id, run_id, task_id };
    let ((run, ti), (xs, total)) = read(&web, move |tx| {
        let found = ti_of(tx, &key)?;
        Ok((found, tx.xcom_page(&key, None, page)?))
    })
    .await?;
    let out: Vec<Value> = xs.iter().map(|x| json::xcom(x, &ti, &run.logical_date, None)).collect();
    ok(json!({"xcom_entries": out, "total_entries": total}))
}

async fn get_xcom(
    State(web): State<Web>,
    Path((dag_id, run_id, task_id, xcom_key)): Path<(String, String, String, String)>,
    q: RawQuery,
) -> Answer {
    let deserialize = Params::of(q)?.bool("deserialize")?.unwrap_or(false);
    let key = TiKey { dag_id, run_id, task_id };
    let (run, ti, x) = read(&web, move |tx| {
        let (run, ti) = ti_of(tx, &key)?;
        let (mut xs, _) = tx.xcom_page(&key, Some(&xcom_key), Page::new(1, 0))?;
        let x = xs.pop().ok_or_else(|| {
            Problem::not_found("XCom entry not found", format!("XCom entry with key: '{xcom_key}' not found"))
        })?;
        Ok((run, ti, x))
    })
    .await?;
    ok(json::xcom(&x, &ti, &run.logical_date, Some(deserialize)))
}

// ---- DAG sources --------------------------------------------------------------------------------

/// The most source text served: the loader's file size limit (`loader::MAX_FILE_BYTES`, a layer
/// beside this one).
const MAX_SOURCE_BYTES: u64 = 4 << 20;

/// `file_token` is the DAG's version hash: the version's own text when it kept it, else the file
/// as it is now in the dags folder. `text/plain` or JSON `{content}`, as Airflow.
async fn dag_source(State(web): State<Web>, Path(token): Path<String>, headers: HeaderMap) -> Answer {
    let t = token.clone();
    let missing = || Problem::not_found("DAG source not found", format!("no DAG version with file_token: '{token}'"));
    let (file, kept) = read(&web, move |tx| Ok(tx.version_file(&t)?)).await?.ok_or_else(missing)?;
    let text = match kept {
        Some(text) => text,
        None => {
            let path = web.settings.dags_folder.join(&file);
            tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                use std::io::Read;
                let mut text = String::new();
                std::fs::File::open(&path)?.take(MAX_SOURCE_BYTES).read_to_string(&mut text)?;
                Ok(text)
            })
            .await
            .map_err(|e| Problem::internal(e.to_string()))?
            .map_err(|e| Problem::not_found("DAG source not found", format!("cannot read `{file}`: {e}")))?
        }
    };
    if wants_text(&headers) {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    ok(json!({"content": text}))
}

/// `Accept: text/plain` (and not JSON): the endpoints that can answer either way answer in text.
fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"))
}

// ---- import errors and pools -------------------------------------------------------------------

async fn list_import_errors(State(web): State<Web>, q: RawQuery) -> Answer {
    let page = Params::of(q)?.page()?;
    let (errors, total) = read(&web, move |tx| Ok(tx.import_error_page(page)?)).await?;
    ok(json!({"import_errors": errors.iter().map(json::import_error).collect::<Vec<_>>(), "total_entries": total}))
}

async fn get_import_error(State(web): State<Web>, Path(id): Path<String>) -> Answer {
    let missing = || {
        Problem::not_found(
            "Import error not found",
            format!("The ImportError with import_error_id: `{id}` was not found"),
        )
    };
    let Ok(n) = id.parse::<i64>() else { return Err(missing()) };
    let e = read(&web, move |tx| Ok(tx.import_error_by_id(n)?)).await?.ok_or_else(missing)?;
    ok(json::import_error(&e))
}

async fn list_pools(State(web): State<Web>, q: RawQuery) -> Answer {
    let page = Params::of(q)?.page()?;
    let (pools, total) = read(&web, move |tx| Ok(tx.pool_page(None, page)?)).await?;
    ok(json!({"pools": pools.iter().map(json::pool).collect::<Vec<_>>(), "total_entries": total}))
}

async fn get_pool(State(web): State<Web>, Path(name): Path<String>) -> Answer {
    let n = name.clone();
    let (mut pools, _) = read(&web, move |tx| Ok(tx.pool_page(Some(&n), Page::new(1, 0))?)).await?;
    let pool = pools
        .pop()
        .ok_or_else(|| Problem::not_found("Pool not found", format!("Pool with name:'{name}' not found")))?;
    ok(json::pool(&pool))
}

// ---- users --------------------------------------------------------------------------------------

fn no_user(name: &str) -> Problem {
    Problem::not_found("User not found", format!("The User with username `{name}` was not found"))
}

async fn list_users(State(web): State<Web>, q: RawQuery) -> Answer {
    let page = Params::of(q)?.page()?;
    let (users, total) = read(&web, move |tx| Ok(tx.web_user_page(page)?)).await?;
    ok(json!({"users": users.iter().map(json::user).collect::<Vec<_>>(), "total_entries": total}))
}

async fn get_user(State(web): State<Web>, Path(name): Path<String>) -> Answer {
    let n = name.clone();
    let user = read(&web, move |tx| Ok(tx.web_user(&n)?)).await?.ok_or_else(|| no_user(&name))?;
    ok(json::user(&user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleName {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    password: String,
    roles: Vec<RoleName>,
    /// Accepted for Airflow's clients; rhaiflow keeps no names or addresses of users.
    #[allow(dead_code)]
    email: Option<String>,
    #[allow(dead_code)]
    first_name: Option<String>,
    #[allow(dead_code)]
    last_name: Option<String>,
}

async fn create_user(State(web): State<Web>, bytes: Bytes) -> Answer {
    let b: NewUserBody = body(&bytes)?;
    let [role] = b.roles.as_slice() else {
        return Err(Problem::bad_request("`roles` must name exactly one role: viewer, operator or admin"));
    };
    let role = role.name.clone();
    let user = act(&web, move |a| a.create_user(&b.username, &role, &b.password)).await?;
    ok(json::user(&user))
}

async fn delete_user(State(web): State<Web>, Path(name): Path<String>) -> Answer {
    let n = name.clone();
    read(&web, move |tx| Ok(tx.web_user(&n)?)).await?.ok_or_else(|| no_user(&name))?;
    act(&web, move |a| a.delete_user(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
