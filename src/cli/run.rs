//! Commands that run DAGs or change their state: `dags test|trigger|pause|unpause|backfill`,
//! `tasks test|clear|states-for-run|logs`, `runs list`, `scheduler`, `db migrate`.

use super::{Context, Outcome, Output, fmt_time, table};
use crate::app::{ClearRequest, Progress};
use crate::model::{DagRunState, QueuedTask, RunInfo, RunType, TiKey};
use crate::scheduler::{DagVersion, PinnedDag};
use crate::store::Store;
use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDate, Utc};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

/// Parses `2024-01-01`, `2024-01-01T06:00`, `2024-01-01T06:00:00[.ffffff]` (UTC; a space works
/// for the `T`, as in Airflow's `pendulum.parse`) or RFC 3339 with an offset.
pub fn parse_date(text: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M%:z", "%Y-%m-%d %H:%M%:z", "%Y-%m-%d %H:%M:%S%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    bail!("`{text}` is not a date; use 2024-01-01, 2024-01-01T06:00, 2024-01-01T06:00:00 or RFC 3339")
}

/// ` (did you mean `x`?)` when a known name is near `word`, else nothing.
fn did_you_mean(word: &str, known: &[&str]) -> String {
    crate::model::suggest::nearest(word, known).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default()
}

fn fmt_opt(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| fmt_time(&t)).unwrap_or_else(|| "-".into())
}

fn secs(d: Option<f64>) -> String {
    d.map(|d| format!("{d:.2}s")).unwrap_or_else(|| "-".into())
}

/// `dags test ID [DATE]`: one run now, in this process, with a live line per task.
pub fn dags_test(ctx: &Context, dag_id: &str, date: Option<&str>) -> anyhow::Result<Outcome> {
    let logical = date.map(parse_date).transpose()?;
    let started = Instant::now();
    let mut spec = None;
    let (run, final_state) = ctx.app.test_dag(dag_id, logical, ctx.now, &mut |p| match p {
        Progress::RunCreated(run) => {
            println!("dags test {dag_id}: run {} (logical date {})", run.run_id, fmt_time(&run.logical_date))
        }
        Progress::Started(key, try_number) => println!("  {:<24} running (try {try_number})", key.task_id),
        Progress::Finished(key, state, duration) => println!("  {:<24} {state} ({duration:.2}s)", key.task_id),
        Progress::RunFinished(..) => {}
    })?;
    let store = ctx.app.open_store()?;
    let tis = store.read(|tx| tx.task_instances_of_run(&run.dag_id, &run.run_id))?;
    if let Some(json) = store.read(|tx| tx.dag_version_json(&run.version_hash))? {
        spec = serde_json::from_str::<crate::model::DagSpec>(&json).ok();
    }
    let order: Vec<String> = match &spec {
        Some(spec) => spec.tasks.iter().map(|t| t.task_id.clone()).collect(),
        None => tis.iter().map(|t| t.key.task_id.clone()).collect(),
    };
    let rows: Vec<Vec<String>> = order
        .iter()
        .filter_map(|t| tis.iter().find(|ti| &ti.key.task_id == t))
        .map(|ti| vec![ti.key.task_id.clone(), ti.state.to_string(), ti.try_number.to_string(), secs(ti.duration)])
        .collect();
    println!();
    println!("{}", table::render(&["task_id", "state", "tries", "duration"], &rows));
    let how = if final_state.is_finished() { final_state.to_string() } else { "interrupted".to_string() };
    println!("\nrun {} {how} in {:.2}s", run.run_id, started.elapsed().as_secs_f64());
    Ok(if final_state == DagRunState::Success { Outcome::Ok } else { Outcome::Failed })
}

