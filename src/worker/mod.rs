//! The local worker: claims a queued task instance (guarded `queued → running`), renders its
//! templates, runs its operator through the executor with heartbeats, and writes the outcome —
//! state, XCom and alert-outbox rows — in one transaction before telling the scheduler.

use crate::executor::template::{self, PrevSuccess, TemplateContext};
use crate::executor::try_log::{TryLog, stamp_lines};
use crate::executor::{is_same_process, kill_group, log_line, process_token, read_status};
use crate::model::{DagSpec, Event, QueuedTask, RunInfo, TaskState, TiEvent, TiKey, retry_delay, transition};
use crate::operators::{Env, Outcome, Start, TaskRun};
use crate::store::{NewAlert, Store, StoreError, TiChange, TiRow};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

mod owner;

pub use owner::{Liveness, Runner};

pub use crate::operators::{WorkerSettings, mask_secrets, secrets, template_context};

/// Runs queued task instances on the tokio runtime.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    settings: Arc<WorkerSettings>,
    /// What operators reach (`operators::Env`).
    env: Arc<Env>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    runtime: tokio::runtime::Handle,
    running: Arc<Mutex<HashMap<TiKey, u32>>>,
    /// Launched task instances whose final event has not been sent yet.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Set at shutdown: launched tasks that have not claimed their slot yet do not start.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Told whenever a launched task instance is done.
    done: Arc<tokio::sync::Notify>,
    /// Each running try's stop signal (told when the store says it is no longer `running`).
    stops: Arc<Mutex<HashMap<TiKey, Arc<tokio::sync::Notify>>>>,
    /// Told when outbox rows are written (the alert deliverer's wake; `app` sets it).
    outbox_written: Arc<std::sync::OnceLock<Arc<tokio::sync::Notify>>>,
}

