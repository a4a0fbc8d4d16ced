//! Commands that run DAGs or change their state: `dags test|trigger|pause|unpause|backfill`,
//! `tasks test|clear|states-for-run|logs`, `runs list`, `scheduler`, `db migrate`.

use super::{Context, Outcome, Output, fmt_time, table};
use crate::app::{BackfillOptions, ClearRequest, Progress, TestRequest};
use crate::model::{DagRunState, QueuedTask, RunInfo, RunType, TiKey};
use crate::scheduler::{DagVersion, PinnedDag};
use crate::store::Store;
use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDate, Utc};
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::time::Instant;

/// Parses `2024-01-01`, `2024-01-01T06:00`, `2024-01-01T06:00:00[.ffffff]` (UTC; a space works
/// for the `T`, as in Airflow's `pendulum.parse`) or with an offset (`+08:00`, or `Z` as
/// `pendulum.parse` takes it: `2024-01-01T06:00Z`). A leap second (`:60`) is no date, as in Python.
pub fn parse_date(text: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    let parsed = parse_date_text(text)
        .or_else(|| text.strip_suffix(['Z', 'z']).and_then(|t| parse_date_text(&format!("{t}+00:00"))));
    match parsed {
        Some(t) if chrono::Timelike::nanosecond(&t) < 1_000_000_000 => Ok(t),
        _ => bail!("`{text}` is not a date; use 2024-01-01, 2024-01-01T06:00, 2024-01-01T06:00:00 or RFC 3339"),
    }
}

fn parse_date_text(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M%:z", "%Y-%m-%d %H:%M%:z", "%Y-%m-%d %H:%M:%S%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
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

/// What `dags test` was asked.
pub struct TestArgs<'a> {
    pub dag_id: &'a str,
    pub date: Option<&'a str>,
    pub conf: Option<&'a str>,
    /// Stream each try's log as it is written (Airflow's `dags test` shows task logs).
    pub verbose: bool,
    /// Send the run's alerts (else they are only printed).
    pub send_alerts: bool,
}

/// `dags test ID [DATE] [--conf JSON] [--verbose]`: one run now, in this process, with a live
/// line per task; on failure each failed task's last log lines and log path.
pub fn dags_test(ctx: &Context, args: TestArgs) -> anyhow::Result<Outcome> {
    let dag_id = args.dag_id;
    let conf = parse_conf(args.conf)?;
    let req = TestRequest {
        dag_id: dag_id.to_string(),
        logical_date: args.date.map(parse_date).transpose()?,
        conf,
        send_alerts: args.send_alerts,
    };
    let started = Instant::now();
    let mut spec = None;
    let settings = ctx.app.worker_settings();
    let tail = args.verbose.then(LogTail::start);
    let tail_store: std::cell::OnceCell<Option<crate::store::Store>> = std::cell::OnceCell::new();
    let (run, final_state) = ctx.app.test_dag(&req, ctx.now, &mut |p| match p {
        Progress::RunCreated(run) => {
            println!("dags test {dag_id}: run {} (logical date {})", run.run_id, fmt_time(&run.logical_date))
        }
        Progress::Started(key, try_number) => {
            println!("  {:<24} running (try {try_number})", key.task_id);
            if let Some(tail) = &tail {
                tail.follow(&key.task_id, try_number, settings.log_path(key, try_number));
            }
        }
        Progress::Finished(key, state, duration) => {
            if let Some(tail) = &tail {
                // A quick in-process try's lines are in the store, written with its outcome.
                let stored = tail_store
                    .get_or_init(|| ctx.app.open_store().ok())
                    .as_ref()
                    .and_then(|s| s.read(|tx| tx.task_log(key, tail.try_of(&key.task_id))).ok().flatten());
                tail.finish(&key.task_id, stored);
            }
            println!("  {:<24} {state} ({duration:.2}s)", key.task_id)
        }
        Progress::RunFinished(..) => {}
    })?;
    drop(tail);
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
    print_failures(&ctx.app.worker_settings(), &store, &tis);
    print_alerts(ctx, &store, (&run.dag_id, &run.run_id), args.send_alerts)?;
    let how = if final_state.is_finished() { final_state.to_string() } else { "interrupted".to_string() };
    println!("\nrun {} {how} in {:.2}s", run.run_id, started.elapsed().as_secs_f64());
    Ok(if final_state == DagRunState::Success { Outcome::Ok } else { Outcome::Failed })
}

