//! Process ownership tried as a hostile user would: several runners on one database, kill -9 at
//! awkward moments, signals twice, a tiny heartbeat timeout. Each `#[ignore = "defect: …"]` test
//! reproduces a defect and fails today; the others pin behaviour that holds.
//!
//! Every task writes `start <pid>` / `end <pid>` lines to `trace` and checks, as it starts, that
//! no earlier try of the same task still runs (`overlap` in `trace` otherwise).

mod common;

use common::{Home, Running, process_alive, wait_until};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// A task command: refuses to overlap an earlier try of `task` in its run (writes `overlap`), records its pid,
/// waits for the file `go-<task>` (or `go`, or the home to vanish: no task outlives its test), then
/// writes `end`. Writes nothing on stdout, so it
/// outlives a killed owner (no SIGPIPE).
fn task_cmd(task: &str, trap_term: bool) -> String {
    let trap = if trap_term { "trap '' TERM; " } else { "" };
    let check = overlap_check(&format!("run-pids-{task}-$RHAIFLOW_CTX_RUN_ID"), task);
    format!(
        "{trap}{} \
         echo $$ >> $HOME_DIR/pids-{task}; echo $$ >> $HOME_DIR/run-pids-{task}-$RHAIFLOW_CTX_RUN_ID; echo start {task} $$ >> $HOME_DIR/trace; \
         while [ ! -e $HOME_DIR/go-{task} ] && [ ! -e $HOME_DIR/go ] && [ -d $HOME_DIR/dags ]; do sleep 0.02; done; echo end {task} $$ >> $HOME_DIR/trace",
        check
    )
}

/// Shell that writes `overlap LABEL PID` to `trace` when a pid listed in `pid_file` still runs
/// (zombies excluded: this machine's init reaps orphans a second late).
fn overlap_check(pid_file: &str, label: &str) -> String {
    format!(
        "for p in $(cat $HOME_DIR/{pid_file} 2>/dev/null); do if [ -e /proc/$p ] && ! grep -q zombie /proc/$p/status 2>/dev/null; then echo overlap {label} $p >> $HOME_DIR/trace; fi; done;"
    )
}

