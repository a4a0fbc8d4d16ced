//! The scheduler: creates runs from timetables (pinned to the DAG version they were created from),
//! decides which task instances are ready under trigger rules, queues them within parallelism,
//! `max_active_tasks` and pool limits, and rolls runs up to success or failure.
//!
//! It runs no user code and never polls: each `pass` reads the store once, decides in memory,
//! writes every change in one transaction with guarded updates, and says when it next needs to run.

use crate::graph::{Readiness, TaskGraph, UpstreamCounts, readiness};
use crate::model::{
    DagRunState, DagSpec, Operator, QueuedTask, RunInfo, RunType, TaskState, TiEvent, TiKey, transition,
};
use crate::schedule::{DataInterval, Restriction, Timetable};
use crate::store::{DagRunRow, NewAlert, NewTaskInstance, Store, StoreError, TiChange, TiStateRow, Tx};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("DAG version `{hash}` of `{dag_id}` is not in the store")]
    MissingVersion { dag_id: String, hash: String },
    #[error("stored DAG version `{hash}` does not parse: {reason}")]
    BadVersion { hash: String, reason: String },
    #[error("DAG `{0}` is not loaded")]
    UnknownDag(String),
    #[error("DAG `{dag_id}` already has a run for {logical_date}")]
    RunExists { dag_id: String, logical_date: DateTime<Utc> },
}

pub type SchedulerResult<T> = Result<T, SchedulerError>;

/// A DAG version as the loader produced it.
#[derive(Clone)]
pub struct DagVersion {
    pub spec: Arc<DagSpec>,
    pub json: Arc<str>,
    pub hash: String,
}

/// A DAG version with what scheduling needs precomputed.
pub struct PinnedDag {
    pub spec: Arc<DagSpec>,
    pub hash: String,
    order: Vec<usize>,
    index: HashMap<String, usize>,
    upstream: Vec<Vec<usize>>,
    leaves: Vec<usize>,
    timetable: Option<Timetable>,
}

impl PinnedDag {
    pub fn new(spec: Arc<DagSpec>, hash: String) -> Self {
        let index: HashMap<String, usize> =
            spec.tasks.iter().enumerate().map(|(i, t)| (t.task_id.clone(), i)).collect();
        let order = TaskGraph::build(&spec)
            .map(|g| g.topological_order().into_iter().filter_map(|id| index.get(id).copied()).collect())
            .unwrap_or_else(|_| (0..spec.tasks.len()).collect());
        let upstream: Vec<Vec<usize>> =
            spec.tasks.iter().map(|t| t.upstream.iter().filter_map(|u| index.get(u).copied()).collect()).collect();
        let mut has_downstream = vec![false; spec.tasks.len()];
        for ups in &upstream {
            for u in ups {
                has_downstream[*u] = true;
            }
        }
        let leaves = (0..spec.tasks.len()).filter(|i| !has_downstream[*i]).collect();
        let timetable = Timetable::new(&spec).ok();
        PinnedDag { spec, hash, order, index, upstream, leaves, timetable }
    }

    pub fn timetable(&self) -> Option<&Timetable> {
        self.timetable.as_ref()
    }
}

/// Which runs a scheduler works on.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Everything: timetables create runs (the `scheduler` command).
    All,
    /// Only these runs, and no scheduled runs are created (`dags test`, `backfill`).
    Runs(HashSet<(String, String)>),
}

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub parallelism: u32,
    /// The runner (this process) that owns the task instances this scheduler queues.
    pub owner: String,
    /// Channels told of every failure / retry / success (`[alerts]`), besides the task's own flags.
    pub alert_defaults: AlertDefaults,
}

