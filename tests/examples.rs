//! Every file shipped in `examples/` and `stdlib/` evaluates with zero diagnostics, and the ported
//! seed DAGs keep the shape of their Airflow originals.

mod common;

use rhaiflow::model::{Operator, ScheduleSpec};
use rhaiflow::script::{ScriptHost, ScriptLimits};
use std::path::Path;

#[test]
fn examples_load_without_diagnostics() {
    let bag = common::load(Path::new("examples/dags"));
    let errors: Vec<String> = bag.diagnostics().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for id in ["MCWork", "daily_reporter_airflow_2", "tour_etl", "tour_ingest", "tour_reports", "python_etl"] {
        assert!(bag.dags.contains_key(id), "{id} is missing");
    }
}

#[test]
fn stdlib_compiles_and_every_module_imports() {
    let host = ScriptHost::new(ScriptLimits::default()).expect("stdlib compiles");
    let src = r#"
        import "alerts" as alerts;
        import "schedules" as schedules;
        let dag = DAG("uses_stdlib", #{ start_date: days_ago(1), schedule: schedules::every_hours(6) });
        let a = DummyOperator(#{ task_id: "a" });
        let b = EmptyOperator(#{ task_id: "b" });
        chain_all([a, b]);
    "#;
    let out = host.evaluate("inline.rhai", src, &common::eval_context());
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert_eq!(out.dags[0].spec.schedule, ScheduleSpec::Cron { expr: "0 */6 * * *".into(), preset: None });
    assert_eq!(out.dags[0].spec.tasks[1].upstream, vec!["a".to_string()]);
}

#[test]
fn mcwork_matches_its_airflow_original() {
    let bag = common::load(Path::new("examples/dags"));
    let dag = &bag.dags["MCWork"].spec;
    assert_eq!(dag.schedule, ScheduleSpec::Cron { expr: "*/10 * * * *".into(), preset: None });
    let ids: Vec<&str> = dag.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["syncMarketingCloud", "sleep", "EDM", "SMS"]);
    assert_eq!(dag.task("sleep").unwrap().upstream, ["syncMarketingCloud"]);
    assert_eq!(dag.task("EDM").unwrap().upstream, ["sleep"]);
    assert_eq!(dag.task("SMS").unwrap().upstream, ["sleep"]);
    let sync = dag.task("syncMarketingCloud").unwrap();
    assert_eq!(&*sync.owner, "luffy");
    assert_eq!(sync.retries, 1);
    assert_eq!(sync.retry_delay.as_millis(), 300_000);
    assert!(sync.email_on_failure && !sync.email_on_retry);
    assert!(matches!(sync.operator, Operator::BashOperator { .. }));
}

#[test]
fn ding_seed_keeps_its_alert_flags() {
    let bag = common::load(Path::new("examples/dags"));
    let dag = &bag.dags["daily_reporter_airflow_2"].spec;
    assert_eq!(dag.schedule, ScheduleSpec::Interval { every: rhaiflow::model::TimeSpan::from_secs(86_400) });
    for t in &dag.tasks {
        assert!(t.ding_on_failure && t.ding_on_retry && t.email_on_failure && t.email_on_retry);
        assert_eq!(t.email, ["ops@example.com"]);
    }
    assert_eq!(dag.task("publish_report").unwrap().retries, 2, "a task's own argument beats default_args");
}

#[test]
fn serialised_form_is_stable_and_round_trips() {
    let a = common::load(Path::new("examples/dags"));
    let b = common::load(Path::new("examples/dags"));
    for (id, dag) in &a.dags {
        assert_eq!(dag.version_hash, b.dags[id].version_hash, "{id} hashes the same twice");
        let back: rhaiflow::model::DagSpec = serde_json::from_str(&dag.json).unwrap();
        assert_eq!(&back, &*dag.spec, "{id} round-trips through JSON");
    }
}

#[test]
fn closures_are_kept_for_later_calls() {
    let bag = common::load(Path::new("examples/dags"));
    let tour = &bag.dags["tour_etl"];
    let program = tour.program.as_ref().expect("tour.rhai defines closures");
    let on_failure = tour.spec.on_failure_callback.as_ref().expect("DAG-level callback");
    assert!(program.has_callback(&on_failure.0), "{on_failure:?}");
    let rhai_op = tour.spec.task("transform").unwrap();
    let rhaiflow::model::Operator::RhaiOperator { callable, .. } = &rhai_op.operator else { panic!("RhaiOperator") };
    assert!(program.has_callback(&callable.0), "{callable:?}");
    assert!(bag.dags["MCWork"].program.is_none(), "a file without closures keeps no AST");
}

/// The README's quick start, as a user on a fresh clone reads it.
fn readme() -> String {
    std::fs::read_to_string("README.md").expect("README.md")
}

#[test]
fn the_readme_test_command_is_what_ci_runs_and_reuses_the_first_build() {
    let readme = readme();
    let start = readme.find("```sh\n").expect("a quick start block") + "```sh\n".len();
    let block: Vec<&str> = readme[start..].lines().take_while(|l| *l != "```").collect();
    assert_eq!(block.len(), 2, "{block:?}");
    assert!(block[0].starts_with("cargo run --release -- "), "{}", block[0]);
    assert_eq!(block[1], "cargo test --release", "the tests reuse the release build of the first command");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    let last = ci.lines().rfind(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap();
    assert_eq!(last, block[1], ".ci/run runs exactly the README's test command");
}

#[test]
fn the_readme_links_nothing_outside_and_states_the_minimum_rust() {
    let readme = readme();
    for outside in ["http://", "https://", "](../", "](/"] {
        assert!(!readme.contains(outside), "README links outside the repository: `{outside}`");
    }
    let cargo = std::fs::read_to_string("Cargo.toml").unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml sets rust-version");
    assert!(readme.contains(&format!("Rust {version} or later")), "README states Rust {version}");
    // Every command in a code block is one line: no continuation backslashes.
    assert!(!readme.contains("\\\n"), "a command continues on a second line");
}

#[test]
fn mcwork_runs_from_the_repository_root_without_mcwork_home() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rhaiflow"));
    cmd.args(["dags", "test", "MCWork", "--dags-folder", "examples/dags", "--home"])
        .arg(home.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MCWORK_HOME")
        .env_remove("RHAIFLOW_HOME")
        .env("MCWORK_WAIT", "0");
    let o = common::output_within_deadline(cmd, "dags test MCWork");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    for task in ["syncMarketingCloud", "sleep", "EDM", "SMS"] {
        assert!(out.contains(&format!("\n{task:<18}  success ")), "{task}: {out}");
    }
}

/// `examples/dags/operators.rhai` runs green with `dags test`, every operator in it included; with
/// `python3` on the machine (CI has it) its HTTP tasks really call the server it starts.
#[test]
fn the_operators_example_runs_green_with_dags_test() {
    let text = std::fs::read_to_string("examples/dags/operators.rhai").unwrap();
    let home = common::Home::new(&[("operators.rhai", &text)]);
    let out = home.run(&["dags", "test", "operators", "2024-01-02"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let run = &home.runs("operators")[0];
    assert_eq!(run["state"], "success", "{stdout}");
    let run_id = run["run_id"].as_str().unwrap();
    let states: std::collections::HashMap<String, String> =
        home.states("operators", run_id).into_iter().map(|(task, state, _)| (task, state)).collect();
    for (task, want) in [("compute", "success"), ("choose", "success"), ("small", "skipped"), ("big", "success")] {
        assert_eq!(states[task], want, "{task}: {states:?}");
    }
    for task in ["latest_only", "flag_file", "shell_test", "after_logical_date", "interval_ended", "trigger_report"] {
        assert_eq!(states[task], "success", "{task}: {states:?}");
    }
    let python = std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if python {
        assert_eq!(states["http.fetch"], "success", "{states:?}");
        let xcom: String = home
            .db()
            .query_row(
                "SELECT value FROM xcom WHERE dag_id = 'operators' AND task_id = 'http.fetch' AND key = 'return_value'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(xcom, "3");
    }
    // The triggered DAG got its run with the conf, to run when a scheduler does.
    let report = home.runs("operators_report");
    assert_eq!(report.len(), 1, "{report:?}");
}
