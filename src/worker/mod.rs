//! The local worker: claims a queued task instance (guarded `queued → running`), renders its
//! templates, runs its operator through the executor with heartbeats, and writes the outcome —
//! state, XCom and alert-outbox rows — in one transaction before telling the scheduler.

use crate::executor::template::{self, PrevSuccess, TemplateContext, TemplateError, XcomPushes, render};
use crate::executor::{
    BashOutcome, BashRun, Exit, RunningBash, is_same_process, kill_group, log_line, process_token, read_status,
    spawn_bash,
};
use crate::model::{
    DagSpec, Event, Operator, QueuedTask, RunInfo, RunType, TaskState, TiEvent, TiKey, retry_delay, transition,
};
use crate::store::{NewAlert, Store, StoreError, TiChange, TiRow};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod owner;

pub use owner::{Liveness, Runner};

/// XComs a task's templates pushed: `(key, value)`.
type Pushed = Vec<(String, serde_json::Value)>;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub log_folder: PathBuf,
    pub max_log_bytes: u64,
    /// `[core] max_xcom_bytes`: a bigger `return_value` fails the task.
    pub max_xcom_bytes: u64,
    /// Variables tasks do not inherit (`Config::secret_env_names`) unless their `env` names them.
    pub withheld_env: Vec<String>,
    /// The rhaiflow binary, which supervises each task (`executor::supervisor`).
    pub supervisor: PathBuf,
    pub kill_grace: Duration,
    pub heartbeat: Duration,
    pub hostname: String,
    pub variables: BTreeMap<String, String>,
    pub connections: BTreeMap<String, String>,
    /// `[alerts]` channels for every failure / retry / success.
    pub on_failure: Vec<String>,
    pub on_retry: Vec<String>,
    pub on_success: Vec<String>,
    /// The runner (this process) that owns what this worker claims.
    pub owner: String,
    /// A runner silent for longer is gone (`[scheduler] task_heartbeat_timeout`).
    pub heartbeat_timeout: Duration,
}

impl WorkerSettings {
    /// `logs/dag_id=…/run_id=…/task_id=…/attempt=N.log`, as Airflow lays them out.
    pub fn log_path(&self, key: &TiKey, try_number: u32) -> PathBuf {
        self.log_folder
            .join(format!("dag_id={}", key.dag_id))
            .join(format!("run_id={}", key.run_id))
            .join(format!("task_id={}", key.task_id))
            .join(format!("attempt={try_number}.log"))
    }
}

/// How an operator run ended, before it becomes a state.
#[derive(Debug, Clone)]
pub enum Ending {
    Success { xcom: Option<serde_json::Value> },
    Skipped(String),
    Failed(String),
}

/// Runs queued task instances on the tokio runtime.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    settings: Arc<WorkerSettings>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    runtime: tokio::runtime::Handle,
    running: Arc<Mutex<HashMap<TiKey, u32>>>,
    /// Launched task instances whose final event has not been sent yet.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Set at shutdown: launched tasks that have not claimed their slot yet do not start.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Told whenever a launched task instance is done.
    done: Arc<tokio::sync::Notify>,
}