/// `tasks test ID TASK [DATE]`: runs one task without dependencies and without recording state.
pub fn tasks_test(ctx: &Context, dag_id: &str, task_id: &str, date: Option<&str>) -> anyhow::Result<Outcome> {
    let bag = ctx.app.load_dags(ctx.now)?;
    let Some(dag) = bag.dags.get(dag_id) else { return Err(ctx.app.no_dag(&bag, dag_id)) };
    let Some(task_index) = dag.spec.tasks.iter().position(|t| t.task_id == task_id) else {
        let known: Vec<&str> = dag.spec.tasks.iter().map(|t| t.task_id.as_str()).collect();
        bail!("DAG `{dag_id}` has no task `{task_id}`{}", did_you_mean(task_id, &known))
    };
    let logical = match date {
        Some(d) => parse_date(d)?,
        None => ctx.now,
    };
    let run_id = format!("__tasks_test__{}", logical.format("%Y%m%dT%H%M%S"));
    let task = QueuedTask {
        key: TiKey { dag_id: dag_id.into(), run_id: run_id.clone(), task_id: task_id.into() },
        dag: dag.spec.clone(),
        task_index,
        run: RunInfo {
            run_id,
            run_type: RunType::Manual,
            logical_date: logical,
            data_interval_start: logical,
            data_interval_end: logical,
            conf: serde_json::json!({}),
        },
        try_number: 1,
        max_tries: 0,
    };
    let settings = ctx.app.worker_settings();
    let log_path = settings.log_path(&task.key, 1);
    let _ = std::fs::remove_file(&log_path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ending = runtime.block_on(async {
        use crate::worker::{Ending, bash_ending, bash_run, template_context};
        match &task.task().operator {
            crate::model::Operator::EmptyOperator => Ending::Success { xcom: None },
            crate::model::Operator::BashOperator { .. } => {
                let tctx = template_context(&task, &settings, Vec::new());
                match bash_run(&task, &tctx, &settings, &log_path) {
                    Err(e) => Ending::Failed(e.to_string()),
                    Ok(run) => match crate::executor::spawn_bash(run).await {
                        Err(e) => Ending::Failed(e.to_string()),
                        Ok(b) => {
                            let out = b.wait().await;
                            bash_ending(&task, out, settings.max_xcom_bytes)
                        }
                    },
                }
            }
            other => Ending::Failed(format!("`{}` cannot run in this version of rhaiflow yet", other.name())),
        }
    });
    if let Ok(log) = std::fs::read_to_string(&log_path) {
        print!("{log}");
    }
    use crate::worker::Ending;
    match ending {
        Ending::Success { xcom } => {
            if let Some(x) = xcom {
                println!("[rhaiflow] return_value: {x}");
            }
            println!("[rhaiflow] {dag_id}.{task_id}: success");
            Ok(Outcome::Ok)
        }
        Ending::Skipped(why) => {
            println!("[rhaiflow] {dag_id}.{task_id}: skipped ({why})");
            Ok(Outcome::Ok)
        }
        Ending::Failed(why) => {
            println!("[rhaiflow] {dag_id}.{task_id}: failed ({why})");
            Ok(Outcome::Failed)
        }
    }
}

/// `dags trigger ID [--conf JSON] [--logical-date D]`.
pub fn trigger(ctx: &Context, dag_id: &str, conf: Option<&str>, date: Option<&str>) -> anyhow::Result<Outcome> {
    let conf: serde_json::Value = match conf {
        Some(text) => serde_json::from_str(text).context("`--conf` is not JSON")?,
        None => serde_json::json!({}),
    };
    if !conf.is_object() {
        bail!("`--conf` must be a JSON object, like '{{\"key\": 1}}'");
    }
    let logical = date.map(parse_date).transpose()?;
    let run = ctx.app.trigger(dag_id, conf, logical, ctx.now)?;
    let paused = ctx.app.is_paused(&ctx.app.open_store()?, dag_id)?;
    if ctx.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "dag_id": dag_id, "run_id": run.run_id, "logical_date": run.logical_date.to_rfc3339(),
                "is_paused": paused,
            })
        );
    } else {
        println!("triggered {dag_id}: run {} (logical date {})", run.run_id, fmt_time(&run.logical_date));
        if paused {
            println!("DAG `{dag_id}` is paused: the run waits until `rhaiflow dags unpause {dag_id}`");
        }
    }
    Ok(Outcome::Ok)
}

pub fn pause(ctx: &Context, dag_id: &str, paused: bool) -> anyhow::Result<Outcome> {
    ctx.app.set_paused(dag_id, paused, ctx.now)?;
    println!("{} {dag_id}", if paused { "paused" } else { "unpaused" });
    Ok(Outcome::Ok)
}

