//! `rhaiflow dags ...`: list, show, check, next-runs, list-import-errors.

use super::{Context, Outcome, Output, fmt_time, table};
use crate::app::{DagStatus, Record, ResolvedDag};
use crate::graph::TaskGraph;
use crate::loader::{DagBag, LoadedDag};
use crate::model::DagSpec;
use crate::schedule::{Restriction, Timetable};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum DagsCommand {
    /// List the DAGs that load: id, file, schedule, owners, task count, next run.
    List,
    /// Show one DAG's tasks, operators and upstreams.
    Show {
        dag_id: String,
        /// Print Graphviz DOT instead of a table.
        #[arg(long)]
        dot: bool,
        /// Show this recorded version (a hash, or its first 6 or more hex digits; see `dags versions`).
        #[arg(long, value_name = "HASH")]
        version: Option<String>,
    },
    /// The recorded versions of a DAG: hash, first seen, source file, the runs that used each.
    Versions { dag_id: String },
    /// Validate every DAG file; print every error and exit 1 if there is any.
    Check,
    /// The next runs of a DAG's timetable.
    NextRuns {
        dag_id: String,
        /// How many runs to show (1 to 1000).
        #[arg(short = 'n', long = "num", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        n: u64,
    },
    /// The files that failed to load, with their errors.
    ListImportErrors,
    /// Run one DAG run now, in this process, of the DAG as its file is now, and print each task's
    /// outcome; exit 1 if it fails. A run already at that date is replaced.
    Test {
        dag_id: String,
        /// The logical date (default: now).
        date: Option<String>,
        /// JSON object for `dag_run.conf` (and `params` overrides).
        #[arg(long, short = 'c', value_parser = ConfArg)]
        conf: Option<String>,
        /// Print each task's log as it is written.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Send the alerts the run writes (without it they are printed, not sent).
        #[arg(long)]
        send_alerts: bool,
    },
    /// Create a manual run; a running scheduler picks it up at once.
    Trigger {
        dag_id: String,
        /// JSON object for `dag_run.conf` (and `params` overrides).
        #[arg(long, short = 'c', value_parser = ConfArg)]
        conf: Option<String>,
        #[arg(long, short = 'l')]
        logical_date: Option<String>,
    },
    /// Stop creating and running runs of a DAG.
    Pause { dag_id: String },
    /// Resume a paused DAG.
    Unpause { dag_id: String },
    /// Create and run every scheduled run between two dates, in this process.
    Backfill {
        dag_id: String,
        #[arg(long, short = 's')]
        start_date: String,
        #[arg(long, short = 'e')]
        end_date: String,
        /// Clear and rerun the failed task instances of failed runs already in the range.
        #[arg(long)]
        rerun_failed_tasks: bool,
        /// Clear every task instance of the runs already in the range and run them anew.
        #[arg(long)]
        reset_dagruns: bool,
        /// Do not ask before `--reset-dagruns`.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `--conf`, checked while parsing arguments so that a bad value is reported without echoing it
/// (it can be long, and it can hold what its author would rather not see in a terminal log).
#[derive(Debug, Clone)]
struct ConfArg;

impl clap::builder::TypedValueParser for ConfArg {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let fail = |reason: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{reason}\n")).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| fail("`--conf` is not valid UTF-8".into()))?;
        let conf: serde_json::Value =
            serde_json::from_str(text).map_err(|e| fail(format!("`--conf` is not JSON: {e}")))?;
        if !conf.is_object() {
            return Err(fail("`--conf` must be a JSON object, like '{\"key\": 1}'".into()));
        }
        Ok(text.to_string())
    }
}

pub fn run(ctx: &Context, cmd: DagsCommand) -> anyhow::Result<Outcome> {
    use super::run;
    let cmd = match cmd {
        DagsCommand::Test { dag_id, date, conf, verbose, send_alerts } => {
            let args =
                run::TestArgs { dag_id: &dag_id, date: date.as_deref(), conf: conf.as_deref(), verbose, send_alerts };
            return run::dags_test(ctx, args);
        }
        DagsCommand::Trigger { dag_id, conf, logical_date } => {
            return run::trigger(ctx, &dag_id, conf.as_deref(), logical_date.as_deref());
        }
        DagsCommand::Pause { dag_id } => return run::pause(ctx, &dag_id, true),
        DagsCommand::Unpause { dag_id } => return run::pause(ctx, &dag_id, false),
        DagsCommand::Backfill { dag_id, start_date, end_date, rerun_failed_tasks, reset_dagruns, yes } => {
            let args = run::BackfillArgs {
                dag_id: &dag_id,
                start: &start_date,
                end: &end_date,
                options: crate::app::BackfillOptions { rerun_failed_tasks, reset_dagruns },
                yes,
            };
            return run::backfill(ctx, args);
        }
        DagsCommand::Show { dag_id, dot, version } => {
            let dag = match version {
                Some(prefix) => ctx.app.version_by_prefix(&dag_id, &prefix)?,
                None => one_dag(ctx, &dag_id)?,
            };
            return show(ctx, &dag.version.spec, dag.short_hash(), dot);
        }
        DagsCommand::NextRuns { dag_id, n } => {
            return next_runs(ctx, &one_dag(ctx, &dag_id)?.version.spec, n as usize);
        }
        DagsCommand::Versions { dag_id } => return versions(ctx, &dag_id),
        other => other,
    };
    // A live scheduler keeps the store current: listings read it instead of parsing the folder.
    if matches!(cmd, DagsCommand::List | DagsCommand::ListImportErrors)
        && let Some(store) = ctx.app.store_kept_current()?
    {
        return match cmd {
            DagsCommand::List => stored_list(ctx, &store),
            _ => stored_import_errors(ctx, &store),
        };
    }
    let bag = ctx.app.load_dags(ctx.now)?;
    match cmd {
        // A broken file's DAGs stay scheduled on their last good version: listed too.
        DagsCommand::List => list(ctx, &ctx.app.with_last_good(bag)?),
        DagsCommand::Check => check(ctx, &bag),
        DagsCommand::ListImportErrors => import_errors(ctx, &bag),
        _ => Ok(Outcome::Ok),
    }
}

/// The DAG a read-only command shows: from the store, parsing at most its own file.
fn one_dag(ctx: &Context, dag_id: &str) -> anyhow::Result<ResolvedDag> {
    let store = ctx.app.existing_store()?;
    ctx.app.resolve_dag(store.as_ref(), dag_id, Record::No, ctx.now)
}

/// When the scheduler will create the DAG's next run: after its latest scheduled run when the
/// store has one (so a DAG that caught up shows the interval it waits for), else from no history.
fn next_run(ctx: &Context, spec: &DagSpec, status: Option<&DagStatus>) -> Option<chrono::DateTime<chrono::Utc>> {
    crate::schedule::next_dagrun(spec, status.and_then(|s| s.last_interval), ctx.now).map(|i| i.run_after)
}

fn warn_import_errors(bag: &DagBag) {
    if !bag.import_errors.is_empty() {
        eprintln!(
            "warning: {} file(s) failed to load; see `rhaiflow dags list-import-errors`",
            bag.import_errors.len()
        );
    }
}

fn list(ctx: &Context, bag: &DagBag) -> anyhow::Result<Outcome> {
    let statuses = ctx.app.dag_statuses()?;
    // A DAG the store has not seen starts as `[core] dags_are_paused_at_creation` says.
    let paused = |d: &LoadedDag| statuses.get(&d.spec.dag_id).map_or(ctx.app.paused_if_new(), |s| s.is_paused);
    match ctx.output {
        Output::Json => {
            let rows: Vec<_> = bag
                .dags
                .values()
                .map(|d| {
                    json!({
                        "dag_id": d.spec.dag_id,
                        "fileloc": d.spec.fileloc,
                        "is_paused": paused(d),
                        "is_active": true,
                        "schedule": d.spec.schedule.to_string(),
                        "owners": d.spec.owners(),
                        "tasks": d.spec.tasks.len(),
                        "tags": d.spec.tags,
                        "next_run": next_run(ctx, &d.spec, statuses.get(&d.spec.dag_id)).map(|t| t.to_rfc3339()),
                        "version_hash": d.version_hash,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = bag
                .dags
                .values()
                .map(|d| {
                    vec![
                        d.spec.dag_id.clone(),
                        d.spec.fileloc.clone(),
                        if paused(d) { "yes" } else { "no" }.to_string(),
                        d.spec.schedule.to_string(),
                        d.spec.owners().join(", "),
                        d.spec.tasks.len().to_string(),
                        next_run(ctx, &d.spec, statuses.get(&d.spec.dag_id))
                            .map(|t| fmt_time(&t))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            println!(
                "{}",
                table::render(&["dag_id", "file", "paused", "schedule", "owner", "tasks", "next run"], &rows)
            );
        }
    }
    warn_import_errors(bag);
    Ok(Outcome::Ok)
}

fn show(ctx: &Context, spec: &DagSpec, short_hash: &str, dot: bool) -> anyhow::Result<Outcome> {
    let graph = TaskGraph::build(spec)?;
    let order = graph.topological_order();
    if dot {
        println!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];", spec.dag_id);
        for id in order.iter().filter(|id| spec.task(id).is_some_and(|t| t.task_group.is_none())) {
            let t = spec.task(id).map(|t| t.operator.name()).unwrap_or_default();
            println!("  \"{id}\" [label=\"{id}\\n{t}\"];");
        }
        for g in spec.task_groups.iter().filter(|g| g.parent_group.is_none()) {
            dot_group(spec, &order, &g.group_id, 1);
        }
        let labels: std::collections::HashMap<(&str, &str), &str> =
            spec.edge_labels.iter().map(|l| ((l.upstream.as_str(), l.downstream.as_str()), l.label.as_str())).collect();
        for t in &spec.tasks {
            for up in &t.upstream {
                match labels.get(&(up.as_str(), t.task_id.as_str())) {
                    Some(label) => println!("  \"{up}\" -> \"{}\" [label={}];", t.task_id, dot_quote(label)),
                    None => println!("  \"{up}\" -> \"{}\";", t.task_id),
                }
            }
        }
        println!("}}");
        return Ok(Outcome::Ok);
    }
    if ctx.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(spec)?);
        return Ok(Outcome::Ok);
    }
    println!("DAG {}  ({}, version {short_hash})", spec.dag_id, spec.fileloc);
    if let Some(d) = &spec.description {
        println!("  {d}");
    }
    println!(
        "schedule: {}   timezone: {}   catchup: {}   start: {}",
        spec.schedule,
        spec.timezone,
        spec.catchup,
        spec.start_date.map(|t| fmt_time(&t)).unwrap_or_else(|| "-".into())
    );
    println!();
    let rows: Vec<Vec<String>> = order
        .iter()
        .filter_map(|id| spec.task(id))
        .map(|t| {
            let upstream = if t.upstream.is_empty() { "-".to_string() } else { t.upstream.join(", ") };
            vec![
                t.task_id.clone(),
                t.operator.name().to_string(),
                t.trigger_rule.as_str().to_string(),
                t.retries.to_string(),
                upstream,
            ]
        })
        .collect();
    println!("{}", table::render(&["task_id", "operator", "trigger_rule", "retries", "upstream"], &rows));
    if !spec.task_groups.is_empty() {
        println!();
        let parent: std::collections::HashMap<&str, Option<&str>> =
            spec.task_groups.iter().map(|g| (g.group_id.as_str(), g.parent_group.as_deref())).collect();
        fn inside<'a>(
            parent: &std::collections::HashMap<&'a str, Option<&'a str>>,
            at: Option<&'a str>,
            group: &str,
        ) -> bool {
            let mut at = at;
            while let Some(g) = at {
                if g == group {
                    return true;
                }
                at = parent.get(g).copied().flatten();
            }
            false
        }
        for g in &spec.task_groups {
            let members = spec.tasks.iter().filter(|t| inside(&parent, t.task_group.as_deref(), &g.group_id)).count();
            let tooltip = g.tooltip.as_deref().map(|t| format!(": {t}")).unwrap_or_default();
            println!("task group {} ({members} task(s)){tooltip}", g.group_id);
        }
    }
    for l in &spec.edge_labels {
        println!("label {} >> {}: {}", l.upstream, l.downstream, l.label);
    }
    Ok(Outcome::Ok)
}

/// A `TaskGroup` as a Graphviz cluster holding its tasks and nested groups.
fn dot_group(spec: &crate::model::DagSpec, order: &[&str], group_id: &str, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}subgraph {} {{", dot_quote(&format!("cluster_{group_id}")));
    println!("{pad}  label={};", dot_quote(group_id));
    if let Some(tooltip) = spec.task_groups.iter().find(|g| g.group_id == group_id).and_then(|g| g.tooltip.as_deref()) {
        println!("{pad}  tooltip={};", dot_quote(tooltip));
    }
    for id in order.iter().filter(|id| spec.task(id).is_some_and(|t| t.task_group.as_deref() == Some(group_id))) {
        let t = spec.task(id).map(|t| t.operator.name()).unwrap_or_default();
        println!("{pad}  \"{id}\" [label=\"{id}\\n{t}\"];");
    }
    for g in spec.task_groups.iter().filter(|g| g.parent_group.as_deref() == Some(group_id)) {
        dot_group(spec, order, &g.group_id, depth + 1);
    }
    println!("{pad}}}");
}

/// A Graphviz quoted string.
fn dot_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn check(ctx: &Context, bag: &DagBag) -> anyhow::Result<Outcome> {
    let files = bag.files.len();
    let pool_problems = ctx.app.pool_problems(bag)?;
    if ctx.output == Output::Json {
        let errors: Vec<_> = bag.diagnostics().chain(&pool_problems).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "files": files, "dags": bag.dags.len(), "errors": errors }))?
        );
    } else {
        for d in bag.diagnostics().chain(&pool_problems) {
            println!("{d}\n");
        }
        let count = bag.diagnostics().count() + pool_problems.len();
        let mut bad_files: Vec<&str> = bag.import_errors.iter().map(|e| e.file.as_str()).collect();
        bad_files.extend(pool_problems.iter().map(|d| d.file.as_str()));
        bad_files.sort();
        bad_files.dedup();
        if count == 0 {
            println!("ok: {} DAG(s) in {files} file(s)", bag.dags.len());
        } else {
            println!("{count} error(s) in {} of {files} file(s); {} DAG(s) loaded", bad_files.len(), bag.dags.len());
        }
    }
    Ok(if bag.import_errors.is_empty() && pool_problems.is_empty() { Outcome::Ok } else { Outcome::Failed })
}

fn next_runs(ctx: &Context, spec: &DagSpec, n: usize) -> anyhow::Result<Outcome> {
    let dag_id = spec.dag_id.as_str();
    let tt = Timetable::new(spec)?;
    let runs = tt.upcoming(None, Restriction::of(spec), ctx.now, n);
    if ctx.output == Output::Json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "logical_date": r.logical_date.to_rfc3339(),
                    "data_interval_start": r.data_interval.start.to_rfc3339(),
                    "data_interval_end": r.data_interval.end.to_rfc3339(),
                    "run_after": r.run_after.to_rfc3339(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    if runs.is_empty() {
        println!("DAG `{dag_id}` has no upcoming scheduled runs (schedule: {})", spec.schedule);
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                fmt_time(&r.logical_date),
                fmt_time(&r.data_interval.start),
                fmt_time(&r.data_interval.end),
                fmt_time(&r.run_after),
            ]
        })
        .collect();
    println!("{}", table::render(&["logical_date", "data_interval_start", "data_interval_end", "run_after"], &rows));
    Ok(Outcome::Ok)
}

