//! The DAG list, the grid, the task instance page, alerts and import errors, and the forms that
//! act (pause, trigger, clear, mark), each checked for the CSRF token and the operator role.

use super::{Rendered, Req, UiError, back_to, words};
use crate::model::{DagSpec, TaskState, TiKey};
use crate::operators::TriggerRequest;
use crate::schedule::{DataInterval, Restriction, Timetable};
use crate::store::{DagEntry, DagFilter, DagRunRow, OutboxFilter, Page, TiRow, Tx};
use crate::web::ClearTasks;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

pub(super) type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;
type RawForm = Result<Form<BTreeMap<String, String>>, FormRejection>;

/// A query string's pairs; a malformed one is a 400 page.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn of(q: RawQuery) -> Result<Params, UiError> {
        q.map(|Query(p)| Params(p)).map_err(|e| UiError::bad_request(format!("bad query string: {e}")))
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.clone()).collect()
    }

    /// A bounded count (`runs=`, `offset=`): `default` when absent, a 400 page when not a number
    /// in `1..=max` (`0..=max` for offsets).
    pub(super) fn count(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, UiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                UiError::bad_request(format!("`{key}` must be an integer from {min} to {max}, not `{v}`"))
            }),
        }
    }
}

fn form_of(f: RawForm) -> Result<BTreeMap<String, String>, UiError> {
    f.map(|Form(m)| m).map_err(|e| UiError::bad_request(format!("the form does not read: {e}")))
}

/// `2024-01-01T00:00:00Z`: what `<time datetime>` carries (the browser shows it in its zone).
pub(super) fn iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_iso(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.as_ref().map(iso)
}

/// The DAG's row and its latest spec; a 404 page naming it when it is not there.
pub(super) fn dag_of(tx: &Tx, dag_id: &str) -> Result<(DagEntry, DagSpec), UiError> {
    let entry = tx.dag_entry(dag_id)?.ok_or_else(|| UiError::not_found(format!("no DAG `{dag_id}`")))?;
    let spec = entry.spec_json.as_deref().and_then(|j| serde_json::from_str::<DagSpec>(j).ok()).ok_or_else(|| {
        UiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("DAG `{dag_id}` has no readable version"))
    })?;
    Ok((entry, spec))
}

/// A run of the DAG; a 404 page naming both when it is not there.
pub(super) fn run_of(tx: &Tx, dag_id: &str, run_id: &str) -> Result<DagRunRow, UiError> {
    tx.dag_run(dag_id, run_id)?.ok_or_else(|| UiError::not_found(format!("DAG `{dag_id}` has no run `{run_id}`")))
}

/// The spec a run used (its pinned version), else the latest.
pub(super) fn spec_of_run(tx: &Tx, run: &DagRunRow, latest: DagSpec) -> Result<DagSpec, UiError> {
    Ok(tx.dag_version_json(&run.version_hash)?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or(latest))
}

