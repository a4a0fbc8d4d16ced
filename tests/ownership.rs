//! Processes own their task instances: a scheduler, a backfill and a `dags test` side by side on
//! one database leave each other's tries alone; a successor takes over only what a dead owner
//! left (killing a group that still runs, even after `exec`), a killed try waits its
//! `retry_delay`, a stopped backfill or `dags test` resumes, and Ctrl-C / SIGTERM stop cleanly.

mod common;

use common::{Home, process_alive, wait_until};
use nix::sys::signal::Signal;

/// A DAG whose one task records its pid and a trace line, then waits for the file `go`.
fn waiting_dag(retries: u32, retry_delay: &str) -> String {
    format!(
        r#"let d = DAG("own", #{{ schedule: "@daily", start_date: datetime(2024, 1, 1), end_date: datetime(2024, 1, 5), catchup: false }});
let t = BashOperator(#{{ task_id: "work", retries: {retries}, retry_delay: {retry_delay},
    bash_command: "echo $$ >> $HOME_DIR/pids; echo start >> $HOME_DIR/trace; while [ ! -e $HOME_DIR/go ]; do sleep 0.02; done; echo end >> $HOME_DIR/trace" }});"#
    )
}

fn pids(home: &Home) -> Vec<i32> {
    home.file("pids").lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn wait_for_pids(home: &Home, n: usize) -> Vec<i32> {
    wait_until(&format!("{n} tries started"), || Some(pids(home)).filter(|p| p.len() >= n))
}

fn go(home: &Home) {
    std::fs::write(home.path().join("go"), "").unwrap();
}

/// Waits until a scheduler has finished starting (its wake socket exists).
fn wait_for_scheduler(home: &Home) {
    wait_until("the scheduler to start", || home.path().join("rhaiflow.sock").exists().then_some(()));
}

#[test]
fn a_scheduler_starting_beside_dags_test_leaves_its_task_alone() {
    let home = Home::new(&[("own.rhai", &waiting_dag(1, "seconds(0)"))]);
    let mut test = home.spawn(&["dags", "test", "own", "2024-01-02"]);
    let first = wait_for_pids(&home, 1)[0];
    let _scheduler = home.spawn(&["scheduler"]);
    wait_for_scheduler(&home);
    assert!(process_alive(first), "the scheduler killed the task of a running `dags test`");
    go(&home);
    let (code, out, err) = test.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(home.file("trace"), "start\nend\n", "the try ran once, untouched");
    assert!(out.contains("run manual__2024-01-02T00:00:00+00:00 success"), "{out}");
}

#[test]
fn a_scheduler_starting_beside_a_backfill_leaves_its_task_alone() {
    let home = Home::new(&[("own.rhai", &waiting_dag(1, "seconds(0)"))]);
    let mut backfill =
        home.spawn(&["dags", "backfill", "own", "--start-date", "2024-01-01", "--end-date", "2024-01-01"]);
    let first = wait_for_pids(&home, 1)[0];
    let _scheduler = home.spawn(&["scheduler"]);
    wait_for_scheduler(&home);
    assert!(process_alive(first), "the scheduler killed the task of a running backfill");
    go(&home);
    let (code, out, err) = backfill.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(home.file("trace"), "start\nend\n");
    assert!(out.contains("1 run(s) succeeded, 0 failed"), "{out}");
}

#[test]
fn a_backfill_run_again_after_kill_9_resumes_the_runs_it_left() {
    let home = Home::new(&[("own.rhai", &waiting_dag(1, "seconds(0)"))]);
    let args = ["dags", "backfill", "own", "--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    let mut backfill = home.spawn(&args);
    let first = wait_for_pids(&home, 1)[0];
    backfill.kill_9();
    assert!(process_alive(first), "the task outlives its killed owner");
    let mut again = home.spawn(&args);
    // The stale try is taken over: its process group is killed and it fails; the retry runs.
    wait_for_pids(&home, 2);
    assert!(!process_alive(first), "the stale try's process must be killed before its retry runs");
    go(&home);
    let (code, out, err) = again.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("resuming scheduled__") || out.contains("resuming backfill__"), "{out}");
    assert!(out.contains("1 run(s) succeeded, 0 failed"), "{out}");
    let runs = home.runs("own");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "success");
    assert_eq!(home.file("trace"), "start\nstart\nend\n");
}

#[test]
fn dags_test_run_again_on_the_same_date_takes_over_its_stale_try() {
    let home = Home::new(&[("own.rhai", &waiting_dag(0, "seconds(0)"))]);
    let mut test = home.spawn(&["dags", "test", "own", "2024-01-02"]);
    let first = wait_for_pids(&home, 1)[0];
    test.kill_9();
    let mut again = home.spawn(&["dags", "test", "own", "2024-01-02"]);
    wait_for_pids(&home, 2);
    assert!(!process_alive(first), "the stale try's process must be killed");
    go(&home);
    let (code, out, err) = again.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("success"), "{out}");
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    assert_eq!(
        home.states("own", run_id),
        vec![("work".to_string(), "success".to_string(), 1)],
        "the run with the stale try was replaced by a new one, of one try"
    );
    assert_eq!(home.runs("own").len(), 1);
}

