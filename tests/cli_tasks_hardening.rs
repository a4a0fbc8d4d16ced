//! Task hardening through the real binary: a try that cannot start fails with its reason instead of
//! staying `queued`, output is bounded, secrets stay out of tasks, files are private, and a task
//! outlives the process that started it. Waits are for states, with deadlines.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Home {
    dir: tempfile::TempDir,
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
        c.args(args).current_dir(self.path()).env_remove("RHAIFLOW_HOME");
        c
    }

    /// Runs a command that must end by itself: killed and failed after a generous deadline (a
    /// stranded task makes `dags test` wait for ever).
    fn run(&self, args: &[&str]) -> Output {
        run_with_deadline(self.command(args), args)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let o = self.run(&all);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn states(&self, dag_id: &str, run_id: &str) -> std::collections::HashMap<String, (String, u64)> {
        let rows = self.json(&["tasks", "states-for-run", dag_id, run_id]);
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let task = r["task_id"].as_str().unwrap().to_string();
                (task, (r["state"].as_str().unwrap().to_string(), r["try_number"].as_u64().unwrap()))
            })
            .collect()
    }

    fn log(&self, dag_id: &str, run_id: &str, task: &str) -> String {
        stdout(&self.run(&["tasks", "logs", dag_id, run_id, task]))
    }
}

fn run_with_deadline(mut cmd: Command, what: &[&str]) -> Output {
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("rhaiflow runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("{what:?} did not finish within 120 s: {}", stdout(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        let fmt = BashOperator(#{{ task_id: "fmt", bash_command: "echo {{{{ macros.ds_format(ds, '%Y-%m-%d', '%H') }}}}" }});
        let nowhere = BashOperator(#{{ task_id: "nowhere", bash_command: "true", cwd: "$HOME_DIR/missing" }});"#
    );
    let home = Home::new(&[("broken.rhai", &dag)]);
    let o = home.run(&["dags", "test", "broken", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let states = home.states("broken", RUN_ID);
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
    let states = home.states("pull", RUN_ID);
    assert_eq!(states["a"].0, "success");
    assert_eq!(states["b"].0, "failed");
    let log = home.log("pull", RUN_ID, "b");
    assert!(log.contains("cannot read the XComs of run") && !log.contains("got="), "{log}");
}
