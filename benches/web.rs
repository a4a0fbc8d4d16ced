//! Web benchmark (issue 11): `rhaiflow standalone` (release binary, real SQLite file) serving a
//! store of 1,000 DAGs and 10,000 runs, timed from a client over loopback HTTP.
//!
//! The store is made by the real thing: standalone records the 1,000 DAG files and runs one run
//! of `wide` (50 tasks) and one of `d00000` (2 tasks); then, with standalone stopped, those rows
//! are copied in SQL (new run ids and logical dates, each DAG's own version) up to 100 runs of
//! `wide` and 9,900 runs spread over the 999 small DAGs.
//!
//! Rows: DAG list page (`/`), grid of 100 runs × 50 tasks (`/dags/wide?runs=100`), API
//! `GET /api/v1/dags` (Airflow's default page of 100): median of 21 requests each, one new
//! connection per request (what a browser's first request costs). Resident memory of standalone
//! with the UI open and 100 clients on the event stream. What 100 event-stream clients cost the
//! store: the process's read syscalls and CPU over the same 10 s (with one run of `wide` going,
//! so events flow) with 1 client and with 100.
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends rows to `$BENCH_TABLE_ROWS` when set.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DAGS: usize = 1_000;
const WIDE_RUNS: usize = 100;
const SMALL_RUNS: usize = 9_900;

/// Standalone; SIGTERM when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn small_dag(i: usize) -> String {
    format!(
        "let dag = DAG(\"d{i:05}\", #{{ start_date: datetime(2024, 1, 1), schedule: (), default_args: #{{ owner: \"team{}\" }}, tags: [\"t{}\"] }});\n\
         let extract = EmptyOperator(#{{ task_id: \"extract\" }});\n\
         let load = EmptyOperator(#{{ task_id: \"load\" }});\n\
         extract >> load;\n",
        i % 7,
        i % 5
    )
}

/// 50 tasks in 5 layers of 10, each layer after the one before.
fn wide_dag() -> String {
    let mut s = String::from(
        "let dag = DAG(\"wide\", #{ start_date: datetime(2024, 1, 1), schedule: () });\nlet prev = [];\n\
         for layer in 0..5 {\n    let cur = [];\n    for i in 0..10 {\n        \
         cur.push(EmptyOperator(#{ task_id: `l${layer}_t${i}` }));\n    }\n    \
         if prev.len() > 0 { cross_downstream(prev, cur); }\n    prev = cur;\n}\n",
    );
    s.push('\n');
    s
}

struct Home {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Home {
    fn standalone(&self) -> Process {
        let child = Command::new(&self.bin)
            .args(["standalone", "--dags-folder", "dags"])
            .current_dir(self.dir.path())
            .env_remove("RHAIFLOW_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Process(child);
        until("standalone answers", Duration::from_secs(120), || {
            get(self.port, "/api/v1/health").is_some_and(|(s, _)| s == 200)
        });
        p
    }

    fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.dir.path().join("rhaiflow.db")).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn run(&self, args: &[&str]) {
        let o = Command::new(&self.bin)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RHAIFLOW_HOME")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
    }
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One GET on a new connection: status and body length.
fn get(port: u16, path: &str) -> Option<(u16, usize)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.len()))
}

