//! The service layer: the rules of trigger, pause, clear, mark, backfill and test, which the CLI
//! and the web API share. Front ends parse and print; they decide nothing.

use super::{App, Progress, manual_run};
use crate::loader::DagBag;
use crate::model::{DagRunState, DagSpec, RunType, TaskState, TiEvent, TiKey, transition};
use crate::operators::{TriggerError, TriggerRequest, TriggerRuns, Triggered};
use crate::scheduler::{DagVersion, PinnedDag, insert_run, new_run};
use crate::store::{DagRunRow, Store, StoreError, TiChange, TiRow};
use crate::worker::{Liveness, Runner};
use anyhow::bail;
use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;

/// `2024-01-01 00:00:00+00:00`, Airflow's way of showing times in messages.
fn fmt_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}

/// What to clear (`tasks clear`, the API's `clearTaskInstances`).
#[derive(Debug, Clone, Default)]
pub struct ClearRequest {
    pub dag_id: String,
    /// Only tasks whose id matches (a regular expression).
    pub task_regex: Option<String>,
    /// Also every task downstream of a selected one.
    pub downstream: bool,
    /// Only runs with a logical date in this range (inclusive).
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Only task instances that failed (`failed`, `upstream_failed`), as Airflow's `--only-failed`.
    pub only_failed: bool,
}

/// What `dags test` runs.
#[derive(Debug, Clone)]
pub struct TestRequest {
    pub dag_id: String,
    /// Default: now.
    pub logical_date: Option<DateTime<Utc>>,
    /// `dag_run.conf` (and `params` overrides), a JSON object.
    pub conf: serde_json::Value,
    /// Send the alerts the run wrote (otherwise they are only shown, and stay `held`).
    pub send_alerts: bool,
}

/// The most runs one backfill creates: a longer range is refused before anything is written.
pub const MAX_BACKFILL_RUNS: usize = 10_000;

/// A backfill's plan: runs created, runs resumed from a backfill that stopped, runs rerun (the
/// options), dates skipped.
#[derive(Debug, Clone, Default)]
pub struct BackfillPlan {
    pub created: Vec<(String, String)>,
    pub resumed: Vec<(String, String)>,
    /// Existing runs taken into this backfill by `--rerun-failed-tasks` or `--reset-dagruns`.
    pub rerun: Vec<(String, String)>,
    pub skipped: Vec<DateTime<Utc>>,
}

/// What a backfill does with runs that already exist in its range (Airflow's flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct BackfillOptions {
    /// Clear and rerun the failed (and upstream-failed) task instances of existing runs.
    pub rerun_failed_tasks: bool,
    /// Clear every task instance of existing runs and run them anew.
    pub reset_dagruns: bool,
}

/// What the store knows of a DAG, for listings.
#[derive(Debug, Clone, Copy)]
pub struct DagStatus {
    pub is_paused: bool,
    /// The data interval of its latest scheduled run, which its timetable continues from.
    pub last_interval: Option<crate::schedule::DataInterval>,
}

impl App {
    /// The store, when there is one: listings do not create a database just to read it.
    pub fn existing_store(&self) -> anyhow::Result<Option<Store>> {
        if !self.database_path()?.exists() {
            return Ok(None);
        }
        Ok(Some(self.open_store()?))
    }

    /// Paused state and scheduling position of every DAG the store knows; a DAG it does not know
    /// yet will start paused as `[core] dags_are_paused_at_creation` says (see `paused_if_new`).
    pub fn dag_statuses(&self) -> anyhow::Result<std::collections::HashMap<String, DagStatus>> {
        let Some(store) = self.existing_store()? else { return Ok(Default::default()) };
        let statuses = store.read(|tx| -> Result<_, StoreError> {
            let mut out = std::collections::HashMap::new();
            for dag in tx.dags()? {
                let last_interval = tx
                    .latest_scheduled_interval(&dag.dag_id)?
                    .map(|(start, end)| crate::schedule::DataInterval { start, end });
                out.insert(dag.dag_id, DagStatus { is_paused: dag.is_paused, last_interval });
            }
            Ok(out)
        })?;
        Ok(statuses)
    }