/// Counts a launched task instance until its task ends, even by panic.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>, Arc<tokio::sync::Notify>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.1.notify_waiters();
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Worker {
    pub fn new(
        store: Store,
        settings: WorkerSettings,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Worker {
            store,
            settings: Arc::new(settings),
            events,
            runtime,
            running: Arc::default(),
            in_flight: Arc::default(),
            closing: Arc::default(),
            done: Arc::default(),
        }
    }

    /// Starts a task instance; returns at once.
    pub fn launch(&self, task: QueuedTask) {
        use std::sync::atomic::Ordering;
        let worker = self.clone();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone(), self.done.clone());
        self.runtime.spawn(async move {
            let key = task.key.clone();
            // `run` on a task of its own, so a panic anywhere in it (a bug) is caught here and the
            // try fails through the normal path instead of staying claimed for ever.
            let inner = {
                let (worker, task) = (worker.clone(), task.clone());
                tokio::spawn(crate::model::caught::Caught::new(async move { worker.run(task).await }))
            };
            let result = match inner.await {
                Ok(result) => result,
                Err(join) => {
                    let reason = format!("internal error while running the task (a bug): {}", panic_message(join));
                    tracing::error!(task = %key, "{reason}");
                    worker.fail_stranded(&task, &reason).await
                }
            };
            if let Err(e) = result {
                tracing::error!(task = %key, error = %e, "could not record a task instance's outcome");
                let _ = worker.events.send(Event::Wake);
            }
            // A shutting-down loop waits for the count to reach zero (`wait_idle`).
            drop(guard);
        });
    }

    /// Fails a queued try without running it (`reason` says why: a pool that does not exist),
    /// through the normal failure path; returns at once.
    pub fn refuse(&self, task: QueuedTask, reason: String) {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone(), self.done.clone());
        let worker = self.clone();
        self.runtime.spawn(async move {
            if let Err(e) = worker.fail_stranded(&task, &reason).await {
                tracing::error!(task = %task.key, error = %e, "could not record a task instance's outcome");
                let _ = worker.events.send(Event::Wake);
            }
            drop(guard);
        });
    }

    /// Tells the loop to look at the store again.
    pub fn wake(&self) {
        let _ = self.events.send(Event::Wake);
    }

    /// Returns once no launched task instance is in flight (each has sent its outcome).
    pub async fn wait_idle(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            done.await;
        }
    }

    /// Task instances launched whose outcome event is not sent yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Process groups still running.
    pub fn running(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Shutdown: tasks launched but not yet started will not start (they stay `queued`, which the
    /// next scheduler puts back to `scheduled`).
    pub fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After the grace period: SIGTERM to every running task's process group, SIGKILL after `kill_grace`.
    pub fn terminate_all(&self) {
        let groups: Vec<u32> = self.running.lock().map(|r| r.values().copied().collect()).unwrap_or_default();
        for pgid in groups {
            let grace = self.settings.kill_grace;
            self.runtime.spawn(async move { kill_group(pgid, grace).await });
        }
    }

    async fn run(&self, task: QueuedTask) -> Result<(), StoreError> {
        let key = task.key.clone();
        let try_number = task.try_number;
        let log_path = self.settings.log_path(&key, try_number);
        let started = now();
        // For a bash task the process is started gated first, so the claim can record its process
        // group in the same transaction, before the command runs.
        let (prepared, pushed) = self.prepare(&task, &log_path).await;
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(Some(bash)) = prepared {
                bash.abort().await;
            }
            return Ok(());
        }
        let pid = match &prepared {
            Ok(Some(bash)) => Some(i64::from(bash.pid())),
            _ => None,
        };
        let claim = TiChange {
            try_number: Some(try_number),
            hostname: Some(self.settings.hostname.clone()),
            start_date: Some(started),
            pid,
            pid_token: pid.and_then(|p| u32::try_from(p).ok()).and_then(process_token),
            owner: Some(self.settings.owner.clone()),
            guard_owner: Some(self.settings.owner.clone()),
            ..TiChange::default()
        };
        let claim_key = key.clone();
        let claimed = self
            .store
            .write_async(move |tx| {
                let running = transition(TaskState::Queued, TiEvent::Start).unwrap_or(TaskState::Running);
                let ok = tx.set_ti_state(&claim_key, TaskState::Queued, running, &claim)?;
                if ok {
                    tx.clear_xcoms(&claim_key)?;
                    for (name, value) in &pushed {
                        tx.set_xcom(&claim_key, name, value, started)?;
                    }
                }
                Ok(ok)
            })
            .await;
        if !matches!(claimed, Ok(true)) {
            // Lost the race (or the store failed): the gated command never ran; take it away.
            if let Ok(Some(bash)) = prepared {
                bash.abort().await;
            }
            return claimed.map(|_| ());
        }
        let _ = self.events.send(Event::TaskStarted { key: key.clone(), try_number });
        let mut header =
            format!("[rhaiflow] {} try {try_number} of {} on {}", key, task.max_tries + 1, self.settings.hostname);
        if let Ok(Some(bash)) = &prepared {
            let command = mask_secrets(bash.command(), &self.settings);
            header.push_str(&format!("\n[rhaiflow] running: bash -c {}", shell_words(&command)));
        }
        log_line(&log_path, &header).await;
        let ending = match prepared {
            Err(ending) => ending,
            Ok(None) => Ending::Success { xcom: None },
            Ok(Some(mut bash)) => {
                let pgid = bash.pid();
                if let Ok(mut running) = self.running.lock() {
                    running.insert(key.clone(), pgid);
                }
                bash.release().await;
                let heartbeat = self.spawn_heartbeat(key.clone());
                let outcome = bash.wait().await;
                heartbeat.abort();
                if let Ok(mut running) = self.running.lock() {
                    running.remove(&key);
                }
                bash_ending(&task, outcome, self.settings.max_xcom_bytes)
            }
        };
        self.finish(&task, ending, started, &log_path).await
    }

    /// Writes a try's outcome — state (retries with their delay), XCom, alert-outbox rows — in one
    /// transaction, guarded by this runner's ownership, then tells the loop.
    async fn finish(
        &self,
        task: &QueuedTask,
        ending: Ending,
        started: DateTime<Utc>,
        log_path: &std::path::Path,
    ) -> Result<(), StoreError> {
        let key = task.key.clone();
        let try_number = task.try_number;
        let finished = now();
        let duration = (finished - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let (state, message) = match &ending {
            Ending::Success { .. } => (
                transition(TaskState::Running, TiEvent::Succeed).unwrap_or(TaskState::Success),
                "Marking task as SUCCESS".to_string(),
            ),
            Ending::Skipped(why) => (
                transition(TaskState::Running, TiEvent::Skip).unwrap_or(TaskState::Skipped),
                format!("{why}; marking task as SKIPPED"),
            ),
            Ending::Failed(why) => {
                let can_retry = try_number <= task.max_tries;
                let state = transition(TaskState::Running, TiEvent::Fail { can_retry }).unwrap_or(TaskState::Failed);
                let verb = if can_retry { "UP_FOR_RETRY" } else { "FAILED" };
                (state, format!("{why}; marking task as {verb}"))
            }
        };
        log_line(log_path, &format!("[rhaiflow] {message}")).await;
        let next_try_at = (state == TaskState::UpForRetry).then(|| {
            let delay = retry_delay(task.task(), &key.dag_id, task.run.logical_date, try_number).as_chrono();
            finished.checked_add_signed(delay).unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        let alerts = self.alerts(task, state, &ending, log_path);
        let write_key = key.clone();
        let xcom = match ending {
            Ending::Success { xcom } => xcom,
            _ => None,
        };
        let change = TiChange {
            end_date: Some(finished),
            duration: Some(duration),
            next_try_at,
            guard_owner: Some(self.settings.owner.clone()),
            ..TiChange::default()
        };
        let recorded = self
            .store
            .write_async(move |tx| {
                if !tx.set_ti_state(&write_key, TaskState::Running, state, &change)? {
                    return Ok(false);
                }
                if let Some(value) = &xcom {
                    tx.set_xcom(&write_key, "return_value", value, finished)?;
                }
                for alert in &alerts {
                    tx.insert_alert(alert, finished)?;
                }
                Ok(true)
            })
            .await?;
        if recorded {
            if let Some(at) = next_try_at {
                tracing::info!(
                    dag_id = %key.dag_id, task_id = %key.task_id, run_id = %key.run_id, try_number,
                    next_try_at = %at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "task up for retry"
                );
            }
            let _ = self.events.send(Event::TaskFinished { key, state, try_number, duration });
        } else {
            // Another process took the try over (or it was marked by hand): its state is theirs.
            log_line(log_path, "[rhaiflow] this outcome was not recorded: the try is no longer this process's").await;
            let _ = self.events.send(Event::Wake);
        }
        Ok(())
    }

    /// Fails a try whose `run` panicked, from `queued` (claiming it first) or `running`, through
    /// the normal failure path (retries apply), guarded by this runner's ownership.
    async fn fail_stranded(&self, task: &QueuedTask, reason: &str) -> Result<(), StoreError> {
        let at = now();
        let claim = TiChange {
            try_number: Some(task.try_number),
            hostname: Some(self.settings.hostname.clone()),
            start_date: Some(at),
            owner: Some(self.settings.owner.clone()),
            guard_owner: Some(self.settings.owner.clone()),
            ..TiChange::default()
        };
        let key = task.key.clone();
        self.store
            .write_async(move |tx| {
                let running = transition(TaskState::Queued, TiEvent::Start).unwrap_or(TaskState::Running);
                tx.set_ti_state(&key, TaskState::Queued, running, &claim)
            })
            .await?;
        let log_path = self.settings.log_path(&task.key, task.try_number);
        self.finish(task, Ending::Failed(reason.to_string()), at, &log_path).await
    }

    /// Gets the operator ready: for `BashOperator`, renders its templates and starts the gated
    /// process; `Ok(None)` for an operator with nothing to run; `Err` for one that cannot run.
    /// Also returns the XComs its templates pushed (`ti.xcom_push`), for the claim to write.
    async fn prepare(
        &self,
        task: &QueuedTask,
        log_path: &std::path::Path,
    ) -> (Result<Option<RunningBash>, Ending>, Pushed) {
        match &task.task().operator {
            Operator::EmptyOperator => (Ok(None), Vec::new()),
            Operator::BashOperator { bash_command, env, cwd, .. } => {
                let fields = std::iter::once(bash_command.as_str())
                    .chain(env.values().map(String::as_str))
                    .chain(cwd.as_deref());
                let ctx = match self.render_context(task, template::needs(fields)).await {
                    Ok(ctx) => ctx,
                    Err(ending) => return (Err(ending), Vec::new()),
                };
                let run = bash_run(task, &ctx, &self.settings, log_path).map_err(|e| Ending::Failed(e.to_string()));
                let pushed = ctx.pushes.take();
                let started = match run {
                    Ok(run) => spawn_bash(run).await.map(Some).map_err(|e| Ending::Failed(e.to_string())),
                    Err(ending) => Err(ending),
                };
                (started, pushed)
            }
            other => (
                Err(Ending::Failed(format!(
                    "`{}` cannot run in this version of rhaiflow yet (only BashOperator and EmptyOperator run)",
                    other.name()
                ))),
                Vec::new(),
            ),
        }
    }

    /// The template context, with the store reads its templates need: the run's XComs when
    /// `xcom_pull` appears, the prior successful run when a `prev_*_success` name does.
    async fn render_context(&self, task: &QueuedTask, needs: template::Needs) -> Result<TemplateContext, Ending> {
        let (dag_id, run_id, logical_date) = (task.key.dag_id.clone(), task.key.run_id.clone(), task.run.logical_date);
        let xcoms = if needs.xcoms {
            let (dag_id, run_id) = (dag_id.clone(), run_id.clone());
            self.store
                .read_async(move |tx| tx.xcoms_of_run(&dag_id, &run_id))
                .await
                .map_err(|e| Ending::Failed(format!("cannot read the XComs of run `{}`: {e}", task.key.run_id)))?
        } else {
            Vec::new()
        };
        let previous = if needs.prev_success {
            self.store.read_async(move |tx| tx.previous_successful_run(&dag_id, logical_date)).await.map_err(|e| {
                Ending::Failed(format!("cannot read the previous successful run of DAG `{}`: {e}", task.key.dag_id))
            })?
        } else {
            None
        };
        let mut ctx = self.template_context(task, xcoms);
        ctx.prev_success = previous.map(|run| PrevSuccess {
            logical_date: run.logical_date,
            data_interval_start: run.data_interval_start,
            data_interval_end: run.data_interval_end,
            start_date: run.start_date,
            end_date: run.end_date,
        });
        Ok(ctx)
    }

    fn spawn_heartbeat(&self, key: TiKey) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let every = self.settings.heartbeat;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let k = key.clone();
                if !store.write_async(move |tx| tx.heartbeat(&k, now())).await.unwrap_or(false) {
                    break;
                }
            }
        })
    }

    pub fn template_context(
        &self,
        task: &QueuedTask,
        xcoms: Vec<(String, String, serde_json::Value)>,
    ) -> TemplateContext {
        template_context(task, &self.settings, xcoms)
    }

    /// The outbox rows for a task instance's new state: the task's own flags, `[alerts]` defaults,
    /// and its callbacks.
    fn alerts(
        &self,
        task: &QueuedTask,
        state: TaskState,
        ending: &Ending,
        log_path: &std::path::Path,
    ) -> Vec<NewAlert> {
        let t = task.task();
        // (email flag, DingTalk flag, `[alerts]` defaults, the task's callback) for this state.
        let (email, ding, defaults, callback) = match state {
            TaskState::Failed => {
                (t.email_on_failure, t.ding_on_failure, &self.settings.on_failure, &t.on_failure_callback)
            }
            TaskState::UpForRetry => (t.email_on_retry, t.ding_on_retry, &self.settings.on_retry, &t.on_retry_callback),
            TaskState::Success => (false, false, &self.settings.on_success, &t.on_success_callback),
            _ => return Vec::new(),
        };
        let mut channels: Vec<String> = Vec::new();
        if email && !t.email.is_empty() {
            channels.push("email".into());
        }
        if ding {
            channels.push("dingtalk".into());
        }
        channels.extend(defaults.iter().cloned());
        channels.extend(callback.iter().map(|c| format!("callback:{}", c.0)));
        let mut seen = std::collections::HashSet::new();
        channels.retain(|c| seen.insert(c.clone()));
        let error = match ending {
            Ending::Failed(why) => Some(why.clone()),
            _ => None,
        };
        let payload = serde_json::json!({
            "dag_id": task.key.dag_id,
            "task_id": task.key.task_id,
            "run_id": task.key.run_id,
            "logical_date": task.run.logical_date.to_rfc3339(),
            "state": state.as_str(),
            "try_number": task.try_number,
            "max_tries": task.max_tries,
            "email": t.email,
            "error": error,
            "log_path": log_path.to_string_lossy(),
        });
        channels
            .into_iter()
            .map(|channel| NewAlert {
                event: state.as_str().to_string(),
                dag_id: task.key.dag_id.clone(),
                run_id: task.key.run_id.clone(),
                task_id: Some(task.key.task_id.clone()),
                try_number: Some(task.try_number),
                channel,
                payload: payload.clone(),
            })
            .collect()
    }
}

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
        "owner": dag.owners().join(", "),
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
fn schedule_neighbours(task: &QueuedTask) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
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

