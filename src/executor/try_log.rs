//! A try's log as the worker writes it for work done inside this process (closures, HTTP calls,
//! sensors' pokes): kept in memory while the try is short and small, then written to the store with
//! the try's outcome; the usual file once it runs long, grows, or hands the log to a process.
//!
//! Creating a log file and its folder costs more on a real disk than a quick in-process try (about
//! 0.5 ms on the benchmark machine, against tens of microseconds for the try), so the tens of
//! thousands of quick tries a wide run makes would be bound by the file system. A try that is still
//! running after [`SPILL_AFTER`] is written to its file (and from then on appends to it) so a running
//! try can be followed as before; readers show the stored text, then the file's.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A try still running after this is written to its file.
pub const SPILL_AFTER: Duration = Duration::from_secs(1);
/// A try's text kept in memory at most; more goes to its file.
pub const SPILL_BYTES: usize = 64 << 10;

pub struct TryLog {
    path: PathBuf,
    state: Mutex<State>,
}

enum State {
    /// Lines not written anywhere yet.
    Memory(String),
    /// Lines go to the file.
    File,
}

impl TryLog {
    /// A log written to its file from the first line (a process writes to it too).
    pub fn file(path: PathBuf) -> TryLog {
        TryLog { path, state: Mutex::new(State::File) }
    }

    /// A log kept in memory until it spills; a try whose file exists already (an earlier poke of a
    /// sensor spilled) keeps appending to that file, so its text stays in order.
    pub fn buffered(path: PathBuf) -> TryLog {
        let state = if path.exists() { State::File } else { State::Memory(String::new()) };
        TryLog { path, state: Mutex::new(state) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends lines, each stamped with the time.
    pub async fn line(&self, text: &str) {
        let stamped = stamp_lines(text);
        {
            let Ok(mut state) = self.state.lock() else { return };
            if let State::Memory(buffer) = &mut *state {
                if buffer.len() + stamped.len() <= SPILL_BYTES {
                    buffer.push_str(&stamped);
                    return;
                }
                let mut all = std::mem::take(buffer);
                all.push_str(&stamped);
                *state = State::File;
                // Under the lock, so no later line overtakes the spilled ones.
                append(&self.path, &all);
                return;
            }
        }
        append(&self.path, &stamped);
    }

    /// Writes what is held in memory to the file; later lines go there too.
    pub fn spill(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        if let State::Memory(buffer) = &mut *state {
            let all = std::mem::take(buffer);
            *state = State::File;
            append(&self.path, &all);
        }
    }

    /// The text held in memory, for the store (`None`: it is in the file); later lines go to the file.
    pub fn take(&self) -> Option<String> {
        let Ok(mut state) = self.state.lock() else { return None };
        match std::mem::replace(&mut *state, State::File) {
            State::Memory(buffer) => Some(buffer),
            State::File => None,
        }
    }
}

/// `text`'s lines, each stamped with the time and ended with a newline.
pub fn stamp_lines(text: &str) -> String {
    let stamp = super::capture::stamp();
    text.lines().map(|line| format!("{stamp}{line}\n")).collect()
}

/// Appends already stamped text to a log file, creating it and its folders private.
pub fn append(path: &Path, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = super::create_private_dirs(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A try's whole log: the text the store kept (`stored`), then its file's; `None` when neither exists.
pub fn read_whole(stored: Option<String>, path: &Path) -> std::io::Result<Option<String>> {
    let file = match std::fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(match (stored, file) {
        (None, None) => None,
        (a, b) => Some(format!("{}{}", a.unwrap_or_default(), b.unwrap_or_default())),
    })
}
