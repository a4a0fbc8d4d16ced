//! Task hardening through the real binary: a try that cannot start fails with its reason instead of
//! staying `queued`, output is bounded, secrets stay out of tasks, files are private, and a task
//! outlives the process that started it. Waits are for states, with deadlines.

mod common;

use common::{Home, Running, output_within_deadline, wait_until};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `task_id → (state, try_number)` of a run.
fn states(home: &Home, dag_id: &str, run_id: &str) -> HashMap<String, (String, u64)> {
    home.states(dag_id, run_id).into_iter().map(|(task, state, tries)| (task, (state, tries))).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";
const RUN_ID: &str = "manual__2024-03-09T00:00:00+00:00";

#[test]
fn a_task_that_cannot_start_fails_with_its_reason_and_retries() {
    let dag = format!(
        r#"let dag = DAG("broken", #{{ {MANUAL} }});
        let add = BashOperator(#{{ task_id: "add", retries: 1, retry_delay: seconds(0),
            bash_command: "echo {{{{ macros.ds_add(ds, 1000000000) }}}}" }});
        let fmt = BashOperator(#{{ task_id: "fmt", bash_command: "echo {{{{ macros.ds_format(ds, '%Y-%m-%d', '%Q') }}}}" }});
        let nowhere = BashOperator(#{{ task_id: "nowhere", bash_command: "true", cwd: "$HOME_DIR/missing" }});"#
    );
    let home = Home::new(&[("broken.rhai", &dag)]);
    let o = home.run(&["dags", "test", "broken", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let states = states(&home, "broken", RUN_ID);
    assert_eq!(states["add"], ("failed".to_string(), 2), "the template error went through retries");
    assert_eq!(states["fmt"].0, "failed");
    assert_eq!(states["nowhere"].0, "failed");
    let add = home.log("broken", RUN_ID, "add");
    assert!(add.contains("template error in `bash_command`") && add.contains("marking task as FAILED"), "{add}");
    let fmt = home.log("broken", RUN_ID, "fmt");
    assert!(fmt.contains("template error in `bash_command`"), "{fmt}");
    let nowhere = home.log("broken", RUN_ID, "nowhere");
    assert!(nowhere.contains("`cwd`") && nowhere.contains("missing"), "{nowhere}");
}

#[test]
fn a_failed_xcom_read_fails_the_task_instead_of_rendering_nothing() {
    let dag = format!(
        r#"let dag = DAG("pull", #{{ {MANUAL} }});
        let a = BashOperator(#{{ task_id: "a", bash_command: "echo value" }});
        let b = BashOperator(#{{ task_id: "b", bash_command: "echo got={{{{ ti.xcom_pull('a') }}}}" }});
        a >> b;"#
    );
    let home = Home::new(&[("pull.rhai", &dag)]);
    assert!(home.run(&["db", "migrate"]).status.success());
    // Every XCom written becomes a value the store cannot read back.
    let db = rusqlite::Connection::open(home.path().join("rhaiflow.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER spoil AFTER INSERT ON xcom BEGIN \
         UPDATE xcom SET value = x'00ff' WHERE dag_id = NEW.dag_id AND run_id = NEW.run_id AND task_id = NEW.task_id; END;",
    )
    .unwrap();
    drop(db);
    let o = home.run(&["dags", "test", "pull", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let states = states(&home, "pull", RUN_ID);
    assert_eq!(states["a"].0, "success");
    assert_eq!(states["b"].0, "failed");
    let log = home.log("pull", RUN_ID, "b");
    assert!(log.contains("cannot read the XComs of run") && !log.contains("got="), "{log}");
}

/// The log folder of a task in the DAG's only run.
fn task_log_dir(home: &Home, dag_id: &str, task_id: &str) -> std::path::PathBuf {
    let dag_dir = home.path().join("logs").join(format!("dag_id={dag_id}"));
    let run_dir = std::fs::read_dir(&dag_dir).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.path());
    run_dir.unwrap_or_else(|| dag_dir.join("run_id=none")).join(format!("task_id={task_id}"))
}

#[test]
fn an_xcom_over_the_cap_fails_the_task_with_its_size() {
    let dag = format!(
        r#"let dag = DAG("big", #{{ {MANUAL} }});
        let t = BashOperator(#{{ task_id: "t", bash_command: "head -c 3145728 /dev/zero | tr '\\0' x; echo" }});
        let small = BashOperator(#{{ task_id: "small", bash_command: "echo fine" }});"#
    );
    let home = Home::new(&[("big.rhai", &dag)]);
    let o = home.run(&["dags", "test", "big", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let states = states(&home, "big", RUN_ID);
    assert_eq!(states["t"].0, "failed");
    assert_eq!(states["small"].0, "success");
    let log = home.log("big", RUN_ID, "t");
    assert!(
        log.contains("XCom `return_value` of task `t` is 3 MiB, over `core.max_xcom_bytes` (1 MiB)"),
        "{}",
        &log[log.len().saturating_sub(400)..]
    );
    let stamp = "[2024-03-09T00:00:00.000+0000] ".len();
    assert!(log.lines().all(|l| l.len() <= stamp + 64 * 1024), "a line with no newline is split at 64 KiB");
}

#[test]
fn a_task_outlives_a_kill_9_of_its_scheduler_and_records_its_outcome() {
    let dag = r#"let dag = DAG("survivor", #{ start_date: datetime(2024, 3, 9), schedule: "@once" });
        let t = BashOperator(#{ task_id: "t", bash_command: "echo started; while [ ! -e $HOME_DIR/go ]; do sleep 0.05; done; for i in $(seq 1 5000); do echo line-$i; done; echo finished" });"#;
    let home = Home::new(&[("survivor.rhai", dag)]);
    let mut scheduler =
        Running(Some(home.command(&["scheduler"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()));
    let log = || task_log_dir(&home, "survivor", "t").join("attempt=1.log");
    wait_until("the task to start", || {
        std::fs::read_to_string(log()).unwrap_or_default().contains("] started\n").then_some(())
    });
    let (dir, log) = (task_log_dir(&home, "survivor", "t"), log());
    scheduler.kill_9();
    // The owner is gone; the task now writes 5,000 lines (the pipe a dead owner read from would
    // have killed it with SIGPIPE) and records how it ended.
    std::fs::write(home.path().join("go"), "").unwrap();
    let recorded = wait_until("the recorded outcome", || rhaiflow::executor::read_status(&log));
    assert_eq!(recorded.exit, rhaiflow::executor::Exit::Code(0), "{recorded:?}");
    assert_eq!(recorded.last_line.as_deref(), Some("finished"), "{recorded:?}");
    assert!(!dir.join("attempt=1.status").exists(), "a small outcome is an attribute of the log, not a file");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter_map(|l| l.split_once("] ").map(|(_, l)| l)).collect();
    let at = lines.iter().position(|l| *l == "line-5000").expect("the log is complete");
    assert_eq!(lines[at + 1], "finished", "the log is complete");
}

#[test]
fn tasks_do_not_inherit_the_variables_rhaiflow_reads_secrets_from() {
    let dag = format!(
        r#"let dag = DAG("env", #{{ {MANUAL} }});
        let plain = BashOperator(#{{ task_id: "plain", bash_command: "echo uri=${{DB_URI:-unset}} pw=${{RHAIFLOW__ALERTS__EMAIL__PASSWORD:-unset}} other=${{OTHER_VAR:-unset}}; echo supervisor=$(tr '\\0' '\\n' < /proc/$PPID/environ | grep -c -e ^DB_URI= -e ^RHAIFLOW__ALERTS__)" }});
        let asks = BashOperator(#{{ task_id: "asks", append_env: true, env: #{{ DB_URI: "{{{{ conn.db.get_uri() }}}}" }},
            bash_command: "echo uri=${{DB_URI:-unset}} other=${{OTHER_VAR:-unset}}" }});"#
    );
    let home = Home::new(&[("env.rhai", &dag)]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[connections.db]\nuri_env = \"DB_URI\"\n").unwrap();
    let mut cmd = home.command(&["dags", "test", "env", "2024-03-09"]);
    cmd.env("DB_URI", "sqlite://dummy-value")
        .env("RHAIFLOW__ALERTS__EMAIL__PASSWORD", "dummy-pw")
        .env("OTHER_VAR", "kept");
    let o = output_within_deadline(cmd, "dags test");
    assert!(o.status.success(), "{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    // Read directly: other commands would need the secret variables set to load the config.
    let log = |task: &str| std::fs::read_to_string(task_log_dir(&home, "env", task).join("attempt=1.log")).unwrap();
    let plain = log("plain");
    assert!(plain.contains("uri=unset pw=unset other=kept\n"), "{plain}");
    // Nor from their supervisor's environment (`/proc/$PPID/environ`), forked or not.
    assert!(plain.contains("supervisor=0\n"), "{plain}");
    let asks = log("asks");
    assert!(asks.contains("uri=sqlite://dummy-value other=kept\n"), "a task that names the variable gets it: {asks}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn the_database_its_wal_and_the_logs_are_private_whatever_the_umask() {
    let dag = r#"let dag = DAG("priv", #{ start_date: datetime(2024, 3, 9), schedule: "@once" });
        let t = BashOperator(#{ task_id: "t", bash_command: "echo hello" });"#;
    let home = Home::new(&[("priv.rhai", dag)]);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("umask 000; exec {} scheduler", env!("CARGO_BIN_EXE_rhaiflow")))
        .current_dir(home.path())
        .env_remove("RHAIFLOW_HOME")
        .env("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _scheduler = Running(Some(cmd.spawn().unwrap()));
    wait_until("the task to finish", || {
        rhaiflow::executor::read_status(&task_log_dir(&home, "priv", "t").join("attempt=1.log"))
    });
    let db = home.path().join("rhaiflow.db");
    for file in [db.clone(), db.with_extension("db-wal"), db.with_extension("db-shm")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let dir = task_log_dir(&home, "priv", "t");
    assert_eq!(mode(&dir.join("attempt=1.log")), 0o600);
    for d in [home.path().join("logs"), dir.parent().unwrap().parent().unwrap().to_path_buf(), dir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
}

#[test]
fn a_database_that_is_not_rhaiflows_is_refused_and_an_old_one_is_adopted() {
    let home = Home::new(&[]);
    let foreign = home.path().join("other.db");
    let db = rusqlite::Connection::open(&foreign).unwrap();
    db.execute_batch("CREATE TABLE accounts (id INTEGER); INSERT INTO accounts VALUES (1);").unwrap();
    drop(db);
    let other = |home: &Home| {
        let mut cmd = home.command(&["db", "migrate"]);
        cmd.env("RHAIFLOW__DATABASE__URL", "sqlite://other.db");
        output_within_deadline(cmd, "db migrate")
    };
    let o = other(&home);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a rhaiflow database (application_id 0); refusing to use it"), "{err}");
    let db = rusqlite::Connection::open(&foreign).unwrap();
    let tables: i64 = db.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 1, "nothing was added to the foreign database");
    let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete", "its journal mode was left alone");
    db.execute_batch("PRAGMA application_id = 1234").unwrap();
    drop(db);
    let err = String::from_utf8_lossy(&other(&home).stderr).to_string();
    assert!(err.contains("(application_id 1234)"), "{err}");

    // A database made before application_id was set: adopted and stamped.
    assert!(home.run(&["db", "migrate"]).status.success());
    let ours = home.path().join("rhaiflow.db");
    let db = rusqlite::Connection::open(&ours).unwrap();
    db.execute_batch("PRAGMA application_id = 0").unwrap();
    drop(db);
    assert!(home.run(&["db", "migrate"]).status.success());
    let db = rusqlite::Connection::open(&ours).unwrap();
    let id: i64 = db.query_row("PRAGMA application_id", [], |r| r.get(0)).unwrap();
    assert_eq!(id, 0x5248_4146);
}

#[test]
fn a_task_log_shows_the_command_with_secrets_masked_a_stamp_on_every_line_and_how_it_ended() {
    let dag = format!(
        r#"let dag = DAG("readable", #{{ {MANUAL} }});
        let t = BashOperator(#{{ task_id: "t", bash_command: "echo hello; true {{{{ conn.db.get_uri() }}}} {{{{ var.value.api_token }}}}; exit 3" }});"#
    );
    let home = Home::new(&[("readable.rhai", &dag)]);
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        "[connections.db]\nuri = \"postgres://app:hunter2secret@db.example:5432/app\"\n[variables]\napi_token = \"tok-0123456789\"\n",
    )
    .unwrap();
    let o = home.run(&["dags", "test", "readable", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let log = home.log("readable", RUN_ID, "t");
    assert!(!log.contains("hunter2secret") && !log.contains("tok-0123456789"), "secrets stay out of the log: {log}");
    let stamp = regex::Regex::new(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000\] ").unwrap();
    assert!(log.lines().all(|l| stamp.is_match(l)), "every line is stamped: {log}");
    let texts: Vec<&str> = log.lines().map(|l| l.split_once("] ").unwrap().1).collect();
    assert!(
        texts.contains(
            &"[rhaiflow] running: bash -c 'echo hello; true postgres://app:***@db.example:5432/app ***; exit 3'"
        ),
        "{log}"
    );
    let at = texts.iter().position(|l| *l == "hello").expect("the task's output");
    assert!(texts[at + 1].starts_with("[rhaiflow] the command exited with code 3 after "), "{log}");
    assert!(texts.last().unwrap().contains("marking task as FAILED"), "{log}");
}