/// The `bash -c` for a `BashOperator` task: rendered command and env, context variables, limits.
pub fn bash_run(
    task: &QueuedTask,
    ctx: &TemplateContext,
    settings: &WorkerSettings,
    log_path: &std::path::Path,
) -> Result<BashRun, TemplateError> {
    let Operator::BashOperator { bash_command, env, append_env, cwd, .. } = &task.task().operator else {
        return Err(TemplateError { field: "operator".into(), line: None, reason: "not a BashOperator".into() });
    };
    let command = render("bash_command", bash_command, ctx)?;
    let mut vars = Vec::new();
    for (k, v) in env {
        vars.push((k.clone(), render(&format!("env.{k}"), v, ctx)?));
    }
    let logical = task.run.logical_date.to_rfc3339();
    let try_number = task.try_number.to_string();
    for prefix in ["RHAIFLOW_CTX", "AIRFLOW_CTX"] {
        vars.push((format!("{prefix}_DAG_ID"), task.key.dag_id.clone()));
        vars.push((format!("{prefix}_TASK_ID"), task.key.task_id.clone()));
        vars.push((format!("{prefix}_RUN_ID"), task.key.run_id.clone()));
        vars.push((format!("{prefix}_LOGICAL_DATE"), logical.clone()));
        vars.push((format!("{prefix}_TRY_NUMBER"), try_number.clone()));
        vars.push((format!("{prefix}_DAG_OWNER"), task.task().owner.to_string()));
    }
    vars.push(("AIRFLOW_CTX_EXECUTION_DATE".into(), logical));
    let cwd = match cwd {
        Some(c) => Some(PathBuf::from(render("cwd", c, ctx)?)),
        None => None,
    };
    Ok(BashRun {
        command,
        env: vars,
        replace_env: !env.is_empty() && !append_env,
        cwd,
        log_path: log_path.to_path_buf(),
        max_log_bytes: settings.max_log_bytes,
        max_xcom_bytes: settings.max_xcom_bytes,
        remove_env: settings.withheld_env.iter().filter(|name| !env.contains_key(*name)).cloned().collect(),
        supervisor: settings.supervisor.clone(),
        masks: secrets(settings),
        timeout: task.task().execution_timeout.map(|t| t.as_std()),
        kill_grace: settings.kill_grace,
    })
}

