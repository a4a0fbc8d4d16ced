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
use crate::script::VersionSource;
use crate::store::{DagRunRow, NewAlert, NewTaskInstance, Store, StoreError, TiChange, TiStateRow, Tx};
use chrono::{DateTime, Utc};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
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
    /// The file's text, for a DAG with closures: kept with the version (written once), so a run
    /// calls its own version's closures. Shared by the DAGs of one file; not held by the scheduler.
    pub source: Option<Arc<VersionSource>>,
}

/// A DAG version with what scheduling needs precomputed.
pub struct PinnedDag {
    pub spec: Arc<DagSpec>,
    pub hash: String,
    /// Task indices in topological order.
    order: Vec<u32>,
    /// Task indices sorted by task id (a binary search finds a task without a copy of its id).
    by_id: Vec<u32>,
    /// The upstream task indices of task `i` are `upstream[upstream_at[i]..upstream_at[i + 1]]`.
    upstream_at: Vec<u32>,
    upstream: Vec<u32>,
    leaves: Vec<u32>,
    timetable: Option<Timetable>,
    /// Some task waits for its previous run: any change to a run of the DAG re-decides its runs.
    depends_on_past: bool,
    /// Each task's effective priority under its `weight_rule` (`graph::priority_weights`).
    weights: Vec<i64>,
}

impl PinnedDag {
    pub fn new(spec: Arc<DagSpec>, hash: String) -> Self {
        let mut by_id: Vec<u32> = (0..spec.tasks.len() as u32).collect();
        by_id.sort_by(|a, b| spec.tasks[*a as usize].task_id.cmp(&spec.tasks[*b as usize].task_id));
        let find = |id: &str| {
            by_id
                .binary_search_by(|i| spec.tasks[*i as usize].task_id.as_str().cmp(id))
                .ok()
                .map(|pos| by_id[pos] as usize)
        };
        let order = TaskGraph::build(&spec)
            .map(|g| g.topological_order().into_iter().filter_map(find).map(|i| i as u32).collect())
            .unwrap_or_else(|_| (0..spec.tasks.len() as u32).collect());
        let mut upstream_at: Vec<u32> = Vec::with_capacity(spec.tasks.len() + 1);
        let mut upstream: Vec<u32> = Vec::new();
        let mut has_downstream = vec![false; spec.tasks.len()];
        for t in &spec.tasks {
            upstream_at.push(upstream.len() as u32);
            for u in t.upstream.iter().filter_map(|u| find(u)) {
                upstream.push(u as u32);
                has_downstream[u] = true;
            }
        }
        upstream_at.push(upstream.len() as u32);
        upstream.shrink_to_fit();
        let leaves = (0..spec.tasks.len() as u32).filter(|i| !has_downstream[*i as usize]).collect();
        let timetable = Timetable::new(&spec).ok();
        let depends_on_past = spec.tasks.iter().any(|t| t.depends_on_past);
        let weights = crate::graph::priority_weights(&spec);
        PinnedDag { spec, hash, order, by_id, upstream_at, upstream, leaves, timetable, depends_on_past, weights }
    }

    /// The effective priority of task `i` (its `priority_weight` summed under its `weight_rule`).
    pub fn priority(&self, task: usize) -> i64 {
        self.weights.get(task).copied().unwrap_or(1)
    }

    pub fn timetable(&self) -> Option<&Timetable> {
        self.timetable.as_ref()
    }

    fn upstream_of(&self, task: usize) -> impl Iterator<Item = usize> + '_ {
        let (from, to) = (self.upstream_at[task] as usize, self.upstream_at[task + 1] as usize);
        self.upstream[from..to].iter().map(|u| *u as usize)
    }

    /// The index of a task in `spec.tasks`.
    fn task_index(&self, task_id: &str) -> Option<usize> {
        let tasks = &self.spec.tasks;
        self.by_id
            .binary_search_by(|i| tasks[*i as usize].task_id.as_str().cmp(task_id))
            .ok()
            .map(|p| self.by_id[p] as usize)
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
    /// Rows are written `held` (`dags test` without `--send-alerts`), as the worker's are.
    pub hold: bool,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// Task instances queued in this pass, to hand to the worker.
    pub to_run: Vec<QueuedTask>,
    /// Task instances queued in this pass that cannot run, with why (a pool that does not exist):
    /// the worker fails each try at once, through the normal failure path.
    pub refused: Vec<(QueuedTask, String)>,
    /// When the scheduler must look again even if nothing happens (a run falls due, a retry wakes).
    pub next_wake: Option<DateTime<Utc>>,
    /// Task instances decided without running (skipped, upstream_failed, EmptyOperator success).
    pub decided: Vec<(TiKey, TaskState)>,
    /// Runs that finished in this pass.
    pub finished_runs: Vec<(String, String, DagRunState)>,
    /// How many runs this pass re-decided (only those that changed, fell due or were added).
    pub runs_examined: usize,
}