/// The alerts a `dags test` run wrote: each channel's message, and whether it was sent.
fn print_alerts(
    ctx: &Context,
    store: &crate::store::Store,
    (dag_id, run_id): (&str, &str),
    sent: bool,
) -> anyhow::Result<()> {
    let previews = ctx.app.preview_alerts(store, dag_id, run_id)?;
    if previews.is_empty() {
        return Ok(());
    }
    let how =
        if sent { "alerts (sent with --send-alerts)" } else { "alerts it would send (not sent; add --send-alerts)" };
    println!(
        "
{} {how}:",
        previews.len()
    );
    for p in &previews {
        let r = &p.row;
        let task = r.task_id.as_deref().unwrap_or("-");
        let try_number = r.try_number.map(|n| format!(" try {n}")).unwrap_or_default();
        let mut state = r.state.clone();
        if let Some(e) = &r.last_error {
            state.push_str(&format!(": {e}"));
        }
        println!("- {} {} {task}{try_number}: {state}", r.channel, r.event);
        match &p.message {
            Ok(m) => {
                println!("  {}", m.title);
                for line in m.text.lines() {
                    println!("  | {line}");
                }
            }
            Err(e) => println!("  cannot be sent: {e}"),
        }
    }
    Ok(())
}

/// `--conf`: a JSON object (checked by clap already; checked again for other callers).
fn parse_conf(conf: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let conf: serde_json::Value = match conf {
        Some(text) => serde_json::from_str(text).context("`--conf` is not JSON")?,
        None => serde_json::json!({}),
    };
    if !conf.is_object() {
        bail!("`--conf` must be a JSON object, like '{{\"key\": 1}}'");
    }
    Ok(conf)
}

/// How many failed runs `backfill` shows the failures of (the rest are counted).
const MAX_FAILED_RUNS_SHOWN: usize = 5;

/// How many lines of a failed try's log `dags test` and `backfill` show.
const FAILED_LOG_LINES: usize = 20;

/// For each failed task instance: the task, its try, the last lines of its log (where the reason
/// is written) and the log's path.
fn print_failures(settings: &crate::worker::WorkerSettings, store: &crate::store::Store, tis: &[crate::store::TiRow]) {
    for ti in tis.iter().filter(|t| t.state == crate::model::TaskState::Failed) {
        let path = settings.log_path(&ti.key, ti.try_number.max(1));
        println!("\ntask `{}` of run `{}` failed on try {}:", ti.key.task_id, ti.key.run_id, ti.try_number);
        let stored = store.read(|tx| tx.task_log(&ti.key, ti.try_number.max(1))).ok().flatten();
        match last_lines(stored.as_deref(), &path, FAILED_LOG_LINES) {
            Some(lines) if !lines.is_empty() => {
                for line in lines {
                    println!("  | {}", crate::executor::capture::unstamped(&line));
                }
            }
            _ => println!("  (its log is empty or missing)"),
        }
        if path.exists() {
            println!("  log: {}", path.display());
        } else {
            println!("  log: rhaiflow tasks logs {} {} {}", ti.key.dag_id, ti.key.run_id, ti.key.task_id);
        }
    }
}

/// The last `n` lines of a try's log (the text the store kept, then its file), reading at most
/// the file's last 64 KiB.
fn last_lines(stored: Option<&str>, path: &std::path::Path, n: usize) -> Option<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL_BYTES: u64 = 64 << 10;
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let len = f.metadata().ok()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES))).ok()?;
            f.take(TAIL_BYTES).read_to_end(&mut bytes).ok()?;
        }
        Err(_) if stored.is_some() => {}
        Err(_) => return None,
    }
    let text = format!("{}{}", stored.unwrap_or_default(), String::from_utf8_lossy(&bytes));
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect())
}

