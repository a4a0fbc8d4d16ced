//! Wiring: turns the one `Config` into the parts (loader, store, scheduler, worker), drives the
//! event loop that connects them, and owns shutdown. `service` holds the rules the front ends share.

mod alerts;
mod event_loop;
pub mod logging;
mod reload;
mod resolve;
mod service;
mod stored;
mod users;
mod web;

pub use alerts::AlertPreview;
pub use event_loop::{Clock, LoopParts, SystemClock, TokioClock, drive};

pub use resolve::{DagInactive, Notices, Record, ResolvedDag};
pub use service::{BackfillOptions, BackfillPlan, ClearRequest, DagStatus, TestRequest, clear_run};
pub use stored::{StoredDag, StoredVersions};
pub use users::{NewUser, UserError};
pub use web::refuse_public_without_auth;

use crate::config::Config;
use crate::loader::{DagBag, Loader, LoaderSettings};
use crate::model::{DagRunState, Event, RunType, TaskState, TiKey};
use crate::schedule::DataInterval;
use crate::scheduler::{
    AlertDefaults, DagVersion, PinnedDag, Scheduler, SchedulerSettings, Scope, insert_run, new_run, record_dags,
};
use crate::script::{EvalContext, ScriptLimits};
use crate::store::{DagRunRow, Store};
use crate::worker::{Liveness, Runner, TakeOver, Worker, WorkerSettings};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver as Receiver, UnboundedSender as Sender, unbounded_channel};

/// The parts of rhaiflow built from one configuration.
pub struct App {
    pub config: Config,
    loader: Loader,
    /// Where warnings for the user go (the CLI prints them on stderr); else rhaiflow's log.
    notices: Option<Notices>,
}

