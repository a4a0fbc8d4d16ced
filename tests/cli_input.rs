//! Hostile command-line input through the real binary: numbers out of range, far dates, a huge
//! `--conf`, arguments that are not UTF-8, and the panic hook for whatever bug remains.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOW: &str = "2026-01-15T12:00:00Z";
const DAG: &str = "let dag = DAG(\"good\", #{ start_date: datetime(2026, 1, 1), schedule: \"@daily\", catchup: false });\nlet a = EmptyOperator(#{ task_id: \"a\" });\n";

fn home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/good.rhai"), DAG).unwrap();
    dir
}

fn command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rhaiflow"));
    cmd.current_dir(home).env_remove("RHAIFLOW_HOME").env_remove("RUST_BACKTRACE");
    cmd
}

fn rhaiflow<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Output {
    command(home).args(args).output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn usage_error(home: &Path, args: &[&str], expected: &str) {
    let o = rhaiflow(home, args);
    assert_eq!(stderr(&o), format!("error: {expected}\n\nFor more information, try '--help'.\n"), "{args:?}");
    assert_eq!(o.status.code(), Some(2), "{args:?}");
}

#[test]
fn next_runs_count_is_bounded() {
    let dir = home();
    // Today: 10^8 runs spin for minutes and u64::MAX panics with "capacity overflow".
    usage_error(
        dir.path(),
        &["dags", "next-runs", "good", "-n", "18446744073709551615", "--now", NOW],
        "invalid value '18446744073709551615' for '--num <N>': 18446744073709551615 is not in 1..=1000",
    );
    usage_error(
        dir.path(),
        &["dags", "next-runs", "good", "-n", "1001", "--now", NOW],
        "invalid value '1001' for '--num <N>': 1001 is not in 1..=1000",
    );
    usage_error(
        dir.path(),
        &["dags", "next-runs", "good", "-n", "0", "--now", NOW],
        "invalid value '0' for '--num <N>': 0 is not in 1..=1000",
    );
    let o = rhaiflow(dir.path(), &["dags", "next-runs", "good", "-n", "1000", "--now", NOW, "--output", "json"]);
    assert_eq!(stderr(&o), "");
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1000);
}

#[test]
fn other_numbers_on_the_command_line_are_bounded() {
    let dir = home();
    usage_error(
        dir.path(),
        &["pools", "set", "big", "4294967295"],
        "invalid value '4294967295' for '<SLOTS>': 4294967295 is not in 0..=1000000",
    );
    usage_error(
        dir.path(),
        &["tasks", "logs", "good", "run", "a", "--try", "0"],
        "invalid value '0' for '--try <TRY_NUMBER>': 0 is not in 1..=100000",
    );
}

#[test]
fn a_far_now_is_refused_instead_of_overflowing_the_timetable() {
    let dir = home();
    // Today `dags next-runs` panics in schedule.rs adding a day to this.
    usage_error(
        dir.path(),
        &["dags", "next-runs", "good", "--now", "+262142-12-31T23:59:59Z"],
        "invalid value '+262142-12-31T23:59:59Z' for '--now <TIME>': not an RFC 3339 time: input contains invalid characters",
    );
}

#[test]
fn the_last_dates_the_date_arguments_accept_do_not_panic() {
    let dir = home();
    let runs: [&[&str]; 4] = [
        &["dags", "trigger", "good", "--logical-date", "9999-12-31T23:59:59Z"],
        &["dags", "test", "good", "9999-12-31T23:59:58Z"],
        &["dags", "backfill", "good", "-s", "9999-12-01", "-e", "9999-12-31T23:59:59Z"],
        &["tasks", "clear", "good", "-s", "0000-01-01", "-e", "9999-12-31"],
    ];
    for args in runs {
        let o = rhaiflow(dir.path(), args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    let o = rhaiflow(dir.path(), &["dags", "next-runs", "good", "--now", "9999-12-31T23:59:59Z"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_huge_bad_conf_is_refused_without_echoing_it() {
    let dir = home();
    let nested = "[".repeat(100_000);
    let o = rhaiflow(dir.path(), &["dags", "trigger", "good", "--conf", &nested]);
    assert_eq!(stderr(&o), "error: `--conf` is not JSON: recursion limit exceeded at line 1 column 128\n");
    assert_eq!(o.status.code(), Some(2));
    let secretish = format!("{{\"token\": \"s3cr3t{}\"", "x".repeat(50_000));
    let o = rhaiflow(dir.path(), &["dags", "trigger", "good", "--conf", &secretish]);
    assert_eq!(stderr(&o), "error: `--conf` is not JSON: EOF while parsing an object at line 1 column 50018\n");
    // A big good one is fine.
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(100_000));
    let o = rhaiflow(dir.path(), &["dags", "trigger", "good", "--conf", &big]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn arguments_that_are_not_utf8_are_usage_errors() {
    let dir = home();
    let odd = OsStr::from_bytes(b"go\xffod");
    let o = rhaiflow(dir.path(), &[OsStr::new("dags"), OsStr::new("show"), odd]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: invalid UTF-8 was detected in one or more arguments"), "{}", stderr(&o));
    let o = rhaiflow(
        dir.path(),
        &[OsStr::new("dags"), OsStr::new("trigger"), OsStr::new("good"), OsStr::new("--conf"), odd],
    );
    assert_eq!(stderr(&o), "error: `--conf` is not valid UTF-8\n");
    assert_eq!(o.status.code(), Some(2));
}

/// Runs `rhaiflow __panic --in PLACE`, waiting at most a minute (a hang is a failure, not a stall).
fn panic_in(place: &str) -> Output {
    let dir = home();
    let mut child = command(dir.path())
        .args(["__panic", "--in", place])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`rhaiflow __panic --in {place}` still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_panic_is_an_internal_error_with_exit_2() {
    for (place, message) in [
        ("main", "`rhaiflow __panic` on the main thread"),
        ("thread", "`rhaiflow __panic` on a rayon thread"),
        ("task", "`rhaiflow __panic` in a tokio task"),
    ] {
        let o = panic_in(place);
        let err = stderr(&o);
        let prefix = format!("rhaiflow: internal error (a bug): {message} at src/cli/crash.rs:");
        assert!(err.starts_with(&prefix), "{place}: {err}");
        assert_eq!(err.lines().count(), 1, "{place}: {err}");
        assert_eq!(o.status.code(), Some(2), "{place}: {err}");
    }
}

#[test]
fn the_panic_command_is_hidden() {
    let o = rhaiflow(Path::new("/"), &["--help"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("panic"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_as_sigpipe_would() {
    let dir = home();
    // The reader is gone before the process starts, so every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = command(dir.path())
        .args(["dags", "next-runs", "good", "-n", "1000", "--now", NOW])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "");
    assert_eq!(o.status.code(), Some(141));
}
