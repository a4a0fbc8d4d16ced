//! Sensors in `mode: "reschedule"` at the scheduler, against a real SQLite file with time as an
//! input: between pokes the task instance is `up_for_reschedule`, owns nothing and holds no pool
//! slot; the scheduler's timer wakes it at `next_try_at` as the same try; `dagrun_timeout` skips it;
//! `tasks clear` resets it (its earlier pokes, which start its `timeout`, are forgotten). The test
//! plays the worker by writing what `worker::finish` writes for `Outcome::Reschedule`.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use rhaiflow::model::{DagRunState, TaskState, TiKey};
use rhaiflow::scheduler::{AlertDefaults, DagVersion, Scheduler, SchedulerSettings, Scope};
use rhaiflow::script::{ScriptHost, ScriptLimits};
use rhaiflow::store::{Store, TaskReschedule, TiChange};
use std::sync::Arc;

const OWNER: &str = "test-runner";

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 10, h, m, 0).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    scheduler: Scheduler,
}

fn fixture(src: &str) -> Fixture {
    let host = ScriptHost::new(ScriptLimits::default()).unwrap();
    let out = host.evaluate("sensors.rhai", src, &common::eval_context());
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let versions: Vec<DagVersion> = out
        .dags
        .into_iter()
        .map(|d| DagVersion {
            hash: format!("h-{}", d.spec.dag_id),
            json: d.spec.to_json().into(),
            spec: Arc::new(d.spec),
            source: None,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store.write(|tx| rhaiflow::scheduler::record_dags(tx, &versions, &[], at(0, 0), false)).unwrap();
    store.write(|tx| tx.set_pool("one", 1, "one slot")).unwrap();
    let settings = SchedulerSettings { parallelism: 32, owner: OWNER.into(), alert_defaults: AlertDefaults::default() };
    let mut scheduler = Scheduler::new(store.clone(), settings, Scope::All);
    scheduler.set_dags(&versions);
    Fixture { _dir: dir, store, scheduler }
}

impl Fixture {
    fn manual_run(&self, dag_id: &str, logical_date: DateTime<Utc>) -> String {
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
        run.run_id
    }

    /// Plays the worker's claim of a queued try.
    fn claim(&self, key: &TiKey, try_number: u32, now: DateTime<Utc>) {
        let change = TiChange {
            try_number: Some(try_number),
            start_date: Some(now),
            pid: Some(4242),
            owner: Some(OWNER.into()),
            guard_owner: Some(OWNER.into()),
            ..TiChange::default()
        };
        assert!(self.store.write(|tx| tx.set_ti_state(key, TaskState::Queued, TaskState::Running, &change)).unwrap());
    }

    /// Plays `worker::finish` for `Outcome::Reschedule { at: next }`: the same try again later.
    fn reschedule(
        &self,
        key: &TiKey,
        try_number: u32,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
    ) {
        let change = TiChange {
            end_date: Some(now),
            duration: Some(1.0),
            next_try_at: Some(next),
            try_number: Some(try_number - 1),
            guard_owner: Some(OWNER.into()),
            ..TiChange::default()
        };
        let poke =
            TaskReschedule { try_number, start_date: started, end_date: now, duration: 1.0, reschedule_date: next };
        self.store
            .write(|tx| {
                assert!(tx.set_ti_state(key, TaskState::Running, TaskState::UpForReschedule, &change)?);
                tx.insert_task_reschedule(key, &poke)
            })
            .unwrap();
    }

    fn succeed(&self, key: &TiKey, now: DateTime<Utc>) {
        let change = TiChange { end_date: Some(now), guard_owner: Some(OWNER.into()), ..TiChange::default() };
        assert!(self.store.write(|tx| tx.set_ti_state(key, TaskState::Running, TaskState::Success, &change)).unwrap());
    }

    fn ti(&self, key: &TiKey) -> rhaiflow::store::TiRow {
        self.store.read(|tx| tx.task_instance(key)).unwrap().unwrap()
    }

    fn pokes(&self, key: &TiKey, try_number: u32) -> Option<(DateTime<Utc>, u32)> {
        self.store.read(|tx| tx.task_reschedules(key, try_number)).unwrap()
    }
}

fn ids(pass: &rhaiflow::scheduler::Pass) -> Vec<(String, u32)> {
    pass.to_run.iter().map(|t| (t.key.task_id.clone(), t.try_number)).collect()
}

fn key(run_id: &str, task_id: &str) -> TiKey {
    TiKey { dag_id: "wait".into(), run_id: run_id.into(), task_id: task_id.into() }
}

const DAG: &str = r#"
let dag = DAG("wait", #{ start_date: datetime(2024, 1, 1), schedule: () });
let sensor = FileSensor(#{ task_id: "sensor", filepath: "/nonexistent/*.csv", mode: "reschedule",
                           poke_interval: minutes(5), pool: "one" });
let other = BashOperator(#{ task_id: "other", bash_command: "true", pool: "one" });
let after = EmptyOperator(#{ task_id: "after" });
sensor >> after;
"#;

#[test]
fn a_rescheduled_sensor_holds_no_slot_and_its_timer_wakes_the_same_try() {
    let mut f = fixture(DAG);
    let run_id = f.manual_run("wait", at(0, 0));
    let (sensor, other) = (key(&run_id, "sensor"), key(&run_id, "other"));

    // One slot in pool `one`: the sensor (first in the DAG) takes it.
    let pass = f.scheduler.pass(at(0, 0)).unwrap();
    assert_eq!(ids(&pass), vec![("sensor".to_string(), 1)]);
    f.claim(&sensor, 1, at(0, 0));
    f.reschedule(&sensor, 1, at(0, 0), at(0, 1), at(0, 6));

    // Between pokes: no owner, no process, the stored try back to 0 (the next poke is try 1
    // again), and the slot is free for `other`.
    let pass = f.scheduler.pass(at(0, 1)).unwrap();
    assert_eq!(ids(&pass), vec![("other".to_string(), 1)]);
    assert_eq!(pass.next_wake, Some(at(0, 6)), "the scheduler wakes at the next poke time");
    let row = f.ti(&sensor);
    assert_eq!(row.state, TaskState::UpForReschedule);
    assert_eq!((row.owner, row.pid, row.pid_token), (None, None, None));
    assert_eq!(row.try_number, 0);
    assert_eq!(row.next_try_at, Some(at(0, 6)));
    assert_eq!(f.pokes(&sensor, 1), Some((at(0, 0), 1)));

    f.claim(&other, 1, at(0, 2));
    f.succeed(&other, at(0, 3));
    let pass = f.scheduler.pass(at(0, 3)).unwrap();
    assert!(pass.to_run.is_empty(), "not before its time: {:?}", ids(&pass));
    assert_eq!(f.store.read(|tx| tx.dag_runs("wait")).unwrap()[0].state, DagRunState::Running);
    assert_eq!(pass.next_wake, Some(at(0, 6)));

    // Its time: queued as the same try.
    let pass = f.scheduler.pass(at(0, 6)).unwrap();
    assert_eq!(ids(&pass), vec![("sensor".to_string(), 1)]);
    f.claim(&sensor, 1, at(0, 6));
    f.reschedule(&sensor, 1, at(0, 6), at(0, 7), at(0, 12));
    assert_eq!(f.pokes(&sensor, 1), Some((at(0, 0), 2)), "the first poke of the try still starts its timeout");

    let pass = f.scheduler.pass(at(0, 12)).unwrap();
    assert_eq!(ids(&pass), vec![("sensor".to_string(), 1)]);
    f.claim(&sensor, 1, at(0, 12));
    f.succeed(&sensor, at(0, 12));
    let pass = f.scheduler.pass(at(0, 12)).unwrap();
    assert_eq!(pass.finished_runs, vec![("wait".to_string(), run_id.clone(), DagRunState::Success)]);
    assert_eq!(f.ti(&sensor).try_number, 1, "three pokes, one try");
}

#[test]
fn dagrun_timeout_skips_a_sensor_waiting_for_its_next_poke() {
    let src = DAG.replace("schedule: () }", "schedule: (), dagrun_timeout: minutes(4) }");
    let mut f = fixture(&src);
    let run_id = f.manual_run("wait", at(0, 0));
    let sensor = key(&run_id, "sensor");
    f.scheduler.pass(at(0, 0)).unwrap();
    f.claim(&sensor, 1, at(0, 0));
    f.reschedule(&sensor, 1, at(0, 0), at(0, 1), at(0, 30));
    let pass = f.scheduler.pass(at(0, 1)).unwrap();
    assert_eq!(pass.next_wake, Some(at(0, 4)), "the run's timeout comes before the next poke");
    let other = key(&run_id, "other");
    f.claim(&other, 1, at(0, 1));
    f.succeed(&other, at(0, 2));
    let pass = f.scheduler.pass(at(0, 5)).unwrap();
    assert_eq!(pass.finished_runs, vec![("wait".to_string(), run_id.clone(), DagRunState::Failed)]);
    assert_eq!(f.ti(&sensor).state, TaskState::Skipped);
}

#[test]
fn clearing_a_rescheduled_sensor_resets_it_and_its_timeout() {
    let mut f = fixture(DAG);
    let run_id = f.manual_run("wait", at(0, 0));
    let sensor = key(&run_id, "sensor");
    f.scheduler.pass(at(0, 0)).unwrap();
    f.claim(&sensor, 1, at(0, 0));
    f.reschedule(&sensor, 1, at(0, 0), at(0, 1), at(2, 0));
    assert!(f.pokes(&sensor, 1).is_some());

    let cleared =
        rhaiflow::app::clear_run(&f.store, "wait", &run_id, |ti| (ti.key.task_id == "sensor").then_some(0), at(0, 2))
            .unwrap();
    assert_eq!(cleared, 1);
    let row = f.ti(&sensor);
    assert_eq!((row.state, row.next_try_at), (TaskState::None, None));
    assert_eq!(f.pokes(&sensor, 1), None, "its earlier pokes are forgotten: the next one starts its timeout");

    // It runs again at once, not at the old reschedule time.
    let pass = f.scheduler.pass(at(0, 2)).unwrap();
    assert!(ids(&pass).contains(&("sensor".to_string(), 1)), "{:?}", ids(&pass));
}
