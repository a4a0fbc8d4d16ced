//! Runaway DAG files become that file's import error; the process and every other file are unharmed.
//! (No wall-clock assertions: the deadline itself is what stops the endless ones.)

mod common;

use rhaiflow::loader::{Loader, LoaderSettings};
use rhaiflow::script::ScriptLimits;
use std::fmt::Write;
use std::time::Duration;

fn folder_with(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::write(
        dir.path().join("fine.rhai"),
        "let d = DAG(\"fine\", #{ start_date: days_ago(1) }); let a = EmptyOperator(#{ task_id: \"a\" });",
    )
    .unwrap();
    dir
}

fn error_of(bag: &rhaiflow::loader::DagBag, file: &str) -> String {
    let e = bag.import_errors.iter().find(|e| e.file == file).unwrap_or_else(|| panic!("{file} should fail"));
    e.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}

#[test]
fn runaway_files_are_stopped_and_the_rest_load() {
    // Tasks in an array, not 10,000 top-level `let`s: those alone take Rhai longer than the deadline
    // to compile (see hostile_files.rs), and this file is about the expression depth.
    let mut deep_chain = String::from("let dag = DAG(\"deep\", #{ start_date: days_ago(1) });\nlet t = [];\n");
    writeln!(deep_chain, "for i in 0..10000 {{ t.push(EmptyOperator(#{{ task_id: `t${{i}}` }})); }}").unwrap();
    deep_chain.push_str(&(0..10_000).map(|i| format!("t[{i}]")).collect::<Vec<_>>().join(" >> "));
    deep_chain.push(';');
    let dir = folder_with(&[
        ("endless.rhai", "let dag = DAG(\"endless\", #{ start_date: days_ago(1) });\nloop { }\n".into()),
        ("recursion.rhai", "fn down(n) { down(n + 1) }\nlet dag = DAG(\"recursion\");\ndown(0);\n".into()),
        ("huge_string.rhai", "let s = \"x\";\nloop { s += s; }\n".into()),
        ("huge_array.rhai", "let a = [];\nloop { a.push(1); }\n".into()),
        ("deep_chain.rhai", deep_chain),
    ]);
    let bag = common::load(dir.path());
    assert!(bag.dags.contains_key("fine"), "the good file loads beside the runaway ones");
    let endless = error_of(&bag, "endless.rhai");
    assert!(endless.contains("endless loop"), "{endless}");
    assert!(endless.contains("endless.rhai:2:"), "{endless}");
    let recursion = error_of(&bag, "recursion.rhai");
    assert!(recursion.contains("function calls nested too deeply"), "{recursion}");
    let huge = error_of(&bag, "huge_string.rhai");
    assert!(huge.contains("exceeds the size limit"), "{huge}");
    let array = error_of(&bag, "huge_array.rhai");
    // Rhai re-measures an array on every push, so the deadline may stop this one before the size cap.
    assert!(array.contains("exceeds the size limit") || array.contains("longer than the"), "{array}");
    let deep = error_of(&bag, "deep_chain.rhai");
    assert!(deep.contains("expression nested too deeply"), "{deep}");
    assert!(deep.contains("chain("), "the message says what to do instead: {deep}");
}