/// `--verbose`: prints each running try's log lines as they are written, prefixed by the task.
/// A thread reads the new bytes of every followed log every 100 ms (output only; the scheduling
/// itself waits on events).
struct LogTail {
    followed: Arc<std::sync::Mutex<Vec<Followed>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Followed {
    task_id: String,
    try_number: u32,
    path: std::path::PathBuf,
    offset: u64,
    partial: Vec<u8>,
    finished: bool,
}

impl LogTail {
    fn start() -> LogTail {
        let followed: Arc<std::sync::Mutex<Vec<Followed>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (f, s) = (followed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            loop {
                let stopping = s.load(std::sync::atomic::Ordering::SeqCst);
                if let Ok(mut all) = f.lock() {
                    for item in all.iter_mut() {
                        item.print_new(stopping || item.finished);
                    }
                    all.retain(|item| !item.finished);
                }
                if stopping {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        LogTail { followed, stop, thread: Some(thread) }
    }

    fn follow(&self, task_id: &str, try_number: u32, path: std::path::PathBuf) {
        if let Ok(mut all) = self.followed.lock() {
            all.push(Followed {
                task_id: task_id.to_string(),
                try_number,
                path,
                offset: 0,
                partial: Vec::new(),
                finished: false,
            });
        }
    }

    /// The try of `task_id` being followed (1 when none is).
    fn try_of(&self, task_id: &str) -> u32 {
        let all = self.followed.lock();
        all.ok().and_then(|all| all.iter().find(|i| i.task_id == task_id).map(|i| i.try_number)).unwrap_or(1)
    }

    /// The try ended: print what is left of its log now (`stored`: the text the store kept).
    fn finish(&self, task_id: &str, stored: Option<String>) {
        if let Ok(mut all) = self.followed.lock() {
            for item in all.iter_mut().filter(|i| i.task_id == task_id) {
                if let Some(text) = &stored {
                    for line in text.lines() {
                        println!("  [{}] {}", item.task_id, crate::executor::capture::unstamped(line));
                    }
                }
                item.print_new(true);
                item.finished = true;
            }
        }
    }
}

impl Followed {
    /// Prints the complete lines written since last time (and the rest when `all`).
    fn print_new(&mut self, all: bool) {
        use std::io::{Read, Seek, SeekFrom};
        const CHUNK: u64 = 1 << 20;
        if let Ok(mut f) = std::fs::File::open(&self.path)
            && f.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            let mut bytes = Vec::new();
            if let Ok(n) = f.take(CHUNK).read_to_end(&mut bytes) {
                self.offset += n as u64;
                self.partial.extend_from_slice(&bytes);
            }
        }
        let cut =
            if all { self.partial.len() } else { self.partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) };
        let lines: Vec<u8> = self.partial.drain(..cut).collect();
        for line in String::from_utf8_lossy(&lines).lines() {
            println!("  [{}] {}", self.task_id, crate::executor::capture::unstamped(line));
        }
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What `tasks test` was asked.
pub struct TaskTestArgs<'a> {
    pub dag_id: &'a str,
    pub task_id: &'a str,
    pub date: Option<&'a str>,
    /// `-t/--task-params`: a JSON object.
    pub task_params: Option<&'a str>,
    /// `--env-vars`: a JSON object of names to strings (numbers and booleans are written out).
    pub env_vars: Option<&'a str>,
}

/// A JSON object argument: `flag` names it in errors.
fn json_object(flag: &str, text: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => bail!("`{flag}` must be a JSON object, like '{{\"key\": 1}}'"),
        Err(e) => bail!("`{flag}` is not JSON: {e}"),
    }
}

/// `--env-vars`: names and values for the task's environment.
fn env_vars(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, value) in json_object("--env-vars", text)? {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            bail!("`--env-vars`: `{name}` is not an environment variable name");
        }
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => bail!("`--env-vars`: the value of `{name}` must be a string, a number or a boolean"),
        };
        if value.contains('\0') {
            bail!("`--env-vars`: the value of `{name}` holds a NUL byte");
        }
        out.push((name, value));
    }
    Ok(out)
}