/// `dags backfill ID --start-date D --end-date D`: every interval in the range, run here; runs a
/// stopped backfill left are resumed.
pub fn backfill(ctx: &Context, dag_id: &str, start: &str, end: &str) -> anyhow::Result<Outcome> {
    let (start, end) = (parse_date(start)?, parse_date(end)?);
    let store = ctx.app.open_store()?;
    let (versions, dag) = ctx.app.load_dag(&store, dag_id, ctx.now)?;
    let runner = ctx.app.register_runner(&store, "backfill")?;
    let result = backfill_as(ctx, &store, &runner, (&versions, &dag), (start, end));
    let _ = runner.stop(&store, chrono::Utc::now());
    result
}

fn backfill_as(
    ctx: &Context,
    store: &Store,
    runner: &crate::worker::Runner,
    (versions, dag): (&[DagVersion], &Arc<PinnedDag>),
    range: (DateTime<Utc>, DateTime<Utc>),
) -> anyhow::Result<Outcome> {
    let dag_id = dag.spec.dag_id.as_str();
    let plan = ctx.app.plan_backfill(store, runner, dag, range, ctx.now)?;
    for date in &plan.skipped {
        println!("skipping {}: a run for that logical date exists", fmt_time(date));
    }
    for (_, run_id) in &plan.resumed {
        println!("resuming {run_id}: left unfinished by a backfill that stopped");
    }
    let runs: Vec<(String, String)> = plan.created.iter().chain(&plan.resumed).cloned().collect();
    if runs.is_empty() {
        println!("nothing to backfill");
        return Ok(Outcome::Ok);
    }
    let total = (runs.len() * dag.spec.tasks.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} task instances, {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut ok, mut failed) = (0, 0);
    ctx.app.run_to_completion(store, runner, versions, &runs, &mut |p| match p {
        Progress::Finished(_, state, _) if state.is_finished() => bar.inc(1),
        Progress::RunFinished(_, run_id, state) => {
            if state == DagRunState::Success {
                ok += 1
            } else {
                failed += 1
            }
            bar.set_message(format!("{ok} run(s) succeeded, {failed} failed"));
            bar.println(format!("{run_id} {state}"));
        }
        _ => {}
    })?;
    bar.finish_and_clear();
    let unfinished = runs.len() - ok - failed;
    if unfinished > 0 {
        println!("backfill {dag_id}: stopped with {unfinished} run(s) unfinished; run it again to resume");
        return Ok(Outcome::Failed);
    }
    println!("backfill {dag_id}: {ok} run(s) succeeded, {failed} failed");
    Ok(if failed == 0 { Outcome::Ok } else { Outcome::Failed })
}

pub struct ClearArgs<'a> {
    pub dag_id: &'a str,
    pub task_regex: Option<&'a str>,
    pub downstream: bool,
    pub start: Option<&'a str>,
    pub end: Option<&'a str>,
}

/// `tasks clear ID [--task-regex RE] [--downstream] [--start-date D --end-date D]`.
pub fn clear(ctx: &Context, args: ClearArgs) -> anyhow::Result<Outcome> {
    let req = ClearRequest {
        dag_id: args.dag_id.to_string(),
        task_regex: args.task_regex.map(str::to_owned),
        downstream: args.downstream,
        start: args.start.map(parse_date).transpose()?,
        end: args.end.map(parse_date).transpose()?,
    };
    let total = ctx.app.clear(&req, ctx.now)?;
    println!("cleared {total} task instance(s) of {}", args.dag_id);
    Ok(Outcome::Ok)
}