/// Counts a launched task instance until its task ends, even by panic.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>, Arc<tokio::sync::Notify>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst).saturating_sub(1);
        crate::metrics::global().slots_used(left);
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
        let settings = Arc::new(settings);
        let wake = {
            let events = events.clone();
            Arc::new(move || drop(events.send(Event::Wake))) as Arc<dyn Fn() + Send + Sync>
        };
        let env = Arc::new(Env::new(settings.clone(), Some(store.clone()), wake));
        Worker {
            store,
            settings,
            env,
            events,
            runtime,
            running: Arc::default(),
            in_flight: Arc::default(),
            closing: Arc::default(),
            done: Arc::default(),
            stops: Arc::default(),
            outbox_written: Arc::default(),
        }
    }

    /// Tells the outbox's wake that rows may have been written (by another process).
    pub fn tell_outbox(&self) {
        if let Some(wake) = self.outbox_written.get() {
            wake.notify_one();
        }
    }

    /// Tells `wake` whenever this worker writes outbox rows (`app` sets it once, after `new`).
    pub fn set_outbox_wake(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.outbox_written.set(wake);
    }

    /// Gives the notifier operators and `alerts::send` the alert channels (`app` sets it once).
    pub fn set_notify(&self, notify: Arc<dyn crate::operators::Notify>) {
        let _ = self.env.notify.set(notify);
    }

    /// The closure host of this process, shared with the callback runner.
    pub fn scripts(&self) -> Arc<crate::script::TaskScripts> {
        self.env.scripts.clone()
    }

    /// Gives `TriggerDagRunOperator` its way to create runs (`app` sets it once, after `new`).
    pub fn set_trigger(&self, trigger: Arc<dyn crate::operators::TriggerRuns>) {
        let _ = self.env.trigger.set(trigger);
    }

    /// Stops, now rather than at their next heartbeat, the running tries the store says are no
    /// longer `running` (cleared: `restarting`, or marked by hand); called on a wake from another
    /// command (`tasks clear`). Returns at once.
    pub fn stop_cleared(&self) {
        let stops: Vec<(TiKey, Arc<tokio::sync::Notify>)> = match self.stops.lock() {
            Ok(s) => s.iter().map(|(k, n)| (k.clone(), n.clone())).collect(),
            Err(_) => return,
        };
        if stops.is_empty() {
            return;
        }
        let store = self.store.clone();
        self.runtime.spawn(async move {
            let keys: Vec<TiKey> = stops.iter().map(|(k, _)| k.clone()).collect();
            let states = store
                .read_async(move |tx| {
                    keys.iter().map(|k| tx.ti_state(&k.dag_id, &k.run_id, &k.task_id)).collect::<Result<Vec<_>, _>>()
                })
                .await;
            for ((_, stop), state) in stops.iter().zip(states.unwrap_or_default()) {
                if state.is_some_and(|s| s != TaskState::Running) {
                    stop.notify_one();
                }
            }
        });
    }

    /// Starts a task instance; returns at once.
    pub fn launch(&self, task: QueuedTask) {
        use std::sync::atomic::Ordering;
        let worker = self.clone();
        let used = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        crate::metrics::global().slots_used(used);
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
        // A process is started gated first, so the claim can record its process group in the same
        // transaction, before the command runs; other work starts once claimed.
        let start = match self.render_context(&task).await {
            Ok(ctx) => {
                let run = Arc::new(TaskRun {
                    task: task.clone(),
                    ctx,
                    trylog: TryLog::buffered(log_path.clone()),
                    env: self.env.clone(),
                    pushed: Default::default(),
                });
                let start = crate::operators::start(run.clone()).await;
                // What the templates pushed (`ti.xcom_push`) is written with the claim.
                let pushed = run.ctx.pushes.take();
                (start, pushed, Some(run))
            }
            Err(outcome) => (Start::Done(outcome), Vec::new(), None),
        };
        let (start, pushed, run) = start;
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            if let Start::Process { process, .. } = start {
                process.abort().await;
            }
            return Ok(());
        }
        let pid = match &start {
            Start::Process { process, .. } => Some(i64::from(process.pid())),
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
        let mut header =
            format!("[rhaiflow] {} try {try_number} of {} on {}", key, task.max_tries + 1, self.settings.hostname);
        let fallback;
        let trylog = match &run {
            Some(run) => &run.trylog,
            None => {
                fallback = TryLog::file(log_path.clone());
                &fallback
            }
        };
        // Work done in this process that ends within `CLAIM_AFTER` is claimed with its outcome, in
        // one write instead of two (a wide run of quick closures is bound by those writes); longer
        // work is claimed then, and runs on meanwhile. What this gives up: for that moment the try
        // shows `queued`, and a try cleared or marked in that moment has already run (its outcome
        // is not recorded), as a try cleared just after it started has.
        let start = match start {
            Start::Done(outcome) => {
                trylog.line(&header).await;
                let claim = Some(Claim { fields: claim, pushed });
                return self.finish(&task, outcome, Vec::new(), started, trylog, claim).await;
            }
            Start::Later(work) => {
                trylog.line(&header).await;
                let mut bounded = Box::pin(bounded(&task, work));
                tokio::select! {
                    outcome = &mut bounded => {
                        let pushed_by_work = run.as_ref().map(|r| r.take_pushed()).unwrap_or_default();
                        let claim = Some(Claim { fields: claim, pushed });
                        return self.finish(&task, outcome, pushed_by_work, started, trylog, claim).await;
                    }
                    () = tokio::time::sleep(CLAIM_AFTER) => Pending::Later(bounded),
                }
            }
            Start::Process { process, outcome } => Pending::Process { process, outcome },
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
            if let Pending::Process { process, .. } = start {
                process.abort().await;
            }
            return claimed.map(|_| ());
        }
        let _ = self.events.send(Event::TaskStarted { key: key.clone(), try_number });
        crate::metrics::global().task_started((now() - started).num_microseconds().unwrap_or(0) as f64 / 1e6);
        if let Pending::Process { process, .. } = &start {
            // A process writes its file: what a runner logged in memory goes there first.
            trylog.spill();
            header.push('\n');
            header.push_str(&crate::operators::command_line(process.command(), &self.settings));
            trylog.line(&header).await;
        }
        let outcome = match start {
            Pending::Process { mut process, outcome } => {
                let pgid = process.pid();
                if let Ok(mut running) = self.running.lock() {
                    running.insert(key.clone(), pgid);
                }
                process.release().await;
                let (heartbeat, stopped) = self.spawn_heartbeat(key.clone());
                let wait = process.wait();
                tokio::pin!(wait);
                let exit = tokio::select! {
                    exit = &mut wait => exit,
                    () = stopped.notified() => {
                        log_line(&log_path, &format!(
                            "[rhaiflow] the task instance is no longer running (cleared or marked meanwhile): \
                             killing process group {pgid}"
                        )).await;
                        // Reaped while the grace runs: the supervisor leads the group, so waiting
                        // for the group to go before reaping it would always wait out the grace.
                        let killer = tokio::spawn(kill_group(pgid, self.settings.kill_grace));
                        let exit = wait.await;
                        killer.abort();
                        exit
                    }
                };
                heartbeat.abort();
                self.forget_stop(&key);
                if let Ok(mut running) = self.running.lock() {
                    running.remove(&key);
                }
                let (outcome, pushed) = outcome(&task, exit, &self.settings);
                if let Some(run) = &run {
                    pushed.into_iter().for_each(|(k, v)| run.push_xcom(k, v));
                }
                outcome
            }
            Pending::Later(bounded) => {
                let (heartbeat, stopped) = self.spawn_heartbeat(key.clone());
                // A try still running after a moment is written to its file, to be followed.
                let spill = async {
                    tokio::time::sleep(crate::executor::try_log::SPILL_AFTER.saturating_sub(CLAIM_AFTER)).await;
                    trylog.spill();
                    std::future::pending::<()>().await
                };
                let outcome = tokio::select! {
                    outcome = bounded => outcome,
                    () = stopped.notified() => {
                        Outcome::fail("the task instance is no longer running (cleared or marked meanwhile); stopped")
                    }
                    () = spill => unreachable!("pending"),
                };
                heartbeat.abort();
                self.forget_stop(&key);
                outcome
            }
        };
        let pushed = run.as_ref().map(|r| r.take_pushed()).unwrap_or_default();
        self.finish(&task, outcome, pushed, started, trylog, None).await
    }

    /// Writes a try's outcome — state (retries with their delay), XCom, skips a branch decided,
    /// alert-outbox rows — in one transaction, guarded by this runner's ownership, then tells the loop.
    async fn finish(
        &self,
        task: &QueuedTask,
        outcome: Outcome,
        pushed: Vec<(String, serde_json::Value)>,
        started: DateTime<Utc>,
        trylog: &TryLog,
        claim: Option<Claim>,
    ) -> Result<(), StoreError> {
        let claiming = claim.is_some();
        let log_path = trylog.path();
        let key = task.key.clone();
        let try_number = task.try_number;
        let finished = now();
        let duration = (finished - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let mut next_try_at = None;
        let mut stored_try = None;
        let (state, message) = match &outcome {
            Outcome::Success { .. } | Outcome::Branch { .. } | Outcome::SkipDownstream { .. } => (
                transition(TaskState::Running, TiEvent::Succeed).unwrap_or(TaskState::Success),
                "Marking task as SUCCESS".to_string(),
            ),
            Outcome::Skip { reason } => (
                transition(TaskState::Running, TiEvent::Skip).unwrap_or(TaskState::Skipped),
                format!("{reason}; marking task as SKIPPED"),
            ),
            Outcome::Fail { reason, final_try } => {
                let can_retry = try_number <= task.max_tries && !final_try;
                let state = transition(TaskState::Running, TiEvent::Fail { can_retry }).unwrap_or(TaskState::Failed);
                let verb = if can_retry { "UP_FOR_RETRY" } else { "FAILED" };
                if can_retry {
                    let delay = retry_delay(task.task(), &key.dag_id, task.run.logical_date, try_number).as_chrono();
                    next_try_at = Some(finished.checked_add_signed(delay).unwrap_or(DateTime::<Utc>::MAX_UTC));
                }
                (state, format!("{reason}; marking task as {verb}"))
            }
            Outcome::Reschedule { at } => {
                // The next poke is the same try, as in Airflow.
                next_try_at = Some(*at);
                stored_try = Some(try_number.saturating_sub(1));
                let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                (
                    transition(TaskState::Running, TiEvent::Reschedule).unwrap_or(TaskState::UpForReschedule),
                    format!("not done yet; rescheduling the task to {at} (UP_FOR_RESCHEDULE)"),
                )
            }
        };
        let alerts = self.alerts(task, state, &outcome, log_path, AlertTiming { next_try_at, duration });
        let has_alerts = !alerts.is_empty();
        let write_key = key.clone();
        let skips = match &outcome {
            Outcome::Branch { follow, .. } => {
                let downstream = task.dag.tasks.iter().filter(|t| t.upstream.contains(&key.task_id));
                downstream.filter(|t| !follow.contains(&t.task_id)).map(|t| t.task_id.clone()).collect()
            }
            Outcome::SkipDownstream { .. } => all_downstream(&task.dag, &key.task_id),
            _ => Vec::new(),
        };
        // A sensor's poke that was not done: its try's first poke starts the sensor's timeout.
        let reschedule = match &outcome {
            Outcome::Reschedule { at } => Some(crate::store::TaskReschedule {
                try_number,
                start_date: started,
                end_date: finished,
                duration,
                reschedule_date: *at,
            }),
            _ => None,
        };
        let xcom = match outcome {
            Outcome::Success { xcom } | Outcome::Branch { xcom, .. } | Outcome::SkipDownstream { xcom } => xcom,
            _ => None,
        };
        let change = TiChange {
            end_date: Some(finished),
            duration: Some(duration),
            next_try_at,
            try_number: stored_try,
            guard_owner: Some(self.settings.owner.clone()),
            ..TiChange::default()
        };
        // Cleared while it ran (`restarting`): the try is over and runs again at once, as a retry
        // that does not count against `retries` (`tasks clear` gave it its retries again).
        let restart = TiChange {
            end_date: Some(finished),
            duration: Some(duration),
            next_try_at: Some(finished),
            guard_owner: Some(self.settings.owner.clone()),
            ..TiChange::default()
        };
        let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restarted_in_tx = restarted.clone();
        // A quick in-process try's log goes to the store with its outcome (`executor::try_log`).
        let buffered = trylog.take();
        let stored_log =
            buffered.as_ref().map(|text| format!("{text}{}", stamp_lines(&format!("[rhaiflow] {message}"))));
        let log_key = key.clone();
        let recorded = self
            .store
            .write_async(move |tx| {
                if let Some(claim) = &claim {
                    let running = transition(TaskState::Queued, TiEvent::Start).unwrap_or(TaskState::Running);
                    if !tx.set_ti_state(&write_key, TaskState::Queued, running, &claim.fields)? {
                        return Ok(false);
                    }
                    tx.clear_xcoms(&write_key)?;
                    for (name, value) in &claim.pushed {
                        tx.set_xcom(&write_key, name, value, started)?;
                    }
                }
                if !tx.set_ti_state(&write_key, TaskState::Running, state, &change)? {
                    let Some(again) = transition(TaskState::Restarting, TiEvent::Restart) else { return Ok(false) };
                    let moved = tx.set_ti_state(&write_key, TaskState::Restarting, again, &restart)?;
                    restarted_in_tx.store(moved, std::sync::atomic::Ordering::SeqCst);
                    return Ok(false);
                }
                for (name, value) in &pushed {
                    tx.set_xcom(&write_key, name, value, finished)?;
                }
                if let Some(value) = &xcom {
                    tx.set_xcom(&write_key, "return_value", value, finished)?;
                }
                if let Some(poke) = &reschedule {
                    tx.insert_task_reschedule(&write_key, poke)?;
                }
                for task_id in &skips {
                    let skipped = TiKey { task_id: task_id.clone(), ..write_key.clone() };
                    let fields = TiChange {
                        start_date: Some(finished),
                        end_date: Some(finished),
                        duration: Some(0.0),
                        ..TiChange::default()
                    };
                    for from in [TaskState::None, TaskState::Scheduled] {
                        tx.set_ti_state(&skipped, from, TaskState::Skipped, &fields)?;
                    }
                }
                for alert in &alerts {
                    tx.insert_alert(alert, finished)?;
                }
                if let Some(text) = &stored_log {
                    tx.append_task_log(&log_key, try_number, text)?;
                }
                Ok(true)
            })
            .await?;
        if recorded
            && has_alerts
            && let Some(wake) = self.outbox_written.get()
        {
            wake.notify_one();
        }
        let restarted = restarted.load(std::sync::atomic::Ordering::SeqCst);
        if !recorded || buffered.is_none() {
            // Not written with the outcome: to the file, in order.
            crate::executor::try_log::append(log_path, &buffered.unwrap_or_default());
            if !restarted {
                log_line(log_path, &format!("[rhaiflow] {message}")).await;
            }
        }
        if recorded {
            if let Some(at) = next_try_at
                && state == TaskState::UpForRetry
            {
                tracing::info!(
                    dag_id = %key.dag_id, task_id = %key.task_id, run_id = %key.run_id, try_number,
                    next_try_at = %at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "task up for retry"
                );
            }
            if claiming {
                let _ = self.events.send(Event::TaskStarted { key: key.clone(), try_number });
            }
            crate::metrics::global().task_finished(task.task().operator.name(), state.as_str(), duration);
            let _ = self.events.send(Event::TaskFinished { key, state, try_number, duration });
        } else if restarted {
            log_line(log_path, "[rhaiflow] cleared while running: the task runs again now (RESTARTING → UP_FOR_RETRY)")
                .await;
            tracing::info!(
                dag_id = %key.dag_id, task_id = %key.task_id, run_id = %key.run_id, try_number,
                "task cleared while running; it runs again"
            );
            let _ = self.events.send(Event::TaskFinished { key, state: TaskState::UpForRetry, try_number, duration });
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
        let trylog = TryLog::file(self.settings.log_path(&task.key, task.try_number));
        self.finish(task, Outcome::fail(reason), Vec::new(), at, &trylog, None).await
    }

    /// The template context, with the store reads its templates need: the run's XComs when
    /// `xcom_pull` appears, the prior successful run when a `prev_*_success` name does.
    async fn render_context(&self, task: &QueuedTask) -> Result<TemplateContext, Outcome> {
        let needs = template::needs(crate::operators::templated_fields(&task.task().operator));
        let (dag_id, run_id, logical_date) = (task.key.dag_id.clone(), task.key.run_id.clone(), task.run.logical_date);
        let xcoms = if needs.xcoms {
            let (dag_id, run_id) = (dag_id.clone(), run_id.clone());
            self.store
                .read_async(move |tx| tx.xcoms_of_run(&dag_id, &run_id))
                .await
                .map_err(|e| Outcome::fail(format!("cannot read the XComs of run `{}`: {e}", task.key.run_id)))?
        } else {
            Vec::new()
        };
        let previous = if needs.prev_success {
            self.store.read_async(move |tx| tx.previous_successful_run(&dag_id, logical_date)).await.map_err(|e| {
                Outcome::fail(format!("cannot read the previous successful run of DAG `{}`: {e}", task.key.dag_id))
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

    /// Beats for a running try; when the beat finds the try no longer `running` (cleared:
    /// `restarting`, or marked by hand), tells the returned `Notify` so the try is stopped, as
    /// Airflow's task heartbeat does. A store error is not a stop: the next beat tries again.
    fn spawn_heartbeat(&self, key: TiKey) -> (tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>) {
        let store = self.store.clone();
        let every = self.settings.heartbeat;
        let stopped = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut stops) = self.stops.lock() {
            stops.insert(key.clone(), stopped.clone());
        }
        let tell = stopped.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let k = key.clone();
                if let Ok(false) = store.write_async(move |tx| tx.heartbeat(&k, now())).await {
                    tell.notify_one();
                    break;
                }
            }
        });
        (handle, stopped)
    }

    fn forget_stop(&self, key: &TiKey) {
        if let Ok(mut stops) = self.stops.lock() {
            stops.remove(key);
        }
    }

    pub fn template_context(
        &self,
        task: &QueuedTask,
        xcoms: Vec<(String, String, serde_json::Value)>,
    ) -> TemplateContext {
        template_context(task, &self.settings, xcoms)
    }

    /// The outbox rows for a task instance's new state: one per channel, whoever asked for it
    /// (the task's `email_on_*` / `ding_on_*` flags, its `alert_on_*` lists, `[alerts]` defaults),
    /// names resolved first so a robot named twice gets one message; and its callbacks.
    fn alerts(
        &self,
        task: &QueuedTask,
        state: TaskState,
        outcome: &Outcome,
        log_path: &std::path::Path,
        timing: AlertTiming,
    ) -> Vec<NewAlert> {
        let t = task.task();
        // (email flag, DingTalk flag, the task's channels, `[alerts]` defaults, the task's callback).
        let (email, ding, own, defaults, callback) = match state {
            TaskState::Failed => (
                t.email_on_failure,
                t.ding_on_failure,
                &t.alert_on_failure,
                &self.settings.on_failure,
                &t.on_failure_callback,
            ),
            TaskState::UpForRetry => {
                (t.email_on_retry, t.ding_on_retry, &t.alert_on_retry, &self.settings.on_retry, &t.on_retry_callback)
            }
            TaskState::Success => {
                (false, false, &t.alert_on_success, &self.settings.on_success, &t.on_success_callback)
            }
            _ => return Vec::new(),
        };
        let mut channels: Vec<String> = Vec::new();
        if email && !t.email.is_empty() {
            channels.push("email".into());
        }
        if ding {
            // Unresolved (no robot configured) stays `dingtalk`: the deliverer records why it failed.
            channels.push(self.settings.ding_robot.clone().unwrap_or_else(|| "dingtalk".into()));
        }
        channels.extend(own.iter().cloned());
        channels.extend(defaults.iter().cloned());
        channels.extend(callback.iter().map(|c| format!("callback:{}", c.0)));
        let mut seen = std::collections::HashSet::new();
        channels.retain(|c| seen.insert(c.clone()));
        let error = match outcome {
            Outcome::Fail { reason, .. } => Some(reason.clone()),
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
            "next_try_at": timing.next_try_at.filter(|_| state == TaskState::UpForRetry)
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "duration": timing.duration,
            "hostname": self.settings.hostname,
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
                held: self.settings.hold_alerts,
            })
            .collect()
    }
}