/// `tasks test ID TASK [DATE] [-t JSON] [--env-vars JSON]`: runs one task without dependencies
/// and without recording state.
pub fn tasks_test(ctx: &Context, args: TaskTestArgs) -> anyhow::Result<Outcome> {
    let (dag_id, task_id, date) = (args.dag_id, args.task_id, args.date);
    let task_params = args.task_params.map(|t| json_object("--task-params", t)).transpose()?;
    let extra_env = args.env_vars.map(env_vars).transpose()?.unwrap_or_default();
    // From the store, parsing at most the DAG's own file (its last good version if that broke).
    let store = ctx.app.existing_store()?;
    let dag = ctx.app.resolve_dag(store.as_ref(), dag_id, crate::app::Record::No, ctx.now)?;
    let dag_hash = dag.version.hash.clone();
    let dag = DagOf { spec: dag.version.spec.clone(), program: dag.program.clone() };
    let Some(task_index) = dag.spec.tasks.iter().position(|t| t.task_id == task_id) else {
        let known: Vec<&str> = dag.spec.tasks.iter().map(|t| t.task_id.as_str()).collect();
        bail!("DAG `{dag_id}` has no task `{task_id}`{}", did_you_mean(task_id, &known))
    };
    let logical = match date {
        Some(d) => parse_date(d)?,
        None => ctx.now,
    };
    let run_id = format!("__tasks_test__{}", logical.format("%Y%m%dT%H%M%S"));
    let mut spec = dag.spec.clone();
    if let Some(params) = task_params {
        // As Airflow's `tasks test -t`: the given params update the task's.
        Arc::make_mut(&mut spec).tasks[task_index].params.extend(params);
    }
    let task = QueuedTask {
        key: TiKey { dag_id: dag_id.into(), run_id: run_id.clone(), task_id: task_id.into() },
        dag: spec,
        task_index,
        run: RunInfo {
            run_id,
            run_type: RunType::Manual,
            logical_date: logical,
            data_interval_start: logical,
            data_interval_end: logical,
            conf: serde_json::json!({}),
            version_hash: dag_hash.clone(),
        },
        try_number: 1,
        max_tries: 0,
    };
    let settings = ctx.app.worker_settings();
    let log_path = settings.log_path(&task.key, 1);
    let _ = std::fs::remove_file(&log_path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        use crate::operators::{Env, Start, TaskRun};
        let settings = Arc::new(settings.clone());
        // A `TriggerDagRunOperator` creates its run (as Airflow's `tasks test` does) and wakes a scheduler.
        let trigger = store.as_ref().map(|s| ctx.app.run_trigger(s, true));
        let mut env = Env::new(settings.clone(), store, Arc::new(|| {}));
        env.extra_env = extra_env;
        if let Some(program) = &dag.program {
            // The DAG as loaded now may not be recorded: its closures come from this load.
            env.scripts.preload(&dag_hash, &dag.spec.fileloc, program.clone());
        }
        if let Some(trigger) = trigger {
            let _ = env.trigger.set(trigger);
        }
        let _ = env.notify.set(Arc::new(ctx.app.notifier(env.store.as_ref())));
        let env = Arc::new(env);
        let run = Arc::new(TaskRun {
            task: task.clone(),
            ctx: crate::operators::template_context(&task, &settings, Vec::new()),
            trylog: crate::executor::try_log::TryLog::file(log_path.clone()),
            env,
            pushed: Default::default(),
        });
        match crate::operators::start(run.clone()).await {
            Start::Done(outcome) => outcome,
            // Bounded as the worker bounds it (Airflow's `tasks test` honours `execution_timeout` too).
            Start::Later(work) => match task.task().execution_timeout {
                None => work.await,
                Some(limit) => tokio::time::timeout(limit.as_std(), work).await.unwrap_or_else(|_| {
                    crate::operators::Outcome::fail(format!("execution_timeout of {limit} exceeded"))
                }),
            },
            Start::Process { process, outcome } => outcome(&task, process.wait().await, &settings).0,
        }
    });
    if let Ok(log) = std::fs::read_to_string(&log_path) {
        print!("{log}");
    }
    use crate::operators::Outcome as TaskOutcome;
    match outcome {
        TaskOutcome::Success { xcom } | TaskOutcome::Branch { xcom, .. } | TaskOutcome::SkipDownstream { xcom } => {
            if let Some(x) = xcom {
                println!("[rhaiflow] return_value: {x}");
            }
            println!("[rhaiflow] {dag_id}.{task_id}: success");
            Ok(Outcome::Ok)
        }
        TaskOutcome::Skip { reason } => {
            println!("[rhaiflow] {dag_id}.{task_id}: skipped ({reason})");
            Ok(Outcome::Ok)
        }
        TaskOutcome::Reschedule { at } => {
            println!("[rhaiflow] {dag_id}.{task_id}: not done yet; it would poke again at {}", at.to_rfc3339());
            Ok(Outcome::Ok)
        }
        TaskOutcome::Fail { reason, .. } => {
            println!("[rhaiflow] {dag_id}.{task_id}: failed ({reason})");
            Ok(Outcome::Failed)
        }
    }
}

/// What `tasks test` runs of its DAG.
struct DagOf {
    spec: Arc<crate::model::DagSpec>,
    program: Option<Arc<crate::script::ScriptProgram>>,
}

