//! `rhaiflow port` benchmark: 1,000 generated Airflow 2 DAG files (classic operators, a TaskFlow
//! chain, a task group, a loop), ported by the release binary into a fresh folder, timed as whole
//! processes (median of 3). Target: ≤ 2 s.
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends its row to `$BENCH_TABLE_ROWS` when set.
//! `RHAIFLOW_PORT_FILES` changes the number of files (for a quick try with a debug binary).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn dag_file(i: usize) -> String {
    format!(
        r#""""Generated DAG {i}."""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.decorators import task
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
from airflow.utils.task_group import TaskGroup

default_args = {{"owner": "bench", "retries": 1, "retry_delay": timedelta(minutes=5)}}

with DAG("bench_{i:04}", default_args=default_args, start_date=datetime(2024, 1, 1), schedule="@daily", catchup=False) as dag:
    start = EmptyOperator(task_id="start")
    with TaskGroup("extract") as extract:
        parts = [BashOperator(task_id=f"part_{{n}}", bash_command=f"echo {{n}} {{{{{{{{ ds }}}}}}}}") for n in range(5)]

    @task
    def transform(x):
        return x * 2

    @task
    def load(rows):
        print(rows)

    end = EmptyOperator(task_id="end")
    start >> extract
    result = load(transform({i}))
    extract >> result >> end
"#
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some(bin) = std::env::var_os("RHAIFLOW_BIN").map(PathBuf::from) else {
        eprintln!("port bench: set RHAIFLOW_BIN (scripts/bench does)");
        return;
    };
    let n: usize = std::env::var("RHAIFLOW_PORT_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("airflow_dags");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..n {
        std::fs::write(input.join(format!("bench_{i:04}.py")), dag_file(i)).unwrap();
    }
    let mut times = Vec::new();
    for k in 0..3 {
        let out = dir.path().join(format!("out{k}"));
        let started = Instant::now();
        let o = Command::new(&bin)
            .args(["port", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap()])
            .output()
            .unwrap();
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2 * n, "a .rhai and a _tasks.py per file");
    }
    let table = format!(
        "| `port` of {n} generated Airflow DAG files (whole process, median of 3) | {:.2} s | ≤ 2 s | not measured |\n",
        median(times.clone())
    );
    eprintln!("each run (s): {times:.2?}");
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