    /// Tasks naming a pool the store does not have (`dags check`): one diagnostic per DAG and
    /// pool, naming its first task and counting the others; none when there is no store yet
    /// (pools live in it).
    pub fn pool_problems(&self, bag: &DagBag) -> anyhow::Result<Vec<crate::model::Diagnostic>> {
        let Some(store) = self.existing_store()? else { return Ok(Vec::new()) };
        let pools: std::collections::HashSet<String> = store.read(|tx| tx.pools())?.into_iter().map(|p| p.0).collect();
        let mut out = Vec::new();
        for dag in bag.dags.values() {
            // Missing pool → (first task naming it, how many tasks name it), in task order.
            let mut missing: Vec<(&str, &str, usize)> = Vec::new();
            let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            for task in dag.spec.tasks.iter().filter(|t| !pools.contains(&*t.pool)) {
                match index.get(&*task.pool) {
                    Some(&i) => missing[i].2 += 1,
                    None => {
                        index.insert(&task.pool, missing.len());
                        missing.push((&task.pool, &task.task_id, 1));
                    }
                }
            }
            for (pool, task_id, count) in missing {
                let others = if count > 1 { format!(" (and {} more task(s))", count - 1) } else { String::new() };
                let mut d = crate::model::Diagnostic::new(
                    dag.spec.fileloc.clone(),
                    None,
                    format!(
                        "task `{task_id}`{others} of DAG `{}` uses pool `{pool}`, which does not exist",
                        dag.spec.dag_id
                    ),
                );
                d.help = Some(format!("create it with `rhaiflow pools set {pool} SLOTS`, or fix `pool`"));
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Whether a DAG the store has not seen yet starts paused.
    pub fn paused_if_new(&self) -> bool {
        self.config.core.dags_are_paused_at_creation
    }

    /// Whether `dag_id` is paused in the store.
    pub fn is_paused(&self, store: &Store, dag_id: &str) -> anyhow::Result<bool> {
        Ok(store.read(|tx| tx.dag_record(dag_id))?.is_some_and(|d| d.is_paused))
    }

    /// The DAG `dag_id` for a command that changes state, recorded in the store: its versions (for
    /// a run's scheduler) and the pinned current one. Parses at most its own file (`resolve_dag`).
    pub fn load_dag(
        &self,
        store: &Store,
        dag_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Vec<DagVersion>, Arc<PinnedDag>)> {
        self.resolve_for_change(store, dag_id, now)
    }

    /// The error for a DAG id the bag lacks: the file that declares it when that file failed to
    /// load (its first error, and where to see them all), else the nearest id, else how many files
    /// failed to load.
    pub fn no_dag(&self, bag: &DagBag, dag_id: &str) -> anyhow::Error {
        if let Some(broken) = bag.import_errors.iter().find(|e| self.declares(&e.file, dag_id)) {
            let first = broken.diagnostics.first().map(|d| d.to_string()).unwrap_or_default();
            return anyhow::anyhow!(
                "DAG `{dag_id}` is in `{}`, which failed to load; fix it (all its errors: `rhaiflow dags list-import-errors`):\n{first}",
                broken.file
            );
        }
        let known: Vec<&str> = bag.dags.keys().map(String::as_str).collect();
        if let Some(k) = crate::model::suggest::nearest(dag_id, &known) {
            return anyhow::anyhow!("no DAG `{dag_id}` — did you mean `{k}`?");
        }
        match bag.import_errors.len() {
            0 => anyhow::anyhow!("no DAG `{dag_id}` in the dags folder"),
            n => anyhow::anyhow!(
                "no DAG `{dag_id}` in the dags folder ({n} file(s) failed to load; see `rhaiflow dags list-import-errors`)"
            ),
        }
    }

    /// Whether the DAG file `file` (relative to the dags folder) names `dag_id` as a string: how a
    /// DAG of a file that failed to load is found. Reads at most the loader's file size limit.
    fn declares(&self, file: &str, dag_id: &str) -> bool {
        use std::io::Read;
        let Ok(f) = std::fs::File::open(self.config.core.dags_folder.join(file)) else { return false };
        let mut text = String::new();
        if f.take(crate::loader::MAX_FILE_BYTES).read_to_string(&mut text).is_err() {
            return false;
        }
        [format!("\"{dag_id}\""), format!("'{dag_id}'")].iter().any(|quoted| text.contains(quoted.as_str()))
    }

    /// A manual run (`dags trigger`); a running scheduler is woken to start it at once.
    pub fn trigger(
        &self,
        dag_id: &str,
        conf: serde_json::Value,
        logical_date: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<DagRunRow> {
        if !conf.is_object() {
            bail!("`conf` must be a JSON object, like '{{\"key\": 1}}'");
        }
        let store = self.open_store()?;
        let (_, dag) = self.load_dag(&store, dag_id, now)?;
        let logical = logical_date.unwrap_or(now);
        let req =
            TriggerRequest { dag_id: dag_id.into(), run_id: None, logical_date: logical, conf, reset_dag_run: false };
        let run = match trigger_run(&store, &dag, &req, now) {
            Ok(t) => t.run,
            Err(TriggerError::AlreadyExists(_)) => {
                bail!("DAG `{dag_id}` already has a run for {}", fmt_time(&logical.trunc_subsecs(6)))
            }
            Err(e) => bail!("{e}"),
        };
        self.wake_scheduler();
        Ok(run)
    }

    /// What `TriggerDagRunOperator` creates runs with, for a worker on `store`: the DAG as the
    /// store last recorded it (Airflow's serialised DAG), the rules of [`trigger_run`]. With
    /// `wake_socket`, a scheduler in another process is woken (`dags test`, `backfill`); the
    /// scheduler's own worker wakes its loop through `Env::wake`.
    pub fn run_trigger(&self, store: &Store, wake_socket: bool) -> Arc<dyn TriggerRuns> {
        let socket = if wake_socket { self.wake_socket().ok() } else { None };
        Arc::new(StoreTrigger { store: store.clone(), socket })
    }

    /// Pauses or unpauses a DAG.
    pub fn set_paused(&self, dag_id: &str, paused: bool, now: DateTime<Utc>) -> anyhow::Result<()> {
        let store = self.open_store()?;
        self.load_dag(&store, dag_id, now)?;
        store.write(|tx| tx.set_paused(dag_id, paused))?;
        self.wake_scheduler();
        Ok(())
    }

    /// The task instances `clear` would clear, run by run (oldest first): the selected tasks of
    /// the selected runs, in a state clearing changes (not `queued`, whose owner finishes it;
    /// a `running` one is stopped and restarts).
    pub fn clear_selection(&self, req: &ClearRequest, now: DateTime<Utc>) -> anyhow::Result<Vec<TiRow>> {
        let store = self.open_store()?;
        let (_, dag) = self.load_dag(&store, &req.dag_id, now)?;
        let selected = self.selected_tasks(req, &dag)?;
        let runs = store.read(|tx| tx.dag_runs(&req.dag_id))?;
        let mut out = Vec::new();
        for run in runs.iter().filter(|r| in_range(req, r)) {
            let tis = store.read(|tx| tx.task_instances_of_run(&run.dag_id, &run.run_id))?;
            out.extend(tis.into_iter().filter(|ti| {
                selected.contains(&ti.key.task_id)
                    && clearable(ti.state)
                    && (!req.only_failed || matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed))
            }));
        }
        Ok(out)
    }

    /// The task ids `req` selects: by regex, plus downstream when asked.
    fn selected_tasks(&self, req: &ClearRequest, dag: &PinnedDag) -> anyhow::Result<Vec<String>> {
        let re = match &req.task_regex {
            Some(r) => Some(regex::Regex::new(r).map_err(|e| {
                anyhow::Error::new(e).context(format!("`--task-regex` `{r}` is not a regular expression"))
            })?),
            None => None,
        };
        let mut selected: Vec<String> = dag
            .spec
            .tasks
            .iter()
            .filter(|t| re.as_ref().is_none_or(|re| re.is_match(&t.task_id)))
            .map(|t| t.task_id.clone())
            .collect();
        if req.downstream {
            let graph = crate::graph::TaskGraph::build(&dag.spec)?;
            let extra: Vec<String> = selected.iter().flat_map(|t| graph.downstream_of(t)).map(str::to_owned).collect();
            selected.extend(extra);
            selected.sort();
            selected.dedup();
        }
        Ok(selected)
    }

    /// Clears the selected task instances of the selected runs; returns how many.
    pub fn clear(&self, req: &ClearRequest, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let store = self.open_store()?;
        let (_, dag) = self.load_dag(&store, &req.dag_id, now)?;
        let selected = self.selected_tasks(req, &dag)?;
        let runs = store.read(|tx| tx.dag_runs(&req.dag_id))?;
        let mut total = 0;
        for run in runs.iter().filter(|r| in_range(req, r)) {
            let retries = |ti: &TiRow| {
                let t = ti.key.task_id.as_str();
                let failed = matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed);
                (selected.iter().any(|s| s == t) && (!req.only_failed || failed))
                    .then(|| dag.spec.task(t).map_or(0, |t| t.retries))
            };
            total += clear_run(&store, &run.dag_id, &run.run_id, retries, now)?;
        }
        self.wake_scheduler();
        Ok(total)
    }

    /// Marks one task instance `success`, `failed` or `skipped` by hand (Airflow's "mark"); a running
    /// try is stopped by its worker at its next heartbeat, as in Airflow, and its outcome is not recorded.
    pub fn mark_task_instance(&self, key: &TiKey, to: TaskState, now: DateTime<Utc>) -> anyhow::Result<()> {
        if !matches!(to, TaskState::Success | TaskState::Failed | TaskState::Skipped) {
            bail!("a task instance can be marked `success`, `failed` or `skipped`, not `{to}`");
        }
        let store = self.open_store()?;
        let marked = store.write(|tx| -> Result<bool, StoreError> {
            let Some(ti) = tx.task_instance(key)? else { return Ok(false) };
            if ti.state == to {
                return Ok(true);
            }
            let change = TiChange { end_date: Some(now), ..TiChange::default() };
            if !tx.set_ti_state(key, ti.state, to, &change)? {
                return Ok(false);
            }
            // As Airflow: a finished run goes back to `queued`, so the scheduler decides it again
            // (marking the one failed task `success` makes the run succeed).
            if let Some(run) = tx.dag_run(&key.dag_id, &key.run_id)?
                && run.state.is_finished()
            {
                tx.set_run_state(&key.dag_id, &key.run_id, run.state, DagRunState::Queued, now)?;
            }
            Ok(true)
        })?;
        if !marked {
            bail!(
                "no task instance `{}` in run `{}` of DAG `{}` (or it changed meanwhile)",
                key.task_id,
                key.run_id,
                key.dag_id
            );
        }
        self.wake_scheduler();
        Ok(())
    }

    /// `dags test ID [DATE] [--conf JSON]`: one run now, in this process, of the DAG as its file
    /// is now. A run already at that date is replaced, as Airflow's `dags test` does (deleted with
    /// its task instances, XComs and logs; tries a stopped `dags test` left are taken over first).
    pub fn test_dag(
        &self,
        req: &TestRequest,
        now: DateTime<Utc>,
        report: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<(DagRunRow, DagRunState)> {
        if !req.conf.is_object() {
            bail!("`conf` must be a JSON object, like '{{\"key\": 1}}'");
        }
        let store = self.open_store()?;
        let (versions, dag) = self.load_dag(&store, &req.dag_id, now)?;
        let runner = self.register_runner(&store, "dags test")?;
        let mut result = self.test_dag_as(&store, &runner, (&versions, &dag), req, now, report);
        if req.send_alerts
            && let Ok((run, _)) = &result
            && let Err(e) = self.send_held_alerts(&store, &runner, (&run.dag_id, &run.run_id), Utc::now())
        {
            result = Err(e);
        }
        let _ = runner.stop(&store, Utc::now());
        result
    }

    fn test_dag_as(
        &self,
        store: &Store,
        runner: &Runner,
        (versions, dag): (&[DagVersion], &Arc<PinnedDag>),
        req: &TestRequest,
        now: DateTime<Utc>,
        report: &mut dyn FnMut(Progress),
    ) -> anyhow::Result<(DagRunRow, DagRunState)> {
        let logical = req.logical_date.unwrap_or(now).trunc_subsecs(6);
        if let Some(old) = store.read(|tx| tx.dag_run_at(&dag.spec.dag_id, logical))? {
            self.claim_run(store, runner, &old)?;
            self.delete_run(store, &old)?;
        }
        let Some(run) = self.create_manual_run(store, dag, logical, req.conf.clone(), Some(runner), now)? else {
            bail!("DAG `{}` got a run for {} meanwhile; run `dags test` again", dag.spec.dag_id, fmt_time(&logical));
        };
        report(Progress::RunCreated(&run));
        let ids = [(run.dag_id.clone(), run.run_id.clone())];
        self.run_runs(store, runner, (versions, &ids), true, report)?;
        let state = store.read(|tx| tx.dag_run(&run.dag_id, &run.run_id))?.map_or(DagRunState::Running, |r| r.state);
        Ok((run, state))
    }

    /// Deletes a run, its task instances, XComs and log folder (nothing of it may be running).
    fn delete_run(&self, store: &Store, run: &DagRunRow) -> anyhow::Result<()> {
        store.write(|tx| -> Result<(), StoreError> {
            tx.delete_xcoms_of_run(&run.dag_id, &run.run_id)?;
            tx.delete_task_instances_of_run(&run.dag_id, &run.run_id)?;
            tx.delete_dag_run(&run.dag_id, &run.run_id)?;
            Ok(())
        })?;
        let key = TiKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: String::new() };
        if let Some(run_folder) = self.worker_settings().log_path(&key, 1).parent().and_then(|t| t.parent()) {
            match std::fs::remove_dir_all(run_folder) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove the logs of the replaced run at {}: {e}", run_folder.display()),
            }
        }
        Ok(())
    }

    /// Makes an existing run `runner`'s: refused while another live process drives it; tries a
    /// gone owner left are taken over (killed if still running here).
    fn claim_run(&self, store: &Store, runner: &Runner, run: &DagRunRow) -> anyhow::Result<()> {
        self.ensure_free(store, runner, run)?;
        // Guarded by the owner `ensure_free` judged: of two processes claiming at once, one wins.
        if !store.write(|tx| tx.claim_run_owner(&run.dag_id, &run.run_id, run.owner.as_deref(), &runner.id))? {
            let (now_owner, runners) = store.read(|tx| {
                Ok::<_, StoreError>((tx.dag_run(&run.dag_id, &run.run_id)?.and_then(|r| r.owner), tx.runners()?))
            })?;
            bail!(
                "run `{}` of DAG `{}` is being run by {}; wait for it or stop it first",
                run.run_id,
                run.dag_id,
                Liveness::describe(now_owner.as_deref(), &runners)
            );
        }
        self.take_over_runs(store, runner, &[(run.dag_id.clone(), run.run_id.clone())])
    }

    /// Refuses a run that another live process drives (its owner, or the owner of a try of it).
    fn ensure_free(&self, store: &Store, runner: &Runner, run: &DagRunRow) -> anyhow::Result<()> {
        let (runners, tis) = store
            .read(|tx| Ok::<_, StoreError>((tx.runners()?, tx.task_instances_of_run(&run.dag_id, &run.run_id)?)))?;
        let liveness = self.liveness();
        let busy_owner = run
            .owner
            .iter()
            .map(String::as_str)
            .chain(
                tis.iter()
                    .filter(|t| matches!(t.state, TaskState::Queued | TaskState::Running))
                    .filter_map(|t| t.owner.as_deref()),
            )
            .find(|o| *o != runner.id && !liveness.is_gone(Some(o), &runners));
        if let Some(owner) = busy_owner {
            bail!(
                "run `{}` of DAG `{}` is being run by {}; wait for it or stop it first",
                run.run_id,
                run.dag_id,
                Liveness::describe(Some(owner), &runners)
            );
        }
        Ok(())
    }

    pub(super) fn liveness(&self) -> Liveness {
        let timeout = std::time::Duration::from_secs_f64(self.config.scheduler.task_heartbeat_timeout);
        Liveness::at(&super::hostname(), timeout, Utc::now())
    }

    /// The runs a backfill of `dag_id` over `[start, end]` needs: new ones for free dates, and the
    /// unfinished backfill runs a stopped backfill left (resumed).
    pub fn plan_backfill(
        &self,
        store: &Store,
        runner: &Runner,
        dag: &PinnedDag,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        options: BackfillOptions,
        now: DateTime<Utc>,
    ) -> anyhow::Result<BackfillPlan> {
        if end < start {
            bail!("`--end-date` is before `--start-date`");
        }
        let dag_id = dag.spec.dag_id.as_str();
        let Some(tt) = dag.timetable() else { bail!("DAG `{dag_id}` has no schedule to backfill") };
        let restriction = crate::schedule::Restriction { earliest: Some(start), latest: Some(end), catchup: true };
        // The intervals first, bounded, so a huge range is refused before anything is written.
        let mut intervals = Vec::new();
        let mut last = None;
        while let Some(info) = tt.next_dagrun_info(last, restriction, now) {
            if last == Some(info.data_interval) {
                break;
            }
            if intervals.len() >= MAX_BACKFILL_RUNS {
                bail!("the range holds more than {MAX_BACKFILL_RUNS} runs of `{dag_id}`; backfill a shorter range");
            }
            last = Some(info.data_interval);
            intervals.push(info);
        }
        // Every date a live backfill is running is refused before anything is written.
        let mut plan = BackfillPlan::default();
        let mut new_runs = Vec::new();
        let mut resume = Vec::new();
        let mut rerun = Vec::new();
        for info in intervals {
            let mut run =
                new_run(dag, RunType::Backfill, info.logical_date, info.data_interval, serde_json::json!({}), now);
            run.owner = Some(runner.id.clone());
            let existing = store.read(|tx| tx.dag_run_at(&run.dag_id, run.logical_date))?;
            match existing {
                None => new_runs.push(run),
                Some(old)
                    if old.run_type == RunType::Backfill && !old.state.is_finished() && !options.reset_dagruns =>
                {
                    self.ensure_free(store, runner, &old)?;
                    resume.push(old);
                }
                Some(old)
                    if options.reset_dagruns || (options.rerun_failed_tasks && old.state == DagRunState::Failed) =>
                {
                    self.ensure_free(store, runner, &old)?;
                    rerun.push(old);
                }
                Some(_) => plan.skipped.push(info.logical_date),
            }
        }
        for run in new_runs {
            if store.write(|tx| insert_run(tx, dag, &run))? {
                plan.created.push((run.dag_id, run.run_id));
            } else {
                plan.skipped.push(run.logical_date);
            }
        }
        for old in resume {
            self.claim_run(store, runner, &old)?;
            // Tries that failed when the stopped backfill was interrupted run again.
            let retries = |ti: &TiRow| {
                matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed)
                    .then(|| dag.spec.task(&ti.key.task_id).map_or(0, |t| t.retries))
            };
            clear_run(store, &old.dag_id, &old.run_id, retries, now)?;
            plan.resumed.push((old.dag_id, old.run_id));
        }
        for old in rerun {
            self.claim_run(store, runner, &old)?;
            let retries = |ti: &TiRow| {
                let selected =
                    options.reset_dagruns || matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed);
                selected.then(|| dag.spec.task(&ti.key.task_id).map_or(0, |t| t.retries))
            };
            clear_run(store, &old.dag_id, &old.run_id, retries, now)?;
            plan.rerun.push((old.dag_id, old.run_id));
        }
        Ok(plan)
    }
}

