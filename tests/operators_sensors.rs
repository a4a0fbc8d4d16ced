//! Sensors end to end through the real binary (`dags test` drives the scheduler and the worker):
//! files appearing under a glob, a `BashSensor` done on its third poke, timeouts with and without
//! `soft_fail`, reschedule mode (no owner or process between pokes, one try, the timer wakes a time
//! sensor at its target), and `ExternalTaskSensor` against a real second DAG.

mod common;

use common::{Home, wait_until};

const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn both(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

fn state_of(home: &Home, dag_id: &str, task_id: &str) -> String {
    let run_id = home.runs(dag_id)[0]["run_id"].as_str().unwrap().to_string();
    let states = home.states(dag_id, &run_id);
    states.into_iter().find(|(t, _, _)| t == task_id).map(|(_, s, _)| s).unwrap_or_default()
}

fn log_of(home: &Home, dag_id: &str, task_id: &str) -> String {
    let run_id = home.runs(dag_id)[0]["run_id"].as_str().unwrap().to_string();
    home.log(dag_id, &run_id, task_id)
}

/// `(state, owner, pid)` of a task instance as the database holds it now, if it exists.
fn ti_row(home: &Home, dag_id: &str, task_id: &str) -> Option<(String, Option<String>, Option<i64>)> {
    if !home.path().join("rhaiflow.db").exists() {
        return None;
    }
    let db = home.db();
    db.query_row(
        "SELECT state, owner, pid FROM task_instance WHERE dag_id = ?1 AND task_id = ?2",
        [dag_id, task_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .ok()
}

#[test]
fn a_file_sensor_waits_for_a_file_matching_its_glob() {
    let dag = format!(
        r#"let dag = DAG("files", #{{ {MANUAL} }});
        let wait = FileSensor(#{{ task_id: "wait", filepath: "$HOME_DIR/landing/**/*.csv", recursive: true, poke_interval: 0.1, timeout: 60 }});
        let load = BashOperator(#{{ task_id: "load", bash_command: "echo loaded" }});
        wait >> load;"#
    );
    let home = Home::new(&[("files.rhai", &dag)]);
    std::fs::create_dir_all(home.path().join("landing/2024/01")).unwrap();
    std::fs::write(home.path().join("landing/2024/01/notes.txt"), "not a csv").unwrap();
    let mut test = home.spawn(&["dags", "test", "files", "2024-01-01"]);
    // Poked at least twice without a match, then the file lands.
    let log = home.path().join("logs/dag_id=files/run_id=manual__2024-01-01T00:00:00+00:00/task_id=wait/attempt=1.log");
    wait_until("two pokes", || {
        (std::fs::read_to_string(&log).unwrap_or_default().matches("Poking for file").count() >= 2).then_some(())
    });
    assert_eq!(ti_row(&home, "files", "wait").map(|r| r.0).as_deref(), Some("running"));
    std::fs::write(home.path().join("landing/2024/01/day.csv.part"), "1").unwrap();
    std::fs::rename(home.path().join("landing/2024/01/day.csv.part"), home.path().join("landing/2024/01/day.csv"))
        .unwrap();
    let (code, out, err) = test.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(state_of(&home, "files", "load"), "success");
    let log = log_of(&home, "files", "wait");
    assert!(log.contains(&format!("Poking for file {}/landing/**/*.csv", home.path().display())), "{log}");
    assert!(log.contains("Found file ") && log.contains("landing/2024/01/day.csv"), "{log}");
    assert!(log.contains("Success criteria met. Exiting."), "{log}");
}

#[test]
fn a_bash_sensor_succeeds_on_its_third_poke_with_each_pokes_output_in_its_log() {
    let dag = format!(
        r#"let dag = DAG("bashy", #{{ {MANUAL} }});
        let wait = BashSensor(#{{ task_id: "wait", poke_interval: 0.1,
            bash_command: "n=$(cat $HOME_DIR/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > $HOME_DIR/count; echo poke $n; [ $n -ge 3 ] || exit 1" }});"#
    );
    let home = Home::new(&[("bashy.rhai", &dag)]);
    let o = home.run(&["dags", "test", "bashy", "2024-01-01"]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(home.file("count").trim(), "3");
    let log = log_of(&home, "bashy", "wait");
    for n in 1..=3 {
        assert!(log.contains(&format!("poke {n}\n")), "{log}");
    }
    assert_eq!(log.matches("Command exited with return code 1: not done yet").count(), 2, "{log}");
    assert_eq!(log.matches("try 1 of 1").count(), 1, "poke mode: one claim for every poke: {log}");
}

#[test]
fn a_bash_sensor_exiting_with_another_code_fails_at_once_or_with_soft_fail_is_skipped() {
    let dag = format!(
        r#"let dag = DAG("broken", #{{ {MANUAL} }});
        let hard = BashSensor(#{{ task_id: "hard", poke_interval: 0.1, bash_command: "echo no such host >&2; exit 2" }});
        let soft = BashSensor(#{{ task_id: "soft", poke_interval: 0.1, soft_fail: true, bash_command: "exit 3" }});"#
    );
    let home = Home::new(&[("broken.rhai", &dag)]);
    let o = home.run(&["dags", "test", "broken", "2024-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert_eq!(state_of(&home, "broken", "hard"), "failed");
    assert_eq!(state_of(&home, "broken", "soft"), "skipped");
    let log = log_of(&home, "broken", "hard");
    assert!(log.contains("no such host"), "{log}");
    assert!(log.contains("Command exited with return code 2; marking task as FAILED"), "{log}");
    assert_eq!(log.matches("Running command").count(), 1, "{log}");
    let log = log_of(&home, "broken", "soft");
    assert!(
        log.contains(
            "Command exited with return code 3 (skipping due to soft_fail is set to True); marking task as SKIPPED"
        ),
        "{log}"
    );
}

#[test]
fn a_sensor_past_its_timeout_fails_and_with_soft_fail_is_skipped() {
    let dag = format!(
        r#"let dag = DAG("late", #{{ {MANUAL} }});
        let hard = FileSensor(#{{ task_id: "hard", filepath: "$HOME_DIR/never/*", poke_interval: 0.1, timeout: 0.5,
            retries: 3, retry_delay: 0 }});
        let soft = FileSensor(#{{ task_id: "soft", filepath: "$HOME_DIR/never/*", poke_interval: 0.1, timeout: 0.5, soft_fail: true }});
        let after_soft = BashOperator(#{{ task_id: "after_soft", bash_command: "echo should not run" }});
        soft >> after_soft;"#
    );
    let home = Home::new(&[("late.rhai", &dag)]);
    let o = home.run(&["dags", "test", "late", "2024-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert_eq!(state_of(&home, "late", "hard"), "failed");
    assert_eq!(state_of(&home, "late", "soft"), "skipped");
    assert_eq!(state_of(&home, "late", "after_soft"), "skipped", "the skip propagates");
    let hard = log_of(&home, "late", "hard");
    assert!(hard.contains("Sensor has timed out; run duration of "), "{hard}");
    assert!(hard.contains("exceeds the specified timeout of 0.5; marking task as FAILED"), "{hard}");
    assert!(hard.matches("Poking for file").count() >= 2, "{hard}");
    let run_id = home.runs("late")[0]["run_id"].as_str().unwrap().to_string();
    let tries = home.states("late", &run_id).into_iter().find(|(t, _, _)| t == "hard").map(|(_, _, n)| n);
    assert_eq!(tries, Some(1), "a timed-out sensor fails whatever its retries, as Airflow's AirflowSensorTimeout");
    let soft = log_of(&home, "late", "soft");
    assert!(soft.contains("Sensor has timed out") && soft.contains("marking task as SKIPPED"), "{soft}");
}

#[test]
fn in_reschedule_mode_a_sensor_gives_back_its_slot_between_pokes_as_one_try() {
    let dag = format!(
        r#"let dag = DAG("resched", #{{ {MANUAL} }});
        let wait = BashSensor(#{{ task_id: "wait", mode: "reschedule", poke_interval: 1,
            bash_command: "n=$(cat $HOME_DIR/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > $HOME_DIR/count; echo poke $n; [ $n -ge 3 ] || exit 1" }});"#
    );
    let home = Home::new(&[("resched.rhai", &dag)]);
    let mut test = home.spawn(&["dags", "test", "resched", "2024-01-01"]);
    // Between pokes: `up_for_reschedule`, nobody owns it, no process is recorded.
    let between = wait_until("the sensor waiting for its next poke", || {
        ti_row(&home, "resched", "wait").filter(|r| r.0 == "up_for_reschedule")
    });
    assert_eq!(between, ("up_for_reschedule".to_string(), None, None));
    let (code, out, err) = test.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("up_for_reschedule").count(), 2, "{out}");
    let run_id = home.runs("resched")[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(home.states("resched", &run_id), vec![("wait".to_string(), "success".to_string(), 1)]);
    let log = log_of(&home, "resched", "wait");
    assert_eq!(log.matches("try 1 of 1").count(), 3, "three claims of the same try: {log}");
    assert_eq!(log.matches("(UP_FOR_RESCHEDULE)").count(), 2, "{log}");
    assert!(!home.path().join(format!("logs/dag_id=resched/run_id={run_id}/task_id=wait/attempt=2.log")).exists());
    let pokes: i64 = home
        .db()
        .query_row("SELECT COUNT(*) FROM task_reschedule WHERE task_id = 'wait' AND try_number = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pokes, 2);
}

#[test]
fn a_rescheduled_date_time_sensor_is_woken_at_its_target_not_a_poke_interval_later() {
    // The target is six seconds away; the poke interval is an hour. Only the scheduler's timer
    // waking the sensor at its target lets `dags test` end within the test's deadline.
    let target =
        (chrono::Utc::now() + chrono::Duration::seconds(6)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let dag = format!(
        r#"let dag = DAG("clock", #{{ {MANUAL} }});
        let wait = DateTimeSensor(#{{ task_id: "wait", mode: "reschedule", poke_interval: hours(1), target_time: "{target}" }});"#
    );
    let home = Home::new(&[("clock.rhai", &dag)]);
    let o = home.run(&["dags", "test", "clock", "2024-01-01"]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(state_of(&home, "clock", "wait"), "success");
    let next: String = home
        .db()
        .query_row("SELECT reschedule_date FROM task_reschedule WHERE task_id = 'wait'", [], |r| r.get(0))
        .unwrap();
    let next = chrono::DateTime::parse_from_str(&next, "%Y-%m-%d %H:%M:%S%.f%:z").unwrap();
    assert_eq!(next, chrono::DateTime::parse_from_rfc3339(&target).unwrap(), "rescheduled to its target");
    let log = log_of(&home, "clock", "wait");
    assert!(log.contains(&format!("rescheduling the task to {target}")), "{log}");
}

#[test]
fn a_time_delta_sensor_waits_past_the_end_of_its_data_interval() {
    let dag = format!(
        r#"let dag = DAG("delta", #{{ {MANUAL} }});
        let soon = TimeDeltaSensor(#{{ task_id: "past", delta: hours(1), poke_interval: 0.1 }});
        let never = TimeDeltaSensor(#{{ task_id: "future", delta: days(36500), poke_interval: 0.1, timeout: 0.3, soft_fail: true }});"#
    );
    let home = Home::new(&[("delta.rhai", &dag)]);
    let o = home.run(&["dags", "test", "delta", "2024-01-01"]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(state_of(&home, "delta", "past"), "success");
    assert_eq!(state_of(&home, "delta", "future"), "skipped");
    let log = log_of(&home, "delta", "past");
    assert!(log.contains("Checking if the time (2024-01-01T01:00:00Z) has come"), "{log}");
}

const UPSTREAM: &str = r#"
let ok = DAG("up_ok", #{ start_date: datetime(2024, 1, 1), schedule: () });
let t = BashOperator(#{ task_id: "t", dag: ok, bash_command: "echo done" });
let u = BashOperator(#{ task_id: "u", dag: ok, bash_command: "echo done" });
let bad = DAG("up_bad", #{ start_date: datetime(2024, 1, 1), schedule: () });
let t2 = BashOperator(#{ task_id: "t", dag: bad, bash_command: "echo done" });
let b = BashOperator(#{ task_id: "bad", dag: bad, bash_command: "exit 1" });
"#;

#[test]
fn an_external_task_sensor_reads_another_dags_run() {
    let down = r#"
let dag = DAG("down", #{ start_date: datetime(2024, 1, 1), schedule: () });
let fast = #{ poke_interval: 0.1, timeout: 30, execution_delta: hours(24) };
let one = ExternalTaskSensor(fast + #{ task_id: "one", external_dag_id: "up_ok", external_task_id: "t" });
let list = ExternalTaskSensor(fast + #{ task_id: "list", external_dag_id: "up_ok", external_task_ids: ["t", "u"] });
let whole = ExternalTaskSensor(fast + #{ task_id: "whole", external_dag_id: "up_ok" });
let failed = ExternalTaskSensor(fast + #{ task_id: "failed", external_dag_id: "up_bad",
    external_task_ids: ["t", "bad"], failed_states: ["failed"] });
let whole_failed = ExternalTaskSensor(fast + #{ task_id: "whole_failed", external_dag_id: "up_bad",
    allowed_states: ["failed"] });
let missing_task = ExternalTaskSensor(fast + #{ task_id: "missing_task", external_dag_id: "up_ok",
    external_task_id: "nope", check_existence: true });
let missing_dag = ExternalTaskSensor(fast + #{ task_id: "missing_dag", external_dag_id: "ghost", check_existence: true });
let same_day = ExternalTaskSensor(#{ task_id: "same_day", external_dag_id: "up_ok", external_task_id: "t",
    poke_interval: 0.1, timeout: 0.5, soft_fail: true });
"#;
    let home = Home::new(&[("up.rhai", UPSTREAM), ("down.rhai", down)]);
    let o = home.run(&["dags", "test", "up_ok", "2024-01-01"]);
    assert!(o.status.success(), "{}", both(&o));
    let o = home.run(&["dags", "test", "up_bad", "2024-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    // A day later, looking a day back (`execution_delta`).
    let o = home.run(&["dags", "test", "down", "2024-01-02"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    for (task, state) in [
        ("one", "success"),
        ("list", "success"),
        ("whole", "success"),
        ("failed", "failed"),
        ("whole_failed", "success"),
        ("same_day", "skipped"),
        ("missing_task", "failed"),
        ("missing_dag", "failed"),
    ] {
        assert_eq!(state_of(&home, "down", task), state, "{task}");
    }
    let log = log_of(&home, "down", "one");
    assert!(log.contains("Poking for tasks [\"t\"] in dag up_ok on 2024-01-01T00:00:00+00:00"), "{log}");
    let log = log_of(&home, "down", "failed");
    assert!(
        log.contains("Some of the external tasks [\"t\", \"bad\"] in DAG up_bad failed; marking task as FAILED"),
        "{log}"
    );
    assert_eq!(log.matches("Poking for tasks").count(), 1, "failed at the first poke: {log}");
    let log = log_of(&home, "down", "missing_task");
    assert!(log.contains("The external task nope in DAG up_ok does not exist; marking task as FAILED"), "{log}");
    let log = log_of(&home, "down", "missing_dag");
    assert!(log.contains("The external DAG ghost does not exist; marking task as FAILED"), "{log}");
    let log = log_of(&home, "down", "same_day");
    assert!(log.contains("on 2024-01-02T00:00:00+00:00") && log.contains("Sensor has timed out"), "{log}");
}

#[test]
fn external_task_sensor_arguments_are_checked_where_they_are_written() {
    let dag = r#"
let dag = DAG("bad_args", #{ start_date: datetime(2024, 1, 1), schedule: () });
let a = ExternalTaskSensor(#{ task_id: "a", external_dag_id: "x", external_task_id: "t", external_task_ids: ["u"] });
let b = ExternalTaskSensor(#{ task_id: "b", external_dag_id: "x", external_task_id: "t", allowed_states: ["sucess"] });
let c = ExternalTaskSensor(#{ task_id: "c", external_dag_id: "x", allowed_states: ["failed"], failed_states: ["failed"] });
let d = ExternalTaskSensor(#{ task_id: "d", external_dag_id: "x", allowed_states: ["skipped"] });
"#;
    let home = Home::new(&[("bad_args.rhai", dag)]);
    let o = home.run(&["dags", "check"]);
    let out = both(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("give one of `external_task_id` and `external_task_ids`, not both"), "{out}");
    assert!(out.contains("`allowed_states` holds `sucess`, which is not a task instance state"), "{out}");
    assert!(out.contains("did you mean `success`?"), "{out}");
    assert!(out.contains("`failed` is in both `allowed_states` and `failed_states`"), "{out}");
    assert!(out.contains("`allowed_states` holds `skipped`, which is not a DAG run state"), "{out}");
}

#[test]
fn execution_timeout_stops_a_bash_sensors_poke_and_its_process_group() {
    let dag = format!(
        r#"let dag = DAG("stuck", #{{ {MANUAL} }});
        let wait = BashSensor(#{{ task_id: "wait", poke_interval: 0.1, execution_timeout: 1,
            bash_command: "sleep 300 & echo $! > $HOME_DIR/child; wait" }});"#
    );
    let home = Home::new(&[("stuck.rhai", &dag)]);
    let o = home.run(&["dags", "test", "stuck", "2024-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert_eq!(state_of(&home, "stuck", "wait"), "failed");
    let log = log_of(&home, "stuck", "wait");
    assert!(log.contains("execution_timeout of 0:00:01 exceeded; marking task as FAILED"), "{log}");
    let child: i32 = home.file("child").trim().parse().expect("the poke started its child");
    wait_until("the poke's process group to be gone", || (!common::process_alive(child)).then_some(()));
}

#[test]
fn in_reschedule_mode_the_timeout_spans_the_pokes_of_the_try() {
    let dag = format!(
        r#"let dag = DAG("patience", #{{ {MANUAL} }});
        let hard = FileSensor(#{{ task_id: "hard", filepath: "$HOME_DIR/never", mode: "reschedule", poke_interval: 0.2, timeout: 1 }});
        let soft = FileSensor(#{{ task_id: "soft", filepath: "$HOME_DIR/never", mode: "reschedule", poke_interval: 0.2, timeout: 1, soft_fail: true }});"#
    );
    let home = Home::new(&[("patience.rhai", &dag)]);
    let o = home.run(&["dags", "test", "patience", "2024-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert_eq!(state_of(&home, "patience", "hard"), "failed");
    assert_eq!(state_of(&home, "patience", "soft"), "skipped");
    for task in ["hard", "soft"] {
        let log = log_of(&home, "patience", task);
        assert!(log.matches("(UP_FOR_RESCHEDULE)").count() >= 2, "{log}");
        assert!(log.contains("Sensor has timed out; run duration of "), "{log}");
        assert_eq!(log.matches("try 1 of 1").count(), log.matches("Poking for file").count(), "{log}");
    }
}

#[test]
fn tasks_test_pokes_a_sensor_without_a_claimed_try() {
    let dag = format!(
        r#"let dag = DAG("alone", #{{ {MANUAL} }});
        let wait = BashSensor(#{{ task_id: "wait", poke_interval: 0.1,
            bash_command: "n=$(cat $HOME_DIR/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > $HOME_DIR/count; [ $n -ge 2 ] || exit 1" }});
        let later = FileSensor(#{{ task_id: "later", filepath: "$HOME_DIR/never", mode: "reschedule", poke_interval: 60 }});"#
    );
    let home = Home::new(&[("alone.rhai", &dag)]);
    // With a database (another command made it) and without.
    for migrate in [false, true] {
        if migrate {
            assert!(home.run(&["db", "migrate"]).status.success());
            std::fs::remove_file(home.path().join("count")).unwrap();
        }
        let o = home.run(&["tasks", "test", "alone", "wait", "2024-01-01"]);
        assert!(o.status.success(), "{}", both(&o));
        assert!(stdout(&o).contains("[rhaiflow] alone.wait: success"), "{}", both(&o));
        assert_eq!(home.file("count").trim(), "2");
        let o = home.run(&["tasks", "test", "alone", "later", "2024-01-01"]);
        assert!(stdout(&o).contains("[rhaiflow] alone.later: not done yet; it would poke again at "), "{}", both(&o));
    }
}