/// A command as one shell word (`'…'`), so the log shows exactly what `bash -c` received.
fn shell_words(command: &str) -> String {
    format!("'{}'", command.replace('\'', "'\\''"))
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

/// Exit 0 succeeds (last stdout line is the XCom, up to `max_xcom_bytes`), `skip_on_exit_code`
/// skips, anything else fails.
pub fn bash_ending(task: &QueuedTask, outcome: BashOutcome, max_xcom_bytes: u64) -> Ending {
    let Operator::BashOperator { skip_on_exit_code, .. } = &task.task().operator else {
        return Ending::Failed("not a BashOperator".into());
    };
    match outcome.exit {
        Exit::Code(0) if outcome.last_line_bytes > max_xcom_bytes => Ending::Failed(format!(
            "XCom `return_value` of task `{}` is {}, over `core.max_xcom_bytes` ({})",
            task.key.task_id,
            size(outcome.last_line_bytes),
            size(max_xcom_bytes)
        )),
        Exit::Code(0) => Ending::Success { xcom: outcome.last_line.map(serde_json::Value::String) },
        Exit::Code(code) if skip_on_exit_code.contains(&code) => {
            Ending::Skipped(format!("bash command exited with code {code}"))
        }
        Exit::Code(code) => Ending::Failed(format!("bash command failed: exit code {code}")),
        Exit::Signal(sig) => Ending::Failed(format!("bash command killed by signal {sig}")),
        Exit::TimedOut => Ending::Failed(format!(
            "execution_timeout of {} exceeded",
            task.task().execution_timeout.unwrap_or_default()
        )),
    }
}

/// A byte count for people: `3 MiB`, `1.5 KiB`, `12 bytes`.
fn size(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in units {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if value.fract() == 0.0 { format!("{value} {unit}") } else { format!("{value:.1} {unit}") };
        }
    }
    format!("{bytes} bytes")
}