/// The one way a manual run is created — `dags trigger`, the web API, `TriggerDagRunOperator` —
/// for `dag` as pinned: at the request's logical date (to the microsecond, as Airflow keeps it),
/// with its conf and run id (Airflow's `allowed_run_id_pattern`). A run already at that date or
/// with that run id is `AlreadyExists`, unless `reset_dag_run`: then every task instance of it is
/// cleared and the run goes back to `queued` (Airflow's `dag.clear` over that logical date; its
/// conf stays). A paused DAG's run is created and waits, as in Airflow.
pub fn trigger_run(
    store: &Store,
    dag: &PinnedDag,
    req: &TriggerRequest,
    now: DateTime<Utc>,
) -> Result<Triggered, TriggerError> {
    let refused = |e: StoreError| TriggerError::Refused(e.to_string());
    let dag_id = dag.spec.dag_id.as_str();
    if !req.conf.is_object() {
        return Err(TriggerError::Refused(format!("`conf` must be a JSON object, not `{}`", req.conf)));
    }
    let mut run = manual_run(dag, req.logical_date, req.conf.clone(), now);
    if let Some(run_id) = &req.run_id {
        check_run_id(run_id)?;
        run.run_id = run_id.clone();
    }
    let paused = store.read(|tx| tx.dag(dag_id)).map_err(refused)?.is_some_and(|d| d.is_paused);
    let inserted = store.write(|tx| insert_run(tx, dag, &run)).map_err(|e| TriggerError::Refused(e.to_string()))?;
    if inserted {
        return Ok(Triggered { run, reset: false, paused, note: None });
    }
    let existing = store
        .read(|tx| -> Result<_, StoreError> {
            Ok(match tx.dag_run_at(dag_id, run.logical_date)? {
                Some(r) => Some(r),
                None => tx.dag_run(dag_id, &run.run_id)?,
            })
        })
        .map_err(refused)?;
    let Some(existing) = existing else {
        return Err(TriggerError::Refused(format!(
            "DAG `{dag_id}` got a run for {} and lost it meanwhile; trigger it again",
            fmt_time(&run.logical_date)
        )));
    };
    if !req.reset_dag_run {
        return Err(TriggerError::AlreadyExists(Box::new(existing)));
    }
    let spec: &DagSpec = &dag.spec;
    let retries = |ti: &TiRow| Some(spec.task(&ti.key.task_id).map_or(0, |t| t.retries));
    clear_run(store, &existing.dag_id, &existing.run_id, retries, now)
        .map_err(|e| TriggerError::Refused(format!("cannot clear run `{}`: {e}", existing.run_id)))?;
    let run = store.read(|tx| tx.dag_run(&existing.dag_id, &existing.run_id)).map_err(refused)?.unwrap_or(existing);
    Ok(Triggered { run, reset: true, paused, note: None })
}

