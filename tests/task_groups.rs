//! `TaskGroup` and `Label` in the DAG language: prefixed ids, nesting, group `default_args`, groups
//! in `>>`/`<<`/`set_*`/`chain` (roots and leaves), labels on edges, what the spec keeps, the errors
//! (each at `file:line:col`), a DAG with groups run by `dags test`; and the effective priority
//! weights (`weight_rule`) of larger graphs against a plain walk.

mod common;

use common::Home;
use rhaiflow::model::{DagSpec, EdgeLabel, TaskGroupSpec, WeightRule};
use rhaiflow::script::{FileOutcome, ScriptHost, ScriptLimits};
use std::collections::{BTreeMap, BTreeSet};

fn evaluate(src: &str) -> FileOutcome {
    let host = ScriptHost::new(ScriptLimits::default()).expect("stdlib compiles");
    host.evaluate("groups.rhai", src, &common::eval_context())
}

fn spec(src: &str) -> DagSpec {
    let out = evaluate(src);
    let errors: Vec<String> = out.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    out.dags.into_iter().next().expect("one DAG").spec
}

/// The one error of a file, rendered (`error: ...\n  --> groups.rhai:L:C ...`).
fn error(src: &str) -> String {
    let out = evaluate(src);
    assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
    out.diagnostics[0].to_string()
}

fn upstream(spec: &DagSpec) -> BTreeMap<String, Vec<String>> {
    spec.tasks.iter().map(|t| (t.task_id.clone(), t.upstream.clone())).collect()
}

const HEAD: &str = r#"let dag = DAG("g", #{ start_date: datetime(2026, 1, 1), schedule: "@daily", default_args: #{ retries: 1, owner: "dag" } });
"#;

