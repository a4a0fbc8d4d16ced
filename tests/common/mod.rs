//! Helpers shared by the integration tests.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use rhaiflow::loader::{DagBag, Loader, LoaderSettings};
use rhaiflow::script::{EvalContext, ScriptLimits};
use std::path::Path;

/// A fixed clock so `days_ago` and next runs are reproducible.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap()
}

pub fn eval_context() -> EvalContext {
    EvalContext {
        now: fixed_now(),
        default_timezone: chrono_tz::UTC,
        catchup_by_default: true,
        default_owner: "rhaiflow".into(),
    }
}

pub fn load(folder: &Path) -> DagBag {
    let loader =
        Loader::new(LoaderSettings { dags_folder: folder.to_path_buf(), limits: ScriptLimits::default(), threads: 2 })
            .expect("loader starts");
    loader.load_all(&eval_context()).expect("folder loads")
}

/// A rhaiflow home in a temporary directory, with DAG files, driven through the real binary.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    /// `$HOME_DIR` in a DAG file becomes the home's path.
    pub fn new(dags: &[(&str, &str)]) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        for (name, text) in dags {
            let text = text.replace("$HOME_DIR", &dir.path().to_string_lossy());
            std::fs::write(dir.path().join("dags").join(name), text).unwrap();
        }
        Home { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rhaiflow"));
        // These tests drive the scheduler on DAGs they just wrote: new DAGs start unpaused here
        // (`paused_at_creation_is_the_default` tests the default).
        c.args(args)
            .current_dir(self.path())
            .env_remove("RHAIFLOW_HOME")
            .env("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false");
        c
    }

    /// Runs a command that must end by itself (see `output_within_deadline`).
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        output_within_deadline(self.command(args), &format!("{args:?}"))
    }

    /// A try's log, through `rhaiflow tasks logs`.
    pub fn log(&self, dag_id: &str, run_id: &str, task_id: &str) -> String {
        String::from_utf8_lossy(&self.run(&["tasks", "logs", dag_id, run_id, task_id]).stdout).to_string()
    }

    /// Starts a long-running command (`scheduler`, `dags test`, `dags backfill`), killed on drop.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rhaiflow starts");
        Running(Some(drained(child)))
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let o = self.run(&all);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub fn runs(&self, dag_id: &str) -> Vec<serde_json::Value> {
        self.json(&["runs", "list", dag_id]).as_array().cloned().unwrap_or_default()
    }

    /// `(task_id, state, try_number)` of each task instance of a run.
    pub fn states(&self, dag_id: &str, run_id: &str) -> Vec<(String, String, u64)> {
        let rows = self.json(&["tasks", "states-for-run", dag_id, run_id]);
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let task = r["task_id"].as_str().unwrap().to_string();
                (task, r["state"].as_str().unwrap().to_string(), r["try_number"].as_u64().unwrap())
            })
            .collect()
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    /// The SQLite database, for reading what no command shows.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path().join("rhaiflow.db")).unwrap()
    }
}

/// Runs a command that must end by itself: killed, and the test failed, after 120 s (a stranded
/// task would make `dags test` wait for ever).
pub fn output_within_deadline(mut cmd: std::process::Command, what: &str) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(output) => output.expect("the command runs"),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("{what} did not finish within 120 s");
        }
    }
}

/// What drainer threads read from spawned children's pipes, by pid, for `Running::finish`.
static DRAINED: std::sync::Mutex<Vec<(i32, DrainedOutput)>> = std::sync::Mutex::new(Vec::new());

type DrainedOutput = (std::thread::JoinHandle<Vec<u8>>, std::thread::JoinHandle<Vec<u8>>);

/// Reads a long-running child's stdout and stderr as they come, so a chatty scheduler never blocks
/// on a full pipe (64 KiB) while a test waits on it; `finish` returns what was read.
fn drained(mut child: std::process::Child) -> std::process::Child {
    use std::io::Read;
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            out
        })
    }
    if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
        let pid = child.id() as i32;
        let mut all = DRAINED.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(p, _)| *p != pid);
        all.push((pid, (drain(out), drain(err))));
    }
    child
}

/// A child process killed (SIGKILL) if the test ends before it does.
pub struct Running(pub Option<std::process::Child>);

impl Running {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// SIGKILL, as `kill -9`, and reap.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit (up to 60 s); its exit code and output.
    pub fn finish(&mut self) -> (Option<i32>, String, String) {
        let child = self.0.take().expect("still running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let pid = child.id() as i32;
        let waiter = std::thread::spawn(move || child.wait_with_output());
        while !waiter.is_finished() {
            if std::time::Instant::now() > deadline {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                panic!("process {pid} did not exit within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut out = waiter.join().unwrap().unwrap();
        let drained = {
            let mut all = DRAINED.lock().unwrap_or_else(|e| e.into_inner());
            all.iter().position(|(p, _)| *p == pid).map(|i| all.remove(i).1)
        };
        if let Some((stdout, stderr)) = drained {
            out.stdout = stdout.join().unwrap_or_default();
            out.stderr = stderr.join().unwrap_or_default();
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Polls `f` every 20 ms until it gives a value; fails the test after 60 s.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A task log without the time stamp that starts each of its lines (`[2024-06-01T00:00:00.000+0000] `).
pub fn unstamped(log: &str) -> String {
    let stamp = regex::Regex::new(r"(?m)^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}\] ").unwrap();
    stamp.replace_all(log, "").into_owned()
}
