//! The CLI behaves like a Unix tool, through the real binary: output into a closed pipe, paths
//! relative to the current directory, listings that tell the truth (paused, next run, newest
//! first), "did you mean", import errors pointed at, dates as people type them, Airflow's run ids,
//! `.airflowignore`; and new DAGs start paused, as in Airflow.

mod common;

use common::{Home, output_within_deadline};
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const MANUAL: &str = r#"let dag = DAG("m", #{ start_date: datetime(2026, 1, 1), schedule: (), catchup: false });
let extract = BashOperator(#{ task_id: "extract", bash_command: "echo x" });"#;

/// The command with `| head -1`, through a shell: its exit code (141 = SIGPIPE's) and stderr.
fn into_head(home: &Home, args: &str) -> (i32, String) {
    let bin = env!("CARGO_BIN_EXE_rhaiflow");
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &format!("set -o pipefail; {bin} {args} | head -1 >/dev/null")])
        .current_dir(home.path())
        .env_remove("RHAIFLOW_HOME");
    let o = output_within_deadline(cmd, args);
    (o.status.code().unwrap_or(-1), stderr(&o))
}

#[test]
fn long_output_into_head_ends_quietly() {
    let daily = r#"let dag = DAG("d", #{ start_date: datetime(2024, 1, 1), schedule: "@daily" });
let t = EmptyOperator(#{ task_id: "t" });"#;
    let home = Home::new(&[("d.rhai", daily)]);
    // 2,192 runs: each listing below is over 128 KiB, so it outlasts what the pipe holds plus
    // what `head` reads before it exits.
    let o = home.run(&["dags", "backfill", "d", "-s", "2020-01-01", "-e", "2025-12-31"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for args in [
        "runs list d",
        "runs list d --output json",
        "dags next-runs d -n 1000 --output json",
        "tasks clear d --dry-run",
    ] {
        let (code, err) = into_head(&home, args);
        assert_eq!((code, err.as_str()), (141, ""), "`{args} | head -1`");
    }
    let (code, err) = into_head(&home, "runs list d 2>&1");
    assert_eq!((code, err.as_str()), (141, ""), "stdout and stderr into the closed pipe");
}

#[test]
fn a_relative_dags_folder_flag_is_relative_to_the_current_directory() {
    let home = Home::new(&[("m.rhai", MANUAL)]);
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd =
        home.command(&["dags", "list", "--dags-folder", "dags", "--home", &elsewhere.path().to_string_lossy()]);
    cmd.current_dir(home.path());
    let o = output_within_deadline(cmd, "dags list");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\nm       m.rhai  no      None"), "{}", stdout(&o));
}

#[test]
fn dags_list_shows_paused_state_and_the_next_run_after_catching_up() {
    let hourly = r#"let dag = DAG("h", #{ start_date: days_ago(1), schedule: "@hourly", catchup: true });
let t = EmptyOperator(#{ task_id: "t" });"#;
    let home = Home::new(&[("h.rhai", hourly)]);
    let scheduler = home.spawn(&["scheduler"]);
    // Caught up: every hour since yesterday's midnight up to the last complete one has a run.
    common::wait_until("the catch-up", || {
        let caught_up = (chrono::Utc::now()
            - (chrono::Utc::now() - chrono::Duration::days(1)).date_naive().and_hms_opt(0, 0, 0)?.and_utc())
        .num_hours();
        let runs = home.runs("h");
        (runs.len() as i64 >= caught_up && runs.iter().all(|r| r["state"] == "success")).then_some(())
    });
    drop(scheduler);
    let newest = home.runs("h")[0].clone();
    let newest = chrono::DateTime::parse_from_rfc3339(newest["logical_date"].as_str().unwrap()).unwrap();
    let list = home.json(&["dags", "list"]);
    let row = &list[0];
    assert_eq!(row["is_paused"], false);
    let next = chrono::DateTime::parse_from_rfc3339(row["next_run"].as_str().unwrap()).unwrap();
    // The next interval starts where the newest run's ends and is due at its own end.
    assert_eq!(next, newest + chrono::Duration::hours(2), "next run after {newest}");
    assert!(home.run(&["dags", "pause", "h"]).status.success());
    assert_eq!(home.json(&["dags", "list"])[0]["is_paused"], true);
}

#[test]
fn new_dags_start_paused_and_a_triggered_run_says_it_waits() {
    let home = Home::new(&[("m.rhai", MANUAL)]);
    // The default, without the override the test helpers set.
    let run = |args: &[&str]| {
        let mut cmd = home.command(args);
        cmd.env_remove("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION");
        output_within_deadline(cmd, &format!("{args:?}"))
    };
    let list = stdout(&run(&["dags", "list"]));
    assert!(list.contains("\nm       m.rhai  yes     None"), "{list}");
    let o = run(&["dags", "trigger", "m", "--logical-date", "2026-11-05T00:00"]);
    assert_eq!(
        stdout(&o),
        "triggered m: run manual__2026-11-05T00:00:00+00:00 (logical date 2026-11-05 00:00:00+00:00)\n\
         DAG `m` is paused: the run waits until `rhaiflow dags unpause m`\n"
    );
    let mut cmd = home.command(&["scheduler"]);
    cmd.env_remove("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION");
    let scheduler = common::Running(Some(
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap(),
    ));
    assert!(run(&["dags", "unpause", "m"]).status.success());
    common::wait_until("the unpaused run", || (home.runs("m")[0]["state"] == "success").then_some(()));
    drop(scheduler);
    // A DAG already known keeps its flag: unpaused stays unpaused.
    assert!(stdout(&run(&["dags", "list"])).contains("\nm       m.rhai  no      None"));
}

#[test]
fn runs_list_is_newest_first_in_json_as_in_the_table() {
    let home = Home::new(&[("m.rhai", MANUAL)]);
    for date in ["2026-01-02", "2026-01-03", "2026-01-01"] {
        assert!(home.run(&["dags", "trigger", "m", "--logical-date", date]).status.success());
    }
    let ids: Vec<String> = home.runs("m").iter().map(|r| r["run_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        ids,
        ["manual__2026-01-03T00:00:00+00:00", "manual__2026-01-02T00:00:00+00:00", "manual__2026-01-01T00:00:00+00:00"]
    );
    let table = stdout(&home.run(&["runs", "list", "m"]));
    let first = table.lines().nth(2).unwrap();
    assert!(first.starts_with("manual__2026-01-03T00:00:00+00:00"), "{table}");
}

#[test]
fn run_ids_are_airflows_and_dates_need_no_seconds() {
    let home = Home::new(&[("m.rhai", MANUAL)]);
    let trigger = |date: &str| {
        let o = home.run(&["dags", "trigger", "m", "--logical-date", date, "--output", "json"]);
        assert!(o.status.success(), "{date}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["run_id"].as_str().unwrap().to_string()
    };
    assert_eq!(trigger("2026-11-05T00:00"), "manual__2026-11-05T00:00:00+00:00");
    assert_eq!(trigger("2026-11-06 07:30"), "manual__2026-11-06T07:30:00+00:00");
    assert_eq!(trigger("2026-11-07T08:00+08:00"), "manual__2026-11-07T00:00:00+00:00");
    // Python's isoformat: microseconds, all six, only when there are some; never nanoseconds.
    assert_eq!(trigger("2026-11-08T00:00:00.5Z"), "manual__2026-11-08T00:00:00.500000+00:00");
    assert_eq!(trigger("2026-11-09T00:00:00.123456789Z"), "manual__2026-11-09T00:00:00.123456+00:00");
    let o = home.run(&["dags", "trigger", "m"]);
    let re = regex::Regex::new(r"^triggered m: run manual__\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00 ").unwrap();
    assert!(re.is_match(&stdout(&o)), "{}", stdout(&o));
}

#[test]
fn task_and_run_ids_get_a_did_you_mean() {
    let home = Home::new(&[("m.rhai", MANUAL)]);
    let err = |args: &[&str]| {
        let o = home.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        stderr(&o)
    };
    assert_eq!(
        err(&["tasks", "test", "m", "extrct"]),
        "error: DAG `m` has no task `extrct` (did you mean `extract`?)\n"
    );
    assert_eq!(err(&["tasks", "test", "mm", "extract"]), "error: no DAG `mm` — did you mean `m`?\n");
    assert!(home.run(&["dags", "trigger", "m", "--logical-date", "2026-01-01"]).status.success());
    let run = "manual__2026-01-01T00:00:00+00:00";
    assert_eq!(
        err(&["tasks", "logs", "m", run, "extrakt"]),
        format!("error: no task instance `extrakt` in run `{run}` of DAG `m` (did you mean `extract`?)\n")
    );
    assert_eq!(
        err(&["tasks", "logs", "m", "manual__2026-01-01T00:00:00", "extract"]),
        format!(
            "error: DAG `m` has no run `manual__2026-01-01T00:00:00` (did you mean `{run}`?); see `rhaiflow runs list m`\n"
        )
    );
    assert_eq!(
        err(&["tasks", "states-for-run", "m", "manual__2026-01-01"]),
        format!("error: DAG `m` has no run `manual__2026-01-01` (did you mean `{run}`?); see `rhaiflow runs list m`\n")
    );
}

#[test]
fn a_dag_whose_file_fails_to_load_is_pointed_at_its_import_error() {
    let broken = r#"let dag = DAG("broken", #{ start_date: datetime(2026, 1, 1) });
let t = BashOperator(#{ task_id: "t", bash_comand: "true" });"#;
    let home = Home::new(&[("broken.rhai", broken), ("m.rhai", MANUAL)]);
    for args in [&["dags", "show", "broken"][..], &["dags", "test", "broken"], &["tasks", "test", "broken", "t"]] {
        let o = home.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.starts_with(
                "error: DAG `broken` is in `broken.rhai`, which failed to load; fix it (all its errors: `rhaiflow dags list-import-errors`):\nerror: "
            ),
            "{args:?}: {err}"
        );
        assert!(err.contains("bash_comand"), "{err}");
    }
}

#[test]
fn airflowignore_is_honoured_beside_rhaiflowignore() {
    let home = Home::new(&[("m.rhai", MANUAL), ("wip.rhai", "neither is this")]);
    std::fs::create_dir_all(home.path().join("dags/old")).unwrap();
    std::fs::write(home.path().join("dags/old/x.rhai"), "this is not rhai").unwrap();
    std::fs::write(home.path().join("dags/.airflowignore"), "old/\n").unwrap();
    std::fs::write(home.path().join("dags/.rhaiflowignore"), "wip.rhai\n").unwrap();
    let o = home.run(&["dags", "check"]);
    assert_eq!(stdout(&o), "ok: 1 DAG(s) in 1 file(s)\n");
    assert!(o.status.success());
}