/// A run's identity: `(dag_id, run_id)`.
type RunKey = (String, String);

/// A scheduled task instance waiting for a slot, in queueing order: highest priority first, then
/// oldest logical date, then DAG, run and task index.
type ReadyKey = (std::cmp::Reverse<i64>, DateTime<Utc>, String, String, usize);

/// Change log entries kept for other readers (`dags test`, `backfill`) before the scheduler forgets
/// them; a reader that falls further behind reads everything again.
const CHANGE_LOG_KEEP: i64 = 100_000;

pub struct Scheduler {
    store: Store,
    settings: SchedulerSettings,
    scope: Scope,
    latest: HashMap<String, Arc<PinnedDag>>,
    pinned: HashMap<String, Arc<PinnedDag>>,
    warned_pools: HashSet<String>,
    /// Whether the in-memory views reflect the store (false until the first pass, after `set_dags`
    /// and when the change log has been pruned past what this scheduler saw).
    loaded: bool,
    /// The last change log entry this scheduler has applied.
    seen_seq: i64,
    /// Paused DAGs (`Scope::All` only): their runs wait and their timetables are not followed.
    paused: HashSet<String>,
    /// Every active run in scope, kept between passes and refreshed only when it changes.
    views: HashMap<RunKey, RunView>,
    /// The runs in `views` of each DAG, oldest logical date first.
    runs_by_dag: HashMap<String, BTreeSet<(DateTime<Utc>, String)>>,
    /// Runs to re-decide in the next pass.
    dirty: HashSet<RunKey>,
    /// Runs to re-read from the store in the next pass (a lost race, a run added to the scope).
    stale: HashSet<RunKey>,
    /// DAGs whose queued runs may start (a run was added or finished).
    start_dags: HashSet<String>,
    /// Scheduled task instances waiting for a slot.
    ready: BTreeSet<ReadyKey>,
    /// When a run must be looked at again without any change (a retry wakes, a `dagrun_timeout`).
    timers: BinaryHeap<Reverse<(DateTime<Utc>, RunKey)>>,
    /// The entries of `timers`, so a run re-decided often does not add the same timer again.
    timer_set: HashSet<(DateTime<Utc>, RunKey)>,
    /// When each DAG's timetable must be looked at again; `due` holds the same as a heap (entries
    /// that disagree with `next_due` are stale and skipped).
    next_due: HashMap<String, DateTime<Utc>>,
    due: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
    /// DAGs that stopped creating runs at `max_active_runs`; due again when one of their runs changes.
    blocked: HashSet<String>,
}

fn ready_key(dag: &PinnedDag, run: &DagRunRow, task: usize) -> ReadyKey {
    let priority = dag.priority(task);
    (Reverse(priority), run.logical_date, run.dag_id.clone(), run.run_id.clone(), task)
}

