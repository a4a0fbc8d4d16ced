//! `PythonOperator`: Python functions beside the DAG file run by a real `python3`, through the real
//! binary (`dags test`, `tasks test`) against a real SQLite file.

mod common;

use common::{Home, unstamped};

const MANUAL: &str = r#"schedule: (), start_date: datetime(2024, 1, 1)"#;

/// The module the DAGs below call, `etl_tasks.py` beside them.
const TASKS_PY: &str = r#"
import os
import sys
import time

def extract():
    print("extracting rows")
    print("to stderr too", file=sys.stderr)
    return [1, 2, 3]

def transform(rows, factor, label, shell_out, ds, params, ti, run_id):
    ti.xcom_push("side", {"n": len(rows)})
    return {
        "rows": rows, "factor": factor, "label": label, "shell_out": shell_out,
        "ds": ds, "name": params["name"], "try_number": ti.try_number, "run_id": run_id,
        "pulled": ti.xcom_pull(task_ids="extract"),
        "pulled_bash": ti.xcom_pull(task_ids="shell"),
        "pulled_many": ti.xcom_pull(task_ids=["extract", "nope"]),
        "missing": ti.xcom_pull(task_ids="extract", key="nope"),
        "secret_env": os.environ.get("PY_TEST_SECRET"),
    }

def everything(first, **context):
    return {
        "first": first,
        "has": sorted(k for k in ("ds", "ti", "params", "dag_run", "run_id", "logical_date", "templates_dict", "extra")
                      if k in context),
        "extra": context["extra"],
        "conf": context["dag_run"].conf,
        "dag_run_id": context["dag_run"].run_id,
        "year": context["logical_date"].year,
        "templates_dict": context["templates_dict"],
    }

def only_args(a, b):
    return [a, b]

def leaky(url):
    print("calling " + url)
    raise RuntimeError("refused by " + url)

def boom(x):
    print("about to fail")
    raise ValueError("boom from python " + x)

def not_json():
    return {"s": {1, 2}}

def sleepy():
    print("going to sleep", flush=True)
    time.sleep(1000)

def quits():
    print("quitting early")
    sys.exit(0)

def quits_badly():
    sys.exit(3)
"#;

fn xcom(home: &Home, dag_id: &str, task_id: &str, key: &str) -> Option<serde_json::Value> {
    let value: Option<String> = home
        .db()
        .query_row(
            "SELECT value FROM xcom WHERE dag_id = ?1 AND task_id = ?2 AND key = ?3",
            [dag_id, task_id, key],
            |r| r.get(0),
        )
        .ok();
    value.map(|v| serde_json::from_str(&v).unwrap())
}

