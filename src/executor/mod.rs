//! Running one operator: `BashOperator` as `bash -c` in its own process group, output to a capped
//! per-try log file, `execution_timeout` as SIGTERM then SIGKILL to the whole group.
//!
//! No state decisions here: the worker turns an outcome into a task state.

mod process;
pub mod template;

pub use process::{is_same_process, process_token, read_status, status_path};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot create log file `{}`: {reason}", path.display())]
    Log { path: PathBuf, reason: String },
    #[error("cannot start `bash`: {0}")]
    Spawn(String),
    #[error("the task's `cwd` `{}` is not a directory: {reason}; create it or fix `cwd`", path.display())]
    Cwd { path: PathBuf, reason: String },
}

/// One `bash -c` to run.
#[derive(Debug, Clone)]
pub struct BashRun {
    pub command: String,
    /// Variables to set. With `replace_env`, the only ones the process sees (Airflow's `env`
    /// without `append_env`).
    pub env: Vec<(String, String)>,
    pub replace_env: bool,
    pub cwd: Option<PathBuf>,
    pub log_path: PathBuf,
    pub max_log_bytes: u64,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// `execution_timeout` passed and the group was killed.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct BashOutcome {
    pub exit: Exit,
    /// The last non-empty line on stdout, Airflow's XCom `return_value`.
    pub last_line: Option<String>,
}

/// A started process.
pub struct RunningBash {
    child: Child,
    pid: u32,
    run: BashRun,
    log: tokio::fs::File,
}

/// The shell that hosts a command: it waits for one line on stdin before running anything, so the
/// caller can record the process group durably first. If the caller dies before releasing it,
/// stdin closes, `read` fails, and the command never runs.
/// The `$0` of every task shell, so a process group can be recognised as a task's.
const TASK_SHELL_NAME: &str = "rhaiflow-task";

const GATED_SHELL: &str = "IFS= read -r _ || exit 97; exec 0</dev/null; eval \"$1\"";

/// Opens the log and starts the command, gated, in a new process group. Call `release` once the
/// process group is recorded (`wait` releases it too).
pub async fn spawn_bash(run: BashRun) -> Result<RunningBash, ExecError> {
    let log_err = |e: std::io::Error| ExecError::Log { path: run.log_path.clone(), reason: e.to_string() };
    if let Some(dir) = run.log_path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(log_err)?;
    }
    if let Some(cwd) = &run.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ExecError::Cwd { path: cwd.clone(), reason: "it is a file".into() }),
            Err(e) => return Err(ExecError::Cwd { path: cwd.clone(), reason: e.to_string() }),
        }
    }
    let log = tokio::fs::OpenOptions::new().create(true).append(true).open(&run.log_path).await.map_err(log_err)?;
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(GATED_SHELL).arg(TASK_SHELL_NAME).arg(&run.command);
    if run.replace_env {
        cmd.env_clear();
    }
    cmd.envs(run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(cwd) = &run.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(false);
    let child = cmd.spawn().map_err(|e| ExecError::Spawn(e.to_string()))?;
    let pid = child.id().unwrap_or_default();
    Ok(RunningBash { child, pid, run, log })
}

/// Sends `signal` to a whole process group; a group already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid as i32), signal);
    }
}

/// Whether a process group still has a live member.
pub fn group_alive(pgid: u32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// Whether `pgid` is still a task's process group: its leader is our task shell, or the leader is
/// gone and members remain (Linux does not reuse a live group's id). After a reboot or pid reuse
/// an unrelated process with that id is left alone.
pub fn is_task_group(pgid: u32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pgid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == TASK_SHELL_NAME.as_bytes()),
        Err(_) => true,
    }
}

/// Kills a group that outlived its owner: SIGTERM, then SIGKILL after `grace`.
pub async fn kill_group(pgid: u32, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(pgid, Signal::SIGKILL);
}

impl RunningBash {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes back a gated command that was never released: it has run nothing, so SIGKILL at once,
    /// and reap it so its group is really gone.
    pub async fn abort(mut self) {
        signal_group(self.pid, Signal::SIGKILL);
        let _ = self.child.wait().await;
    }

    /// Lets the gated command start.
    pub async fn release(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"go\n").await;
        }
    }

    /// Streams output into the log until the process ends or times out.
    pub async fn wait(mut self) -> BashOutcome {
        self.release().await;
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, String)>(256);
        if let Some(out) = stdout {
            forward_lines(out, true, tx.clone());
        }
        if let Some(err) = stderr {
            forward_lines(err, false, tx.clone());
        }
        drop(tx);
        let mut writer = LogWriter { file: &mut self.log, written: 0, cap: self.run.max_log_bytes, truncated: false };
        let mut last_line = None;
        let deadline = self.run.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        // Read output until both pipes close, then reap; a timeout kills the group.
        loop {
            let next = match deadline {
                Some(d) if !timed_out => tokio::time::timeout_at(d, rx.recv()).await,
                _ => Ok(rx.recv().await),
            };
            match next {
                Ok(Some((is_stdout, line))) => {
                    if is_stdout && !line.trim().is_empty() {
                        last_line = Some(line.clone());
                    }
                    writer.line(&line).await;
                }
                Ok(None) => break,
                Err(_) => {
                    timed_out = true;
                    writer
                        .line(&format!(
                            "[rhaiflow] execution_timeout reached: sending SIGTERM to process group {}",
                            self.pid
                        ))
                        .await;
                    let pgid = self.pid;
                    let grace = self.run.kill_grace;
                    tokio::spawn(async move { kill_group(pgid, grace).await });
                }
            }
        }
        let status = self.child.wait().await;
        let exit = if timed_out {
            Exit::TimedOut
        } else {
            match status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Code(-1),
                },
                Err(_) => Exit::Code(-1),
            }
        };
        let _ = writer.file.flush().await;
        BashOutcome { exit, last_line }
    }
}

