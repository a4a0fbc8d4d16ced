//! The test-and-fix loop through the real binary: `dags test` on the current file, failures that
//! say what failed and where its log is, `--verbose`, `--conf`, `tasks test -t/--env-vars`,
//! `tasks clear` that lists and asks, backfill's `--rerun-failed-tasks` and `--reset-dagruns`,
//! and tasks naming a pool that does not exist.

mod common;

use common::Home;
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `dags test` output without its timings (durations vary run to run).
fn without_timings(text: &str) -> String {
    let re = regex::Regex::new(r"\d+\.\d\ds").unwrap();
    re.replace_all(text, "T").to_string()
}

const RUN: &str = "manual__2026-11-05T00:00:00+00:00";

fn dag(command: &str) -> String {
    format!(
        r#"let dag = DAG("loop", #{{ start_date: datetime(2026, 1, 1), schedule: "@daily", catchup: false }});
let extract = BashOperator(#{{ task_id: "extract", bash_command: "{command}" }});
let load = BashOperator(#{{ task_id: "load", bash_command: "echo loaded" }});
extract >> load;
"#
    )
}

#[test]
fn dags_test_again_on_a_date_runs_the_file_as_it_is_now_and_failures_show_their_log() {
    let home = Home::new(&[("loop.rhai", &dag("echo starting; echo no such table >&2; exit 3"))]);
    let o = home.run(&["dags", "test", "loop", "2026-11-05T00:00"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let log = format!("logs/dag_id=loop/run_id={RUN}/task_id=extract/attempt=1.log");
    let text = without_timings(&stdout(&o));
    let expected_tail =
        format!("task `extract` of run `{RUN}` failed on try 1:\n  | [rhaiflow] loop.extract ({RUN}) try 1 of 1 on ");
    assert!(text.contains(&expected_tail), "{text}");
    // stdout and stderr are read side by side, so their lines may come in either order.
    let body = ["starting\n  | no such table", "no such table\n  | starting"].map(|lines| {
        format!(
            "  | [rhaiflow] running: bash -c 'echo starting; echo no such table >&2; exit 3'\n  | {lines}\n  | [rhaiflow] the command exited with code 3 after "
        )
    });
    assert!(body.iter().any(|b| text.contains(b)), "{text}");
    assert!(
        text.contains(&format!(
            " s\n  | [rhaiflow] bash command failed: exit code 3; marking task as FAILED\n  log: {log}\n\nrun {RUN} failed in T\n"
        )),
        "{text}"
    );
    assert!(home.path().join(&log).is_file());
    let first_version = home.runs("loop")[0]["version_hash"].clone();

    // The fix: the same date again runs the file as it is now, in place of the earlier run.
    std::fs::write(home.path().join("dags/loop.rhai"), dag("echo fixed")).unwrap();
    let o = home.run(&["dags", "test", "loop", "2026-11-05T00:00"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        without_timings(&stdout(&o)),
        format!(
            "dags test loop: run {RUN} (logical date 2026-11-05 00:00:00+00:00)\n  extract                  running (try 1)\n  extract                  success (T)\n  load                     running (try 1)\n  load                     success (T)\n\ntask_id  state    tries  duration\n-------  -------  -----  --------\nextract  success  1      T\nload     success  1      T\n\nrun {RUN} success in T\n"
        )
    );
    let runs = home.runs("loop");
    assert_eq!(runs.len(), 1, "the earlier run was replaced: {runs:?}");
    assert_ne!(runs[0]["version_hash"], first_version, "the run is pinned to the current version");
    let log = home.log("loop", RUN, "extract");
    assert!(log.contains("fixed\n") && !log.contains("no such table"), "the replaced run's log went with it: {log}");
}

#[test]
fn dags_test_verbose_streams_task_logs_and_conf_reaches_the_run() {
    let home = Home::new(&[("loop.rhai", &dag("echo conf is {{ dag_run.conf.size }}"))]);
    let o = home.run(&["dags", "test", "loop", "2026-11-05", "--verbose", "--conf", r#"{"size": 42}"#]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("  [extract] conf is 42\n"), "{text}");
    assert!(text.contains("  [load] loaded\n"), "{text}");
    // Without --verbose the logs stay in their files.
    let o = home.run(&["dags", "test", "loop", "2026-11-05", "--conf", r#"{"size": 7}"#]);
    assert!(!stdout(&o).contains("conf is"), "{}", stdout(&o));
    assert!(home.log("loop", RUN, "extract").contains("conf is 7"));
    let o = home.run(&["dags", "test", "loop", "--conf", "[1]"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: `--conf` must be a JSON object, like '{\"key\": 1}'\n");
}

#[test]
fn tasks_test_takes_params_and_env_vars() {
    let dag = r#"let dag = DAG("p", #{ start_date: datetime(2026, 1, 1), params: #{ who: "dag", n: 1 } });
let greet = BashOperator(#{ task_id: "greet", bash_command: "echo {{ params.who }} {{ params.n }} $GREETING" });"#;
    let home = Home::new(&[("p.rhai", dag)]);
    let o = home.run(&[
        "tasks",
        "test",
        "p",
        "greet",
        "2026-01-01",
        "-t",
        r#"{"who": "cli"}"#,
        "--env-vars",
        r#"{"GREETING": "hi", "N": 3}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(common::unstamped(&stdout(&o)).starts_with("cli 1 hi\n"), "{}", stdout(&o));
    let o = home.run(&["tasks", "test", "p", "greet", "--task-params", r#"{"who": "long form"}"#]);
    assert!(common::unstamped(&stdout(&o)).starts_with("long form 1\n"), "{}", stdout(&o));
    let err = |args: &[&str]| {
        let o = home.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        stderr(&o)
    };
    assert_eq!(
        err(&["tasks", "test", "p", "greet", "-t", "[]"]),
        "error: `--task-params` must be a JSON object, like '{\"key\": 1}'\n"
    );
    assert!(err(&["tasks", "test", "p", "greet", "--env-vars", "{"]).starts_with("error: `--env-vars` is not JSON: "));
    assert_eq!(
        err(&["tasks", "test", "p", "greet", "--env-vars", r#"{"A=B": "x"}"#]),
        "error: `--env-vars`: `A=B` is not an environment variable name\n"
    );
    assert_eq!(
        err(&["tasks", "test", "p", "greet", "--env-vars", r#"{"A": [1]}"#]),
        "error: `--env-vars`: the value of `A` must be a string, a number or a boolean\n"
    );
}

/// A home with two daily runs of `bf` backfilled: `a` fails while the file `ok` is missing, `b`
/// follows it.
fn failed_backfill() -> Home {
    let dag = r#"let dag = DAG("bf", #{ start_date: datetime(2026, 1, 1), schedule: "@daily" });
let a = BashOperator(#{ task_id: "a", bash_command: "echo try >> $HOME_DIR/tries; test -f $HOME_DIR/ok" });
let b = BashOperator(#{ task_id: "b", bash_command: "echo b" });
a >> b;"#;
    let home = Home::new(&[("bf.rhai", dag)]);
    let o = home.run(&["dags", "backfill", "bf", "-s", "2026-01-01", "-e", "2026-01-02"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for day in ["01", "02"] {
        let run = format!("backfill__2026-01-{day}T00:00:00+00:00");
        assert!(text.contains(&format!("task `a` of run `{run}` failed on try 1:\n")), "{text}");
        assert!(text.contains(&format!("  log: logs/dag_id=bf/run_id={run}/task_id=a/attempt=1.log\n")), "{text}");
    }
    assert!(text.ends_with("backfill bf: 0 run(s) succeeded, 2 failed\n"), "{text}");
    home
}

fn run_states(home: &Home) -> Vec<String> {
    home.runs("bf").iter().map(|r| r["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn backfill_rerun_failed_tasks_runs_the_failed_ones_again() {
    let home = failed_backfill();
    std::fs::write(home.path().join("ok"), "").unwrap();
    let again = home.run(&["dags", "backfill", "bf", "-s", "2026-01-01", "-e", "2026-01-02"]);
    assert!(
        stdout(&again).ends_with("nothing to backfill\n"),
        "without the flag existing runs stay: {}",
        stdout(&again)
    );
    let o = home.run(&["dags", "backfill", "bf", "-s", "2026-01-01", "-e", "2026-01-02", "--rerun-failed-tasks"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        "rerunning backfill__2026-01-01T00:00:00+00:00\nrerunning backfill__2026-01-02T00:00:00+00:00\nbackfill bf: 2 run(s) succeeded, 0 failed\n"
    );
    assert_eq!(run_states(&home), ["success", "success"]);
    assert_eq!(home.file("tries"), "try\ntry\ntry\ntry\n");
    // Nothing failed any more: nothing to rerun.
    let o = home.run(&["dags", "backfill", "bf", "-s", "2026-01-01", "-e", "2026-01-02", "--rerun-failed-tasks"]);
    assert!(stdout(&o).ends_with("nothing to backfill\n"), "{}", stdout(&o));
}

#[test]
fn backfill_reset_dagruns_runs_every_task_again_and_a_cleared_backfill_run_runs_again() {
    let home = failed_backfill();
    std::fs::write(home.path().join("ok"), "").unwrap();
    let o = home.run(&["dags", "backfill", "bf", "-s", "2026-01-02", "-e", "2026-01-02", "--reset-dagruns", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        "rerunning backfill__2026-01-02T00:00:00+00:00\nbackfill bf: 1 run(s) succeeded, 0 failed\n"
    );
    assert_eq!(run_states(&home), ["success", "failed"], "newest first; only the range was reset");
    let run = "backfill__2026-01-02T00:00:00+00:00";
    assert_eq!(home.states("bf", run), [("a".into(), "success".into(), 2), ("b".into(), "success".into(), 1)]);
    // `tasks clear` of a backfill run, then the backfill again: the run runs again.
    let o = home.run(&["tasks", "clear", "bf", "-s", "2026-01-01", "-e", "2026-01-01", "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = home.run(&["dags", "backfill", "bf", "-s", "2026-01-01", "-e", "2026-01-01"]);
    assert_eq!(
        stdout(&o),
        "resuming backfill__2026-01-01T00:00:00+00:00: unfinished (cleared, or left by a backfill that stopped)\nbackfill bf: 1 run(s) succeeded, 0 failed\n"
    );
    assert_eq!(run_states(&home), ["success", "success"]);
}

#[test]
fn tasks_clear_lists_what_it_clears_and_asks_on_a_terminal() {
    let home = failed_backfill();
    let o = home.run(&["tasks", "clear", "bf", "--dry-run"]);
    assert_eq!(
        stdout(&o),
        "run_id                               task_id  state            try_number\n\
         -----------------------------------  -------  ---------------  ----------\n\
         backfill__2026-01-01T00:00:00+00:00  a        failed           1\n\
         backfill__2026-01-01T00:00:00+00:00  b        upstream_failed  0\n\
         backfill__2026-01-02T00:00:00+00:00  a        failed           1\n\
         backfill__2026-01-02T00:00:00+00:00  b        upstream_failed  0\n\
         dry run: 4 task instance(s) of bf would be cleared\n"
    );
    assert_eq!(run_states(&home), ["failed", "failed"], "a dry run clears nothing");
    let o = home.run(&["tasks", "clear", "bf", "-t", "^a$", "--only-failed", "--dry-run"]);
    assert!(stdout(&o).ends_with("dry run: 2 task instance(s) of bf would be cleared\n"), "{}", stdout(&o));

    // On a terminal it asks; "n" clears nothing, "y" clears.
    let on_terminal = |answer: &str| {
        let bin = env!("CARGO_BIN_EXE_rhaiflow");
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &format!("{bin} tasks clear bf -t ^a$"), "/dev/null"])
            .current_dir(home.path())
            .env_remove("RHAIFLOW_HOME")
            .stdin(std::process::Stdio::piped());
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("script runs");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let no = on_terminal("n");
    assert!(no.contains("clear these 2 task instance(s)? [y/N] "), "{no}");
    assert!(no.ends_with("nothing cleared\n"), "{no}");
    assert_eq!(run_states(&home), ["failed", "failed"]);
    let yes = on_terminal("y");
    assert!(yes.ends_with("cleared 2 task instance(s) of bf\n"), "{yes}");
    assert_eq!(run_states(&home), ["queued", "queued"]);
    // `a` was cleared: only the `b`s (upstream failed) are left to clear.
    let o = home.run(&["tasks", "clear", "bf", "--only-failed", "--yes"]);
    assert_eq!(
        stdout(&o),
        "run_id                               task_id  state            try_number\n\
         -----------------------------------  -------  ---------------  ----------\n\
         backfill__2026-01-01T00:00:00+00:00  b        upstream_failed  0\n\
         backfill__2026-01-02T00:00:00+00:00  b        upstream_failed  0\n\
         cleared 2 task instance(s) of bf\n"
    );
    let o = home.run(&["tasks", "clear", "bf", "--only-failed", "--yes"]);
    assert_eq!(stdout(&o), "no task instances of bf to clear\n");
}

const NO_POOL: &str = r#"let dag = DAG("pooled", #{ start_date: datetime(2026, 1, 1), schedule: "@daily", catchup: false });
let a = BashOperator(#{ task_id: "a", bash_command: "echo ran", pool: "etl" });"#;

#[test]
fn a_task_in_a_pool_that_does_not_exist_fails_at_once_saying_how_to_create_it() {
    let home = Home::new(&[("pooled.rhai", NO_POOL)]);
    let o = home.run(&["dags", "test", "pooled", "2026-02-01"]);
    assert_eq!(o.status.code(), Some(1));
    let reason = "task `a` uses pool `etl`, which does not exist; create it with `rhaiflow pools set etl SLOTS`";
    assert!(stdout(&o).contains(&format!("  | [rhaiflow] {reason}")), "{}", stdout(&o));
    // `dags check` now has a store to look in.
    let o = home.run(&["dags", "check"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "error: task `a` of DAG `pooled` uses pool `etl`, which does not exist\n  --> pooled.rhai\n  = help: create it with `rhaiflow pools set etl SLOTS`, or fix `pool`\n\n1 error(s) in 1 of 1 file(s); 1 DAG(s) loaded\n"
    );
    // The scheduler fails the try too, rather than leaving it scheduled for ever.
    let _scheduler = home.spawn(&["scheduler"]);
    assert!(home.run(&["dags", "trigger", "pooled", "--logical-date", "2026-03-01"]).status.success());
    let run = "manual__2026-03-01T00:00:00+00:00";
    common::wait_until("the run to fail", || {
        (home.runs("pooled").iter().any(|r| r["run_id"] == run && r["state"] == "failed")).then_some(())
    });
    assert!(home.log("pooled", run, "a").contains(reason));
    assert!(home.run(&["pools", "set", "etl", "1"]).status.success());
    assert_eq!(stdout(&home.run(&["dags", "check"])), "ok: 1 DAG(s) in 1 file(s)\n");
    let o = home.run(&["dags", "test", "pooled", "2026-02-01"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}
