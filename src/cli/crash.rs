//! The last line of defence: a panic anywhere becomes one line on stderr,
//! "rhaiflow: internal error (a bug): MESSAGE at FILE:LINE:COLUMN", and exit code 2.
//!
//! A panic on the main thread, or one that propagates to it (rayon and scoped threads re-raise it),
//! unwinds to [`guard`], which prints it. A panic inside tokio (a task, a blocking call, or
//! `block_on`) would be kept in a `JoinHandle` nobody may read, leaving the process waiting for
//! ever, so the hook ends the process there at once. Anywhere else the hook only records the
//! report: code that catches panics on purpose (DAG file evaluation turns one into that file's
//! error) keeps working, and prints nothing here.
//!
//! Printing to a closed pipe is no bug: the process exits with 141, as if killed by SIGPIPE,
//! saying nothing.

use super::EXIT_ERROR;
use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Mutex;

/// The report of the latest panic, for [`guard`] to print if it reaches the main thread.
static LAST: Mutex<Option<String>> = Mutex::new(None);

const PREFIX: &str = "rhaiflow: internal error (a bug)";

/// 128 + SIGPIPE: what a shell shows for a process killed by SIGPIPE.
pub const EXIT_CLOSED_STDOUT: i32 = 141;

/// Replaces the default panic message (a backtrace hint aimed at Rust developers) with ours.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        if is_closed_stdout(info.payload()) {
            // `rhaiflow dags list | head -1`: the reader left, which is no bug. Exit as a process
            // killed by SIGPIPE shows in a shell, saying nothing.
            std::process::exit(EXIT_CLOSED_STDOUT);
        }
        let report = report(info);
        // Inside tokio a panic would leave the process waiting for ever, unless the code around it
        // catches it (a task's run fails the try; a store call becomes an error).
        if tokio::runtime::Handle::try_current().is_ok() && !crate::model::caught::is_caught() {
            say(&report);
            std::process::exit(EXIT_ERROR);
        }
        *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }));
}

/// Runs `body`; a panic that unwinds out of it is printed and becomes exit code 2.
pub fn guard(body: impl FnOnce() -> i32) -> i32 {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) => {
            let recorded = LAST.lock().unwrap_or_else(|e| e.into_inner()).take();
            let report = recorded.unwrap_or_else(|| format!("{} at an unknown place", message(payload.as_ref())));
            say(&report);
            EXIT_ERROR
        }
    }
}

/// Writes the report to stderr; a closed stderr is ignored (`eprintln!` would panic inside the hook).
fn say(report: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{PREFIX}: {report}");
}

fn report(info: &PanicHookInfo<'_>) -> String {
    let place = info.location().map(|l| l.to_string()).unwrap_or_else(|| "an unknown place".into());
    let mut report = format!("{} at {place}", message(info.payload()));
    // `RUST_BACKTRACE=1` still gets a backtrace, for whoever fixes the bug.
    let trace = Backtrace::capture();
    if trace.status() == BacktraceStatus::Captured {
        report.push_str(&format!("\n{trace}"));
    }
    report
}

/// `println!` (and `eprintln!`) panic when stdout (stderr) is a pipe whose reader has gone (Rust
/// ignores SIGPIPE): `rhaiflow dags list 2>&1 | head -1` too.
fn is_closed_stdout(payload: &(dyn Any + Send)) -> bool {
    let text = message(payload);
    (text.starts_with("failed printing to stdout") || text.starts_with("failed printing to stderr"))
        && text.contains("Broken pipe")
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Where `rhaiflow __panic` panics: the hidden command the tests use to drive the hook, because
/// no real input is known to panic any more (each one found became a test of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Place {
    /// The main thread.
    Main,
    /// A rayon thread, as DAG files are evaluated on: rayon re-raises the panic on the main thread.
    Thread,
    /// A spawned tokio task while the main thread waits on a channel the task holds.
    Task,
}

pub fn panic_on_purpose(place: Place) -> i32 {
    match place {
        Place::Main => panic!("`rhaiflow __panic` on the main thread"),
        Place::Thread => {
            let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(1).build() else { return EXIT_ERROR };
            pool.install(|| panic!("`rhaiflow __panic` on a rayon thread"))
        }
        Place::Task => {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build() else {
                return EXIT_ERROR;
            };
            runtime.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
                let held = tx.clone();
                tokio::spawn(async move {
                    let _held = held;
                    panic!("`rhaiflow __panic` in a tokio task");
                });
                // Without the hook this waits for ever: `tx` is alive and the task is gone.
                let _ = rx.recv().await;
                drop(tx);
                0
            })
        }
    }
}