/// When the scheduler creates the DAG's next run (after its latest scheduled one).
pub(super) fn next_run(tx: &Tx, spec: &DagSpec, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, UiError> {
    let Ok(tt) = Timetable::new(spec) else { return Ok(None) };
    let last = tx.latest_scheduled_interval(&spec.dag_id)?.map(|(start, end)| DataInterval { start, end });
    Ok(tt
        .next_dagrun_info(last, Restriction::of(spec), now)
        .filter(|i| last != Some(i.data_interval))
        .map(|i| i.run_after))
}

/// One run as a coloured square or a grid column head.
#[derive(Serialize)]
pub(super) struct RunMark {
    run_id: String,
    state: String,
    glyph: &'static str,
    logical_date: String,
    start: Option<String>,
    duration: Option<String>,
    run_type: String,
}

pub(super) fn run_mark(run: &DagRunRow, now: DateTime<Utc>) -> RunMark {
    let end = run.end_date.unwrap_or(now);
    RunMark {
        run_id: run.run_id.clone(),
        state: run.state.to_string(),
        glyph: words::glyph(run.state.as_str()),
        logical_date: iso(&run.logical_date),
        start: opt_iso(&run.start_date),
        duration: run.start_date.map(|s| words::duration((end - s).num_milliseconds() as f64 / 1000.0)),
        run_type: run.run_type.to_string(),
    }
}

/// The header every DAG page shows: latest run, schedule, next run, pause, trigger.
#[derive(Serialize)]
pub(super) struct DagHeader {
    dag_id: String,
    description: Option<String>,
    paused: bool,
    schedule: String,
    schedule_raw: String,
    next_run: Option<String>,
    latest: Option<RunMark>,
    tags: Vec<String>,
    owners: String,
    has_import_errors: bool,
    fileloc: String,
    version_hash: String,
}

impl DagHeader {
    pub(super) fn dag_id_owned(&self) -> String {
        self.dag_id.clone()
    }

    pub(super) fn fileloc_owned(&self) -> String {
        self.fileloc.clone()
    }

    pub(super) fn version_hash_owned(&self) -> String {
        self.version_hash.clone()
    }
}

pub(super) fn dag_header(r: &Req, tx: &Tx, entry: &DagEntry, spec: &DagSpec) -> Result<DagHeader, UiError> {
    let now = Utc::now();
    let (latest, _) = tx.dag_runs_page(&entry.dag_id, Page::new(1, 0))?;
    Ok(DagHeader {
        dag_id: entry.dag_id.clone(),
        description: spec.description.clone(),
        paused: entry.is_paused,
        schedule: words::schedule(&r.ui, r.lang, spec),
        schedule_raw: spec.schedule.to_string(),
        next_run: opt_iso(&next_run(tx, spec, now)?),
        latest: latest.first().map(|run| run_mark(run, now)),
        tags: spec.tags.clone(),
        owners: spec.owners().join(", "),
        has_import_errors: entry.has_import_errors,
        fileloc: entry.fileloc.clone(),
        version_hash: entry.latest_version_hash.clone(),
    })
}

// ---- DAG list -----------------------------------------------------------------------------------

const LIST_PAGE: u64 = 100;
const SQUARES: u32 = 25;

#[derive(Serialize)]
struct DagRow {
    header: DagHeader,
    runs: Vec<RunMark>,
    running: usize,
    failed: usize,
}

#[derive(Serialize)]
struct ImportErrorView {
    file: String,
    line: Option<usize>,
    col: Option<usize>,
    message: String,
    first_line: String,
    timestamp: String,
}

fn import_error_view(filename: &str, message: &str, timestamp: &DateTime<Utc>) -> ImportErrorView {
    let (line, col) = locate(filename, message);
    let first_line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    ImportErrorView {
        file: filename.to_string(),
        line,
        col,
        message: message.to_string(),
        first_line,
        timestamp: iso(timestamp),
    }
}

/// The line and column an import error's message points at (`file:line:col`).
fn locate(filename: &str, message: &str) -> (Option<usize>, Option<usize>) {
    let name = filename.rsplit('/').next().unwrap_or(filename);
    for (at, _) in message.match_indices(name) {
        let rest = &message[at + name.len()..];
        let mut parts = rest.strip_prefix(':').unwrap_or("").splitn(3, ':');
        let digits = |s: Option<&str>| {
            s.map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>()).and_then(|d| d.parse().ok())
        };
        let line = digits(parts.next());
        if line.is_some() {
            return (line, digits(parts.next()));
        }
    }
    (None, None)
}

pub(super) async fn dag_list(r: Req, q: RawQuery) -> Response {
    let page = dag_list_page(&r, q).await;
    r.respond(page)
}

