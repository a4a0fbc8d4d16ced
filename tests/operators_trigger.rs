//! `TriggerDagRunOperator` through the real binary, against a real second DAG and a real SQLite
//! file: the triggered run is created and a scheduler runs it (woken at once, in its own process
//! or from `dags test` in another), `conf` reaches it, `wait_for_completion` follows its state,
//! `reset_dag_run` clears and reruns it, and a missing or paused DAG behaves as in Airflow.
//! Waits are for states in the store, with deadlines.

mod common;

use common::{Home, wait_until};

/// A DAG that only runs when triggered.
const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";

/// The target: echoes what its `conf` says (its last line is its XCom), and fails when its conf
/// has `fail`.
fn child() -> String {
    format!(
        r#"let dag = DAG("child", #{{ {MANUAL} }});
        let work = BashOperator(#{{
            task_id: "work",
            bash_command: "echo got-{{{{ dag_run.conf.x }}}}{{% if dag_run.conf.fail is defined %}}; exit 3{{% endif %}}",
        }});"#
    )
}

/// The value of an XCom, straight from the store.
fn xcom(home: &Home, dag_id: &str, run_id: &str, task_id: &str, key: &str) -> Option<serde_json::Value> {
    let db = home.db();
    let text: Option<String> = db
        .query_row(
            "SELECT value FROM xcom WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND key = ?4",
            [dag_id, run_id, task_id, key],
            |r| r.get(0),
        )
        .ok();
    text.map(|t| serde_json::from_str(&t).unwrap())
}

/// The run of `dag_id` with `run_id`, once it is finished.
fn finished(home: &Home, dag_id: &str, run_id: &str) -> serde_json::Value {
    wait_until(&format!("run {run_id} of {dag_id} to finish"), || {
        home.runs(dag_id)
            .into_iter()
            .find(|r| r["run_id"] == run_id && (r["state"] == "success" || r["state"] == "failed"))
    })
}

fn trigger(home: &Home, dag_id: &str, args: &[&str]) -> String {
    let mut all = vec!["dags", "trigger", dag_id, "--output", "json"];
    all.extend(args);
    let o = home.run(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    out["run_id"].as_str().unwrap().to_string()
}

#[test]
fn under_the_scheduler_the_triggered_run_gets_its_conf_and_runs_to_success() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let fire = TriggerDagRunOperator(#{{
            task_id: "go",
            trigger_dag_id: "{{{{ dag_run.conf.target }}}}",
            conf: #{{ x: "{{{{ dag_run.conf.who }}}}-{{{{ ds_nodash }}}}", list: ["{{{{ ds }}}}", 1] }},
            logical_date: "{{{{ ds }}}}T06:00:00+00:00",
            wait_for_completion: true,
            poke_interval: 0.1,
        }});
        let after = BashOperator(#{{ task_id: "after", bash_command: "echo {{{{ ti.xcom_pull(task_ids='go', key='trigger_run_id') }}}}" }});
        fire >> after;"#
    );
    let home = Home::new(&[("child.rhai", &child()), ("parent.rhai", &parent)]);
    let _scheduler = home.spawn(&["scheduler"]);
    let parent_run =
        trigger(&home, "parent", &["--logical-date", "2024-03-05", "--conf", r#"{"target": "child", "who": "luffy"}"#]);
    let run = finished(&home, "parent", &parent_run);
    assert_eq!(run["state"], "success", "{}", home.log("parent", &parent_run, "go"));

    let child_run = "manual__2024-03-05T06:00:00+00:00";
    let child_runs = home.runs("child");
    assert_eq!(child_runs.len(), 1);
    assert_eq!(child_runs[0]["run_id"], child_run);
    assert_eq!(child_runs[0]["state"], "success");
    // The conf's strings were rendered in the parent's context, and reached the child's template.
    assert_eq!(xcom(&home, "child", child_run, "work", "return_value"), Some("got-luffy-20240305".into()));
    let conf: serde_json::Value = home
        .db()
        .query_row("SELECT conf FROM dag_run WHERE dag_id = 'child'", [], |r| r.get::<_, String>(0))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(conf, serde_json::json!({ "x": "luffy-20240305", "list": ["2024-03-05", 1] }));
    // Airflow's XComs: the run id and the logical date; downstream tasks pull them.
    assert_eq!(xcom(&home, "parent", &parent_run, "go", "trigger_run_id"), Some(child_run.into()));
    assert_eq!(
        xcom(&home, "parent", &parent_run, "go", "trigger_logical_date_iso"),
        Some("2024-03-05T06:00:00+00:00".into())
    );
    assert_eq!(xcom(&home, "parent", &parent_run, "after", "return_value"), Some(child_run.into()));
    let log = common::unstamped(&home.log("parent", &parent_run, "go"));
    assert!(log.contains(&format!("Triggered DAG `child`: run `{child_run}`")), "{log}");
    assert!(log.contains("finished with allowed state `success`"), "{log}");
}

#[test]
fn wait_for_completion_fails_the_task_naming_the_state_of_a_failed_target() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let fire = TriggerDagRunOperator(#{{
            task_id: "go",
            trigger_dag_id: "child",
            conf: #{{ x: "1", fail: "yes" }},
            wait_for_completion: true,
            poke_interval: 0.1,
        }});
        let after = EmptyOperator(#{{ task_id: "after" }});
        fire >> after;"#
    );
    let home = Home::new(&[("child.rhai", &child()), ("parent.rhai", &parent)]);
    let _scheduler = home.spawn(&["scheduler"]);
    let parent_run = trigger(&home, "parent", &[]);
    let run = finished(&home, "parent", &parent_run);
    assert_eq!(run["state"], "failed");
    let states = home.states("parent", &parent_run);
    assert!(states.contains(&("go".into(), "failed".into(), 1)), "{states:?}");
    assert!(states.contains(&("after".into(), "upstream_failed".into(), 0)), "{states:?}");
    let child = home.runs("child");
    assert_eq!(child[0]["state"], "failed");
    let log = home.log("parent", &parent_run, "go");
    let run_id = child[0]["run_id"].as_str().unwrap();
    assert!(
        log.contains(&format!("DAG `child` run `{run_id}` ended `failed`, one of `failed_states` (failed)")),
        "{log}"
    );
}