#[test]
fn a_10000_task_dag_built_in_a_loop_loads() {
    let src = r#"
        let dag = DAG("wide", #{ start_date: days_ago(1), schedule: () });
        let prev = EmptyOperator(#{ task_id: "start" });
        for i in 0..10000 {
            let t = EmptyOperator(#{ task_id: `t${i}` });
            prev >> t;
            prev = t;
        }
    "#;
    let dir = folder_with(&[("wide.rhai", src.into())]);
    // This is about the size, not the speed: a debug build on a loaded 2-core machine can need more
    // than the default 1 s deadline for 10,000 tasks, so the deadline here is generous.
    let limits = ScriptLimits { deadline: Duration::from_secs(60), ..ScriptLimits::default() };
    let settings = LoaderSettings { dags_folder: dir.path().to_path_buf(), limits, threads: 2 };
    let bag = Loader::new(settings).unwrap().load_all(&common::eval_context()).unwrap();
    assert!(bag.import_errors.is_empty(), "{:?}", bag.import_errors);
    assert_eq!(bag.dags["wide"].spec.tasks.len(), 10_001);
}

#[test]
fn dag_files_cannot_read_files_or_eval_strings() {
    let dir = folder_with(&[
        ("import_file.rhai", "import \"/etc/passwd\" as p;\n".into()),
        ("eval.rhai", "let x = eval(\"1 + 1\");\n".into()),
    ]);
    let bag = common::load(dir.path());
    assert!(error_of(&bag, "import_file.rhai").contains("`/etc/passwd` is absolute"));
    let eval = error_of(&bag, "eval.rhai");
    assert!(eval.contains("eval"), "{eval}");
}

fn diagnostics_of(bag: &rhaiflow::loader::DagBag, file: &str) -> Vec<rhaiflow::model::Diagnostic> {
    let e = bag.import_errors.iter().find(|e| e.file == file).unwrap_or_else(|| panic!("{file} should fail"));
    e.diagnostics.clone()
}

#[test]
fn python_habits_in_a_huge_file_are_reported_a_bounded_number_of_times() {
    let many_habits = "let x = True; # a comment\n".repeat(100_000);
    let one_long_call = format!("let d = DAG({});\n", "a=1,".repeat(500_000));
    let dir = folder_with(&[("many_habits.rhai", many_habits), ("one_long_call.rhai", one_long_call)]);
    let bag = common::load(dir.path());
    assert!(bag.dags.contains_key("fine"));
    let habits = diagnostics_of(&bag, "many_habits.rhai");
    assert!((2..=30).contains(&habits.len()), "{} diagnostics", habits.len());
    assert!(habits[0].message.contains("`True` is Python"), "{}", habits[0]);
    let call = diagnostics_of(&bag, "one_long_call.rhai");
    assert_eq!(call.len(), 1, "{call:?}");
    let message = &call[0].message;
    assert!(message.starts_with("keyword arguments such as `a=` are Python: write `DAG(#{ a: ..., "), "{message}");
    assert!(message.ends_with(", ... })`") && message.len() < 200, "{message}");
}

#[test]
fn errors_recorded_in_a_loop_are_capped_and_counted() {
    let looped = "let dag = DAG(\"looped\", #{ start_date: days_ago(1) });\n\
                  for i in 0..200 { BashOperator(#{ task_id: `t${i}`, retires: 1 }); }\n"
        .to_string();
    let dir = folder_with(&[("looped.rhai", looped)]);
    let bag = common::load(dir.path());
    let errors = diagnostics_of(&bag, "looped.rhai");
    // One unknown key (the same place and message each time) and 49 distinct "needs" errors, in
    // file order (the call comes before its key), then the count of the rest.
    assert_eq!(errors.len(), 51, "{}", errors.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n"));
    assert_eq!(errors[0].message, "`BashOperator` `t0` needs `bash_command`");
    assert_eq!(errors[48].message, "`BashOperator` `t48` needs `bash_command`");
    assert_eq!(errors[49].message, "unknown key `retires` in `BashOperator` — did you mean `retries`?");
    assert_eq!(errors[50].message, "151 more errors like these");
}

#[test]
fn a_broken_template_shared_by_tasks_made_in_a_loop_is_reported_once() {
    let looped = "let dag = DAG(\"templated\", #{ start_date: days_ago(1) });\n\
                  for i in 0..300 { BashOperator(#{ task_id: `t${i}`, bash_command: \"echo {{ ds \" }); }\n\
                  for i in 0..300 { BashOperator(#{ task_id: `u${i}`, bash_command: `echo {{ ds ${i}` }); }\n"
        .to_string();
    let dir = folder_with(&[("templated.rhai", looped)]);
    let bag = common::load(dir.path());
    let errors = diagnostics_of(&bag, "templated.rhai");
    assert_eq!(errors.len(), 1 + 49, "{}", errors.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n"));
    assert!(errors[0].message.starts_with("task `t0`: template error in `bash_command`"), "{}", errors[0]);
    assert!(errors[1].message.starts_with("task `u0`: template error in `bash_command`"), "{}", errors[1]);
}
