//! The scheduler says what it does on stderr, through the real binary: runs created, tasks started
//! and finished (state, duration), retries with their next time, DAG changes, import errors — as
//! human lines, or JSON lines with `[logging] format = "json"`; `RUST_LOG` picks the levels.

mod common;

use common::{Home, Running, wait_until};
use std::io::BufRead;
use std::sync::{Arc, Mutex};

const DAG: &str = r#"let dag = DAG("logdemo", #{ schedule: "@once", start_date: datetime(2024, 1, 1), catchup: false });
let ok = BashOperator(#{ task_id: "ok", bash_command: "echo fine" });
let flaky = BashOperator(#{ task_id: "flaky", bash_command: "exit 3", retries: 1, retry_delay: seconds(1) });
ok >> flaky;
"#;

/// The scheduler, with its stderr read line by line as it comes.
struct Scheduler {
    process: Running,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Scheduler {
    fn start(home: &Home, env: &[(&str, &str)]) -> Scheduler {
        let mut command = home.command(&["scheduler"]);
        command.env_remove("RUST_LOG").envs(env.iter().copied());
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the scheduler starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Scheduler { process: Running(Some(child)), lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `f`; returns it.
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_until(what, || self.lines().into_iter().find(|l| f(l)))
    }

    fn stop(mut self) -> Vec<String> {
        self.process.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, _, _) = self.process.finish();
        assert_eq!(code, Some(0));
        // The reader thread ends at EOF, right after the process.
        wait_until("stderr drained", || Some(()).filter(|_| Arc::strong_count(&self.lines) == 1));
        self.lines()
    }
}

fn home(config: &str) -> Home {
    let home = Home::new(&[("logdemo.rhai", DAG), ("broken.rhai", "let x = ;\n")]);
    std::fs::write(home.path().join("rhaiflow.toml"), config).unwrap();
    home
}

const RUN: &str = "scheduled__2024-01-01T00:00:00+00:00";

#[test]
fn human_lines_tell_what_the_scheduler_does() {
    let home = home("");
    let scheduler = Scheduler::start(&home, &[]);
    scheduler.wait_for("the run to finish", |l| l.contains("run finished"));
    // A DAG change recorded by another command reaches the scheduler's log.
    let edited = DAG.replace("echo fine", "echo finer");
    std::fs::write(home.path().join("dags/logdemo.rhai"), edited).unwrap();
    assert!(home.run(&["dags", "pause", "logdemo"]).status.success());
    scheduler.wait_for("the change", |l| l.contains("DAG changed") && l.contains("dag_id=logdemo"));
    scheduler.wait_for("the pause", |l| l.contains("DAG paused") && l.contains("dag_id=logdemo"));
    let lines = scheduler.stop();
    let find = |parts: &[&str]| {
        lines
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{}", lines.join("\n")))
            .clone()
    };
    let import = find(&["WARN", "import error", "file=broken.rhai", "line=1"]);
    assert!(import.contains("error=\"syntax error"), "{import}");
    find(&["INFO", "scheduler started", "dags=1", "import_errors=1"]);
    find(&[
        "INFO",
        "run created",
        "dag_id=logdemo",
        &format!("run_id={RUN}"),
        "logical_date=2024-01-01T00:00:00+00:00",
    ]);
    find(&["INFO", "task started", "task_id=ok", "try_number=1"]);
    let ok = find(&["INFO", "task finished", "task_id=ok", "state=success"]);
    let duration: f64 =
        ok.split("duration_s=").nth(1).and_then(|d| d.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(duration >= 0.0, "{ok}");
    let retry = find(&["INFO", "task up for retry", "task_id=flaky", "try_number=1", "next_try_at="]);
    assert!(retry.contains("next_try_at=20"), "{retry}");
    find(&["INFO", "task finished", "task_id=flaky", "try_number=1", "state=up_for_retry"]);
    find(&["INFO", "task finished", "task_id=flaky", "try_number=2", "state=failed"]);
    find(&["INFO", "run finished", "dag_id=logdemo", "state=failed"]);
    assert!(lines.iter().all(|l| !l.starts_with('{')), "text lines, not JSON");
}

#[test]
fn json_lines_with_logging_format_json() {
    let home = home("[logging]\nformat = \"json\"\n");
    let scheduler = Scheduler::start(&home, &[]);
    scheduler.wait_for("the run to finish", |l| l.contains("run finished"));
    let lines = scheduler.stop();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let find = |message: &str, task: Option<&str>, extra: (&str, serde_json::Value)| {
        events
            .iter()
            .find(|e| {
                e["message"].as_str().is_some_and(|m| m.starts_with(message))
                    && task.is_none_or(|t| e["task_id"] == t)
                    && e[extra.0] == extra.1
            })
            .unwrap_or_else(|| panic!("no `{message}` event in:\n{}", lines.join("\n")))
            .clone()
    };
    let created = find("run created", None, ("dag_id", "logdemo".into()));
    assert_eq!(created["run_id"], RUN);
    assert_eq!(created["level"], "INFO");
    assert!(created["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{created}");
    let finished = find("task finished", Some("ok"), ("state", "success".into()));
    assert!(finished["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "{finished}");
    assert_eq!(finished["try_number"], 1);
    let retry = find("task up for retry", Some("flaky"), ("try_number", 1.into()));
    assert!(retry["next_try_at"].as_str().is_some_and(|t| t.starts_with("20")), "{retry}");
    find("task finished", Some("flaky"), ("state", "failed".into()));
    let import = find("import error", None, ("file", "broken.rhai".into()));
    assert_eq!(import["level"], "WARN");
}

fn wait_for_the_run_to_fail(home: &Home) {
    wait_until("the run to fail", || {
        let state: Option<String> =
            home.db().query_row("SELECT state FROM dag_run WHERE dag_id = 'logdemo'", [], |r| r.get(0)).ok();
        state.filter(|s| s == "failed")
    });
}

#[test]
fn rust_log_picks_the_levels() {
    let home = home("");
    let scheduler = Scheduler::start(&home, &[("RUST_LOG", "warn")]);
    wait_for_the_run_to_fail(&home);
    let lines = scheduler.stop();
    assert!(lines.iter().any(|l| l.contains("WARN") && l.contains("import error")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("INFO")), "warn hides info lines: {lines:#?}");

    // Directives as RUST_LOG takes them; `RHAIFLOW__LOGGING__LEVEL` wins over RUST_LOG.
    let home = self::home("");
    let scheduler = Scheduler::start(
        &home,
        &[("RUST_LOG", "error"), ("RHAIFLOW__LOGGING__LEVEL", "warn,rhaiflow::scheduler=info")],
    );
    wait_for_the_run_to_fail(&home);
    let lines = scheduler.stop();
    assert!(lines.iter().any(|l| l.contains("run created")), "scheduler at info: {lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("task started")), "the event loop at warn: {lines:#?}");
}

#[test]
fn bad_logging_settings_are_config_errors() {
    let home = home("[logging]\nformat = \"xml\"\n");
    let o = home.run(&["dags", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config key `logging.format` (from rhaiflow.toml)"), "{err}");
    assert!(err.contains("`text`") && err.contains("`json`"), "{err}");

    let home = self::home("");
    let o = home.command(&["dags", "list"]).env("RUST_LOG", "rhaiflow=loud").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config key `logging.level` (from environment variable RUST_LOG)"), "{err}");
    assert!(err.contains("`rhaiflow=loud` is not a log level or filter"), "{err}");
}