#[test]
fn reset_dag_run_clears_and_reruns_the_run_at_the_same_logical_date() {
    // `execution_date`, Airflow 2's older name of `logical_date`, as ported DAGs write it.
    let parent = |dag_id: &str, extra: &str| {
        format!(
            r#"let dag = DAG("{dag_id}", #{{ {MANUAL} }});
            let fire = TriggerDagRunOperator(#{{
                task_id: "go",
                trigger_dag_id: "child",
                conf: #{{ x: "{{{{ run_id }}}}" }},
                execution_date: "2024-02-01",
                wait_for_completion: true,
                poke_interval: 0.1,
                {extra}
            }});"#
        )
    };
    let home = Home::new(&[
        ("child.rhai", &child()),
        ("reset.rhai", &parent("reset", "reset_dag_run: true,")),
        ("plain.rhai", &parent("plain", "")),
        ("skip.rhai", &parent("skip", "skip_when_already_exists: true,")),
    ]);
    let _scheduler = home.spawn(&["scheduler"]);
    let child_run = "manual__2024-02-01T00:00:00+00:00";
    let try_of_work = || {
        let states = home.states("child", child_run);
        states.iter().find(|(t, _, _)| t == "work").map(|(_, s, n)| (s.clone(), *n)).unwrap()
    };

    let first = trigger(&home, "reset", &["--logical-date", "2024-06-01"]);
    assert_eq!(finished(&home, "reset", &first)["state"], "success", "{}", home.log("reset", &first, "go"));
    assert_eq!(try_of_work(), ("success".into(), 1));

    // The same logical date again: the child's run is cleared and runs again (its try 2); its
    // conf stays the first one's, as Airflow's `dag.clear` keeps it.
    let second = trigger(&home, "reset", &["--logical-date", "2024-06-02"]);
    assert_eq!(finished(&home, "reset", &second)["state"], "success", "{}", home.log("reset", &second, "go"));
    assert_eq!(try_of_work(), ("success".into(), 2));
    assert_eq!(home.runs("child").len(), 1);
    assert_eq!(xcom(&home, "reset", &second, "go", "trigger_run_id"), Some(child_run.into()));
    assert!(
        home.log("reset", &second, "go").contains(&format!("Cleared and restarted DAG `child`: run `{child_run}`"))
    );

    // Without `reset_dag_run`: Airflow's DagRunAlreadyExists, a clear failure.
    let plain = trigger(&home, "plain", &[]);
    assert_eq!(finished(&home, "plain", &plain)["state"], "failed");
    let log = home.log("plain", &plain, "go");
    assert!(
        log.contains(&format!("a run of DAG `child` already exists at 2024-02-01T00:00:00+00:00 (run `{child_run}`")),
        "{log}"
    );
    assert!(log.contains("set `reset_dag_run: true`"), "{log}");
    // With `skip_when_already_exists`: skipped.
    let skip = trigger(&home, "skip", &[]);
    assert_eq!(finished(&home, "skip", &skip)["state"], "success");
    assert_eq!(home.states("skip", &skip), vec![("go".to_string(), "skipped".to_string(), 1)]);
    assert_eq!(try_of_work(), ("success".into(), 2), "neither touched the child's run");
}

