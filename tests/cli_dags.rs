//! The `dags` commands through the real binary: exact output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

const NOW: &str = "2026-01-15T12:00:00Z";

fn rhaiflow(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
        .args(args)
        .arg("--now")
        .arg(NOW)
        .current_dir(home)
        .env_remove("RHAIFLOW_HOME")
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dags_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    for (name, text) in files {
        let path = dir.path().join("dags").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const GOOD: &str = "let dag = DAG(\"good\", #{ start_date: datetime(2026, 1, 1), schedule: \"*/10 * * * *\", catchup: false });\nlet a = EmptyOperator(#{ task_id: \"a\", owner: \"ops\" });\nlet b = BashOperator(#{ task_id: \"b\", bash_command: \"true\", owner: \"ops\" });\na >> b;\n";

#[test]
fn version_prints_the_crate_version() {
    let o = rhaiflow(repo(), &["version"]);
    assert_eq!(stdout(&o), format!("rhaiflow {}\n", env!("CARGO_PKG_VERSION")));
    assert!(o.status.success());
}

#[test]
fn list_shows_the_examples() {
    // A home of its own, so a database left in the repository by the README's commands is not read;
    // the folder is relative to the current directory.
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let o = rhaiflow(repo(), &["dags", "list", "--dags-folder", "examples/dags", "--home", home]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("dag_id "), "{out}");
    for id in ["MCWork", "daily_reporter_airflow_2", "tour_etl"] {
        assert!(out.contains(id), "{id} missing from\n{out}");
    }
    assert!(
        out.contains(
            "MCWork                    mcwork.rhai          yes     */10 * * * *    luffy      4      2026-01-15 12:00:00+00:00"
        ),
        "{out}"
    );
    let json =
        rhaiflow(repo(), &["dags", "list", "--dags-folder", "examples/dags", "--home", home, "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mcwork = rows.as_array().unwrap().iter().find(|r| r["dag_id"] == "MCWork").unwrap();
    assert_eq!(mcwork["tasks"], 4);
    assert_eq!(mcwork["owners"], serde_json::json!(["luffy"]));
    assert_eq!(mcwork["schedule"], "*/10 * * * *");
}

#[test]
fn check_prints_every_error_exits_1_and_good_files_still_list() {
    let dir = dags_dir(&[
        ("good.rhai", GOOD),
        (
            "typo.rhai",
            "let d = DAG(\"typo\", #{ start_date: days_ago(1) });\nlet a = EmptyOperator(#{ task_id: \"a\", retires: 1 });\n",
        ),
        (
            "nested/cron.rhai",
            "let d = DAG(\"cron\", #{ start_date: days_ago(1), schedule: \"* * *\" });\nlet a = EmptyOperator(#{ task_id: \"a\" });\n",
        ),
    ]);
    let o = rhaiflow(dir.path(), &["dags", "check"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "error: DAG `cron`: invalid cron expression `* * *`: expected 5 fields, found 3
  --> dags/nested/cron.rhai:1:9
  |
1 | let d = DAG(\"cron\", #{ start_date: days_ago(1), schedule: \"* * *\" });
  |         ^
  = help: use 5 fields `minute hour day-of-month month day-of-week` (e.g. \"*/10 * * * *\"), or a preset such as \"@daily\"

error: unknown key `retires` in `EmptyOperator` — did you mean `retries`?
  --> dags/typo.rhai:2:40
  |
2 | let a = EmptyOperator(#{ task_id: \"a\", retires: 1 });
  |                                        ^

2 error(s) in 2 of 3 file(s); 1 DAG(s) loaded
"
    );
    let list = rhaiflow(dir.path(), &["dags", "list"]);
    assert!(list.status.success());
    assert!(stdout(&list).contains("good"));
    assert!(stderr(&list).contains("2 file(s) failed to load"), "{}", stderr(&list));
    let errors = rhaiflow(dir.path(), &["dags", "list-import-errors", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&errors.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["file"], "nested/cron.rhai");
}

#[test]
fn check_passes_on_the_examples() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let o = rhaiflow(repo(), &["dags", "check", "--dags-folder", "examples/dags", "--home", home]);
    assert_eq!(stdout(&o), "ok: 8 DAG(s) in 5 file(s)\n");
    assert!(o.status.success());
    // With a store, every pool the examples name exists in it (they use `default_pool`).
    assert!(rhaiflow(repo(), &["db", "migrate", "--home", home]).status.success());
    let o = rhaiflow(repo(), &["dags", "check", "--dags-folder", "examples/dags", "--home", home]);
    assert_eq!(stdout(&o), "ok: 8 DAG(s) in 5 file(s)\n");
    assert!(o.status.success());
}

#[test]
fn duplicate_dag_ids_across_files_name_both_files() {
    let dir = dags_dir(&[("a.rhai", GOOD), ("b.rhai", GOOD)]);
    let o = rhaiflow(dir.path(), &["dags", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("error: DAG `good` is already declared in `dags/a.rhai`"), "{out}");
    assert!(out.contains("--> dags/b.rhai:1:11"), "{out}");
}

#[test]
fn rhaiflowignore_skips_files() {
    let dir = dags_dir(&[("good.rhai", GOOD), ("wip/broken.rhai", "let x = ;"), (".rhaiflowignore", "wip/\n")]);
    let o = rhaiflow(dir.path(), &["dags", "check"]);
    assert_eq!(stdout(&o), "ok: 1 DAG(s) in 1 file(s)\n");
}

#[test]
fn next_runs_follow_the_timetable() {
    let dir = dags_dir(&[("good.rhai", GOOD)]);
    let o = rhaiflow(dir.path(), &["dags", "next-runs", "good", "-n", "3"]);
    assert_eq!(
        stdout(&o),
        "logical_date               data_interval_start        data_interval_end          run_after
-------------------------  -------------------------  -------------------------  -------------------------
2026-01-15 11:50:00+00:00  2026-01-15 11:50:00+00:00  2026-01-15 12:00:00+00:00  2026-01-15 12:00:00+00:00
2026-01-15 12:00:00+00:00  2026-01-15 12:00:00+00:00  2026-01-15 12:10:00+00:00  2026-01-15 12:10:00+00:00
2026-01-15 12:10:00+00:00  2026-01-15 12:10:00+00:00  2026-01-15 12:20:00+00:00  2026-01-15 12:20:00+00:00
"
    );
}

#[test]
fn show_prints_tasks_in_dependency_order_and_dot() {
    let o = rhaiflow(repo(), &["dags", "show", "MCWork", "--dags-folder", "examples/dags"]);
    let out = stdout(&o);
    let table: Vec<&str> = out.lines().skip(4).collect();
    assert_eq!(
        table.join("\n"),
        "task_id             operator      trigger_rule  retries  upstream
------------------  ------------  ------------  -------  ------------------
syncMarketingCloud  BashOperator  all_success   1        -
sleep               BashOperator  all_success   1        syncMarketingCloud
EDM                 BashOperator  all_success   1        sleep
SMS                 BashOperator  all_success   1        sleep"
    );
    let dot = stdout(&rhaiflow(repo(), &["dags", "show", "MCWork", "--dot", "--dags-folder", "examples/dags"]));
    assert!(dot.starts_with("digraph \"MCWork\" {"), "{dot}");
    assert!(dot.contains("\"sleep\" -> \"EDM\";"), "{dot}");
}

#[test]
fn unknown_dag_suggests_the_nearest() {
    let o = rhaiflow(repo(), &["dags", "show", "MCWrok", "--dags-folder", "examples/dags"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: no DAG `MCWrok` — did you mean `MCWork`?\n");
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = dags_dir(&[("good.rhai", GOOD)]);
    std::fs::write(dir.path().join("rhaiflow.toml"), "[core]\nparalelism = 4\n").unwrap();
    let o = rhaiflow(dir.path(), &["dags", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "error: config key `core.paralelism` (from rhaiflow.toml): unknown key `paralelism` — did you mean `parallelism`?\n"
    );
}

#[test]
fn a_missing_dags_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = rhaiflow(dir.path(), &["dags", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: dags folder `dags` does not exist\n");
}
