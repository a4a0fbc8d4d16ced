//! The fork server: one long-lived task supervisor per process that runs tasks, which forks a new
//! supervisor for each try instead of each try exec-ing one. Starting a program costs the kernel's
//! exec, the dynamic loader and glibc's start-up (≈ 1.2 ms here, a third of a `true` task's whole
//! cost); a fork of this small, single-threaded process costs a tenth of that. The forked child runs
//! the same [`supervise`] as `rhaiflow-task __task-supervisor LOG …` does, so a try behaves the
//! same either way: its own process group led by a supervisor that is never exec-replaced (its argv
//! still says `__task-supervisor`), the gate, the capped log, the recorded outcome; it outlives
//! its owner and the fork server.
//!
//! Server (`rhaiflow-task __task-supervisor --fork-server`, std and nix only, one thread): reads
//! requests, one JSON object per line, on stdin and answers on stdout:
//! - `{"start": Spec}` → forks; the child leads a new group and waits for its gate (a pipe the
//!   server holds) → `{"started": pid}` or `{"failed": reason}`, in the order of the requests;
//! - `{"release": {"pid": pid, "masks": [...]}}` → writes the go-ahead line to the child's gate;
//! - `{"close": {"pid": pid}}` → closes the gate without one (the child runs nothing);
//! - whenever a child ends (SIGCHLD, read through a signalfd) → `{"exited": pid, "code"|"signal": n}`.
//!
//! When stdin closes (its owner ended, or was killed), it closes every gate it still holds and
//! exits; children already released run on, reparented to init, as tries of a killed owner do.
//!
//! Client ([`ForkServer`]): one server per supervisor program and set of withheld variables (the
//! server's own environment lacks them, so no task can read them from its supervisor's
//! `/proc/PID/environ`), started on first use, restarted when it is gone. Its pipes are std, read on
//! a thread of their own, so it serves any tokio runtime (tests start many).

use super::supervisor::{SUPERVISOR_ARG, Spec, supervise};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

/// How long a fork takes at most before the server is taken for stuck (a fork takes ≈ 0.1 ms).
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The argument after `__task-supervisor` that runs the fork server.
pub const FORK_SERVER_ARG: &str = "--fork-server";

/// How a forked supervisor ended, as its parent (the server) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    Start(Box<Spec>),
    Release { pid: u32, masks: Vec<String> },
    Close { pid: u32 },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Reply {
    Started { started: u32 },
    Failed { failed: String },
    Exited { exited: u32, code: Option<i32>, signal: Option<i32> },
}

// ---------------------------------------------------------------------------------------------
// Server

/// Runs the fork server until stdin closes; returns the exit code.
pub fn serve() -> i32 {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    // SIGCHLD is read from a signalfd, so it must not be delivered.
    if mask.thread_block().is_err() {
        return 1;
    }
    let Ok(sigfd) = nix::sys::signalfd::SignalFd::with_flags(&mask, nix::sys::signalfd::SfdFlags::SFD_NONBLOCK) else {
        return 1;
    };
    let mut server = Server { gates: HashMap::new(), out: std::io::stdout().lock() };
    // Requests are read from fd 0 with a buffer of our own, never `std::io::stdin()`: a forked
    // child reads its gate through `stdin()`, which must not start with our unread bytes.
    let mut input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap_or_else(|_| {
        // fd 0 cannot be duplicated: nothing can be served.
        std::process::exit(1)
    }));
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            nix::poll::PollFd::new(input.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sigfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
        let input_ready = fds[0].any().unwrap_or(true);
        let children_ended = fds[1].any().unwrap_or(true);
        if children_ended {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if !server.reap() {
                return 0;
            }
        }
        if input_ready {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // The owner is gone: unreleased gates close with us, and no one reads our answers.
                return 0;
            }
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let ok = match serde_json::from_slice::<Request>(&line) {
                    Ok(request) => server.handle(request),
                    Err(e) => server.answer(&Reply::Failed { failed: format!("bad request: {e}") }),
                };
                if !ok {
                    return 0;
                }
            }
        }
    }
}

struct Server<'a> {
    /// The write end of each unreleased child's gate.
    gates: HashMap<u32, OwnedFd>,
    out: std::io::StdoutLock<'a>,
}