/// A run id given by hand: Airflow's default `allowed_run_id_pattern` (`^[A-Za-z0-9_.~:+-]+$`),
/// at most 250 characters. It becomes a folder name in the log tree, so nothing else is let in.
fn check_run_id(run_id: &str) -> Result<(), TriggerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.~:+-".contains(c);
    if run_id.is_empty() || run_id.len() > 250 || !run_id.chars().all(allowed) || run_id == "." || run_id == ".." {
        return Err(TriggerError::Refused(format!(
            "run id `{run_id}` is not allowed: use 1 to 250 of the characters A-Z a-z 0-9 _ . ~ : + -"
        )));
    }
    Ok(())
}

/// Runs created from a worker (`TriggerDagRunOperator`): the DAG as the store recorded it.
struct StoreTrigger {
    store: Store,
    /// A scheduler in another process to wake.
    socket: Option<std::path::PathBuf>,
}

impl TriggerRuns for StoreTrigger {
    fn trigger(&self, req: &TriggerRequest, now: DateTime<Utc>) -> Result<Triggered, TriggerError> {
        let dag = self.recorded_dag(&req.dag_id)?;
        let mut triggered = trigger_run(&self.store, &dag, req, now)?;
        if let Some(socket) = &self.socket
            && !super::wake_scheduler_at(socket)
        {
            triggered.note =
                Some("no scheduler is running: the run starts when one does (`rhaiflow scheduler`)".into());
        }
        Ok(triggered)
    }
}