#[derive(Debug, Clone, Default)]
pub struct AlertDefaults {
    pub on_failure: Vec<String>,
    pub on_retry: Vec<String>,
    pub on_success: Vec<String>,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// Task instances queued in this pass, to hand to the worker.
    pub to_run: Vec<QueuedTask>,
    /// When the scheduler must look again even if nothing happens (a run falls due, a retry wakes).
    pub next_wake: Option<DateTime<Utc>>,
    /// Task instances decided without running (skipped, upstream_failed, EmptyOperator success).
    pub decided: Vec<(TiKey, TaskState)>,
    /// Runs that finished in this pass.
    pub finished_runs: Vec<(String, String, DagRunState)>,
}

pub struct Scheduler {
    store: Store,
    settings: SchedulerSettings,
    scope: Scope,
    latest: HashMap<String, Arc<PinnedDag>>,
    pinned: HashMap<String, Arc<PinnedDag>>,
    warned_pools: HashSet<String>,
    /// When each DAG's next scheduled run falls due, so passes between due times skip its timetable.
    next_due: HashMap<String, DateTime<Utc>>,
}

fn earliest(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The run_id Airflow gives a run: `scheduled__2024-01-01T00:00:00+00:00`.
pub fn run_id_for(run_type: RunType, logical_date: DateTime<Utc>) -> String {
    format!("{}__{}", run_type.run_id_prefix(), logical_date.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
}

/// Inserts a run and its task instances in `tx`. `false` when the logical date is taken.
pub fn insert_run(tx: &Tx, dag: &PinnedDag, run: &DagRunRow) -> SchedulerResult<bool> {
    if !tx.insert_dag_run(run)? {
        return Ok(false);
    }
    let tis: Vec<NewTaskInstance> = dag
        .spec
        .tasks
        .iter()
        .map(|t| NewTaskInstance {
            task_id: t.task_id.clone(),
            max_tries: t.retries,
            priority_weight: t.priority_weight,
            pool: t.pool.clone(),
            pool_slots: t.pool_slots,
            operator: t.operator.name().to_string(),
        })
        .collect();
    tx.insert_task_instances(&run.dag_id, &run.run_id, &tis)?;
    Ok(true)
}

/// A new run row in `queued`.
pub fn new_run(
    dag: &PinnedDag,
    run_type: RunType,
    logical_date: DateTime<Utc>,
    interval: DataInterval,
    conf: serde_json::Value,
    now: DateTime<Utc>,
) -> DagRunRow {
    DagRunRow {
        dag_id: dag.spec.dag_id.clone(),
        run_id: run_id_for(run_type, logical_date),
        logical_date,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        run_type,
        state: DagRunState::Queued,
        conf,
        version_hash: dag.hash.clone(),
        queued_at: now,
        start_date: None,
        end_date: None,
        owner: None,
    }
}

/// Records DAG versions and import errors: the loader's result made durable.
pub fn record_dags(
    tx: &Tx,
    dags: &[DagVersion],
    import_errors: &[(String, String)],
    now: DateTime<Utc>,
) -> SchedulerResult<()> {
    for d in dags {
        tx.insert_dag_version(&d.hash, &d.spec.dag_id, &d.json, now)?;
        tx.upsert_dag(&d.spec.dag_id, &d.spec.fileloc, &d.hash, now)?;
    }
    let present: Vec<String> = dags.iter().map(|d| d.spec.dag_id.clone()).collect();
    tx.deactivate_dags_except(&present)?;
    tx.replace_import_errors(import_errors, now)?;
    Ok(())
}

/// One active run as a pass sees it: its pinned DAG, its task instances by task index, and their
/// states as decided so far in this pass.
struct RunView {
    run: DagRunRow,
    dag: Arc<PinnedDag>,
    rows: Vec<Option<TiStateRow>>,
    states: Vec<TaskState>,
}

/// What a pass accumulates before it is written.
struct PassOut {
    now: DateTime<Utc>,
    changes: Vec<Change>,
    pass: Pass,
}

/// One change to write: a task instance moving from one state to another.
struct Change {
    key: TiKey,
    from: TaskState,
    to: TaskState,
    fields: TiChange,
}

impl Scheduler {
    pub fn new(store: Store, settings: SchedulerSettings, scope: Scope) -> Self {
        Scheduler {
            store,
            settings,
            scope,
            latest: HashMap::new(),
            pinned: HashMap::new(),
            warned_pools: HashSet::new(),
            next_due: HashMap::new(),
        }
    }

    /// The DAGs the loader found; timetables create runs from these versions.
    pub fn set_dags(&mut self, dags: &[DagVersion]) {
        self.latest.clear();
        self.next_due.clear();
        for d in dags {
            let pinned = self
                .pinned
                .entry(d.hash.clone())
                .or_insert_with(|| Arc::new(PinnedDag::new(d.spec.clone(), d.hash.clone())))
                .clone();
            self.latest.insert(d.spec.dag_id.clone(), pinned);
        }
    }

    pub fn latest(&self, dag_id: &str) -> Option<&Arc<PinnedDag>> {
        self.latest.get(dag_id)
    }

    pub fn add_to_scope(&mut self, dag_id: &str, run_id: &str) {
        if let Scope::Runs(runs) = &mut self.scope {
            runs.insert((dag_id.to_string(), run_id.to_string()));
        }
    }

    fn in_scope(&self, dag_id: &str, run_id: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Runs(runs) => runs.contains(&(dag_id.to_string(), run_id.to_string())),
        }
    }

    /// The pinned version of a run, from the cache or the store.
    fn pinned(&mut self, tx: &Tx, dag_id: &str, hash: &str) -> SchedulerResult<Arc<PinnedDag>> {
        if let Some(p) = self.pinned.get(hash) {
            return Ok(p.clone());
        }
        let json = tx
            .dag_version_json(hash)?
            .ok_or_else(|| SchedulerError::MissingVersion { dag_id: dag_id.into(), hash: hash.into() })?;
        let spec: DagSpec = serde_json::from_str(&json)
            .map_err(|e| SchedulerError::BadVersion { hash: hash.into(), reason: e.to_string() })?;
        let p = Arc::new(PinnedDag::new(Arc::new(spec), hash.to_string()));
        self.pinned.insert(hash.to_string(), p.clone());
        Ok(p)
    }

    /// Creates the scheduled runs that are due, up to each DAG's `max_active_runs`.
    /// Returns when the next one falls due.
    fn create_scheduled_runs(
        &mut self,
        tx: &Tx,
        active: &[DagRunRow],
        now: DateTime<Utc>,
    ) -> SchedulerResult<Option<DateTime<Utc>>> {
        if !matches!(self.scope, Scope::All) {
            return Ok(None);
        }
        let dags = tx.dags()?;
        self.follow_recorded_versions(tx, &dags)?;
        let paused: HashSet<String> = dags.into_iter().filter(|d| d.is_paused).map(|d| d.dag_id).collect();
        let mut next_due = None;
        let mut due_at: Vec<(String, DateTime<Utc>)> = Vec::new();
        let mut dag_ids: Vec<&String> = self.latest.keys().collect();
        dag_ids.sort();
        for dag_id in dag_ids {
            let dag = &self.latest[dag_id];
            let Some(tt) = dag.timetable() else { continue };
            if paused.contains(dag_id) {
                continue;
            }
            if let Some(due) = self.next_due.get(dag_id.as_str())
                && *due > now
            {
                next_due = earliest(next_due, *due);
                continue;
            }
            let mut running = active.iter().filter(|r| &r.dag_id == dag_id).count() as u32;
            let restriction = Restriction::of(&dag.spec);
            let mut last = tx.latest_scheduled_interval(dag_id)?.map(|(start, end)| DataInterval { start, end });
            while let Some(info) = tt.next_dagrun_info(last, restriction, now) {
                if last.is_some_and(|l| l == info.data_interval) {
                    break;
                }
                if info.run_after > now {
                    next_due = earliest(next_due, info.run_after);
                    due_at.push((dag_id.clone(), info.run_after));
                    break;
                }
                if running >= dag.spec.max_active_runs {
                    break;
                }
                let run =
                    new_run(dag, RunType::Scheduled, info.logical_date, info.data_interval, serde_json::json!({}), now);
                if insert_run(tx, dag, &run)? {
                    running += 1;
                }
                last = Some(info.data_interval);
            }
        }
        self.next_due.extend(due_at);
        Ok(next_due)
    }

    /// The states of these runs now (a run another process finished is not in any pass of ours).
    pub fn run_states(&self, runs: &[(String, String)]) -> SchedulerResult<Vec<(String, String, DagRunState)>> {
        self.store.read(|tx| {
            let mut out = Vec::new();
            for (dag_id, run_id) in runs {
                if let Some(r) = tx.dag_run(dag_id, run_id)? {
                    out.push((r.dag_id, r.run_id, r.state));
                }
            }
            Ok(out)
        })
    }

    /// Other commands (`dags trigger`, `pause`, `tasks clear`, `dags test`) parse the dags folder
    /// and record what they find; the scheduler follows the versions recorded in the store, so an
    /// edited file takes effect at the next pass after any of them, and a removed DAG stops.
    fn follow_recorded_versions(&mut self, tx: &Tx, dags: &[crate::store::DagRow]) -> SchedulerResult<()> {
        let recorded: HashSet<&str> = dags.iter().map(|d| d.dag_id.as_str()).collect();
        self.latest.retain(|dag_id, _| recorded.contains(dag_id.as_str()));
        for d in dags {
            if self.latest.get(&d.dag_id).is_some_and(|p| p.hash == d.latest_version_hash) {
                continue;
            }
            let pinned = self.pinned(tx, &d.dag_id, &d.latest_version_hash)?;
            self.latest.insert(d.dag_id.clone(), pinned);
            self.next_due.remove(&d.dag_id);
        }
        Ok(())
    }

    /// One scheduling pass at `now`.
    pub fn pass(&mut self, now: DateTime<Utc>) -> SchedulerResult<Pass> {
        let store = self.store.clone();
        store.write(|tx| self.pass_in(tx, now))
    }

    fn pass_in(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<Pass> {
        let mut out = PassOut { now, changes: Vec::new(), pass: Pass::default() };
        let active = tx.active_runs()?;
        out.pass.next_wake = self.create_scheduled_runs(tx, &active, now)?;
        let mut views = self.start_runs(tx, now)?;
        let mut scheduled: Vec<(usize, usize)> = Vec::new(); // (run index, task index)
        for (ri, view) in views.iter_mut().enumerate() {
            if let Some(timeout) = view.dag.spec.dagrun_timeout
                && let Some(start) = view.run.start_date
            {
                let deadline = start.checked_add_signed(timeout.as_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC);
                if now >= deadline {
                    self.time_out_run(tx, view, &mut out)?;
                    continue;
                }
                out.pass.next_wake = earliest(out.pass.next_wake, deadline);
            }
            self.decide_run(tx, view, &mut out)?;
            scheduled.extend(
                view.states.iter().enumerate().filter(|(_, s)| **s == TaskState::Scheduled).map(|(ti, _)| (ri, ti)),
            );
        }
        // Write the decisions; a lost race leaves that task instance to the next pass.
        for c in &out.changes {
            if tx.set_ti_state(&c.key, c.from, c.to, &c.fields)? && c.to != TaskState::Scheduled {
                out.pass.decided.push((c.key.clone(), c.to));
            }
        }
        self.queue(tx, &views, scheduled, &mut out)?;
        for view in views.iter().filter(|v| v.run.state == DagRunState::Running) {
            self.roll_up(tx, view, &mut out)?;
        }
        // A finished run frees a `max_active_runs` slot that queued or due runs may be waiting for.
        if !out.pass.finished_runs.is_empty() {
            out.pass.next_wake = earliest(out.pass.next_wake, now);
        }
        Ok(out.pass)
    }

    /// The active runs in scope with their task instances (one query), starting queued runs while
    /// their DAG is under `max_active_runs`. Runs of paused DAGs wait, as in Airflow; `dags test`
    /// and `backfill` run theirs anyway.
    fn start_runs(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<Vec<RunView>> {
        let paused: HashSet<String> = match self.scope {
            Scope::All => tx.dags()?.into_iter().filter(|d| d.is_paused).map(|d| d.dag_id).collect(),
            Scope::Runs(_) => HashSet::new(),
        };
        let active: Vec<DagRunRow> = tx
            .active_runs()?
            .into_iter()
            .filter(|r| self.in_scope(&r.dag_id, &r.run_id) && !paused.contains(&r.dag_id))
            // As Airflow's scheduler: backfill runs belong to the `dags backfill` that created them,
            // and a `dags test` run to its `dags test` (the run's owner).
            .filter(|r| !(matches!(self.scope, Scope::All) && (r.run_type == RunType::Backfill || r.owner.is_some())))
            .collect();
        let mut tis_by_run: HashMap<(String, String), Vec<TiStateRow>> = HashMap::new();
        for ti in tx.task_states_of_active_runs()? {
            tis_by_run.entry((ti.key.dag_id.clone(), ti.key.run_id.clone())).or_default().push(ti);
        }
        let mut running_per_dag: HashMap<String, u32> = HashMap::new();
        for r in active.iter().filter(|r| r.state == DagRunState::Running) {
            *running_per_dag.entry(r.dag_id.clone()).or_default() += 1;
        }
        let mut views = Vec::new();
        for mut run in active {
            let dag = self.pinned(tx, &run.dag_id, &run.version_hash)?;
            if run.state == DagRunState::Queued {
                let count = running_per_dag.entry(run.dag_id.clone()).or_default();
                if *count >= dag.spec.max_active_runs {
                    continue;
                }
                if tx.set_run_state(&run.dag_id, &run.run_id, DagRunState::Queued, DagRunState::Running, now)? {
                    *count += 1;
                    run.state = DagRunState::Running;
                    run.start_date = Some(now);
                }
            }
            let mut rows: Vec<Option<TiStateRow>> = vec![None; dag.spec.tasks.len()];
            for ti in tis_by_run.remove(&(run.dag_id.clone(), run.run_id.clone())).unwrap_or_default() {
                if let Some(&i) = dag.index.get(&ti.key.task_id) {
                    rows[i] = Some(ti);
                }
            }
            let states = rows.iter().map(|t| t.as_ref().map_or(TaskState::Removed, |t| t.state)).collect();
            views.push(RunView { run, dag, rows, states });
        }
        Ok(views)
    }

    /// Trigger rules, retries and `depends_on_past` for one running run, in topological order so a
    /// chain of decisions (e.g. `EmptyOperator`s, or upstream failures) settles in one pass.
    fn decide_run(&self, tx: &Tx, view: &mut RunView, out: &mut PassOut) -> SchedulerResult<()> {
        if view.run.state != DagRunState::Running {
            return Ok(());
        }
        let RunView { run, dag, rows, states: st } = view;
        for &i in &dag.order {
            let Some(row) = &rows[i] else { continue };
            let key = &row.key;
            let current = st[i];
            if current == TaskState::UpForRetry {
                match row.next_try_at {
                    Some(at) if at > out.now => out.pass.next_wake = earliest(out.pass.next_wake, at),
                    _ => {
                        st[i] = TaskState::Scheduled;
                        out.changes.push(Change {
                            key: key.clone(),
                            from: current,
                            to: TaskState::Scheduled,
                            fields: TiChange::default(),
                        });
                    }
                }
                continue;
            }
            if current != TaskState::None {
                continue;
            }
            let task = &dag.spec.tasks[i];
            let mut counts = UpstreamCounts::default();
            for &u in &dag.upstream[i] {
                counts.add(st[u]);
            }
            let event = match readiness(task.trigger_rule, counts) {
                Readiness::Wait => continue,
                Readiness::Skip => TiEvent::Skip,
                Readiness::UpstreamFailed => TiEvent::UpstreamFailed,
                Readiness::Run => {
                    if task.depends_on_past && !self.past_succeeded(tx, run, &task.task_id)? {
                        continue;
                    }
                    if matches!(task.operator, Operator::EmptyOperator) { TiEvent::Noop } else { TiEvent::Schedule }
                }
            };
            let Some(next) = transition(current, event) else { continue };
            st[i] = next;
            let fields = if next.is_finished() {
                TiChange {
                    start_date: Some(out.now),
                    end_date: Some(out.now),
                    duration: Some(0.0),
                    ..TiChange::default()
                }
            } else {
                TiChange::default()
            };
            out.changes.push(Change { key: key.clone(), from: current, to: next, fields });
        }
        Ok(())
    }

    /// `depends_on_past`: the same task in the previous run succeeded or was skipped (or there is none).
    fn past_succeeded(&self, tx: &Tx, run: &DagRunRow, task_id: &str) -> SchedulerResult<bool> {
        let Some(prev) = tx.previous_run_id(&run.dag_id, run.logical_date)? else { return Ok(true) };
        Ok(match tx.ti_state(&run.dag_id, &prev, task_id)? {
            None => true,
            Some(s) => matches!(s, TaskState::Success | TaskState::Skipped),
        })
    }

    /// Queues scheduled task instances by priority within parallelism, `max_active_tasks` and pools.
    fn queue(
        &mut self,
        tx: &Tx,
        views: &[RunView],
        mut scheduled: Vec<(usize, usize)>,
        out: &mut PassOut,
    ) -> SchedulerResult<()> {
        // Every claimed task instance in the store counts, whoever claimed it (a `dags backfill`
        // beside the scheduler, a paused DAG's running tasks), not only what this pass sees.
        let mut total_busy = 0u32;
        let mut busy_per_dag: HashMap<String, u32> = HashMap::new();
        let mut pool_used: HashMap<String, u32> = HashMap::new();
        for b in tx.busy_task_counts()? {
            total_busy = total_busy.saturating_add(b.tasks);
            *busy_per_dag.entry(b.dag_id).or_default() += b.tasks;
            *pool_used.entry(b.pool).or_default() += b.pool_slots;
        }
        let pools: HashMap<String, u32> = tx.pools()?.into_iter().collect();
        let task_of = |(ri, ti): (usize, usize)| &views[ri].dag.spec.tasks[ti];
        scheduled.sort_by(|a, b| {
            task_of(*b)
                .priority_weight
                .cmp(&task_of(*a).priority_weight)
                .then(views[a.0].run.logical_date.cmp(&views[b.0].run.logical_date))
                .then(a.cmp(b))
        });
        for (ri, ti) in scheduled {
            if total_busy >= self.settings.parallelism {
                break;
            }
            let view = &views[ri];
            let task = &view.dag.spec.tasks[ti];
            let dag_busy = busy_per_dag.entry(view.run.dag_id.clone()).or_default();
            if *dag_busy >= view.dag.spec.max_active_tasks {
                continue;
            }
            let Some(&slots) = pools.get(&task.pool) else {
                if self.warned_pools.insert(task.pool.clone()) {
                    tracing::warn!(pool = %task.pool, task = %task.task_id, "task uses a pool that does not exist; it will not be scheduled");
                }
                continue;
            };
            let used = pool_used.entry(task.pool.clone()).or_default();
            if *used + task.pool_slots > slots {
                continue;
            }
            let Some(row) = &view.rows[ti] else { continue };
            let fields =
                TiChange { queued_at: Some(out.now), owner: Some(self.settings.owner.clone()), ..TiChange::default() };
            if !tx.set_ti_state(&row.key, TaskState::Scheduled, TaskState::Queued, &fields)? {
                continue;
            }
            total_busy += 1;
            *dag_busy += 1;
            *used += task.pool_slots;
            let run = &view.run;
            out.pass.to_run.push(QueuedTask {
                key: row.key.clone(),
                dag: view.dag.spec.clone(),
                task_index: ti,
                run: RunInfo {
                    run_id: run.run_id.clone(),
                    run_type: run.run_type,
                    logical_date: run.logical_date,
                    data_interval_start: run.data_interval_start,
                    data_interval_end: run.data_interval_end,
                    conf: run.conf.clone(),
                },
                try_number: row.try_number + 1,
                max_tries: row.max_tries,
            });
        }
        Ok(())
    }

    /// When every task instance is finished: failed if a leaf failed, else success.
    fn roll_up(&self, tx: &Tx, view: &RunView, out: &mut PassOut) -> SchedulerResult<()> {
        if !view.states.iter().all(|s| s.is_finished()) {
            return Ok(());
        }
        let failed =
            view.dag.leaves.iter().any(|&i| matches!(view.states[i], TaskState::Failed | TaskState::UpstreamFailed));
        let to = if failed { DagRunState::Failed } else { DagRunState::Success };
        self.finish_run(tx, view, to, None, out)
    }

    /// `dagrun_timeout`: the run fails; task instances not yet started are skipped.
    fn time_out_run(&self, tx: &Tx, view: &mut RunView, out: &mut PassOut) -> SchedulerResult<()> {
        for (row, state) in view.rows.iter().zip(view.states.iter_mut()) {
            let Some(row) = row else { continue };
            if matches!(*state, TaskState::None | TaskState::Scheduled | TaskState::UpForRetry | TaskState::Queued) {
                let fields = TiChange { end_date: Some(out.now), ..TiChange::default() };
                let Some(to) = transition(*state, TiEvent::Skip) else { continue };
                if tx.set_ti_state(&row.key, *state, to, &fields)? {
                    *state = TaskState::Skipped;
                    out.pass.decided.push((row.key.clone(), TaskState::Skipped));
                }
            }
        }
        let reason = format!("dagrun_timeout of {} reached", view.dag.spec.dagrun_timeout.unwrap_or_default());
        self.finish_run(tx, view, DagRunState::Failed, Some(reason), out)
    }

    /// Moves a running run to its final state, with its DAG-level callback in the outbox.
    fn finish_run(
        &self,
        tx: &Tx,
        view: &RunView,
        to: DagRunState,
        reason: Option<String>,
        out: &mut PassOut,
    ) -> SchedulerResult<()> {
        let run = &view.run;
        if tx.set_run_state(&run.dag_id, &run.run_id, DagRunState::Running, to, out.now)? {
            self.run_alerts(tx, view, to, reason, out.now)?;
            out.pass.finished_runs.push((run.dag_id.clone(), run.run_id.clone(), to));
        }
        Ok(())
    }

    /// DAG-level callbacks become outbox rows, written with the run's final state.
    fn run_alerts(
        &self,
        tx: &Tx,
        view: &RunView,
        state: DagRunState,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> SchedulerResult<()> {
        let (run, dag) = (&view.run, &view.dag);
        let callback = match state {
            DagRunState::Failed => dag.spec.on_failure_callback.as_ref(),
            _ => dag.spec.on_success_callback.as_ref(),
        };
        if let Some(cb) = callback {
            let alert = NewAlert {
                event: format!("dag_run_{state}"),
                dag_id: run.dag_id.clone(),
                run_id: run.run_id.clone(),
                task_id: None,
                try_number: None,
                channel: format!("callback:{}", cb.0),
                payload: serde_json::json!({ "dag_id": run.dag_id, "run_id": run.run_id, "state": state.as_str(), "reason": reason }),
            };
            tx.insert_alert(&alert, now)?;
        }
        Ok(())
    }
}