fn median_ms(port: u16, path: &str) -> f64 {
    for _ in 0..3 {
        let (status, _) = get(port, path).unwrap();
        assert_eq!(status, 200, "GET {path}");
    }
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let started = Instant::now();
            let (status, _) = get(port, path).unwrap();
            assert_eq!(status, 200);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// (read syscalls, CPU seconds) of the process so far.
fn load(pid: u32) -> (u64, f64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let syscr = io.lines().find_map(|l| l.strip_prefix("syscr: ")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    (syscr, ticks / 100.0)
}

/// A client on the event stream; it reads (and drops) what arrives until the connection closes.
fn listener(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /ui/events?dag_id=wide HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let reader = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    s
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Copies run `from` of `src_dag` to `dag_id` as `count` runs, one minute apart from `base_minute`.
fn copy_runs(db: &rusqlite::Connection, src_dag: &str, from: &str, dag_id: &str, count: usize, base_minute: usize) {
    let columns = |table: &str| -> Vec<String> {
        let mut st = db.prepare(&format!("PRAGMA table_info({table})")).unwrap();
        st.query_map([], |r| r.get::<_, String>(1)).unwrap().map(Result::unwrap).collect()
    };
    let run_cols = columns("dag_run");
    let ti_cols = columns("task_instance");
    let logical: String = db
        .query_row("SELECT logical_date FROM dag_run WHERE dag_id = ?1 AND run_id = ?2", [src_dag, from], |r| r.get(0))
        .unwrap();
    let logical = chrono::DateTime::parse_from_rfc3339(&logical).unwrap();
    let pick = |cols: &[String], subst: &[(&str, &str)]| -> String {
        cols.iter()
            .map(|c| subst.iter().find(|(k, _)| k == c).map_or(c.clone(), |(_, v)| v.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let version: String =
        db.query_row("SELECT latest_version_hash FROM dag WHERE dag_id = ?1", [dag_id], |r| r.get(0)).unwrap();
    let run_sql = format!(
        "INSERT INTO dag_run ({}) SELECT {} FROM dag_run WHERE dag_id = ?1 AND run_id = ?2",
        run_cols.join(", "),
        pick(&run_cols, &[("dag_id", "?3"), ("run_id", "?4"), ("logical_date", "?5"), ("version_hash", "?6")])
    );
    let ti_sql = format!(
        "INSERT INTO task_instance ({}) SELECT {} FROM task_instance WHERE dag_id = ?1 AND run_id = ?2",
        ti_cols.join(", "),
        pick(&ti_cols, &[("dag_id", "?3"), ("run_id", "?4")])
    );
    let mut run_st = db.prepare_cached(&run_sql).unwrap();
    for k in 0..count {
        let date = logical - chrono::Duration::minutes((base_minute + k + 1) as i64);
        let date = date.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let run_id = format!("manual__{date}");
        run_st.execute(rusqlite::params![src_dag, from, dag_id, run_id, date, version]).unwrap();
        db.execute(&ti_sql, rusqlite::params![src_dag, from, dag_id, run_id]).unwrap();
    }
}

fn main() {
    let Some(bin) = std::env::var_os("RHAIFLOW_BIN").map(PathBuf::from) else {
        eprintln!("web bench: set RHAIFLOW_BIN (scripts/bench does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("rhaiflow.toml"),
        format!("[core]\ndags_are_paused_at_creation = false\n\n[webserver]\nbind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    for i in 0..DAGS - 1 {
        std::fs::write(dags.join(format!("d{i:05}.rhai")), small_dag(i)).unwrap();
    }
    std::fs::write(dags.join("wide.rhai"), wide_dag()).unwrap();
    let home = Home { dir, bin, port };

    // The real rows: one run of each shape, by the scheduler.
    let started = Instant::now();
    {
        let _s = home.standalone();
        until("1,000 DAGs recorded", Duration::from_secs(120), || {
            home.count("SELECT count(*) FROM dag") == DAGS as i64
        });
        home.run(&["dags", "trigger", "wide"]);
        home.run(&["dags", "trigger", "d00000"]);
        until("both runs succeed", Duration::from_secs(120), || {
            home.count("SELECT count(*) FROM dag_run WHERE state = 'success'") == 2
        });
    }
    // Copies of them, up to 10,000 runs.
    {
        let mut db = home.db();
        let tx = db.transaction().unwrap();
        let wide_run: String =
            tx.query_row("SELECT run_id FROM dag_run WHERE dag_id = 'wide'", [], |r| r.get(0)).unwrap();
        let small_run: String =
            tx.query_row("SELECT run_id FROM dag_run WHERE dag_id = 'd00000'", [], |r| r.get(0)).unwrap();
        copy_runs(&tx, "wide", &wide_run, "wide", WIDE_RUNS - 1, 0);
        let per_dag = SMALL_RUNS / (DAGS - 1);
        let mut made = 1;
        for i in 0..DAGS - 1 {
            let dag_id = format!("d{i:05}");
            let n = if i == 0 {
                per_dag - 1
            } else if i == DAGS - 2 {
                SMALL_RUNS - made
            } else {
                per_dag
            };
            copy_runs(&tx, "d00000", &small_run, &dag_id, n, 0);
            made += n;
        }
        tx.commit().unwrap();
    }
    let runs = home.count("SELECT count(*) FROM dag_run");
    let tis = home.count("SELECT count(*) FROM task_instance");
    eprintln!(
        "store: {DAGS} DAGs, {runs} runs, {tis} task instances (made in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(runs, (WIDE_RUNS + SMALL_RUNS) as i64);

    let s = home.standalone();
    let dag_list = median_ms(port, "/");
    let grid = median_ms(port, "/dags/wide?runs=100");
    let api = median_ms(port, "/api/v1/dags");
    let graph = median_ms(port, "/dags/wide/graph");
    eprintln!("DAG list {dag_list:.1} ms, grid {grid:.1} ms, API /dags {api:.1} ms, graph {graph:.1} ms");

    // What the event stream costs: the same 10 s with 1 client, then with 100, a run going.
    let window = |clients: usize, tag: &str| -> (u64, f64) {
        let streams: Vec<TcpStream> = (0..clients).map(|_| listener(port)).collect();
        std::thread::sleep(Duration::from_millis(500));
        let before = load(s.pid());
        let _ = tag;
        home.run(&["dags", "trigger", "wide"]);
        std::thread::sleep(Duration::from_secs(10));
        let after = load(s.pid());
        drop(streams);
        (after.0 - before.0, after.1 - before.1)
    };
    let one = window(1, "events_1");
    // The UI open: its pages loaded, 100 clients listening.
    for path in ["/", "/dags/wide?runs=100", "/dags/wide/graph", "/dags/wide/gantt"] {
        let _ = get(port, path);
    }
    let streams: Vec<TcpStream> = (0..100).map(|_| listener(port)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(s.pid());
    drop(streams);
    let hundred = window(100, "events_100");
    eprintln!(
        "event stream, 10 s with a run going: 1 client {} read syscalls / {:.2} s CPU; 100 clients {} / {:.2} s",
        one.0, one.1, hundred.0, hundred.1
    );
    drop(s);

    let table = format!(
        "| UI DAG list `/`, {DAGS} DAGs and {runs} runs in the store (new connection each, median of 21) | {dag_list:.1} ms | ≤ 50 ms | – |\n\
         | UI grid, 100 runs × 50 tasks (`/dags/wide?runs=100`) | {grid:.1} ms | ≤ 50 ms | – |\n\
         | API `GET /api/v1/dags` (page of 100) | {api:.1} ms | ≤ 20 ms | – |\n\
         | UI graph of the 50-task DAG (`/dags/wide/graph`, layout included) | {graph:.1} ms | – | – |\n\
         | `standalone` RSS with the UI open and 100 event-stream clients | {rss:.1} MiB | ≤ 60 MiB | – |\n\
         | event stream, 10 s with a run going: read syscalls / CPU, 1 client → 100 clients | {} / {:.2} s → {} / {:.2} s | no extra database load | – |\n",
        one.0, one.1, hundred.0, hundred.1
    );
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
