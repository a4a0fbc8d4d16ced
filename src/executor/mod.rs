//! Running one operator: `BashOperator` as `bash -c` under a task supervisor (the rhaiflow binary
//! re-executed, see `supervisor`) that leads a new process group, writes the capped per-try log
//! and an `attempt=N.status` file; `execution_timeout` as SIGTERM then SIGKILL to the whole group.
//!
//! The owner only gates the start, waits for the supervisor and reads the status file, so a task
//! outlives its owner. No state decisions here: the worker turns an outcome into a task state.

pub mod capture;
pub mod fork_server;
mod process;
pub mod supervisor;
pub mod template;
pub mod template_syntax;
pub mod try_log;

pub use process::{STATUS_XATTR, STATUS_XATTR_MAX, is_same_process, process_token, read_status, status_path};

use fork_server::{Ended, ForkServer};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub use supervisor::SUPERVISOR_ARG;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot create log file `{}`: {reason}", path.display())]
    Log { path: PathBuf, reason: String },
    #[error("cannot start the task supervisor `{}`: {reason}", path.display())]
    Spawn { path: PathBuf, reason: String },
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
    /// Inherited variables the process must not see (secrets rhaiflow's config reads).
    pub remove_env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub log_path: PathBuf,
    pub max_log_bytes: u64,
    /// The last stdout line is kept up to this size; its full size is reported.
    pub max_xcom_bytes: u64,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    /// The rhaiflow binary, run as `__task-supervisor`.
    pub supervisor: PathBuf,
    /// Secrets the supervisor replaces by `***` in every line of the log (given through the
    /// gate, never on the command line, which any user can read in `ps`).
    pub masks: Vec<String>,
}

/// `text` with every one of `secrets` (longest first) replaced by `***`, as Airflow's secrets masker.
pub fn mask(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |text, secret| text.replace(secret.as_str(), "***"))
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// `execution_timeout` passed and the group was killed.
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BashOutcome {
    pub exit: Exit,
    /// The last non-empty line on stdout, Airflow's XCom `return_value`, cut to `max_xcom_bytes`.
    pub last_line: Option<String>,
    /// The full size of that line, so an XCom over the cap is a clear failure.
    pub last_line_bytes: u64,
}

/// What a supervisor records when its command ends: `attempt=N.status` beside the log.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StatusFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub last_line: Option<String>,
    #[serde(default)]
    pub last_line_bytes: u64,
}

/// A started process.
pub struct RunningBash {
    handle: Handle,
    pid: u32,
    run: BashRun,
}

/// The supervisor: forked by the fork server, or started by this process (when the fork server
/// cannot start).
enum Handle {
    Forked { server: std::sync::Arc<ForkServer>, ended: Option<oneshot::Receiver<Ended>>, gated: bool },
    Child(Child),
}

/// The `$0` of every task's `bash -c`, as in earlier versions (groups they left are still known).
pub const TASK_SHELL_NAME: &str = "rhaiflow-task";

/// Creates the folders of a log file, private (0700 whatever the umask).
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens the log and starts the supervisor, gated, in a new process group. Call `release` once
/// the process group is recorded (`wait` releases it too).
pub async fn spawn_bash(run: BashRun) -> Result<RunningBash, ExecError> {
    let log_err = |e: std::io::Error| ExecError::Log { path: run.log_path.clone(), reason: e.to_string() };
    if let Some(dir) = run.log_path.parent() {
        create_private_dirs(dir).map_err(log_err)?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&run.log_path).map_err(log_err)?;
    // A status left by an earlier run of the same try (`tasks test`) is not this run's.
    let _ = std::fs::remove_file(status_path(&run.log_path));
    let _ = rustix::fs::fremovexattr(&log, STATUS_XATTR);
    drop(log);
    if let Some(cwd) = &run.cwd {
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ExecError::Cwd { path: cwd.clone(), reason: "it is a file".into() }),
            Err(e) => return Err(ExecError::Cwd { path: cwd.clone(), reason: e.to_string() }),
        }
    }
    if let Some(server) = ForkServer::get(&run.supervisor, &run.remove_env) {
        let spec = supervisor::Spec {
            log: run.log_path.clone(),
            max_log_bytes: run.max_log_bytes,
            max_xcom_bytes: run.max_xcom_bytes,
            command: run.command.clone(),
            env: run.env.clone(),
            replace_env: run.replace_env,
            remove_env: run.remove_env.clone(),
            cwd: run.cwd.clone(),
        };
        // A path that is not UTF-8 cannot travel as JSON: such a try starts its own supervisor.
        let utf8 = spec.log.to_str().is_some() && spec.cwd.as_ref().is_none_or(|c| c.to_str().is_some());
        if utf8 && let Ok(forked) = server.start_try(spec).await {
            let handle = Handle::Forked { server: forked.server, ended: Some(forked.ended), gated: true };
            return Ok(RunningBash { handle, pid: forked.pid, run });
        }
    }
    let mut cmd = Command::new(&run.supervisor);
    cmd.arg(SUPERVISOR_ARG)
        .arg(&run.log_path)
        .arg(run.max_log_bytes.to_string())
        .arg(run.max_xcom_bytes.to_string())
        .arg(&run.command);
    if run.replace_env {
        cmd.env_clear();
    } else {
        for name in &run.remove_env {
            cmd.env_remove(name);
        }
    }
    cmd.envs(run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(cwd) = &run.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).kill_on_drop(false);
    let child = cmd.spawn().map_err(|e| ExecError::Spawn { path: run.supervisor.clone(), reason: e.to_string() })?;
    let pid = child.id().unwrap_or_default();
    Ok(RunningBash { handle: Handle::Child(child), pid, run })
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