/// Sends each line of a child's pipe, tagged stdout or not, until the pipe closes.
fn forward_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    is_stdout: bool,
    tx: tokio::sync::mpsc::Sender<(bool, String)>,
) {
    tokio::spawn(async move {
        // Bytes, not `lines()`: output that is not UTF-8 must not stop the reader (the task would
        // then die of SIGPIPE); it is logged lossily.
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                    if tx.send((is_stdout, line)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Appends lines to a log file up to a size cap, then one marker line.
struct LogWriter<'a> {
    file: &'a mut tokio::fs::File,
    written: u64,
    cap: u64,
    truncated: bool,
}

impl LogWriter<'_> {
    async fn line(&mut self, line: &str) {
        if self.truncated {
            return;
        }
        let bytes = line.len() as u64 + 1;
        if self.written + bytes > self.cap {
            self.truncated = true;
            let _ = self.file.write_all(format!("[rhaiflow] log truncated at {} bytes\n", self.cap).as_bytes()).await;
            return;
        }
        self.written += bytes;
        let _ = self.file.write_all(line.as_bytes()).await;
        let _ = self.file.write_all(b"\n").await;
    }
}

/// Appends one line to a log file (for messages from rhaiflow itself).
pub async fn log_line(path: &Path, line: &str) {
    if let Some(dir) = path.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    if let Ok(mut f) = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
        let _ = f.write_all(format!("{line}\n").as_bytes()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, command: &str) -> BashRun {
        BashRun {
            command: command.into(),
            env: vec![("GREETING".into(), "hi".into())],
            replace_env: false,
            cwd: None,
            log_path: dir.join("attempt=1.log"),
            max_log_bytes: 1 << 20,
            timeout: None,
            kill_grace: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn exit_codes_output_and_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            spawn_bash(run(dir.path(), "echo $GREETING; echo oops >&2; echo last; exit 3")).await.unwrap().wait().await;
        assert_eq!(out.exit, Exit::Code(3));
        assert_eq!(out.last_line.as_deref(), Some("last"));
        let log = std::fs::read_to_string(dir.path().join("attempt=1.log")).unwrap();
        assert!(log.contains("hi\n") && log.contains("oops\n") && log.contains("last\n"), "{log}");
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
        // The grandchild `sleep` was in the group and is gone too (give the SIGKILL a moment).
        for _ in 0..100 {
            if !group_alive(pgid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!group_alive(pgid), "the process group outlived the timeout");
    }

    #[tokio::test]
    async fn output_that_is_not_utf8_is_logged_and_does_not_kill_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            spawn_bash(run(dir.path(), "printf 'caf\\xe9\\n' >&2; for i in $(seq 1 2000); do echo line-$i; done"))
                .await
                .unwrap()
                .wait()
                .await;
        assert_eq!(out.exit, Exit::Code(0));
        let log = std::fs::read_to_string(dir.path().join("attempt=1.log")).unwrap();
        assert!(log.contains("caf\u{fffd}\n") && log.contains("line-2000\n"), "{log}");
    }

    #[tokio::test]
    async fn task_groups_are_recognised_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = run(dir.path(), "sleep 5");
        r.timeout = Some(Duration::from_millis(500));
        let bash = spawn_bash(r).await.unwrap();
        // The kernel finishes setting up a new program's argv a moment after `spawn` returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_task_group(bash.pid()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(is_task_group(bash.pid()));
        assert!(!is_task_group(std::process::id()), "this test process is nobody's task");
        bash.wait().await;
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
    async fn logs_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = run(dir.path(), "for i in $(seq 1 1000); do echo line-$i; done");
        r.max_log_bytes = 100;
        let out = spawn_bash(r).await.unwrap().wait().await;
        assert_eq!(out.exit, Exit::Code(0));
        assert_eq!(out.last_line.as_deref(), Some("line-1000"), "output past the cap still counts for XCom");
        let log = std::fs::read_to_string(dir.path().join("attempt=1.log")).unwrap();
        assert!(log.len() < 200, "{} bytes", log.len());
        assert!(log.ends_with("[rhaiflow] log truncated at 100 bytes\n"), "{log}");
    }
}
