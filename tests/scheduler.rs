//! The scheduler against a real SQLite file, with time as an input: run creation, limits, priority,
//! trigger-rule cascades, depends_on_past, retries and dagrun_timeout. The test plays the worker by
//! writing task outcomes to the store, as the worker does.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rhaiflow::model::{DagRunState, TaskState, TiKey};
use rhaiflow::scheduler::{AlertDefaults, DagVersion, Scheduler, SchedulerSettings, Scope};
use rhaiflow::script::{ScriptHost, ScriptLimits};
use rhaiflow::store::{Store, TiChange};
use std::sync::Arc;

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 10, h, m, 0).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    scheduler: Scheduler,
}

fn fixture(src: &str, parallelism: u32) -> Fixture {
    fixture_files(&[src], parallelism)
}

/// One DAG file per source.
fn fixture_files(srcs: &[&str], parallelism: u32) -> Fixture {
    let host = ScriptHost::new(ScriptLimits::default()).unwrap();
    let mut versions: Vec<DagVersion> = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let out = host.evaluate(&format!("test{i}.rhai"), src, &common::eval_context());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        versions.extend(out.dags.into_iter().map(|d| {
            let json = d.spec.to_json();
            DagVersion { hash: format!("h-{}", d.spec.dag_id), json: json.into(), spec: Arc::new(d.spec), source: None }
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store.write(|tx| rhaiflow::scheduler::record_dags(tx, &versions, &[], at(0, 0), false)).unwrap();
    let settings =
        SchedulerSettings { parallelism, owner: "test-runner".into(), alert_defaults: AlertDefaults::default() };
    let mut scheduler = Scheduler::new(store.clone(), settings, Scope::All);
    scheduler.set_dags(&versions);
    Fixture { _dir: dir, store, scheduler }
}

impl Fixture {
    /// A manual run of `dag_id` at `logical_date`, as `dags trigger` creates it.
    fn manual_run(&self, dag_id: &str, logical_date: DateTime<Utc>) -> rhaiflow::store::DagRunRow {
        let dag = self.scheduler.latest(dag_id).unwrap().clone();
        let interval = rhaiflow::schedule::DataInterval { start: logical_date, end: logical_date };
        let run = rhaiflow::scheduler::new_run(
            &dag,
            rhaiflow::model::RunType::Manual,
            logical_date,
            interval,
            serde_json::json!({}),
            logical_date,
        );
        assert!(self.store.write(|tx| rhaiflow::scheduler::insert_run(tx, &dag, &run)).unwrap());
        run
    }

    /// A run of `dag_id` in `state` whose task instances `claimed` are `running`, as another process
    /// (a `dags backfill` beside the scheduler) leaves them.
    fn claimed_elsewhere(&self, dag_id: &str, logical_date: DateTime<Utc>, claimed: &[&str]) {
        let dag = self.scheduler.latest(dag_id).unwrap().clone();
        let interval = rhaiflow::schedule::DataInterval { start: logical_date, end: logical_date };
        let mut run = rhaiflow::scheduler::new_run(
            &dag,
            rhaiflow::model::RunType::Backfill,
            logical_date,
            interval,
            serde_json::json!({}),
            logical_date,
        );
        run.state = DagRunState::Running;
        assert!(self.store.write(|tx| rhaiflow::scheduler::insert_run(tx, &dag, &run)).unwrap());
        for task_id in claimed {
            self.set_running(&TiKey {
                dag_id: dag_id.into(),
                run_id: run.run_id.clone(),
                task_id: task_id.to_string(),
            });
        }
    }

    /// Moves a task instance that has not started to `running`, as another process's worker does.
    fn set_running(&self, key: &TiKey) {
        let change = TiChange { try_number: Some(1), ..TiChange::default() };
        let from = self.store.read(|tx| tx.task_instance(key)).unwrap().unwrap().state;
        assert!(self.store.write(|tx| tx.set_ti_state(key, from, TaskState::Running, &change)).unwrap());
    }

    fn queued_ids(pass: &rhaiflow::scheduler::Pass) -> Vec<String> {
        let mut ids: Vec<String> = pass.to_run.iter().map(|t| format!("{}.{}", t.key.dag_id, t.key.task_id)).collect();
        ids.sort();
        ids
    }

    fn runs(&self, dag_id: &str) -> Vec<rhaiflow::store::DagRunRow> {
        self.store.read(|tx| tx.dag_runs(dag_id)).unwrap()
    }

    fn states(&self, dag_id: &str, run_id: &str) -> Vec<(String, TaskState)> {
        let tis = self.store.read(|tx| tx.task_instances_of_run(dag_id, run_id)).unwrap();
        tis.into_iter().map(|t| (t.key.task_id, t.state)).collect()
    }

    /// Plays the worker: claims a queued task instance and finishes it in `state`.
    fn finish(&self, key: &TiKey, state: TaskState, now: DateTime<Utc>, next_try_at: Option<DateTime<Utc>>) {
        self.store
            .write(|tx| {
                assert!(tx.set_ti_state(
                    key,
                    TaskState::Queued,
                    TaskState::Running,
                    &TiChange { try_number: Some(1), start_date: Some(now), ..TiChange::default() }
                )?);
                let change = TiChange { end_date: Some(now), next_try_at, ..TiChange::default() };
                assert!(tx.set_ti_state(key, TaskState::Running, state, &change)?);
                Ok::<_, rhaiflow::store::StoreError>(())
            })
            .unwrap();
    }
}

#[test]
fn catchup_creates_one_run_per_interval_up_to_max_active_runs() {
    let mut f = fixture(
        r#"let d = DAG("c", #{ start_date: datetime(2024, 1, 10), schedule: "@hourly", catchup: true, max_active_runs: 3 });
           let a = EmptyOperator(#{ task_id: "a" });"#,
        32,
    );
    let pass = f.scheduler.pass(at(5, 30)).unwrap();
    // Three runs at once (max_active_runs); EmptyOperator finishes them in the same pass.
    assert_eq!(pass.finished_runs.len(), 3);
    f.scheduler.pass(at(5, 30)).unwrap();
    let runs = f.runs("c");
    assert_eq!(runs.len(), 5, "00:00..04:00 are due at 05:30; 05:00 is due at 06:00");
    assert!(runs.iter().all(|r| r.state == DagRunState::Success));
    assert_eq!(runs[0].run_id, "scheduled__2024-01-10T00:00:00+00:00");
    let pass = f.scheduler.pass(at(5, 30)).unwrap();
    assert_eq!(pass.next_wake, Some(at(6, 0)), "sleeps until the next run is due");
    assert_eq!(f.runs("c").len(), 5, "no run is created twice for a logical date");
}

#[test]
fn without_catchup_only_the_latest_interval_runs() {
    let mut f = fixture(
        r#"let d = DAG("nc", #{ start_date: datetime(2024, 1, 1), schedule: "*/10 * * * *", catchup: false });
           let a = BashOperator(#{ task_id: "a", bash_command: "true" });"#,
        32,
    );
    let pass = f.scheduler.pass(at(12, 25)).unwrap();
    let runs = f.runs("nc");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].logical_date, at(12, 10));
    assert_eq!(pass.to_run.len(), 1);
    assert_eq!(pass.next_wake, Some(at(12, 30)));
}

#[test]
fn queueing_respects_priority_parallelism_max_active_tasks_and_pools() {
    let mut f = fixture(
        r#"let d = DAG("p", #{ start_date: datetime(2024, 1, 1), schedule: (), max_active_tasks: 3 });
           let low = BashOperator(#{ task_id: "low", bash_command: "true", priority_weight: 1 });
           let high = BashOperator(#{ task_id: "high", bash_command: "true", priority_weight: 10 });
           let mid = BashOperator(#{ task_id: "mid", bash_command: "true", priority_weight: 5 });
           let other = BashOperator(#{ task_id: "other", bash_command: "true", priority_weight: 7 });
           let pooled = BashOperator(#{ task_id: "pooled", bash_command: "true", priority_weight: 100, pool: "tiny", pool_slots: 2 });"#,
        2,
    );
    f.store.write(|tx| tx.set_pool("tiny", 1, "too small for pooled")).unwrap();
    f.manual_run("p", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    let queued: Vec<&str> = pass.to_run.iter().map(|t| t.key.task_id.as_str()).collect();
    assert_eq!(queued, ["high", "other"], "parallelism 2, highest priority first; `pooled` needs 2 slots of 1");
    for t in &pass.to_run {
        f.finish(&t.key, TaskState::Success, at(1, 1), None);
    }
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    let queued: Vec<&str> = pass.to_run.iter().map(|t| t.key.task_id.as_str()).collect();
    assert_eq!(queued, ["mid", "low"]);
}

/// The order parallelism 1 queues the tasks of one run in under `weight_rule`, and the weights
/// stored on its task instances.
fn queue_order(rule: &str) -> (Vec<String>, Vec<(String, i64)>) {
    // Declared c, b, a: `c` (5) alone; `b` (2) above `b2` (1); `a` (1) above `a2` (2) above `a3`
    // and `a4` (2 each).
    let src = format!(
        r#"let d = DAG("w", #{{ start_date: datetime(2024, 1, 1), schedule: (), default_args: #{{ weight_rule: "{rule}" }} }});
           let c = BashOperator(#{{ task_id: "c", bash_command: "true", priority_weight: 5 }});
           let b = BashOperator(#{{ task_id: "b", bash_command: "true", priority_weight: 2 }});
           let a = BashOperator(#{{ task_id: "a", bash_command: "true", priority_weight: 1 }});
           let b2 = BashOperator(#{{ task_id: "b2", bash_command: "true", priority_weight: 1 }});
           let a2 = BashOperator(#{{ task_id: "a2", bash_command: "true", priority_weight: 2 }});
           let a3 = BashOperator(#{{ task_id: "a3", bash_command: "true", priority_weight: 2 }});
           let a4 = BashOperator(#{{ task_id: "a4", bash_command: "true", priority_weight: 2 }});
           a >> a2 >> [a3, a4];
           b >> b2;"#
    );
    let mut f = fixture(&src, 1);
    let run = f.manual_run("w", at(1, 0));
    let mut order = Vec::new();
    let mut now = at(1, 0);
    for _ in 0..8 {
        let pass = f.scheduler.pass(now).unwrap();
        assert!(pass.to_run.len() <= 1, "parallelism 1");
        let Some(t) = pass.to_run.first() else { break };
        order.push(t.key.task_id.clone());
        now += Duration::seconds(1);
        f.finish(&t.key, TaskState::Success, now, None);
    }
    let mut stored: Vec<(String, i64)> = f
        .store
        .read(|tx| tx.task_instances_of_run("w", &run.run_id))
        .unwrap()
        .into_iter()
        .map(|t| (t.key.task_id, t.priority_weight))
        .collect();
    stored.sort();
    (order, stored)
}

fn weights(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = pairs.iter().map(|(t, w)| (t.to_string(), *w)).collect();
    v.sort();
    v
}

#[test]
fn weight_rule_orders_the_queue_as_airflow_sums_priorities() {
    // downstream (the default): a = 1+2+2+2 = 7, c = 5, b = 2+1 = 3.
    let (order, stored) = queue_order("downstream");
    assert_eq!(order, ["a", "a2", "c", "b", "a3", "a4", "b2"]);
    assert_eq!(stored, weights(&[("a", 7), ("a2", 6), ("a3", 2), ("a4", 2), ("b", 3), ("b2", 1), ("c", 5)]));
    // absolute: own weights only (`a` and `b2` tie at 1: declaration order).
    let (order, stored) = queue_order("absolute");
    assert_eq!(order, ["c", "b", "a", "a2", "a3", "a4", "b2"]);
    assert_eq!(stored, weights(&[("a", 1), ("a2", 2), ("a3", 2), ("a4", 2), ("b", 2), ("b2", 1), ("c", 5)]));
    // upstream: own weight plus every ancestor's (`b2` = 3 now outranks `a`).
    let (order, stored) = queue_order("upstream");
    assert_eq!(stored, weights(&[("a", 1), ("a2", 3), ("a3", 5), ("a4", 5), ("b", 2), ("b2", 3), ("c", 5)]));
    assert_eq!(order, ["c", "b", "b2", "a", "a2", "a3", "a4"]);
}

#[test]
fn trigger_rules_cascade_in_one_pass() {
    let mut f = fixture(
        r#"let d = DAG("t", #{ start_date: datetime(2024, 1, 1), schedule: () });
           let a = BashOperator(#{ task_id: "a", bash_command: "false" });
           let b = EmptyOperator(#{ task_id: "b" });
           let c = EmptyOperator(#{ task_id: "c" });
           let on_fail = EmptyOperator(#{ task_id: "on_fail", trigger_rule: "one_failed" });
           let done = EmptyOperator(#{ task_id: "done", trigger_rule: "all_done" });
           a >> b >> c;
           a >> on_fail;
           [c, on_fail] >> done;"#,
        32,
    );
    let run = f.manual_run("t", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(pass.to_run.len(), 1);
    f.finish(&pass.to_run[0].key, TaskState::Failed, at(1, 1), None);
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    assert_eq!(
        f.states("t", &run.run_id),
        vec![
            ("a".into(), TaskState::Failed),
            ("b".into(), TaskState::UpstreamFailed),
            ("c".into(), TaskState::UpstreamFailed),
            ("on_fail".into(), TaskState::Success),
            ("done".into(), TaskState::Success),
        ]
    );
    assert_eq!(
        pass.finished_runs,
        vec![("t".to_string(), run.run_id.clone(), DagRunState::Success)],
        "the only leaf succeeded"
    );
}

#[test]
fn retries_wake_the_scheduler_at_their_time() {
    let mut f = fixture(
        r#"let d = DAG("r", #{ start_date: datetime(2024, 1, 1), schedule: () });
           let a = BashOperator(#{ task_id: "a", bash_command: "false", retries: 1 });"#,
        32,
    );
    f.manual_run("r", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    f.finish(&pass.to_run[0].key, TaskState::UpForRetry, at(1, 1), Some(at(1, 6)));
    let pass = f.scheduler.pass(at(1, 2)).unwrap();
    assert!(pass.to_run.is_empty());
    assert_eq!(pass.next_wake, Some(at(1, 6)));
    let pass = f.scheduler.pass(at(1, 6)).unwrap();
    assert_eq!(pass.to_run.len(), 1);
    assert_eq!(pass.to_run[0].try_number, 2);
}

#[test]
fn depends_on_past_waits_for_the_previous_run() {
    let mut f = fixture(
        r#"let d = DAG("dop", #{ start_date: datetime(2024, 1, 10), schedule: "@hourly", catchup: true, max_active_runs: 2 });
           let a = BashOperator(#{ task_id: "a", bash_command: "true", depends_on_past: true });"#,
        32,
    );
    let pass = f.scheduler.pass(at(2, 0)).unwrap();
    let queued: Vec<&str> = pass.to_run.iter().map(|t| t.key.run_id.as_str()).collect();
    assert_eq!(queued, ["scheduled__2024-01-10T00:00:00+00:00"], "the 01:00 run waits for 00:00");
    f.finish(&pass.to_run[0].key, TaskState::Success, at(2, 1), None);
    let pass = f.scheduler.pass(at(2, 1)).unwrap();
    let queued: Vec<&str> = pass.to_run.iter().map(|t| t.key.run_id.as_str()).collect();
    assert_eq!(queued, ["scheduled__2024-01-10T01:00:00+00:00"]);
}

#[test]
fn dagrun_timeout_fails_the_run_and_skips_what_has_not_started() {
    let mut f = fixture(
        r#"let d = DAG("to", #{ start_date: datetime(2024, 1, 1), schedule: (), dagrun_timeout: minutes(5), on_failure_callback: |ctx| () });
           let a = BashOperator(#{ task_id: "a", bash_command: "sleep 600" });
           let b = BashOperator(#{ task_id: "b", bash_command: "true" });
           a >> b;"#,
        32,
    );
    let run = f.manual_run("to", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(pass.next_wake, Some(at(1, 5)), "wakes at the timeout");
    let pass = f.scheduler.pass(at(1, 0) + Duration::minutes(5)).unwrap();
    assert_eq!(pass.finished_runs[0].2, DagRunState::Failed);
    assert_eq!(f.states("to", &run.run_id)[1], ("b".into(), TaskState::Skipped));
    let alerts = f.store.read(|tx| tx.alerts()).unwrap();
    assert_eq!(alerts.len(), 1, "the DAG's on_failure_callback is in the outbox");
    assert_eq!(alerts[0].event, "dag_run_failed");
}

#[test]
fn a_finished_run_frees_its_slot_at_once() {
    let mut f = fixture(
        r#"let d = DAG("one_at_a_time", #{ start_date: datetime(2024, 1, 10), schedule: "@hourly", catchup: true, max_active_runs: 1 });
           let a = EmptyOperator(#{ task_id: "a" });"#,
        32,
    );
    let now = at(5, 30);
    let pass = f.scheduler.pass(now).unwrap();
    assert_eq!(pass.finished_runs.len(), 1);
    assert_eq!(pass.next_wake, Some(now), "the freed slot is used without waiting for an event");
    for _ in 0..10 {
        f.scheduler.pass(now).unwrap();
    }
    assert_eq!(f.runs("one_at_a_time").len(), 5, "every due interval ran, one at a time");
}

#[test]
fn a_cleared_run_gets_its_full_dagrun_timeout_again() {
    let mut f = fixture(
        r#"let d = DAG("cleared", #{ start_date: datetime(2024, 1, 1), schedule: (), dagrun_timeout: minutes(30) });
           let a = BashOperator(#{ task_id: "a", bash_command: "true" });"#,
        32,
    );
    let run = f.manual_run("cleared", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    f.finish(&pass.to_run[0].key, TaskState::Success, at(1, 1), None);
    assert_eq!(f.scheduler.pass(at(1, 1)).unwrap().finished_runs[0].2, DagRunState::Success);
    // `tasks clear` four hours later: the run goes back to queued, the task to none.
    let key = pass.to_run[0].key.clone();
    f.store
        .write(|tx| {
            tx.set_ti_state(
                &key,
                TaskState::Success,
                TaskState::None,
                &TiChange { reset_times: true, ..TiChange::default() },
            )?;
            tx.set_run_state("cleared", &run.run_id, DagRunState::Success, DagRunState::Queued, at(5, 0))
        })
        .unwrap();
    let pass = f.scheduler.pass(at(5, 0)).unwrap();
    assert_eq!(pass.to_run.len(), 1, "the cleared task runs again");
    let pass = f.scheduler.pass(at(5, 1)).unwrap();
    assert!(pass.finished_runs.is_empty(), "not timed out by the first start four hours ago");
}

/// Five `true` tasks `w0..w4` (the two in pool `tiny` first by priority), for the counting tests.
const WORK: &str = r#"let d = DAG("work", #{ start_date: datetime(2024, 1, 1), schedule: (), max_active_tasks: 4 });
    for i in 0..3 { let t = BashOperator(#{ task_id: "w" + i, bash_command: "true" }); }
    for i in 3..5 { let t = BashOperator(#{ task_id: "w" + i, bash_command: "true", pool: "tiny", priority_weight: 10 }); }"#;

#[test]
fn tasks_claimed_by_another_process_count_toward_parallelism() {
    let mut f = fixture_files(
        &[
            WORK,
            r#"let d = DAG("busy", #{ start_date: datetime(2024, 1, 1), schedule: () });
               let a = BashOperator(#{ task_id: "a", bash_command: "sleep 60" });
               let b = BashOperator(#{ task_id: "b", bash_command: "sleep 60" });"#,
        ],
        4,
    );
    f.store.write(|tx| tx.set_pool("tiny", 8, "")).unwrap();
    f.claimed_elsewhere("busy", at(0, 0), &["a", "b"]);
    f.manual_run("work", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(
        pass.to_run.len(),
        2,
        "parallelism 4 with 2 tasks of a backfill running: {:?}",
        Fixture::queued_ids(&pass)
    );
}

#[test]
fn tasks_claimed_by_another_process_count_toward_max_active_tasks_and_pools() {
    let mut f = fixture_files(&[WORK], 32);
    f.store.write(|tx| tx.set_pool("tiny", 2, "")).unwrap();
    // A backfill of `work` runs w0 (default pool) and w3 (pool `tiny`, 1 of its 2 slots).
    f.claimed_elsewhere("work", at(0, 0), &["w0", "w3"]);
    f.manual_run("work", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    let queued = Fixture::queued_ids(&pass);
    assert_eq!(queued.len(), 2, "max_active_tasks 4 with 2 running in the backfill: {queued:?}");
    assert_eq!(
        queued.iter().filter(|t| *t == "work.w3" || *t == "work.w4").count(),
        1,
        "one slot of `tiny` is left: {queued:?}"
    );
}

#[test]
fn running_tasks_of_a_paused_dag_count_toward_parallelism_and_pools() {
    let mut f = fixture_files(
        &[
            WORK,
            r#"let d = DAG("sleepy", #{ start_date: datetime(2024, 1, 1), schedule: () });
               let a = BashOperator(#{ task_id: "a", bash_command: "sleep 60", pool: "tiny" });
               let b = BashOperator(#{ task_id: "b", bash_command: "sleep 60" });"#,
        ],
        4,
    );
    f.store.write(|tx| tx.set_pool("tiny", 2, "")).unwrap();
    f.manual_run("sleepy", at(0, 0));
    let pass = f.scheduler.pass(at(0, 0)).unwrap();
    assert_eq!(pass.to_run.len(), 2);
    for t in &pass.to_run {
        f.set_running(&t.key);
    }
    assert!(f.store.write(|tx| tx.set_paused("sleepy", true)).unwrap());
    f.manual_run("work", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    let queued = Fixture::queued_ids(&pass);
    assert_eq!(queued.len(), 2, "parallelism 4 with 2 tasks of a paused DAG running: {queued:?}");
    assert!(
        queued.iter().filter(|t| *t == "work.w3" || *t == "work.w4").count() <= 1,
        "`tiny` has 1 slot left: {queued:?}"
    );
}

/// `n` DAGs `d0..d{n-1}` of one `true` task each.
fn many_dags(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"let d = DAG("d{i}", #{{ start_date: datetime(2024, 1, 1), schedule: () }});
                   let a = BashOperator(#{{ task_id: "a", bash_command: "true" }});"#
            )
        })
        .collect()
}

#[test]
fn freed_slots_are_filled_in_the_pass_that_sees_the_tasks_finish() {
    let srcs = many_dags(30);
    let mut f = fixture_files(&srcs.iter().map(String::as_str).collect::<Vec<_>>(), 8);
    for i in 0..30 {
        f.manual_run(&format!("d{i}"), at(1, 0));
    }
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(pass.to_run.len(), 8, "every slot is used after one pass");
    let mut running = pass.to_run;
    // Three finish: the next pass rolls their runs up and fills all three slots.
    for t in running.drain(..3) {
        f.finish(&t.key, TaskState::Success, at(1, 1), None);
    }
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    assert_eq!(pass.finished_runs.len(), 3);
    assert_eq!(pass.to_run.len(), 3, "the freed slots are filled in the same pass");
    let busy: u32 = f.store.read(|tx| tx.busy_task_counts()).unwrap().iter().map(|b| b.tasks).sum();
    assert_eq!(busy, 8);
    // And so on until every run has run, one pass per batch of outcomes.
    running.extend(pass.to_run);
    let mut passes = 0;
    while !running.is_empty() {
        for t in running.drain(..) {
            f.finish(&t.key, TaskState::Success, at(1, 2), None);
        }
        running = f.scheduler.pass(at(1, 2)).unwrap().to_run;
        passes += 1;
        assert!(passes < 10, "30 runs at 8 slots drain in a few passes");
    }
    let succeeded = (0..30).filter(|i| f.runs(&format!("d{i}"))[0].state == DagRunState::Success).count();
    assert_eq!(succeeded, 30);
}

#[test]
fn a_pass_after_one_task_finishes_does_not_re_decide_unrelated_runs() {
    let srcs = many_dags(40);
    let mut f = fixture_files(&srcs.iter().map(String::as_str).collect::<Vec<_>>(), 64);
    for i in 0..40 {
        f.manual_run(&format!("d{i}"), at(1, 0));
    }
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(pass.runs_examined, 40, "the first pass reads everything");
    assert_eq!(pass.to_run.len(), 40);
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(pass.runs_examined, 0, "nothing changed: its own writes are not news to the scheduler");
    f.finish(
        &TiKey { dag_id: "d7".into(), run_id: f.runs("d7")[0].run_id.clone(), task_id: "a".into() },
        TaskState::Success,
        at(1, 1),
        None,
    );
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    assert_eq!(pass.runs_examined, 1, "only the run whose task finished");
    assert_eq!(pass.finished_runs, vec![("d7".to_string(), f.runs("d7")[0].run_id.clone(), DagRunState::Success)]);
    // Another process triggers a run (`dags trigger`): the next pass reads that run only.
    f.manual_run("d3", at(2, 0));
    let pass = f.scheduler.pass(at(2, 0)).unwrap();
    assert_eq!(pass.runs_examined, 1);
    assert_eq!(pass.to_run.len(), 1);
}

#[test]
fn pausing_in_another_process_holds_the_dags_runs_until_unpaused() {
    let srcs = many_dags(2);
    let mut f = fixture_files(&srcs.iter().map(String::as_str).collect::<Vec<_>>(), 64);
    f.scheduler.pass(at(1, 0)).unwrap();
    assert!(f.store.write(|tx| tx.set_paused("d0", true)).unwrap());
    f.manual_run("d0", at(1, 0));
    f.manual_run("d1", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    assert_eq!(Fixture::queued_ids(&pass), ["d1.a"]);
    assert!(f.store.write(|tx| tx.set_paused("d0", false)).unwrap());
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    assert_eq!(Fixture::queued_ids(&pass), ["d0.a"]);
}

#[test]
fn a_scheduler_that_missed_pruned_changes_reads_everything_again() {
    let srcs = many_dags(2);
    let mut f = fixture_files(&srcs.iter().map(String::as_str).collect::<Vec<_>>(), 64);
    let run = f.manual_run("d0", at(1, 0));
    let pass = f.scheduler.pass(at(1, 0)).unwrap();
    f.finish(&pass.to_run[0].key, TaskState::Success, at(1, 1), None);
    // Another scheduler pruned the log past this one's position, the finish included.
    f.store
        .write(|tx| {
            let (_, newest) = tx.change_log_bounds()?;
            tx.prune_change_log(newest)
        })
        .unwrap();
    f.manual_run("d1", at(1, 1));
    let pass = f.scheduler.pass(at(1, 1)).unwrap();
    assert_eq!(pass.finished_runs, vec![("d0".to_string(), run.run_id, DagRunState::Success)]);
    assert_eq!(Fixture::queued_ids(&pass), ["d1.a"]);
}