#[test]
fn a_missing_dag_fails_the_task_naming_it_and_the_nearest_id() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let fire = TriggerDagRunOperator(#{{ task_id: "go", trigger_dag_id: "chlid" }});"#
    );
    let home = Home::new(&[("child.rhai", &child()), ("parent.rhai", &parent)]);
    let o = home.run(&["dags", "test", "parent", "2024-01-02"]);
    assert!(!o.status.success());
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    let log = home.log("parent", run_id, "go");
    assert!(log.contains("cannot trigger DAG `chlid`: no DAG `chlid` — did you mean `child`?"), "{log}");
    assert!(home.runs("child").is_empty());
}

#[test]
fn dags_test_creates_the_run_and_a_scheduler_runs_it_paused_dags_wait() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let fire = TriggerDagRunOperator(#{{ task_id: "go", trigger_dag_id: "child", conf: "{{\"x\": \"{{{{ ds }}}}\"}}" }});
        let held = TriggerDagRunOperator(#{{ task_id: "held", trigger_dag_id: "held" }});"#
    );
    let held = format!(
        r#"let dag = DAG("held", #{{ {MANUAL} }});
        let a = EmptyOperator(#{{ task_id: "a" }});"#
    );
    let home = Home::new(&[("child.rhai", &child()), ("parent.rhai", &parent), ("held.rhai", &held)]);
    assert!(home.run(&["dags", "pause", "held"]).status.success());

    // No scheduler: `dags test` creates the runs (as Airflow's does) and does not run them itself.
    let o = home.run(&["dags", "test", "parent", "2024-01-02"]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let child = home.runs("child");
    assert_eq!(child.len(), 1);
    assert_eq!(child[0]["state"], "queued");
    let log = home.log("parent", "manual__2024-01-02T00:00:00+00:00", "held");
    assert!(log.contains("DAG `held` is paused: its run waits until it is unpaused"), "{log}");
    let log = home.log("parent", "manual__2024-01-02T00:00:00+00:00", "go");
    assert!(log.contains("no scheduler is running: the run starts when one does"), "{log}");

    // A scheduler started later runs the child's run; the paused DAG's run waits.
    let _scheduler = home.spawn(&["scheduler"]);
    let first = child[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&home, "child", &first)["state"], "success");
    // `conf` as a template string that renders to a JSON object.
    assert_eq!(xcom(&home, "child", &first, "work", "return_value"), Some("got-2024-01-02".into()));

    // With the scheduler running, `dags test` in another process wakes it: the new run starts at
    // once (the scheduler has nothing else that would wake it).
    let o = home.run(&["dags", "test", "parent", "2024-01-03"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second = home.runs("child").into_iter().find(|r| r["run_id"] != first.as_str()).unwrap();
    let second = second["run_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&home, "child", &second)["state"], "success");
    assert_eq!(xcom(&home, "child", &second, "work", "return_value"), Some("got-2024-01-03".into()));
    let log = home.log("parent", "manual__2024-01-03T00:00:00+00:00", "go");
    assert!(log.contains("Triggered DAG `child`") && !log.contains("no scheduler is running"), "{log}");
    let held_runs = home.runs("held");
    assert_eq!(held_runs.len(), 2);
    assert!(held_runs.iter().all(|r| r["state"] == "queued"), "{held_runs:?}");
}

#[test]
fn execution_timeout_bounds_the_wait_and_tasks_test_creates_the_run() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let fire = TriggerDagRunOperator(#{{
            task_id: "fire",
            trigger_dag_id: "held",
            trigger_run_id: "by_hand__{{{{ ds_nodash }}}}",
            wait_for_completion: true,
            poke_interval: 0.05,
            execution_timeout: 0.5,
        }});"#
    );
    let held = format!(
        r#"let dag = DAG("held", #{{ {MANUAL} }});
        let a = EmptyOperator(#{{ task_id: "a" }});"#
    );
    let home = Home::new(&[("parent.rhai", &parent), ("held.rhai", &held)]);
    assert!(home.run(&["dags", "pause", "held"]).status.success());
    // The paused target never runs: the wait ends at `execution_timeout`, and the task fails.
    let o = home.run(&["dags", "test", "parent", "2024-01-02"]);
    assert!(!o.status.success());
    let log = home.log("parent", "manual__2024-01-02T00:00:00+00:00", "fire");
    assert!(log.contains("Waiting for DAG `held` run `by_hand__20240102`"), "{log}");
    assert!(log.contains("execution_timeout of 0:00:00.500 exceeded"), "{log}");
    let held_runs = home.runs("held");
    assert_eq!(held_runs.len(), 1);
    assert_eq!(held_runs[0]["run_id"], "by_hand__20240102");

    // `tasks test` creates the run too (as Airflow's), at its own date, and is bounded the same way.
    let o = home.run(&["tasks", "test", "parent", "fire", "2024-01-05"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Triggered DAG `held`: run `by_hand__20240105`"), "{out}");
    assert!(out.contains("failed (execution_timeout of 0:00:00.500 exceeded)"), "{out}");
    assert_eq!(home.runs("held").len(), 2);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let parent = format!(
        r#"let dag = DAG("parent", #{{ {MANUAL} }});
        let states = TriggerDagRunOperator(#{{ task_id: "states", trigger_dag_id: "x", failed_states: ["faild"] }});
        let conf = TriggerDagRunOperator(#{{ task_id: "conf", trigger_dag_id: "x", conf: 3 }});"#
    );
    let home = Home::new(&[("parent.rhai", &parent)]);
    let o = home.run(&["dags", "check"]);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success());
    assert!(
        out.contains(
            "`failed_states` holds `faild`, which is not a DAG run state (queued, running, success, failed) — did you mean `failed`?"
        ),
        "{out}"
    );
    assert!(out.contains("`conf` must be a map"), "{out}");

    // At run time: a run id that is not Airflow's pattern (it would name a log folder), a
    // `logical_date` that is not a date, a `conf` that does not render to an object.
    let ids = format!(
        r#"let dag = DAG("ids", #{{ {MANUAL} }});
        let up = TriggerDagRunOperator(#{{ task_id: "up", trigger_dag_id: "ids", trigger_run_id: "../{{{{ ds }}}}" }});
        let date = TriggerDagRunOperator(#{{ task_id: "date", trigger_dag_id: "ids", logical_date: "{{{{ ds }}}} o'clock" }});
        let conf = TriggerDagRunOperator(#{{ task_id: "conf", trigger_dag_id: "ids", conf: "[{{{{ ds_nodash }}}}]" }});"#
    );
    let home = Home::new(&[("ids.rhai", &ids)]);
    let test = |task: &str| {
        let o = home.run(&["tasks", "test", "ids", task, "2024-01-02"]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert!(test("up").contains("`TriggerDagRunOperator` needs the database"), "no database yet");
    assert!(home.run(&["dags", "pause", "ids"]).status.success());
    let out = test("up");
    assert!(out.contains("run id `../2024-01-02` is not allowed"), "{out}");
    let out = test("date");
    assert!(out.contains("`logical_date` is `2024-01-02 o'clock`, which is not a date"), "{out}");
    let out = test("conf");
    assert!(out.contains("`conf` must be a JSON object, not `[20240102]`"), "{out}");
    assert!(home.runs("ids").is_empty());
}
