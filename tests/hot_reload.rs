//! Hot reload under a real scheduler: real files in a temporary dags folder, the real store.
//! Every wait is on the store with a deadline, never a fixed sleep; "nothing else happened" is
//! checked after a sentinel file's change was recorded (rescans run in order, so every earlier
//! change has been handled by then).

mod common;

use common::{Home, Running, wait_until};
use std::path::Path;

fn dag(dag_id: &str, command: &str) -> String {
    format!(
        r#"let dag = DAG("{dag_id}", #{{ start_date: datetime(2026, 1, 1), schedule: () }});
BashOperator(#{{ task_id: "t", bash_command: "{command}" }});
"#
    )
}

/// The versions recorded for a DAG, oldest first.
fn versions(home: &Home, dag_id: &str) -> Vec<String> {
    let db = home.db();
    let mut stmt =
        db.prepare("SELECT version_hash FROM dag_version WHERE dag_id = ?1 ORDER BY created_at, rowid").unwrap();
    stmt.query_map([dag_id], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// `(is_active, latest_version_hash)` of a DAG row.
fn dag_row(home: &Home, dag_id: &str) -> Option<(bool, String)> {
    let db = home.db();
    db.query_row("SELECT is_active, latest_version_hash FROM dag WHERE dag_id = ?1", [dag_id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .ok()
}

fn import_error(home: &Home, file: &str) -> Option<String> {
    home.db().query_row("SELECT message FROM import_error WHERE filename = ?1", [file], |r| r.get(0)).ok()
}

fn latest_spec(home: &Home, dag_id: &str) -> Option<String> {
    home.db()
        .query_row(
            "SELECT v.spec_json FROM dag d JOIN dag_version v ON v.version_hash = d.latest_version_hash
              WHERE d.dag_id = ?1",
            [dag_id],
            |r| r.get(0),
        )
        .ok()
}

/// Writes the sentinel DAG with mark `n` and waits until the scheduler recorded it: every change
/// made before has been rescanned by then.
fn settle(home: &Home, n: u32) {
    let mark = format!("echo sentinel {n}");
    std::fs::write(home.path().join("dags/zz_sentinel.rhai"), dag("sentinel", &mark)).unwrap();
    wait_until(&format!("sentinel {n} recorded"), || {
        latest_spec(home, "sentinel").filter(|s| s.contains(&mark)).map(|_| ())
    });
}

/// A scheduler on `home`, once it has recorded the folder. Its output is not read (a reload of
/// hundreds of files logs more than a pipe holds), so it goes nowhere.
fn scheduler(home: &Home) -> Running {
    scheduler_with(home, false)
}

fn scheduler_with(home: &Home, paused_at_creation: bool) -> Running {
    let paused = paused_at_creation.to_string();
    started(home, "scheduler", &[("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", &paused)], false)
}

/// `command` (`scheduler` or `standalone`) with `env`, once it has recorded the folder; its
/// stderr kept for `Running::finish` with `keep_stderr` (only for commands that log little).
fn started(home: &Home, command: &str, env: &[(&str, &str)], keep_stderr: bool) -> Running {
    let mut cmd = home.command(&[command]);
    cmd.envs(env.iter().copied()).stdout(std::process::Stdio::null());
    cmd.stderr(if keep_stderr { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let running = Running(Some(cmd.spawn().unwrap()));
    settle(home, 0);
    running
}

fn write(home: &Home, name: &str, text: &str) {
    let path = home.path().join("dags").join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// An editor's atomic save: a temporary file beside, then a rename over the old one.
fn atomic_save(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn an_atomic_save_and_an_in_place_rewrite_each_make_exactly_one_version() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let mut s = scheduler(&home);
    assert_eq!(versions(&home, "a").len(), 1);

    atomic_save(&home.path().join("dags"), "a.rhai", &dag("a", "echo two"));
    wait_until("the atomic save's version", || (versions(&home, "a").len() == 2).then_some(()));
    assert!(latest_spec(&home, "a").unwrap().contains("echo two"));

    // Truncate and write in place, in two writes (as an editor without atomic saves does).
    let text = dag("a", "echo three");
    let (head, tail) = text.split_at(text.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(home.path().join("dags/a.rhai")).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        f.flush().unwrap();
        f.write_all(tail.as_bytes()).unwrap();
    }
    wait_until("the rewrite's version", || latest_spec(&home, "a").filter(|s| s.contains("echo three")));
    // A save of the same content, and a touch, make no version.
    std::fs::write(home.path().join("dags/a.rhai"), &text).unwrap();
    settle(&home, 1);
    s.kill_9();
    assert_eq!(versions(&home, "a").len(), 3, "one version per content");
    assert_eq!(import_error(&home, "a.rhai"), None);
}

#[test]
fn editor_swap_backup_and_lock_files_and_ignored_files_make_no_version_and_no_error() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    std::fs::write(home.path().join("dags/.rhaiflowignore"), "skipped/\n").unwrap();
    let mut s = scheduler(&home);
    let dir = home.path().join("dags");
    // What vim writes around a save, with broken content in each.
    std::fs::write(dir.join(".a.rhai.swp"), "binary swap \u{0}").unwrap();
    std::fs::write(dir.join("a.rhai~"), "oops(").unwrap();
    std::fs::write(dir.join("4913"), "").unwrap();
    std::fs::write(dir.join(".#a.rhai"), "lock").unwrap();
    write(&home, "skipped/x.rhai", "oops(");
    settle(&home, 1);
    s.kill_9();
    assert_eq!(versions(&home, "a").len(), 1);
    let errors: u32 = home.db().query_row("SELECT COUNT(*) FROM import_error", [], |r| r.get(0)).unwrap();
    assert_eq!(errors, 0);
}

#[test]
fn a_bulk_rewrite_of_300_files_records_300_versions_and_no_more() {
    let files: Vec<(String, String)> =
        (0..300).map(|i| (format!("d{i:03}.rhai"), dag(&format!("d{i:03}"), "echo one"))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let home = Home::new(&refs);
    let mut s = scheduler(&home);
    // A `git checkout`: every file rewritten through a rename, as git does.
    for (name, _) in &files {
        let id = name.trim_end_matches(".rhai");
        atomic_save(&home.path().join("dags"), name, &dag(id, "echo two"));
    }
    wait_until("every file's second version", || {
        let n: u32 =
            home.db().query_row("SELECT COUNT(*) FROM dag_version WHERE dag_id LIKE 'd%'", [], |r| r.get(0)).unwrap();
        (n >= 600).then_some(())
    });
    settle(&home, 1);
    s.kill_9();
    let n: u32 =
        home.db().query_row("SELECT COUNT(*) FROM dag_version WHERE dag_id LIKE 'd%'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 600, "exactly two versions per DAG");
    for (name, _) in files.iter().step_by(37) {
        let id = name.trim_end_matches(".rhai");
        assert!(latest_spec(&home, id).unwrap().contains("echo two"), "{id}");
    }
}

#[test]
fn a_broken_save_keeps_the_last_good_version_scheduled_until_the_fix() {
    let once = |command: &str| {
        format!(
            r#"let dag = DAG("a", #{{ start_date: datetime(2026, 1, 1), schedule: "@once" }});
BashOperator(#{{ task_id: "t", bash_command: "{command}" }});
"#
        )
    };
    let home = Home::new(&[("a.rhai", &once("echo good"))]);
    // New DAGs start paused here, so the `@once` run waits for the unpause below.
    let mut s = scheduler_with(&home, true);
    let good = dag_row(&home, "a").unwrap();
    write(
        &home,
        "a.rhai",
        "let dag = DAG(\"a\", #{ start_date: datetime(2026, 1, 1), schedule: \"@once\" });\nBashOperator(#{ task_id: \"t\" bash_command: \"x\" });\n",
    );
    let error = wait_until("the import error", || import_error(&home, "a.rhai"));
    assert!(error.contains("a.rhai:2:"), "names the line: {error}");
    assert_eq!(dag_row(&home, "a"), Some(good.clone()), "the last good version stays active and latest");
    // Still scheduled: unpaused now, its `@once` run runs the last good version.
    home.db().execute("UPDATE dag SET is_paused = 0 WHERE dag_id = 'a'", []).unwrap();
    write(&home, "zz_wake.rhai", &dag("wake", "true"));
    let run =
        wait_until("the run on the last good version", || home.runs("a").into_iter().find(|r| r["state"] == "success"));
    let run_id = run["run_id"].as_str().unwrap().to_string();
    assert!(home.log("a", &run_id, "t").contains("echo good"));
    write(&home, "a.rhai", &once("echo fixed"));
    wait_until("the error cleared", || import_error(&home, "a.rhai").is_none().then_some(()));
    s.kill_9();
    assert!(latest_spec(&home, "a").unwrap().contains("echo fixed"));
    assert_eq!(versions(&home, "a").len(), 2);
}

#[test]
fn a_deleted_file_retires_its_dags_with_their_history_and_a_restored_one_brings_them_back() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let mut s = scheduler(&home);
    assert!(home.run(&["dags", "trigger", "a", "--logical-date", "2026-03-04"]).status.success());
    wait_until("the run", || home.runs("a").first().filter(|r| r["state"] == "success").map(|_| ()));
    let text = std::fs::read_to_string(home.path().join("dags/a.rhai")).unwrap();
    std::fs::remove_file(home.path().join("dags/a.rhai")).unwrap();
    wait_until("the DAG inactive", || dag_row(&home, "a").filter(|r| !r.0).map(|_| ()));
    assert_eq!(
        home.db().query_row("SELECT COUNT(*) FROM dag_run WHERE dag_id = 'a'", [], |r| r.get::<_, u32>(0)).unwrap(),
        1
    );
    std::fs::write(home.path().join("dags/a.rhai"), text).unwrap();
    wait_until("the DAG active again", || dag_row(&home, "a").filter(|r| r.0).map(|_| ()));
    settle(&home, 1);
    s.kill_9();
    assert_eq!(versions(&home, "a").len(), 1, "the same content is the same version");

    // Deleted while no scheduler ran: retired when the next one starts.
    std::fs::remove_file(home.path().join("dags/a.rhai")).unwrap();
    let mut s = scheduler(&home);
    settle(&home, 2);
    s.kill_9();
    assert_eq!(dag_row(&home, "a").map(|r| r.0), Some(false));
}

#[test]
fn files_in_subfolders_and_symlinked_files_are_followed() {
    let home = Home::new(&[]);
    write(&home, "team/real/b.rhai", &dag("b", "echo one"));
    // A symlinked file whose target lives in a subfolder of the dags folder.
    write(&home, "lib/c_target.txt", &dag("c", "echo one"));
    std::os::unix::fs::symlink(home.path().join("dags/lib/c_target.txt"), home.path().join("dags/c.rhai")).unwrap();
    let mut s = scheduler(&home);
    assert!(dag_row(&home, "b").is_some_and(|r| r.0));
    assert!(dag_row(&home, "c").is_some_and(|r| r.0));
    atomic_save(&home.path().join("dags/team/real"), "b.rhai", &dag("b", "echo two"));
    std::fs::write(home.path().join("dags/lib/c_target.txt"), dag("c", "echo two")).unwrap();
    wait_until("b's new version", || latest_spec(&home, "b").filter(|s| s.contains("echo two")));
    wait_until("c's new version", || latest_spec(&home, "c").filter(|s| s.contains("echo two")));
    // A whole subfolder moved in.
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("moved")).unwrap();
    std::fs::write(outside.path().join("moved/m.rhai"), dag("m", "true")).unwrap();
    std::fs::rename(outside.path().join("moved"), home.path().join("dags/moved")).unwrap();
    wait_until("the moved-in folder's DAG", || dag_row(&home, "m").filter(|r| r.0).map(|_| ()));
    s.kill_9();
}

#[test]
fn a_run_already_going_finishes_on_the_version_it_started_with() {
    let home = Home::new(&[(
        "p.rhai",
        r#"let dag = DAG("p", #{ start_date: datetime(2026, 1, 1), schedule: () });
let first = BashOperator(#{ task_id: "first", bash_command: "while [ ! -e $HOME_DIR/go ]; do sleep 0.05; done" });
let second = BashOperator(#{ task_id: "second", bash_command: "echo old-second" });
first >> second;"#,
    )]);
    let mut s = scheduler(&home);
    assert!(home.run(&["dags", "trigger", "p", "--logical-date", "2026-03-04"]).status.success());
    let run_id = "manual__2026-03-04T00:00:00+00:00";
    wait_until("first running", || {
        home.states("p", run_id).iter().find(|t| t.0 == "first" && t.1 == "running").map(|_| ())
    });
    let text = home.file("dags/p.rhai").replace("old-second", "new-second");
    atomic_save(&home.path().join("dags"), "p.rhai", &text);
    wait_until("the new version", || latest_spec(&home, "p").filter(|s| s.contains("new-second")));
    std::fs::write(home.path().join("go"), "").unwrap();
    wait_until("the run done", || home.runs("p").first().filter(|r| r["state"] == "success").map(|_| ()));
    assert!(home.log("p", run_id, "second").contains("old-second"));
    // A new run uses the new version.
    assert!(home.run(&["dags", "trigger", "p", "--logical-date", "2026-03-05"]).status.success());
    let run_id = "manual__2026-03-05T00:00:00+00:00";
    wait_until("the second run done", || {
        home.runs("p").iter().find(|r| r["run_id"] == run_id && r["state"] == "success").map(|_| ())
    });
    s.kill_9();
    assert!(home.log("p", run_id, "second").contains("new-second"));
}

/// `standalone` says where things are, records a saved edit at once, serves the REST API, and
/// stops on SIGTERM.
#[test]
fn standalone_runs_the_scheduler_with_its_watcher_and_says_where_things_are() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let mut s = started(&home, "standalone", &[("RHAIFLOW__WEBSERVER__BIND", &bind)], true);
    atomic_save(&home.path().join("dags"), "a.rhai", &dag("a", "echo two"));
    wait_until("the saved version", || latest_spec(&home, "a").filter(|s| s.contains("echo two")));
    // The REST API answers from the same process (a raw HTTP/1.1 request: no client needed).
    let health = wait_until("the REST API", || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        conn.write_all(b"GET /api/v1/dags/a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer)
    });
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"dag_id\":\"a\""), "{health}");
    s.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, stderr) = s.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("rhaiflow standalone: DAGs from dags") && stderr.contains("rhaiflow.db"), "{stderr}");
    assert!(stderr.contains(&format!("REST API at http://127.0.0.1:{port}/api/v1")), "{stderr}");
    assert!(stderr.contains("DAG version recorded") && stderr.contains("dag_id=a"), "{stderr}");
}

/// A DAG moved from one file to another in two saves: the new file is a duplicate until the old
/// one lets the DAG go, and then loads without being saved again.
#[test]
fn a_dag_moved_between_files_loads_from_its_new_file_once_the_old_one_lets_go() {
    let home = Home::new(&[("a.rhai", &format!("{}{}", dag("moving", "echo a"), "// a\n"))]);
    let mut s = scheduler(&home);
    write(&home, "b.rhai", &dag("moving", "echo b"));
    let error = wait_until("b's duplicate error", || import_error(&home, "b.rhai"));
    assert!(error.contains("already declared in") && error.contains("a.rhai"), "{error}");
    write(&home, "a.rhai", &dag("other", "true"));
    wait_until("b loaded", || import_error(&home, "b.rhai").is_none().then_some(()));
    wait_until("moving's version from b", || latest_spec(&home, "moving").filter(|s| s.contains("echo b")));
    settle(&home, 1);
    s.kill_9();
    let file: String = home
        .db()
        .query_row("SELECT fileloc FROM dag WHERE dag_id = 'moving' AND is_active = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(file, "b.rhai");
}

/// A symlinked folder leading out of the dags folder is neither scanned nor watched: what happens
/// out there records nothing and wakes nothing, and the warning is logged once, not per rescan.
#[test]
fn a_symlink_out_of_the_dags_folder_is_not_watched_and_warned_about_once() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), home.path().join("dags/outside")).unwrap();
    let mut s = started(&home, "scheduler", &[], true);
    for i in 0..20 {
        std::fs::write(outside.path().join(format!("o{i}.rhai")), dag(&format!("o{i}"), "true")).unwrap();
        settle(&home, i + 1);
    }
    s.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, _, stderr) = s.finish();
    assert_eq!(stderr.matches("not following a symlinked folder outside the dags folder").count(), 1, "{stderr}");
    assert!(dag_row(&home, "o0").is_none());
}

/// The dags folder moved away and made anew (a deploy that swaps folders): its DAGs stay as they
/// were while it is gone, and the new folder is watched (not only rescanned every hour here).
#[test]
fn a_dags_folder_replaced_by_a_new_one_is_watched_again() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let mut s = started(&home, "scheduler", &[("RHAIFLOW__CORE__RESCAN_INTERVAL", "3600")], false);
    let dags = home.path().join("dags");
    std::fs::rename(&dags, home.path().join("dags.old")).unwrap();
    std::fs::create_dir(&dags).unwrap();
    std::fs::copy(home.path().join("dags.old/a.rhai"), dags.join("a.rhai")).unwrap();
    std::fs::copy(home.path().join("dags.old/zz_sentinel.rhai"), dags.join("zz_sentinel.rhai")).unwrap();
    // The new folder is watched within a second of appearing; each save after that is seen.
    wait_until("a save in the new folder recorded", || {
        std::fs::write(dags.join("b.rhai"), dag("b", "true")).unwrap();
        dag_row(&home, "b").filter(|r| r.0).map(|_| ())
    });
    s.kill_9();
    assert_eq!(dag_row(&home, "a").map(|r| r.0), Some(true), "a was never retired");
}

/// `standalone` on a taken address stops at start, naming it, before it runs anything.
#[test]
fn standalone_on_a_taken_address_stops_at_start_naming_it() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one"))]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cmd = home.command(&["standalone"]);
    cmd.env("RHAIFLOW__WEBSERVER__BIND", addr.to_string());
    let o = common::output_within_deadline(cmd, "standalone");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

/// With no scheduler running, `dags list` parses the folder: a broken file's DAG is still listed
/// (its last good version stays scheduled and triggerable), beside the warning about the file.
#[test]
fn dags_list_without_a_scheduler_shows_a_broken_files_dag_on_its_last_good_version() {
    let home = Home::new(&[("a.rhai", &dag("a", "echo one")), ("b.rhai", &dag("b", "true"))]);
    assert!(home.run(&["dags", "pause", "a"]).status.success());
    let good = dag_row(&home, "a").unwrap().1;
    write(&home, "a.rhai", "oops(");
    let o = home.run(&["dags", "list", "--output", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = rows.as_array().unwrap().iter().find(|r| r["dag_id"] == "a").cloned().expect("a is listed");
    assert_eq!(a["version_hash"], good.as_str());
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed to load"));
    let o = home.run(&["dags", "list-import-errors"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("a.rhai: the last good version stays scheduled and triggerable: a ("), "{out}");
}

#[test]
fn a_change_to_a_shared_module_re_evaluates_its_importers_and_only_them() {
    let importer = |dag_id: &str| {
        format!(
            r#"import "lib/common" as common;
let dag = DAG("{dag_id}", #{{ start_date: datetime(2026, 1, 1), schedule: () }});
BashOperator(#{{ task_id: "t", bash_command: common::command("{dag_id}") }});
"#
        )
    };
    let home = Home::new(&[("a.rhai", &importer("a")), ("b.rhai", &importer("b")), ("c.rhai", &dag("c", "echo c"))]);
    // The module sits in an ignored folder: it is not a DAG file, yet its changes count.
    write(&home, ".rhaiflowignore", "lib/\n");
    write(&home, "lib/common.rhai", "fn command(name) { `echo one ${name}` }\n");
    let mut s = scheduler(&home);
    assert!(latest_spec(&home, "a").unwrap().contains("echo one a"));

    write(&home, "lib/common.rhai", "fn command(name) { `echo two ${name}` }\n");
    wait_until("a's new version", || latest_spec(&home, "a").filter(|s| s.contains("echo two a")));
    wait_until("b's new version", || latest_spec(&home, "b").filter(|s| s.contains("echo two b")));
    settle(&home, 1);
    assert_eq!(versions(&home, "a").len(), 2);
    assert_eq!(versions(&home, "c").len(), 1, "a file that does not import the module is untouched");

    // A module that breaks: its importers keep their last good version and say why, at the
    // module's line; fixing it clears the error.
    write(&home, "lib/common.rhai", "fn command(name) {\n  let = 1;\n}\n");
    let error = wait_until("a's import error", || import_error(&home, "a.rhai"));
    assert!(error.contains("lib/common.rhai"), "{error}");
    assert!(error.contains("line 2"), "{error}");
    assert!(latest_spec(&home, "a").unwrap().contains("echo two a"), "the last good version stays");
    write(&home, "lib/common.rhai", "fn command(name) { `echo three ${name}` }\n");
    wait_until("a's fixed version", || latest_spec(&home, "a").filter(|s| s.contains("echo three a")));
    wait_until("the error cleared", || import_error(&home, "a.rhai").is_none().then_some(()));
    settle(&home, 2);
    assert_eq!(versions(&home, "a").len(), 3);
    assert!(import_error(&home, "b.rhai").is_none());
    s.kill_9();
}

#[test]
fn deleting_the_file_that_owns_a_dag_id_lets_the_duplicate_load() {
    let home = Home::new(&[("one.rhai", &dag("same", "echo one"))]);
    let mut s = scheduler(&home);
    let two = format!("{}{}", dag("same", "echo two"), dag("two_own", "echo own").replace("let dag =", "let d2 ="));
    let two = two.replace(
        "BashOperator(#{ task_id: \"t\", bash_command: \"echo own\" });",
        "BashOperator(#{ task_id: \"t\", bash_command: \"echo own\", dag: d2 });",
    );
    write(&home, "two.rhai", &two);
    let error = wait_until("two.rhai's duplicate error", || import_error(&home, "two.rhai"));
    assert!(error.contains("already declared in"), "{error}");
    std::fs::remove_file(home.path().join("dags/one.rhai")).unwrap();
    wait_until("two.rhai loads", || import_error(&home, "two.rhai").is_none().then_some(()));
    wait_until("same from two.rhai", || latest_spec(&home, "same").filter(|s| s.contains("echo two")));
    assert!(dag_row(&home, "same").unwrap().0, "`same` is active again");
    assert!(dag_row(&home, "two_own").is_some_and(|(active, _)| active), "two.rhai's other DAG loads");
    s.kill_9();
}

/// Memory per loaded DAG: the folder keeps each spec once, shared with the versions it hands out
/// (and so with the scheduler), and not the JSON, which only recording a new version needs.
#[test]
fn the_folder_keeps_one_shared_spec_per_dag_and_no_json() {
    use rhaiflow::loader::{Folder, Loader, LoaderSettings};
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(dir.path().join(format!("d{i}.rhai")), dag(&format!("d{i}"), "echo hi")).unwrap();
    }
    let settings = LoaderSettings {
        dags_folder: dir.path().to_path_buf(),
        limits: rhaiflow::script::ScriptLimits::default(),
        threads: 1,
    };
    let loader = Loader::new(settings).unwrap();
    let mut folder = Folder::default();
    let changes = folder.rescan(&loader, &common::eval_context()).unwrap();
    assert_eq!(changes.versions.len(), 3);
    for v in &changes.versions {
        assert!(!v.json.is_empty(), "a new version carries its JSON to be recorded");
        let kept = folder.dags().find(|d| d.spec.dag_id == v.spec.dag_id).unwrap();
        assert!(kept.json.is_empty(), "the folder keeps no JSON");
        assert!(std::sync::Arc::ptr_eq(&kept.spec, &v.spec), "one spec, shared");
    }
    let owners: Vec<_> = folder.dags().flat_map(|d| d.spec.tasks.iter().map(|t| t.owner.clone())).collect();
    assert!(owners.windows(2).all(|w| std::sync::Arc::ptr_eq(&w[0], &w[1])), "task owners are one shared text");
}