fn earliest(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The run_id Airflow gives a run: `scheduled__2024-01-01T00:00:00+00:00`.
/// Airflow's run id: `manual__2024-01-01T00:00:00+00:00`, with microseconds only when there are
/// some (Python's `isoformat`), never nanoseconds.
pub fn run_id_for(run_type: RunType, logical_date: DateTime<Utc>) -> String {
    use chrono::Timelike;
    let format =
        if logical_date.nanosecond() / 1000 == 0 { "%Y-%m-%dT%H:%M:%S+00:00" } else { "%Y-%m-%dT%H:%M:%S%.6f+00:00" };
    format!("{}__{}", run_type.run_id_prefix(), logical_date.format(format))
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
        .enumerate()
        .map(|(i, t)| NewTaskInstance {
            task_id: t.task_id.clone(),
            max_tries: t.retries,
            priority_weight: dag.priority(i),
            pool: t.pool.to_string(),
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
/// A DAG seen for the first time starts paused when `paused_at_creation`.
pub fn record_dags(
    tx: &Tx,
    dags: &[DagVersion],
    import_errors: &[(String, String)],
    now: DateTime<Utc>,
    paused_at_creation: bool,
) -> SchedulerResult<()> {
    for d in dags {
        record_version(tx, d, now, paused_at_creation)?;
    }
    let present: Vec<String> = dags.iter().map(|d| d.spec.dag_id.clone()).collect();
    // A broken file's DAGs keep their last good version (scheduled and triggerable).
    let broken: Vec<String> = import_errors.iter().map(|(file, _)| file.clone()).collect();
    tx.deactivate_dags_except(&present, &broken)?;
    tx.replace_import_errors(import_errors, now)?;
    Ok(())
}

/// A version once, its source once, and the DAG row pointing at it (active again).
pub fn record_version(tx: &Tx, d: &DagVersion, now: DateTime<Utc>, paused_if_new: bool) -> SchedulerResult<()> {
    if let Some(source) = &d.source
        && !tx.has_dag_version(&d.hash)?
    {
        let modules: Vec<(&str, &str)> = source.modules.iter().map(|(p, t)| (p.as_str(), &**t)).collect();
        tx.insert_dag_source(&source.hash, &source.file, &source.text, &modules)?;
    }
    let source_hash = d.source.as_ref().map(|s| s.hash.as_str());
    if d.json.is_empty() {
        // A kept copy (the folder drops the JSON once recorded) must never be recorded as new.
        return Err(StoreError::Corrupt(format!(
            "DAG `{}` version {} has no JSON to record (a bug)",
            d.spec.dag_id, d.hash
        ))
        .into());
    }
    tx.insert_dag_version(&d.hash, &d.spec.dag_id, &d.json, source_hash, now)?;
    tx.upsert_dag(&d.spec.dag_id, &d.spec.fileloc, &d.hash, now, paused_if_new)?;
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
            loaded: false,
            seen_seq: 0,
            paused: HashSet::new(),
            views: HashMap::new(),
            runs_by_dag: HashMap::new(),
            dirty: HashSet::new(),
            stale: HashSet::new(),
            start_dags: HashSet::new(),
            ready: BTreeSet::new(),
            timers: BinaryHeap::new(),
            timer_set: HashSet::new(),
            next_due: HashMap::new(),
            due: BinaryHeap::new(),
            blocked: HashSet::new(),
        }
    }

    /// The DAGs the loader found; timetables create runs from these versions. The next pass reads
    /// the store afresh. Each spec is shared with the loader's folder, not copied (the folder
    /// compacts it once, `loader::folder::compact`).
    pub fn set_dags(&mut self, dags: &[DagVersion]) {
        self.latest.clear();
        for d in dags {
            let pinned = self
                .pinned
                .entry(d.hash.clone())
                .or_insert_with(|| Arc::new(PinnedDag::new(d.spec.clone(), d.hash.clone())))
                .clone();
            self.latest.insert(d.spec.dag_id.clone(), pinned);
        }
        self.loaded = false;
    }

    pub fn latest(&self, dag_id: &str) -> Option<&Arc<PinnedDag>> {
        self.latest.get(dag_id)
    }

    pub fn add_to_scope(&mut self, dag_id: &str, run_id: &str) {
        if let Scope::Runs(runs) = &mut self.scope {
            runs.insert((dag_id.to_string(), run_id.to_string()));
            self.stale.insert((dag_id.to_string(), run_id.to_string()));
        }
    }

    fn in_scope(&self, dag_id: &str, run_id: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Runs(runs) => runs.contains(&(dag_id.to_string(), run_id.to_string())),
        }
    }

    /// Whether a run is one this scheduler works on now: active, in scope, its DAG not paused
    /// (`dags test` and `backfill` run theirs anyway, as in Airflow), and for the scheduler not a
    /// backfill run (those belong to the `dags backfill` that created them) nor a run with an owner
    /// (a `dags test` run belongs to its `dags test`).
    fn wanted(&self, run: &DagRunRow) -> bool {
        matches!(run.state, DagRunState::Queued | DagRunState::Running)
            && self.in_scope(&run.dag_id, &run.run_id)
            && !self.paused.contains(&run.dag_id)
            && !(matches!(self.scope, Scope::All) && (run.run_type == RunType::Backfill || run.owner.is_some()))
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

    fn add_timer(&mut self, at: DateTime<Utc>, key: &RunKey) {
        if self.timer_set.insert((at, key.clone())) {
            self.timers.push(Reverse((at, key.clone())));
        }
    }

    fn pop_timer(&mut self) -> Option<(DateTime<Utc>, RunKey)> {
        let Reverse((at, key)) = self.timers.pop()?;
        self.timer_set.remove(&(at, key.clone()));
        Some((at, key))
    }

    fn set_due(&mut self, dag_id: String, at: DateTime<Utc>) {
        self.next_due.insert(dag_id.clone(), at);
        self.due.push(Reverse((at, dag_id)));
    }

    // ---- following the store ------------------------------------------------------------------

    /// Reads every active run and DAG again: the first pass, or when change log entries this
    /// scheduler had not seen were pruned.
    fn load_all(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<()> {
        self.views.clear();
        self.runs_by_dag.clear();
        self.dirty.clear();
        self.stale.clear();
        self.start_dags.clear();
        self.ready.clear();
        self.timers.clear();
        self.timer_set.clear();
        self.next_due.clear();
        self.due.clear();
        self.blocked.clear();
        self.paused.clear();
        self.seen_seq = tx.change_log_bounds()?.1;
        if matches!(self.scope, Scope::All) {
            let dags = tx.dags()?;
            self.follow_recorded_versions(tx, &dags)?;
            self.paused = dags.into_iter().filter(|d| d.is_paused).map(|d| d.dag_id).collect();
            let ids: Vec<String> = self.latest.keys().cloned().collect();
            for dag_id in ids {
                self.set_due(dag_id, now);
            }
        }
        let mut tis_by_run: HashMap<RunKey, Vec<TiStateRow>> = HashMap::new();
        for ti in tx.task_states_of_active_runs()? {
            tis_by_run.entry((ti.key.dag_id.clone(), ti.key.run_id.clone())).or_default().push(ti);
        }
        for run in tx.active_runs()? {
            if self.wanted(&run) {
                let tis = tis_by_run.remove(&(run.dag_id.clone(), run.run_id.clone())).unwrap_or_default();
                self.add_view(tx, run, tis)?;
            }
        }
        self.loaded = true;
        Ok(())
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
        }
        Ok(())
    }

    /// Applies the change log entries written since the last pass (by any process): re-reads the
    /// DAGs and runs they name, and nothing else.
    fn follow_changes(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<()> {
        let (oldest, _) = tx.change_log_bounds()?;
        if oldest > self.seen_seq + 1 {
            tracing::debug!(seen = self.seen_seq, oldest, "change log pruned past this scheduler; reading everything");
            return self.load_all(tx, now);
        }
        let mut dags: BTreeSet<String> = BTreeSet::new();
        let mut runs: BTreeSet<RunKey> = self.stale.drain().collect();
        // Task instances whose state changed, by run: a run we hold a view of re-reads only those
        // rows (a wide run's tasks finishing one by one would otherwise re-read the whole run each pass).
        let mut tis: BTreeMap<RunKey, BTreeSet<String>> = BTreeMap::new();
        for c in tx.changes_since(self.seen_seq)? {
            self.seen_seq = self.seen_seq.max(c.seq);
            match (c.run_id, c.task_id) {
                (Some(run_id), Some(task_id)) => {
                    tis.entry((c.dag_id, run_id)).or_default().insert(task_id);
                }
                (Some(run_id), None) => {
                    runs.insert((c.dag_id, run_id));
                }
                (None, _) => {
                    dags.insert(c.dag_id);
                }
            }
        }
        for dag_id in dags {
            self.refresh_dag(tx, &dag_id, now)?;
        }
        for (key, task_ids) in tis {
            if !runs.contains(&key) && self.views.contains_key(&key) {
                self.refresh_tis(tx, &key, &task_ids, now)?;
            } else {
                runs.insert(key);
            }
        }
        for key in runs {
            self.refresh_run(tx, &key, now)?;
        }
        Ok(())
    }

    /// Some task instances of a run we hold a view of changed state: read those rows again.
    fn refresh_tis(
        &mut self,
        tx: &Tx,
        key: &RunKey,
        task_ids: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> SchedulerResult<()> {
        self.run_changed(&key.0, now);
        let Some(mut view) = self.views.remove(key) else { return Ok(()) };
        for task_id in task_ids {
            let Some(i) = view.dag.task_index(task_id) else { continue };
            let ti = TiKey { dag_id: key.0.clone(), run_id: key.1.clone(), task_id: task_id.clone() };
            let row = tx.task_state(&ti)?;
            if view.states[i] == TaskState::Scheduled {
                self.ready.remove(&ready_key(&view.dag, &view.run, i));
            }
            view.states[i] = row.as_ref().map_or(TaskState::Removed, |t| t.state);
            view.rows[i] = row;
            if view.states[i] == TaskState::Scheduled {
                self.ready.insert(ready_key(&view.dag, &view.run, i));
            }
        }
        self.views.insert(key.clone(), view);
        self.dirty.insert(key.clone());
        Ok(())
    }

    /// A DAG row changed: its recorded version, paused flag or presence.
    fn refresh_dag(&mut self, tx: &Tx, dag_id: &str, now: DateTime<Utc>) -> SchedulerResult<()> {
        if !matches!(self.scope, Scope::All) {
            return Ok(());
        }
        let row = tx.dag(dag_id)?;
        match &row {
            None => {
                if self.latest.contains_key(dag_id) {
                    tracing::info!(%dag_id, "DAG removed: it no longer loads from the dags folder");
                }
                self.latest.remove(dag_id);
                self.next_due.remove(dag_id);
                self.blocked.remove(dag_id);
                // Inactive: neither paused nor unpaused (its runs, if any, go on).
                self.paused.remove(dag_id);
                return Ok(());
            }
            Some(r) => {
                if self.latest.get(dag_id).is_none_or(|p| p.hash != r.latest_version_hash) {
                    let version = r.latest_version_hash.get(..12).unwrap_or(&r.latest_version_hash);
                    let what = if self.latest.contains_key(dag_id) { "DAG changed" } else { "DAG added" };
                    tracing::info!(%dag_id, version, "{what}: new runs use this version");
                    let pinned = self.pinned(tx, dag_id, &r.latest_version_hash)?;
                    self.latest.insert(dag_id.to_string(), pinned);
                    self.set_due(dag_id.to_string(), now);
                }
            }
        }
        let paused = row.as_ref().is_some_and(|r| r.is_paused);
        if paused && self.paused.insert(dag_id.to_string()) {
            tracing::info!(%dag_id, "DAG paused: its runs wait");
            for key in self.runs_of(dag_id) {
                self.remove_view(&key);
            }
        } else if !paused && self.paused.remove(dag_id) {
            tracing::info!(%dag_id, "DAG unpaused");
            for run in tx.active_runs_of_dag(dag_id)? {
                let key = (run.dag_id.clone(), run.run_id.clone());
                if self.wanted(&run) && !self.views.contains_key(&key) {
                    let tis = tx.task_states_of_run(&key.0, &key.1)?;
                    self.add_view(tx, run, tis)?;
                }
            }
            self.blocked.remove(dag_id);
            self.set_due(dag_id.to_string(), now);
        }
        Ok(())
    }

    /// A run (its row or one of its task instances) changed: read it again.
    fn refresh_run(&mut self, tx: &Tx, key: &RunKey, now: DateTime<Utc>) -> SchedulerResult<()> {
        self.remove_view(key);
        self.run_changed(&key.0, now);
        let Some(run) = tx.dag_run(&key.0, &key.1)? else { return Ok(()) };
        if !self.wanted(&run) {
            return Ok(());
        }
        let tis = tx.task_states_of_run(&key.0, &key.1)?;
        self.add_view(tx, run, tis)
    }

    /// A run of `dag_id` was added, changed or finished: a `max_active_runs` slot may be free for
    /// its queued runs and its timetable, and a run waiting on `depends_on_past` may be ready.
    fn run_changed(&mut self, dag_id: &str, now: DateTime<Utc>) {
        self.start_dags.insert(dag_id.to_string());
        if self.blocked.remove(dag_id) {
            self.set_due(dag_id.to_string(), now);
        }
        let keys = self.runs_of(dag_id);
        if keys.iter().any(|k| self.views.get(k).is_some_and(|v| v.dag.depends_on_past)) {
            self.dirty.extend(keys);
        }
    }

    /// The runs of one DAG in `views`, oldest logical date first.
    fn runs_of(&self, dag_id: &str) -> Vec<RunKey> {
        self.runs_by_dag
            .get(dag_id)
            .map(|runs| runs.iter().map(|(_, run_id)| (dag_id.to_string(), run_id.clone())).collect())
            .unwrap_or_default()
    }

    fn add_view(&mut self, tx: &Tx, run: DagRunRow, tis: Vec<TiStateRow>) -> SchedulerResult<()> {
        let dag = self.pinned(tx, &run.dag_id, &run.version_hash)?;
        let mut rows: Vec<Option<TiStateRow>> = vec![None; dag.spec.tasks.len()];
        for ti in tis {
            if let Some(i) = dag.task_index(&ti.key.task_id) {
                rows[i] = Some(ti);
            }
        }
        let states: Vec<TaskState> = rows.iter().map(|t| t.as_ref().map_or(TaskState::Removed, |t| t.state)).collect();
        for (i, s) in states.iter().enumerate() {
            if *s == TaskState::Scheduled {
                self.ready.insert(ready_key(&dag, &run, i));
            }
        }
        let key = (run.dag_id.clone(), run.run_id.clone());
        self.runs_by_dag.entry(key.0.clone()).or_default().insert((run.logical_date, key.1.clone()));
        if run.state == DagRunState::Queued {
            self.start_dags.insert(key.0.clone());
        }
        if dag.depends_on_past {
            self.dirty.extend(self.runs_of(&key.0));
        }
        self.dirty.insert(key.clone());
        self.views.insert(key, RunView { run, dag, rows, states });
        Ok(())
    }

    fn remove_view(&mut self, key: &RunKey) -> Option<RunView> {
        let view = self.views.remove(key)?;
        for (i, s) in view.states.iter().enumerate() {
            if *s == TaskState::Scheduled {
                self.ready.remove(&ready_key(&view.dag, &view.run, i));
            }
        }
        if let Some(runs) = self.runs_by_dag.get_mut(&key.0) {
            runs.remove(&(view.run.logical_date, key.1.clone()));
            if runs.is_empty() {
                self.runs_by_dag.remove(&key.0);
            }
        }
        self.dirty.remove(key);
        Some(view)
    }

    // ---- the pass -----------------------------------------------------------------------------

    /// Creates the scheduled runs of the DAGs that fell due, up to each DAG's `max_active_runs`.
    /// Only due DAGs are looked at (one query each), not every loaded DAG.
    fn create_scheduled_runs(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<()> {
        let mut due_now: Vec<String> = Vec::new();
        while self.due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((at, dag_id))) = self.due.pop() else { break };
            if self.next_due.get(&dag_id) == Some(&at) {
                self.next_due.remove(&dag_id);
                due_now.push(dag_id);
            }
        }
        due_now.sort();
        for dag_id in due_now {
            // A paused DAG is due again when it is unpaused.
            let Some(dag) = self.latest.get(&dag_id).cloned() else { continue };
            let Some(tt) = dag.timetable() else { continue };
            if self.paused.contains(&dag_id) {
                continue;
            }
            let mut running = tx.active_run_count(&dag_id)?;
            let restriction = Restriction::of(&dag.spec);
            let mut last = tx.latest_scheduled_interval(&dag_id)?.map(|(start, end)| DataInterval { start, end });
            while let Some(info) = tt.next_dagrun_info(last, restriction, now) {
                if last.is_some_and(|l| l == info.data_interval) {
                    break;
                }
                if info.run_after > now {
                    self.set_due(dag_id.clone(), info.run_after);
                    break;
                }
                if running >= dag.spec.max_active_runs {
                    self.blocked.insert(dag_id.clone());
                    break;
                }
                let run = new_run(
                    &dag,
                    RunType::Scheduled,
                    info.logical_date,
                    info.data_interval,
                    serde_json::json!({}),
                    now,
                );
                if insert_run(tx, &dag, &run)? {
                    tracing::info!(
                        dag_id = %run.dag_id,
                        run_id = %run.run_id,
                        logical_date = %run.logical_date.to_rfc3339(),
                        data_interval_end = %run.data_interval_end.to_rfc3339(),
                        "run created"
                    );
                    running += 1;
                    let tis = tx.task_states_of_run(&run.dag_id, &run.run_id)?;
                    self.add_view(tx, run, tis)?;
                }
                last = Some(info.data_interval);
            }
        }
        Ok(())
    }

    /// Starts queued runs of the DAGs whose runs changed, while each is under `max_active_runs`.
    fn start_queued_runs(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<()> {
        let mut dags: Vec<String> = self.start_dags.drain().collect();
        dags.sort();
        for dag_id in dags {
            let keys = self.runs_of(&dag_id);
            let mut running =
                keys.iter().filter(|k| self.views.get(*k).is_some_and(|v| v.run.state == DagRunState::Running)).count()
                    as u32;
            for key in keys {
                let Some(view) = self.views.get_mut(&key) else { continue };
                if view.run.state != DagRunState::Queued || running >= view.dag.spec.max_active_runs {
                    continue;
                }
                if tx.set_run_state(&key.0, &key.1, DagRunState::Queued, DagRunState::Running, now)? {
                    running += 1;
                    view.run.state = DagRunState::Running;
                    view.run.start_date = Some(now);
                    self.dirty.insert(key);
                } else {
                    self.stale.insert(key);
                }
            }
        }
        Ok(())
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

    /// One scheduling pass at `now`.
    pub fn pass(&mut self, now: DateTime<Utc>) -> SchedulerResult<Pass> {
        let store = self.store.clone();
        let began = std::time::Instant::now();
        let pass = store.write(|tx| self.pass_in(tx, now));
        crate::metrics::global().scheduler_pass(began.elapsed());
        pass
    }

    /// A pass touches only what changed since the last one: the runs and DAGs the change log
    /// names, timers that fell due (retries, `dagrun_timeout`), DAGs whose next run fell due, and
    /// the ready set when slots are free. The whole pass is one write transaction, so no other
    /// process writes between reading the change log and marking this pass's own writes as seen.
    fn pass_in(&mut self, tx: &Tx, now: DateTime<Utc>) -> SchedulerResult<Pass> {
        let mut out = PassOut { now, changes: Vec::new(), pass: Pass::default() };
        if self.loaded {
            self.follow_changes(tx, now)?;
        } else {
            self.load_all(tx, now)?;
        }
        while self.timers.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some((_, key)) = self.pop_timer() else { break };
            if self.views.contains_key(&key) {
                self.dirty.insert(key);
            }
        }
        if matches!(self.scope, Scope::All) {
            self.create_scheduled_runs(tx, now)?;
        }
        self.start_queued_runs(tx, now)?;
        let mut dirty: Vec<(DateTime<Utc>, RunKey)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|k| self.views.get(&k).map(|v| (v.run.logical_date, k)))
            .collect();
        dirty.sort();
        out.pass.runs_examined = dirty.len();
        for (_, key) in &dirty {
            let Some(mut view) = self.views.remove(key) else { continue };
            let timed_out = match (view.dag.spec.dagrun_timeout, view.run.start_date) {
                (Some(timeout), Some(start)) if view.run.state == DagRunState::Running => {
                    let deadline = start.checked_add_signed(timeout.as_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC);
                    if now < deadline {
                        self.add_timer(deadline, key);
                    }
                    now >= deadline
                }
                _ => false,
            };
            if timed_out {
                self.time_out_run(tx, &mut view, &mut out)?;
            } else {
                self.decide_run(tx, &mut view, key, &mut out)?;
            }
            self.views.insert(key.clone(), view);
        }
        // Write the decisions; a lost race leaves that run to be read again in the next pass.
        for c in std::mem::take(&mut out.changes) {
            let key = (c.key.dag_id.clone(), c.key.run_id.clone());
            if !tx.set_ti_state(&c.key, c.from, c.to, &c.fields)? {
                self.stale.insert(key);
                continue;
            }
            if c.to == TaskState::Scheduled {
                if let Some(view) = self.views.get(&key)
                    && let Some(i) = view.dag.task_index(&c.key.task_id)
                {
                    self.ready.insert(ready_key(&view.dag, &view.run, i));
                }
            } else {
                out.pass.decided.push((c.key, c.to));
            }
        }
        self.queue(tx, &mut out)?;
        for (_, key) in dirty {
            let Some(mut view) = self.views.remove(&key) else { continue };
            if view.run.state == DagRunState::Running {
                self.roll_up(tx, &mut view, &mut out)?;
            }
            let finished = view.run.state.is_finished();
            self.views.insert(key.clone(), view);
            if finished {
                self.remove_view(&key);
                self.run_changed(&key.0, now);
            }
        }
        // A finished run frees a `max_active_runs` slot that queued or due runs may be waiting for;
        // a lost race is read again.
        if !out.pass.finished_runs.is_empty() || !self.stale.is_empty() {
            out.pass.next_wake = earliest(out.pass.next_wake, now);
        }
        while self.timers.peek().is_some_and(|Reverse((_, key))| !self.views.contains_key(key)) {
            self.pop_timer();
        }
        if let Some(Reverse((at, _))) = self.timers.peek() {
            out.pass.next_wake = earliest(out.pass.next_wake, *at);
        }
        while self.due.peek().is_some_and(|Reverse((at, dag_id))| self.next_due.get(dag_id) != Some(at)) {
            self.due.pop();
        }
        if let Some(Reverse((at, _))) = self.due.peek() {
            out.pass.next_wake = earliest(out.pass.next_wake, *at);
        }
        // This pass's own writes are in the log too; nobody else wrote during this transaction.
        let (oldest, newest) = tx.change_log_bounds()?;
        self.seen_seq = newest;
        if matches!(self.scope, Scope::All) && newest - oldest > 2 * CHANGE_LOG_KEEP {
            tx.prune_change_log(newest - CHANGE_LOG_KEEP)?;
        }
        Ok(out.pass)
    }

    /// Trigger rules, retries and `depends_on_past` for one running run, in topological order so a
    /// chain of decisions (e.g. `EmptyOperator`s, or upstream failures) settles in one pass.
    fn decide_run(&mut self, tx: &Tx, view: &mut RunView, run_key: &RunKey, out: &mut PassOut) -> SchedulerResult<()> {
        if view.run.state != DagRunState::Running {
            return Ok(());
        }
        let RunView { run, dag, rows, states: st } = view;
        for i in dag.order.iter().map(|i| *i as usize) {
            let Some(row) = &rows[i] else { continue };
            let key = &row.key;
            let current = st[i];
            // A retry's delay or a sensor's reschedule interval: the timer heap wakes it at `next_try_at`.
            if matches!(current, TaskState::UpForRetry | TaskState::UpForReschedule) {
                match row.next_try_at {
                    Some(at) if at > out.now => {
                        out.pass.next_wake = earliest(out.pass.next_wake, at);
                        self.add_timer(at, run_key);
                    }
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
            for u in dag.upstream_of(i) {
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

    /// Queues ready task instances by priority within parallelism, `max_active_tasks` and pools,
    /// filling every free slot. Every claimed task instance in the store counts, whoever claimed
    /// it (a `dags backfill` beside the scheduler, a paused DAG's running tasks): one grouped query.
    fn queue(&mut self, tx: &Tx, out: &mut PassOut) -> SchedulerResult<()> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let mut total_busy = 0u32;
        let mut busy_per_dag: HashMap<String, u32> = HashMap::new();
        let mut pool_used: HashMap<String, u32> = HashMap::new();
        for b in tx.busy_task_counts()? {
            total_busy = total_busy.saturating_add(b.tasks);
            *busy_per_dag.entry(b.dag_id).or_default() += b.tasks;
            *pool_used.entry(b.pool).or_default() += b.pool_slots;
        }
        let pools: HashMap<String, u32> = tx.pools()?.into_iter().collect();
        let mut done: Vec<ReadyKey> = Vec::new();
        let mut taken: Vec<(RunKey, usize)> = Vec::new();
        for rk in &self.ready {
            if total_busy >= self.settings.parallelism {
                break;
            }
            let (_, _, dag_id, run_id, ti) = rk;
            let run_key = (dag_id.clone(), run_id.clone());
            let Some(view) = self.views.get(&run_key) else {
                done.push(rk.clone());
                continue;
            };
            let (Some(row), Some(TaskState::Scheduled)) = (&view.rows[*ti], view.states.get(*ti)) else {
                done.push(rk.clone());
                continue;
            };
            let task = &view.dag.spec.tasks[*ti];
            let dag_busy = busy_per_dag.entry(dag_id.clone()).or_default();
            if *dag_busy >= view.dag.spec.max_active_tasks {
                continue;
            }
            // A missing pool fails the try at once with what to do, rather than leaving it
            // `scheduled` for ever (Airflow only logs it).
            let missing_pool = !pools.contains_key(&*task.pool);
            if missing_pool && self.warned_pools.insert(task.pool.to_string()) {
                tracing::warn!(pool = %task.pool, task = %task.task_id, "task uses a pool that does not exist; its tries fail");
            }
            let slots = pools.get(&*task.pool).copied().unwrap_or(0);
            let used = pool_used.entry(task.pool.to_string()).or_default();
            if !missing_pool && *used + task.pool_slots > slots {
                continue;
            }
            let fields =
                TiChange { queued_at: Some(out.now), owner: Some(self.settings.owner.clone()), ..TiChange::default() };
            done.push(rk.clone());
            if !tx.set_ti_state(&row.key, TaskState::Scheduled, TaskState::Queued, &fields)? {
                self.stale.insert(run_key);
                continue;
            }
            let run = &view.run;
            let queued = QueuedTask {
                key: row.key.clone(),
                dag: view.dag.spec.clone(),
                task_index: *ti,
                run: RunInfo {
                    run_id: run.run_id.clone(),
                    run_type: run.run_type,
                    logical_date: run.logical_date,
                    data_interval_start: run.data_interval_start,
                    data_interval_end: run.data_interval_end,
                    conf: run.conf.clone(),
                    version_hash: run.version_hash.clone(),
                },
                try_number: row.try_number + 1,
                max_tries: row.max_tries,
            };
            if missing_pool {
                let pool = &task.pool;
                out.pass.refused.push((
                    queued,
                    format!(
                        "task `{}` uses pool `{pool}`, which does not exist; create it with `rhaiflow pools set {pool} SLOTS`",
                        task.task_id
                    ),
                ));
            } else {
                total_busy += 1;
                *dag_busy += 1;
                *used += task.pool_slots;
                out.pass.to_run.push(queued);
            }
            taken.push((run_key, *ti));
        }
        for rk in &done {
            self.ready.remove(rk);
        }
        for (run_key, ti) in taken {
            if let Some(view) = self.views.get_mut(&run_key) {
                view.states[ti] = TaskState::Queued;
            }
        }
        Ok(())
    }

    /// When every task instance is finished: failed if a leaf failed, else success.
    fn roll_up(&mut self, tx: &Tx, view: &mut RunView, out: &mut PassOut) -> SchedulerResult<()> {
        if !view.states.iter().all(|s| s.is_finished()) {
            return Ok(());
        }
        let failed = view
            .dag
            .leaves
            .iter()
            .any(|&i| matches!(view.states[i as usize], TaskState::Failed | TaskState::UpstreamFailed));
        let to = if failed { DagRunState::Failed } else { DagRunState::Success };
        self.finish_run(tx, view, to, None, out)
    }

    /// `dagrun_timeout`: the run fails; task instances not yet started are skipped.
    fn time_out_run(&mut self, tx: &Tx, view: &mut RunView, out: &mut PassOut) -> SchedulerResult<()> {
        for (row, state) in view.rows.iter().zip(view.states.iter_mut()) {
            let Some(row) = row else { continue };
            if matches!(
                *state,
                TaskState::None
                    | TaskState::Scheduled
                    | TaskState::UpForRetry
                    | TaskState::UpForReschedule
                    | TaskState::Queued
            ) {
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
        &mut self,
        tx: &Tx,
        view: &mut RunView,
        to: DagRunState,
        reason: Option<String>,
        out: &mut PassOut,
    ) -> SchedulerResult<()> {
        let run = &view.run;
        if tx.set_run_state(&run.dag_id, &run.run_id, DagRunState::Running, to, out.now)? {
            self.run_alerts(tx, view, to, reason, out.now)?;
            out.pass.finished_runs.push((run.dag_id.clone(), run.run_id.clone(), to));
            view.run.state = to;
        } else {
            self.stale.insert((run.dag_id.clone(), run.run_id.clone()));
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
                payload: serde_json::json!({
                    "dag_id": run.dag_id,
                    "run_id": run.run_id,
                    "logical_date": run.logical_date.to_rfc3339(),
                    "state": state.as_str(),
                    "reason": reason,
                }),
                held: self.settings.alert_defaults.hold,
            };
            tx.insert_alert(&alert, now)?;
        }
        Ok(())
    }
}
