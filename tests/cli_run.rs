//! Running DAGs through the real binary: `dags test`, retries, templates, the scheduler process,
//! kill -9 recovery, graceful shutdown, pause, clear and backfill. Waits are for states, with deadlines.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Home {
    dir: tempfile::TempDir,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Home {
    fn new(dags: &[(&str, &str)]) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        for (name, text) in dags {
            std::fs::write(
                dir.path().join("dags").join(name),
                text.replace("$HOME_DIR", &dir.path().to_string_lossy()),
            )
            .unwrap();
        }
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rhaiflow"));
        c.args(args)
            .current_dir(self.path())
            .env_remove("RHAIFLOW_HOME")
            .env("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false")
            .env("MCWORK_HOME", repo().join("examples/mcwork"))
            .env("MCWORK_WAIT", "0");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("rhaiflow runs")
    }

    fn scheduler(&self) -> SchedulerProcess {
        let child = self.command(&["scheduler"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        SchedulerProcess(Some(child.expect("scheduler starts")))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let o = self.run(&all);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    fn runs(&self, dag_id: &str) -> Vec<serde_json::Value> {
        self.json(&["runs", "list", dag_id]).as_array().cloned().unwrap_or_default()
    }

    fn states(&self, dag_id: &str, run_id: &str) -> Vec<(String, String, u64)> {
        let rows = self.json(&["tasks", "states-for-run", dag_id, run_id]);
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["task_id"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["try_number"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    /// Waits until the DAG's newest run is finished; returns it.
    fn wait_for_run(&self, dag_id: &str) -> serde_json::Value {
        wait_until(&format!("a finished run of {dag_id}"), || {
            self.runs(dag_id).first().filter(|r| r["state"] == "success" || r["state"] == "failed").cloned()
        })
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A scheduler process that is killed if the test fails before stopping it.
struct SchedulerProcess(Option<Child>);

impl SchedulerProcess {
    /// SIGKILL, as `kill -9`.
    fn kill_9(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// SIGTERM, then the exit status.
fn stop(mut process: SchedulerProcess) -> std::process::ExitStatus {
    let mut child = process.0.take().expect("still running");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    child.wait().unwrap()
}

const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";

#[test]
fn dags_test_mcwork_runs_its_four_tasks() {
    let mcwork = std::fs::read_to_string(repo().join("examples/dags/mcwork.rhai")).unwrap();
    let home = Home::new(&[("mcwork.rhai", &mcwork)]);
    let o = home.run(&["dags", "test", "MCWork"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for task in ["syncMarketingCloud", "sleep", "EDM", "SMS"] {
        let line =
            out.lines().find(|l| l.starts_with(&format!("{task} "))).unwrap_or_else(|| panic!("{task} row in\n{out}"));
        assert!(line.contains(" success "), "{line}");
    }
    assert!(out.contains(" success in "), "{out}");
    let run_id = home.runs("MCWork")[0]["run_id"].as_str().unwrap().to_string();
    let log = stdout(&home.run(&["tasks", "logs", "MCWork", &run_id, "EDM"]));
    assert!(log.contains("sent EDM"), "{log}");
}

#[test]
fn a_task_failing_twice_with_retries_2_succeeds_on_its_third_try() {
    let dag = format!(
        r#"let dag = DAG("flaky", #{{ {MANUAL} }});
        let t = BashOperator(#{{ task_id: "flaky", retries: 2, retry_delay: seconds(0),
            bash_command: "n=$(cat $HOME_DIR/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > $HOME_DIR/count; echo try $n; [ $n -ge 3 ]" }});"#
    );
    let home = Home::new(&[("flaky.rhai", &dag)]);
    let o = home.run(&["dags", "test", "flaky"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("up_for_retry").count(), 2, "{out}");
    let run_id = home.runs("flaky")[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(home.states("flaky", &run_id), vec![("flaky".to_string(), "success".to_string(), 3)]);
    let first = stdout(&home.run(&["tasks", "logs", "flaky", &run_id, "flaky", "--try", "1"]));
    assert!(first.contains("try 1\n") && first.contains("marking task as UP_FOR_RETRY"), "{first}");
    let third = stdout(&home.run(&["tasks", "logs", "flaky", &run_id, "flaky"]));
    assert!(third.contains("try 3\n") && third.contains("Marking task as SUCCESS"), "{third}");
}

#[test]
fn failures_skips_xcom_context_and_templates() {
    let dag = format!(
        r#"let dag = DAG("shapes", #{{ {MANUAL}, params: #{{ who: "luffy" }} }});
        let a = BashOperator(#{{ task_id: "a", bash_command: "echo ctx=$AIRFLOW_CTX_DAG_ID/$RHAIFLOW_CTX_TASK_ID try=$AIRFLOW_CTX_TRY_NUMBER; echo {{{{ params.who }}}}-{{{{ ds_nodash }}}}" }});
        let b = BashOperator(#{{ task_id: "b", bash_command: "echo pulled={{{{ ti.xcom_pull(task_ids='a') }}}}" }});
        let skip = BashOperator(#{{ task_id: "skip", bash_command: "exit 99" }});
        let after_skip = EmptyOperator(#{{ task_id: "after_skip" }});
        let typo = BashOperator(#{{ task_id: "typo", bash_command: "echo fine\necho {{{{ dss }}}}" }});
        let slow = BashOperator(#{{ task_id: "slow", bash_command: "sleep 30", execution_timeout: seconds(1) }});
        let cleanup = EmptyOperator(#{{ task_id: "cleanup", trigger_rule: "all_done" }});
        let never = EmptyOperator(#{{ task_id: "never" }});
        a >> b >> skip >> after_skip;
        [typo, slow] >> cleanup;
        typo >> never;"#
    );
    let home = Home::new(&[("shapes.rhai", &dag)]);
    let o = home.run(&["dags", "test", "shapes", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "a leaf (`never`) is upstream_failed, so the run fails:\n{}", stdout(&o));
    let run_id = "manual__2024-03-09T00:00:00+00:00";
    let states: std::collections::HashMap<String, String> =
        home.states("shapes", run_id).into_iter().map(|(t, s, _)| (t, s)).collect();
    assert_eq!(states["a"], "success");
    assert_eq!(states["b"], "success");
    assert_eq!(states["skip"], "skipped");
    assert_eq!(states["after_skip"], "skipped");
    assert_eq!(states["typo"], "failed");
    assert_eq!(states["slow"], "failed");
    assert_eq!(states["cleanup"], "success");
    assert_eq!(states["never"], "upstream_failed");
    let log = |task: &str| common::unstamped(&stdout(&home.run(&["tasks", "logs", "shapes", run_id, task])));
    assert!(log("a").contains("ctx=shapes/a try=1\nluffy-20240309\n"), "{}", log("a"));
    assert!(log("b").contains("pulled=luffy-20240309\n"), "{}", log("b"));
    assert!(log("typo").contains("template error in `bash_command` at line 2"), "{}", log("typo"));
    assert!(log("slow").contains("execution_timeout of 0:00:01 exceeded"), "{}", log("slow"));
}

#[test]
fn the_scheduler_runs_triggered_runs_and_honours_pause() {
    let dag = format!(
        r#"let dag = DAG("hello", #{{ {MANUAL} }});
        let a = BashOperator(#{{ task_id: "a", bash_command: "echo {{{{ dag_run.conf.name }}}} >> $HOME_DIR/out" }});
        let b = BashOperator(#{{ task_id: "b", bash_command: "echo b >> $HOME_DIR/out" }});
        a >> b;"#
    );
    let home = Home::new(&[("hello.rhai", &dag)]);
    let scheduler = home.scheduler();
    let o = home.run(&["dags", "trigger", "hello", "--conf", r#"{"name": "zoro"}"#]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = home.wait_for_run("hello");
    assert_eq!(run["state"], "success");
    assert_eq!(home.file("out"), "zoro\nb\n");

    assert!(home.run(&["dags", "pause", "hello"]).status.success());
    let o = home.run(&["dags", "trigger", "hello", "--conf", r#"{"name": "nami"}"#, "--logical-date", "2024-05-01"]);
    assert!(o.status.success());
    let paused_run = "manual__2024-05-01T00:00:00+00:00";
    let state_of =
        |run_id: &str| home.runs("hello").into_iter().find(|r| r["run_id"] == run_id).map(|r| r["state"].clone());
    assert_eq!(state_of(paused_run), Some("queued".into()), "a paused DAG's run waits");
    assert!(home.run(&["dags", "unpause", "hello"]).status.success());
    wait_until("the unpaused run", || home.runs("hello").iter().all(|r| r["state"] == "success").then_some(()));
    assert_eq!(home.file("out"), "zoro\nb\nnami\nb\n");

    // Clearing a task and its downstream runs them again.
    let run_id = paused_run.to_string();
    let o = home.run(&[
        "tasks",
        "clear",
        "hello",
        "--task-regex",
        "^a$",
        "--downstream",
        "--start-date",
        "2024-05-01",
        "--end-date",
        "2024-05-01",
    ]);
    assert!(stdout(&o).ends_with("cleared 2 task instance(s) of hello\n"), "{}", stdout(&o));
    wait_until("the cleared tasks to run again", || {
        let states = home.states("hello", &run_id);
        states.iter().all(|(_, s, n)| s == "success" && *n == 2).then_some(())
    });
    assert!(stop(scheduler).success());
}

#[test]
fn kill_9_mid_run_then_restart_finishes_the_run_without_overlap() {
    let dag = format!(
        r#"let dag = DAG("crash", #{{ {MANUAL} }});
        let a = BashOperator(#{{ task_id: "a", retries: 1, retry_delay: seconds(0),
            bash_command: "echo start-$AIRFLOW_CTX_TRY_NUMBER >> $HOME_DIR/trace; while [ ! -e $HOME_DIR/go ]; do sleep 0.02; done; echo end-$AIRFLOW_CTX_TRY_NUMBER >> $HOME_DIR/trace" }});
        let b = BashOperator(#{{ task_id: "b", bash_command: "echo b >> $HOME_DIR/trace" }});
        a >> b;"#
    );
    let home = Home::new(&[("crash.rhai", &dag)]);
    let mut first = home.scheduler();
    assert!(home.run(&["dags", "trigger", "crash", "--logical-date", "2024-02-01"]).status.success());
    wait_until("task a to start", || home.file("trace").contains("start-1").then_some(()));
    first.kill_9();
    let second = home.scheduler();
    // Try 1 outlived its scheduler; the new one kills it before try 2 starts. Only then may the
    // tries finish (no fixed sleep to race against).
    wait_until("try 2 to start", || home.file("trace").contains("start-2").then_some(()));
    std::fs::write(home.path().join("go"), "").unwrap();
    let run = home.wait_for_run("crash");
    assert_eq!(run["state"], "success");
    // Try 1 was killed with its scheduler (no `end-1`), try 2 ran alone, then b.
    assert_eq!(home.file("trace"), "start-1\nstart-2\nend-2\nb\n");
    let runs = home.runs("crash");
    assert_eq!(runs.len(), 1, "one run for the logical date: {runs:?}");
    let states = home.states("crash", run["run_id"].as_str().unwrap());
    assert_eq!(states, vec![("a".into(), "success".into(), 2), ("b".into(), "success".into(), 1)]);
    assert!(stop(second).success());
}

#[test]
fn a_second_scheduler_on_the_same_database_is_refused() {
    let home =
        Home::new(&[("x.rhai", "let d = DAG(\"x\", #{ schedule: () }); let a = EmptyOperator(#{ task_id: \"a\" });")]);
    let first = home.scheduler();
    wait_until("the first scheduler's socket", || home.path().join("rhaiflow.sock").exists().then_some(()));
    let o = home.run(&["scheduler"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another scheduler is running on this database"));
    assert!(stop(first).success());
}

#[test]
fn sigterm_waits_for_running_tasks_then_exits() {
    let dag = format!(
        r#"let dag = DAG("graceful", #{{ {MANUAL} }});
        let a = BashOperator(#{{ task_id: "a", bash_command: "echo started > $HOME_DIR/mark; sleep 1; echo done >> $HOME_DIR/mark" }});
        let b = EmptyOperator(#{{ task_id: "b" }});
        a >> b;"#
    );
    let home = Home::new(&[("graceful.rhai", &dag)]);
    let scheduler = home.scheduler();
    assert!(home.run(&["dags", "trigger", "graceful"]).status.success());
    wait_until("task a to start", || home.file("mark").contains("started").then_some(()));
    assert!(stop(scheduler).success(), "the scheduler exits cleanly after its running task");
    assert_eq!(home.file("mark"), "started\ndone\n", "the running task was allowed to finish");
    let run_id = home.runs("graceful")[0]["run_id"].as_str().unwrap().to_string();
    let states = home.states("graceful", &run_id);
    assert_eq!(states[0], ("a".into(), "success".into(), 1));
    assert_eq!(states[1].1, "none", "nothing new started after SIGTERM");
}

#[test]
fn scheduled_runs_are_created_once_per_logical_date() {
    let dag = r#"let dag = DAG("nightly", #{ start_date: datetime(2024, 1, 1), schedule: "@daily", catchup: false });
        let a = EmptyOperator(#{ task_id: "a" });"#;
    let home = Home::new(&[("nightly.rhai", dag)]);
    let first = home.scheduler();
    let run = home.wait_for_run("nightly");
    assert_eq!(run["state"], "success");
    assert!(run["run_id"].as_str().unwrap().starts_with("scheduled__"), "{run}");
    assert!(stop(first).success());
    let second = home.scheduler();
    wait_until("the second scheduler's socket", || home.path().join("rhaiflow.sock").exists().then_some(()));
    assert!(stop(second).success());
    assert_eq!(home.runs("nightly").len(), 1, "a restart creates no second run for the same interval");
}

#[test]
fn backfill_runs_every_interval_once() {
    let dag = r#"let dag = DAG("daily", #{ start_date: datetime(2024, 1, 1), schedule: "@daily", max_active_runs: 1 });
        let a = BashOperator(#{ task_id: "a", bash_command: "echo {{ ds }}" });"#;
    let home = Home::new(&[("daily.rhai", dag)]);
    let o = home.run(&["dags", "backfill", "daily", "--start-date", "2024-01-01", "--end-date", "2024-01-03"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("backfill daily: 3 run(s) succeeded, 0 failed\n"), "{}", stdout(&o));
    let ids: Vec<String> = home.runs("daily").iter().map(|r| r["run_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        ids,
        [
            "backfill__2024-01-03T00:00:00+00:00",
            "backfill__2024-01-02T00:00:00+00:00",
            "backfill__2024-01-01T00:00:00+00:00"
        ]
    );
    let again = home.run(&["dags", "backfill", "daily", "--start-date", "2024-01-01", "--end-date", "2024-01-01"]);
    assert_eq!(
        stdout(&again),
        "skipping 2024-01-01 00:00:00+00:00: a run for that logical date exists\nnothing to backfill\n"
    );
}

#[test]
fn db_migrate_and_tasks_test() {
    let home = Home::new(&[(
        "t.rhai",
        "let d = DAG(\"t\", #{ schedule: () }); let a = BashOperator(#{ task_id: \"a\", bash_command: \"echo {{ ds }}; echo out\" });",
    )]);
    let o = home.run(&["db", "migrate"]);
    let latest = rhaiflow::store::MIGRATIONS.last().map_or(0, |m| m.0);
    assert_eq!(stdout(&o), format!("database rhaiflow.db is at schema version {latest} (migrated)\n"));
    assert_eq!(stdout(&home.run(&["db", "migrate"])), format!("database rhaiflow.db is at schema version {latest}\n"));
    let o = home.run(&["tasks", "test", "t", "a", "2024-06-01"]);
    assert!(o.status.success());
    let out = common::unstamped(&stdout(&o));
    assert!(out.contains("2024-06-01\nout\n"), "{out}");
    assert!(out.ends_with("[rhaiflow] return_value: \"out\"\n[rhaiflow] t.a: success\n"), "{out}");
    assert!(home.runs("t").is_empty(), "tasks test records no state");
}

#[test]
fn failures_and_retries_write_alerts_to_the_outbox_with_the_state_change() {
    let dag = format!(
        r#"let dag = DAG("alerting", #{{ {MANUAL}, default_args: #{{ email: "ops@example.com", ding_on_failure: true, ding_on_retry: true, email_on_retry: false }} }});
        let a = BashOperator(#{{ task_id: "a", bash_command: "exit 1", retries: 1, retry_delay: seconds(0) }});"#
    );
    let home = Home::new(&[("alerting.rhai", &dag)]);
    assert_eq!(home.run(&["dags", "test", "alerting"]).status.code(), Some(1));
    let store = rhaiflow::store::Store::open(&home.path().join("rhaiflow.db")).unwrap();
    let alerts = store.read(|tx| tx.alerts()).unwrap();
    let got: Vec<(String, String)> = alerts.iter().map(|a| (a.event.clone(), a.channel.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("up_for_retry".to_string(), "dingtalk".to_string()),
            ("failed".to_string(), "email".to_string()),
            ("failed".to_string(), "dingtalk".to_string()),
        ]
    );
    // `dags test` holds them (sent only with `--send-alerts`).
    assert!(alerts.iter().all(|a| a.state == "held" && a.task_id.as_deref() == Some("a")));
}

#[test]
fn bad_input_to_run_commands_is_a_clear_error() {
    let home =
        Home::new(&[("x.rhai", "let d = DAG(\"x\", #{ schedule: () }); let a = EmptyOperator(#{ task_id: \"a\" });")]);
    let err = |args: &[&str]| {
        let o = home.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert_eq!(
        err(&["dags", "trigger", "x", "--conf", "{nope"]),
        "error: `--conf` is not JSON: key must be a string at line 1 column 2\n"
    );
    assert_eq!(
        err(&["dags", "trigger", "x", "--conf", "[1]"]),
        "error: `--conf` must be a JSON object, like '{\"key\": 1}'\n"
    );
    assert_eq!(
        err(&["dags", "trigger", "x", "--logical-date", "yesterday"]),
        "error: `yesterday` is not a date; use 2024-01-01, 2024-01-01T06:00, 2024-01-01T06:00:00 or RFC 3339\n"
    );
    assert_eq!(err(&["dags", "test", "nope"]), "error: no DAG `nope` in the dags folder\n");
    assert_eq!(err(&["tasks", "test", "x", "b"]), "error: DAG `x` has no task `b`\n");
    assert_eq!(
        err(&["tasks", "clear", "x", "--task-regex", "("]).lines().next().unwrap(),
        "error: `--task-regex` `(` is not a regular expression: regex parse error:"
    );
    assert!(home.run(&["dags", "trigger", "x", "--logical-date", "2024-01-01"]).status.success());
    assert_eq!(
        err(&["dags", "trigger", "x", "--logical-date", "2024-01-01"]),
        "error: DAG `x` already has a run for 2024-01-01 00:00:00+00:00\n"
    );
    assert_eq!(
        err(&["tasks", "states-for-run", "x", "nope"]),
        "error: DAG `x` has no run `nope`; see `rhaiflow runs list x`\n"
    );
}

#[test]
fn pools_limit_how_many_tasks_run_at_once() {
    let dag = format!(
        r#"let dag = DAG("pooled", #{{ {MANUAL} }});
        for i in 0..4 {{
            BashOperator(#{{ task_id: `t${{i}}`, pool: "one_at_a_time",
                bash_command: "echo start >> $HOME_DIR/trace; sleep 0.1; echo end >> $HOME_DIR/trace" }});
        }}"#
    );
    let home = Home::new(&[("pooled.rhai", &dag)]);
    assert_eq!(stdout(&home.run(&["pools", "set", "one_at_a_time", "1"])), "pool one_at_a_time: 1 slot(s)\n");
    let pools = home.json(&["pools", "list"]);
    assert_eq!(pools[1], serde_json::json!({ "pool": "one_at_a_time", "slots": 1 }));
    assert!(home.run(&["dags", "test", "pooled"]).status.success());
    assert_eq!(home.file("trace"), "start\nend\n".repeat(4), "one slot: the four tasks never overlap");
}

#[test]
fn the_scheduler_follows_dag_versions_recorded_by_other_commands() {
    let v1 = format!(
        r#"let dag = DAG("evolving", #{{ {MANUAL} }}); let a = BashOperator(#{{ task_id: "a", bash_command: "echo v1 >> $HOME_DIR/out" }});"#
    );
    let home = Home::new(&[("evolving.rhai", &v1)]);
    let scheduler = home.scheduler();
    assert!(home.run(&["dags", "trigger", "evolving", "--logical-date", "2024-01-01"]).status.success());
    wait_until("run 1", || (home.runs("evolving").first()?["state"] == "success").then_some(()));
    let v2 = v1.replace("v1", "v2").replace("$HOME_DIR", &home.path().to_string_lossy());
    std::fs::write(home.path().join("dags/evolving.rhai"), v2).unwrap();
    assert!(home.run(&["dags", "trigger", "evolving", "--logical-date", "2024-01-02"]).status.success());
    wait_until("run 2", || home.runs("evolving").iter().all(|r| r["state"] == "success").then_some(()));
    assert_eq!(home.file("out"), "v1\nv2\n", "each run ran the version it was created from");
    let runs = home.runs("evolving");
    assert_ne!(runs[0]["version_hash"], runs[1]["version_hash"]);
    assert!(stop(scheduler).success());
}