impl StoreTrigger {
    /// The latest recorded version of an active DAG; a missing one names the nearest id.
    fn recorded_dag(&self, dag_id: &str) -> Result<PinnedDag, TriggerError> {
        let refused = |e: StoreError| TriggerError::Refused(e.to_string());
        let (row, json) = self
            .store
            .read(|tx| -> Result<_, StoreError> {
                let Some(row) = tx.dag(dag_id)? else { return Ok((None, None)) };
                let json = tx.dag_version_json(&row.latest_version_hash)?;
                Ok((Some(row), json))
            })
            .map_err(refused)?;
        let Some(row) = row else {
            let (dags, errors) = self
                .store
                .read(|tx| -> Result<_, StoreError> { Ok((tx.dags()?, tx.import_errors()?.len())) })
                .map_err(refused)?;
            let known: Vec<&str> = dags.iter().map(|d| d.dag_id.as_str()).collect();
            return Err(TriggerError::Refused(match (crate::model::suggest::nearest(dag_id, &known), errors) {
                (Some(k), _) => format!("no DAG `{dag_id}` — did you mean `{k}`?"),
                (None, 0) => format!(
                    "no DAG `{dag_id}` in the database (it records the dags folder when the scheduler starts and \
                     when `dags test`, `dags trigger` or `dags pause` run)"
                ),
                (None, n) => format!(
                    "no DAG `{dag_id}` in the dags folder ({n} file(s) failed to load; see `rhaiflow dags list-import-errors`)"
                ),
            }));
        };
        let json = json.ok_or_else(|| {
            TriggerError::Refused(format!(
                "DAG `{dag_id}`: its version {} is not in the store",
                row.latest_version_hash
            ))
        })?;
        let spec: DagSpec = serde_json::from_str(&json)
            .map_err(|e| TriggerError::Refused(format!("DAG `{dag_id}`: its recorded version does not read: {e}")))?;
        Ok(PinnedDag::new(Arc::new(spec), row.latest_version_hash))
    }
}