/// `dags trigger ID [--conf JSON] [--logical-date D]`.
pub fn trigger(ctx: &Context, dag_id: &str, conf: Option<&str>, date: Option<&str>) -> anyhow::Result<Outcome> {
    let conf = parse_conf(conf)?;
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
pub fn backfill(ctx: &Context, args: BackfillArgs) -> anyhow::Result<Outcome> {
    let (start, end) = (parse_date(args.start)?, parse_date(args.end)?);
    let store = ctx.app.open_store()?;
    let (versions, dag) = ctx.app.load_dag(&store, args.dag_id, ctx.now)?;
    if args.options.reset_dagruns {
        let runs = store.read(|tx| tx.dag_runs(args.dag_id))?;
        let existing = runs.iter().filter(|r| r.logical_date >= start && r.logical_date <= end).count();
        if existing > 0
            && !args.yes
            && !confirm(&format!("reset {existing} existing run(s) of `{}` and run them anew?", args.dag_id))?
        {
            println!("nothing reset");
            return Ok(Outcome::Ok);
        }
    }
    let runner = ctx.app.register_runner(&store, "backfill")?;
    let result = backfill_as(ctx, &store, &runner, (&versions, &dag), (start, end), args.options);
    let _ = runner.stop(&store, chrono::Utc::now());
    result
}

/// What `dags backfill` was asked.
pub struct BackfillArgs<'a> {
    pub dag_id: &'a str,
    pub start: &'a str,
    pub end: &'a str,
    pub options: BackfillOptions,
    /// No confirmation for `--reset-dagruns`.
    pub yes: bool,
}

/// Asks `question [y/N]` when stdin is a terminal; `true` for yes. Without a terminal (a script)
/// nobody is there to ask, and the command goes ahead, as `--yes` would.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    print!("{question} [y/N] ");
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::Read::take(std::io::stdin().lock(), 256), &mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

fn backfill_as(
    ctx: &Context,
    store: &Store,
    runner: &crate::worker::Runner,
    (versions, dag): (&[DagVersion], &Arc<PinnedDag>),
    range: (DateTime<Utc>, DateTime<Utc>),
    options: BackfillOptions,
) -> anyhow::Result<Outcome> {
    let dag_id = dag.spec.dag_id.as_str();
    let plan = ctx.app.plan_backfill(store, runner, dag, range, options, ctx.now)?;
    for date in &plan.skipped {
        println!("skipping {}: a run for that logical date exists", fmt_time(date));
    }
    for (_, run_id) in &plan.resumed {
        println!("resuming {run_id}: unfinished (cleared, or left by a backfill that stopped)");
    }
    for (_, run_id) in &plan.rerun {
        println!("rerunning {run_id}");
    }
    let runs: Vec<(String, String)> = plan.created.iter().chain(&plan.resumed).chain(&plan.rerun).cloned().collect();
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
    let mut failed_runs: Vec<String> = Vec::new();
    ctx.app.run_to_completion(store, runner, versions, &runs, &mut |p| match p {
        Progress::Finished(_, state, _) if state.is_finished() => bar.inc(1),
        Progress::RunFinished(_, run_id, state) => {
            if state == DagRunState::Success {
                ok += 1
            } else {
                failed += 1;
                failed_runs.push(run_id.to_string());
            }
            bar.set_message(format!("{ok} run(s) succeeded, {failed} failed"));
            bar.println(format!("{run_id} {state}"));
        }
        _ => {}
    })?;
    bar.finish_and_clear();
    let settings = ctx.app.worker_settings();
    for run_id in failed_runs.iter().take(MAX_FAILED_RUNS_SHOWN) {
        print_failures(&settings, store, &store.read(|tx| tx.task_instances_of_run(dag_id, run_id))?);
    }
    if failed_runs.len() > MAX_FAILED_RUNS_SHOWN {
        println!(
            "\n... and {} more failed run(s); see `rhaiflow runs list {dag_id}`",
            failed_runs.len() - MAX_FAILED_RUNS_SHOWN
        );
    }
    if !failed_runs.is_empty() {
        println!();
    }
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
    pub only_failed: bool,
    /// Clear without asking.
    pub yes: bool,
    /// List what would be cleared and clear nothing.
    pub dry_run: bool,
}

