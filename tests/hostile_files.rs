//! A DAG file can only hurt itself: blocking natives, runaway natives, huge declarations, slow
//! compiles, out-of-range dates and bad folder entries each become that entry's import error, fast,
//! while every other file in the folder still loads.
//!
//! Loads run under a watchdog: a hang fails the test (after a generous bound) instead of hanging it.
//! No assertion reads the wall clock; the deadline itself is what stops the slow ones.

mod common;

use rhaiflow::loader::{DagBag, Loader, LoaderSettings};
use rhaiflow::model::TimeZoneSpec;
use rhaiflow::schedule::{Restriction, Timetable};
use rhaiflow::script::ScriptLimits;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const FINE: &str = "let d = DAG(\"fine\", #{ start_date: days_ago(1) }); let a = EmptyOperator(#{ task_id: \"a\" });";

/// A generous bound for a debug build on a loaded 2-core machine; today's hangs never end.
const WATCHDOG: Duration = Duration::from_secs(180);

fn folder_with(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::write(dir.path().join("fine.rhai"), FINE).unwrap();
    dir
}

/// Loads `folder` with `limits` on another thread; panics if that takes longer than the watchdog.
fn load_with(folder: &Path, limits: ScriptLimits) -> DagBag {
    let (tx, rx) = mpsc::channel();
    let folder = folder.to_path_buf();
    std::thread::spawn(move || {
        let loader = Loader::new(LoaderSettings { dags_folder: folder, limits, threads: 2 }).expect("loader starts");
        let _ = tx.send(loader.load_all(&common::eval_context()).expect("folder loads"));
    });
    rx.recv_timeout(WATCHDOG).expect("loading the folder hung (or panicked)")
}

fn load(folder: &Path) -> DagBag {
    load_with(folder, ScriptLimits::default())
}

fn error_of(bag: &DagBag, file: &str) -> String {
    let e = bag.import_errors.iter().find(|e| e.file == file).unwrap_or_else(|| {
        let files: Vec<&str> = bag.import_errors.iter().map(|e| e.file.as_str()).collect();
        panic!("{file} should fail; import errors: {files:?}; DAGs: {:?}", bag.dags.keys().collect::<Vec<_>>())
    });
    e.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}

fn assert_fine_loads(bag: &DagBag) {
    assert!(bag.dags.contains_key("fine"), "the good file loads beside the hostile ones: {:?}", bag.import_errors);
}

#[test]
fn sleeping_is_refused_directly_and_through_function_pointers() {
    let head = "let d = DAG(\"sleepy\", #{ start_date: days_ago(1) });\nlet a = EmptyOperator(#{ task_id: \"a\" });\n";
    let dir = folder_with(&[
        ("direct.rhai", format!("{head}sleep(100000);\n")),
        ("float.rhai", format!("{head}sleep(1.0e5);\n")),
        ("fn_ptr.rhai", format!("{head}Fn(\"sleep\").call(100000);\n")),
        ("curried.rhai", format!("{head}let f = Fn(\"sleep\").curry(100000);\nf.call();\n")),
        ("caught.rhai", format!("{head}for i in 0..1000 {{ try {{ sleep(100000); }} catch {{ }} }}\nsleep(100000);\n")),
        ("eval_ptr.rhai", format!("{head}Fn(\"eval\").call(\"sleep(100000)\");\n")),
    ]);
    let bag = load(dir.path());
    assert_fine_loads(&bag);
    for file in ["direct.rhai", "float.rhai", "fn_ptr.rhai", "curried.rhai", "caught.rhai"] {
        let e = error_of(&bag, file);
        assert!(e.contains("`sleep` is not available in DAG files"), "{file}: {e}");
    }
    error_of(&bag, "eval_ptr.rhai");
}

#[test]
fn std_natives_that_allocate_by_a_number_are_bounded() {
    // Rhai checks these against the size limits before allocating; kept here as a guard.
    let dir = folder_with(&[
        ("pad.rhai", "let s = \"x\"; s.pad(9223372036854775807, 'x');\n".into()),
        ("blob.rhai", "let b = blob(9223372036854775807);\n".into()),
        ("array_pad.rhai", "let a = [1]; a.pad(9223372036854775807, 0);\n".into()),
        ("range.rhai", "let n = 0;\nfor i in range(0, 9223372036854775807, 1) { n += 1; }\n".into()),
    ]);
    let bag = load(dir.path());
    assert_fine_loads(&bag);
    for file in ["pad.rhai", "blob.rhai", "array_pad.rhai"] {
        let e = error_of(&bag, file);
        assert!(e.contains("exceeds the size limit"), "{file}: {e}");
    }
    let e = error_of(&bag, "range.rhai");
    assert!(e.contains("longer than the") || e.contains("operations"), "{e}");
}

