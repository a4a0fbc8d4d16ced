//! `BranchOperator` and `ShortCircuitOperator` through the real binary: which downstream tasks
//! are skipped, how skips propagate by trigger rule (joins with `none_failed_min_one_success`),
//! and a branch to a task that is not downstream.

mod common;

use common::Home;
use std::collections::BTreeMap;

const MANUAL: &str = r#"schedule: (), start_date: datetime(2024, 1, 1)"#;
const RUN: &str = "manual__2024-01-02T00:00:00+00:00";

fn dags_test(home: &Home, dag_id: &str) -> (bool, String) {
    let o = home.run(&["dags", "test", dag_id, "2024-01-02"]);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn states(home: &Home, dag_id: &str) -> BTreeMap<String, String> {
    home.states(dag_id, RUN).into_iter().map(|(t, s, _)| (t, s)).collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(t, s)| (t.to_string(), s.to_string())).collect()
}

#[test]
fn a_branch_runs_the_chosen_tasks_and_skips_the_others_by_trigger_rule() {
    let dag = format!(
        r#"let dag = DAG("br", #{{ {MANUAL}, params: #{{ way: "left" }} }});
        let choose = BranchOperator(#{{ task_id: "choose", callable: |ctx| ctx.params.way }});
        let left = RhaiOperator(#{{ task_id: "left", callable: |ctx| "L" }});
        let right = RhaiOperator(#{{ task_id: "right", callable: |ctx| "R" }});
        let after_right = EmptyOperator(#{{ task_id: "after_right" }});
        let join = RhaiOperator(#{{ task_id: "join", trigger_rule: "none_failed_min_one_success",
            callable: |ctx| [ctx.ti.xcom_pull("left"), ctx.ti.xcom_pull("right")] }});
        let strict = EmptyOperator(#{{ task_id: "strict" }});
        choose >> [left, right];
        right >> after_right;
        [left, after_right] >> join;
        [left, right] >> strict;
        let many = BranchOperator(#{{ task_id: "many", callable: |ctx| ["m1", "m2"] }});
        let none = BranchOperator(#{{ task_id: "none", python_callable: |ctx| () }});
        many >> [EmptyOperator(#{{ task_id: "m1" }}), EmptyOperator(#{{ task_id: "m2" }}), EmptyOperator(#{{ task_id: "m3" }})];
        none >> EmptyOperator(#{{ task_id: "n1" }});"#
    );
    let home = Home::new(&[("br.rhai", &dag)]);
    let (ok, out) = dags_test(&home, "br");
    assert!(ok, "{out}");
    assert_eq!(
        states(&home, "br"),
        expect(&[
            ("choose", "success"),
            ("left", "success"),
            ("right", "skipped"),
            ("after_right", "skipped"),
            ("join", "success"),
            ("strict", "skipped"),
            ("many", "success"),
            ("m1", "success"),
            ("m2", "success"),
            ("m3", "skipped"),
            ("none", "success"),
            ("n1", "skipped"),
        ]),
        "{out}"
    );
    let log = home.log("br", RUN, "choose");
    assert!(log.contains("Branch into left; skipping right"), "{log}");
    let db = home.db();
    let join: String = db
        .query_row("SELECT value FROM xcom WHERE task_id = 'join' AND key = 'return_value'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(join, "[\"L\",null]");
    let chosen: String = db
        .query_row("SELECT value FROM xcom WHERE task_id = 'choose' AND key = 'return_value'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chosen, "\"left\"", "the branch's choice is its XCom, as Airflow's");
}

#[test]
fn a_branch_to_a_task_that_is_not_downstream_fails_naming_it() {
    let dag = format!(
        r#"let dag = DAG("bad_branch", #{{ {MANUAL} }});
        let choose = BranchOperator(#{{ task_id: "choose", callable: |ctx| ["left", "rigth"] }});
        let elsewhere = EmptyOperator(#{{ task_id: "elsewhere" }});
        choose >> [EmptyOperator(#{{ task_id: "left" }}), EmptyOperator(#{{ task_id: "right" }})];
        let odd = BranchOperator(#{{ task_id: "odd", callable: |ctx| 42 }});
        odd >> EmptyOperator(#{{ task_id: "o1" }});"#
    );
    let home = Home::new(&[("bad_branch.rhai", &dag)]);
    let (ok, out) = dags_test(&home, "bad_branch");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "the branch closure returned `rigth`, which is not a direct downstream task of `choose`; \
             they are left, right (did you mean `right`?)"
        ),
        "{out}"
    );
    assert!(out.contains("the branch closure returned 42; it must return a task id"), "{out}");
    let s = states(&home, "bad_branch");
    assert_eq!(s["choose"], "failed");
    assert_eq!(s["left"], "upstream_failed");
    assert_eq!(s["odd"], "failed");
}

#[test]
fn a_false_short_circuit_skips_all_downstream_or_only_the_direct_tasks() {
    let dag = format!(
        r#"let dag = DAG("sc", #{{ {MANUAL} }});
        // Airflow's default: everything downstream is skipped, whatever its trigger rule.
        let all = ShortCircuitOperator(#{{ task_id: "all", callable: |ctx| 0 }});
        let a1 = EmptyOperator(#{{ task_id: "a1" }});
        let a2 = EmptyOperator(#{{ task_id: "a2", trigger_rule: "all_done" }});
        let other = RhaiOperator(#{{ task_id: "other", callable: |ctx| 1 }});
        let a_join = EmptyOperator(#{{ task_id: "a_join", trigger_rule: "none_failed_min_one_success" }});
        all >> a1 >> a2 >> a_join;
        other >> a_join;
        // Only the direct downstream tasks; the join decides by its trigger rule.
        let direct = ShortCircuitOperator(#{{ task_id: "direct", ignore_downstream_trigger_rules: false, callable: |ctx| [] }});
        let d1 = EmptyOperator(#{{ task_id: "d1" }});
        let d_join = EmptyOperator(#{{ task_id: "d_join", trigger_rule: "none_failed_min_one_success" }});
        let d_strict = EmptyOperator(#{{ task_id: "d_strict" }});
        direct >> d1 >> [d_join, d_strict];
        other >> [d_join, d_strict];
        // A true value lets everything run, and is the XCom.
        let proceed = ShortCircuitOperator(#{{ task_id: "go", callable: |ctx| #{{ rows: 3 }} }});
        proceed >> EmptyOperator(#{{ task_id: "g1" }});"#
    );
    let home = Home::new(&[("sc.rhai", &dag)]);
    let (ok, out) = dags_test(&home, "sc");
    assert!(ok, "{out}");
    assert_eq!(
        states(&home, "sc"),
        expect(&[
            ("all", "success"),
            ("a1", "skipped"),
            ("a2", "skipped"),
            ("a_join", "skipped"),
            ("other", "success"),
            ("direct", "success"),
            ("d1", "skipped"),
            ("d_join", "success"),
            ("d_strict", "skipped"),
            ("go", "success"),
            ("g1", "success"),
        ]),
        "{out}"
    );
    let go: String = home
        .db()
        .query_row("SELECT value FROM xcom WHERE task_id = 'go' AND key = 'return_value'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(go, r#"{"rows":3}"#);
    let log = home.log("sc", RUN, "all");
    assert!(log.contains("Condition result is 0; skipping all downstream tasks"), "{log}");
}