/// The message of a panicked task, for the try's log.
fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(join) => join.to_string(),
    }
}

/// Which claimed tries a takeover looks at.
#[derive(Debug, Clone)]
pub enum TakeOver {
    /// Every try whose owner is gone (the scheduler).
    All,
    /// Only tries of these runs (`dags test`, `dags backfill` resuming their runs).
    Runs(HashSet<(String, String)>),
}

impl Worker {
    /// Takes over the `queued`/`running` tries whose owner is gone (stopped, silent past
    /// `task_heartbeat_timeout`, or its process dead on this host), and only those: a `queued`
    /// try goes back to `scheduled`; a `running` one whose process group still runs here is killed
    /// and fails; one that finished while its owner was dead keeps the outcome it recorded beside
    /// its log. A failed try waits its `retry_delay` like any other. Returns what it changed.
    pub async fn take_over(&self, which: TakeOver) -> Result<Vec<(TiKey, TaskState)>, StoreError> {
        let (claimed, runners) =
            self.store.read_async(|tx| Ok((tx.unfinished_claimed_task_instances()?, tx.runners()?))).await?;
        let liveness = Liveness::at(&self.settings.hostname, self.settings.heartbeat_timeout, now());
        let me = self.settings.owner.clone();
        if matches!(which, TakeOver::All) {
            self.adopt_runs_of_gone_owners(&liveness, &runners).await?;
        }
        let mut changed = Vec::new();
        let mut kills = tokio::task::JoinSet::new();
        for ti in claimed {
            if ti.owner.as_deref() == Some(me.as_str()) || !liveness.is_gone(ti.owner.as_deref(), &runners) {
                continue;
            }
            if let TakeOver::Runs(runs) = &which
                && !runs.contains(&(ti.key.dag_id.clone(), ti.key.run_id.clone()))
            {
                continue;
            }
            let (key, state, old, new) = (ti.key.clone(), ti.state, ti.owner.clone(), me.clone());
            let taken = self.store.write_async(move |tx| tx.take_over_ti(&key, state, old.as_deref(), &new)).await?;
            if !taken {
                continue;
            }
            let who = Liveness::describe(ti.owner.as_deref(), &runners);
            // Each takeover may wait out a `kill_grace`: they run side by side.
            let worker = self.clone();
            kills.spawn(async move { worker.take_over_one(ti, &who).await });
        }
        while let Some(joined) = kills.join_next().await {
            match joined {
                Ok(Ok(Some(state))) => changed.push(state),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(StoreError::Task(e.to_string())),
            }
        }
        Ok(changed)
    }