async fn dag_list_page(r: &Req, q: RawQuery) -> Result<Rendered, UiError> {
    let p = Params::of(q)?;
    let offset = p.count("offset", 0, 0, i64::MAX as u64)?;
    let failed_only = p.get("failed").is_some_and(|v| v == "1" || v == "on" || v == "true");
    let tags = p.all("tag");
    let search = p.get("q").map(str::to_owned);
    let filter = DagFilter {
        tags: tags.clone(),
        dag_id_pattern: search.clone(),
        only_active: true,
        paused: None,
        descending: false,
        failed_only,
    };
    let req = r.clone();
    let (rows, total, errors) =
        r.ui.read(move |tx| {
            let now = Utc::now();
            let (entries, total) = tx.dag_page(&filter, Page::new(LIST_PAGE as u32, offset))?;
            let ids: Vec<String> = entries.iter().map(|e| e.dag_id.clone()).collect();
            let mut runs: HashMap<String, Vec<DagRunRow>> = HashMap::new();
            for run in tx.recent_runs(&ids, SQUARES)? {
                runs.entry(run.dag_id.clone()).or_default().push(run);
            }
            let mut rows = Vec::with_capacity(entries.len());
            for e in &entries {
                let Some(spec) = e.spec_json.as_deref().and_then(|j| serde_json::from_str::<DagSpec>(j).ok()) else {
                    continue;
                };
                let dag_runs = runs.remove(&e.dag_id).unwrap_or_default();
                let running = dag_runs.iter().filter(|r| !r.state.is_finished()).count();
                let failed = dag_runs.iter().filter(|r| r.state == crate::model::DagRunState::Failed).count();
                let latest = dag_runs.last().map(|run| run_mark(run, now));
                let header = DagHeader {
                    dag_id: e.dag_id.clone(),
                    description: spec.description.clone(),
                    paused: e.is_paused,
                    schedule: words::schedule(&req.ui, req.lang, &spec),
                    schedule_raw: spec.schedule.to_string(),
                    next_run: opt_iso(&next_run(tx, &spec, now)?),
                    latest,
                    tags: spec.tags.clone(),
                    owners: spec.owners().join(", "),
                    has_import_errors: e.has_import_errors,
                    fileloc: e.fileloc.clone(),
                    version_hash: e.latest_version_hash.clone(),
                };
                let marks = dag_runs.iter().map(|run| run_mark(run, now)).collect();
                rows.push(DagRow { header, runs: marks, running, failed });
            }
            let (errors, _) = tx.import_error_page(Page::new(100, 0))?;
            let errors: Vec<ImportErrorView> =
                errors.iter().map(|e| import_error_view(&e.filename, &e.message, &e.timestamp)).collect();
            Ok((rows, total, errors))
        })
        .await?;
    let next_offset = (offset + LIST_PAGE < total).then_some(offset + LIST_PAGE);
    let prev_offset = (offset > 0).then(|| offset.saturating_sub(LIST_PAGE));
    let ctx = ctx! {
        dags => rows, total => total, errors => errors, tags => tags, search => search,
        failed_only => failed_only, next_offset => next_offset, prev_offset => prev_offset,
        offset => offset, live_dag => "",
    };
    Ok(Rendered::page("dags.html", Some("dags_live.html"), ctx))
}

// ---- grid ---------------------------------------------------------------------------------------

/// One row of the grid: a task, or a task group's summary.
#[derive(Serialize)]
struct GridRow {
    task_id: String,
    label: String,
    depth: usize,
    /// Set on a group's summary row.
    group: Option<String>,
    /// The groups this row sits in (outermost first), so collapsing one hides its rows.
    in_groups: Vec<String>,
    operator: String,
    cells: Vec<Cell>,
}

#[derive(Serialize, Clone)]
struct Cell {
    run_id: String,
    state: String,
    glyph: &'static str,
    try_number: u32,
    start: Option<String>,
    duration: Option<String>,
}

fn empty_cell(run_id: &str) -> Cell {
    Cell { run_id: run_id.to_string(), state: "none".into(), glyph: "", try_number: 0, start: None, duration: None }
}

fn cell(ti: &TiRow) -> Cell {
    Cell {
        run_id: ti.key.run_id.clone(),
        state: ti.state.to_string(),
        glyph: words::glyph(ti.state.as_str()),
        try_number: ti.try_number,
        start: opt_iso(&ti.start_date),
        duration: ti.duration.map(words::duration),
    }
}

/// The groups `group` sits in, outermost first, itself last.
pub(super) fn group_path(spec: &DagSpec, group: Option<&str>) -> Vec<String> {
    let mut path = Vec::new();
    let mut at = group.map(str::to_owned);
    while let Some(g) = at {
        if path.contains(&g) || path.len() > 64 {
            break;
        }
        at = spec.task_groups.iter().find(|tg| tg.group_id == g).and_then(|tg| tg.parent_group.clone());
        path.push(g);
    }
    path.reverse();
    path
}

