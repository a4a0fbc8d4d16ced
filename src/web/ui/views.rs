//! The DAG's other tabs: graph (layered SVG coloured by a run), Gantt (one bar per try),
//! durations (run and task durations over the last runs), code (a version's source, highlighted)
//! and details (schedule, next runs, arguments, versions).

use super::pages::{
    Params, RawQuery, dag_header, dag_of, group_path, iso, operator_name, path_segment, run_mark, run_of, spec_of_run,
};
use super::{Rendered, Req, UiError, layout, words};
use crate::model::{DagSpec, TiKey};
use crate::schedule::{DataInterval, Restriction, Timetable};
use crate::store::{DagRunRow, Page, TiRow, Tx};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

/// The run a tab shows: `?run_id=`, else the latest; and the latest 25 for the dropdown.
fn selected_run(tx: &Tx, dag_id: &str, run_id: Option<&str>) -> Result<(Option<DagRunRow>, Vec<DagRunRow>), UiError> {
    let (recent, _) = tx.dag_runs_page(dag_id, Page::new(25, 0))?;
    let run = match run_id {
        Some(id) => Some(run_of(tx, dag_id, id)?),
        None => recent.first().cloned(),
    };
    Ok((run, recent))
}

#[derive(Serialize)]
struct RunOption {
    run_id: String,
    state: String,
    selected: bool,
}

fn run_options(recent: &[DagRunRow], selected: Option<&DagRunRow>) -> Vec<RunOption> {
    let mut out: Vec<RunOption> = recent
        .iter()
        .map(|r| RunOption {
            run_id: r.run_id.clone(),
            state: r.state.to_string(),
            selected: selected.is_some_and(|s| s.run_id == r.run_id),
        })
        .collect();
    if let Some(s) = selected
        && !out.iter().any(|o| o.selected)
    {
        out.insert(0, RunOption { run_id: s.run_id.clone(), state: s.state.to_string(), selected: true });
    }
    out
}

// ---- graph --------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Node {
    task_id: String,
    label: String,
    operator: String,
    state: String,
    glyph: &'static str,
    x: f64,
    y: f64,
    href: Option<String>,
}

#[derive(Serialize)]
struct EdgeView {
    path: String,
    label: Option<String>,
    lx: f64,
    ly: f64,
}

