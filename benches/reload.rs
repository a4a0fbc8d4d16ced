//! Hot reload benchmark (issue 10): the release scheduler watching a real dags folder, a real
//! SQLite file, timed from the outside (a file written → the store shows it).
//!
//! Rows (select by name: `cargo bench --bench reload -- save once rescan checkout idle`):
//! - `save`: a DAG file saved (atomic rename) → its new version recorded; p50 / p95 over 100 saves.
//! - `once`: a new `@once` DAG file saved → its task running; p50 over 20 files.
//! - `rescan`: a rescan of 1,000 unchanged files (in process, `loader::Folder`); median of 21.
//! - `checkout`: 1,000 files rewritten at once (as `git checkout` does) → all 1,000 versions recorded.
//! - `idle`: `rhaiflow standalone` on `examples/dags`, idle: resident memory, CPU over 60 s.
//!
//! Needs `RHAIFLOW_BIN` (scripts/bench sets it). Appends rows to `$BENCH_TABLE_ROWS` when set.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Row {
    name: &'static str,
    value: String,
    target: &'static str,
}

struct Home {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The scheduler; SIGTERM when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn dag(dag_id: &str, schedule: &str, command: &str) -> String {
    format!(
        "let dag = DAG(\"{dag_id}\", #{{ start_date: datetime(2024, 1, 1), schedule: {schedule} }});\n\
         BashOperator(#{{ task_id: \"t\", bash_command: \"{command}\" }});\n"
    )
}

impl Home {
    fn new(bin: &Path, files: &[(String, String)]) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("rhaiflow.toml"), "[core]\ndags_are_paused_at_creation = false\n").unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("dags").join(name), text).unwrap();
        }
        Home { dir, bin: bin.to_path_buf() }
    }

    fn scheduler(&self, command: &str) -> Process {
        let child = Command::new(&self.bin)
            .arg(command)
            .current_dir(self.dir.path())
            .env_remove("RHAIFLOW_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sock = self.dir.path().join("rhaiflow.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "scheduler did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        Process(child)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("rhaiflow.db")).unwrap()
    }

    fn save(&self, name: &str, text: &str) {
        let dags = self.dir.path().join("dags");
        let tmp = dags.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dags.join(name)).unwrap();
    }
}

/// Polls `f` every millisecond until it holds; the time it took.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    t0.elapsed()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn latest_contains(db: &rusqlite::Connection, dag_id: &str, text: &str) -> bool {
    db.query_row(
        "SELECT v.spec_json FROM dag d JOIN dag_version v ON v.version_hash = d.latest_version_hash WHERE d.dag_id = ?1",
        [dag_id],
        |r| r.get::<_, String>(0),
    )
    .is_ok_and(|s| s.contains(text))
}