#[test]
fn a_replace_that_would_explode_is_refused_before_it_allocates() {
    // 4 MiB of "x", each replaced by the 4 MiB string itself: 16 TiB if built.
    let src = "let s = \"\";\ns.pad(4000000, 'x');\ns.replace(\"x\", s);\n";
    let dir = folder_with(&[("replace.rhai", src.into())]);
    let bag = load(dir.path());
    assert_fine_loads(&bag);
    let e = error_of(&bag, "replace.rhai");
    assert!(e.contains("exceeds the size limit"), "{e}");
}

fn cross_file(n: usize) -> String {
    format!(
        "let dag = DAG(\"cross\", #{{ start_date: days_ago(1), schedule: () }});\n\
         let a = []; let b = [];\n\
         for i in 0..{n} {{\n  a.push(EmptyOperator(#{{ task_id: `a${{i}}` }}));\n  b.push(EmptyOperator(#{{ task_id: `b${{i}}` }}));\n}}\n\
         cross_downstream(a, b);\n"
    )
}

#[test]
fn a_huge_cross_product_stops_at_the_edge_cap() {
    let dir = folder_with(&[("cross.rhai", cross_file(2500))]);
    // A long deadline, so it is the cap (checked as edges are added) that stops this file.
    let limits = ScriptLimits { deadline: Duration::from_secs(60), ..ScriptLimits::default() };
    let bag = load_with(dir.path(), limits);
    assert_fine_loads(&bag);
    let e = error_of(&bag, "cross.rhai");
    assert!(e.contains("more than 100000 dependencies"), "{e}");
    assert!(e.contains("max_edges_per_dag"), "the error names the config key: {e}");
    assert!(e.contains("cross.rhai:7:1"), "positioned at the call: {e}");
}

#[test]
fn the_deadline_stops_a_long_native_call() {
    let dir = folder_with(&[("cross.rhai", cross_file(2500))]);
    let limits = ScriptLimits {
        deadline: Duration::from_millis(300),
        max_edges_per_dag: usize::MAX,
        max_declared_bytes: usize::MAX,
        ..ScriptLimits::default()
    };
    let bag = load_with(dir.path(), limits);
    assert_fine_loads(&bag);
    let e = error_of(&bag, "cross.rhai");
    assert!(e.contains("longer than the 300 ms limit"), "{e}");
}

#[test]
fn task_caps_hold_even_when_the_file_catches_errors() {
    let src = "let dag = DAG(\"many\", #{ start_date: days_ago(1) });\n\
               for i in 0..50 { try { EmptyOperator(#{ task_id: `t${i}` }); } catch { } }\n";
    let dir = folder_with(&[("many.rhai", src.into())]);
    let limits = ScriptLimits { max_tasks_per_dag: 20, ..ScriptLimits::default() };
    let bag = load_with(dir.path(), limits);
    assert_fine_loads(&bag);
    let e = error_of(&bag, "many.rhai");
    assert!(e.contains("DAG `many` has more than 20 tasks"), "{e}");
    assert!(e.contains("max_tasks_per_dag"), "{e}");
}

#[test]
fn big_strings_copied_into_many_tasks_hit_the_memory_cap() {
    // 4 MB of text in 300 tasks was 1.2 GB; the file's declarations are capped at 64 MiB.
    let src = "let dag = DAG(\"big\", #{ start_date: days_ago(1) });\n\
               let s = \"\"; s.pad(4000000, 'x');\n\
               for i in 0..300 { BashOperator(#{ task_id: `t${i}`, bash_command: s }); }\n";
    let dir = folder_with(&[("big.rhai", src.into())]);
    let limits = ScriptLimits { deadline: Duration::from_secs(60), ..ScriptLimits::default() };
    let bag = load_with(dir.path(), limits);
    assert_fine_loads(&bag);
    let e = error_of(&bag, "big.rhai");
    assert!(e.contains("more than 64 MiB"), "{e}");
    assert!(e.contains("max_dag_file_memory_mib"), "{e}");
}

