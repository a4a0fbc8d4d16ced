//! What a try sees: Airflow's template context, and the secrets masked in its log.

use super::WorkerSettings;
use crate::executor::template::{self, TemplateContext, XcomPushes};
use crate::model::{QueuedTask, RunType};
use chrono::{DateTime, Utc};

/// Airflow's template context for one task instance. `prev_success` is left for the caller to
/// read when a template asks for it (`template::needs`).
pub fn template_context(
    task: &QueuedTask,
    settings: &WorkerSettings,
    xcoms: Vec<(String, String, serde_json::Value)>,
) -> TemplateContext {
    let mut params = task.dag.params.clone();
    params.extend(task.task().params.clone());
    if let serde_json::Value::Object(conf) = &task.run.conf {
        // As Airflow's `dag_run_conf_overrides_params`.
        params.extend(conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let (prev_logical_date, next_logical_date) = schedule_neighbours(task);
    let (dag, t) = (&task.dag, task.task());
    let dag_attrs = serde_json::json!({
        "dag_id": dag.dag_id,
        "description": dag.description,
        "owner": dag.owner(),
        "tags": dag.tags,
        "schedule_interval": dag.schedule.to_string(),
        "timezone": dag.timezone.to_string(),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "params": dag.params,
        "fileloc": dag.fileloc,
        "doc_md": dag.doc_md,
    });
    let task_attrs = serde_json::json!({
        "task_id": t.task_id,
        "dag_id": dag.dag_id,
        "task_type": t.operator.name(),
        "owner": t.owner,
        "retries": t.retries,
        "queue": t.queue,
        "pool": t.pool,
        "pool_slots": t.pool_slots,
        "priority_weight": t.priority_weight,
        "email": t.email,
        "trigger_rule": t.trigger_rule,
        "depends_on_past": t.depends_on_past,
        "params": t.params,
        "doc_md": t.doc_md,
    });
    TemplateContext {
        dag_id: task.key.dag_id.clone(),
        task_id: task.key.task_id.clone(),
        run_id: task.key.run_id.clone(),
        run_type: task.run.run_type.as_str().to_string(),
        logical_date: task.run.logical_date,
        data_interval_start: task.run.data_interval_start,
        data_interval_end: task.run.data_interval_end,
        prev_logical_date,
        next_logical_date,
        prev_success: None,
        try_number: task.try_number,
        max_tries: task.max_tries,
        hostname: settings.hostname.clone(),
        params,
        conf: task.run.conf.clone(),
        variables: settings.variables.clone(),
        connections: settings.connections.clone(),
        xcoms,
        dag: (format!("<DAG: {}>", dag.dag_id), dag_attrs),
        task: (format!("<Task({}): {}>", t.operator.name(), t.task_id), task_attrs),
        pushes: XcomPushes::default(),
        max_xcom_bytes: settings.max_xcom_bytes,
    }
}

/// `prev_execution_date` and `next_execution_date` as Airflow 2.10 computes them: the logical
/// date itself for a manual run, else the schedule's logical dates around this run's.
pub fn schedule_neighbours(task: &QueuedTask) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let logical = task.run.logical_date;
    if task.run.run_type == RunType::Manual {
        return (Some(logical), Some(logical));
    }
    let Ok(timetable) = crate::schedule::Timetable::new(&task.dag) else { return (None, None) };
    let interval =
        crate::schedule::DataInterval { start: task.run.data_interval_start, end: task.run.data_interval_end };
    let unrestricted = crate::schedule::Restriction { earliest: None, latest: None, catchup: true };
    let next = timetable.next_dagrun_info(Some(interval), unrestricted, logical).map(|info| info.logical_date);
    (timetable.previous_logical_date(logical), next)
}

/// Shorter secrets are not masked (Airflow's `[logging] min_length_masked_secret`): masking `ab`
/// would garble every log line and hide nothing.
const MIN_MASKED_SECRET: usize = 5;

/// A variable, or a key of a connection's extra, whose name holds one of these is a secret
/// (Airflow's `DEFAULT_SENSITIVE_FIELDS`).
const SENSITIVE_NAMES: [&str; 12] = [
    "access_token",
    "api_key",
    "apikey",
    "authorization",
    "passphrase",
    "passwd",
    "password",
    "private_key",
    "secret",
    "token",
    "keyfile_dict",
    "service_account",
];

fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_NAMES.iter().any(|s| name.contains(s))
}

/// Every secret rhaiflow knows of, longest first (so a secret that contains another is masked
/// whole), as Airflow's secrets masker holds them: each connection's password as a template reads
/// it (percent-decoded) and as written in its URI, the values under sensitive keys of its extra,
/// and the values of variables with sensitive names.
pub fn secrets(settings: &WorkerSettings) -> Vec<String> {
    let mut secrets = Vec::new();
    for (conn_id, uri) in &settings.connections {
        if let Some(raw) = uri.split_once("://").and_then(|(_, rest)| {
            let userinfo = &rest[..rest.rfind('@')?];
            userinfo.split_once(':').map(|(_, password)| password)
        }) {
            secrets.push(raw.to_string());
        }
        let Ok(conn) = template::Connection::parse(conn_id, uri) else { continue };
        if let (Some(login), Some(password)) = (&conn.login, &conn.password) {
            // The Basic credentials a request with this login sends, as a receiver may echo them.
            use base64::Engine;
            secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}")));
        }
        secrets.extend(conn.password);
        if let Some(extra) = conn.extra.and_then(|e| serde_json::from_str::<serde_json::Value>(&e).ok()) {
            sensitive_values(&extra, false, &mut secrets);
        }
    }
    for (name, value) in &settings.variables {
        if is_sensitive(name) {
            secrets.push(value.clone());
        }
    }
    secrets.retain(|s| s.len() >= MIN_MASKED_SECRET);
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// The strings under sensitive keys of a JSON value (all of them under such a key).
fn sensitive_values(value: &serde_json::Value, under_sensitive: bool, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if under_sensitive => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| sensitive_values(v, under_sensitive, out)),
        serde_json::Value::Object(map) => {
            map.iter().for_each(|(k, v)| sensitive_values(v, under_sensitive || is_sensitive(k), out))
        }
        _ => {}
    }
}

/// `text` with every secret of [`secrets`] replaced by `***`, for lines rhaiflow itself writes to
/// a task's log.
pub fn mask_secrets(text: &str, settings: &WorkerSettings) -> String {
    crate::executor::mask(text, &secrets(settings))
}