#[test]
fn a_try_killed_with_its_scheduler_waits_its_retry_delay() {
    let home = Home::new(&[("own.rhai", &waiting_dag(1, "hours(1)"))]);
    let mut scheduler = home.spawn(&["scheduler"]);
    wait_for_scheduler(&home);
    let o = home.run(&["dags", "trigger", "own", "--logical-date", "2024-01-02"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = wait_for_pids(&home, 1)[0];
    scheduler.kill_9();
    let _again = home.spawn(&["scheduler"]);
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    wait_until("the killed try to be up for retry", || {
        (home.states("own", run_id)[0].1 == "up_for_retry").then_some(())
    });
    assert!(!process_alive(first), "the orphaned try was killed");
    let next_try: String =
        home.db().query_row("SELECT next_try_at FROM task_instance WHERE dag_id = 'own'", [], |r| r.get(0)).unwrap();
    let next_try = chrono::DateTime::parse_from_rfc3339(&next_try).unwrap();
    let wait = next_try.signed_duration_since(chrono::Utc::now());
    assert!(wait > chrono::TimeDelta::minutes(50), "the retry waits its hour, not {wait}");
    assert_eq!(pids(&home).len(), 1, "no second try yet");
}

#[test]
fn exec_in_a_command_does_not_hide_its_process_from_recovery() {
    let dag = r#"let d = DAG("ex", #{ schedule: (), start_date: datetime(2024, 1, 1) });
let t = BashOperator(#{ task_id: "work", bash_command: "echo $$ >> $HOME_DIR/pids; exec sleep 300" });"#;
    let home = Home::new(&[("ex.rhai", dag)]);
    let mut scheduler = home.spawn(&["scheduler"]);
    wait_for_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "ex", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, 1)[0];
    wait_until("the command to exec", || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.starts_with(b"sleep").then_some(())
    });
    scheduler.kill_9();
    let _again = home.spawn(&["scheduler"]);
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    wait_until("the orphaned try to fail", || (home.states("ex", run_id)[0].1 == "failed").then_some(()));
    assert!(!process_alive(pid), "the exec'd process of a dead owner's try must be killed, not left running");
}

#[test]
fn ctrl_c_stops_dags_test_now_and_records_the_try() {
    let home = Home::new(&[("own.rhai", &waiting_dag(0, "seconds(0)"))]);
    let mut test = home.spawn(&["dags", "test", "own", "2024-01-02"]);
    let pid = wait_for_pids(&home, 1)[0];
    test.signal(Signal::SIGINT);
    let (code, out, err) = test.finish();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("interrupted"), "{out}");
    assert!(!process_alive(pid), "the running try is terminated");
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    assert_eq!(home.states("own", run_id)[0].1, "failed", "the try's outcome is recorded");
    // And the same date can be tested again at once.
    go(&home);
    let o = home.run(&["dags", "test", "own", "2024-01-02"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn sigterm_during_start_up_stops_the_scheduler_cleanly() {
    // A file that takes its whole (raised) deadline to evaluate keeps the scheduler in start-up.
    let slow = "let n = 0; loop { n += 1; }";
    let home = Home::new(&[("slow.rhai", slow), ("own.rhai", &waiting_dag(0, "seconds(0)"))]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[core]\ndag_file_timeout = 3.0\n").unwrap();
    let mut scheduler = home.spawn(&["scheduler"]);
    // Until the runtime is up the signal's default action would apply; the database file exists
    // only after that.
    wait_until("the scheduler to open its database", || home.path().join("rhaiflow.db").exists().then_some(()));
    scheduler.signal(Signal::SIGTERM);
    let (code, _, err) = scheduler.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stopped during start-up"), "{err}");
    assert!(home.runs("own").is_empty(), "nothing was scheduled");
}

#[test]
fn a_backfill_over_a_huge_range_is_refused_before_anything_is_written() {
    let dag = r#"let d = DAG("hourly", #{ schedule: "@hourly", start_date: datetime(2000, 1, 1), catchup: false });
let t = EmptyOperator(#{ task_id: "a" });"#;
    let home = Home::new(&[("hourly.rhai", dag)]);
    let o = home.run(&["dags", "backfill", "hourly", "--start-date", "2000-01-01", "--end-date", "9999-12-31"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("the range holds more than 10000 runs of `hourly`; backfill a shorter range"), "{err}");
    assert!(home.runs("hourly").is_empty(), "nothing was created");
}