/// Whether a run's logical date is in the request's range.
fn in_range(req: &ClearRequest, run: &DagRunRow) -> bool {
    req.start.is_none_or(|s| run.logical_date >= s) && req.end.is_none_or(|e| run.logical_date <= e)
}

/// Whether clearing changes a task instance in this state: a `running` one becomes `restarting`
/// (its owner stops it), a `queued` one is left to its owner.
fn clearable(state: TaskState) -> bool {
    transition(state, TiEvent::Clear).is_some_and(|to| to != state) && state != TaskState::Queued
}

/// Sets matching task instances of a run back to `none` and the run back to `queued`. A `running`
/// task instance becomes `restarting`, as in Airflow: its owner kills the try and it runs again at
/// once; a `queued` one is left alone (its owner finishes it).
pub fn clear_run(
    store: &Store,
    dag_id: &str,
    run_id: &str,
    retries_if_selected: impl Fn(&TiRow) -> Option<u32>,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let cleared = store.write(|tx| -> Result<usize, StoreError> {
        // The run's state is read in this transaction: a run finishing meanwhile is not stranded.
        let Some(run_state) = tx.dag_run(dag_id, run_id)?.map(|r| r.state) else { return Ok(0) };
        let mut n = 0;
        for ti in tx.task_instances_of_run(dag_id, run_id)? {
            let Some(retries) = retries_if_selected(&ti) else { continue };
            let Some(to) = transition(ti.state, TiEvent::Clear) else { continue };
            if !clearable(ti.state) {
                continue;
            }
            // As Airflow: a cleared task gets its full retries again on top of the tries made; a
            // running one keeps its times until its owner has stopped it.
            let change = TiChange {
                max_tries: Some(ti.try_number + retries),
                reset_times: ti.state != TaskState::Running,
                ..TiChange::default()
            };
            if tx.set_ti_state(&ti.key, ti.state, to, &change)? {
                n += 1;
            }
        }
        if n > 0 && run_state.is_finished() {
            tx.set_run_state(dag_id, run_id, run_state, DagRunState::Queued, now)?;
        }
        Ok(n)
    })?;
    Ok(cleared)
}
