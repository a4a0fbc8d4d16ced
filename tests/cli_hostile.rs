//! Issue 7 tried as a hostile Airflow user would, through the real binary: each defect found
//! became a test here.

mod common;

use common::{Home, output_within_deadline};
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const FAILS_FIRST: &str = r#"let dag = DAG("f", #{ start_date: datetime(2026, 1, 1), schedule: (), catchup: false });
let a = BashOperator(#{ task_id: "a", bash_command: "exit 3" });
let b = BashOperator(#{ task_id: "b", bash_command: "echo b" });
let big = BashOperator(#{ task_id: "big", bash_command: "for i in $(seq 1 20000); do echo line $i of a long log; done" });
a >> b;"#;

/// `tasks logs` of a try that never ran says so (exit 1), never "No such file or directory".
#[test]
fn tasks_logs_of_a_try_that_never_ran_says_so() {
    let home = Home::new(&[("f.rhai", FAILS_FIRST)]);
    let o = home.run(&["dags", "test", "f", "2026-11-05"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let run = "manual__2026-11-05T00:00:00+00:00";
    let logs = |args: &[&str]| {
        let mut all = vec!["tasks", "logs", "f", run];
        all.extend(args);
        home.run(&all)
    };
    let o = logs(&["b"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str(), stderr(&o).as_str()),
        (
            Some(1),
            "",
            "error: task `b` of run `manual__2026-11-05T00:00:00+00:00` of DAG `f` never ran (state \
             `upstream_failed`), so it has no log\n"
        )
    );
    let o = logs(&["a", "--try", "7"]);
    assert_eq!(
        (o.status.code(), stderr(&o).as_str()),
        (
            Some(1),
            "error: task `a` of run `manual__2026-11-05T00:00:00+00:00` of DAG `f` has had 1 try, so try 7 has no \
             log; see the latest with `--try 1`\n"
        )
    );
    let o = logs(&["a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("the command exited with code 3"), "{}", stdout(&o));

    // A run waiting on a paused DAG: its tasks have not run yet.
    assert!(home.run(&["dags", "pause", "f"]).status.success());
    assert!(home.run(&["dags", "trigger", "f", "--logical-date", "2026-11-06"]).status.success());
    let o = home.run(&["tasks", "logs", "f", "manual__2026-11-06T00:00:00+00:00", "a"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: task `a` of run `manual__2026-11-06T00:00:00+00:00` of DAG `f` has not run yet (state `none`), so \
         it has no log\n"
    );

    // A log removed by hand: named, with its path, and no OS error text.
    let path = home.path().join(format!("logs/dag_id=f/run_id={run}/task_id=a/attempt=1.log"));
    std::fs::remove_file(&path).unwrap();
    let o = logs(&["a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("has no log at logs/dag_id=f/run_id={run}/task_id=a/attempt=1.log")),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("os error"), "{}", stderr(&o));

    // A long log streamed into `head -1` ends quietly, as SIGPIPE would end it.
    let bin = env!("CARGO_BIN_EXE_rhaiflow");
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &format!("set -o pipefail; {bin} tasks logs f {run} big | head -1 >/dev/null")])
        .current_dir(home.path())
        .env_remove("RHAIFLOW_HOME");
    let o = output_within_deadline(cmd, "tasks logs | head -1");
    assert_eq!((o.status.code(), stderr(&o).as_str()), (Some(141), ""));
}

/// Every `cargo run --release -- ...` command of the README, run as a user on a fresh clone would
/// (from the repository's root, defaults as shipped, new DAGs paused), but with the binary already
/// built and state in a temporary home: each succeeds, the scheduler runs MCWork and nothing else
/// (the examples do not flood the machine), and `dags check` stays clean once the database exists
/// (tour.rhai once named a pool no fresh database has).
#[test]
fn the_readme_commands_succeed_and_run_only_what_was_unpaused() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let home = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_rhaiflow");
    let command = |line: &str| {
        let (_, args) = line.split_once("cargo run --release -- ").unwrap_or_else(|| panic!("{line}"));
        let args: Vec<&str> = args.trim_end_matches('`').split_whitespace().collect();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(&args)
            .arg("--home")
            .arg(home.path())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RHAIFLOW_HOME")
            .env_remove("MCWORK_HOME")
            // MCWork's two-minute sleep, shortened as the README does for `dags test`.
            .env("MCWORK_WAIT", "0");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RHAIFLOW__") {
                cmd.env_remove(key);
            }
        }
        // `standalone` serves the REST API: on a free port, not 8080, which may be taken here.
        cmd.env("RHAIFLOW__WEBSERVER__BIND", format!("127.0.0.1:{port}"));
        (matches!(args.first(), Some(&"scheduler" | &"standalone")), cmd)
    };
    let mut commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.contains("cargo run --release -- ") && !l.starts_with('|'))
        .map(|l| l.trim())
        .collect();
    // Inline ones ("From another terminal, `cargo run ... dags trigger ...`") run in their turn.
    for line in &mut commands {
        if !line.starts_with("cargo") && !line.starts_with("MCWORK_WAIT") {
            let inline = &line[line.find("cargo run").unwrap()..];
            *line = &inline[..inline.find('`').unwrap_or(inline.len())];
        }
    }
    assert!(commands.len() >= 4, "{commands:?}");
    assert!(
        commands.iter().any(|l| l.contains("dags trigger MCWork")),
        "the README triggers MCWork while the scheduler runs: {commands:?}"
    );
    let mut scheduler = None;
    for line in &commands {
        let (long_running, mut cmd) = command(line);
        if long_running {
            scheduler = Some(common::Running(Some(
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap(),
            )));
            continue;
        }
        let o = output_within_deadline(cmd, line);
        assert!(o.status.success(), "`{line}`: {}{}", stdout(&o), stderr(&o));
    }
    let scheduler = scheduler.expect("the README starts the scheduler");
    let runs = |dag_id: &str| {
        let line = format!("cargo run --release -- runs list {dag_id} --output json --dags-folder examples/dags");
        let o = output_within_deadline(command(&line).1, "runs list");
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().cloned().unwrap_or_default()
    };
    common::wait_until("the triggered MCWork run", || {
        runs("MCWork").iter().any(|r| r["run_type"] == "manual" && r["state"] == "success").then_some(())
    });
    drop(scheduler);
    for paused in ["tour_etl", "tour_ingest", "tour_reports", "daily_reporter_airflow_2"] {
        assert_eq!(runs(paused).len(), 0, "{paused} is paused and has no run");
    }
    let o = output_within_deadline(command("cargo run --release -- dags check --dags-folder examples/dags").1, "check");
    assert!(o.status.success(), "dags check with the database: {}{}", stdout(&o), stderr(&o));
}

/// No secret in any log line rhaiflow writes, as Airflow's secrets masker: a connection's password
/// as a template reads it (percent-decoded: it once showed in the `running:` line), values under
/// sensitive keys of its extra, sensitive variables, and all of these in what the task itself
/// prints on stdout or stderr (it once went to the log as printed).
#[test]
fn secrets_are_masked_in_every_line_of_a_task_log() {
    let dag = r#"let dag = DAG("m", #{ start_date: datetime(2026, 1, 1), schedule: (), catchup: false });
let a = BashOperator(#{ task_id: "a", bash_command: "echo {{ conn.db.password }} {{ conn.db.extra_dejson.api_token }}; echo '{{ conn.db.get_uri() }}' >&2; printf '%s' {{ var.value.api_password }}; exit 2" });"#;
    let home = Home::new(&[("m.rhai", dag)]);
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        "[connections.db]\nuri = \"postgres://us%3Aer:p%40ssw0rd%2F99@host:5432/db?sslmode=require&api_token=xtrasecret1\"\n\
         [variables]\napi_password = \"varsecret99\"\nplain = \"notsecret77\"\n",
    )
    .unwrap();
    let o = home.run(&["dags", "test", "m", "2026-11-05"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let log = home.log("m", "manual__2026-11-05T00:00:00+00:00", "a");
    for secret in ["p@ssw0rd/99", "p%40ssw0rd%2F99", "xtrasecret1", "varsecret99"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
        assert!(!stdout(&o).contains(secret), "`{secret}` in dags test's output:\n{}", stdout(&o));
    }
    let log = common::unstamped(&log);
    let lines: Vec<&str> = log.lines().collect();
    // stdout and stderr are read apart: their lines may come in either order.
    for line in ["*** ***", "postgres://us%3Aer:***@host:5432/db?sslmode=require&api_token=***", "***"] {
        assert!(lines.contains(&line), "`{line}` in {log}");
    }
}

/// Dates as `pendulum.parse` reads them: `Z` after minutes is UTC; a leap second is no date (it once
/// made run `manual__2026-11-05T00:00:60.000000+00:00`).
#[test]
fn dates_take_z_without_seconds_and_refuse_leap_seconds() {
    let home = Home::new(&[("f.rhai", FAILS_FIRST)]);
    let o = home.run(&["dags", "trigger", "f", "--logical-date", "2026-11-05T06:30Z"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("triggered f: run manual__2026-11-05T06:30:00+00:00 "), "{}", stdout(&o));
    for leap in ["2026-11-05T00:00:60", "2026-12-31T23:59:60Z", "2026-12-31 23:59:60+00:00"] {
        let o = home.run(&["dags", "trigger", "f", "--logical-date", leap]);
        assert_eq!(
            (o.status.code(), stderr(&o)),
            (
                Some(2),
                format!(
                    "error: `{leap}` is not a date; use 2024-01-01, 2024-01-01T06:00, 2024-01-01T06:00:00 or RFC 3339\n"
                )
            )
        );
    }
    assert_eq!(home.runs("f").len(), 1);
}

/// A database file that is not SQLite is named in the error (SQLite's "file is not a database"
/// named none), and with `[logging] format = "json"` the scheduler's last words are JSON too.
#[test]
fn a_file_that_is_not_a_database_is_named_and_the_json_log_stays_json() {
    let home = Home::new(&[("f.rhai", FAILS_FIRST)]);
    std::fs::write(home.path().join("rhaiflow.db"), "x".repeat(200)).unwrap();
    let o = home.run(&["runs", "list", "f"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("error: cannot open database `"), "{}", stderr(&o));
    assert!(stderr(&o).contains("rhaiflow.db`: file is not a database; point `[database] url`"), "{}", stderr(&o));
    std::fs::write(home.path().join("rhaiflow.toml"), "[logging]\nformat = \"json\"\n").unwrap();
    let o = home.run(&["scheduler"]);
    assert_eq!(o.status.code(), Some(2));
    for line in stderr(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["level"] == "ERROR" {
            assert!(v["error"].as_str().unwrap().contains("file is not a database"), "{line}");
        }
    }
    assert!(stderr(&o).contains("\"level\":\"ERROR\""), "{}", stderr(&o));
}