/// What the event loop reports as it goes, for live output.
pub enum Progress<'a> {
    RunCreated(&'a DagRunRow),
    Started(&'a TiKey, u32),
    Finished(&'a TiKey, TaskState, f64),
    RunFinished(&'a str, &'a str, DagRunState),
}

impl App {
    pub fn new(config: Config) -> anyhow::Result<App> {
        let limits = ScriptLimits {
            deadline: Duration::from_secs_f64(config.core.dag_file_timeout),
            max_tasks_per_dag: config.core.max_tasks_per_dag as usize,
            max_edges_per_dag: config.core.max_edges_per_dag as usize,
            max_declared_bytes: (config.core.max_dag_file_memory_mib as usize) << 20,
            max_memory_bytes: (config.core.max_dag_file_memory_mib as usize * 4) << 20,
            ..ScriptLimits::default()
        };
        let settings =
            LoaderSettings { dags_folder: config.core.dags_folder.clone(), limits, threads: config.core.parse_threads };
        let loader = Loader::new(settings).context("cannot start the DAG loader")?;
        crate::alert::check_templates(&crate::alert::Channels::from_config(&config.alerts))?;
        Ok(App { config, loader, notices: None })
    }

    pub fn eval_context(&self, now: DateTime<Utc>) -> EvalContext {
        EvalContext {
            now,
            default_timezone: self.config.core.default_timezone.parse().unwrap_or(chrono_tz::UTC),
            catchup_by_default: self.config.scheduler.catchup_by_default,
            default_owner: self.config.core.default_owner.clone(),
        }
    }

    /// Parses the whole dags folder.
    pub fn load_dags(&self, now: DateTime<Utc>) -> anyhow::Result<DagBag> {
        Ok(self.loader.load_all(&self.eval_context(now))?)
    }

    /// Sends warnings meant for the user (a broken file's last good version used) to `notices`.
    pub fn set_notices(&mut self, notices: Notices) {
        self.notices = Some(notices);
    }

    fn notice(&self, text: &str) {
        match &self.notices {
            Some(notices) => notices(text),
            None => tracing::warn!("{text}"),
        }
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    fn database_path(&self) -> anyhow::Result<PathBuf> {
        match self.config.database_path() {
            Some(p) => Ok(p),
            None => bail!("`database.url` `{}`: only sqlite:// is supported in this version", self.config.database.url),
        }
    }

    /// Opens the store, applying migrations.
    pub fn open_store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.database_path()?)?)
    }

    /// Loads the dags folder and makes the result durable: DAG rows, versions, import errors.
    pub fn sync_dags(&self, store: &Store, now: DateTime<Utc>) -> anyhow::Result<(Vec<DagVersion>, DagBag)> {
        let bag = self.load_dags(now)?;
        let versions: Vec<DagVersion> = bag.dags.values().map(reload::version_of).collect();
        let errors: Vec<(String, String)> =
            bag.import_errors.iter().map(|e| (e.file.clone(), crate::loader::render_import_error(e))).collect();
        let channels = &self.config.alerts.on_import_error;
        let paused = self.config.core.dags_are_paused_at_creation;
        store.write(|tx| -> anyhow::Result<()> {
            // `[alerts] on_import_error`: a file whose error is new or changed, once.
            let before: std::collections::HashMap<String, String> =
                if channels.is_empty() { Default::default() } else { tx.import_errors()?.into_iter().collect() };
            record_dags(tx, &versions, &errors, now, paused)?;
            for (file, message) in errors.iter().filter(|(f, m)| before.get(f) != Some(m)) {
                reload::import_error_alerts(tx, channels, file, message, now)?;
            }
            Ok(())
        })?;
        Ok((versions, bag))
    }

    pub fn scheduler_settings(&self, runner: &Runner) -> SchedulerSettings {
        crate::metrics::global().slots(self.config.core.parallelism);
        SchedulerSettings {
            parallelism: self.config.core.parallelism,
            owner: runner.id.clone(),
            alert_defaults: AlertDefaults {
                on_failure: self.config.alerts.on_failure.clone(),
                on_retry: self.config.alerts.on_retry.clone(),
                on_success: self.config.alerts.on_success.clone(),
                hold: false,
            },
        }
    }

    /// What a worker needs; `owner` is the runner it claims for (empty outside the store:
    /// `tasks test`, log paths).
    pub fn worker_settings(&self) -> WorkerSettings {
        let hostname = hostname();
        WorkerSettings {
            dags_folder: self.config.core.dags_folder.clone(),
            log_folder: self.config.logging.base_log_folder.clone(),
            max_log_bytes: self.config.logging.max_log_bytes,
            max_xcom_bytes: self.config.core.max_xcom_bytes,
            withheld_env: self.config.secret_env_names(),
            supervisor: supervisor_program(),
            kill_grace: Duration::from_secs_f64(self.config.scheduler.kill_grace),
            // A running try's beat is also how its worker notices a clear (`restarting`).
            heartbeat: self.heartbeat_every(),
            hostname,
            variables: self.config.variables(),
            connections: self
                .config
                .connections
                .iter()
                .filter_map(|(k, c)| c.uri.as_ref().map(|u| (k.clone(), u.expose().to_string())))
                .collect(),
            on_failure: self.config.alerts.on_failure.clone(),
            on_retry: self.config.alerts.on_retry.clone(),
            on_success: self.config.alerts.on_success.clone(),
            ding_robot: self.config.alerts.ding_robot().ok().flatten(),
            hold_alerts: false,
            owner: String::new(),
            heartbeat_timeout: Duration::from_secs_f64(self.config.scheduler.task_heartbeat_timeout),
            task_script_timeout: Duration::from_secs_f64(self.config.core.task_script_timeout),
            script_limits: self.loader.limits().clone(),
            eval_context: self.eval_context(chrono::Utc::now()),
        }
    }

    pub fn worker_settings_for(&self, runner: &Runner) -> WorkerSettings {
        WorkerSettings { owner: runner.id.clone(), ..self.worker_settings() }
    }

    /// Records this process as a runner of task instances (`scheduler`, `dags test`, `backfill`).
    pub fn register_runner(&self, store: &Store, kind: &str) -> anyhow::Result<Runner> {
        let mut runner = Runner::register(store, kind, &hostname(), Utc::now())?;
        runner.start_heartbeat(store, self.heartbeat_every());
        Ok(runner)
    }

    /// How often a runner heartbeats and looks for tries whose owner is gone: well inside the
    /// heartbeat timeout, and at least every 10 s.
    fn heartbeat_every(&self) -> Duration {
        Duration::from_secs_f64((self.config.scheduler.task_heartbeat_timeout / 3.0).clamp(0.05, 10.0))
    }

    /// One scheduler per database: another live scheduler runner (on any host, or through another
    /// path to the same file) refuses this one.
    fn refuse_a_second_scheduler(&self, store: &Store) -> anyhow::Result<()> {
        let runners = store.read(|tx| tx.runners())?;
        let liveness = self.liveness();
        if let Some(other) =
            runners.iter().find(|r| r.kind == "scheduler" && !liveness.is_gone(Some(&r.runner_id), &runners))
        {
            bail!(
                "another scheduler is running on this database ({})",
                Liveness::describe(Some(&other.runner_id), &runners)
            );
        }
        Ok(())
    }

    /// Takes over the tries of `runs` whose owner is gone, so they can be cleared or run again.
    pub fn take_over_runs(&self, store: &Store, runner: &Runner, runs: &[(String, String)]) -> anyhow::Result<()> {
        let runtime = runtime()?;
        let (tx, _rx) = unbounded_channel::<Event>();
        let worker = Worker::new(store.clone(), self.worker_settings_for(runner), tx, runtime.handle().clone());
        let which = TakeOver::Runs(runs.iter().cloned().collect());
        for (key, state) in runtime.block_on(worker.take_over(which))? {
            tracing::warn!(task = %key, state = %state, "took over a task instance whose owner is gone");
        }
        Ok(())
    }

    /// The socket a running scheduler listens on, so other commands can wake it.
    pub fn wake_socket(&self) -> anyhow::Result<PathBuf> {
        Ok(self.database_path()?.with_extension("sock"))
    }

    /// Tells a running scheduler the store changed. No scheduler running is fine.
    pub fn wake_scheduler(&self) {
        if let Ok(path) = self.wake_socket() {
            wake_scheduler_at(&path);
        }
    }

    /// Creates a manual run of `dag` pinned to its current version; `None` when its logical date
    /// is taken. With `owner`, the run is that runner's to drive (`dags test`).
    pub fn create_manual_run(
        &self,
        store: &Store,
        dag: &PinnedDag,
        logical_date: DateTime<Utc>,
        conf: serde_json::Value,
        owner: Option<&Runner>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<DagRunRow>> {
        let mut run = manual_run(dag, logical_date, conf, now);
        run.owner = owner.map(|r| r.id.clone());
        let inserted = store.write(|tx| insert_run(tx, dag, &run))?;
        Ok(inserted.then_some(run))
    }

    /// `rhaiflow scheduler`: until SIGINT/SIGTERM.
    /// The scheduler until SIGINT/SIGTERM; with `web`, the REST API served on that address from
    /// the same process (`standalone`).
    pub fn run_scheduler(&self, web: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
        // Signals first: a SIGTERM while the folder loads stops the start-up cleanly.
        let runtime = runtime()?;
        let (tx, rx) = unbounded_channel::<Event>();
        forward_signals(&runtime, tx.clone());
        let store = self.open_store()?;
        // The lock follows the database file, not the path given (a symlink is the same database).
        let db = self.database_path()?;
        let db = std::fs::canonicalize(&db).unwrap_or(db);
        let _lock = SchedulerLock::take(&db.with_extension("lock"))?;
        self.refuse_a_second_scheduler(&store)?;
        let runner = self.register_runner(&store, "scheduler")?;
        let worker =
            Worker::new(store.clone(), self.worker_settings_for(&runner), tx.clone(), runtime.handle().clone());
        worker.set_trigger(self.run_trigger(&store, false));
        worker.set_notify(Arc::new(self.notifier(Some(&store))));
        let result = self.schedule_until_shutdown(&runtime, &store, &runner, &worker, (tx, rx), web);
        let _ = runner.stop(&store, Utc::now());
        drop(runtime);
        result
    }

    fn schedule_until_shutdown(
        &self,
        runtime: &tokio::runtime::Runtime,
        store: &Store,
        runner: &Runner,
        worker: &Worker,
        (tx, mut rx): (Sender<Event>, Receiver<Event>),
        web: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<()> {
        // The web server stops when the loop does (after the running tasks' grace).
        let web_stop = Arc::new(tokio::sync::Notify::new());
        if let Some(addr) = web {
            // Refuse a taken address before anything starts, naming it.
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (`[webserver] bind`)"))?;
            let stop = web_stop.clone();
            let server = self.serve_web(store, addr, async move { stop.notified().await })?;
            runtime.spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %format!("{e:#}"), "the web server stopped; the scheduler goes on");
                }
            });
        }
        let _stop_web = StopOnDrop(web_stop);
        let health_stop = Arc::new(tokio::sync::Notify::new());
        let _stop_health = StopOnDrop(health_stop.clone());
        if !self.config.scheduler.health_check_bind.is_empty() {
            let bind = &self.config.scheduler.health_check_bind;
            let listener = std::net::TcpListener::bind(bind)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("cannot listen on {bind} (`[scheduler] health_check_bind`)"))?;
            let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| bind.clone());
            let listener = {
                let _in_runtime = runtime.enter();
                tokio::net::TcpListener::from_std(listener)
                    .with_context(|| format!("cannot listen on {bind} (`[scheduler] health_check_bind`)"))?
            };
            tracing::info!(address = %local, "health check server listening: /health and /metrics");
            let stop = health_stop.clone();
            let serve = crate::web::health::serve(
                listener,
                store.clone(),
                runner.id.clone(),
                web::serve_limits(&self.config.webserver),
                async move { stop.notified().await },
            );
            runtime.spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "the health check server stopped; the scheduler goes on");
                }
            });
        }
        for (key, state) in runtime.block_on(worker.take_over(TakeOver::All))? {
            tracing::warn!(task = %key, state = %state, "took over a task instance whose owner is gone");
        }
        let released = self.release_alert_leases_of_gone_owners(store)?;
        if released > 0 {
            tracing::warn!(alerts = released, "alerts a stopped process was sending are sent again");
        }
        // The deliverer runs beside the loop; nothing the loop does awaits a send.
        let deliverer = self.deliverer(store, runner).with_callbacks(self.callback_runner(store, worker));
        let alert_wake = deliverer.waker();
        worker.set_outbox_wake(alert_wake.clone());
        runtime.spawn(deliverer.run());
        // The folder is watched from before the first scan, so no save falls between them.
        let (watch, unwatched) = crate::loader::watch::FolderWatch::start(&self.config.core.dags_folder);
        if let Some(reason) = unwatched {
            tracing::warn!(
                reason,
                every_secs = self.config.core.rescan_interval,
                "cannot watch the dags folder; changes are picked up by the periodic rescan only"
            );
        }
        let mut folder = crate::loader::Folder::default();
        let first = self.reload(store, &mut folder, true, Utc::now())?;
        let versions: Vec<DagVersion> = folder.dags().map(reload::version_of).collect();
        // Loading may have written import-error alerts.
        alert_wake.notify_one();
        for e in folder.import_errors() {
            let first = e.diagnostics.first();
            let line = first.and_then(|d| d.pos.as_ref().map(|p| p.line));
            let error = first.map(|d| d.message.as_str()).unwrap_or("unknown error");
            tracing::warn!(
                file = %e.file,
                line,
                errors = e.diagnostics.len(),
                error,
                "import error: DAG file failed to load; see `rhaiflow dags list-import-errors`"
            );
        }
        if shutdown_requested(&mut rx) {
            tracing::info!("stopped during start-up");
            eprintln!("rhaiflow scheduler: stopped during start-up");
            return Ok(());
        }
        let mut scheduler = Scheduler::new(store.clone(), self.scheduler_settings(runner), Scope::All);
        scheduler.set_dags(&versions);
        // The scheduler keeps one copy of each spec; the loader's JSON is not needed.
        let (dag_count, import_error_count) = (versions.len(), folder.import_errors().count());
        drop((versions, first));
        release_free_memory();
        let socket = self.wake_socket()?;
        runtime.block_on(async { listen_for_wakes(&socket, tx.clone()) })?;
        runtime.spawn(take_over_periodically(worker.clone(), self.heartbeat_every(), TakeOver::All));
        tracing::info!(
            dags = dag_count,
            import_errors = import_error_count,
            dags_folder = %self.config.core.dags_folder.display(),
            "scheduler started"
        );
        let grace = Duration::from_secs_f64(self.config.scheduler.shutdown_grace);
        let parts =
            LoopParts { scheduler: &mut scheduler, worker, events: rx, clock: &SystemClock, until: None, grace };
        let stopper = watch.stopper();
        let result = std::thread::scope(|scope| {
            let reloads = tx.clone();
            let reloader = std::thread::Builder::new()
                .name("rhaiflow-reload".into())
                .spawn_scoped(scope, move || self.reload_until_stopped(store, folder, watch, &reloads));
            let result = runtime.block_on(drive(parts, &mut |_| {}));
            stopper.stop();
            if let Ok(handle) = reloader {
                let _ = handle.join();
            }
            result
        });
        let _ = std::fs::remove_file(&socket);
        result
    }

    /// Runs the given runs to completion in this process (`dags test`, `backfill`), as `runner`.
    pub fn run_to_completion(
        &self,
        store: &Store,
        runner: &Runner,
        versions: &[DagVersion],
        runs: &[(String, String)],
        report: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<()> {
        let result = self.run_runs(store, runner, (versions, runs), false, report);
        // The alerts the runs wrote are the scheduler's to send: tell it to look.
        self.wake_scheduler();
        result
    }

    /// Runs `runs` to completion; with `hold_alerts` their outbox rows are written `held`.
    fn run_runs(
        &self,
        store: &Store,
        runner: &Runner,
        (versions, runs): (&[DagVersion], &[(String, String)]),
        hold_alerts: bool,
        report: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<()> {
        let runtime = runtime()?;
        let (tx, rx) = unbounded_channel::<Event>();
        forward_signals(&runtime, tx.clone());
        let settings = WorkerSettings { hold_alerts, ..self.worker_settings_for(runner) };
        let worker = Worker::new(store.clone(), settings, tx.clone(), runtime.handle().clone());
        if !hold_alerts && let Ok(socket) = self.wake_socket() {
            // The scheduler's deliverer sends what this process writes: tell it when it writes.
            let written = Arc::new(tokio::sync::Notify::new());
            worker.set_outbox_wake(written.clone());
            runtime.spawn(async move {
                loop {
                    written.notified().await;
                    let socket = socket.clone();
                    let _ = tokio::task::spawn_blocking(move || wake_scheduler_at(&socket)).await;
                }
            });
        }
        worker.set_trigger(self.run_trigger(store, true));
        worker.set_notify(Arc::new(self.notifier(Some(store))));
        let scope: HashSet<(String, String)> = runs.iter().cloned().collect();
        runtime.block_on(worker.take_over(TakeOver::Runs(scope.clone())))?;
        let mut scheduler_settings = self.scheduler_settings(runner);
        scheduler_settings.alert_defaults.hold = hold_alerts;
        let mut scheduler = Scheduler::new(store.clone(), scheduler_settings, Scope::Runs(scope.clone()));
        scheduler.set_dags(versions);
        let keep = runtime.spawn(take_over_periodically(
            worker.clone(),
            self.heartbeat_every(),
            TakeOver::Runs(scope.clone()),
        ));
        // Ctrl-C on a command in the foreground stops it now: running tries are terminated
        // (SIGTERM, then SIGKILL after `kill_grace`) and recorded as failed.
        let parts = LoopParts {
            scheduler: &mut scheduler,
            worker: &worker,
            events: rx,
            clock: &SystemClock,
            until: Some(scope),
            grace: Duration::ZERO,
        };
        let result = runtime.block_on(drive(parts, report));
        keep.abort();
        result
    }
}

/// Tells the scheduler listening on `socket` the store changed; none listening is fine (`false`).
/// The connection is what wakes it (`listen_for_wakes`), so the line written after may meet a
/// closed socket; that is no failure.
/// Tells a `Notify`'s waiter to stop when dropped (the end of `schedule_until_shutdown`, however it ends).
struct StopOnDrop(Arc<tokio::sync::Notify>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn wake_scheduler_at(socket: &std::path::Path) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = s.write_all(b"wake\n");
    true
}

/// A manual run of `dag` pinned to it, in `queued`: at `logical_date` to the microsecond (Airflow
/// keeps microseconds; so do run ids and the unique `(dag_id, logical_date)`), its data interval
/// inferred by the timetable.
fn manual_run(dag: &PinnedDag, logical_date: DateTime<Utc>, conf: serde_json::Value, now: DateTime<Utc>) -> DagRunRow {
    use chrono::SubsecRound;
    let logical_date = logical_date.trunc_subsecs(6);
    let interval = match dag.timetable() {
        Some(tt) => tt.infer_manual_data_interval(logical_date),
        None => DataInterval { start: logical_date, end: logical_date },
    };
    new_run(dag, RunType::Manual, logical_date, interval, conf, now)
}

/// The program that supervises each task: `rhaiflow-task` beside this binary (small, so it starts
/// fast), else this binary itself (`rhaiflow __task-supervisor`, the same code).
fn supervisor_program() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rhaiflow"));
    let small = me.with_file_name("rhaiflow-task");
    if small.is_file() { small } else { me }
}