/// `tasks clear ID [--task-regex RE] [--downstream] [--start-date D --end-date D] [--only-failed]
/// [--yes] [--dry-run]`: lists the task instances, asks on a terminal, clears them.
pub fn clear(ctx: &Context, args: ClearArgs) -> anyhow::Result<Outcome> {
    let req = ClearRequest {
        dag_id: args.dag_id.to_string(),
        task_regex: args.task_regex.map(str::to_owned),
        downstream: args.downstream,
        start: args.start.map(parse_date).transpose()?,
        end: args.end.map(parse_date).transpose()?,
        only_failed: args.only_failed,
    };
    let selection = ctx.app.clear_selection(&req, ctx.now)?;
    if selection.is_empty() {
        println!("no task instances of {} to clear", args.dag_id);
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = selection
        .iter()
        .map(|ti| vec![ti.key.run_id.clone(), ti.key.task_id.clone(), ti.state.to_string(), ti.try_number.to_string()])
        .collect();
    println!("{}", table::render(&["run_id", "task_id", "state", "try_number"], &rows));
    if args.dry_run {
        println!("dry run: {} task instance(s) of {} would be cleared", selection.len(), args.dag_id);
        return Ok(Outcome::Ok);
    }
    if !args.yes && !confirm(&format!("clear these {} task instance(s)?", selection.len()))? {
        println!("nothing cleared");
        return Ok(Outcome::Ok);
    }
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
        let runs = store.read(|tx| tx.dag_runs(dag_id))?;
        let known: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        bail!(
            "DAG `{dag_id}` has no run `{run_id}`{}; see `rhaiflow runs list {dag_id}`",
            did_you_mean(run_id, &known)
        );
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
    let what = format!("task `{}` of run `{}` of DAG `{}`", key.task_id, key.run_id, key.dag_id);
    // The store's `try_number` is the latest try that started (0: none has).
    if ti.try_number == 0 {
        let when = if ti.state.is_finished() { "never ran" } else { "has not run yet" };
        eprintln!("error: {what} {when} (state `{}`), so it has no log", ti.state);
        return Ok(Outcome::Failed);
    }
    let n = try_number.unwrap_or(ti.try_number);
    if n > ti.try_number {
        let tries = if ti.try_number == 1 { "1 try".to_string() } else { format!("{} tries", ti.try_number) };
        eprintln!(
            "error: {what} has had {tries}, so try {n} has no log; see the latest with `--try {}`",
            ti.try_number
        );
        return Ok(Outcome::Failed);
    }
    let path = ctx.app.worker_settings().log_path(&key, n);
    // A quick in-process try's text is in the store (`executor::try_log`); the file holds the rest.
    let stored = store.read(|tx| tx.task_log(&key, n))?;
    let mut out = std::io::stdout().lock();
    let printed = |e: std::io::Error| -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return super::ClosedStdout.into();
        }
        anyhow::Error::new(e).context(format!("cannot print the log of try {n} at {}", path.display()))
    };
    if let Some(text) = &stored {
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(printed)?;
    }
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && stored.is_some() => return Ok(Outcome::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A try writes its log's first line as it starts; only a try just claimed, or a log
            // folder cleaned by hand, has none.
            eprintln!(
                "error: try {n} of {what} (state `{}`) has no log at {}: it has not written one yet, or the file was removed",
                ti.state,
                path.display()
            );
            return Ok(Outcome::Failed);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the log of try {n} at {}", path.display())),
    };
    // Streamed: a log may be as large as `[logging] max_log_bytes`.
    std::io::copy(&mut std::io::BufReader::new(file), &mut out).and_then(|_| out.flush()).map_err(printed)?;
    Ok(Outcome::Ok)
}

/// `scheduler`, and `standalone`: the same, with the REST API served from the process and a word on
/// where things are.
pub fn scheduler(ctx: &Context, standalone: bool) -> anyhow::Result<Outcome> {
    if standalone {
        let config = &ctx.app.config;
        let database =
            config.database_path().map(|p| p.display().to_string()).unwrap_or_else(|| config.database.url.clone());
        eprintln!(
            "rhaiflow standalone: DAGs from {} (watched: a saved file is picked up at once), database {}, logs in {}",
            config.core.dags_folder.display(),
            database,
            config.logging.base_log_folder.display(),
        );
        if config.core.dags_are_paused_at_creation {
            eprintln!(
                "new DAGs start paused: `rhaiflow dags unpause ID` (or trigger one: `rhaiflow dags trigger ID`); Ctrl-C stops"
            );
        } else {
            eprintln!("Ctrl-C stops");
        }
    }
    let web = if standalone { Some(super::web::address(&ctx.app.config.webserver.bind, None, None)?) } else { None };
    if let Some(addr) = web {
        crate::app::refuse_public_without_auth(&ctx.app.config.webserver, addr)?;
        eprintln!("REST API at http://{addr}/api/v1 (`[webserver] bind`; {})", super::web::auth_words(ctx));
    }
    ctx.app.run_scheduler(web)?;
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
