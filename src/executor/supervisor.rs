//! The task supervisor: the rhaiflow binary re-executed as `rhaiflow __task-supervisor LOG
//! MAX_LOG_BYTES MAX_XCOM_BYTES COMMAND`, the leader of a task's process group.
//!
//! It waits for the gate (one line on stdin; EOF means never run), runs `bash -c COMMAND` as its
//! child in the same group, reads the child's stdout and stderr itself into the capped log (so the
//! task does not depend on the process that started it: kill -9 of the scheduler leaves it
//! running, writing and finishing), then writes `attempt=N.status` beside the log (JSON, atomically
//! by rename) and exits. It is never exec-replaced, so its argv marks the group as a task's for as
//! long as the group lives. Std threads only; no runtime, config or tracing.

use super::capture::{Limits, MAX_LINE_BYTES, capture};
use super::{STATUS_XATTR, STATUS_XATTR_MAX, StatusFile, TASK_SHELL_NAME, status_path};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The argv[1] that selects the supervisor; also how a task's process group is recognised.
pub const SUPERVISOR_ARG: &str = "__task-supervisor";

/// Exit code when the gate closed without a go-ahead: nothing ran.
const GATE_CLOSED: i32 = 97;

extern "C" fn ignore_signal(_: nix::libc::c_int) {}

/// What one supervisor runs: the try's log, its caps and the command. `bash` gets `env` as set
/// here (the fork server applies a task's variables here, as it forks; a supervisor started on its
/// own was given them as its own environment).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub log: PathBuf,
    pub max_log_bytes: u64,
    pub max_xcom_bytes: u64,
    pub command: String,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub replace_env: bool,
    #[serde(default)]
    pub remove_env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// Runs the supervisor with the arguments after `__task-supervisor`; returns its exit code.
/// `--fork-server` runs the fork server instead (see `fork_server`).
pub fn main(args: Vec<OsString>) -> i32 {
    if args.len() == 1 && args[0] == super::fork_server::FORK_SERVER_ARG {
        return super::fork_server::serve();
    }
    let [log, max_log, max_xcom, command] = match <[OsString; 4]>::try_from(args) {
        Ok(a) => a,
        Err(_) => {
            eprintln!("rhaiflow: `{SUPERVISOR_ARG}` is internal; it takes LOG MAX_LOG_BYTES MAX_XCOM_BYTES COMMAND");
            return 2;
        }
    };
    let number = |s: &OsString| s.to_str().and_then(|s| s.parse::<u64>().ok());
    let (Some(max_log_bytes), Some(max_xcom_bytes)) = (number(&max_log), number(&max_xcom)) else {
        eprintln!("rhaiflow: `{SUPERVISOR_ARG}`: MAX_LOG_BYTES and MAX_XCOM_BYTES must be numbers");
        return 2;
    };
    let Ok(command) = command.into_string() else {
        eprintln!("rhaiflow: `{SUPERVISOR_ARG}`: COMMAND must be UTF-8");
        return 2;
    };
    supervise(Spec { log: PathBuf::from(log), max_log_bytes, max_xcom_bytes, command, ..Spec::default() })
}

/// Supervises one try: waits for the gate on stdin, runs `bash -c`, captures its output into the
/// log and records the outcome; returns the exit code.
pub fn supervise(spec: Spec) -> i32 {
    let Spec { log, max_log_bytes, max_xcom_bytes, command, .. } = &spec;
    let (log, max_log_bytes, max_xcom_bytes) = (log.clone(), *max_log_bytes, *max_xcom_bytes);
    // SIGTERM to the group (a timeout, a shutdown) is for the command: the supervisor stays to
    // record how it ended. A handler, not SIG_IGN, so the child starts with the default action.
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(ignore_signal),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action) };
    let Some(masks) = gate_opened() else {
        return GATE_CLOSED;
    };
    let log_file = match std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rhaiflow: cannot open the task log `{}`: {e}", log.display());
            return 1;
        }
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(command).arg(TASK_SHELL_NAME);
    if spec.replace_env {
        cmd.env_clear();
    }
    for name in &spec.remove_env {
        cmd.env_remove(name);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(&log_file, "[rhaiflow] cannot start `bash`: {e}");
            let status = StatusFile { exit_code: Some(127), ..StatusFile::default() };
            write_status(&log, &status);
            return 127;
        }
    };
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return 1;
    };
    let started = std::time::Instant::now();
    let limits = Limits { max_log_bytes, max_line_bytes: MAX_LINE_BYTES, max_xcom_bytes };
    let (out, err) = (std::os::fd::OwnedFd::from(out), std::os::fd::OwnedFd::from(err));
    let last = capture(out.into(), err.into(), log_file, limits, masks);
    let (exit_code, signal) = match child.wait() {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (Some(-1), None),
    };
    let ended = match (exit_code, signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended in an unknown way".to_string(),
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(mut end) = std::fs::OpenOptions::new().append(true).open(&log) {
        let _ = writeln!(end, "{}[rhaiflow] the command {ended} after {seconds:.3} s", super::capture::stamp());
    }
    let status = StatusFile { exit_code, signal, last_line: last.text, last_line_bytes: last.bytes };
    write_status(&log, &status);
    match (exit_code, signal) {
        (Some(code), _) => code & 0xff,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// The most bytes of the go-ahead line kept: the secrets to mask come from rhaiflow's own config.
const MAX_GATE_LINE: usize = 16 * 1024 * 1024;

/// Waits for one line on stdin, the go-ahead, and returns the secrets it carries (a JSON array of
/// strings; any other line, as older owners send, carries none); `None` when stdin closes first
/// (the owner died before the claim).
fn gate_opened() -> Option<Vec<String>> {
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        match std::io::BufRead::fill_buf(&mut stdin) {
            Ok([]) => return None,
            Ok(bytes) => {
                let (take, done) = match bytes.iter().position(|b| *b == b'\n') {
                    Some(end) => (end + 1, true),
                    None => (bytes.len(), false),
                };
                if line.len() < MAX_GATE_LINE {
                    line.extend_from_slice(&bytes[..take]);
                }
                std::io::BufRead::consume(&mut stdin, take);
                if done {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let mut masks: Vec<String> = serde_json::from_slice(line.trim_ascii()).unwrap_or_default();
    masks.retain(|m| !m.is_empty());
    Some(masks)
}

/// Records the status: as the log's [`STATUS_XATTR`] when it fits, else beside the log, to a
/// temporary file then renamed over. Either way a reader sees all of it or nothing.
fn write_status(log: &std::path::Path, status: &StatusFile) {
    if let Ok(text) = serde_json::to_vec(status)
        && text.len() <= STATUS_XATTR_MAX
        && let Ok(file) = std::fs::OpenOptions::new().append(true).open(log)
        && rustix::fs::fsetxattr(&file, STATUS_XATTR, &text, rustix::fs::XattrFlags::empty()).is_ok()
    {
        return;
    }
    let path = status_path(log);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let Ok(text) = serde_json::to_vec(status) else { return };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}
