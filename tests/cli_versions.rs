//! DAG versions on the command line, and commands that parse only what they need (issue 10):
//! `dags versions`, `dags show --version`, one-DAG commands reading the store and parsing at most
//! their DAG's own file, the last good version of a broken file, inactive DAGs, and listings from
//! the store a live scheduler keeps current. Real processes on a real SQLite file.

mod common;

use common::{Home, wait_until};

/// A DAG file with the given task ids in a chain, no schedule.
fn dag_file(dag_id: &str, tasks: &[&str]) -> String {
    let mut text = format!("let dag = DAG(\"{dag_id}\", #{{ start_date: datetime(2024, 1, 1), schedule: () }});\n");
    for t in tasks {
        text.push_str(&format!("let {t} = BashOperator(#{{ task_id: \"{t}\", bash_command: \"true\" }});\n"));
    }
    if tasks.len() > 1 {
        text.push_str(&format!("chain({});\n", tasks.join(", ")));
    }
    text
}

fn write(home: &Home, name: &str, text: &str) {
    std::fs::write(home.path().join("dags").join(name), text).unwrap();
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs a command that must succeed; its stdout and stderr.
fn ok(home: &Home, args: &[&str]) -> (String, String) {
    let o = home.run(args);
    assert!(o.status.success(), "{args:?}: {}{}", text(&o.stdout), text(&o.stderr));
    (text(&o.stdout), text(&o.stderr))
}

fn run_versions(home: &Home, dag_id: &str) -> Vec<String> {
    home.runs(dag_id).iter().map(|r| r["version_hash"].as_str().unwrap().to_string()).collect()
}

#[test]
fn versions_lists_each_edit_with_the_runs_that_used_it() {
    let home = Home::new(&[("evolving.rhai", &dag_file("evolving", &["a"]))]);
    ok(&home, &["dags", "trigger", "evolving", "--logical-date", "2024-01-01"]);
    write(&home, "evolving.rhai", &dag_file("evolving", &["a", "b"]));
    ok(&home, &["dags", "trigger", "evolving", "--logical-date", "2024-01-02"]);
    ok(&home, &["dags", "trigger", "evolving", "--logical-date", "2024-01-03"]);
    write(&home, "evolving.rhai", &dag_file("evolving", &["c"]));
    ok(&home, &["dags", "pause", "evolving"]);

    let versions = home.json(&["dags", "versions", "evolving"]);
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 3, "{versions:?}");
    let runs: Vec<u64> = versions.iter().map(|v| v["runs"].as_u64().unwrap()).collect();
    assert_eq!(runs, [1, 2, 0]);
    let latest: Vec<bool> = versions.iter().map(|v| v["is_latest"].as_bool().unwrap()).collect();
    assert_eq!(latest, [false, false, true]);
    for v in versions {
        assert_eq!(v["fileloc"], "evolving.rhai");
        assert_eq!(v["version_hash"].as_str().unwrap().len(), 64);
    }
    let hashes: Vec<&str> = versions.iter().map(|v| v["version_hash"].as_str().unwrap()).collect();
    let mut pinned = run_versions(&home, "evolving");
    pinned.sort();
    let mut expected = vec![hashes[0].to_string(), hashes[1].to_string(), hashes[1].to_string()];
    expected.sort();
    assert_eq!(pinned, expected, "the runs are pinned to the versions listed");

    let (table, _) = ok(&home, &["dags", "versions", "evolving"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("version"), "{table}");
    assert!(lines[2].starts_with(&hashes[0][..12]) && !lines[2].contains(&hashes[0][..13]), "{table}");
    let cells: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(cells[3..], ["evolving.rhai", "2"], "{table}");
    assert!(lines[4].trim_end().ends_with("yes") && !lines[3].contains("yes"), "{table}");
}

#[test]
fn versions_of_an_unknown_dag_is_an_error_with_a_suggestion() {
    let home = Home::new(&[("evolving.rhai", &dag_file("evolving", &["a"]))]);
    ok(&home, &["dags", "pause", "evolving"]);
    let o = home.run(&["dags", "versions", "evolvng"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no DAG `evolvng`"), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("did you mean `evolving`?"), "{}", text(&o.stderr));
}

#[test]
fn show_version_shows_an_old_version() {
    let home = Home::new(&[("evolving.rhai", &dag_file("evolving", &["old_a", "old_b"]))]);
    ok(&home, &["dags", "pause", "evolving"]);
    write(&home, "evolving.rhai", &dag_file("evolving", &["new_c"]));
    ok(&home, &["dags", "pause", "evolving"]);
    let versions = home.json(&["dags", "versions", "evolving"]);
    let old = versions[0]["version_hash"].as_str().unwrap().to_string();

    let (now, _) = ok(&home, &["dags", "show", "evolving"]);
    assert!(now.contains("new_c") && !now.contains("old_a"), "{now}");
    let (shown, _) = ok(&home, &["dags", "show", "evolving", "--version", &old[..8]]);
    assert!(shown.contains(&format!("version {}", &old[..12])), "{shown}");
    assert!(shown.contains("old_a") && shown.contains("old_b") && !shown.contains("new_c"), "{shown}");
    let json = home.json(&["dags", "show", "evolving", "--version", &old]);
    assert_eq!(json["tasks"].as_array().unwrap().len(), 2);

    for (prefix, says) in
        [("abc", "at least 6 hex digits"), ("zzzzzzz", "at least 6 hex digits"), ("000000", "has no version")]
    {
        let prefix = if prefix == "000000" && old.starts_with("000000") { "ffffff" } else { prefix };
        let o = home.run(&["dags", "show", "evolving", "--version", prefix]);
        assert!(!o.status.success());
        assert!(text(&o.stderr).contains(says), "{prefix}: {}", text(&o.stderr));
    }
}

#[test]
fn trigger_parses_only_its_own_file() {
    let home = Home::new(&[("mine.rhai", &dag_file("mine", &["a"]))]);
    ok(&home, &["dags", "pause", "mine"]);
    // Files no command has recorded: one broken, one that would run until the deadline, one new DAG.
    write(&home, "broken.rhai", "let dag = DAG(\"broken\", #{ schedule: () ;\n");
    write(&home, "slow.rhai", "let dag = DAG(\"slow\", #{ schedule: () });\nlet n = 0;\nloop { n += 1; }\n");
    write(&home, "newcomer.rhai", &dag_file("newcomer", &["x"]));
    let (out, err) = ok(&home, &["dags", "trigger", "mine", "--logical-date", "2024-01-01"]);
    let all = format!("{out}{err}");
    for other in ["broken", "slow", "newcomer"] {
        assert!(!all.contains(other), "{other} mentioned:\n{all}");
    }
    let db = home.db();
    let dags: Vec<String> = db
        .prepare("SELECT dag_id FROM dag")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(dags, ["mine"], "no other file was parsed and recorded");
    let errors: i64 = db.query_row("SELECT count(*) FROM import_error", [], |r| r.get(0)).unwrap();
    assert_eq!(errors, 0);
    assert_eq!(home.runs("mine").len(), 1);
    // The same for the other commands acting on one DAG.
    for args in [
        vec!["dags", "unpause", "mine"],
        vec!["dags", "show", "mine"],
        vec!["dags", "next-runs", "mine"],
        vec!["tasks", "clear", "mine", "--yes"],
        vec!["tasks", "test", "mine", "a", "2024-01-05"],
        vec!["dags", "test", "mine", "2024-01-06"],
    ] {
        let (out, err) = ok(&home, &args);
        let all = format!("{out}{err}");
        assert!(!all.contains("broken") && !all.contains("slow"), "{args:?}:\n{all}");
    }
    let count: i64 = home.db().query_row("SELECT count(*) FROM dag", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1, "still only `mine` recorded");
}

#[test]
fn a_dag_the_store_has_not_seen_is_found_in_the_folder() {
    let home = Home::new(&[("mine.rhai", &dag_file("mine", &["a"]))]);
    ok(&home, &["dags", "pause", "mine"]);
    write(&home, "newcomer.rhai", &dag_file("newcomer", &["x"]));
    ok(&home, &["dags", "trigger", "newcomer", "--logical-date", "2024-01-01"]);
    assert_eq!(home.runs("newcomer").len(), 1);
    let o = home.run(&["dags", "trigger", "newcomr"]);
    assert!(text(&o.stderr).contains("did you mean `newcomer`?"), "{}", text(&o.stderr));
}

#[test]
fn trigger_with_its_file_broken_uses_the_last_good_version() {
    let home = Home::new(&[("mine.rhai", &dag_file("mine", &["a", "b"]))]);
    ok(&home, &["dags", "trigger", "mine", "--logical-date", "2024-01-01"]);
    let good = run_versions(&home, "mine")[0].clone();
    write(
        &home,
        "mine.rhai",
        "let dag = DAG(\"mine\", #{ schedule: () });\nlet a = BashOperator(#{ task_id: \"a\" bash_command: \"true\" });\n",
    );
    let (out, err) = ok(&home, &["dags", "trigger", "mine", "--logical-date", "2024-01-02"]);
    assert!(out.contains("triggered mine"), "{out}");
    let warning = err.lines().find(|l| l.starts_with("warning: ")).unwrap_or_else(|| panic!("no warning in {err}"));
    assert!(warning.contains("mine.rhai:2:"), "{warning}");
    assert!(warning.ends_with(&format!("; using the last good version {} of DAG mine", &good[..12])), "{warning}");
    assert_eq!(err.matches("warning: ").count(), 1, "{err}");
    assert_eq!(run_versions(&home, "mine"), [good.clone(), good.clone()], "the new run is pinned to the old version");
    // The file's import error is recorded; the DAG stays active.
    let db = home.db();
    let (file, message): (String, String) =
        db.query_row("SELECT filename, message FROM import_error", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(file, "mine.rhai");
    assert!(message.contains("mine.rhai:2:"), "{message}");
    let active: bool = db.query_row("SELECT is_active FROM dag WHERE dag_id = 'mine'", [], |r| r.get(0)).unwrap();
    assert!(active);
    // `dags show` and `tasks clear` use it too, with the same warning.
    let (shown, err) = ok(&home, &["dags", "show", "mine"]);
    assert!(shown.contains(&format!("version {}", &good[..12])), "{shown}");
    assert!(err.contains("using the last good version"), "{err}");
    // Fixed: the new version is used, the import error is gone.
    write(&home, "mine.rhai", &dag_file("mine", &["a"]));
    let (_, err) = ok(&home, &["dags", "trigger", "mine", "--logical-date", "2024-01-03"]);
    assert!(!err.contains("warning"), "{err}");
    let versions = run_versions(&home, "mine");
    assert_ne!(versions[0], good, "newest first: the last run has the fixed file's version");
    let errors: i64 = home.db().query_row("SELECT count(*) FROM import_error", [], |r| r.get(0)).unwrap();
    assert_eq!(errors, 0);
}

#[test]
fn dags_test_of_a_broken_file_runs_the_last_good_version_closures_included() {
    let good = "let dag = DAG(\"closures\", #{ start_date: datetime(2024, 1, 1), schedule: () });\n\
                let r = RhaiOperator(#{ task_id: \"r\", callable: |ctx| \"from version one\" });\n";
    let home = Home::new(&[("closures.rhai", good)]);
    ok(&home, &["dags", "test", "closures", "2024-01-01"]);
    write(&home, "closures.rhai", "let dag = DAG(\"closures\", #{ schedule: () });\nlet = 1;\n");
    let (out, err) = ok(&home, &["dags", "test", "closures", "2024-01-02"]);
    assert!(err.contains("closures.rhai:2:") && err.contains("using the last good version"), "{err}");
    assert!(out.contains("success"), "{out}");
    let runs = home.runs("closures");
    let run = runs.iter().find(|r| r["logical_date"].as_str().unwrap().starts_with("2024-01-02")).unwrap();
    let value: String = home
        .db()
        .query_row(
            "SELECT value FROM xcom WHERE dag_id = 'closures' AND run_id = ?1 AND task_id = 'r'",
            [run["run_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(value.contains("from version one"), "{value}");
}

#[test]
fn trigger_of_an_inactive_dag_is_refused_with_the_reason() {
    let home = Home::new(&[("gone.rhai", &dag_file("gone", &["a"])), ("other.rhai", &dag_file("other", &["b"]))]);
    ok(&home, &["dags", "trigger", "gone", "--logical-date", "2024-01-01"]);
    std::fs::remove_file(home.path().join("dags/gone.rhai")).unwrap();
    let reason = "DAG `gone` is inactive: its file `gone.rhai` is no longer in the dags folder";
    // First while the store still says active (the folder is parsed and records it inactive),
    // then from the store alone.
    for _ in 0..2 {
        let o = home.run(&["dags", "trigger", "gone"]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(reason), "{}", text(&o.stderr));
    }
    let o = home.run(&["dags", "test", "gone"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("`gone.rhai`"), "{}", text(&o.stderr));
    assert_eq!(home.runs("gone").len(), 1, "history is kept, nothing new");
    let (versions, _) = ok(&home, &["dags", "versions", "gone"]);
    assert!(versions.contains("inactive"), "{versions}");
    // The file comes back: the DAG is active again.
    write(&home, "gone.rhai", &dag_file("gone", &["a"]));
    ok(&home, &["dags", "trigger", "gone", "--logical-date", "2024-01-02"]);
    assert_eq!(home.runs("gone").len(), 2);
}

#[test]
fn listings_read_the_store_while_a_scheduler_keeps_it_current() {
    let home = Home::new(&[("gone.rhai", &dag_file("gone", &["a"])), ("kept.rhai", &dag_file("kept", &["b"]))]);
    ok(&home, &["dags", "pause", "gone"]);
    std::fs::remove_file(home.path().join("dags/gone.rhai")).unwrap();
    write(&home, "broken.rhai", "let dag = DAG(\"broken\", #{ schedule: () });\nlet = 1;\n");
    let mut scheduler = home.spawn(&["scheduler"]);
    wait_until("the scheduler to start", || home.path().join("rhaiflow.sock").exists().then_some(()));

    let rows = home.json(&["dags", "list"]);
    let rows = rows.as_array().unwrap();
    let gone = rows.iter().find(|r| r["dag_id"] == "gone").expect("the store's inactive DAG is listed");
    assert_eq!(gone["is_active"], false);
    let kept = rows.iter().find(|r| r["dag_id"] == "kept").unwrap();
    assert_eq!(kept["is_active"], true);
    assert_eq!(kept["tasks"], 1);
    let (table, _) = ok(&home, &["dags", "list"]);
    let line = table.lines().find(|l| l.starts_with("gone ")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.trim_end().ends_with("inactive"), "{table}");
    let errors = home.json(&["dags", "list-import-errors"]);
    assert_eq!(errors[0]["file"], "broken.rhai");
    assert_eq!(errors[0]["errors"][0]["pos"]["line"], 2, "{errors}");
    assert!(errors[0]["errors"][0]["message"].as_str().unwrap().len() > 3, "{errors}");
    let (table, _) = ok(&home, &["dags", "list-import-errors"]);
    assert!(table.contains("broken.rhai:2:"), "{table}");

    scheduler.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, err) = scheduler.finish();
    assert_eq!(code, Some(0), "{err}");
    // No live scheduler: the folder is parsed, and a DAG without a file is not in it.
    let rows = home.json(&["dags", "list"]);
    assert!(rows.as_array().unwrap().iter().all(|r| r["dag_id"] != "gone"), "{rows}");
}

#[test]
fn a_dag_moved_to_another_file_is_found_there_and_recorded() {
    let home = Home::new(&[("first.rhai", &dag_file("moving", &["a"])), ("other.rhai", &dag_file("other", &["b"]))]);
    ok(&home, &["dags", "trigger", "moving", "--logical-date", "2024-01-01"]);
    // Renamed: the recorded file is gone while the row is still active.
    std::fs::rename(home.path().join("dags/first.rhai"), home.path().join("dags/second.rhai")).unwrap();
    ok(&home, &["dags", "trigger", "moving", "--logical-date", "2024-01-02"]);
    let fileloc = |home: &Home| -> String {
        home.db().query_row("SELECT fileloc FROM dag WHERE dag_id = 'moving'", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(fileloc(&home), "second.rhai");
    // Moved out of a file that still loads: that file no longer declares it.
    write(&home, "second.rhai", &dag_file("renamed", &["a"]));
    write(&home, "third.rhai", &dag_file("moving", &["a", "b"]));
    ok(&home, &["dags", "trigger", "moving", "--logical-date", "2024-01-03"]);
    assert_eq!(fileloc(&home), "third.rhai");
    assert_eq!(home.runs("moving").len(), 3);
}

#[test]
fn a_dag_its_file_no_longer_declares_becomes_inactive_when_the_file_is_recorded() {
    let two = format!("{}{}", dag_file("one", &["a"]), dag_file("two", &["b"]).replace("let dag", "let dag2"));
    let two = two.replace("let b = BashOperator(#{", "let b = BashOperator(#{ dag: dag2,");
    let home = Home::new(&[("pair.rhai", &two)]);
    ok(&home, &["dags", "pause", "one"]);
    let active = |home: &Home, id: &str| -> bool {
        home.db().query_row("SELECT is_active FROM dag WHERE dag_id = ?1", [id], |r| r.get(0)).unwrap()
    };
    assert!(active(&home, "one") && active(&home, "two"));
    write(&home, "pair.rhai", &dag_file("one", &["a"]));
    ok(&home, &["dags", "unpause", "one"]);
    assert!(active(&home, "one"));
    assert!(!active(&home, "two"), "`two` left the file that was parsed and recorded");
}
