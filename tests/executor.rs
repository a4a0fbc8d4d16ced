//! The executor through the real binary as task supervisor: exit codes, output and last line,
//! timeouts that kill the whole group, gating, bounded output (split long lines, capped logs that
//! keep a line's head, the XCom's full size), the recorded outcome (an attribute of the log, or the
//! status file when it is big), and process tokens.

use rhaiflow::executor::{
    BashRun, Exit, group_alive, is_same_process, is_task_group, process_token, read_status, spawn_bash,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn run(dir: &Path, command: &str) -> BashRun {
    BashRun {
        command: command.into(),
        env: vec![("GREETING".into(), "hi".into())],
        replace_env: false,
        remove_env: Vec::new(),
        cwd: None,
        log_path: dir.join("attempt=1.log"),
        max_log_bytes: 1 << 20,
        max_xcom_bytes: 1 << 20,
        timeout: None,
        kill_grace: Duration::from_millis(200),
        supervisor: PathBuf::from(env!("CARGO_BIN_EXE_rhaiflow")),
        masks: Vec::new(),
    }
}

fn raw_log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("attempt=1.log")).unwrap()
}

/// The task's own lines: without their time stamps, and without the supervisor's last line.
fn log_of(dir: &Path) -> String {
    let raw = raw_log_of(dir);
    let mut lines: Vec<&str> = raw.lines().map(|l| l.split_once("] ").expect("every line is stamped").1).collect();
    assert!(lines.pop().is_some_and(|l| l.starts_with("[rhaiflow] the command ")), "{raw}");
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exit_codes_output_and_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        spawn_bash(run(dir.path(), "echo $GREETING; echo oops >&2; echo last; exit 3")).await.unwrap().wait().await;
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.last_line.as_deref(), Some("last"));
    let log = log_of(dir.path());
    assert!(log.contains("hi\n") && log.contains("oops\n") && log.contains("last\n"), "{log}");
    let raw = raw_log_of(dir.path());
    let stamp = regex::Regex::new(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000\] ").unwrap();
    assert!(raw.lines().all(|l| stamp.is_match(l)), "every line starts with Airflow's time stamp: {raw}");
    let end = raw.lines().last().unwrap();
    assert!(end.contains("] [rhaiflow] the command exited with code 3 after ") && end.ends_with(" s"), "{raw}");
    assert_eq!(read_status(&dir.path().join("attempt=1.log")), Some(out), "the supervisor recorded the outcome");
}

#[tokio::test]
async fn a_killed_command_is_reported_by_signal() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn_bash(run(dir.path(), "echo before; kill -9 $$")).await.unwrap().wait().await;
    assert_eq!(out.exit, Exit::Signal(9));
    assert_eq!(out.last_line.as_deref(), Some("before"));
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child.pid");
    let mut r = run(dir.path(), &format!("sleep 30 & echo $! > {}; wait", marker.display()));
    r.timeout = Some(Duration::from_millis(300));
    let bash = spawn_bash(r).await.unwrap();
    let pgid = bash.pid();
    let out = bash.wait().await;
    assert_eq!(out.exit, Exit::TimedOut);
    wait_for("the group to die", || !group_alive(pgid)).await;
}

#[tokio::test]
async fn output_that_is_not_utf8_is_logged_and_does_not_kill_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn_bash(run(dir.path(), "printf 'caf\\xe9\\n' >&2; for i in $(seq 1 2000); do echo line-$i; done"))
        .await
        .unwrap()
        .wait()
        .await;
    assert_eq!(out.exit, Exit::Code(0));
    let log = log_of(dir.path());
    assert!(log.contains("caf\u{fffd}\n") && log.contains("line-2000\n"), "{log}");
}

#[tokio::test]
async fn task_groups_are_recognised_even_after_exec_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "exec sleep 5");
    r.timeout = Some(Duration::from_secs(3));
    let bash = spawn_bash(r).await.unwrap();
    let pid = bash.pid();
    // The kernel finishes setting up a new program's argv a moment after `spawn` returns.
    wait_for("the supervisor's argv", || is_task_group(pid)).await;
    let token = process_token(pid).expect("a live process has a token");
    assert!(is_same_process(pid, Some(&token)));
    assert!(!is_same_process(std::process::id(), Some(&token)));
    assert!(!is_task_group(std::process::id()), "this test process is nobody's task");
    let mut bash = bash;
    bash.release().await;
    // The command replaced its shell with `sleep`; the group is still recognisably a task's.
    wait_for("`sleep` in the group", || group_has(pid, "sleep")).await;
    assert!(is_task_group(pid), "`exec` in the command must not hide the group");
    bash.wait().await;
    assert!(!is_same_process(pid, Some(&token)), "a finished process is not the same process");
}

/// Whether a process named `comm` is in process group `pgid`.
fn group_has(pgid: u32, comm: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
        let pgrp = stat[close + 1..].split_whitespace().nth(2);
        &stat[open + 1..close] == comm && pgrp == Some(pgid.to_string().as_str())
    })
}

