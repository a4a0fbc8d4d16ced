//! `LatestOnlyOperator` through the binary: a backfill of past dates skips the downstream tasks of
//! every run but the latest (and the skips propagate), a manual run (`dags test`) runs them.
//! The window arithmetic itself, with the clock as an input, is tested in `operators::latest_only`.

mod common;

use chrono::{Duration, Utc};
use common::Home;

const DAG: &str = r#"let dag = DAG("lo", #{ start_date: datetime(2020, 1, 1), schedule: "@daily", catchup: false });
let latest = LatestOnlyOperator(#{ task_id: "latest_only" });
let work = BashOperator(#{ task_id: "work", bash_command: "echo working" });
let after = BashOperator(#{ task_id: "after", bash_command: "echo after" });
let beside = BashOperator(#{ task_id: "beside", bash_command: "echo beside" });
let always = BashOperator(#{ task_id: "always", bash_command: "echo always", trigger_rule: "all_done" });
latest >> work >> after >> always;"#;

fn state_of(states: &[(String, String, u64)], task: &str) -> String {
    states.iter().find(|(t, _, _)| t == task).map(|(_, s, _)| s.clone()).unwrap_or_default()
}

#[test]
fn a_backfill_runs_the_downstream_tasks_only_in_its_latest_run() {
    let home = Home::new(&[("lo.rhai", DAG)]);
    // The day before yesterday and yesterday: yesterday's run covers [yesterday, today], the run
    // after it covers [today, tomorrow], which holds now.
    let today = Utc::now().date_naive();
    let (older, newest) = (today - Duration::days(2), today - Duration::days(1));
    let o = home.run(&["dags", "backfill", "lo", "-s", &older.to_string(), "-e", &newest.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let old = home.states("lo", &format!("backfill__{older}T00:00:00+00:00"));
    assert_eq!(state_of(&old, "latest_only"), "success");
    assert_eq!(state_of(&old, "work"), "skipped", "the direct downstream task is skipped: {old:?}");
    assert_eq!(state_of(&old, "after"), "skipped", "the skip propagates: {old:?}");
    assert_eq!(state_of(&old, "always"), "success", "all_done runs after skips: {old:?}");
    assert_eq!(state_of(&old, "beside"), "success", "a task not downstream is not touched: {old:?}");
    let log = home.log("lo", &format!("backfill__{older}T00:00:00+00:00"), "latest_only");
    assert!(log.contains("not latest execution, skipping downstream (work)"), "{log}");
    let new = home.states("lo", &format!("backfill__{newest}T00:00:00+00:00"));
    for task in ["latest_only", "work", "after", "always", "beside"] {
        assert_eq!(state_of(&new, task), "success", "{task} in the latest run: {new:?}");
    }
}

#[test]
fn a_manual_run_of_an_old_date_is_not_skipped() {
    let home = Home::new(&[("lo.rhai", DAG)]);
    let o = home.run(&["dags", "test", "lo", "2021-06-01"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let runs = home.runs("lo");
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    let states = home.states("lo", &run_id);
    assert!(states.iter().all(|(_, s, _)| s == "success"), "{states:?}");
    let log = home.log("lo", &run_id, "latest_only");
    assert!(log.contains("Externally triggered DAG_Run: allowing execution to proceed."), "{log}");
}
