//! `tasks clear` of a running task instance, as Airflow does it: the instance becomes
//! `restarting`, the worker that runs it notices on its next heartbeat, kills the try's process
//! group, and the task runs again at once as a new try that does not count against `retries`.

mod common;

use common::{Home, Running, process_alive, wait_until};

/// The first try records its pid and sleeps (its child `sleep` is in the same process group);
/// later tries record theirs and succeed.
const DAG: &str = r#"let d = DAG("rs", #{ schedule: (), start_date: datetime(2024, 1, 1) });
let w = BashOperator(#{ task_id: "work", retries: 0, bash_command: "echo $$ >> $HOME_DIR/pids; if [ -e $HOME_DIR/started ]; then echo again; else touch $HOME_DIR/started; sleep 300; fi" });
let a = BashOperator(#{ task_id: "after", bash_command: "echo after" });
w >> a;"#;

fn pids(home: &Home) -> Vec<i32> {
    home.file("pids").lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// `(state, try_number, max_tries)` of `work`, straight from the store.
fn work(home: &Home) -> Option<(String, u32, u32)> {
    home.db()
        .query_row(
            "SELECT state, try_number, max_tries FROM task_instance WHERE dag_id = 'rs' AND task_id = 'work'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

/// Starts the scheduler on a manual run of `rs`, waits for the first try to run, lets `clear`
/// clear it, and checks the try was killed (its first log saying `killed_by`) and the task ran
/// again; `heartbeat_timeout` goes to `rhaiflow.toml` when given.
fn cleared_while_running(heartbeat_timeout: Option<u32>, killed_by: &str, clear: impl FnOnce(&Home, &mut Running)) {
    let home = Home::new(&[("rs.rhai", DAG)]);
    if let Some(t) = heartbeat_timeout {
        std::fs::write(home.path().join("rhaiflow.toml"), format!("[scheduler]\ntask_heartbeat_timeout = {t}\n"))
            .unwrap();
    }
    let o = home.run(&["dags", "trigger", "rs"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut scheduler = home.spawn(&["scheduler"]);
    let first = wait_until("the first try to start", || pids(&home).first().copied());
    wait_until("the first try to be running", || work(&home).filter(|w| w.0 == "running"));
    assert!(process_alive(first));

    clear(&home, &mut scheduler);

    let second = wait_until("a second try to start", || pids(&home).get(1).copied());
    assert_ne!(first, second);
    assert!(!process_alive(first), "the cleared try's process ({first}) was killed");
    let (state, try_number, max_tries) =
        wait_until("the second try to succeed", || work(&home).filter(|w| w.0 == "success"));
    assert_eq!((state.as_str(), try_number, max_tries), ("success", 2, 1), "retries: 0, yet a second try ran");
    let run_id = home.runs("rs")[0]["run_id"].as_str().unwrap().to_string();
    wait_until("the run to succeed", || home.runs("rs")[0]["state"].as_str().filter(|s| *s == "success").map(|_| ()));
    let latest = common::unstamped(&home.log("rs", &run_id, "work"));
    assert!(latest.contains("again"), "the log shown is the latest try's: {latest}");
    let attempt1 =
        std::fs::read_to_string(home.path().join(format!("logs/dag_id=rs/run_id={run_id}/task_id=work/attempt=1.log")))
            .unwrap();
    assert!(attempt1.contains(killed_by), "{attempt1}");
    assert!(attempt1.contains("cleared while running: the task runs again now"), "{attempt1}");
    assert!(!attempt1.contains("marking task as"), "the killed try is not marked failed: {attempt1}");
    let after = home.states("rs", &run_id);
    assert!(after.iter().any(|(t, s, _)| t == "after" && s == "success"), "{after:?}");
}

/// The line a worker writes when it stops a try that is no longer `running`.
const WORKER_KILL: &str = "no longer running (cleared or marked meanwhile): killing process group";

/// What `tasks clear` writes, without the wake it sends.
fn make_restarting(home: &Home) {
    let n = home
        .db()
        .execute(
            "UPDATE task_instance SET state = 'restarting', max_tries = try_number
             WHERE dag_id = 'rs' AND task_id = 'work' AND state = 'running'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn clearing_a_running_task_kills_its_try_and_runs_it_again() {
    // The default heartbeat (10 s): `tasks clear` wakes the scheduler, whose worker looks at once.
    cleared_while_running(None, WORKER_KILL, |home, _| {
        let o = home.run(&["tasks", "clear", "rs", "--task-regex", "^work$", "--yes"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("cleared 1 task instance(s) of rs"), "{out}");
    });
}

#[test]
fn a_try_made_restarting_without_a_wake_is_stopped_at_its_heartbeat() {
    // A clear that could not reach the scheduler's socket: the try's heartbeat (every second,
    // a third of the timeout) finds it `restarting`.
    cleared_while_running(Some(3), WORKER_KILL, |home, _| make_restarting(home));
}

#[test]
fn a_restarting_try_left_by_a_dead_scheduler_is_killed_and_run_again_by_the_next() {
    // The clear lands while no scheduler runs (killed with -9, its try left running): the next
    // scheduler takes the try over as it would a running one, killing its orphaned process group,
    // and runs the task again at once.
    cleared_while_running(None, "[rhaiflow] taken over by", |home, scheduler| {
        scheduler.kill_9();
        make_restarting(home);
        *scheduler = home.spawn(&["scheduler"]);
    });
}
