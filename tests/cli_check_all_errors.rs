//! `rhaiflow dags check` through the built binary: every error of a file (bad keys, a bad key
//! inside `default_args`, a broken template), Python habits, and the exit code.

mod common;

use common::Home;

const THREE_BAD_KEYS: &str = r#"let default_args = #{ owner: "ops", emial: "a@example.com" };
let dag = DAG("three_bad", #{ start_date: days_ago(1), default_args: default_args });
let a = BashOperator(#{ task_id: "a", bash_command: "echo {{ ds ", retires: 1 });
let b = EmptyOperator(#{ task_id: "b", ownr: "me" });
a >> b;
"#;

const PYTHON: &str = r#"from airflow import DAG
dag = DAG(dag_id="py", schedule=None)
"#;

#[test]
fn check_reports_every_error_of_a_file_and_exits_1() {
    let home = Home::new(&[("three_bad.rhai", THREE_BAD_KEYS), ("python.rhai", PYTHON)]);
    let out = home.run(&["dags", "check", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let errors = report["errors"].as_array().expect("errors");
    let found: Vec<(String, u64, u64)> = errors
        .iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
            (file, e["pos"]["line"].as_u64().unwrap_or(0), e["pos"]["col"].as_u64().unwrap_or(0))
        })
        .collect();
    let messages: Vec<&str> = errors.iter().map(|e| e["message"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        messages,
        [
            "`from airflow import DAG` is Python: rhaiflow's DAG API is built in; delete this line",
            "`dag = ...` assigns a variable that was never declared: write `let dag = ...;`",
            "keyword arguments such as `dag_id=` are Python: write `DAG(#{ dag_id: \"py\", schedule: None })`",
            "`None` is Python: Rhai's empty value is `()`",
            "unknown key `emial` in `default_args` — did you mean `email`?",
            "unknown key `retires` in `BashOperator` — did you mean `retries`?",
            "unknown key `ownr` in `EmptyOperator` — did you mean `owner`?",
            "task `a`: template error in `bash_command` at line 1 of the template: unexpected end of input, \
             expected end of variable block",
        ]
    );
    assert_eq!(
        found,
        [
            ("python.rhai".to_string(), 1, 1),
            ("python.rhai".to_string(), 2, 1),
            ("python.rhai".to_string(), 2, 11),
            ("python.rhai".to_string(), 2, 33),
            ("three_bad.rhai".to_string(), 1, 37),
            ("three_bad.rhai".to_string(), 3, 68),
            ("three_bad.rhai".to_string(), 4, 40),
            ("three_bad.rhai".to_string(), 3, 39),
        ]
    );
}

#[test]
fn a_fixed_file_checks_clean() {
    let fixed = THREE_BAD_KEYS
        .replace("emial", "email")
        .replace("{{ ds \"", "{{ ds }}\"")
        .replace("retires", "retries")
        .replace("ownr", "owner");
    let home = Home::new(&[("fixed.rhai", fixed.as_str())]);
    let out = home.run(&["dags", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ok: 1 DAG(s) in 1 file(s)"), "{stdout}");
}
