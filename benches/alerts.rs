//! Alert benchmark: outbox throughput to a local receiver (rows delivered per second, in
//! process, over real HTTP on 127.0.0.1 and a real SQLite file), and the 20-task chain's
//! trigger → success with every receiver hanging (the release binary's scheduler; an alert on
//! every task's success, each send hanging until its timeout), which must match the chain row of
//! `benches/run.rs`.
//!
//! Needs `RHAIFLOW_BIN` for the chain row (scripts/bench sets it). Appends rows to
//! `$BENCH_TABLE_ROWS` when set.

use rhaiflow::alert::{Channels, Deliverer, DeliverySettings};
use rhaiflow::config::{Config, Flags};
use rhaiflow::store::{NewAlert, Store};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A receiver on 127.0.0.1 answering Slack's `ok`, or never answering.
fn receiver(hang: bool) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().route(
                "/{token}",
                axum::routing::post(move || async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    "ok"
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    port
}

fn throughput(n: usize) -> f64 {
    let port = receiver(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rhaiflow.toml"),
        format!("[alerts.slack.bench]\nwebhook = \"http://127.0.0.1:{port}/token\"\n"),
    )
    .unwrap();
    let config =
        Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, Default::default()).unwrap();
    let store = Store::open(&dir.path().join("rhaiflow.db")).unwrap();
    let now = chrono::Utc::now();
    store
        .write(|tx| {
            for i in 0..n {
                let alert = NewAlert {
                    event: "failed".into(),
                    dag_id: "bench".into(),
                    run_id: "r".into(),
                    task_id: Some(format!("t{i}")),
                    try_number: Some(1),
                    channel: "slack.bench".into(),
                    payload: serde_json::json!({ "try_number": 1, "max_tries": 0, "error": "exit 1" }),
                    held: false,
                };
                tx.insert_alert(&alert, now)?;
            }
            Ok::<_, rhaiflow::store::StoreError>(())
        })
        .unwrap();
    let settings = DeliverySettings::from_config(&config, "bench".into());
    let d = Deliverer::new(store.clone(), Channels::from_config(&config.alerts), settings, Arc::new(move || now));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n {
        sent += rt.block_on(d.deliver_due(now)).unwrap().sending;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let rows = store.read(|tx| tx.alert_list(&Default::default())).unwrap();
    assert!(rows.iter().all(|r| r.state == "sent"), "every alert sent");
    n as f64 / elapsed
}

fn chain_dag(n: usize) -> String {
    let mut s = String::from("let dag = DAG(\"chain\", #{ start_date: datetime(2024, 1, 1), schedule: () });\n");
    for i in 0..n {
        s.push_str(&format!("let t{i} = BashOperator(#{{ task_id: \"t{i:02}\", bash_command: \"true\" }});\n"));
        if i > 0 {
            s.push_str(&format!("t{} >> t{i};\n", i - 1));
        }
    }
    s
}

struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Median trigger → success of the 20-task chain, over 5 runs; `alerts` is added to the config.
fn chain_latency(bin: &Path, alerts: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/chain.rhai"), chain_dag(20)).unwrap();
    std::fs::write(
        dir.path().join("rhaiflow.toml"),
        format!("[core]\nparallelism = 64\ndags_are_paused_at_creation = false\n{alerts}"),
    )
    .unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args).current_dir(dir.path()).env_remove("RHAIFLOW_HOME");
        c
    };
    let _sched = Scheduler(cmd(&["scheduler"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let sock = dir.path().join("rhaiflow.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "scheduler did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let store = Store::open(&dir.path().join("rhaiflow.db")).unwrap();
    let mut e2e = Vec::new();
    for _ in 0..5 {
        assert!(cmd(&["dags", "trigger", "chain"]).output().unwrap().status.success());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let runs = store.read(|tx| tx.dag_runs("chain")).unwrap();
            let done = runs.iter().filter(|r| r.state.is_finished()).count();
            if done == e2e.len() + 1 {
                let r = runs.iter().filter(|r| r.state.is_finished()).max_by_key(|r| r.queued_at).unwrap();
                assert_eq!(r.state.as_str(), "success");
                e2e.push((r.end_date.unwrap() - r.queued_at).num_microseconds().unwrap() as f64 / 1e6);
                break;
            }
            assert!(Instant::now() < deadline, "chain did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !alerts.is_empty() {
        let rows = store.read(|tx| tx.alert_list(&Default::default())).unwrap();
        assert!(rows.len() >= 100, "an alert per task per run: {}", rows.len());
    }
    e2e.sort_by(f64::total_cmp);
    e2e[e2e.len() / 2]
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut rows: Vec<String> = Vec::new();
    if wanted("throughput") {
        let mut runs: Vec<f64> = (0..3).map(|_| throughput(5_000)).collect();
        runs.sort_by(f64::total_cmp);
        rows.push(format!(
            "| alert outbox throughput to a local receiver (5,000 alerts, Slack webhook on 127.0.0.1) | {:.0} alerts/s | ≥ 1,000 alerts/s | – |",
            runs[1]
        ));
    }
    if wanted("hanging") {
        let bin = PathBuf::from(std::env::var("RHAIFLOW_BIN").unwrap_or_else(|_| "target/release/rhaiflow".into()));
        let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
        assert!(bin.exists(), "no binary at {} (run scripts/bench)", bin.display());
        let hang = receiver(true);
        let quiet = chain_latency(&bin, "");
        let alerts = format!(
            "[alerts]\non_success = [\"slack.hang\", \"webhook.hang\"]\ndelivery_timeout = 30\n\
             [alerts.slack.hang]\nwebhook = \"http://127.0.0.1:{hang}/a\"\n\
             [alerts.webhook.hang]\nurl = \"http://127.0.0.1:{hang}/b\"\n"
        );
        let hanging = chain_latency(&bin, &alerts);
        rows.push(format!(
            "| trigger → success, 20-task chain, every alert receiver hanging (an alert per task) | {hanging:.3} s | unchanged ({quiet:.3} s without alerts, same run) | – |"
        ));
    }
    let table: String = rows.iter().map(|r| format!("{r}\n")).collect();
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