/// Whether `pgid` is still a task's process group: its leader is a task supervisor (never
/// exec-replaced, so `exec` in a command cannot hide the group) or an older version's task shell,
/// or the leader is gone and members remain (Linux does not reuse a live group's id). After a
/// reboot or pid reuse an unrelated process with that id is left alone.
pub fn is_task_group(pgid: u32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pgid}/cmdline")) {
        Ok(cmdline) => {
            cmdline.split(|b| *b == 0).any(|arg| arg == SUPERVISOR_ARG.as_bytes() || arg == TASK_SHELL_NAME.as_bytes())
        }
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

/// A gated supervisor dropped without `release`, `abort` or `wait` (a path that gave up on it)
/// must not wait for its go-ahead for ever: its gate closes, as a dropped child's stdin does.
impl Drop for RunningBash {
    fn drop(&mut self) {
        if let Handle::Forked { server, gated: gated @ true, .. } = &mut self.handle {
            *gated = false;
            server.close(self.pid);
        }
    }
}

impl RunningBash {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The rendered command the supervisor runs.
    pub fn command(&self) -> &str {
        &self.run.command
    }

    /// Takes back a gated command that was never released: it has run nothing, so SIGKILL at once,
    /// and reap it so its group is really gone.
    pub async fn abort(mut self) {
        signal_group(self.pid, Signal::SIGKILL);
        self.ended().await;
    }

    /// Lets the gated command start.
    pub async fn release(&mut self) {
        match &mut self.handle {
            Handle::Child(child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    // The go-ahead line carries the secrets to mask, as a JSON array of strings.
                    let mut line = serde_json::to_vec(&self.run.masks).unwrap_or_else(|_| b"[]".to_vec());
                    line.push(b'\n');
                    let _ = stdin.write_all(&line).await;
                }
            }
            Handle::Forked { server, gated, .. } => {
                if std::mem::take(gated) {
                    server.release(self.pid, &self.run.masks);
                }
            }
        }
    }

    /// Waits for the supervisor to end and says how. A forked one whose fork server died (its
    /// parent is init now) is watched until its process is gone; how it ended is then unknown.
    async fn ended(&mut self) -> Exit {
        match &mut self.handle {
            Handle::Child(child) => match child.wait().await {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(sig)) => Exit::Signal(sig),
                    _ => Exit::Code(-1),
                },
                Err(_) => Exit::Code(-1),
            },
            Handle::Forked { server, ended, gated } => {
                if std::mem::take(gated) {
                    server.close(self.pid);
                }
                let token = process_token(self.pid);
                // Polled in place: a timeout may drop this future and wait again.
                let Some(rx) = ended.as_mut() else { return Exit::Code(-1) };
                let got = rx.await;
                *ended = None;
                match got {
                    Ok(Ended::Code(code)) => return Exit::Code(code),
                    Ok(Ended::Signal(sig)) => return Exit::Signal(sig),
                    Err(_) => {}
                }
                while token.as_deref().is_some_and(|t| is_same_process(self.pid, Some(t))) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Exit::Code(-1)
            }
        }
    }

    /// Waits for the supervisor to end (killing the group at `execution_timeout`) and returns
    /// the outcome it recorded; a supervisor that recorded none ended as its own exit says.
    pub async fn wait(mut self) -> BashOutcome {
        self.release().await;
        let exit = match self.run.timeout {
            None => self.ended().await,
            Some(t) => {
                let timeout = tokio::time::timeout(t, self.ended()).await;
                match timeout {
                    Ok(exit) => exit,
                    Err(_) => {
                        log_line(
                            &self.run.log_path,
                            &format!(
                                "[rhaiflow] execution_timeout reached: sending SIGTERM to process group {}",
                                self.pid
                            ),
                        )
                        .await;
                        kill_group(self.pid, self.run.kill_grace).await;
                        self.ended().await;
                        let recorded = read_status(&self.run.log_path);
                        return BashOutcome {
                            exit: Exit::TimedOut,
                            last_line: recorded.as_ref().and_then(|o| o.last_line.clone()),
                            last_line_bytes: recorded.map_or(0, |o| o.last_line_bytes),
                        };
                    }
                }
            }
        };
        if let Some(outcome) = read_status(&self.run.log_path) {
            return outcome;
        }
        BashOutcome { exit, last_line: None, last_line_bytes: 0 }
    }
}

/// Appends lines to a log file (messages from rhaiflow itself), each stamped with the time as the
/// task's own lines are; the file and its folders are created private.
pub async fn log_line(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        let _ = create_private_dirs(dir);
    }
    let opened = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path);
    if let Ok(f) = opened {
        let mut f = tokio::fs::File::from_std(f);
        let _ = f.write_all(try_log::stamp_lines(text).as_bytes()).await;
        // tokio's `File` writes in the background: without this the line may land after the
        // next one, or after a reader (`tasks test`) looked.
        let _ = f.flush().await;
    }
}