#[tokio::test]
async fn an_aborted_gated_command_never_runs_and_leaves_no_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let bash = spawn_bash(run(dir.path(), &format!("touch {}", marker.display()))).await.unwrap();
    let pgid = bash.pid();
    bash.abort().await;
    assert!(!group_alive(pgid));
    assert!(!marker.exists(), "the gated command must not run");
}

#[tokio::test]
async fn logs_are_capped_and_keep_the_head_of_the_line_that_crosses_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "for i in $(seq 1 1000); do echo line-$i; done");
    r.max_log_bytes = 100;
    let out = spawn_bash(r).await.unwrap().wait().await;
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.last_line.as_deref(), Some("line-1000"), "output past the cap still counts for XCom");
    let raw = raw_log_of(dir.path());
    assert!(raw.len() < 300, "{} bytes", raw.len());
    let log = log_of(dir.path());
    assert!(log.ends_with("[rhaiflow] log truncated at 100 bytes\n"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "echo short; head -c 5000 /dev/zero | tr '\\0' x; echo");
    r.max_log_bytes = 1000;
    spawn_bash(r).await.unwrap().wait().await;
    let log = log_of(dir.path());
    // 1000 bytes: two stamps of 31 bytes, `short\n`, the head of the long line and its newline.
    assert!(
        log.starts_with(&format!("short\n{}\n[rhaiflow] log truncated", "x".repeat(1000 - 31 - 6 - 31 - 1))),
        "{log}"
    );
}

#[tokio::test]
async fn a_line_without_newline_is_split_and_the_xcom_reports_its_full_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "head -c 3000000 /dev/zero | tr '\\0' y");
    r.max_xcom_bytes = 1000;
    r.max_log_bytes = 10 << 20;
    let out = spawn_bash(r).await.unwrap().wait().await;
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.last_line_bytes, 3_000_000);
    assert_eq!(out.last_line.map(|l| l.len()), Some(1000), "only the head is kept");
    let log = log_of(dir.path());
    let lines: Vec<usize> = log.lines().map(str::len).collect();
    assert_eq!(lines.len(), 3_000_000 / (64 * 1024) + 1, "split at 64 KiB");
    assert!(lines.iter().all(|l| *l <= 64 * 1024));
    assert_eq!(lines.iter().sum::<usize>(), 3_000_000);
}

#[tokio::test]
async fn a_missing_cwd_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "true");
    r.cwd = Some(dir.path().join("nowhere"));
    let err = spawn_bash(r).await.err().expect("a missing cwd cannot start").to_string();
    assert!(err.contains("`cwd`") && err.contains("nowhere"), "{err}");
}

#[tokio::test]
async fn an_outcome_too_big_for_the_logs_attribute_goes_to_a_private_status_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let small = spawn_bash(run(dir.path(), "echo small")).await.unwrap().wait().await;
    assert!(!dir.path().join("attempt=1.status").exists(), "a small outcome needs no file");
    assert_eq!(read_status(&dir.path().join("attempt=1.log")), Some(small));

    let dir = tempfile::tempdir().unwrap();
    let out = spawn_bash(run(dir.path(), "head -c 5000 /dev/zero | tr '\\0' z; echo")).await.unwrap().wait().await;
    assert_eq!(out.last_line.as_ref().map(String::len), Some(5000));
    let file = dir.path().join("attempt=1.status");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(read_status(&dir.path().join("attempt=1.log")), Some(out));

    // The same try run again (`tasks test`): neither the old file nor the old attribute counts.
    let running = spawn_bash(run(dir.path(), "sleep 30")).await.unwrap();
    assert_eq!(read_status(&dir.path().join("attempt=1.log")), None, "an earlier run's outcome is not this run's");
    running.abort().await;
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ")
}