/// One DAG `dag_id` with a waiting task `work` (see `task_cmd`) and an `after` task downstream.
fn dag(dag_id: &str, schedule: &str, retries: u32, trap_term: bool) -> String {
    let cmd = task_cmd(dag_id, trap_term);
    format!(
        r#"let d = DAG("{dag_id}", #{{ schedule: {schedule}, start_date: datetime(2024, 1, 1), end_date: datetime(2024, 1, 5), catchup: false }});
let w = BashOperator(#{{ task_id: "work", retries: {retries}, retry_delay: seconds(0), bash_command: "{cmd}" }});
let a = BashOperator(#{{ task_id: "after", bash_command: "true" }});
w >> a;"#
    )
}

fn pids(home: &Home, task: &str) -> Vec<i32> {
    home.file(&format!("pids-{task}")).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn wait_for_pids(home: &Home, task: &str, n: usize) -> Vec<i32> {
    wait_until(&format!("{n} tries of {task} started"), || Some(pids(home, task)).filter(|p| p.len() >= n))
}

fn go(home: &Home, task: &str) {
    std::fs::write(home.path().join(format!("go-{task}")), "").unwrap();
}

fn wait_for_scheduler(home: &Home) {
    wait_until("the scheduler to start", || home.path().join("rhaiflow.sock").exists().then_some(()));
}

fn config(home: &Home, text: &str) {
    std::fs::write(home.path().join("rhaiflow.toml"), text).unwrap();
}

/// Polls `f` every 20 ms for up to `secs`; `None` on timeout (for tests that expect a state the
/// defect never reaches, so the failure names the state seen instead of a bare timeout).
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The invariant every scenario ends with: no try overlapped an earlier try of its task.
fn assert_no_overlap(home: &Home) {
    let trace = home.file("trace");
    assert!(!trace.contains("overlap"), "two tries of one task ran at once:\n{trace}");
}

/// `(state, owner)` of one task instance, straight from the store.
fn ti(home: &Home, dag_id: &str, task_id: &str) -> Vec<(String, String, Option<String>)> {
    let db = home.db();
    let mut stmt = db
        .prepare("SELECT run_id, state, owner FROM task_instance WHERE dag_id = ?1 AND task_id = ?2 ORDER BY run_id")
        .unwrap();
    stmt.query_map([dag_id, task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn run_states(home: &Home, dag_id: &str) -> Vec<(String, String)> {
    home.runs(dag_id)
        .iter()
        .map(|r| (r["run_id"].as_str().unwrap_or("").to_string(), r["state"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn spawn_scheduler(home: &Home) -> Running {
    let s = home.spawn(&["scheduler"]);
    wait_for_scheduler(home);
    s
}

// ---- a try's real outcome -----------------------------------------------------------------------

#[test]
fn a_try_that_succeeds_while_its_scheduler_is_dead_keeps_its_success() {
    let home = Home::new(&[("fin.rhai", &dag("fin", "()", 0, false))]);
    let mut scheduler = spawn_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "fin", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, "fin", 1)[0];
    scheduler.kill_9();
    go(&home, "fin");
    wait_until("the orphaned try to end on its own", || (!process_alive(pid)).then_some(()));
    assert!(home.file("trace").contains(&format!("end fin {pid}")), "{}", home.file("trace"));
    let _again = spawn_scheduler(&home);
    let state = wait_until("the orphaned try to be taken over", || {
        ti(&home, "fin", "work").first().map(|t| t.1.clone()).filter(|s| s != "running")
    });
    let log = std::fs::read_to_string(
        home.path().join("logs/dag_id=fin/run_id=manual__2024-01-02T00:00:00+00:00/task_id=work/attempt=1.log"),
    )
    .unwrap_or_default();
    assert_eq!(state, "success", "the try exited 0 while its owner was dead; log:\n{log}");
    assert_no_overlap(&home);
}

// ---- runs a dead `dags test` / refused backfill leave ---------------------------------------------

#[test]
fn a_run_of_a_killed_dags_test_does_not_stay_running_beside_a_scheduler() {
    let home = Home::new(&[("kt.rhai", &dag("kt", "()", 0, false))]);
    let _scheduler = spawn_scheduler(&home);
    let mut test = home.spawn(&["dags", "test", "kt", "2024-01-02"]);
    let pid = wait_for_pids(&home, "kt", 1)[0];
    test.kill_9();
    // The scheduler takes the orphaned try over (kills it: it fails) …
    wait_until("the scheduler to take over the orphaned try", || {
        (!process_alive(pid) && ti(&home, "kt", "work").first().is_some_and(|t| t.1 == "failed")).then_some(())
    });
    // … and then the run should end (`after` is upstream_failed, the run failed), not stay running.
    let ended =
        wait_for(30, || run_states(&home, "kt").first().filter(|r| r.1 != "running" && r.1 != "queued").cloned());
    assert!(ended.is_some(), "run stuck: {:?}, after = {:?}", run_states(&home, "kt"), ti(&home, "kt", "after"));
}

#[test]
fn a_refused_backfill_creates_no_runs() {
    let home = Home::new(&[("bf.rhai", &dag("bf", "\"@daily\"", 0, false))]);
    let mut first = home.spawn(&["dags", "backfill", "bf", "--start-date", "2024-01-02", "--end-date", "2024-01-02"]);
    wait_for_pids(&home, "bf", 1);
    let o = home.run(&["dags", "backfill", "bf", "--start-date", "2024-01-01", "--end-date", "2024-01-02"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the second backfill must refuse: {err}");
    assert!(err.contains("is being run by backfill"), "{err}");
    let runs = run_states(&home, "bf");
    go(&home, "bf");
    let (code, out, e) = first.finish();
    assert_eq!(code, Some(0), "{out}{e}");
    assert_eq!(runs.len(), 1, "the refused backfill left runs behind: {runs:?}");
}

#[test]
fn a_second_backfill_of_the_same_range_refuses_while_the_first_runs() {
    let home = Home::new(&[("bf.rhai", &dag("bf", "\"@daily\"", 0, false))]);
    let args = ["dags", "backfill", "bf", "--start-date", "2024-01-02", "--end-date", "2024-01-03"];
    let mut first = home.spawn(&args);
    let started = wait_for_pids(&home, "bf", 1);
    let o = home.run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a refusal is an error: {err}");
    assert!(err.contains("is being run by backfill (pid"), "{err}");
    assert!(err.contains("wait for it or stop it first"), "{err}");
    assert!(process_alive(started[0]), "the refused backfill must not touch the first one's try");
    go(&home, "bf");
    let (code, out, e) = first.finish();
    assert_eq!(code, Some(0), "{out}{e}");
    assert!(out.contains("2 run(s) succeeded, 0 failed"), "{out}");
    assert_eq!(pids(&home, "bf").len(), 2, "one try per run");
    assert_no_overlap(&home);
}

#[test]
fn dags_test_on_a_date_the_scheduler_is_running_refuses_and_leaves_its_try_alone() {
    let home = Home::new(&[("st.rhai", &dag("st", "()", 0, false))]);
    let _scheduler = spawn_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "st", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, "st", 1)[0];
    let o = home.run(&["dags", "test", "st", "2024-01-02"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a refusal is an error: {err}");
    assert!(err.contains("is being run by scheduler (pid"), "{err}");
    assert!(process_alive(pid), "`dags test` killed the scheduler's try");
    go(&home, "st");
    wait_until("the scheduler's run to succeed", || {
        run_states(&home, "st").first().filter(|r| r.1 == "success").cloned()
    });
    assert_eq!(pids(&home, "st").len(), 1);
    assert_no_overlap(&home);
}

// ---- signals and shutdown ------------------------------------------------------------------------

/// A long-running command whose stderr goes to `<name>.err` in the home, readable while it runs.
fn spawn_logged(home: &Home, name: &str, args: &[&str]) -> Running {
    let err = std::fs::File::create(home.path().join(format!("{name}.err"))).unwrap();
    let out = std::fs::File::create(home.path().join(format!("{name}.out"))).unwrap();
    let child = home.command(args).stdout(out).stderr(err).spawn().expect("rhaiflow starts");
    Running(Some(child))
}

/// Waits up to `secs` for the process to exit; its exit code, or `None` if it still runs.
fn exits_within(running: &mut Running, secs: u64) -> Option<Option<i32>> {
    let child = running.0.as_mut()?;
    wait_for(secs, || child.try_wait().ok().flatten().map(|s| s.code()))
}

#[test]
fn a_task_that_ignores_sigterm_is_killed_after_the_shutdown_grace_and_recorded() {
    let home = Home::new(&[("ig.rhai", &dag("ig", "()", 0, true))]);
    config(&home, "[scheduler]\nshutdown_grace = 0.5\nkill_grace = 0.5\n");
    let mut scheduler = spawn_logged(&home, "sched", &["scheduler"]);
    wait_for_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "ig", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, "ig", 1)[0];
    scheduler.signal(Signal::SIGTERM);
    let code = exits_within(&mut scheduler, 60).expect("the scheduler exits after its graces");
    let err = home.file("sched.err");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("grace period over; terminating 1 running task(s)"), "{err}");
    assert!(!process_alive(pid), "the task that ignored SIGTERM got SIGKILL");
    assert_eq!(ti(&home, "ig", "work")[0].1, "failed", "its outcome is recorded");
    let stopped: Option<String> =
        home.db().query_row("SELECT stopped_at FROM runner WHERE kind = 'scheduler'", [], |r| r.get(0)).unwrap();
    assert!(stopped.is_some(), "the scheduler marked itself stopped");
}

#[test]
fn a_second_sigint_during_the_shutdown_grace_stops_the_scheduler_now() {
    let home = Home::new(&[("two.rhai", &dag("two", "()", 0, false))]);
    config(&home, "[scheduler]\nshutdown_grace = 3600\nkill_grace = 1\n");
    let mut scheduler = spawn_logged(&home, "sched", &["scheduler"]);
    wait_for_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "two", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, "two", 1)[0];
    scheduler.signal(Signal::SIGINT);
    wait_until("the scheduler to begin its shutdown", || {
        home.file("sched.err").contains("shutting down").then_some(())
    });
    scheduler.signal(Signal::SIGINT);
    let code = exits_within(&mut scheduler, 30);
    let err = home.file("sched.err");
    go(&home, "two");
    assert!(
        code.is_some(),
        "a second Ctrl-C must stop the scheduler now (terminating its tasks); it waits out its 3600 s grace:\n{err}"
    );
    assert!(!process_alive(pid), "and its task is terminated, not orphaned");
}

#[test]
fn kill_9_during_the_shutdown_grace_then_restart_strands_nothing() {
    let home = Home::new(&[("kg.rhai", &dag("kg", "()", 0, true))]);
    config(&home, "[scheduler]\nshutdown_grace = 3600\nkill_grace = 0.5\n");
    let mut scheduler = spawn_logged(&home, "sched", &["scheduler"]);
    wait_for_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "kg", "--logical-date", "2024-01-02"]).status.success());
    let pid = wait_for_pids(&home, "kg", 1)[0];
    scheduler.signal(Signal::SIGTERM);
    wait_until("the scheduler to begin its shutdown", || {
        home.file("sched.err").contains("shutting down").then_some(())
    });
    scheduler.kill_9();
    assert!(process_alive(pid), "the task outlives its killed owner");
    let _again = spawn_scheduler(&home);
    wait_until("the orphan to be taken over", || ti(&home, "kg", "work").first().filter(|t| t.1 == "failed").cloned());
    assert!(!process_alive(pid), "the successor killed the orphan (SIGKILL after kill_grace: it ignores SIGTERM)");
    wait_until("the run to end", || run_states(&home, "kg").first().filter(|r| r.1 == "failed").cloned());
    assert_no_overlap(&home);
}

// ---- two schedulers -----------------------------------------------------------------------------

#[test]
fn a_second_scheduler_on_the_same_database_refuses_to_start() {
    let home = Home::new(&[("one.rhai", &dag("one", "()", 0, false))]);
    let _first = spawn_scheduler(&home);
    let o = home.run(&["scheduler"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("another scheduler is running on this database"), "{err}");
}

#[test]
fn a_second_scheduler_through_a_symlinked_database_path_refuses_to_start() {
    let home = Home::new(&[("one.rhai", &dag("one", "()", 0, false))]);
    let _first = spawn_scheduler(&home);
    std::os::unix::fs::symlink(home.path().join("rhaiflow.db"), home.path().join("alias.db")).unwrap();
    let url = format!("sqlite://{}", home.path().join("alias.db").display());
    let child = home
        .command(&["scheduler"])
        .env("RHAIFLOW__DATABASE__URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut second = Running(Some(child));
    let code = exits_within(&mut second, 20);
    let runners: i64 = home
        .db()
        .query_row("SELECT COUNT(*) FROM runner WHERE kind = 'scheduler' AND stopped_at IS NULL", [], |r| r.get(0))
        .unwrap();
    assert!(code.is_some(), "a second scheduler runs on the same database ({runners} live scheduler runners)");
}

// ---- a tiny heartbeat timeout ---------------------------------------------------------------------

fn scheduler_runner(home: &Home) -> (String, chrono::DateTime<chrono::Utc>) {
    let (id, at): (String, String) = home
        .db()
        .query_row(
            "SELECT runner_id, heartbeat_at FROM runner WHERE kind = 'scheduler' AND stopped_at IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (id, chrono::DateTime::parse_from_rfc3339(&at).unwrap().with_timezone(&chrono::Utc))
}

#[test]
fn a_scheduler_busy_killing_an_orphan_still_owns_its_running_try() {
    let home = Home::new(&[("live.rhai", &dag("live", "()", 0, false)), ("orph.rhai", &dag("orph", "()", 0, true))]);
    config(&home, "[scheduler]\ntask_heartbeat_timeout = 0.5\nkill_grace = 60\n");
    let _scheduler = spawn_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "live", "--logical-date", "2024-01-02"]).status.success());
    let live = wait_for_pids(&home, "live", 1)[0];
    // A `dags test` whose try ignores SIGTERM dies: the scheduler takes the orphan over and
    // waits up to `kill_grace` for it to die.
    let mut test = home.spawn(&["dags", "test", "orph", "2024-01-02"]);
    wait_for_pids(&home, "orph", 1);
    test.kill_9();
    let (sched_id, _) = scheduler_runner(&home);
    wait_until("the scheduler to take the orphan over", || {
        ti(&home, "orph", "work").first().filter(|t| t.2.as_deref() == Some(sched_id.as_str())).cloned()
    });
    // The scheduler is alive and well, only busy; its heartbeat has stopped meanwhile.
    let stale = wait_for(20, || {
        let (_, at) = scheduler_runner(&home);
        (chrono::Utc::now() - at > chrono::TimeDelta::seconds(2)).then_some(())
    });
    let mut second = spawn_logged(&home, "test-live", &["dags", "test", "live", "2024-01-02"]);
    let refused = wait_until("the `dags test` of the live run to refuse or kill", || {
        if let Some(child) = second.0.as_mut()
            && child.try_wait().ok().flatten().is_some()
        {
            return Some(true);
        }
        (!process_alive(live)).then_some(false)
    });
    let err = home.file("test-live.err");
    let out = home.file("test-live.out");
    std::fs::write(home.path().join("go"), "").unwrap();
    assert!(refused, "`dags test` killed the live scheduler's running try (pid {live}):\n{out}{err}");
    assert!(stale.is_none(), "the live scheduler stopped heartbeating while it waited for the orphan to die");
    assert!(err.contains("is being run by scheduler"), "{out}{err}");
}

// ---- output while the owner dies ------------------------------------------------------------------

#[test]
fn a_try_writing_lots_of_output_when_its_scheduler_dies_is_retried_once_and_never_overlaps() {
    let noisy = r#"let d = DAG("noisy", #{ schedule: (), start_date: datetime(2024, 1, 1) });
let t = BashOperator(#{ task_id: "work", retries: 1, retry_delay: seconds(0),
    bash_command: "OVERLAP_CHECK echo $$ >> $HOME_DIR/pids-noisy; echo start noisy $$ >> $HOME_DIR/trace; i=0; while [ ! -e $HOME_DIR/go ] && [ -d $HOME_DIR/dags ]; do i=$((i+1)); echo line $i of a task that talks a lot; echo err $i >&2; done; echo end noisy $$ >> $HOME_DIR/trace" });"#;
    let noisy = noisy.replace("OVERLAP_CHECK", &overlap_check("pids-noisy", "noisy"));
    let home = Home::new(&[("noisy.rhai", &noisy)]);
    let mut scheduler = spawn_scheduler(&home);
    assert!(home.run(&["dags", "trigger", "noisy", "--logical-date", "2024-01-02"]).status.success());
    let first = wait_for_pids(&home, "noisy", 1)[0];
    let log = home.path().join("logs/dag_id=noisy/run_id=manual__2024-01-02T00:00:00+00:00/task_id=work/attempt=1.log");
    wait_until("the task to talk", || (std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > 100_000).then_some(()));
    scheduler.kill_9();
    let _again = spawn_scheduler(&home);
    let second = wait_for_pids(&home, "noisy", 2)[1];
    assert!(!process_alive(first), "try 1 is gone before try 2 runs");
    assert!(process_alive(second) || home.file("trace").contains(&format!("end noisy {second}")));
    std::fs::write(home.path().join("go"), "").unwrap();
    wait_until("the run to succeed", || run_states(&home, "noisy").first().filter(|r| r.1 == "success").cloned());
    assert_eq!(pids(&home, "noisy").len(), 2, "one retry, no more");
    assert_no_overlap(&home);
}

// ---- everything at once, killed at awkward moments ------------------------------------------------

/// A tiny deterministic generator, so a failing round can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A DAG of three short tasks (each a trace line pair, overlap-checked) for the chaos rounds.
fn short_dag(dag_id: &str) -> String {
    let cmd = |t: &str| {
        format!(
            "{} echo $$ >> $HOME_DIR/pids-{dag_id}-{t}-$RHAIFLOW_CTX_RUN_ID; echo start $$ {dag_id} {t} $RHAIFLOW_CTX_RUN_ID try $RHAIFLOW_CTX_TRY_NUMBER >> $HOME_DIR/trace; sleep 0.3; echo end $$ >> $HOME_DIR/trace",
            overlap_check(&format!("pids-{dag_id}-{t}-$RHAIFLOW_CTX_RUN_ID"), &format!("{dag_id} {t}"))
        )
    };
    format!(
        r#"let d = DAG("{dag_id}", #{{ schedule: "@daily", start_date: datetime(2024, 1, 1), end_date: datetime(2024, 1, 4), catchup: true }});
let a = BashOperator(#{{ task_id: "a", retries: 2, retry_delay: seconds(0), bash_command: "{}" }});
let b = BashOperator(#{{ task_id: "b", retries: 2, retry_delay: seconds(0), bash_command: "{}" }});
let c = BashOperator(#{{ task_id: "c", retries: 2, retry_delay: seconds(0), bash_command: "{}" }});
a >> [b, c];"#,
        cmd("a"),
        cmd("b"),
        cmd("c")
    )
}

/// Task instances still claimed (`queued`/`running`) in the store.
fn claimed(home: &Home) -> Vec<(String, String, String, String)> {
    let db = home.db();
    let mut stmt = db
        .prepare("SELECT dag_id, run_id, task_id, state FROM task_instance WHERE state IN ('queued', 'running')")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

#[test]
fn scheduler_test_and_backfill_on_one_database_killed_at_random_never_overlap_or_strand_a_try() {
    let home = Home::new(&[("c1.rhai", &short_dag("c1")), ("c2.rhai", &short_dag("c2"))]);
    config(&home, "[scheduler]\nkill_grace = 0.5\nshutdown_grace = 1\n");
    let mut rng = Lcg(0x5eed);
    for round in 0..4 {
        let mut procs = [
            home.spawn(&["scheduler"]),
            home.spawn(&["dags", "backfill", "c1", "--start-date", "2024-01-01", "--end-date", "2024-01-04"]),
            home.spawn(&["dags", "test", "c2", "2024-01-03"]),
            home.spawn(&["dags", "backfill", "c2", "--start-date", "2024-01-01", "--end-date", "2024-01-04"]),
        ];
        // Let some tries start, then kill -9 a random subset at a random moment.
        let starts = home.file("trace").matches("start").count();
        let target = starts + 1 + rng.next(6) as usize;
        let _ = wait_for(20, || (home.file("trace").matches("start").count() >= target).then_some(()));
        for p in procs.iter_mut() {
            if rng.next(2) == 0 {
                p.kill_9();
            } else {
                p.signal(Signal::SIGTERM);
            }
        }
        for (i, p) in procs.iter_mut().enumerate() {
            if p.0.is_some() {
                let (code, out, err) = p.finish();
                if std::env::var_os("CHAOS_DEBUG").is_some() {
                    eprintln!("round {round} proc {i}: {code:?}\n{out}{err}");
                }
            }
        }
        if let Some(keep) = std::env::var_os("CHAOS_KEEP")
            && home.file("trace").contains("overlap")
        {
            let _ = std::process::Command::new("cp").arg("-r").arg(home.path()).arg(&keep).status();
        }
        assert_no_overlap(&home);
    }
    // Every process has stopped; one scheduler restarted takes over what they left, and backfills
    // run again resume theirs.
    let _scheduler = spawn_scheduler(&home);
    for dag_id in ["c1", "c2"] {
        let o = home.run(&["dags", "backfill", dag_id, "--start-date", "2024-01-01", "--end-date", "2024-01-04"]);
        assert!(o.status.code().is_some(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let left = wait_for(60, || Some(claimed(&home)).filter(|c| c.is_empty()));
    assert!(left.is_some(), "claimed for ever: {:?}", claimed(&home));
    let dup: i64 = home
        .db()
        .query_row(
            "SELECT COUNT(*) FROM (SELECT dag_id, logical_date FROM dag_run GROUP BY 1, 2 HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dup, 0, "a logical date got two runs");
    assert_no_overlap(&home);
    if std::env::var_os("CHAOS_DEBUG").is_some() {
        let states: Vec<_> = ["c1", "c2"].iter().flat_map(|d| run_states(&home, d)).collect();
        panic!("trace:\n{}\nruns: {states:?}", home.file("trace"));
    }
}

#[test]
fn a_live_backfill_keeps_its_tries_beside_a_scheduler_with_a_short_heartbeat_timeout() {
    let cmd = format!(
        "{} echo $$ >> $HOME_DIR/pids-many; sleep 0.2",
        overlap_check("run-pids-many-$RHAIFLOW_CTX_RUN_ID", "many")
    );
    let many = format!(
        r#"let d = DAG("many", #{{ schedule: "@daily", start_date: datetime(2023, 1, 1), catchup: false, max_active_runs: 4 }});
let t = BashOperator(#{{ task_id: "work", bash_command: "{cmd}" }});"#
    );
    let home = Home::new(&[("many.rhai", &many)]);
    config(&home, "[scheduler]\ntask_heartbeat_timeout = 0.5\n");
    let _scheduler = spawn_scheduler(&home);
    let o = home.run(&["dags", "backfill", "many", "--start-date", "2023-01-01", "--end-date", "2023-04-30"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let taken: i64 = home
        .db()
        .query_row("SELECT COUNT(*) FROM task_instance WHERE dag_id = 'many' AND state <> 'success'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        taken,
        0,
        "tries of the live backfill were taken over:\n{}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(out.contains("120 run(s) succeeded, 0 failed"), "{out}");
    assert_no_overlap(&home);
}

#[test]
fn a_backfill_interrupted_by_ctrl_c_resumes_its_interrupted_try() {
    let home = Home::new(&[("ci.rhai", &dag("ci", "\"@daily\"", 0, false))]);
    let args = ["dags", "backfill", "ci", "--start-date", "2024-01-02", "--end-date", "2024-01-02"];
    let mut first = home.spawn(&args);
    let pid = wait_for_pids(&home, "ci", 1)[0];
    first.signal(Signal::SIGINT);
    let (code, out, err) = first.finish();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("run it again to resume"), "{out}");
    assert!(!process_alive(pid));
    go(&home, "ci");
    let o = home.run(&args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("resuming backfill__2024-01-02"), "{out}");
    assert_eq!(pids(&home, "ci").len(), 2, "the interrupted try is run again:\n{out}");
    assert!(out.contains("1 run(s) succeeded, 0 failed"), "{out}");
}

/// (`claim_run` checks the owner and sets it in two transactions: a narrow race not seen here.)
#[test]
fn two_backfills_resuming_one_range_at_once_one_refuses() {
    let home = Home::new(&[("rr.rhai", &dag("rr", "\"@daily\"", 2, false))]);
    let args = ["dags", "backfill", "rr", "--start-date", "2024-01-01", "--end-date", "2024-01-04"];
    let mut first = home.spawn(&args);
    wait_for_pids(&home, "rr", 4);
    first.kill_9();
    let mut both = [home.spawn(&args), home.spawn(&args)];
    go(&home, "rr");
    let results: Vec<(Option<i32>, String, String)> = both.iter_mut().map(|b| b.finish()).collect();
    let resumed = results.iter().filter(|r| r.1.contains("resuming")).count();
    let refused = results.iter().filter(|r| r.2.contains("is being run by")).count();
    assert_no_overlap(&home);
    assert_eq!((resumed, refused), (1, 1), "one resumes, the other refuses: {results:#?}");
    assert_eq!(run_states(&home, "rr").iter().filter(|r| r.1 == "success").count(), 4);
}
