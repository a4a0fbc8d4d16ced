//! Scale benchmark: the scheduler with 10,000 DAGs, as users run it (the release binary, a real
//! SQLite file, real `bash` processes), timed from the store's own timestamps.
//!
//! Rows (select by name: `cargo bench --bench scale -- once cron2 memory`; no name runs those three):
//! - `once`: 10,000 `@once` DAGs of one `true` task: scheduler start → every run succeeded.
//! - `cron`: 10,000 DAGs `* * * * *` (catchup false, one `true` task) for 5 minutes: task start −
//!   due time (the run's data interval end), p50/p99 per minute. `cron2` is the same for 2 minutes.
//! - `memory`: the scheduler's resident memory with 10,000 10-task DAGs loaded (idle).
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends rows to `$BENCH_TABLE_ROWS` when set.
//! `RHAIFLOW_SCALE_DAGS` changes the number of DAGs (for a quick try with a debug binary);
//! `RHAIFLOW_SCALE_LIMIT_SECS` how long the `once` row waits (default 900 s).

use chrono::{DateTime, Utc};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Home {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Home {
    fn new(bin: &Path, parallelism: u32, files: impl Iterator<Item = (String, String)>) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(
            dir.path().join("rhaiflow.toml"),
            format!("[core]\nparallelism = {parallelism}\ndags_are_paused_at_creation = false\n"),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("dags").join(name), text).unwrap();
        }
        Home { dir, bin: bin.to_path_buf() }
    }

    /// Starts the scheduler; returns it and when it was spawned.
    fn scheduler(&self) -> (Scheduler, DateTime<Utc>) {
        let started = Utc::now();
        let child = Command::new(&self.bin)
            .arg("scheduler")
            .current_dir(self.dir.path())
            .env_remove("RHAIFLOW_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (Scheduler(child), started)
    }

    fn wait_for_socket(&self, sched: &mut Scheduler) {
        let sock = self.dir.path().join("rhaiflow.sock");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !sock.exists() {
            assert!(sched.0.try_wait().unwrap().is_none(), "the scheduler exited");
            assert!(Instant::now() < deadline, "scheduler did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A read-only connection to the scheduler's database, once it exists.
    fn db(&self) -> rusqlite::Connection {
        let path = self.dir.path().join("rhaiflow.db");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no database");
            std::thread::sleep(Duration::from_millis(20));
        }
        let c = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c
    }
}

/// The scheduler process; stopped with SIGTERM when dropped, so a failed benchmark leaves none behind.
struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn dags_count() -> usize {
    std::env::var("RHAIFLOW_SCALE_DAGS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// How long the `once` row waits for every run (`RHAIFLOW_SCALE_LIMIT_SECS`, default 900).
fn limit_secs() -> u64 {
    std::env::var("RHAIFLOW_SCALE_LIMIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(900)
}

fn one_task_dags(n: usize, schedule: &'static str) -> impl Iterator<Item = (String, String)> {
    (0..n).map(move |i| {
        (
            format!("d{i:05}.rhai"),
            format!(
                "let d = DAG(\"d{i:05}\", #{{ start_date: datetime(2024, 1, 1), schedule: \"{schedule}\", catchup: false }});\n\
                 let a = BashOperator(#{{ task_id: \"a\", bash_command: \"true\" }});\n"
            ),
        )
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

struct Row {
    name: String,
    value: String,
    target: &'static str,
    airflow: &'static str,
}

/// `@once` DAGs: scheduler spawn → the last run's end, from the store.
fn once(bin: &Path, n: usize) -> Row {
    let home = Home::new(bin, 64, one_task_dags(n, "@once"));
    let (mut sched, started) = home.scheduler();
    home.wait_for_socket(&mut sched);
    let db = home.db();
    let limit = limit_secs();
    let deadline = Instant::now() + Duration::from_secs(limit);
    let finished = loop {
        let (done, failed): (i64, i64) = db
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 'success'), COUNT(*) FILTER (WHERE state = 'failed') FROM dag_run",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(failed, 0, "a run failed");
        if done as usize == n {
            break true;
        }
        if Instant::now() > deadline {
            eprintln!("once: {done} of {n} runs succeeded within {limit} s");
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let last: DateTime<Utc> = db.query_row("SELECT MAX(end_date) FROM dag_run", [], |r| r.get(0)).unwrap();
    drop(sched);
    let secs = (last - started).num_milliseconds() as f64 / 1000.0;
    Row {
        name: format!("{n} `@once` DAGs of one `true` task: scheduler start → all succeeded (parallelism 64)"),
        value: if finished { format!("{secs:.1} s") } else { format!("not done in {limit} s") },
        target: "≤ 25 s",
        airflow: "",
    }
}

/// `* * * * *` DAGs for `minutes` whole minutes: task start − due time, per due minute.
fn cron(bin: &Path, n: usize, minutes: i64) -> Row {
    let home = Home::new(bin, 64, one_task_dags(n, "* * * * *"));
    let (mut sched, started) = home.scheduler();
    home.wait_for_socket(&mut sched);
    // Runs due at whole minutes after the scheduler started; the catch-up of the interval that was
    // already due at start is not measured.
    let first_due = chrono::DurationRound::duration_trunc(started, chrono::TimeDelta::minutes(1)).unwrap()
        + chrono::TimeDelta::minutes(1);
    let last_due = first_due + chrono::TimeDelta::minutes(minutes - 1);
    let db = home.db();
    let stop_at = last_due + chrono::TimeDelta::seconds(90);
    loop {
        let started_last: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM task_instance ti JOIN dag_run r USING (dag_id, run_id)
                 WHERE r.data_interval_end = ?1 AND ti.start_date IS NOT NULL",
                [last_due],
                |r| r.get(0),
            )
            .unwrap();
        if started_last as usize == n || Utc::now() > stop_at {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let rss = rss_mib(sched.0.id());
    drop(sched);
    let mut per_minute = Vec::new();
    let mut p99s = Vec::new();
    let mut all = Vec::new();
    let mut stmt = db
        .prepare(
            "SELECT ti.start_date FROM task_instance ti JOIN dag_run r USING (dag_id, run_id)
             WHERE r.data_interval_end = ?1 AND ti.start_date IS NOT NULL",
        )
        .unwrap();
    for m in 0..minutes {
        let due = first_due + chrono::TimeDelta::minutes(m);
        let mut lags: Vec<f64> = stmt
            .query_map([due], |r| r.get::<_, DateTime<Utc>>(0))
            .unwrap()
            .map(|s| (s.unwrap() - due).num_milliseconds() as f64 / 1000.0)
            .collect();
        lags.sort_by(f64::total_cmp);
        per_minute.push(format!(
            "{}: {}/{n} started, p50 {:.1} s, p99 {:.1} s, last {:.1} s",
            due.format("%H:%M"),
            lags.len(),
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            percentile(&lags, 1.0)
        ));
        // A task that never started counts as late as the measurement went on.
        let missing = n - lags.len();
        p99s.push(if missing > n / 100 { "∞".to_string() } else { format!("{:.1}", percentile(&lags, 0.99)) });
        all.extend(lags);
        all.extend(std::iter::repeat_n((stop_at - due).num_seconds() as f64, missing));
    }
    all.sort_by(f64::total_cmp);
    eprintln!("cron ({minutes} min, scheduler RSS at the end {rss:.0} MiB):\n  {}", per_minute.join("\n  "));
    Row {
        name: format!(
            "{n} DAGs `* * * * *` (one `true` task, catchup false) for {minutes} min: task start − due time, p50 / p99 (p99 of each minute)"
        ),
        value: format!("{:.1} s / {:.1} s ({} s)", percentile(&all, 0.5), percentile(&all, 0.99), p99s.join(", ")),
        target: "p99 ≤ 20 s, no growing backlog",
        airflow: "",
    }
}

/// Resident memory of an idle scheduler with `n` 10-task DAGs loaded.
fn memory(bin: &Path, n: usize) -> Row {
    let files = (0..n).map(|i| {
        let mut s = format!("let dag = DAG(\"d{i:05}\", #{{ start_date: datetime(2024, 1, 1), schedule: () }});\n");
        for t in 0..10 {
            s.push_str(&format!("let t{t} = BashOperator(#{{ task_id: \"t{t}\", bash_command: \"echo {t}\" }});\n"));
            if t > 0 {
                s.push_str(&format!("t{} >> t{t};\n", t - 1));
            }
        }
        (format!("d{i:05}.rhai"), s)
    });
    let home = Home::new(bin, 64, files);
    let (mut sched, _) = home.scheduler();
    home.wait_for_socket(&mut sched);
    // The socket is bound after loading; give the first pass time to finish.
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_mib(sched.0.id());
    drop(sched);
    Row {
        name: format!("scheduler resident memory, {n} 10-task DAGs loaded (idle)"),
        value: format!("{rss:.1} MiB"),
        target: "≤ 100 MiB",
        airflow: "",
    }
}

fn main() {
    let bin = PathBuf::from(std::env::var("RHAIFLOW_BIN").unwrap_or_else(|_| "target/release/rhaiflow".into()));
    // Absolute: the benchmark runs the binary from temporary homes.
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    assert!(bin.exists(), "no binary at {} (run scripts/bench)", bin.display());
    let mut names: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if names.is_empty() {
        names = vec!["once".into(), "cron2".into(), "memory".into()];
    }
    let n = dags_count();
    let mut rows = Vec::new();
    for name in &names {
        let row = match name.as_str() {
            "once" => once(&bin, n),
            "cron" => cron(&bin, n, 5),
            "cron2" => cron(&bin, n, 2),
            "memory" => memory(&bin, n),
            other => panic!("unknown row `{other}`: use once, cron, cron2 or memory"),
        };
        eprintln!("| {} | {} | {} | {} |", row.name, row.value, row.target, row.airflow);
        rows.push(row);
    }
    let table: String =
        rows.iter().map(|r| format!("| {} | {} | {} | {} |\n", r.name, r.value, r.target, r.airflow)).collect();
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