#[test]
fn group_ids_prefix_their_tasks_and_nest() {
    let spec = spec(&format!(
        r#"{HEAD}
let etl = TaskGroup("etl", #{{ tooltip: "extract, then load" }});
let ex = TaskGroup("extract", #{{ parent_group: etl }});
let flat = TaskGroup("flat", #{{ parent_group: etl, prefix_group_id: false }});
let inner = TaskGroup("inner", #{{ parent_group: flat }});
let a = BashOperator(#{{ task_id: "a", task_group: ex, bash_command: "true" }});
let b = BashOperator(#{{ task_id: "b", task_group: flat, bash_command: "true" }});
let c = BashOperator(#{{ task_id: "c", task_group: inner, bash_command: "true" }});
let top = EmptyOperator(#{{ task_id: "top" }});
if ex.group_id != "etl.extract" || inner.group_id != "inner" {{ throw `${{ex}} ${{inner}}`; }}
"#
    ));
    let ids: Vec<(&str, Option<&str>)> =
        spec.tasks.iter().map(|t| (t.task_id.as_str(), t.task_group.as_deref())).collect();
    // Airflow's rule: a group prefixes its members when its `prefix_group_id` is true; a group's
    // own id takes its parent's prefix the same way (`inner` sits in `flat`, which does not prefix).
    assert_eq!(
        ids,
        [("etl.extract.a", Some("etl.extract")), ("b", Some("etl.flat")), ("inner.c", Some("inner")), ("top", None)]
    );
    let group = |id: &str, parent: Option<&str>, tooltip: Option<&str>, prefix: bool| TaskGroupSpec {
        group_id: id.into(),
        parent_group: parent.map(Into::into),
        tooltip: tooltip.map(Into::into),
        prefix_group_id: prefix,
    };
    assert_eq!(
        spec.task_groups,
        [
            group("etl", None, Some("extract, then load"), true),
            group("etl.extract", Some("etl"), None, true),
            group("etl.flat", Some("etl"), None, false),
            group("inner", Some("etl.flat"), None, true),
        ]
    );
}

#[test]
fn group_default_args_apply_over_the_dags_innermost_first() {
    let spec = spec(&format!(
        r#"{HEAD}
let outer = TaskGroup("outer", #{{ default_args: #{{ retries: 3, pool: "outer_pool", queue: "q1" }} }});
let inner = TaskGroup("inner", #{{ parent_group: outer, default_args: #{{ retries: 5 }} }});
let a = BashOperator(#{{ task_id: "a", task_group: inner, bash_command: "true" }});
let b = BashOperator(#{{ task_id: "b", task_group: inner, bash_command: "true", retries: 0 }});
let c = BashOperator(#{{ task_id: "c", task_group: outer, bash_command: "true" }});
let d = BashOperator(#{{ task_id: "d", bash_command: "true" }});
"#
    ));
    let got: Vec<(&str, u32, &str, &str, &str)> =
        spec.tasks.iter().map(|t| (t.task_id.as_str(), t.retries, &*t.pool, &*t.queue, &*t.owner)).collect();
    assert_eq!(
        got,
        [
            ("outer.inner.a", 5, "outer_pool", "q1", "dag"),
            ("outer.inner.b", 0, "outer_pool", "q1", "dag"),
            ("outer.c", 3, "outer_pool", "q1", "dag"),
            ("d", 1, "default_pool", "default", "dag"),
        ]
    );
}

#[test]
fn a_group_stands_for_its_roots_downstream_and_its_leaves_upstream() {
    let spec = spec(&format!(
        r#"{HEAD}
let start = EmptyOperator(#{{ task_id: "start" }});
let g = TaskGroup("g");
let a = EmptyOperator(#{{ task_id: "a", task_group: g }});
let b = EmptyOperator(#{{ task_id: "b", task_group: g }});
let c = EmptyOperator(#{{ task_id: "c", task_group: g }});
a >> [b, c];
let h = TaskGroup("h");
let x = EmptyOperator(#{{ task_id: "x", task_group: h }});
let y = EmptyOperator(#{{ task_id: "y", task_group: h }});
let end = EmptyOperator(#{{ task_id: "end" }});
let side = EmptyOperator(#{{ task_id: "side" }});
let last = EmptyOperator(#{{ task_id: "last" }});
start >> g >> h;
[h, side] >> end;
last.set_upstream(g);
chain(end, h, last);
"#
    ));
    let ups = upstream(&spec);
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(ups["g.a"], list(&["start"]), "the group's only root");
    assert_eq!(ups["g.b"], list(&["g.a"]));
    // `g >> h`: every leaf of g (b, c) upstream of every root of h (x, y).
    assert_eq!(ups["h.x"], list(&["end", "g.b", "g.c"]));
    assert_eq!(ups["h.y"], list(&["end", "g.b", "g.c"]));
    assert_eq!(ups["end"], list(&["h.x", "h.y", "side"]), "an array may hold groups and tasks");
    assert_eq!(ups["last"], list(&["g.b", "g.c", "h.x", "h.y"]), "set_upstream and chain take groups");
}

#[test]
fn labels_are_kept_on_the_edges_they_join() {
    let spec = spec(&format!(
        r#"{HEAD}
let a = EmptyOperator(#{{ task_id: "a" }});
let b = EmptyOperator(#{{ task_id: "b" }});
let c = EmptyOperator(#{{ task_id: "c" }});
let d = EmptyOperator(#{{ task_id: "d" }});
let g = TaskGroup("g");
let x = EmptyOperator(#{{ task_id: "x", task_group: g }});
let y = EmptyOperator(#{{ task_id: "y", task_group: g }});
a >> Label("on success") >> b >> c;
d << Label("cleanup") << c;
a.set_downstream(g, Label("fan out"));
[b, c] >> Label("both") >> d;
"#
    ));
    let label = |u: &str, d: &str, l: &str| EdgeLabel { upstream: u.into(), downstream: d.into(), label: l.into() };
    assert_eq!(
        spec.edge_labels,
        [
            label("a", "b", "on success"),
            label("a", "g.x", "fan out"),
            label("a", "g.y", "fan out"),
            label("b", "d", "both"),
            label("c", "d", "both"),
        ],
        "a later label on the same edge wins (`c >> d`: `cleanup`, then `both`)"
    );
    let ups = upstream(&spec);
    assert_eq!(ups["c"], ["b"], "`b >> c` after a label is a plain edge");
    assert_eq!(ups["d"], ["b", "c"]);
}

#[test]
fn group_and_label_mistakes_are_errors_at_their_place() {
    let e = error(&format!("{HEAD}let g = TaskGroup(\"g\");\nlet h = TaskGroup(\"g\");\n"));
    assert!(e.contains("duplicate group_id `g` in DAG `g`; first declared at groups.rhai:2:9"), "{e}");
    assert!(e.contains("--> groups.rhai:3:9"), "{e}");

    let e = error(&format!("{HEAD}let g = TaskGroup(\"a.b\");\n"));
    assert!(e.contains("group_id `a.b` contains `.`"), "{e}");
    assert!(e.contains("parent_group"), "{e}");

    let e =
        error(&format!("{HEAD}let g = TaskGroup(\"g\");\nlet a = EmptyOperator(#{{ task_id: \"a\" }});\na >> g;\n"));
    assert!(e.contains("TaskGroup `g` has no tasks yet"), "{e}");
    assert!(e.contains("--> groups.rhai:4:3"), "{e}");

    let e = error(&format!("{HEAD}let g = TaskGroup(\"g\");\nlet t = EmptyOperator(#{{ task_id: \"g\" }});\n"));
    assert!(e.contains("task_id `g` is the id of a TaskGroup of DAG `g`, declared at groups.rhai:2:9"), "{e}");

    let e = error(&format!(
        "{HEAD}let other = DAG(\"other\", #{{ start_date: datetime(2026, 1, 1) }});\nlet g = TaskGroup(\"g\", #{{ dag: other }});\nlet t = EmptyOperator(#{{ task_id: \"t\", dag: dag, task_group: g }});\n"
    ));
    assert!(e.contains("task `t` is in DAG `g` but its task_group `g` belongs to DAG `other`"), "{e}");

    let e = error(&format!(
        "{HEAD}let g = TaskGroup(\"g\", #{{ tooltp: \"x\" }});\nlet t = EmptyOperator(#{{ task_id: \"t\", task_group: g }});\n"
    ));
    assert!(e.contains("tooltp") && e.contains("tooltip"), "a misspelt key gets the nearest: {e}");
    assert!(e.contains("--> groups.rhai:2:27"), "the caret is on the key: {e}");

    let e = error(&format!(
        "{HEAD}let a = EmptyOperator(#{{ task_id: \"a\" }});\nlet b = EmptyOperator(#{{ task_id: \"b\" }});\na >> Label(\"x\") >> Label(\"y\") >> b;\n"
    ));
    assert!(e.contains("cannot join a `Label` to another `Label`"), "{e}");

    let e = error(&format!("{HEAD}let a = EmptyOperator(#{{ task_id: \"a\", weight_rule: \"downstrem\" }});\n"));
    assert!(
        e.contains(
            "`weight_rule` must be one of downstream, upstream, absolute, not `downstrem` — did you mean `downstream`?"
        ),
        "{e}"
    );
    assert!(e.contains("--> groups.rhai:2:40"), "{e}");

    let e = error(&format!(
        "{HEAD}let g = TaskGroup(\"g\");\nlet a = EmptyOperator(#{{ task_id: \"a\", task_group: g }});\na.task_group = g;\n"
    ));
    assert!(e.contains("`task_group` cannot change once the task is declared"), "{e}");
}

#[test]
fn a_dag_with_groups_and_labels_runs_and_shows_them() {
    let dag = r#"let dag = DAG("grouped", #{ start_date: datetime(2026, 1, 1), schedule: () });
let g = TaskGroup("extract", #{ tooltip: "pull" });
let a = BashOperator(#{ task_id: "a", task_group: g, bash_command: "echo a" });
let b = BashOperator(#{ task_id: "b", task_group: g, bash_command: "echo b" });
let done = BashOperator(#{ task_id: "done", bash_command: "echo done" });
g >> Label("then") >> done;"#;
    let home = Home::new(&[("grouped.rhai", dag)]);
    let o = home.run(&["dags", "test", "grouped", "2026-01-02"]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let run_id = home.runs("grouped")[0]["run_id"].as_str().unwrap().to_string();
    let states: BTreeSet<(String, String)> =
        home.states("grouped", &run_id).into_iter().map(|(t, s, _)| (t, s)).collect();
    let want: BTreeSet<(String, String)> =
        ["done", "extract.a", "extract.b"].iter().map(|t| (t.to_string(), "success".to_string())).collect();
    assert_eq!(states, want);
    let log = home.log("grouped", &run_id, "extract.a");
    assert!(log.contains("] a\n"), "the log of a task in a group: {log}");
    let shown = home.json(&["dags", "show", "grouped"]);
    assert_eq!(shown["task_groups"][0]["group_id"], "extract");
    assert_eq!(shown["task_groups"][0]["tooltip"], "pull");
    assert_eq!(shown["edge_labels"].as_array().unwrap().len(), 2, "{}", shown["edge_labels"]);
    assert_eq!(shown["tasks"][0]["task_group"], "extract");
    let table = String::from_utf8_lossy(&home.run(&["dags", "show", "grouped"]).stdout).to_string();
    assert!(table.contains("\ntask group extract (2 task(s)): pull\n"), "{table}");
    assert!(table.contains("\nlabel extract.a >> done: then\nlabel extract.b >> done: then\n"), "{table}");
    let dot = String::from_utf8_lossy(&home.run(&["dags", "show", "grouped", "--dot"]).stdout).to_string();
    assert!(dot.contains("  subgraph \"cluster_extract\" {\n    label=\"extract\";\n    tooltip=\"pull\";\n"), "{dot}");
    assert!(dot.contains("  \"extract.b\" -> \"done\" [label=\"then\"];\n"), "{dot}");
}

/// Effective weights by a plain walk per task, to check the bitset computation against.
fn walked(spec: &DagSpec) -> Vec<i64> {
    let index: BTreeMap<&str, usize> = spec.tasks.iter().enumerate().map(|(i, t)| (t.task_id.as_str(), i)).collect();
    let n = spec.tasks.len();
    let mut downs = vec![Vec::new(); n];
    let mut ups = vec![Vec::new(); n];
    for (i, t) in spec.tasks.iter().enumerate() {
        for u in &t.upstream {
            ups[i].push(index[u.as_str()]);
            downs[index[u.as_str()]].push(i);
        }
    }
    (0..n)
        .map(|i| {
            let next = match spec.tasks[i].weight_rule {
                WeightRule::Absolute => return spec.tasks[i].priority_weight,
                WeightRule::Downstream => &downs,
                WeightRule::Upstream => &ups,
            };
            let mut seen = vec![false; n];
            let mut stack = next[i].clone();
            let mut sum = spec.tasks[i].priority_weight;
            while let Some(j) = stack.pop() {
                if !seen[j] {
                    seen[j] = true;
                    sum += spec.tasks[j].priority_weight;
                    stack.extend(&next[j]);
                }
            }
            sum
        })
        .collect()
}

#[test]
fn effective_weights_count_each_relative_once_across_bitset_blocks() {
    // A diamond (its bottom reached twice from the top), and a 4,200-task ladder (each task
    // upstream of the next two) with varied weights and rules, across several 1,024-task blocks.
    let diamond = spec(&format!(
        "{HEAD}let a = EmptyOperator(#{{ task_id: \"a\" }});\nlet b = EmptyOperator(#{{ task_id: \"b\" }});\nlet c = EmptyOperator(#{{ task_id: \"c\" }});\nlet d = EmptyOperator(#{{ task_id: \"d\", priority_weight: 10 }});\na >> [b, c] >> d;\n"
    ));
    assert_eq!(rhaiflow::graph::priority_weights(&diamond), [13, 11, 11, 10]);
    // Seven distinct weights (summed by popcount per weight), then one per task (summed bit by bit).
    for weight in ["i % 7", "i * 13 - 2000"] {
        let ladder = spec(&format!(
            r#"{HEAD}
let rules = ["downstream", "upstream", "absolute"];
let tasks = [];
for i in 0..4200 {{
    tasks.push(EmptyOperator(#{{ task_id: `t${{i}}`, priority_weight: {weight}, weight_rule: rules[i % 3] }}));
    if i >= 1 {{ tasks[i - 1] >> tasks[i]; }}
    if i >= 2 {{ tasks[i - 2] >> tasks[i]; }}
}}
"#
        ));
        assert_eq!(rhaiflow::graph::priority_weights(&ladder), walked(&ladder), "weights {weight}");
    }
    let uniform = spec(&format!(
        "{HEAD}let prev = EmptyOperator(#{{ task_id: \"t0\" }});\nfor i in 1..4500 {{ let t = EmptyOperator(#{{ task_id: `t${{i}}` }}); prev >> t; prev = t; }}\n"
    ));
    let weights = rhaiflow::graph::priority_weights(&uniform);
    assert_eq!(weights[0], 4500);
    assert_eq!(weights, walked(&uniform));
}