#[test]
fn big_strings_held_in_variables_hit_the_measured_memory_cap() {
    // Each `let` holds its own 4 MB copy: 3,000 of them would be 12 GB.
    let mut src = String::from("let s = \"\"; s.pad(4000000, 'x');\n");
    for i in 0..3000 {
        writeln!(src, "let v{i} = s + \"{i}\";").unwrap();
    }
    let dir = folder_with(&[("held.rhai", src)]);
    let limits = ScriptLimits { deadline: Duration::from_secs(120), ..ScriptLimits::default() };
    let bag = load_with(dir.path(), limits);
    assert_fine_loads(&bag);
    let e = error_of(&bag, "held.rhai");
    assert!(e.contains("held more than 256 MiB of memory"), "{e}");
    assert!(e.contains("max_dag_file_memory_mib"), "{e}");
}

#[test]
fn a_file_that_compiles_too_slowly_is_stopped_at_the_deadline() {
    // Rhai checks each new `let` against every variable before it: 100,000 lets take minutes.
    let mut src = String::from("let x0 = 1;\n");
    for i in 1..100_000 {
        writeln!(src, "let x{i} = x{};", i - 1).unwrap();
    }
    let dir = folder_with(&[("lets.rhai", src)]);
    let bag = load(dir.path());
    assert_fine_loads(&bag);
    let e = error_of(&bag, "lets.rhai");
    assert!(e.contains("compiling took longer than the 1000 ms limit"), "{e}");
}

