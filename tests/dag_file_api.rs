//! The DAG API as an Airflow user writes it: properties set after the constructor
//! (`dag.doc_md = ...`, `task.retries = 3`), read back, and Python's `range`.

mod common;

use rhaiflow::model::{ScheduleSpec, TriggerRule};
use rhaiflow::script::{FileOutcome, ScriptHost, ScriptLimits};

fn evaluate(src: &str) -> FileOutcome {
    let host = ScriptHost::new(ScriptLimits::default()).expect("stdlib compiles");
    host.evaluate("inline.rhai", src, &common::eval_context())
}

fn messages(out: &FileOutcome) -> Vec<String> {
    out.diagnostics.iter().map(|d| d.message.clone()).collect()
}

#[test]
fn dag_and_task_properties_are_settable_as_in_airflow() {
    let out = evaluate(
        r##"
        let dag = DAG("props", #{ start_date: days_ago(1), schedule: "@daily" });
        dag.doc_md = "# Props";
        dag.description = "set after the constructor";
        dag.tags = ["a", "b"];
        dag.schedule_interval = "@hourly";
        let a = BashOperator(#{ task_id: "a", bash_command: "true" });
        a.doc_md = "runs true";
        a.retries = 3;
        a.trigger_rule = "all_done";
        a.retry_delay = minutes(1);
        let b = EmptyOperator(#{ task_id: "b" });
        b.retries = a.retries + 1;
        a >> b;
        "##,
    );
    assert_eq!(messages(&out), Vec::<String>::new());
    let spec = &out.dags[0].spec;
    assert_eq!(spec.doc_md.as_deref(), Some("# Props"));
    assert_eq!(spec.description.as_deref(), Some("set after the constructor"));
    assert_eq!(spec.tags, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(spec.schedule, ScheduleSpec::Cron { expr: "0 * * * *".into(), preset: Some("@hourly".into()) });
    let a = &spec.tasks[0];
    assert_eq!(a.doc_md.as_deref(), Some("runs true"));
    assert_eq!(a.retries, 3);
    assert_eq!(a.trigger_rule, TriggerRule::AllDone);
    assert_eq!(a.retry_delay.as_secs_f64(), 60.0);
    assert_eq!(spec.tasks[1].retries, 4);
    assert_eq!(spec.tasks[1].upstream, vec!["a".to_string()]);
}

#[test]
fn default_args_set_later_apply_to_tasks_declared_after() {
    let out = evaluate(
        r#"
        let dag = DAG("later_defaults", #{ start_date: days_ago(1) });
        let before = EmptyOperator(#{ task_id: "before" });
        dag.default_args = #{ retries: 2, owner: "ops" };
        let after = EmptyOperator(#{ task_id: "after" });
        "#,
    );
    assert_eq!(messages(&out), Vec::<String>::new());
    let tasks = &out.dags[0].spec.tasks;
    assert_eq!((tasks[0].retries, tasks[1].retries), (0, 2));
    assert_eq!(&*tasks[1].owner, "ops");
}

#[test]
fn a_property_set_is_checked_as_the_keyword_is() {
    let out = evaluate(
        r#"
        let dag = DAG("checked", #{ start_date: days_ago(1) });
        let a = EmptyOperator(#{ task_id: "a" });
        a.retries = -1;
        a.trigger_rule = "all_sucess";
        a.pool_slots = 0;
        "#,
    );
    assert_eq!(
        messages(&out),
        vec![
            "`retries` must be zero or more, not -1".to_string(),
            "unknown trigger_rule `all_sucess` — did you mean `all_success`?".to_string(),
            "`pool_slots` must be at least 1, not 0".to_string(),
        ]
    );
    assert!(out.dags.is_empty() || !out.diagnostics.is_empty());
}

#[test]
fn a_callback_set_as_a_property_is_kept() {
    let out = evaluate(
        r#"
        let dag = DAG("callbacks", #{ start_date: days_ago(1) });
        let a = EmptyOperator(#{ task_id: "a" });
        a.on_failure_callback = |ctx| 1;
        "#,
    );
    assert_eq!(messages(&out), Vec::<String>::new());
    let callback = out.dags[0].spec.tasks[0].on_failure_callback.clone().expect("callback set");
    assert!(out.program.expect("closures keep their program").has_callback(&callback.0));
}

#[test]
fn unset_properties_read_as_unit() {
    let out = evaluate(
        r#"
        let dag = DAG("unset", #{ start_date: days_ago(1) });
        let a = EmptyOperator(#{ task_id: "a" });
        if a.doc_md != () || dag.description != () { throw "expected ()"; }
        if a.task_id != "a" || dag.dag_id != "unset" { throw "ids"; }
        "#,
    );
    assert_eq!(messages(&out), Vec::<String>::new());
}

#[test]
fn range_works_as_in_python() {
    let out = evaluate(
        r#"
        let dag = DAG("ranges", #{ start_date: days_ago(1) });
        for i in range(3) { EmptyOperator(#{ task_id: `a${i}` }); }
        for i in range(5, 7) { EmptyOperator(#{ task_id: `b${i}` }); }
        for i in range(-2) { EmptyOperator(#{ task_id: `never${i}` }); }
        "#,
    );
    assert_eq!(messages(&out), Vec::<String>::new());
    let ids: Vec<&str> = out.dags[0].spec.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["a0", "a1", "a2", "b5", "b6"]);
}

#[test]
fn a_huge_unknown_key_is_quoted_short() {
    let out = evaluate(
        r#"
        let dag = DAG("huge_key", #{ start_date: days_ago(1) });
        let key = "k"; key.pad(1000000, 'k');
        dag[key] = 1;
        let a = EmptyOperator(#{ task_id: "a" });
        "#,
    );
    let text = messages(&out).join("\n");
    assert!(text.starts_with(&format!("unknown key `{}…` in `DAG`", "k".repeat(64))), "{}", &text[..200]);
    assert!(text.len() < 300, "{} bytes", text.len());
}