#[derive(Serialize)]
struct GroupBox {
    group_id: String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

#[derive(Serialize)]
struct Drawing {
    nodes: Vec<Node>,
    edges: Vec<EdgeView>,
    groups: Vec<GroupBox>,
    width: f64,
    height: f64,
    node_w: f64,
    node_h: f64,
}

fn draw(spec: &DagSpec, run: Option<&DagRunRow>, tis: &[TiRow]) -> Drawing {
    let index: HashMap<&str, usize> = spec.tasks.iter().enumerate().map(|(i, t)| (t.task_id.as_str(), i)).collect();
    let mut edges = Vec::new();
    for (i, t) in spec.tasks.iter().enumerate() {
        for up in &t.upstream {
            if let Some(&u) = index.get(up.as_str()) {
                edges.push((u, i));
            }
        }
    }
    let placed = layout::place(spec.tasks.len(), &edges);
    let states: HashMap<&str, &TiRow> = tis.iter().map(|ti| (ti.key.task_id.as_str(), ti)).collect();
    let (w, h) = (layout::NODE_W, layout::NODE_H);
    let nodes = spec
        .tasks
        .iter()
        .zip(&placed.centers)
        .map(|(t, &(x, y))| {
            let state = states.get(t.task_id.as_str()).map_or("none".to_string(), |ti| ti.state.to_string());
            Node {
                task_id: t.task_id.clone(),
                label: if t.task_id.chars().count() > 24 {
                    format!("{}…", t.task_id.chars().take(23).collect::<String>())
                } else {
                    t.task_id.clone()
                },
                operator: operator_name(&t.operator),
                glyph: words::glyph(&state),
                state,
                x: x - w / 2.0,
                y: y - h / 2.0,
                href: run.map(|r| {
                    format!(
                        "/dags/{}/runs/{}/tasks/{}",
                        path_segment(&spec.dag_id),
                        path_segment(&r.run_id),
                        path_segment(&t.task_id)
                    )
                }),
            }
        })
        .collect();
    let labels: HashMap<(&str, &str), &str> =
        spec.edge_labels.iter().map(|l| ((l.upstream.as_str(), l.downstream.as_str()), l.label.as_str())).collect();
    let edge_views = edges
        .iter()
        .map(|&(a, b)| {
            let (ax, ay) = placed.centers[a];
            let (bx, by) = placed.centers[b];
            let (x1, x2) = (ax + w / 2.0, bx - w / 2.0);
            let mid = (x1 + x2) / 2.0;
            EdgeView {
                path: format!("M{x1:.1},{ay:.1} C{mid:.1},{ay:.1} {mid:.1},{by:.1} {x2:.1},{by:.1}"),
                label: labels
                    .get(&(spec.tasks[a].task_id.as_str(), spec.tasks[b].task_id.as_str()))
                    .map(|s| s.to_string()),
                lx: mid,
                ly: (ay + by) / 2.0 - 4.0,
            }
        })
        .collect();
    // Groups: the box around their tasks, outer groups first (drawn behind inner ones).
    let mut groups = Vec::new();
    for g in &spec.task_groups {
        let depth = group_path(spec, Some(&g.group_id)).len() as f64;
        let members: Vec<(f64, f64)> = spec
            .tasks
            .iter()
            .zip(&placed.centers)
            .filter(|(t, _)| group_path(spec, t.task_group.as_deref()).contains(&g.group_id))
            .map(|(_, c)| *c)
            .collect();
        if members.is_empty() {
            continue;
        }
        let pad = 14.0 - depth.min(4.0) * 2.0;
        let x0 = members.iter().map(|c| c.0).fold(f64::INFINITY, f64::min) - w / 2.0 - pad;
        let x1 = members.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max) + w / 2.0 + pad;
        let y0 = members.iter().map(|c| c.1).fold(f64::INFINITY, f64::min) - h / 2.0 - pad - 14.0;
        let y1 = members.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max) + h / 2.0 + pad;
        groups.push((depth, GroupBox { group_id: g.group_id.clone(), x: x0, y: y0, w: x1 - x0, h: y1 - y0 }));
    }
    groups.sort_by(|a, b| a.0.total_cmp(&b.0));
    let min_y = groups.iter().map(|(_, g)| g.y).fold(0.0, f64::min);
    let mut drawing = Drawing {
        nodes,
        edges: edge_views,
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        width: placed.width + 20.0,
        height: placed.height + 20.0,
        node_w: w,
        node_h: h,
    };
    if min_y < 0.0 {
        // Group titles above the first node: shift everything down.
        let dy = -min_y + 6.0;
        for n in &mut drawing.nodes {
            n.y += dy;
        }
        for g in &mut drawing.groups {
            g.y += dy;
        }
        for e in &mut drawing.edges {
            e.ly += dy;
            e.path = shift_path(&e.path, dy);
        }
        drawing.height += dy;
    }
    drawing
}