fn all_output(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn home_with(dag: &str) -> Home {
    Home::new(&[("etl.rhai", dag), ("etl_tasks.py", TASKS_PY)])
}

#[test]
fn functions_get_their_context_and_pass_xcoms_in_and_out() {
    let dag = format!(
        r#"let dag = DAG("etl", #{{ {MANUAL}, params: #{{ name: "dag" }} }});
        let shell = BashOperator(#{{ task_id: "shell", bash_command: "echo hello-from-bash" }});
        let extract = PythonOperator(#{{ task_id: "extract", python_callable: "etl_tasks:extract" }});
        let transform = PythonOperator(#{{ task_id: "transform", python_callable: "etl_tasks:transform",
            op_args: [#{{ xcom_pull: "extract" }}],
            op_kwargs: #{{ factor: 3, label: "day {{{{ ds_nodash }}}}", shell_out: #{{ xcom_pull: "shell" }}, unused: 1 }},
            python: "python3", requirements: ["pandas==2.2"] }});
        let everything = PythonOperator(#{{ task_id: "everything", python_callable: "etl_tasks:everything",
            op_args: ["{{{{ ds }}}}"], op_kwargs: #{{ extra: #{{ side: #{{ xcom_pull: "transform", key: "side" }} }} }},
            templates_dict: #{{ when: "{{{{ ds }}}}", run: "{{{{ run_id }}}}" }} }});
        let only_args = PythonOperator(#{{ task_id: "only_args", python_callable: "etl_tasks:only_args", op_args: [1, "x"] }});
        let leaky = PythonOperator(#{{ task_id: "leaky", python_callable: "etl_tasks:leaky",
            op_args: ["{{{{ var.value.api_token }}}}"], trigger_rule: "all_done" }});
        [shell, extract] >> transform >> everything;"#
    );
    let home = home_with(&dag);
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        "[alerts.slack.ops]\nwebhook_env = \"PY_TEST_SECRET\"\n[variables]\napi_token = \"tok-s3cr3t-value\"\n",
    )
    .unwrap();
    let mut cmd = home.command(&["dags", "test", "etl", "2024-03-05", "--conf", r#"{"name": "conf"}"#]);
    cmd.env("PY_TEST_SECRET", "https://hooks.example/s3cr3t");
    let o = common::output_within_deadline(cmd, "dags test etl");
    let out = all_output(&o);
    assert_eq!(o.status.code(), Some(1), "only `leaky` fails: {out}");
    assert!(out.contains("leaky") && !out.contains("s3cr3t"), "{out}");

    let run_id = "manual__2024-03-05T00:00:00+00:00";
    assert_eq!(xcom(&home, "etl", "extract", "return_value"), Some(serde_json::json!([1, 2, 3])));
    assert_eq!(xcom(&home, "etl", "transform", "side"), Some(serde_json::json!({"n": 3})));
    assert_eq!(
        xcom(&home, "etl", "transform", "return_value"),
        Some(serde_json::json!({
            "rows": [1, 2, 3], "factor": 3, "label": "day 20240305", "shell_out": "hello-from-bash",
            "ds": "2024-03-05", "name": "conf", "try_number": 1, "run_id": run_id,
            "pulled": [1, 2, 3], "pulled_bash": "hello-from-bash", "pulled_many": [[1, 2, 3]], "missing": null,
            "secret_env": null,
        }))
    );
    assert_eq!(
        xcom(&home, "etl", "everything", "return_value"),
        Some(serde_json::json!({
            "first": "2024-03-05",
            "has": ["dag_run", "ds", "extra", "logical_date", "params", "run_id", "templates_dict", "ti"],
            "extra": {"side": {"n": 3}},
            "conf": {"name": "conf"}, "dag_run_id": run_id, "year": 2024,
            "templates_dict": {"when": "2024-03-05", "run": run_id},
        }))
    );
    assert_eq!(xcom(&home, "etl", "only_args", "return_value"), Some(serde_json::json!([1, "x"])));

    let log_of = |task: &str| {
        let mut cmd = home.command(&["tasks", "logs", "etl", run_id, task]);
        cmd.env("PY_TEST_SECRET", "https://hooks.example/s3cr3t");
        unstamped(&all_output(&common::output_within_deadline(cmd, "tasks logs")))
    };
    let log = log_of("extract");
    assert!(log.contains("extracting rows") && log.contains("to stderr too"), "{log}");
    assert!(log.contains("Done. Returned value was: [1, 2, 3]"), "{log}");
    let log = log_of("transform");
    assert!(log.contains("`requirements` are not installed by rhaiflow (pandas==2.2)"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    let log = log_of("leaky");
    assert!(log.contains("calling ***"), "a secret printed is masked: {log}");
    assert!(log.contains("`etl_tasks:leaky` raised RuntimeError: refused by ***"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    let leftovers: Vec<_> = walk(&home.path().join("logs")).into_iter().filter(|p| p.contains(".python")).collect();
    assert!(leftovers.is_empty(), "the payload and results are removed once read: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(entry.path().to_string_lossy().into_owned());
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        }
    }
    out
}

#[test]
fn failures_name_what_failed_and_keep_the_traceback_in_the_log() {
    let dag = format!(
        r#"let dag = DAG("fails", #{{ {MANUAL} }});
        PythonOperator(#{{ task_id: "boom", python_callable: "etl_tasks:boom", op_args: ["{{{{ ds }}}}"],
            retries: 1, retry_delay: seconds(0) }});
        PythonOperator(#{{ task_id: "no_module", python_callable: "etl_taskz:extract" }});
        PythonOperator(#{{ task_id: "no_function", python_callable: "etl_tasks:extrakt" }});
        PythonOperator(#{{ task_id: "bad_python", python_callable: "etl_tasks:extract", python: "python3-nowhere" }});
        PythonOperator(#{{ task_id: "not_json", python_callable: "etl_tasks:not_json" }});
        PythonOperator(#{{ task_id: "pull_missing", python_callable: "etl_tasks:only_args",
            op_args: [1, #{{ xcom_pull: "boom", key: "rows" }}] }});
        PythonOperator(#{{ task_id: "quits", python_callable: "etl_tasks:quits" }});
        PythonOperator(#{{ task_id: "quits_badly", python_callable: "etl_tasks:quits_badly" }});"#
    );
    let home = home_with(&dag);
    let o = home.run(&["dags", "test", "fails", "2024-01-02"]);
    let out = all_output(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    let states = home.states("fails", run_id);
    let state = |t: &str| states.iter().find(|(id, _, _)| id == t).map(|(_, s, n)| (s.clone(), *n)).unwrap();
    assert_eq!(state("boom"), ("failed".to_string(), 2), "retried once: {states:?}");
    assert_eq!(state("quits").0, "success", "sys.exit(0) is a success");
    assert_eq!(xcom(&home, "fails", "quits", "return_value"), None);
    for t in ["no_module", "no_function", "bad_python", "not_json", "pull_missing", "quits_badly"] {
        assert_eq!(state(t).0, "failed", "{t}: {states:?}");
    }

    let log = home.log("fails", run_id, "boom");
    assert!(log.contains("about to fail"), "{log}");
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("ValueError: boom from python 2024-01-02"), "{log}");
    assert!(
        log.contains("`etl_tasks:boom` raised ValueError: boom from python 2024-01-02; marking task as FAILED"),
        "{log}"
    );
    let first = home.run(&["tasks", "logs", "fails", run_id, "boom", "--try", "1"]);
    assert!(all_output(&first).contains("marking task as UP_FOR_RETRY"), "{}", all_output(&first));

    let log = home.log("fails", run_id, "no_module");
    assert!(log.contains("ModuleNotFoundError"), "{log}");
    assert!(log.contains("cannot import module `etl_taskz` of `etl_taskz:extract`"), "{log}");
    let log = home.log("fails", run_id, "no_function");
    assert!(log.contains("module `etl_tasks` has no callable `extrakt`"), "{log}");
    let log = home.log("fails", run_id, "bad_python");
    assert!(log.contains("the Python interpreter `python3-nowhere` was not found"), "{log}");
    let log = home.log("fails", run_id, "not_json");
    assert!(log.contains("the return value of `etl_tasks:not_json` (a dict) is not JSON-serialisable"), "{log}");
    let log = home.log("fails", run_id, "pull_missing");
    assert!(log.contains("`op_args[1]` pulls XCom `rows` of task `boom`, which run"), "{log}");
    let log = home.log("fails", run_id, "quits_badly");
    assert!(log.contains("`etl_tasks:quits_badly` exited with sys.exit(3)"), "{log}");
}

#[test]
fn execution_timeout_kills_a_sleeping_function() {
    let dag = format!(
        r#"let dag = DAG("slow", #{{ {MANUAL} }});
        PythonOperator(#{{ task_id: "sleepy", python_callable: "etl_tasks:sleepy", execution_timeout: seconds(1) }});"#
    );
    let home = home_with(&dag);
    let o = home.run(&["dags", "test", "slow", "2024-01-02"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    let log = home.log("slow", "manual__2024-01-02T00:00:00+00:00", "sleepy");
    assert!(log.contains("going to sleep"), "{log}");
    assert!(log.contains("execution_timeout of 0:00:01 exceeded; `etl_tasks:sleepy` was killed"), "{log}");
}

#[test]
fn tasks_test_runs_a_function_without_a_database() {
    let dag = format!(
        r#"let dag = DAG("tt", #{{ {MANUAL} }});
        PythonOperator(#{{ task_id: "a", python_callable: "etl_tasks:only_args", op_args: ["{{{{ ds }}}}", 2] }});"#
    );
    let home = home_with(&dag);
    let o = home.run(&["tasks", "test", "tt", "a", "2024-01-02"]);
    let out = all_output(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(r#"[rhaiflow] return_value: ["2024-01-02",2]"#), "{out}");
    assert!(!home.path().join("rhaiflow.db").exists(), "tasks test needs no database");
}

#[test]
fn a_virtualenv_folder_runs_its_own_python() {
    let dag = format!(
        r#"let dag = DAG("venv", #{{ {MANUAL} }});
        PythonOperator(#{{ task_id: "a", python_callable: "etl_tasks:only_args", op_args: [1, 2], python: "venv" }});
        PythonOperator(#{{ task_id: "b", python_callable: "etl_tasks:only_args", op_args: [1, 2], python: "./nowhere" }});"#
    );
    let home = home_with(&dag);
    // A "virtualenv" whose bin/python is python3 (what a virtualenv's is, as far as we care).
    let bin = home.path().join("dags/venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("python"), "#!/bin/sh\necho venv-python-used\nexec python3 \"$@\"\n").unwrap();
    std::fs::set_permissions(bin.join("python"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = home.run(&["dags", "test", "venv", "2024-01-02"]);
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert_eq!(xcom(&home, "venv", "a", "return_value"), Some(serde_json::json!([1, 2])));
    assert!(home.log("venv", run_id, "a").contains("venv-python-used"));
    let log = home.log("venv", run_id, "b");
    assert!(log.contains("the Python interpreter `./nowhere` was not found"), "{log}");
}

#[test]
fn a_bad_python_callable_is_a_parse_error_naming_the_key() {
    let dag = format!(
        r#"let dag = DAG("bad", #{{ {MANUAL} }});
PythonOperator(#{{ task_id: "a", python_callable: "etl_tasks.load" }});
PythonOperator(#{{ task_id: "b", python_callable: "etl_tasks:" }});
PythonOperator(#{{ task_id: "c", python_callable: |ctx| 1 }});
PythonOperator(#{{ task_id: "d", python_callable: "m:f", op_args: #{{ a: 1 }} }});"#
    );
    let home = home_with(&dag);
    let o = home.run(&["dags", "check"]);
    let out = all_output(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("`python_callable` must be \"module:function\""), "{out}");
    assert!(out.contains("not `etl_tasks.load`") && out.contains("not `etl_tasks:`"), "{out}");
    assert!(out.contains("etl.rhai:2:") && out.contains("etl.rhai:3:"), "{out}");
    assert!(out.contains("`python_callable` in `PythonOperator` must be a string"), "{out}");
    assert!(out.contains("a Rhai closure runs with `RhaiOperator"), "{out}");
    assert!(out.contains("`op_args` must be an array"), "{out}");
}

/// The runner's choice of keyword arguments, as Airflow's `KeywordParameters.determine`, checked
/// on the embedded runner itself with a real `python3`.
#[test]
fn the_runner_passes_what_the_signature_asks_for() {
    let script = r#"
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("runner", sys.argv[1])
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)
ctx = {"ds": 1, "ti": 2, "params": 3, "table": 4}
def named(ds, table): pass
def kwargs(ds, **context): pass
def positional(ds, params, ti=None): pass
def keyword_only(*, ti, other=5): pass
print(json.dumps([
    sorted(runner.select_kwargs(named, [], ctx)),
    sorted(runner.select_kwargs(kwargs, [], ctx)),
    sorted(runner.select_kwargs(positional, ["x"], ctx)),
    sorted(runner.select_kwargs(keyword_only, [], ctx)),
    sorted(runner.select_kwargs(len, [], ctx)),
]))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, concat!(env!("CARGO_MANIFEST_DIR"), "/src/operators/python_runner.py")])
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::json!([["ds", "table"], ["ds", "params", "table", "ti"], ["params", "ti"], ["ti"], [],])
    );
}

/// `examples/dags/python_etl.rhai` and its module run green with `dags test`.
#[test]
fn the_python_example_runs_green() {
    let rhai = std::fs::read_to_string("examples/dags/python_etl.rhai").unwrap();
    let py = std::fs::read_to_string("examples/dags/python_etl_tasks.py").unwrap();
    let home = Home::new(&[("python_etl.rhai", &rhai), ("python_etl_tasks.py", &py)]);
    let o = home.run(&["dags", "test", "python_etl", "2024-01-02"]);
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(xcom(&home, "python_etl", "transform", "dropped"), Some(serde_json::json!(1)));
    assert_eq!(
        xcom(&home, "python_etl", "load", "return_value"),
        Some(serde_json::json!({"loaded": 2, "try_number": 1}))
    );
}

/// A function outlives a kill -9 of its scheduler (the supervisor holds its output); the next
/// scheduler takes the try over and reads what the runner recorded: its return value and pushes.
#[test]
fn a_function_outlives_its_scheduler_and_the_next_one_reads_its_results() {
    let tasks = r#"
import os, time
def waits(ti):
    print("started", flush=True)
    while not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "go")):
        time.sleep(0.05)
    ti.xcom_push("side", "pushed-after-the-kill")
    return {"done": True}
"#;
    let dag = r#"let dag = DAG("survivor", #{ start_date: datetime(2024, 3, 9), schedule: "@once" });
        PythonOperator(#{ task_id: "t", python_callable: "survivor_tasks:waits" });"#;
    let home = Home::new(&[("survivor.rhai", dag), ("survivor_tasks.py", tasks)]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[scheduler]\ntask_heartbeat_timeout = 0.5\n").unwrap();
    let quiet = |args: &[&str]| {
        let mut c = home.command(args);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        common::Running(Some(c.spawn().unwrap()))
    };
    let mut scheduler = quiet(&["scheduler"]);
    let log = common::wait_until("the task to start", || {
        let log = walk(&home.path().join("logs")).into_iter().find(|p| p.ends_with("task_id=t/attempt=1.log"))?;
        std::fs::read_to_string(&log).unwrap_or_default().contains("] started\n").then_some(log)
    });
    scheduler.kill_9();
    std::fs::write(home.path().join("go"), "").unwrap();
    common::wait_until("the recorded outcome", || rhaiflow::executor::read_status(std::path::Path::new(&log)));
    let _next = quiet(&["scheduler"]);
    common::wait_until("the try taken over", || xcom(&home, "survivor", "t", "return_value"));
    assert_eq!(xcom(&home, "survivor", "t", "return_value"), Some(serde_json::json!({"done": true})));
    assert_eq!(xcom(&home, "survivor", "t", "side"), Some(serde_json::json!("pushed-after-the-kill")));
}

/// `branch: true` follows the task id(s) the function returns and skips the other direct
/// downstream tasks (Airflow's `BranchPythonOperator`); `short_circuit: true` skips everything
/// downstream on a falsy result (Airflow's `ShortCircuitOperator`); a branch returning something
/// else fails naming it.
#[test]
fn branch_and_short_circuit_functions_decide_what_runs() {
    let dag = format!(
        r#"let dag = DAG("forks", #{{ {MANUAL} }});
let pick = PythonOperator(#{{ task_id: "pick", python_callable: "forks:pick", branch: true }});
let left = EmptyOperator(#{{ task_id: "left" }});
let right = EmptyOperator(#{{ task_id: "right" }});
pick >> [left, right];
let gate = PythonOperator(#{{ task_id: "gate", python_callable: "forks:closed", short_circuit: true }});
let after = EmptyOperator(#{{ task_id: "after" }});
let later = EmptyOperator(#{{ task_id: "later" }});
gate >> after >> later;
let bad = PythonOperator(#{{ task_id: "bad", python_callable: "forks:number", branch: true }});
"#
    );
    let home = Home::new(&[("forks.rhai", &dag)]);
    std::fs::write(
        home.path().join("dags/forks.py"),
        "def pick():\n    return 'right'\n\ndef closed():\n    return []\n\ndef number():\n    return 7\n",
    )
    .unwrap();
    let o = home.run(&["dags", "test", "forks", "2024-01-02"]);
    assert_eq!(o.status.code(), Some(1), "`bad` fails: {}", all_output(&o));
    let states = home.states("forks", "manual__2024-01-02T00:00:00+00:00");
    let state = |t: &str| states.iter().find(|(id, _, _)| id == t).map(|(_, s, _)| s.clone()).unwrap();
    assert_eq!(state("pick"), "success");
    assert_eq!(state("right"), "success");
    assert_eq!(state("left"), "skipped");
    assert_eq!(state("gate"), "success");
    assert_eq!(state("after"), "skipped");
    assert_eq!(state("later"), "skipped");
    assert_eq!(state("bad"), "failed");
    let log = home.log("forks", "manual__2024-01-02T00:00:00+00:00", "bad");
    assert!(log.contains("`forks:number` is a branch and returned a number"), "{log}");
}