/// Tasks in topological order, each group's tasks together under its summary row (placed where
/// its first task comes).
fn grid_rows(spec: &DagSpec, runs: &[DagRunRow], tis: &[TiRow]) -> Vec<GridRow> {
    let order: Vec<String> = match crate::graph::TaskGraph::build(spec) {
        Ok(g) => g.topological_order().into_iter().map(str::to_owned).collect(),
        Err(_) => spec.tasks.iter().map(|t| t.task_id.clone()).collect(),
    };
    let by_key: HashMap<(&str, &str), &TiRow> =
        tis.iter().map(|ti| ((ti.key.task_id.as_str(), ti.key.run_id.as_str()), ti)).collect();
    let paths: HashMap<&str, Vec<String>> =
        spec.tasks.iter().map(|t| (t.task_id.as_str(), group_path(spec, t.task_group.as_deref()))).collect();
    let mut rows = Vec::new();
    let mut emitted_groups: Vec<String> = Vec::new();
    let mut emitted_tasks: std::collections::HashSet<String> = Default::default();
    fn emit(
        prefix: &[String],
        order: &[String],
        spec: &DagSpec,
        paths: &HashMap<&str, Vec<String>>,
        ctx: &mut (Vec<GridRow>, Vec<String>, std::collections::HashSet<String>),
        cells_of: &dyn Fn(&str) -> Vec<Cell>,
        group_cells: &dyn Fn(&[&str]) -> Vec<Cell>,
    ) {
        for task_id in order {
            if ctx.2.contains(task_id) {
                continue;
            }
            let Some(path) = paths.get(task_id.as_str()) else { continue };
            if !path.starts_with(prefix) {
                continue;
            }
            if path.len() == prefix.len() {
                let operator = spec.task(task_id).map(|t| operator_name(&t.operator)).unwrap_or_default();
                ctx.2.insert(task_id.clone());
                ctx.0.push(GridRow {
                    task_id: task_id.clone(),
                    label: short_id(task_id, prefix.last()),
                    depth: prefix.len(),
                    group: None,
                    in_groups: prefix.to_vec(),
                    operator,
                    cells: cells_of(task_id),
                });
            } else {
                let sub = &path[..prefix.len() + 1];
                let g = sub[prefix.len()].clone();
                if ctx.1.contains(&g) {
                    continue;
                }
                ctx.1.push(g.clone());
                let members: Vec<&str> = paths.iter().filter(|(_, p)| p.starts_with(sub)).map(|(t, _)| *t).collect();
                ctx.0.push(GridRow {
                    task_id: g.clone(),
                    label: short_id(&g, prefix.last()),
                    depth: prefix.len(),
                    group: Some(g.clone()),
                    in_groups: prefix.to_vec(),
                    operator: String::new(),
                    cells: group_cells(&members),
                });
                emit(sub, order, spec, paths, ctx, cells_of, group_cells);
            }
        }
    }
    let cells_of = |task_id: &str| -> Vec<Cell> {
        runs.iter()
            .map(|run| {
                by_key.get(&(task_id, run.run_id.as_str())).map_or_else(|| empty_cell(&run.run_id), |ti| cell(ti))
            })
            .collect()
    };
    let group_cells = |members: &[&str]| -> Vec<Cell> {
        runs.iter()
            .map(|run| {
                let worst = words::worst(
                    members.iter().filter_map(|t| by_key.get(&(*t, run.run_id.as_str()))).map(|ti| ti.state),
                );
                match worst {
                    Some(s) => {
                        Cell { state: s.to_string(), glyph: words::glyph(s.as_str()), ..empty_cell(&run.run_id) }
                    }
                    None => empty_cell(&run.run_id),
                }
            })
            .collect()
    };
    let mut ctx = (std::mem::take(&mut rows), std::mem::take(&mut emitted_groups), std::mem::take(&mut emitted_tasks));
    emit(&[], &order, spec, &paths, &mut ctx, &cells_of, &group_cells);
    ctx.0
}

/// A task id without its group's prefix (`group.task` → `task`) under its group's row.
fn short_id(id: &str, group: Option<&String>) -> String {
    match group {
        Some(g) => id.strip_prefix(&format!("{g}.")).unwrap_or(id).to_string(),
        None => id.to_string(),
    }
}

pub(super) fn operator_name(op: &crate::model::Operator) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "Operator".into())
}

pub(super) async fn grid(r: Req, Path(dag_id): Path<String>, q: RawQuery) -> Response {
    let page = grid_page(&r, dag_id, q).await;
    r.respond(page)
}