#[tokio::test]
async fn a_try_outlives_its_fork_server_killed_mid_run_and_a_new_server_takes_the_next() {
    // Its own withheld variable, so this test has a fork server of its own to kill.
    let withheld = vec!["RHAIFLOW_TEST_FORK_SERVER_KILLED".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("go");
    let mut r = run(dir.path(), &format!("while [ ! -e {} ]; do sleep 0.01; done; echo finished", marker.display()));
    r.remove_env = withheld.clone();
    let mut bash = spawn_bash(r).await.unwrap();
    let pid = bash.pid();
    let server = parent_of(pid);
    assert_ne!(server, std::process::id(), "the supervisor is forked by a fork server, not started by this process");
    assert!(cmdline(server).contains("__task-supervisor --fork-server"), "{}", cmdline(server));
    bash.release().await;
    wait_for("the command to start", || group_has(pid, "bash")).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::fs::write(&marker, "").unwrap();
    let out = bash.wait().await;
    assert_eq!(out.exit, Exit::Code(0), "the outcome the supervisor recorded, though its fork server died");
    assert_eq!(out.last_line.as_deref(), Some("finished"));

    let next = tempfile::tempdir().unwrap();
    let mut r = run(next.path(), "echo again");
    r.remove_env = withheld;
    let bash = spawn_bash(r).await.unwrap();
    let replacement = parent_of(bash.pid());
    assert_ne!(replacement, server, "a new fork server");
    assert_ne!(replacement, std::process::id());
    let out = bash.wait().await;
    assert_eq!((out.exit, out.last_line.as_deref()), (Exit::Code(0), Some("again")));
}

#[tokio::test]
async fn concurrent_tries_through_one_fork_server_each_get_their_own_outcome() {
    let dirs: Vec<_> = (0..40).map(|_| tempfile::tempdir().unwrap()).collect();
    let tries: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let r = run(dir.path(), &format!("sleep 0.0{}; echo try-{i}; exit {}", i % 7, i % 5));
            tokio::spawn(async move { spawn_bash(r).await.unwrap().wait().await })
        })
        .collect();
    for (i, t) in tries.into_iter().enumerate() {
        let out = t.await.unwrap();
        assert_eq!(out.exit, Exit::Code((i % 5) as i32), "try {i}");
        assert_eq!(out.last_line, Some(format!("try-{i}")), "try {i}");
    }
}

#[tokio::test]
async fn a_stopped_fork_server_is_replaced_and_the_try_still_runs() {
    let withheld = vec!["RHAIFLOW_TEST_FORK_SERVER_STOPPED".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "echo first");
    r.remove_env = withheld.clone();
    let bash = spawn_bash(r).await.unwrap();
    let server = parent_of(bash.pid());
    assert_eq!(bash.wait().await.last_line.as_deref(), Some("first"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let next = tempfile::tempdir().unwrap();
    let mut r = run(next.path(), "echo second");
    r.remove_env = withheld.clone();
    // The server does not answer: the try gets a supervisor of its own, after the server's timeout.
    let bash = spawn_bash(r).await.unwrap();
    assert_eq!(parent_of(bash.pid()), std::process::id(), "started by this process");
    assert_eq!(bash.wait().await.last_line.as_deref(), Some("second"));
    wait_for("the stuck server to be killed", || !std::path::Path::new(&format!("/proc/{server}")).exists()).await;
    let third = tempfile::tempdir().unwrap();
    let mut r = run(third.path(), "echo third");
    r.remove_env = withheld;
    let bash = spawn_bash(r).await.unwrap();
    let replacement = parent_of(bash.pid());
    assert!(replacement != server && replacement != std::process::id(), "a new fork server");
    assert_eq!(bash.wait().await.last_line.as_deref(), Some("third"));
}

#[tokio::test]
async fn a_gated_command_dropped_unreleased_never_runs_and_its_supervisor_ends() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let bash = spawn_bash(run(dir.path(), &format!("touch {}", marker.display()))).await.unwrap();
    let pid = bash.pid();
    let token = process_token(pid).expect("the supervisor is alive, waiting for its gate");
    drop(bash);
    wait_for("the supervisor to end", || !is_same_process(pid, Some(&token))).await;
    assert!(!marker.exists(), "the gated command must not run");
}

/// A stopped fork server whose request pipe is full must not block the runtime: tries wait out
/// the server's start timeout, then get supervisors of their own (checked under a watchdog, as a
/// blocked runtime would hang the test).
#[test]
fn a_stopped_fork_server_with_a_full_pipe_does_not_block_the_runtime() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcomes = rt.block_on(async {
            let withheld = vec!["RHAIFLOW_TEST_FORK_SERVER_FULL_PIPE".to_string()];
            let dir = tempfile::tempdir().unwrap();
            let mut r = run(dir.path(), "echo first");
            r.remove_env = withheld.clone();
            let bash = spawn_bash(r).await.unwrap();
            let server = parent_of(bash.pid());
            bash.wait().await;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), nix::sys::signal::Signal::SIGSTOP)
                .unwrap();
            // 40 requests of 4 KiB each: far more than a pipe holds.
            let pad = "#".repeat(4096);
            let dirs: Vec<_> = (0..40).map(|_| tempfile::tempdir().unwrap()).collect();
            let tries: Vec<_> = dirs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut r = run(d.path(), &format!("echo try-{i} # {pad}"));
                    r.remove_env = withheld.clone();
                    tokio::spawn(async move { spawn_bash(r).await.unwrap().wait().await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for t in tries {
                outcomes.push(t.await.unwrap());
            }
            outcomes
        });
        let _ = done_tx.send(outcomes);
    });
    let outcomes =
        done_rx.recv_timeout(Duration::from_secs(120)).expect("the runtime was blocked by a stopped fork server");
    for (i, out) in outcomes.into_iter().enumerate() {
        assert_eq!((out.exit, out.last_line), (Exit::Code(0), Some(format!("try-{i}"))), "try {i}");
    }
}