/// This host's name, as runners record it.
fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().to_string()).unwrap_or_default()
}

/// Whether a SIGINT/SIGTERM arrived (other events are dropped: nothing runs yet).
fn shutdown_requested(rx: &mut Receiver<Event>) -> bool {
    std::iter::from_fn(|| rx.try_recv().ok()).any(|e| matches!(e, Event::Shutdown))
}

/// Takes over what gone owners left, every `every` (the heartbeat runs on its own thread).
async fn take_over_periodically(worker: Worker, every: Duration, which: TakeOver) {
    loop {
        tokio::time::sleep(every).await;
        match worker.take_over(which.clone()).await {
            Ok(changed) => {
                for (key, state) in &changed {
                    tracing::warn!(task = %key, state = %state, "took over a task instance whose owner is gone");
                }
                if !changed.is_empty() {
                    worker.wake();
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for task instances whose owner is gone"),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("rhaiflow-worker")
        .build()
        .context("cannot start the async runtime")
}

/// Gives freed heap pages back to the OS. glibc keeps them otherwise, and loading thousands of
/// files leaves most of the peak (JSON, parse trees) freed but resident.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// SIGINT / SIGTERM become a `Shutdown` event. The handlers are installed before this returns
/// (not when a spawned task first runs), so a signal right after it, during start-up, is caught.
fn forward_signals(runtime: &tokio::runtime::Runtime, tx: Sender<Event>) {
    use tokio::signal::unix::{SignalKind, signal};
    let _in_runtime = runtime.enter();
    let (Ok(int), Ok(term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    runtime.spawn(shutdown_on_signals(int, term, tx));
}

async fn shutdown_on_signals(
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
    tx: Sender<Event>,
) {
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if tx.send(Event::Shutdown).is_err() {
            return;
        }
    }
}

/// Every connection to the socket wakes the scheduler (`dags trigger`, `tasks clear`, `dags unpause`).
fn listen_for_wakes(path: &std::path::Path, tx: Sender<Event>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match listener.accept().await {
                Ok((_stream, _)) => {
                    failing = false;
                    if tx.send(Event::Wake).is_err() {
                        break;
                    }
                }
                // Out of file descriptors (EMFILE) or a client gone before it was accepted: the
                // socket must keep listening, or every later `dags trigger` goes unheard until a
                // restart. Wake the loop anyway (a client did try), after a pause, not a spin.
                Err(e) => {
                    // Said once per streak, not at every retry.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot accept a wake-up connection; listening on");
                    }
                    if tx.send(Event::Wake).is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(())
}

/// One scheduler per database: it recovers orphaned task instances, which is only safe alone.
struct SchedulerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl SchedulerLock {
    fn take(path: &std::path::Path) -> anyhow::Result<SchedulerLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(SchedulerLock { _lock: lock }),
            Err(_) => bail!("another scheduler is running on this database (lock `{}` is held)", path.display()),
        }
    }
}

/// The pinned DAG of a run, for commands outside the scheduler.
pub fn pinned_for(versions: &[DagVersion], dag_id: &str) -> Option<Arc<PinnedDag>> {
    versions.iter().find(|v| v.spec.dag_id == dag_id).map(|v| Arc::new(PinnedDag::new(v.spec.clone(), v.hash.clone())))
}