async fn grid_page(r: &Req, dag_id: String, q: RawQuery) -> Result<Rendered, UiError> {
    let p = Params::of(q)?;
    let n = p.count("runs", 25, 1, 100)?;
    let req = r.clone();
    let (header, rows, runs) =
        r.ui.read(move |tx| {
            let (entry, spec) = dag_of(tx, &dag_id)?;
            let header = dag_header(&req, tx, &entry, &spec)?;
            let (mut runs, _) = tx.dag_runs_page(&dag_id, Page::new(n as u32, 0))?;
            runs.reverse();
            let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
            let tis = tx.task_instances_of_runs(&dag_id, &ids)?;
            let rows = grid_rows(&spec, &runs, &tis);
            let now = Utc::now();
            let marks: Vec<RunMark> = runs.iter().map(|run| run_mark(run, now)).collect();
            Ok((header, rows, marks))
        })
        .await?;
    let live_dag = header.dag_id.clone();
    let ctx = ctx! { dag => header, rows => rows, runs => runs, n => n, tab => "grid", live_dag => live_dag };
    Ok(Rendered::page("grid.html", Some("grid_live.html"), ctx))
}

// ---- task instance ------------------------------------------------------------------------------

/// The most log text a page shows; the download link gives all of it.
const PAGE_LOG_BYTES: u64 = 2 << 20;

#[derive(Serialize)]
struct TryTab {
    number: u32,
    selected: bool,
}