pub fn runs_list(ctx: &Context, dag_id: &str) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    let runs = store.read(|tx| tx.dag_runs(dag_id))?;
    if ctx.output == Output::Json {
        // Newest first, as the table.
        let rows: Vec<_> = runs
            .iter()
            .rev()
            .map(|r| {
                serde_json::json!({
                    "run_id": r.run_id, "state": r.state.as_str(), "run_type": r.run_type.as_str(),
                    "logical_date": r.logical_date.to_rfc3339(), "start_date": r.start_date.map(|t| t.to_rfc3339()),
                    "end_date": r.end_date.map(|t| t.to_rfc3339()), "version_hash": r.version_hash,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .rev()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.state.to_string(),
                r.run_type.to_string(),
                fmt_time(&r.logical_date),
                fmt_opt(r.start_date),
                fmt_opt(r.end_date),
            ]
        })
        .collect();
    println!("{}", table::render(&["run_id", "state", "run_type", "logical_date", "start_date", "end_date"], &rows));
    Ok(Outcome::Ok)
}

pub fn states_for_run(ctx: &Context, dag_id: &str, run_id: &str) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    if store.read(|tx| tx.dag_run(dag_id, run_id))?.is_none() {
        bail!("DAG `{dag_id}` has no run `{run_id}`; see `rhaiflow runs list {dag_id}`");
    }
    let tis = store.read(|tx| tx.task_instances_of_run(dag_id, run_id))?;
    if ctx.output == Output::Json {
        let rows: Vec<_> = tis
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task_id": t.key.task_id, "state": t.state.as_str(), "try_number": t.try_number,
                    "start_date": t.start_date.map(|d| d.to_rfc3339()), "end_date": t.end_date.map(|d| d.to_rfc3339()),
                    "duration": t.duration,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = tis
        .iter()
        .map(|t| {
            vec![
                t.key.task_id.clone(),
                t.state.to_string(),
                t.try_number.to_string(),
                fmt_opt(t.start_date),
                fmt_opt(t.end_date),
                secs(t.duration),
            ]
        })
        .collect();
    println!("{}", table::render(&["task_id", "state", "try_number", "start_date", "end_date", "duration"], &rows));
    Ok(Outcome::Ok)
}

pub fn logs(ctx: &Context, key: TiKey, try_number: Option<u32>) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    let Some(ti) = store.read(|tx| tx.task_instance(&key))? else {
        if store.read(|tx| tx.dag_run(&key.dag_id, &key.run_id))?.is_none() {
            let runs = store.read(|tx| tx.dag_runs(&key.dag_id))?;
            let known: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
            bail!(
                "DAG `{}` has no run `{}`{}; see `rhaiflow runs list {}`",
                key.dag_id,
                key.run_id,
                did_you_mean(&key.run_id, &known),
                key.dag_id
            );
        }
        let tis = store.read(|tx| tx.task_instances_of_run(&key.dag_id, &key.run_id))?;
        let known: Vec<&str> = tis.iter().map(|t| t.key.task_id.as_str()).collect();
        bail!(
            "no task instance `{}` in run `{}` of DAG `{}`{}",
            key.task_id,
            key.run_id,
            key.dag_id,
            did_you_mean(&key.task_id, &known)
        );
    };
    let n = try_number.unwrap_or(ti.try_number.max(1));
    let path = ctx.app.worker_settings().log_path(&key, n);
    let text = std::fs::read_to_string(&path).with_context(|| format!("no log for try {n} at {}", path.display()))?;
    print!("{text}");
    Ok(Outcome::Ok)
}

pub fn scheduler(ctx: &Context) -> anyhow::Result<Outcome> {
    ctx.app.run_scheduler()?;
    Ok(Outcome::Ok)
}

pub fn db_migrate(ctx: &Context) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    let mut applied = store.applied_on_open().to_vec();
    applied.extend(store.migrate()?);
    let latest = crate::store::MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    println!(
        "database {} is at schema version {latest}{}",
        store.path().display(),
        if applied.is_empty() { "" } else { " (migrated)" }
    );
    Ok(Outcome::Ok)
}

pub fn pools_list(ctx: &Context) -> anyhow::Result<Outcome> {
    let store = ctx.app.open_store()?;
    let pools = store.read(|tx| tx.pools())?;
    if ctx.output == Output::Json {
        let rows: Vec<_> = pools.iter().map(|(n, s)| serde_json::json!({ "pool": n, "slots": s })).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let rows: Vec<Vec<String>> = pools.iter().map(|(n, s)| vec![n.clone(), s.to_string()]).collect();
        println!("{}", table::render(&["pool", "slots"], &rows));
    }
    Ok(Outcome::Ok)
}

pub fn pools_set(ctx: &Context, name: &str, slots: u32, description: &str) -> anyhow::Result<Outcome> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        bail!("pool name `{name}` must be non-empty and without spaces");
    }
    let store = ctx.app.open_store()?;
    store.write(|tx| tx.set_pool(name, slots, description))?;
    ctx.app.wake_scheduler();
    println!("pool {name}: {slots} slot(s)");
    Ok(Outcome::Ok)
}