/// In-process work that ends within this is claimed together with its outcome (see `Worker::run`).
const CLAIM_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The claim written with a quick try's outcome: its fields and what its templates pushed.
struct Claim {
    fields: TiChange,
    pushed: Vec<(String, serde_json::Value)>,
}

/// A try not yet claimed: a gated process, or in-process work still running.
enum Pending {
    Process { process: Box<crate::executor::RunningBash>, outcome: crate::operators::ProcessOutcome },
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>),
}

/// In-process work bounded by the task's `execution_timeout`.
fn bounded(
    task: &QueuedTask,
    work: crate::operators::BoxFuture<Outcome>,
) -> impl std::future::Future<Output = Outcome> + Send + use<> {
    let limit = task.task().execution_timeout;
    async move {
        match limit {
            None => work.await,
            Some(limit) => match tokio::time::timeout(limit.as_std(), work).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::fail(format!("execution_timeout of {limit} exceeded")),
            },
        }
    }
}

/// When a try ended, for its alert: the next try's time (retries) and how long it took.
struct AlertTiming {
    next_try_at: Option<DateTime<Utc>>,
    duration: f64,
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
            let moved =
                self.store.write_async(move |tx| tx.set_ti_state(&k, ti.state, TaskState::Failed, &change)).await?;
            return Ok(moved.then_some((key, TaskState::Failed)));
        };
        let log_path = self.settings.log_path(&key, task.try_number);
        let pid = ti.pid.and_then(|p| u32::try_from(p).ok());
        let here = ti.hostname.as_deref() == Some(self.settings.hostname.as_str());
        let alive = here && pid.is_some_and(|p| ti.pid_token.is_some() && is_same_process(p, ti.pid_token.as_deref()));
        let (ending, pushed) = if alive {
            let pgid = pid.unwrap_or_default();
            kill_group(pgid, self.settings.kill_grace).await;
            let failed = Outcome::fail(format!(
                "its owner, {who}, stopped; the try's process group {pgid} was killed and the try counts as failed"
            ));
            (failed, Vec::new())
        } else {
            let recover = crate::operators::runner(&task.task().operator).and_then(|r| r.recover);
            match (recover, read_status(&log_path)) {
                (Some(recover), Some(exit)) => recover(&task, exit, &self.settings),
                _ => (
                    Outcome::fail(format!("its owner, {who}, stopped, and the try ended without recording an outcome")),
                    Vec::new(),
                ),
            }
        };
        log_line(&log_path, &format!("[rhaiflow] taken over by {}", self.settings.owner)).await;
        let started = ti.start_date.unwrap_or_else(now);
        self.finish(&task, ending, pushed, started, &TryLog::file(log_path), None).await?;
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
                version_hash: run.version_hash,
            },
            try_number: ti.try_number.max(1),
            max_tries: ti.max_tries,
        }))
    }
}

/// Every task downstream of `task_id` (transitively), in declaration order.
fn all_downstream(dag: &crate::model::DagSpec, task_id: &str) -> Vec<String> {
    let mut children: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for t in &dag.tasks {
        for up in &t.upstream {
            children.entry(up.as_str()).or_default().push(t.task_id.as_str());
        }
    }
    let mut below = std::collections::HashSet::new();
    let mut frontier = vec![task_id];
    while let Some(id) = frontier.pop() {
        for child in children.get(id).into_iter().flatten() {
            if below.insert(*child) {
                frontier.push(child);
            }
        }
    }
    dag.tasks.iter().filter(|t| below.contains(t.task_id.as_str())).map(|t| t.task_id.clone()).collect()
}