#[derive(Serialize)]
struct XComView {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct AlertView {
    id: i64,
    created_at: String,
    event: String,
    channel: String,
    state: String,
    attempts: u32,
    last_error: Option<String>,
    try_number: Option<u32>,
    run_id: String,
    dag_id: String,
    task_id: Option<String>,
}

fn alert_view(a: &crate::store::OutboxRow) -> AlertView {
    AlertView {
        id: a.id,
        created_at: iso(&a.created_at),
        event: a.event.clone(),
        channel: a.channel.clone(),
        state: a.state.clone(),
        attempts: a.attempts,
        last_error: a.last_error.clone(),
        try_number: a.try_number,
        run_id: a.run_id.clone(),
        dag_id: a.dag_id.clone(),
        task_id: a.task_id.clone(),
    }
}

#[derive(Serialize)]
struct TiView {
    dag_id: String,
    run_id: String,
    task_id: String,
    state: String,
    glyph: &'static str,
    try_number: u32,
    max_tries: u32,
    operator: String,
    pool: String,
    hostname: Option<String>,
    queued_at: Option<String>,
    start: Option<String>,
    end: Option<String>,
    duration: Option<String>,
    finished: bool,
}

/// A try's log: the text the store kept, then its file; at most `limit` bytes from the end.
/// Returns the text, whether it was cut, and the file's length (where a live tail goes on).
fn read_log(stored: Option<&str>, path: &std::path::Path, limit: u64) -> (String, bool, u64) {
    use std::io::{Read, Seek};
    let mut out: Vec<u8> = stored.unwrap_or("").as_bytes().to_vec();
    let mut file_len = 0;
    if let Ok(mut f) = std::fs::File::open(path) {
        file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = file_len.saturating_sub(limit);
        if f.seek(std::io::SeekFrom::Start(from)).is_ok() {
            let mut buf = Vec::new();
            let _ = f.take(limit).read_to_end(&mut buf);
            file_len = from + buf.len() as u64;
            out.extend_from_slice(&buf);
        }
    }
    let cut = out.len() as u64 > limit;
    if cut {
        let drop = out.len() - limit as usize;
        out.drain(..drop);
    }
    (String::from_utf8_lossy(&out).into_owned(), cut, file_len)
}

pub(super) async fn task_instance(
    r: Req,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    q: RawQuery,
) -> Response {
    let page = task_page(&r, TiKey { dag_id, run_id, task_id }, q).await;
    r.respond(page)
}

fn ti_of(tx: &Tx, key: &TiKey) -> Result<(DagEntry, DagSpec, DagRunRow, TiRow), UiError> {
    let (entry, spec) = dag_of(tx, &key.dag_id)?;
    let run = run_of(tx, &key.dag_id, &key.run_id)?;
    let ti = tx.task_instance(key)?.ok_or_else(|| {
        UiError::not_found(format!("run `{}` of DAG `{}` has no task `{}`", key.run_id, key.dag_id, key.task_id))
    })?;
    Ok((entry, spec, run, ti))
}

async fn task_page(r: &Req, key: TiKey, q: RawQuery) -> Result<Rendered, UiError> {
    let p = Params::of(q)?;
    let want_try = match p.get("try") {
        None => None,
        Some(t) => Some(
            t.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| UiError::bad_request(format!("`try` must be an integer of at least 1, not `{t}`")))?,
        ),
    };
    let req = r.clone();
    let k = key.clone();
    let (header, spec, run, ti, stored, xcoms, alerts) =
        r.ui.read(move |tx| {
            let (entry, latest, run, ti) = ti_of(tx, &k)?;
            let header = dag_header(&req, tx, &entry, &latest)?;
            let spec = spec_of_run(tx, &run, latest)?;
            let shown = want_try.unwrap_or(ti.try_number.max(1));
            let stored = if shown <= ti.try_number { tx.task_log(&k, shown)? } else { None };
            let (xcoms, _) = tx.xcom_page(&k, None, Page::new(100, 0))?;
            let alerts = tx.outbox_page(&OutboxFilter {
                dag_id: Some(k.dag_id.clone()),
                run_id: Some(k.run_id.clone()),
                task_id: Some(k.task_id.clone()),
                limit: 100,
                ..OutboxFilter::default()
            })?;
            Ok((header, spec, run, ti, stored, xcoms, alerts))
        })
        .await?;
    let shown = want_try.unwrap_or(ti.try_number.max(1));
    if shown > ti.try_number.max(1) {
        return Err(UiError::not_found(format!(
            "task `{}` of run `{}` has had {} tries, so try {shown} has no log",
            key.task_id, key.run_id, ti.try_number
        )));
    }
    let path = r.ui.web().actions.log_path(&key, shown);
    let (log, log_cut, file_len) =
        tokio::task::spawn_blocking(move || read_log(stored.as_deref(), &path, PAGE_LOG_BYTES))
            .await
            .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let task = spec.task(&key.task_id);
    let operator = task.map(|t| operator_name(&t.operator)).unwrap_or_else(|| ti.operator.clone());
    let templates: Vec<(String, String)> = task.map(|t| templated_fields(&t.operator)).unwrap_or_default();
    let tries: Vec<TryTab> = (1..=ti.try_number.max(1)).map(|n| TryTab { number: n, selected: n == shown }).collect();
    let view = TiView {
        dag_id: key.dag_id.clone(),
        run_id: key.run_id.clone(),
        task_id: key.task_id.clone(),
        state: ti.state.to_string(),
        glyph: words::glyph(ti.state.as_str()),
        try_number: ti.try_number,
        max_tries: ti.max_tries,
        operator,
        pool: ti.pool.clone(),
        hostname: ti.hostname.clone(),
        queued_at: opt_iso(&ti.queued_at),
        start: opt_iso(&ti.start_date),
        end: opt_iso(&ti.end_date),
        duration: ti.duration.map(words::duration),
        finished: ti.state.is_finished() || shown < ti.try_number,
    };
    let xcoms: Vec<XComView> = xcoms
        .iter()
        .map(|x| XComView { key: x.key.clone(), value: serde_json::to_string_pretty(&x.value).unwrap_or_default() })
        .collect();
    let alerts: Vec<AlertView> = alerts.iter().map(alert_view).collect();
    let live_dag = key.dag_id.clone();
    let ctx = ctx! {
        dag => header, ti => view, run => run_mark(&run, Utc::now()), tries => tries, shown_try => shown,
        log => log, log_cut => log_cut, log_offset => file_len, xcoms => xcoms, alerts => alerts,
        templates => templates, live_dag => live_dag, tab => "grid",
    };
    Ok(Rendered::page("task.html", Some("task_live.html"), ctx))
}

