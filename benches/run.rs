//! Run benchmark: the scheduler as users run it (the release binary, a real SQLite file, real `bash`
//! processes), timed from the store's own timestamps.
//!
//! Rows: the gap between a task ending and its downstream starting (median over a 20-task chain of
//! `true`), trigger → success of that chain, `dags test` of MCWork with `true` commands as a whole
//! process, 1,000 independent `true` tasks, 10,000 independent `EmptyOperator` tasks, 10,000
//! `RhaiOperator` tasks, 1,000 sensors waiting in reschedule mode (memory and CPU), and the
//! scheduler's resident memory with 100 DAGs loaded.
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends rows to `$BENCH_TABLE_ROWS` when set.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Home {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Home {
    fn new(bin: &Path, files: &[(String, String)]) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(
            dir.path().join("rhaiflow.toml"),
            "[core]\nparallelism = 64\ndags_are_paused_at_creation = false\n",
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("dags").join(name), text).unwrap();
        }
        Home { dir, bin: bin.to_path_buf() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).current_dir(self.dir.path()).env_remove("RHAIFLOW_HOME");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.run(&a)).unwrap()
    }

    fn scheduler(&self) -> Scheduler {
        let child = Scheduler(self.cmd(&["scheduler"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let sock = self.dir.path().join("rhaiflow.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "scheduler did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        child
    }

    /// Triggers `dag_id` and waits for its run to finish; returns (run, wall time from trigger start).
    fn trigger_and_wait(&self, dag_id: &str) -> (serde_json::Value, Duration) {
        let t0 = Instant::now();
        self.run(&["dags", "trigger", dag_id]);
        let store = rhaiflow::store::Store::open(&self.dir.path().join("rhaiflow.db")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let runs = store.read(|tx| tx.dag_runs(dag_id)).unwrap();
            if let Some(r) = runs.last().filter(|r| r.state.is_finished()) {
                let wall = t0.elapsed();
                assert_eq!(r.state.as_str(), "success", "{dag_id} run failed");
                let run = serde_json::json!({
                    "run_id": r.run_id,
                    "queued_at": r.queued_at.to_rfc3339(),
                    "start_date": r.start_date.map(|d| d.to_rfc3339()),
                    "end_date": r.end_date.map(|d| d.to_rfc3339()),
                });
                return (run, wall);
            }
            assert!(Instant::now() < deadline, "{dag_id} did not finish");
            // Poll gently: this process shares the machine's 2 cores with the scheduler.
            std::thread::sleep(Duration::from_millis(5));
        }
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

fn stop(scheduler: Scheduler) {
    drop(scheduler);
}

fn ts(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn chain_dag(n: usize) -> String {
    let mut s = String::from(
        "let dag = DAG(\"chain\", #{ start_date: datetime(2024, 1, 1), schedule: () });\nlet prev = ();\n",
    );
    for i in 0..n {
        s.push_str(&format!("let t{i} = BashOperator(#{{ task_id: \"t{i:02}\", bash_command: \"true\" }});\n"));
        if i > 0 {
            s.push_str(&format!("t{} >> t{i};\n", i - 1));
        }
    }
    s
}

fn wide_dag(dag_id: &str, n: usize, op: &str) -> String {
    let body = match op {
        "bash" => "BashOperator(#{ task_id: `t${i}`, bash_command: \"true\" })",
        // A little arithmetic, and a value returned as XCom.
        "rhai" => "RhaiOperator(#{ task_id: `t${i}`, callable: |ctx| { let s = 0; for j in 0..10 { s += j; } s } })",
        _ => "EmptyOperator(#{ task_id: `t${i}` })",
    };
    format!(
        "let dag = DAG(\"{dag_id}\", #{{ start_date: datetime(2024, 1, 1), schedule: (), max_active_tasks: 64 }});\nfor i in 0..{n} {{ {body}; }}\n"
    )
}

/// Tasks per second of one run of `n` independent tasks (median of 3), from the run's own timestamps.
fn throughput(bin: &Path, dag_id: &str, n: usize, op: &str) -> f64 {
    let home = Home::new(bin, &[(format!("{dag_id}.rhai"), wide_dag(dag_id, n, op))]);
    let sched = home.scheduler();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let (run, _) = home.trigger_and_wait(dag_id);
        let secs = (ts(&run["end_date"]) - ts(&run["queued_at"])).num_microseconds().unwrap() as f64 / 1e6;
        rates.push(n as f64 / secs);
    }
    stop(sched);
    median(rates)
}

struct Row {
    name: &'static str,
    value: String,
    target: &'static str,
    airflow: &'static str,
}

fn main() {
    let bin = PathBuf::from(std::env::var("RHAIFLOW_BIN").unwrap_or_else(|_| "target/release/rhaiflow".into()));
    // Absolute: the benchmark runs the binary from temporary homes.
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    assert!(bin.exists(), "no binary at {} (run scripts/bench)", bin.display());
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut rows = Vec::new();

    if wanted("chain") {
        let home = Home::new(&bin, &[("chain.rhai".into(), chain_dag(20))]);
        let sched = home.scheduler();
        let (mut gaps, mut e2e, mut walls) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let (run, wall) = home.trigger_and_wait("chain");
            let tis = home.json(&["tasks", "states-for-run", "chain", run["run_id"].as_str().unwrap()]);
            let tis = tis.as_array().unwrap();
            for w in tis.windows(2) {
                gaps.push(
                    (ts(&w[1]["start_date"]) - ts(&w[0]["end_date"])).num_microseconds().unwrap() as f64 / 1000.0,
                );
            }
            e2e.push((ts(&run["end_date"]) - ts(&run["queued_at"])).num_microseconds().unwrap() as f64 / 1e6);
            walls.push(wall.as_secs_f64());
        }
        stop(sched);
        rows.push(Row {
            name: "gap: task ends → downstream starts (20-task chain of `true`, median)",
            value: format!("{:.2} ms", median(gaps)),
            target: "≤ 5 ms",
            airflow: "2.9 s",
        });
        rows.push(Row {
            name: "trigger → success, 20-task chain (run queued → run done; wall incl. `dags trigger` process)",
            value: format!("{:.3} s ({:.3} s wall)", median(e2e), median(walls)),
            target: "≤ 0.2 s",
            airflow: "68 s",
        });
    }

    if wanted("mcwork") {
        let src = std::fs::read_to_string("examples/dags/mcwork.rhai").unwrap();
        let src = src
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("bash_command:") {
                    "    bash_command: \"true\",".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let home = Home::new(&bin, &[("mcwork.rhai".into(), src)]);
        home.run(&["db", "migrate"]);
        let mut times = Vec::new();
        for _ in 0..11 {
            let t0 = Instant::now();
            let out = home.run(&["dags", "test", "MCWork"]);
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(out.matches(" success (").count(), 4, "{out}");
        }
        rows.push(Row {
            name: "`rhaiflow dags test MCWork` (`true` commands), whole process",
            value: format!("{:.1} ms", median(times)),
            target: "≤ 50 ms",
            airflow: "3.4 s",
        });
    }

    if wanted("1,000") {
        let rate = throughput(&bin, "wide", 1000, "bash");
        rows.push(Row {
            name: "1,000 independent `true` tasks (parallelism 64)",
            value: format!("{rate:.0} tasks/s"),
            target: "≥ 500 tasks/s",
            airflow: "",
        });
    }

    if wanted("10,000") {
        let rate = throughput(&bin, "empty", 10_000, "empty");
        rows.push(Row {
            name: "10,000 independent `EmptyOperator` tasks",
            value: format!("{rate:.0} tasks/s"),
            target: "≥ 10,000 tasks/s",
            airflow: "",
        });
    }

    if wanted("rhai") {
        let rate = throughput(&bin, "rhai", 10_000, "rhai");
        rows.push(Row {
            name: "10,000 independent `RhaiOperator` tasks (a little arithmetic, value returned as XCom)",
            value: format!("{rate:.0} tasks/s"),
            target: "≥ 5,000 tasks/s",
            airflow: "",
        });
    }

    if wanted("sensors") {
        // 1,000 sensors in reschedule mode waiting for a file that never comes: once every one has
        // poked and is `up_for_reschedule`, the scheduler's resident memory and its CPU over 10 s.
        let dag = "let dag = DAG(\"sensors\", #{ start_date: datetime(2024, 1, 1), schedule: (), max_active_tasks: 64 });\n\
                   for i in 0..1000 { FileSensor(#{ task_id: `s${i}`, filepath: \"/nonexistent/rhaiflow-bench\", \
                   mode: \"reschedule\", poke_interval: 300, timeout: 3600 }); }\n";
        let home = Home::new(&bin, &[("sensors.rhai".into(), dag.into())]);
        let sched = home.scheduler();
        home.run(&["dags", "trigger", "sensors"]);
        let store = rhaiflow::store::Store::open(&home.dir.path().join("rhaiflow.db")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let waiting = store
                .read(|tx| {
                    let mut n = 0usize;
                    for run in tx.dag_runs("sensors")? {
                        let tis = tx.task_instances_of_run("sensors", &run.run_id)?;
                        n += tis.iter().filter(|t| t.state.as_str() == "up_for_reschedule").count();
                    }
                    Ok::<_, rhaiflow::store::StoreError>(n)
                })
                .unwrap();
            if waiting == 1000 {
                break;
            }
            assert!(Instant::now() < deadline, "the sensors did not all reach up_for_reschedule ({waiting})");
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = sched.0.id();
        let cpu = |pid: u32| -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            // utime and stime (fields 14 and 15), in clock ticks of 1/100 s.
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
        };
        std::thread::sleep(Duration::from_secs(1));
        let before = cpu(pid);
        std::thread::sleep(Duration::from_secs(10));
        let used = cpu(pid) - before;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        stop(sched);
        rows.push(Row {
            name: "1,000 sensors in reschedule mode waiting: scheduler resident memory",
            value: format!("{:.1} MiB", kib / 1024.0),
            target: "≤ 50 MiB",
            airflow: "",
        });
        rows.push(Row {
            name: "1,000 sensors in reschedule mode waiting: scheduler CPU over 10 s",
            value: format!("{:.2} s ({:.1} %)", used, used * 10.0),
            target: "≈ idle",
            airflow: "",
        });
    }

    if wanted("log") {
        // `seq 1 12000000`: 92.9 MB of short lines (7.7 bytes each), through the supervisor's
        // pipeline into the stamped log (5× the bytes); the whole `dags test` process, wall clock
        // (`tasks test` would also copy the log to its stdout).
        let dag = "let dag = DAG(\"log\", #{ start_date: datetime(2024, 1, 1), schedule: () });\n\
                   BashOperator(#{ task_id: \"seq\", bash_command: \"seq 1 12000000\" });\n";
        let home = Home::new(&bin, &[("log.rhai".into(), dag.into())]);
        std::fs::write(home.dir.path().join("rhaiflow.toml"), "[logging]\nmax_log_bytes = 1099511627776\n").unwrap();
        let bytes: f64 = (1..=12_000_000u64).map(|i| i.to_string().len() as f64 + 1.0).sum();
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let out = home.run(&["dags", "test", "log", "2024-01-01"]);
            assert!(out.contains(" success ("), "{out}");
            rates.push(bytes / 1e6 / t0.elapsed().as_secs_f64());
        }
        rows.push(Row {
            name: "log pipeline: 93 MB of short lines (`seq 1 12000000`) into a stamped log, `dags test` whole process",
            value: format!("{:.0} MB/s", median(rates)),
            target: "≥ 50 MB/s",
            airflow: "",
        });
    }

    if wanted("memory") {
        let files: Vec<(String, String)> = (0..100)
            .map(|i| {
                let mut s =
                    format!("let dag = DAG(\"d{i}\", #{{ start_date: datetime(2024, 1, 1), schedule: () }});\n");
                for t in 0..10 {
                    s.push_str(&format!(
                        "let t{t} = BashOperator(#{{ task_id: \"t{t}\", bash_command: \"echo {t}\" }});\n"
                    ));
                    if t > 0 {
                        s.push_str(&format!("t{} >> t{t};\n", t - 1));
                    }
                }
                (format!("d{i}.rhai"), s)
            })
            .collect();
        let home = Home::new(&bin, &files);
        let sched = home.scheduler();
        std::thread::sleep(Duration::from_millis(300));
        let status = std::fs::read_to_string(format!("/proc/{}/status", sched.0.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        stop(sched);
        rows.push(Row {
            name: "scheduler resident memory, 100 DAGs loaded (idle)",
            value: format!("{:.1} MiB", kib / 1024.0),
            target: "≤ 30 MiB",
            airflow: "134 MiB per process",
        });
    }

    let table: String =
        rows.iter().map(|r| format!("| {} | {} | {} | {} |\n", r.name, r.value, r.target, r.airflow)).collect();
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