    /// Runs a `dags test` drove whose runner is gone become the scheduler's (a stopped backfill's
    /// runs wait for that backfill to be run again, as in Airflow).
    async fn adopt_runs_of_gone_owners(
        &self,
        liveness: &Liveness,
        runners: &[crate::store::RunnerRow],
    ) -> Result<(), StoreError> {
        let owned = self.store.read_async(|tx| tx.owned_unfinished_runs()).await?;
        for (dag_id, run_id, run_type, owner) in owned {
            if run_type == crate::model::RunType::Backfill || !liveness.is_gone(Some(&owner), runners) {
                continue;
            }
            let adopted = self.store.write_async(move |tx| tx.release_run(&dag_id, &run_id, &owner)).await?;
            if adopted {
                self.wake();
            }
        }
        Ok(())
    }

    async fn take_over_one(&self, ti: TiRow, who: &str) -> Result<Option<(TiKey, TaskState)>, StoreError> {
        let key = ti.key.clone();
        if ti.state == TaskState::Queued {
            let Some(to) = transition(TaskState::Queued, TiEvent::Requeue) else { return Ok(None) };
            let change = TiChange { guard_owner: Some(self.settings.owner.clone()), ..TiChange::default() };
            let k = key.clone();
            let moved = self.store.write_async(move |tx| tx.set_ti_state(&k, TaskState::Queued, to, &change)).await?;
            return Ok(moved.then_some((key, to)));
        }
        let Some(task) = self.task_of(&ti).await? else {
            // Its DAG version is unreadable: fail it without the spec's retry policy.
            let change = TiChange {
                end_date: Some(now()),
                guard_owner: Some(self.settings.owner.clone()),
                ..TiChange::default()
            };
            let k = key.clone();
            let moved = self
                .store
                .write_async(move |tx| tx.set_ti_state(&k, TaskState::Running, TaskState::Failed, &change))
                .await?;
            return Ok(moved.then_some((key, TaskState::Failed)));
        };
        let log_path = self.settings.log_path(&key, task.try_number);
        let pid = ti.pid.and_then(|p| u32::try_from(p).ok());
        let here = ti.hostname.as_deref() == Some(self.settings.hostname.as_str());
        let alive = here && pid.is_some_and(|p| ti.pid_token.is_some() && is_same_process(p, ti.pid_token.as_deref()));
        let ending = if alive {
            let pgid = pid.unwrap_or_default();
            kill_group(pgid, self.settings.kill_grace).await;
            Ending::Failed(format!(
                "its owner, {who}, stopped; the try's process group {pgid} was killed and the try counts as failed"
            ))
        } else {
            match read_status(&log_path) {
                Some(outcome) => bash_ending(&task, outcome, self.settings.max_xcom_bytes),
                None => Ending::Failed(format!(
                    "its owner, {who}, stopped, and the try's process ended without recording an outcome"
                )),
            }
        };
        log_line(&log_path, &format!("[rhaiflow] taken over by {}", self.settings.owner)).await;
        let started = ti.start_date.unwrap_or_else(now);
        self.finish(&task, ending, started, &log_path).await?;
        let state = self.store.read_async(move |tx| tx.task_instance(&key)).await?;
        Ok(state.map(|t| (t.key, t.state)))
    }

