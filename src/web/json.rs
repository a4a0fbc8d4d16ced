//! Rows → Airflow 2.10's JSON objects (`DAG`, `DAGDetail`, `DAGRun`, `TaskInstance`, ...), with
//! Airflow's field names; fields rhaiflow has no notion of are present with Airflow's empty value.

use crate::model::{DagSpec, ScheduleSpec, TaskState};
use crate::store::{DagEntry, DagRunRow, ImportErrorRow, PoolRow, TiRow, WebUserRow, XComRow};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// `2024-01-01T00:00:00+00:00`, as Airflow writes times.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn opt_time(t: &Option<DateTime<Utc>>) -> Value {
    t.as_ref().map_or(Value::Null, |t| Value::String(time(t)))
}

/// Airflow's `TimeDelta` object.
fn timedelta(millis: u64) -> Value {
    let secs = millis / 1000;
    json!({"__type": "TimeDelta", "days": secs / 86_400, "seconds": secs % 86_400, "microseconds": (millis % 1000) * 1000})
}

fn schedule_interval(s: &ScheduleSpec) -> Value {
    match s {
        ScheduleSpec::None => Value::Null,
        ScheduleSpec::Once => json!({"__type": "CronExpression", "value": "@once"}),
        ScheduleSpec::Cron { expr, preset } => {
            json!({"__type": "CronExpression", "value": preset.as_deref().unwrap_or(expr)})
        }
        ScheduleSpec::Interval { every } => timedelta(every.as_millis()),
    }
}

/// The spec of a listed DAG (`None` when its version is missing or does not read).
pub fn spec_of(entry: &DagEntry) -> Option<DagSpec> {
    entry.spec_json.as_deref().and_then(|j| serde_json::from_str(j).ok())
}

/// Airflow's `DAG` object.
pub fn dag(entry: &DagEntry, spec: Option<&DagSpec>) -> Value {
    let owners: Vec<&str> = spec.map(|s| s.owners()).unwrap_or_default();
    let tags: Vec<Value> = spec.map_or(&[][..], |s| &s.tags[..]).iter().map(|t| json!({"name": t})).collect();
    json!({
        "dag_id": entry.dag_id,
        "dag_display_name": entry.dag_id,
        "root_dag_id": null,
        "is_paused": entry.is_paused,
        "is_active": entry.is_active,
        "is_subdag": false,
        "last_parsed_time": opt_time(&entry.last_parsed_at),
        "last_pickled": null,
        "last_expired": null,
        "scheduler_lock": null,
        "pickle_id": null,
        "default_view": "grid",
        "fileloc": entry.fileloc,
        "file_token": entry.latest_version_hash,
        "owners": owners,
        "description": spec.and_then(|s| s.description.clone()),
        "schedule_interval": spec.map_or(Value::Null, |s| schedule_interval(&s.schedule)),
        "timetable_description": spec.map(|s| s.schedule.to_string()),
        "tags": tags,
        "max_active_tasks": spec.map(|s| s.max_active_tasks),
        "max_active_runs": spec.map(|s| s.max_active_runs),
        "max_consecutive_failed_dag_runs": 0,
        "has_task_concurrency_limits": false,
        "has_import_errors": entry.has_import_errors,
        "next_dagrun": null,
        "next_dagrun_data_interval_start": null,
        "next_dagrun_data_interval_end": null,
        "next_dagrun_create_after": null,
    })
}

/// Airflow's `DAGDetail`: `DAG` and the DAG's arguments.
pub fn dag_detail(entry: &DagEntry, spec: Option<&DagSpec>) -> Value {
    let mut out = dag(entry, spec);
    let params: serde_json::Map<String, Value> = spec
        .map(|s| {
            s.params
                .iter()
                .map(|(k, v)| {
                    let param =
                        json!({"__class": "airflow.models.param.Param", "value": v, "description": null, "schema": {}});
                    (k.clone(), param)
                })
                .collect()
        })
        .unwrap_or_default();
    let extra = json!({
        "timezone": spec.map(|s| serde_json::to_value(&s.timezone).unwrap_or(Value::Null)),
        "catchup": spec.map(|s| s.catchup),
        "orientation": "LR",
        "concurrency": spec.map(|s| s.max_active_tasks),
        "start_date": spec.map_or(Value::Null, |s| opt_time(&s.start_date)),
        "end_date": spec.map_or(Value::Null, |s| opt_time(&s.end_date)),
        "dag_run_timeout": spec.and_then(|s| s.dagrun_timeout).map_or(Value::Null, |t| timedelta(t.as_millis())),
        "dataset_expression": null,
        "doc_md": spec.and_then(|s| s.doc_md.clone()),
        "is_paused_upon_creation": null,
        "last_parsed": opt_time(&entry.last_parsed_at),
        "params": params,
        "render_template_as_native_obj": false,
        "template_search_path": null,
    });
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    out
}

/// Airflow's `DAGRun`.
pub fn dag_run(run: &DagRunRow) -> Value {
    json!({
        "dag_run_id": run.run_id,
        "dag_id": run.dag_id,
        "logical_date": time(&run.logical_date),
        "execution_date": time(&run.logical_date),
        "start_date": opt_time(&run.start_date),
        "end_date": opt_time(&run.end_date),
        "data_interval_start": time(&run.data_interval_start),
        "data_interval_end": time(&run.data_interval_end),
        "last_scheduling_decision": null,
        "run_type": run.run_type.as_str(),
        "state": run.state.as_str(),
        "external_trigger": run.run_type.as_str() == "manual",
        "conf": run.conf,
        "note": null,
    })
}

/// A task instance's state as Airflow writes it: `none` is `null`.
fn ti_state(state: TaskState) -> Value {
    match state {
        TaskState::None => Value::Null,
        s => Value::String(s.to_string()),
    }
}

