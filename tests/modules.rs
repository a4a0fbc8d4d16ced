//! `import "lib/common" as common;`: modules under the dags folder, relative to it, shared by DAG
//! files; their errors point at the module's line; they never leave the folder; a version keeps
//! the module text its closures call. Real files, the real binary, the real store.

mod common;

use common::{Home, Running, wait_until};

const MANUAL: &str = r#"start_date: datetime(2026, 1, 1), schedule: ()"#;

fn importer(dag_id: &str) -> String {
    format!(
        r#"import "lib/common" as common;
let dag = DAG("{dag_id}", #{{ {MANUAL}, default_args: common::args() }});
BashOperator(#{{ task_id: "t", bash_command: common::command("{dag_id}") }});
"#
    )
}

const LIB: &str = r#"fn args() { #{ retries: 2, owner: "data" } }
fn command(name) { `echo hello ${name}` }
fn greet(who) { `v1 greets ${who}` }
fn make(id) { RhaiOperator(#{ task_id: id, callable: |ctx| greet(ctx.task_id) }) }
"#;

/// Everything a command printed (`dags check` reports on stdout, errors go to stderr).
fn stderr(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(home: &Home, name: &str, text: &str) {
    let path = home.path().join("dags").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn dag_json(home: &Home, dag_id: &str) -> serde_json::Value {
    home.json(&["dags", "show", dag_id])
}

#[test]
fn two_dag_files_share_a_module_from_the_dags_folder() {
    let home = Home::new(&[("a.rhai", &importer("a")), ("b.rhai", &importer("b"))]);
    write(&home, "lib/common.rhai", LIB);
    let o = home.run(&["dags", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = home.json(&["dags", "list"]);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|d| d["dag_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "the module itself declares no DAG");
    let shown = dag_json(&home, "b").to_string();
    assert!(shown.contains("echo hello b"), "{shown}");
    assert!(shown.contains("\"retries\":2"), "{shown}");
}

#[test]
fn an_error_in_a_module_names_the_module_and_its_line_and_only_its_importers_fail() {
    let home = Home::new(&[
        ("a.rhai", &importer("a")),
        ("plain.rhai", &format!("DAG(\"plain\", #{{ {MANUAL} }});\nEmptyOperator(#{{ task_id: \"e\" }});")),
    ]);
    write(&home, "lib/common.rhai", "fn args() { #{} }\nfn command(name) {\n    let x = ;\n}\n");
    let o = home.run(&["dags", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("a.rhai:1"), "the import in the importer is pointed at: {err}");
    assert!(err.contains("in module `lib/common.rhai`, line 3"), "the module's own line is named: {err}");
    assert!(!err.contains("plain.rhai"), "a file that does not import it loads: {err}");

    // A runtime error inside a module function called from the DAG file.
    write(&home, "lib/common.rhai", "fn args() { #{} }\nfn command(name) { throw \"no command for \" + name; }\n");
    let err = stderr(&home.run(&["dags", "check"]));
    assert!(err.contains("no command for a"), "{err}");
}

#[test]
fn imports_never_leave_the_dags_folder_and_bad_ones_are_that_files_error() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("evil.rhai"), "fn args() { #{} }\nfn command(n) { \"echo pwned\" }\n").unwrap();
    let home = Home::new(&[]);
    let cases = [
        ("dotdot.rhai", "import \"../evil\" as e;".to_string(), "leaves the dags folder"),
        ("absolute.rhai", format!("import \"{}/evil\" as e;", outside.path().display()), "is absolute"),
        ("missing.rhai", "import \"lib/nope\" as e;".to_string(), "no module `lib/nope.rhai`"),
        ("linked.rhai", "import \"link/evil\" as e;".to_string(), "outside the dags folder"),
        ("cycle.rhai", "import \"lib/ping\" as p;".to_string(), "import cycle"),
        ("spin.rhai", "import \"lib/spin\" as p;".to_string(), "ms limit"),
        // A FIFO would block the read, and every command with it.
        ("fifo.rhai", "import \"lib/fifo\" as p;".to_string(), "module `lib/fifo.rhai` is not a regular file"),
        ("dotted.rhai", "import \"lib/./ping\" as p;".to_string(), "is not plain"),
        ("doubled.rhai", "import \"lib//ping\" as p;".to_string(), "is not plain"),
        ("control.rhai", "import \"lib/pi\\nng\" as p;".to_string(), "control character"),
    ];
    std::os::unix::fs::symlink(outside.path(), home.path().join("dags/link")).unwrap();
    write(&home, "lib/ping.rhai", "import \"lib/pong\" as q;\nfn f() { 1 }\n");
    write(&home, "lib/pong.rhai", "import \"lib/ping\" as p;\nfn g() { 2 }\n");
    nix::unistd::mkfifo(&home.path().join("dags/lib/fifo.rhai"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // The deadline of the importing file covers its modules.
    write(&home, "lib/spin.rhai", "let n = 0;\nloop { n += 1; }\n");
    for (file, text, _) in &cases {
        write(&home, file, &format!("{text}\nDAG(\"{}\", #{{ {MANUAL} }});\n", file.trim_end_matches(".rhai")));
    }
    write(&home, "good.rhai", &format!("DAG(\"good\", #{{ {MANUAL} }});\nEmptyOperator(#{{ task_id: \"e\" }});"));
    let o = home.run(&["dags", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for (file, _, expected) in &cases {
        let block = err
            .split("\n\n")
            .find(|b| b.contains(&format!("{file}:1")))
            .unwrap_or_else(|| panic!("{file} is an error: {err}"));
        assert!(block.contains(expected), "{file}: expected `{expected}` in: {block}");
    }
    assert!(!err.contains("pwned"));
    let listed = home.json(&["dags", "list"]).to_string();
    assert!(listed.contains("\"good\""), "the other files load: {listed}");
}

#[test]
fn a_run_calls_the_module_text_of_its_own_version() {
    let dag = format!(
        r#"import "lib/common" as common;
let dag = DAG("greeter", #{{ {MANUAL} }});
RhaiOperator(#{{ task_id: "greet", callable: |ctx| common::greet(ctx.dag_id) }});
// A task made by the module, its closure written there.
common::make("made");
"#
    );
    let home = Home::new(&[("greeter.rhai", &dag)]);
    write(&home, "lib/common.rhai", LIB);
    // Recorded with v1 of the module, and a run pinned to it, before any scheduler runs.
    let o = home.run(&["dags", "trigger", "greeter", "-l", "2026-02-01"]);
    assert!(o.status.success(), "{}", stderr(&o));
    write(&home, "lib/common.rhai", &LIB.replace("v1 greets", "v2 greets"));
    let o = home.run(&["dags", "trigger", "greeter", "-l", "2026-02-02"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let versions = home.json(&["dags", "versions", "greeter"]);
    assert_eq!(versions.as_array().unwrap().len(), 2, "a module edit is a new version: {versions}");

    let mut s: Running = home.spawn(&["scheduler"]);
    let xcom = |run: &str| -> Option<String> {
        home.db()
            .query_row(
                "SELECT group_concat(value, ' ') FROM (SELECT value FROM xcom
                  WHERE dag_id = 'greeter' AND run_id LIKE ?1 AND key = 'return_value' ORDER BY task_id)
                 HAVING count(*) = 2",
                [format!("manual__{run}%")],
                |r| r.get::<_, String>(0),
            )
            .ok()
    };
    let first = wait_until("the first run's XCom", || xcom("2026-02-01"));
    let second = wait_until("the second run's XCom", || xcom("2026-02-02"));
    s.kill_9();
    assert_eq!(first, r#""v1 greets greeter" "v1 greets made""#);
    assert_eq!(second, r#""v2 greets greeter" "v2 greets made""#);
}

#[test]
fn a_module_text_is_stored_once_however_many_files_import_it() {
    let closure_dag = |dag_id: &str| {
        format!(
            r#"import "lib/common" as common;
let dag = DAG("{dag_id}", #{{ {MANUAL} }});
RhaiOperator(#{{ task_id: "greet", callable: |ctx| common::greet(ctx.dag_id) }});
"#
        )
    };
    let home =
        Home::new(&[("a.rhai", &closure_dag("a")), ("b.rhai", &closure_dag("b")), ("c.rhai", &closure_dag("c"))]);
    write(&home, ".rhaiflowignore", "lib/\n");
    write(&home, "lib/common.rhai", LIB);
    let count = |table: &str| -> i64 {
        home.db().query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap_or(0)
    };
    let mut s = home.spawn(&["scheduler"]);
    wait_until("three sources recorded", || (count("dag_source") == 3).then_some(()));
    write(&home, "lib/common.rhai", &LIB.replace("v1 greets", "v2 greets"));
    wait_until("three more sources recorded", || (count("dag_source") == 6).then_some(()));
    s.kill_9();
    assert_eq!(count("dag_module"), 2, "one row per module text, not one per importer");
}