#[test]
fn out_of_range_dates_and_durations_are_errors_at_the_key() {
    let dag = |id: &str, args: &str| {
        format!(
            "let d = DAG(\"{id}\", #{{\n  start_date: datetime(2024, 1, 1),\n  {args}\n}});\nEmptyOperator(#{{ task_id: \"a\" }});\n"
        )
    };
    let dir = folder_with(&[
        ("interval.rhai", dag("interval", "schedule: timedelta(#{ days: 100000000 }),")),
        ("days_ago.rhai", "let d = DAG(\"d\", #{ start_date: days_ago(9223372036854775807) });\n".into()),
        ("year.rhai", "let d = DAG(\"y\", #{ start_date: datetime(4294969320, 1, 1) });\n".into()),
        ("plus.rhai", "let d = DAG(\"p\", #{ start_date: datetime(\"9999-12-31\") + days(1) });\n".into()),
        ("runs.rhai", dag("runs", "max_active_runs: 4294967296,")),
        ("retries.rhai", dag("retries", "default_args: #{ retries: 4294967297 },")),
        ("seconds.rhai", dag("seconds", "dagrun_timeout: 9223372036854775807,")),
        ("product.rhai", dag("product", "schedule: days(36500) * 2,")),
    ]);
    let bag = load(dir.path());
    assert_fine_loads(&bag);
    let e = error_of(&bag, "interval.rhai");
    assert!(e.contains("out of range") && e.contains("100 years"), "{e}");
    assert!(e.contains("interval.rhai:3:"), "{e}");
    let e = error_of(&bag, "days_ago.rhai");
    assert!(e.contains("`days_ago(9223372036854775807)` is out of range"), "{e}");
    let e = error_of(&bag, "year.rhai");
    assert!(e.contains("is not a date"), "not wrapped to 2024: {e}");
    let e = error_of(&bag, "plus.rhai");
    assert!(e.contains("out of range"), "{e}");
    let e = error_of(&bag, "runs.rhai");
    assert!(e.contains("`max_active_runs` must be at most 4294967295, not 4294967296"), "{e}");
    assert!(e.contains("runs.rhai:3:3"), "the caret is on the key: {e}");
    let e = error_of(&bag, "retries.rhai");
    assert!(e.contains("`retries` must be at most 4294967295"), "{e}");
    let e = error_of(&bag, "seconds.rhai");
    assert!(e.contains("`dagrun_timeout`") && e.contains("out of range"), "{e}");
    let e = error_of(&bag, "product.rhai");
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn a_fixed_offset_start_date_keeps_its_offset() {
    let src = "let d = DAG(\"india\", #{ start_date: datetime(\"2024-01-01T00:00:00+05:30\"), schedule: \"0 6 * * *\" });\n\
               EmptyOperator(#{ task_id: \"a\" });\n";
    let dir = folder_with(&[("india.rhai", src.into())]);
    let bag = load(dir.path());
    assert!(bag.import_errors.is_empty(), "{:?}", bag.import_errors);
    let spec = &bag.dags["india"].spec;
    assert_eq!(spec.timezone, TimeZoneSpec::Offset(5 * 3600 + 1800));
    assert_eq!(spec.timezone.to_string(), "+05:30");
    assert_eq!(spec.start_date.unwrap().to_rfc3339(), "2023-12-31T18:30:00+00:00");
    let tt = Timetable::new(spec).unwrap();
    let runs = tt.upcoming(None, Restriction::of(spec), common::fixed_now(), 2);
    // 06:00 at +05:30 is 00:30 UTC.
    assert_eq!(runs[0].logical_date.to_rfc3339(), "2024-01-01T00:30:00+00:00");
    assert_eq!(runs[0].run_after.to_rfc3339(), "2024-01-02T00:30:00+00:00");
}

#[test]
fn an_interval_past_the_calendar_does_not_panic_the_cli() {
    // Before: `dags check` passed and `dags list` panicked at `start + every`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/fine.rhai"), FINE).unwrap();
    let huge = "let d = DAG(\"huge\", #{ start_date: datetime(2024, 1, 1), schedule: timedelta(#{ days: 100000000 }) });\n\
                EmptyOperator(#{ task_id: \"a\" });\n";
    std::fs::write(dir.path().join("dags/huge.rhai"), huge).unwrap();
    for args in [&["dags", "check"][..], &["dags", "list"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
            .args(args)
            .args(["--dags-folder", "dags", "--now", "2026-01-15T12:00:00Z"])
            .current_dir(dir.path())
            .env_remove("RHAIFLOW_HOME")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.code().is_some_and(|c| c <= 1), "{args:?}: {:?}\n{stderr}", out.status);
        if args[1] == "check" {
            assert!(stderr.contains("out of range") || stdout.contains("out of range"), "{stdout}\n{stderr}");
        } else {
            assert!(stdout.contains("fine"), "{stdout}");
        }
    }
}

#[test]
fn one_bad_folder_entry_is_that_entrys_error() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("elsewhere.rhai"), FINE.replace("fine", "elsewhere")).unwrap();
    let dir = folder_with(&[
        ("sub/inner.rhai", FINE.replace("fine", "inner")),
        ("notes.txt", FINE.replace("fine", "linked")),
    ]);
    let root = dir.path();
    symlink(root.join("missing.rhai"), root.join("dangling.rhai")).unwrap();
    symlink(root.join("loop.rhai"), root.join("loop.rhai")).unwrap();
    symlink("user@host.1234:1700000000", root.join(".#fine.rhai")).unwrap(); // an Emacs lock link
    std::fs::write(root.join("fine.rhai~"), "not a DAG file").unwrap();
    std::fs::write(root.join(".fine.rhai.swp"), "not a DAG file").unwrap();
    symlink(outside.path().join("elsewhere.rhai"), root.join("outside.rhai")).unwrap();
    symlink(outside.path(), root.join("outside_dir")).unwrap();
    symlink(root, root.join("sub/up")).unwrap(); // a folder loop
    symlink(root.join("notes.txt"), root.join("linked.rhai")).unwrap();
    unreadable_subfolder(root);

    let bag = load(root);
    assert_fine_loads(&bag);
    assert!(bag.dags.contains_key("inner"), "files in subfolders load");
    assert!(bag.dags.contains_key("linked"), "a link to a file inside the folder loads");
    assert!(!bag.dags.contains_key("elsewhere"), "links leaving the folder are not followed");
    assert!(error_of(&bag, "dangling.rhai").contains("dangling symlink"));
    assert!(error_of(&bag, "loop.rhai").contains("symlink loop"));
    assert!(error_of(&bag, "outside.rhai").contains("outside the dags folder"));
    let locked = bag.import_errors.iter().find(|e| e.file.contains(".#") || e.file.ends_with('~'));
    assert!(locked.is_none(), "editor files are skipped: {locked:?}");
    let unreadable = bag.import_errors.iter().find(|e| e.file.starts_with("locked"));
    let unreadable = unreadable.unwrap_or_else(|| panic!("the unreadable folder is an error: {:?}", bag.import_errors));
    assert!(unreadable.diagnostics[0].to_string().contains("cannot read"), "{:?}", unreadable.diagnostics);
    assert_eq!(bag.import_errors.len(), 4, "{:?}", bag.import_errors);
}

/// A subfolder the walk cannot read. `chmod 000` does not stop root, so the folder is nested past
/// PATH_MAX instead: opening it by its full path fails (ENAMETOOLONG) for every user.
fn unreadable_subfolder(root: &Path) {
    let name = "d".repeat(200);
    let script = "cd \"$1\" && mkdir locked && cd -P locked && for i in $(seq 25); do mkdir \"$2\" && cd -P \"$2\" || exit 1; done; echo 'x' > deep.rhai";
    let status = Command::new("sh").args(["-c", script, "sh"]).arg(root).arg(&name).status().unwrap();
    assert!(status.success());
}