/// Airflow's `TaskInstance`; `logical_date` is its run's.
pub fn task_instance(ti: &TiRow, logical_date: &DateTime<Utc>) -> Value {
    json!({
        "task_id": ti.key.task_id,
        "task_display_name": ti.key.task_id,
        "dag_id": ti.key.dag_id,
        "dag_run_id": ti.key.run_id,
        "execution_date": time(logical_date),
        "start_date": opt_time(&ti.start_date),
        "end_date": opt_time(&ti.end_date),
        "duration": ti.duration,
        "state": ti_state(ti.state),
        "try_number": ti.try_number,
        "map_index": -1,
        "max_tries": ti.max_tries,
        "hostname": ti.hostname.clone().unwrap_or_default(),
        "unixname": "",
        "pool": ti.pool,
        "pool_slots": ti.pool_slots,
        "queue": null,
        "priority_weight": ti.priority_weight,
        "operator": ti.operator,
        "queued_when": opt_time(&ti.queued_at),
        "pid": ti.pid,
        "executor": null,
        "executor_config": "{}",
        "sla_miss": null,
        "rendered_map_index": null,
        "rendered_fields": {},
        "trigger": null,
        "triggerer_job": null,
        "note": null,
    })
}

/// Airflow's `TaskInstanceReference`.
pub fn task_instance_reference(ti: &TiRow, logical_date: &DateTime<Utc>) -> Value {
    json!({
        "task_id": ti.key.task_id,
        "dag_id": ti.key.dag_id,
        "execution_date": time(logical_date),
        "dag_run_id": ti.key.run_id,
    })
}

/// Airflow's `ImportError`: the rendered diagnostics (`file:line:col`, the line, a caret) are its
/// `stack_trace`.
pub fn import_error(e: &ImportErrorRow) -> Value {
    json!({
        "import_error_id": e.id,
        "timestamp": time(&e.timestamp),
        "filename": e.filename,
        "stack_trace": e.message,
    })
}

/// Airflow's `Pool`.
pub fn pool(p: &PoolRow) -> Value {
    let occupied = p.running_slots + p.queued_slots;
    json!({
        "name": p.name,
        "slots": p.slots,
        "occupied_slots": occupied,
        "running_slots": p.running_slots,
        "queued_slots": p.queued_slots,
        "scheduled_slots": p.scheduled_slots,
        "deferred_slots": 0,
        "open_slots": i64::from(p.slots) - occupied as i64,
        "description": p.description,
        "include_deferred": false,
    })
}

/// Airflow's `XCom` (with `value`) or `XComCollectionItem`. Without `deserialize` the value is
/// its stored JSON text, as Airflow returns the serialised value.
pub fn xcom(x: &XComRow, ti: &TiRow, logical_date: &DateTime<Utc>, value: Option<bool>) -> Value {
    let mut out = json!({
        "key": x.key,
        "timestamp": time(&x.timestamp),
        "execution_date": time(logical_date),
        "map_index": -1,
        "task_id": ti.key.task_id,
        "dag_id": ti.key.dag_id,
        "run_id": ti.key.run_id,
    });
    if let (Some(deserialize), Value::Object(o)) = (value, &mut out) {
        let v = if deserialize { x.value.clone() } else { Value::String(x.value.to_string()) };
        o.insert("value".into(), v);
    }
    out
}

/// Airflow's `User` object, as far as rhaiflow keeps users (one role, no names or address).
pub fn user(u: &WebUserRow) -> Value {
    json!({
        "username": u.username,
        "roles": [{"name": u.role}],
        "active": true,
        "created_on": time(&u.created),
        "first_name": "",
        "last_name": "",
        "email": null,
    })
}

/// A `DAG` object's `next_dagrun*` fields from the run the scheduler creates next.
pub fn set_next_dagrun(dag: &mut Value, next: Option<&crate::schedule::DagRunInfo>) {
    let field = |f: fn(&crate::schedule::DagRunInfo) -> DateTime<Utc>| next.map_or(Value::Null, |n| json!(time(&f(n))));
    dag["next_dagrun"] = field(|n| n.logical_date);
    dag["next_dagrun_data_interval_start"] = field(|n| n.data_interval.start);
    dag["next_dagrun_data_interval_end"] = field(|n| n.data_interval.end);
    dag["next_dagrun_create_after"] = field(|n| n.run_after);
}

/// rhaiflow's `DAGVersion` object: one recorded version and the runs pinned to it.
pub fn dag_version(dag_id: &str, v: &crate::store::DagVersionRow, latest: &str) -> Value {
    json!({
        "dag_id": dag_id,
        "version_hash": v.version_hash,
        "file_token": v.version_hash,
        "first_seen": time(&v.created_at),
        "fileloc": v.fileloc,
        "runs": v.runs,
        "is_latest": v.version_hash == latest,
    })
}

/// rhaiflow's `AlertDelivery` object: one outbox row, by channel name (never an address, a URL
/// or the message).
pub fn alert_delivery(a: &crate::store::OutboxRow) -> Value {
    json!({
        "id": a.id,
        "channel": a.channel,
        "event": a.event,
        "dag_id": a.dag_id,
        "dag_run_id": a.run_id,
        "task_id": a.task_id,
        "try_number": a.try_number,
        "state": a.state,
        "attempts": a.attempts,
        "last_error": a.last_error,
        "created_at": time(&a.created_at),
        "attempted_at": opt_time(&a.attempted_at),
        "next_attempt_at": opt_time(&a.next_attempt_at),
        "sent_at": opt_time(&a.sent_at),
        "coalesced_into": a.coalesced_into,
    })
}