    /// The queued-task view of a stored try, from its run and the DAG version the run is pinned to.
    async fn task_of(&self, ti: &TiRow) -> Result<Option<QueuedTask>, StoreError> {
        let (dag_id, run_id) = (ti.key.dag_id.clone(), ti.key.run_id.clone());
        let found = self
            .store
            .read_async(move |tx| {
                let Some(run) = tx.dag_run(&dag_id, &run_id)? else { return Ok(None) };
                let json = tx.dag_version_json(&run.version_hash)?;
                Ok(json.map(|j| (run, j)))
            })
            .await?;
        let Some((run, json)) = found else { return Ok(None) };
        let Ok(spec) = serde_json::from_str::<DagSpec>(&json) else { return Ok(None) };
        let Some(task_index) = spec.tasks.iter().position(|t| t.task_id == ti.key.task_id) else { return Ok(None) };
        Ok(Some(QueuedTask {
            key: ti.key.clone(),
            dag: Arc::new(spec),
            task_index,
            run: RunInfo {
                run_id: run.run_id,
                run_type: run.run_type,
                logical_date: run.logical_date,
                data_interval_start: run.data_interval_start,
                data_interval_end: run.data_interval_end,
                conf: run.conf,
            },
            try_number: ti.try_number.max(1),
            max_tries: ti.max_tries,
        }))
    }
}