fn main() {
    let bin = PathBuf::from(std::env::var("RHAIFLOW_BIN").expect("set RHAIFLOW_BIN to the release rhaiflow binary"));
    let names: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
    let mut rows = Vec::new();

    if wanted("save") {
        let home = Home::new(&bin, &[("a.rhai".into(), dag("a", "()", "echo 0"))]);
        let _s = home.scheduler("scheduler");
        let db = home.db();
        until("first version", || latest_contains(&db, "a", "echo 0"));
        let mut ms = Vec::new();
        for i in 1..=100 {
            let mark = format!("echo {i}");
            let t0 = Instant::now();
            home.save("a.rhai", &dag("a", "()", &mark));
            until("the saved version", || latest_contains(&db, "a", &mark));
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        rows.push(Row {
            name: "DAG file saved → its new version recorded, p50 / p95 of 100 saves",
            value: format!("{:.0} ms / {:.0} ms", percentile(ms.clone(), 0.5), percentile(ms, 0.95)),
            target: "p50 ≤ 250 ms (Airflow: up to 30 s for a change, 300 s for a new file)",
        });
    }

    if wanted("once") {
        let home = Home::new(&bin, &[]);
        let _s = home.scheduler("scheduler");
        let db = home.db();
        let mut ms = Vec::new();
        for i in 0..20 {
            let id = format!("new{i}");
            let t0 = Instant::now();
            home.save(&format!("{id}.rhai"), &dag(&id, "\"@once\"", "true"));
            until("the new file's task started", || {
                db.query_row(
                    "SELECT COUNT(*) FROM task_instance WHERE dag_id = ?1 AND start_date IS NOT NULL",
                    [&id],
                    |r| r.get::<_, i64>(0),
                )
                .is_ok_and(|n| n > 0)
            });
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        rows.push(Row {
            name: "new `@once` DAG file saved → its task running, p50 of 20",
            value: format!("{:.0} ms", percentile(ms, 0.5)),
            target: "(Airflow: up to 300 s to notice a new file)",
        });
    }

    if wanted("rescan") {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        for i in 0..1000 {
            let path = dir.path().join(format!("d{i:04}.rhai"));
            std::fs::write(&path, dag(&format!("d{i:04}"), "()", "true")).unwrap();
            // Older than the racy window, as files not written in the last seconds are.
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        }
        let mut config = rhaiflow::config::Config::default();
        config.core.dags_folder = dir.path().to_path_buf();
        let app = rhaiflow::app::App::new(config).unwrap();
        let ctx = app.eval_context(chrono::Utc::now());
        let mut folder = rhaiflow::loader::Folder::default();
        let first = folder.rescan(app.loader(), &ctx).unwrap();
        assert_eq!(first.versions.len(), 1000);
        let mut ms = Vec::new();
        for _ in 0..21 {
            let t0 = Instant::now();
            let changes = folder.rescan(app.loader(), &ctx).unwrap();
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert!(changes.is_empty() && changes.read == 0);
        }
        rows.push(Row {
            name: "full rescan of 1,000 unchanged DAG files",
            value: format!("{:.1} ms", percentile(ms, 0.5)),
            target: "≤ 20 ms",
        });
    }

    if wanted("checkout") {
        let files: Vec<(String, String)> =
            (0..1000).map(|i| (format!("d{i:04}.rhai"), dag(&format!("d{i:04}"), "()", "echo one"))).collect();
        let home = Home::new(&bin, &files);
        let _s = home.scheduler("scheduler");
        let db = home.db();
        let count = |db: &rusqlite::Connection| -> i64 {
            db.query_row("SELECT COUNT(*) FROM dag_version", [], |r| r.get(0)).unwrap_or(0)
        };
        until("the first versions", || count(&db) == 1000);
        let t0 = Instant::now();
        for (name, _) in &files {
            let id = name.trim_end_matches(".rhai");
            home.save(name, &dag(id, "()", "echo two"));
        }
        let written = t0.elapsed();
        until("every new version", || count(&db) == 2000);
        rows.push(Row {
            name: "`git checkout` rewriting 1,000 DAG files → all 1,000 new versions recorded (from the first write)",
            value: format!(
                "{:.2} s (writing the files took {:.2} s)",
                t0.elapsed().as_secs_f64(),
                written.as_secs_f64()
            ),
            target: "",
        });
    }

    if wanted("idle") {
        let home = Home::new(&bin, &[]);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dags");
        for entry in std::fs::read_dir(&examples).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, home.dir.path().join("dags").join(path.file_name().unwrap())).unwrap();
            }
        }
        std::fs::remove_file(home.dir.path().join("rhaiflow.toml")).unwrap();
        let s = home.scheduler("standalone");
        std::thread::sleep(Duration::from_secs(2));
        let pid = s.0.id();
        let cpu = || -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
            let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
            ticks / 100.0
        };
        let before = cpu();
        std::thread::sleep(Duration::from_secs(60));
        let used = cpu() - before;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        rows.push(Row {
            name: "`rhaiflow standalone` on examples/dags, idle: resident memory / CPU over 60 s",
            value: format!("{:.1} MiB / {:.2} s", kib / 1024.0, used),
            target: "≈ idle",
        });
    }

    let table: String = rows.iter().map(|r| format!("| {} | {} | {} |  |\n", r.name, r.value, r.target)).collect();
    eprintln!("\n| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        let _ = f.write_all(table.as_bytes());
    }
}