/// A path with every y coordinate moved down by `dy` (the path is `M x,y C x,y x,y x,y`).
fn shift_path(path: &str, dy: f64) -> String {
    path.split(' ')
        .map(|part| {
            let (head, coords) = part.split_at(part.find(|c: char| c.is_ascii_digit() || c == '-').unwrap_or(0));
            match coords.split_once(',') {
                Some((x, y)) => match y.parse::<f64>() {
                    Ok(y) => format!("{head}{x},{:.1}", y + dy),
                    Err(_) => part.to_string(),
                },
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn graph(r: Req, Path(dag_id): Path<String>, q: RawQuery) -> Response {
    let page = async {
        let p = Params::of(q)?;
        let run_id = p.get("run_id").map(str::to_owned);
        let req = r.clone();
        let (header, drawing, options, run) =
            r.ui.read(move |tx| {
                let (entry, latest) = dag_of(tx, &dag_id)?;
                let header = dag_header(&req, tx, &entry, &latest)?;
                let (run, recent) = selected_run(tx, &dag_id, run_id.as_deref())?;
                let spec = match &run {
                    Some(run) => spec_of_run(tx, run, latest)?,
                    None => latest,
                };
                let tis = match &run {
                    Some(run) => tx.task_instances_of_run(&dag_id, &run.run_id)?,
                    None => Vec::new(),
                };
                let drawing = draw(&spec, run.as_ref(), &tis);
                let options = run_options(&recent, run.as_ref());
                Ok((header, drawing, options, run.map(|r| run_mark(&r, Utc::now()))))
            })
            .await?;
        let live_dag = header.dag_id_owned();
        let ctx =
            ctx! { dag => header, g => drawing, runs => options, run => run, tab => "graph", live_dag => live_dag };
        Ok(Rendered::page("graph.html", Some("graph_live.html"), ctx))
    }
    .await;
    r.respond(page)
}

// ---- Gantt --------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Bar {
    try_number: u32,
    /// Left edge and width of the queued part and of the running part, in % of the axis.
    queued_x: Option<f64>,
    queued_w: f64,
    x: f64,
    w: f64,
    state: String,
    start: String,
    end: Option<String>,
    duration: String,
    href: String,
}

#[derive(Serialize)]
struct GanttRow {
    task_id: String,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct Tick {
    x: f64,
    label: String,
}

/// When a try ran: its start and end.
type TimeSpan = (DateTime<Utc>, DateTime<Utc>);

/// The first and last stamped times of an earlier try's log (rhaiflow keeps the times of the
/// latest try only; an earlier try's span is read from its log's line stamps).
fn log_span(stored: Option<&str>, path: &std::path::Path) -> Option<TimeSpan> {
    use std::io::{Read, Seek};
    let mut head = String::new();
    let mut tail = String::new();
    if let Some(s) = stored.filter(|s| !s.is_empty()) {
        head = s.chars().take(64).collect();
        tail = s.to_string();
    }
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if head.is_empty() {
            let _ = (&mut f).take(64).read_to_end(&mut buf);
            head = String::from_utf8_lossy(&buf).into_owned();
        }
        buf.clear();
        if f.seek(std::io::SeekFrom::Start(len.saturating_sub(64 << 10))).is_ok() {
            let _ = f.read_to_end(&mut buf);
            tail = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    let stamp = |line: &str| -> Option<DateTime<Utc>> {
        let s = line.strip_prefix('[')?.get(..28)?;
        DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z").ok().map(|d| d.with_timezone(&Utc))
    };
    let start = head.lines().find_map(stamp)?;
    let end = tail.lines().rev().find_map(stamp).unwrap_or(start);
    Some((start, end.max(start)))
}

pub(super) async fn gantt(r: Req, Path(dag_id): Path<String>, q: RawQuery) -> Response {
    let page = async {
        let p = Params::of(q)?;
        let run_id = p.get("run_id").map(str::to_owned);
        let req = r.clone();
        let (header, spec, run, tis, logs, options) = r
            .ui
            .read(move |tx| {
                let (entry, latest) = dag_of(tx, &dag_id)?;
                let header = dag_header(&req, tx, &entry, &latest)?;
                let (run, recent) = selected_run(tx, &dag_id, run_id.as_deref())?;
                let options = run_options(&recent, run.as_ref());
                let Some(run) = run else { return Ok((header, latest, None, Vec::new(), Vec::new(), options)) };
                let spec = spec_of_run(tx, &run, latest)?;
                let tis = tx.task_instances_of_run(&dag_id, &run.run_id)?;
                let mut logs = Vec::new();
                for ti in &tis {
                    for n in 1..ti.try_number {
                        logs.push((ti.key.clone(), n, tx.task_log(&ti.key, n)?));
                    }
                }
                Ok((header, spec, Some(run), tis, logs, options))
            })
            .await?;
        let actions = r.ui.web().actions.clone();
        let earlier: Vec<(TiKey, u32, Option<TimeSpan>)> = tokio::task::spawn_blocking(move || {
            logs.into_iter()
                .map(|(k, n, stored)| {
                    let span = log_span(stored.as_deref(), &actions.log_path(&k, n));
                    (k, n, span)
                })
                .collect()
        })
        .await
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let now = Utc::now();
        let order: Vec<String> = match crate::graph::TaskGraph::build(&spec) {
            Ok(g) => g.topological_order().into_iter().map(str::to_owned).collect(),
            Err(_) => spec.tasks.iter().map(|t| t.task_id.clone()).collect(),
        };
        // Spans: (task, try, queued, start, end, state).
        type Span = (String, u32, Option<DateTime<Utc>>, DateTime<Utc>, DateTime<Utc>, String);
        let mut spans: Vec<Span> = Vec::new();
        for (k, n, span) in &earlier {
            if let Some((s, e)) = span {
                spans.push((k.task_id.clone(), *n, None, *s, *e, "failed".into()));
            }
        }
        for ti in &tis {
            if let Some(start) = ti.start_date {
                let end = ti.end_date.unwrap_or(now).max(start);
                spans.push((ti.key.task_id.clone(), ti.try_number, ti.queued_at.filter(|q| *q <= start), start, end, ti.state.to_string()));
            }
        }
        let t0 = spans.iter().map(|s| s.2.unwrap_or(s.3)).min();
        let t1 = spans.iter().map(|s| s.4).max();
        let mut rows = Vec::new();
        let mut ticks = Vec::new();
        if let (Some(t0), Some(t1)) = (t0, t1) {
            let total = ((t1 - t0).num_milliseconds().max(1)) as f64;
            let pct = |t: DateTime<Utc>| (t - t0).num_milliseconds() as f64 / total * 100.0;
            let run_id = run.as_ref().map(|r| r.run_id.clone()).unwrap_or_default();
            for task_id in &order {
                let mut bars: Vec<Bar> = spans
                    .iter()
                    .filter(|s| &s.0 == task_id)
                    .map(|(t, n, queued, s, e, state)| Bar {
                        try_number: *n,
                        queued_x: queued.map(&pct),
                        queued_w: queued.map_or(0.0, |q| pct(*s) - pct(q)),
                        x: pct(*s),
                        w: (pct(*e) - pct(*s)).max(0.3),
                        state: state.clone(),
                        start: iso(s),
                        end: Some(iso(e)),
                        duration: words::duration((*e - *s).num_milliseconds() as f64 / 1000.0),
                        href: format!(
                            "/dags/{}/runs/{}/tasks/{}?try={n}",
                            path_segment(&spec.dag_id),
                            path_segment(&run_id),
                            path_segment(t)
                        ),
                    })
                    .collect();
                bars.sort_by_key(|b| b.try_number);
                rows.push(GanttRow { task_id: task_id.clone(), bars });
            }
            for i in 0..=4 {
                let at = total * f64::from(i) / 4.0;
                ticks.push(Tick { x: f64::from(i) * 25.0, label: format!("+{}", words::duration(at / 1000.0)) });
            }
        }
        let live_dag = header.dag_id_owned();
        let run = run.map(|r| run_mark(&r, now));
        let ctx = ctx! { dag => header, rows => rows, ticks => ticks, runs => options, run => run, tab => "gantt", live_dag => live_dag };
        Ok(Rendered::page("gantt.html", Some("gantt_live.html"), ctx))
    }
    .await;
    r.respond(page)
}

// ---- durations ----------------------------------------------------------------------------------

#[derive(Serialize)]
struct RunBar {
    run_id: String,
    state: String,
    x: f64,
    h: f64,
    seconds: f64,
    label: String,
    landing: Option<String>,
}

#[derive(Serialize)]
struct TaskLine {
    task_id: String,
    points: String,
    median: String,
    p95: String,
    hue: u32,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(super) async fn durations(r: Req, Path(dag_id): Path<String>, q: RawQuery) -> Response {
    let page = async {
        let p = Params::of(q)?;
        let n = p.count("runs", 25, 2, 100)?;
        let req = r.clone();
        let (header, spec, runs, tis) =
            r.ui.read(move |tx| {
                let (entry, spec) = dag_of(tx, &dag_id)?;
                let header = dag_header(&req, tx, &entry, &spec)?;
                let (mut runs, _) = tx.dag_runs_page(&dag_id, Page::new(n as u32, 0))?;
                runs.reverse();
                let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
                let tis = tx.task_instances_of_runs(&dag_id, &ids)?;
                Ok((header, spec, runs, tis))
            })
            .await?;
        let now = Utc::now();
        const W: f64 = 900.0;
        const H: f64 = 220.0;
        let secs = |run: &DagRunRow| {
            run.start_date.map(|s| (run.end_date.unwrap_or(now) - s).num_milliseconds() as f64 / 1000.0)
        };
        let max_run = runs.iter().filter_map(secs).fold(0.0_f64, f64::max).max(0.001);
        let slot = W / runs.len().max(1) as f64;
        let bars: Vec<RunBar> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, run)| {
                let s = secs(run)?;
                let landing = (run.run_type == crate::model::RunType::Scheduled)
                    .then(|| {
                        run.end_date
                            .map(|e| words::duration((e - run.data_interval_end).num_milliseconds() as f64 / 1000.0))
                    })
                    .flatten();
                Some(RunBar {
                    run_id: run.run_id.clone(),
                    state: run.state.to_string(),
                    x: i as f64 * slot + slot * 0.15,
                    h: s / max_run * H,
                    seconds: s,
                    label: words::duration(s),
                    landing,
                })
            })
            .collect();
        let mut by_task: HashMap<&str, Vec<(usize, f64)>> = HashMap::new();
        let pos: HashMap<&str, usize> = runs.iter().enumerate().map(|(i, r)| (r.run_id.as_str(), i)).collect();
        for ti in &tis {
            if let (Some(d), Some(&i)) = (ti.duration, pos.get(ti.key.run_id.as_str())) {
                by_task.entry(ti.key.task_id.as_str()).or_default().push((i, d));
            }
        }
        let max_task = by_task.values().flatten().map(|p| p.1).fold(0.0_f64, f64::max).max(0.001);
        let mut lines = Vec::new();
        for (k, t) in spec.tasks.iter().enumerate() {
            let Some(points) = by_task.get(t.task_id.as_str()) else { continue };
            let mut points = points.clone();
            points.sort_by_key(|p| p.0);
            let mut sorted: Vec<f64> = points.iter().map(|p| p.1).collect();
            sorted.sort_by(f64::total_cmp);
            lines.push(TaskLine {
                task_id: t.task_id.clone(),
                points: points
                    .iter()
                    .map(|(i, d)| format!("{:.1},{:.1}", *i as f64 * slot + slot / 2.0, H - d / max_task * H))
                    .collect::<Vec<_>>()
                    .join(" "),
                median: words::duration(quantile(&sorted, 0.5)),
                p95: words::duration(quantile(&sorted, 0.95)),
                hue: (k as u32 * 137) % 360,
            });
        }
        let live_dag = header.dag_id_owned();
        let ctx = ctx! {
            dag => header, bars => bars, lines => lines, width => W, height => H, bar_w => slot * 0.7,
            max_run => words::duration(max_run), max_task => words::duration(max_task), n => n, tab => "durations",
            live_dag => live_dag,
        };
        Ok(Rendered::page("durations.html", Some("durations_live.html"), ctx))
    }
    .await;
    r.respond(page)
}

// ---- code ---------------------------------------------------------------------------------------

/// The most source text shown (the loader's file size limit).
const MAX_SOURCE_BYTES: u64 = 4 << 20;

fn read_source(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_SOURCE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

#[derive(Serialize)]
struct VersionView {
    version_hash: String,
    short: String,
    created_at: String,
    runs: u64,
    selected: bool,
    latest: bool,
}

pub(super) async fn code(r: Req, Path(dag_id): Path<String>, q: RawQuery) -> Response {
    let page = async {
        if r.caller.auth_on && r.caller.user.is_none() {
            return Err(UiError::forbidden(r.ui.text(r.lang, "err_code_login")));
        }
        let p = Params::of(q)?;
        let version = p.get("version").map(str::to_owned);
        let run_id = p.get("run_id").map(str::to_owned);
        let req = r.clone();
        let (header, latest_hash, chosen, versions, kept) =
            r.ui.read(move |tx| {
                let (entry, spec) = dag_of(tx, &dag_id)?;
                let header = dag_header(&req, tx, &entry, &spec)?;
                let versions = tx.dag_versions(&dag_id)?;
                let chosen = match (version, run_id) {
                    (Some(v), _) => {
                        if !versions.iter().any(|x| x.version_hash == v) {
                            return Err(UiError::not_found(format!("DAG `{dag_id}` has no version `{v}`")));
                        }
                        v
                    }
                    (None, Some(run)) => run_of(tx, &dag_id, &run)?.version_hash,
                    (None, None) => entry.latest_version_hash.clone(),
                };
                let kept = tx.version_file(&chosen)?;
                Ok((header, entry.latest_version_hash, chosen, versions, kept))
            })
            .await?;
        let folder = r.ui.web().settings.dags_folder.clone();
        let fileloc = header.fileloc_owned();
        let (file, text, current) = tokio::task::spawn_blocking(move || {
            let (file, kept) = kept.unwrap_or((fileloc, None));
            let current = read_source(&folder.join(&file));
            let text = kept.or_else(|| current.clone());
            (file, text, current)
        })
        .await
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let text =
            text.ok_or_else(|| UiError::not_found(format!("the source of `{file}` is neither kept nor readable")))?;
        let changed = current.as_deref().is_some_and(|c| c != text);
        let lines: Vec<String> = highlight(&text);
        let versions: Vec<VersionView> = versions
            .iter()
            .rev()
            .map(|v| VersionView {
                version_hash: v.version_hash.clone(),
                short: v.version_hash.chars().take(12).collect(),
                created_at: iso(&v.created_at),
                runs: v.runs,
                selected: v.version_hash == chosen,
                latest: v.version_hash == latest_hash,
            })
            .collect();
        let live_dag = header.dag_id_owned();
        let ctx = ctx! {
            dag => header, file => file, lines => lines, changed => changed, versions => versions,
            version => chosen, tab => "code", live_dag => live_dag,
        };
        Ok(Rendered::page("code.html", None, ctx))
    }
    .await;
    r.respond(page)
}

const KEYWORDS: &[&str] = &[
    "let", "const", "fn", "if", "else", "for", "in", "while", "loop", "return", "break", "continue", "import", "as",
    "true", "false", "switch", "private", "throw", "try", "catch", "this",
];

/// Each line as HTML: comments, strings, numbers and keywords in spans; everything escaped.
/// Light on purpose: a line-local scan (a string or block comment spanning lines is coloured on
/// its first line only).
fn highlight(text: &str) -> Vec<String> {
    text.lines().map(highlight_line).collect()
}

fn highlight_line(line: &str) -> String {
    let esc = super::html_escape;
    let mut out = String::with_capacity(line.len() + 32);
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let span = |class: &str, s: &str| format!("<span class=\"{class}\">{}</span>", esc(s));
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            let rest: String = chars[i..].iter().collect();
            out.push_str(&span("c", &rest));
            break;
        }
        if c == '"' || c == '`' || c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(chars.len());
            let s: String = chars[i..end].iter().collect();
            out.push_str(&span("s", &s));
            i = end;
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.' || chars[j] == '_') {
                j += 1;
            }
            let s: String = chars[i..j].iter().collect();
            out.push_str(&span("n", &s));
            i = j;
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let s: String = chars[i..j].iter().collect();
            if KEYWORDS.contains(&s.as_str()) {
                out.push_str(&span("k", &s));
            } else if s.chars().next().is_some_and(char::is_uppercase) {
                out.push_str(&span("t", &s));
            } else {
                out.push_str(&esc(&s));
            }
            i = j;
            continue;
        }
        out.push_str(&esc(&c.to_string()));
        i += 1;
    }
    out
}

// ---- details ------------------------------------------------------------------------------------

#[derive(Serialize)]
struct TaskDetail {
    task_id: String,
    operator: String,
    owner: String,
    retries: u32,
    retry_delay: String,
    pool: String,
    trigger_rule: String,
    upstream: Vec<String>,
}

pub(super) async fn details(r: Req, Path(dag_id): Path<String>) -> Response {
    let page = async {
        let req = r.clone();
        let (header, spec, versions, upcoming) =
            r.ui.read(move |tx| {
                let (entry, spec) = dag_of(tx, &dag_id)?;
                let header = dag_header(&req, tx, &entry, &spec)?;
                let versions = tx.dag_versions(&dag_id)?;
                let last = tx.latest_scheduled_interval(&dag_id)?.map(|(start, end)| DataInterval { start, end });
                let upcoming: Vec<String> = match Timetable::new(&spec) {
                    Ok(tt) => tt
                        .upcoming(last, Restriction::of(&spec), Utc::now(), 6)
                        .into_iter()
                        .filter(|i| last != Some(i.data_interval))
                        .take(5)
                        .map(|i| iso(&i.run_after))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                Ok((header, spec, versions, upcoming))
            })
            .await?;
        let tasks: Vec<TaskDetail> = spec
            .tasks
            .iter()
            .map(|t| TaskDetail {
                task_id: t.task_id.clone(),
                operator: operator_name(&t.operator),
                owner: t.owner.to_string(),
                retries: t.retries,
                retry_delay: t.retry_delay.to_string(),
                pool: t.pool.to_string(),
                trigger_rule: serde_json::to_value(t.trigger_rule)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                upstream: t.upstream.clone(),
            })
            .collect();
        let latest = Some(header.version_hash_owned());
        let versions: Vec<VersionView> = versions
            .iter()
            .rev()
            .map(|v| VersionView {
                version_hash: v.version_hash.clone(),
                short: v.version_hash.chars().take(12).collect(),
                created_at: iso(&v.created_at),
                runs: v.runs,
                selected: false,
                latest: Some(&v.version_hash) == latest.as_ref(),
            })
            .collect();
        let params = serde_json::to_string_pretty(&spec.params).unwrap_or_default();
        let live_dag = header.dag_id_owned();
        let ctx = ctx! {
            dag => header, start_date => spec.start_date.as_ref().map(iso), end_date => spec.end_date.as_ref().map(iso),
            catchup => spec.catchup, max_active_runs => spec.max_active_runs, max_active_tasks => spec.max_active_tasks,
            timezone => spec.timezone.to_string(), dagrun_timeout => spec.dagrun_timeout.map(|t| t.to_string()),
            params => params, tasks => tasks, versions => versions, upcoming => upcoming, doc_md => spec.doc_md,
            tab => "details", live_dag => live_dag,
        };
        Ok(Rendered::page("details.html", None, ctx))
    }
    .await;
    r.respond(page)
}

#[cfg(test)]
mod tests {
    use super::{highlight_line, shift_path};

    #[test]
    fn highlighting_escapes_and_marks() {
        let h = highlight_line(r#"let x = "<b>"; // note"#);
        assert_eq!(
            h,
            "<span class=\"k\">let</span> x = <span class=\"s\">&quot;&lt;b&gt;&quot;</span>; <span class=\"c\">// note</span>"
        );
    }

    #[test]
    fn paths_shift_down() {
        assert_eq!(shift_path("M1.0,2.0 C3.0,4.0 5.0,6.0 7.0,8.0", 10.0), "M1.0,12.0 C3.0,14.0 5.0,16.0 7.0,18.0");
    }
}