fn import_errors(ctx: &Context, bag: &DagBag) -> anyhow::Result<Outcome> {
    let records = match ctx.app.existing_store()? {
        Some(store) => store.read(|tx| tx.dag_records())?,
        None => Vec::new(),
    };
    if ctx.output == Output::Json {
        let rows: Vec<_> = bag
            .import_errors
            .iter()
            .map(|e| json!({ "file": e.file, "errors": e.diagnostics, "kept": kept_json(&records, &e.file) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    if bag.import_errors.is_empty() {
        println!("no import errors");
    }
    for e in &bag.import_errors {
        for d in &e.diagnostics {
            println!("{d}\n");
        }
        print_kept(&records, &e.file);
    }
    Ok(Outcome::Ok)
}

/// The DAGs recorded from a broken `file` that stay scheduled on their last good version.
fn kept<'a>(records: &'a [crate::store::DagRecord], file: &str) -> Vec<&'a crate::store::DagRecord> {
    records.iter().filter(|r| r.is_active && r.fileloc == file).collect()
}

fn kept_json(records: &[crate::store::DagRecord], file: &str) -> serde_json::Value {
    kept(records, file).iter().map(|r| json!({ "dag_id": r.dag_id, "version": r.latest_version_hash })).collect()
}

fn print_kept(records: &[crate::store::DagRecord], file: &str) {
    let kept = kept(records, file);
    if !kept.is_empty() {
        let list: Vec<String> = kept
            .iter()
            .map(|r| format!("{} ({})", r.dag_id, r.latest_version_hash.get(..12).unwrap_or(&r.latest_version_hash)))
            .collect();
        println!("{file}: the last good version stays scheduled and triggerable: {}\n", list.join(", "));
    }
}

/// `dags versions ID`: every recorded version, oldest first, with the runs pinned to each.
fn versions(ctx: &Context, dag_id: &str) -> anyhow::Result<Outcome> {
    // An unknown DAG is what was asked about failing (exit 1), not a usage error.
    let stored = match ctx.app.stored_versions(dag_id) {
        Ok(stored) => stored,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(Outcome::Failed);
        }
    };
    let latest = stored.record.latest_version_hash.as_str();
    let file = |v: &crate::store::DagVersionRow| v.fileloc.clone().unwrap_or_else(|| stored.record.fileloc.clone());
    if ctx.output == Output::Json {
        let rows: Vec<_> = stored
            .versions
            .iter()
            .map(|v| {
                json!({
                    "version_hash": v.version_hash,
                    "created_at": v.created_at.to_rfc3339(),
                    "fileloc": file(v),
                    "runs": v.runs,
                    "is_latest": v.version_hash == latest,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = stored
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version_hash[..v.version_hash.len().min(12)].to_string(),
                fmt_time(&v.created_at),
                file(v),
                v.runs.to_string(),
                if v.version_hash == latest { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    println!("{}", table::render(&["version", "first seen", "file", "runs", "latest"], &rows));
    if !stored.record.is_active {
        println!("DAG `{dag_id}` is inactive: no new runs are created from it");
    }
    Ok(Outcome::Ok)
}

/// `dags list` from the store a live scheduler keeps current, inactive DAGs included.
fn stored_list(ctx: &Context, store: &crate::store::Store) -> anyhow::Result<Outcome> {
    let dags = ctx.app.stored_dags(store)?;
    let statuses = ctx.app.dag_statuses()?;
    let next = |d: &crate::app::StoredDag| {
        let spec = d.spec.as_ref().filter(|_| d.record.is_active)?;
        next_run(ctx, spec, statuses.get(&d.record.dag_id))
    };
    match ctx.output {
        Output::Json => {
            let rows: Vec<_> = dags
                .iter()
                .map(|d| {
                    let spec = d.spec.as_deref();
                    json!({
                        "dag_id": d.record.dag_id,
                        "fileloc": d.record.fileloc,
                        "is_paused": d.record.is_paused,
                        "is_active": d.record.is_active,
                        "schedule": spec.map(|s| s.schedule.to_string()),
                        "owners": spec.map(|s| s.owners()).unwrap_or_default(),
                        "tasks": spec.map_or(0, |s| s.tasks.len()),
                        "tags": spec.map(|s| s.tags.clone()).unwrap_or_default(),
                        "next_run": next(d).map(|t| t.to_rfc3339()),
                        "version_hash": d.record.latest_version_hash,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = dags
                .iter()
                .map(|d| {
                    let spec = d.spec.as_deref();
                    vec![
                        d.record.dag_id.clone(),
                        d.record.fileloc.clone(),
                        if d.record.is_paused { "yes" } else { "no" }.to_string(),
                        spec.map(|s| s.schedule.to_string()).unwrap_or_else(|| "-".into()),
                        spec.map(|s| s.owners().join(", ")).unwrap_or_default(),
                        spec.map_or(0, |s| s.tasks.len()).to_string(),
                        next(d).map(|t| fmt_time(&t)).unwrap_or_else(|| "-".into()),
                        if d.record.is_active { "active" } else { "inactive" }.to_string(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table::render(&["dag_id", "file", "paused", "schedule", "owner", "tasks", "next run", "state"], &rows)
            );
        }
    }
    let errors = store.read(|tx| tx.import_errors())?.len();
    if errors > 0 {
        eprintln!("warning: {errors} file(s) failed to load; see `rhaiflow dags list-import-errors`");
    }
    Ok(Outcome::Ok)
}

/// `dags list-import-errors` from the store a live scheduler keeps current.
fn stored_import_errors(ctx: &Context, store: &crate::store::Store) -> anyhow::Result<Outcome> {
    let (errors, records) =
        store.read(|tx| Ok::<_, crate::store::StoreError>((tx.import_errors()?, tx.dag_records()?)))?;
    if ctx.output == Output::Json {
        let rows: Vec<_> = errors
            .iter()
            .map(|(file, text)| json!({ "file": file, "errors": parse_rendered(text), "kept": kept_json(&records, file) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    if errors.is_empty() {
        println!("no import errors");
    }
    for (file, text) in &errors {
        println!("{text}\n");
        print_kept(&records, file);
    }
    Ok(Outcome::Ok)
}

/// The diagnostics of a file as the store keeps them (rendered, joined by blank lines) read back:
/// message, `file:line:col`, source line and help, so JSON from the store has the shape of JSON
/// from a parse.
fn parse_rendered(text: &str) -> Vec<crate::model::Diagnostic> {
    let mut out = Vec::new();
    for block in text.split("\n\nerror: ") {
        let block = block.strip_prefix("error: ").unwrap_or(block);
        let mut message = Vec::new();
        let mut d = crate::model::Diagnostic::new("", None, "");
        let mut lines = block.lines();
        for line in lines.by_ref() {
            if let Some(at) = line.strip_prefix("  --> ") {
                d.file = at.to_string();
                let mut parts = at.rsplitn(3, ':');
                if let (Some(col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next())
                    && let (Ok(line), Ok(col)) = (line.parse(), col.parse())
                {
                    d.file = file.to_string();
                    d.pos = Some(crate::model::SourcePos::new(line, col));
                }
                break;
            }
            message.push(line);
        }
        d.message = message.join("\n");
        for line in lines {
            if let Some(help) = line.strip_prefix("  = help: ") {
                d.help = Some(help.to_string());
            } else if let Some(pos) = d.pos
                && let Some(code) = line.strip_prefix(&format!("{} | ", pos.line))
            {
                d.source_line = Some(code.to_string());
            }
        }
        out.push(d);
    }
    out
}
