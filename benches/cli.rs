//! CLI benchmark: commands that act on one DAG, as users run them (the release binary, a real
//! SQLite file), timed as whole processes.
//!
//! Row: `dags trigger` with 10,000 DAG files in the folder, every DAG already recorded in the store
//! (one `dags unpause` of a DAG the store does not know parses and records the whole folder first):
//! the median of 11 triggers, each a new process. It parses one file, not 10,000.
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends rows to `$BENCH_TABLE_ROWS` when set.
//! `RHAIFLOW_CLI_DAGS` changes the number of DAG files (for a quick try with a debug binary).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn dag_file(i: usize) -> String {
    format!(
        "let dag = DAG(\"d{i:05}\", #{{ start_date: datetime(2024, 1, 1), schedule: \"@daily\", catchup: false }});\n\
         let extract = BashOperator(#{{ task_id: \"extract\", bash_command: \"echo {i}\" }});\n\
         let load = BashOperator(#{{ task_id: \"load\", bash_command: \"echo {{{{ ds }}}}\" }});\n\
         extract >> load;\n"
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some(bin) = std::env::var_os("RHAIFLOW_BIN").map(PathBuf::from) else {
        eprintln!("cli bench: set RHAIFLOW_BIN (scripts/bench does)");
        return;
    };
    let n: usize = std::env::var("RHAIFLOW_CLI_DAGS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dir.path().join("rhaiflow.toml"), "[core]\ndags_are_paused_at_creation = false\n").unwrap();
    for i in 0..n {
        std::fs::write(dags.join(format!("d{i:05}.rhai")), dag_file(i)).unwrap();
    }
    let run = |args: &[&str]| {
        let o = Command::new(&bin).args(args).current_dir(dir.path()).env_remove("RHAIFLOW_HOME").output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let target = format!("d{:05}", n / 2);
    let started = Instant::now();
    run(&["dags", "unpause", &target]);
    eprintln!("recording {n} DAG files (a whole-folder parse): {:.2} s", started.elapsed().as_secs_f64());
    let mut times = Vec::new();
    for k in 0..11 {
        let date = format!("2024-01-01T00:00:{k:02}");
        let started = Instant::now();
        run(&["dags", "trigger", &target, "--logical-date", &date]);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let table = format!(
        "| `dags trigger` with {n} DAG files in the folder (whole process, median of 11) | {:.1} ms | ≤ 20 ms | not measured |\n",
        median(times.clone())
    );
    eprintln!("each trigger (ms): {times:.1?}");
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