/// The templated fields of an operator as written (rhaiflow does not store rendered values).
fn templated_fields(op: &crate::model::Operator) -> Vec<(String, String)> {
    use crate::model::Operator;
    match op {
        Operator::BashOperator { bash_command, env, cwd, .. } => {
            let mut out = vec![("bash_command".to_string(), bash_command.clone())];
            if !env.is_empty() {
                out.push(("env".into(), serde_json::to_string_pretty(env).unwrap_or_default()));
            }
            if let Some(c) = cwd {
                out.push(("cwd".into(), c.clone()));
            }
            out
        }
        Operator::EmptyOperator | Operator::LatestOnlyOperator => Vec::new(),
        other => {
            let v = serde_json::to_value(other).unwrap_or_default();
            match v {
                serde_json::Value::Object(m) => m
                    .into_iter()
                    .filter(|(k, v)| k != "type" && !v.is_null())
                    .map(|(k, v)| {
                        (
                            k,
                            v.as_str()
                                .map_or_else(|| serde_json::to_string_pretty(&v).unwrap_or_default(), str::to_owned),
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// `…/tries/{n}`: the link alert messages carry (`alert::message`), the task page on that try.
pub(super) async fn try_link(Path((dag_id, run_id, task_id, n)): Path<(String, String, String, String)>) -> Response {
    let key = TiKey { dag_id, run_id, task_id };
    axum::response::Redirect::to(&format!("{}?try={}", ti_path(&key), path_segment(&n))).into_response()
}

/// The whole log of a try as a download.
pub(super) async fn log_download(
    r: Req,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    q: RawQuery,
) -> Response {
    let key = TiKey { dag_id, run_id, task_id };
    let got = async {
        let p = Params::of(q)?;
        let k = key.clone();
        let ti = r.ui.read(move |tx| Ok(ti_of(tx, &k)?.3)).await?;
        let n = p.count("try", u64::from(ti.try_number.max(1)), 1, u64::from(ti.try_number.max(1)))? as u32;
        let k = key.clone();
        let stored = r.ui.read(move |tx| Ok(tx.task_log(&k, n)?)).await?;
        let path = r.ui.web().actions.log_path(&key, n);
        let (text, _, _) = tokio::task::spawn_blocking(move || read_log(stored.as_deref(), &path, 64 << 20))
            .await
            .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok::<_, UiError>((n, text))
    }
    .await;
    match got {
        Ok((n, text)) => {
            let name: String = format!("{}__{}__{}__{n}.log", key.dag_id, key.run_id, key.task_id)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
                ],
                text,
            )
                .into_response()
        }
        Err(e) => r.respond(Err(e)),
    }
}

// ---- actions ------------------------------------------------------------------------------------

async fn exists(r: &Req, dag_id: &str) -> Result<(), UiError> {
    let id = dag_id.to_string();
    r.ui.read(move |tx| dag_of(tx, &id).map(|_| ())).await
}

pub(super) async fn pause(r: Req, Path(dag_id): Path<String>, headers: HeaderMap, form: RawForm) -> Response {
    let done = async {
        let form = form_of(form)?;
        r.may_act(&form, &headers)?;
        exists(&r, &dag_id).await?;
        let paused = match form.get("paused").map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            other => {
                return Err(UiError::bad_request(format!(
                    "`paused` must be `true` or `false`, not `{}`",
                    other.unwrap_or("")
                )));
            }
        };
        let id = dag_id.clone();
        r.ui.act(move |a| a.set_paused(&id, paused)).await?;
        Ok(back_to(&form, &format!("/dags/{}", path_segment(&dag_id))))
    }
    .await;
    match done {
        Ok(to) => to.into_response(),
        Err(e) => r.respond(Err(e)),
    }
}

pub(super) async fn trigger(r: Req, Path(dag_id): Path<String>, headers: HeaderMap, form: RawForm) -> Response {
    let done = async {
        let form = form_of(form)?;
        r.may_act(&form, &headers)?;
        exists(&r, &dag_id).await?;
        let conf_text = form.get("conf").map(|c| c.trim()).unwrap_or("");
        let conf = if conf_text.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str::<serde_json::Value>(conf_text)
                .map_err(|e| UiError::bad_request(format!("the run's conf is not JSON: {e}")))?
        };
        if !conf.is_object() {
            return Err(UiError::bad_request(format!("the run's conf must be a JSON object, not `{conf}`")));
        }
        let req = TriggerRequest {
            dag_id: dag_id.clone(),
            run_id: None,
            logical_date: Utc::now(),
            conf,
            reset_dag_run: false,
        };
        r.ui.act(move |a| a.trigger(&req)).await?;
        Ok(back_to(&form, &format!("/dags/{}", path_segment(&dag_id))))
    }
    .await;
    match done {
        Ok(to) => to.into_response(),
        Err(e) => r.respond(Err(e)),
    }
}

pub(super) async fn clear(
    r: Req,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: RawForm,
) -> Response {
    let key = TiKey { dag_id, run_id, task_id };
    let done = async {
        let form = form_of(form)?;
        r.may_act(&form, &headers)?;
        let k = key.clone();
        r.ui.read(move |tx| ti_of(tx, &k).map(|_| ())).await?;
        let req = ClearTasks {
            dag_id: key.dag_id.clone(),
            task_ids: Some(vec![key.task_id.clone()]),
            run_id: Some(key.run_id.clone()),
            include_downstream: form.get("downstream").is_some_and(|v| v == "on" || v == "true"),
            only_failed: false,
            dry_run: false,
            ..ClearTasks::default()
        };
        r.ui.act(move |a| a.clear(&req)).await?;
        Ok(back_to(&form, &ti_path(&key)))
    }
    .await;
    match done {
        Ok(to) => to.into_response(),
        Err(e) => r.respond(Err(e)),
    }
}

pub(super) async fn mark(
    r: Req,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    form: RawForm,
) -> Response {
    let key = TiKey { dag_id, run_id, task_id };
    let done = async {
        let form = form_of(form)?;
        r.may_act(&form, &headers)?;
        let to = match form.get("state").map(String::as_str) {
            Some("success") => TaskState::Success,
            Some("failed") => TaskState::Failed,
            other => {
                return Err(UiError::bad_request(format!(
                    "`state` must be `success` or `failed`, not `{}`",
                    other.unwrap_or("")
                )));
            }
        };
        let k = key.clone();
        r.ui.read(move |tx| ti_of(tx, &k).map(|_| ())).await?;
        let k = key.clone();
        r.ui.act(move |a| a.mark(&k, to)).await?;
        Ok(back_to(&form, &ti_path(&key)))
    }
    .await;
    match done {
        Ok(to) => to.into_response(),
        Err(e) => r.respond(Err(e)),
    }
}

/// A path segment with what a URL path cannot carry escaped.
pub(super) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn ti_path(key: &TiKey) -> String {
    format!(
        "/dags/{}/runs/{}/tasks/{}",
        path_segment(&key.dag_id),
        path_segment(&key.run_id),
        path_segment(&key.task_id)
    )
}

// ---- alerts and import errors -------------------------------------------------------------------

const ALERT_STATES: &[&str] = &["held", "pending", "sending", "sent", "failed", "coalesced"];

pub(super) async fn alerts(r: Req, q: RawQuery) -> Response {
    let page = async {
        let p = Params::of(q)?;
        let state = p.get("state").map(str::to_owned);
        if let Some(s) = &state
            && !ALERT_STATES.contains(&s.as_str())
        {
            return Err(UiError::bad_request(format!(
                "`state` `{s}` is not an alert state ({})",
                ALERT_STATES.join(", ")
            )));
        }
        let limit = p.count("limit", 200, 1, 1000)? as u32;
        let filter = OutboxFilter {
            channel: p.get("channel").map(str::to_owned),
            state: state.clone(),
            dag_id: p.get("dag_id").map(str::to_owned),
            limit,
            ..OutboxFilter::default()
        };
        let f = filter.clone();
        let (rows, channels) = r.ui.read(move |tx| Ok((tx.outbox_page(&f)?, tx.outbox_channels()?))).await?;
        let rows: Vec<AlertView> = rows.iter().map(alert_view).collect();
        let ctx = ctx! {
            alerts => rows, channels => channels, states => ALERT_STATES, channel => filter.channel,
            state => filter.state, dag_id => filter.dag_id, live_dag => "",
        };
        Ok(Rendered::page("alerts.html", None, ctx))
    }
    .await;
    r.respond(page)
}

pub(super) async fn import_errors(r: Req) -> Response {
    let page = async {
        let (errors, _) = r.ui.read(|tx| Ok(tx.import_error_page(Page::new(10_000, 0))?)).await?;
        let errors: Vec<ImportErrorView> =
            errors.iter().map(|e| import_error_view(&e.filename, &e.message, &e.timestamp)).collect();
        Ok(Rendered::page("import_errors.html", None, ctx! { errors => errors, live_dag => "" }))
    }
    .await;
    r.respond(page)
}

#[cfg(test)]
mod tests {
    use super::{locate, path_segment};

    #[test]
    fn import_errors_point_at_their_line() {
        let msg = "error: expected `)`\n  --> broken.rhai:3:31\n  |\n3 | let dag = DAG(";
        assert_eq!(locate("broken.rhai", msg), (Some(3), Some(31)));
        assert_eq!(locate("sub/broken.rhai", msg), (Some(3), Some(31)));
        assert_eq!(locate("x.rhai", "no position"), (None, None));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("manual__2024-01-01T00:00:00+00:00"), "manual__2024-01-01T00%3A00%3A00%2B00%3A00");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