impl Server<'_> {
    /// Writes one answer; false when the owner stopped reading.
    fn answer(&mut self, reply: &Reply) -> bool {
        let Ok(mut line) = serde_json::to_vec(reply) else { return true };
        line.push(b'\n');
        self.out.write_all(&line).and_then(|()| self.out.flush()).is_ok()
    }

    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Start(spec) => {
                let reply = match self.fork(*spec) {
                    Ok(pid) => Reply::Started { started: pid },
                    Err(e) => Reply::Failed { failed: e },
                };
                self.answer(&reply)
            }
            Request::Release { pid, masks } => {
                if let Some(gate) = self.gates.remove(&pid) {
                    let mut line = serde_json::to_vec(&masks).unwrap_or_else(|_| b"[]".to_vec());
                    line.push(b'\n');
                    // The child reads its gate at once; a child already gone makes this EPIPE
                    // (SIGPIPE is ignored in Rust programs), which changes nothing.
                    let _ = std::fs::File::from(gate).write_all(&line);
                }
                true
            }
            Request::Close { pid } => {
                self.gates.remove(&pid);
                true
            }
        }
    }

    fn fork(&mut self, spec: Spec) -> Result<u32, String> {
        let (gate_read, gate_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| e.to_string())?;
        // SAFETY: this process has one thread, so the child may do anything the parent could.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(format!("cannot fork: {e}")),
            Ok(nix::unistd::ForkResult::Child) => {
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
                // Only the gate and /dev/null as stdio; no other child's gate, nor our pipes.
                let ok = nix::unistd::dup2_stdin(&gate_read).is_ok()
                    && nix::unistd::dup2_stdout(&null).is_ok()
                    && nix::unistd::dup2_stderr(&null).is_ok();
                drop((gate_read, gate_write, null));
                // Other children's gates, closed here even where `close_range` is missing.
                self.gates.clear();
                // SAFETY: closes descriptors this child does not use (the server's input, its
                // signalfd, whatever it inherited); nothing here holds them.
                unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
                let _ = SigSet::all().thread_unblock();
                let code = if ok { supervise(spec) } else { 1 };
                // SAFETY: ends the child without running the server's exit handlers or
                // flushing its copy of the server's stdout buffer.
                unsafe { nix::libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                // Also here, so the group exists before the owner may signal it.
                let _ = nix::unistd::setpgid(child, child);
                drop(gate_read);
                self.gates.insert(child.as_raw() as u32, gate_write);
                Ok(child.as_raw() as u32)
            }
        }
    }

    /// Reaps every ended child and reports it; false when the owner stopped reading.
    fn reap(&mut self) -> bool {
        loop {
            let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, None, Some(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return true,
                Ok(_) => continue,
            };
            let pid = pid.as_raw() as u32;
            self.gates.remove(&pid);
            if !self.answer(&Reply::Exited { exited: pid, code, signal }) {
                return false;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// A started fork server.
pub struct ForkServer {
    pid: u32,
    /// Requests, written to the server's stdin by a thread of their own: a stopped server fills
    /// the pipe, and that must block that thread, never the async runtime.
    lines: std::sync::mpsc::Sender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// Start requests sent, oldest first: each gets the pid (or why not) and, later, the end.
    starts: std::collections::VecDeque<StartWaiter>,
    ends: HashMap<u32, oneshot::Sender<Ended>>,
    gone: bool,
}

/// Who waits for a start's pid (or why not), and for the end of the child it started.
type StartWaiter = (oneshot::Sender<Result<u32, String>>, oneshot::Sender<Ended>);

type Key = (PathBuf, Vec<String>);

fn servers() -> &'static Mutex<HashMap<Key, Arc<ForkServer>>> {
    static SERVERS: OnceLock<Mutex<HashMap<Key, Arc<ForkServer>>>> = OnceLock::new();
    SERVERS.get_or_init(Default::default)
}

/// A forked supervisor, gated.
pub struct Forked {
    pub pid: u32,
    pub server: Arc<ForkServer>,
    pub ended: oneshot::Receiver<Ended>,
}

impl ForkServer {
    /// The fork server of `program` without the variables `withheld`, started if needed; `None`
    /// when it cannot start (the caller starts the supervisor itself).
    pub fn get(program: &Path, withheld: &[String]) -> Option<Arc<ForkServer>> {
        let mut withheld = withheld.to_vec();
        withheld.sort();
        let key = (program.to_path_buf(), withheld);
        let mut servers = servers().lock().ok()?;
        if let Some(server) = servers.get(&key)
            && !server.waiting.lock().map(|w| w.gone).unwrap_or(true)
        {
            return Some(server.clone());
        }
        let server = Arc::new(ForkServer::start(&key.0, &key.1)?);
        servers.insert(key, server.clone());
        Some(server)
    }

    fn start(program: &Path, withheld: &[String]) -> Option<ForkServer> {
        let mut cmd = Command::new(program);
        cmd.arg(SUPERVISOR_ARG).arg(FORK_SERVER_ARG);
        for name in withheld {
            cmd.env_remove(name);
        }
        // Its own group: a Ctrl-C meant for the terminal's foreground group is not for it.
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).process_group(0);
        let mut child = cmd.spawn().ok()?;
        let pid = child.id();
        let stdin = child.stdin.take()?;
        let stdout = child.stdout.take()?;
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = waiting.clone();
        let (lines, requests) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("rhaiflow-fork-server-in".into())
            .spawn(move || write_requests(stdin, requests))
            .ok()?;
        std::thread::Builder::new()
            .name("rhaiflow-fork-server".into())
            .spawn(move || read_replies(child, stdout, reader))
            .ok()?;
        Some(ForkServer { pid, lines, waiting })
    }

    /// Queues one request; false when the server is gone.
    fn send(&self, request: &Request) -> bool {
        let Ok(mut line) = serde_json::to_vec(request) else { return false };
        line.push(b'\n');
        self.lines.send(line).is_ok()
    }

    /// Forks a gated supervisor for `spec`. `Err` when the server failed (the caller may start
    /// the supervisor itself).
    pub async fn start_try(self: &Arc<Self>, spec: Spec) -> Result<Forked, String> {
        let (started_tx, started_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        let mut line = serde_json::to_vec(&Request::Start(Box::new(spec))).map_err(|e| e.to_string())?;
        line.push(b'\n');
        {
            // Queued under one lock, so answers come back in the order of `starts`.
            let Ok(mut waiting) = self.waiting.lock() else { return Err("the fork server is gone".into()) };
            if waiting.gone {
                return Err("the fork server is gone".into());
            }
            if self.lines.send(line).is_err() {
                return Err("the fork server is gone".into());
            }
            waiting.starts.push_back((started_tx, ended_tx));
        }
        match tokio::time::timeout(START_TIMEOUT, started_rx).await {
            Ok(Ok(Ok(pid))) => Ok(Forked { pid, server: self.clone(), ended: ended_rx }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("the fork server is gone".into()),
            Err(_) => {
                // Stopped or stuck: kill it (its reader then marks it gone; the next try starts a
                // new one) rather than let every try wait on it.
                // Not reaped until its reader saw it gone, so the pid is still its own.
                if self.waiting.lock().is_ok_and(|w| !w.gone) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                }
                Err("the fork server did not answer".into())
            }
        }
    }

    /// Opens a child's gate with the secrets to mask.
    pub fn release(&self, pid: u32, masks: &[String]) -> bool {
        self.send(&Request::Release { pid, masks: masks.to_vec() })
    }

    /// Closes a child's gate without a go-ahead.
    pub fn close(&self, pid: u32) {
        self.send(&Request::Close { pid });
    }
}

/// The writer thread: writes queued requests to the server until it or its owner is gone.
fn write_requests(mut stdin: ChildStdin, requests: std::sync::mpsc::Receiver<Vec<u8>>) {
    for line in requests {
        if stdin.write_all(&line).is_err() {
            return;
        }
    }
}

/// The reader thread: routes answers to their waiters; when the server's stdout closes, marks it
/// gone (waiters of ends see their sender dropped) and reaps it.
fn read_replies(mut child: Child, stdout: std::process::ChildStdout, waiting: Arc<Mutex<Waiting>>) {
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(reply) = serde_json::from_slice::<Reply>(&line) else { continue };
        let Ok(mut w) = waiting.lock() else { break };
        match reply {
            Reply::Started { started } => {
                if let Some((started_tx, ended_tx)) = w.starts.pop_front() {
                    w.ends.insert(started, ended_tx);
                    let _ = started_tx.send(Ok(started));
                }
            }
            Reply::Failed { failed } => {
                if let Some((started_tx, _)) = w.starts.pop_front() {
                    let _ = started_tx.send(Err(failed));
                }
            }
            Reply::Exited { exited, code, signal } => {
                if let Some(tx) = w.ends.remove(&exited) {
                    let ended = match (code, signal) {
                        (Some(code), _) => Ended::Code(code),
                        (None, Some(signal)) => Ended::Signal(signal),
                        _ => Ended::Code(-1),
                    };
                    let _ = tx.send(ended);
                }
            }
        }
    }
    if let Ok(mut w) = waiting.lock() {
        w.gone = true;
        w.starts.clear();
        w.ends.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
}
