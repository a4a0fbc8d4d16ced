//! Watching the dags folder (inotify through `notify`), recursively, with a debounce: a burst of
//! events (an editor's write + rename, a `git checkout` of hundreds of files) becomes one rescan
//! once the folder has been quiet for [`QUIET`] (at most [`MAX_DELAY`] after the first event).
//! Events can be lost (an inotify queue overflow, a folder moved in), so the owner also rescans on
//! a timer; the rescan, not the event, decides what changed.

use notify::{EventKind, RecursiveMode, Watcher};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

/// How long the folder must be quiet before a burst of events is one rescan.
pub const QUIET: Duration = Duration::from_millis(40);
/// A folder that never goes quiet is still rescanned this often.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

enum Message {
    Changed,
    Stop,
}

/// Stops a [`FolderWatch`]'s `wait` from another thread.
#[derive(Clone)]
pub struct Stopper(Sender<Message>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Message::Stop);
    }
}

/// Whether an event on `path` can change what the folder declares: a `*.rhai` file (saved, moved,
/// deleted), an ignore file, or a folder (moved in or out); not a log, swap or temporary file
/// that exists as a regular file with another name.
fn matters(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == super::IGNORE_FILE || name == ".airflowignore" || path.extension().is_some_and(|e| e == "rhai") {
        return true;
    }
    // Gone (a folder moved out, or a file deleted: its kind is unknown now) or a folder.
    std::fs::symlink_metadata(path).map_or(true, |m| m.is_dir())
}

/// What [`FolderWatch::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something in the folder changed (the burst is over).
    Changed,
    /// Nothing within the timeout: time for the periodic rescan.
    Timeout,
    /// `Stopper::stop` was called.
    Stop,
}

pub struct FolderWatch {
    /// `None` when the folder cannot be watched (then only the timer rescans).
    _watcher: Option<notify::RecommendedWatcher>,
    rx: Receiver<Message>,
    tx: Sender<Message>,
}

impl FolderWatch {
    /// Starts watching `folder`; when the system refuses (no inotify instances left, say), the
    /// watch still works on its timer alone and the reason is returned.
    pub fn start(folder: &Path) -> (FolderWatch, Option<String>) {
        let (tx, rx) = channel();
        match watcher(folder, tx.clone()) {
            Ok(w) => (FolderWatch { _watcher: Some(w), rx, tx }, None),
            Err(e) => (FolderWatch { _watcher: None, rx, tx }, Some(e.to_string())),
        }
    }

    /// Watches `folder` again (it was replaced: moved away and made anew, or it reappeared).
    pub fn rewatch(&mut self, folder: &Path) -> Option<String> {
        self._watcher = None;
        match watcher(folder, self.tx.clone()) {
            Ok(w) => {
                self._watcher = Some(w);
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Waits up to `timeout` for a change, then for the burst to end.
    pub fn wait(&self, timeout: Duration) -> Wake {
        match self.rx.recv_timeout(timeout) {
            Ok(Message::Changed) => {}
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return Wake::Stop,
            Err(RecvTimeoutError::Timeout) => return Wake::Timeout,
        }
        let first = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            if left.is_zero() {
                return Wake::Changed;
            }
            match self.rx.recv_timeout(QUIET.min(left)) {
                Ok(Message::Changed) => {}
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return Wake::Stop,
                Err(RecvTimeoutError::Timeout) => return Wake::Changed,
            }
        }
    }
}

/// The folder's identity (device, inode): a folder moved away and made anew is another one.
pub fn identity(folder: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(folder).ok().map(|m| (m.dev(), m.ino()))
}

/// An inotify watch of `folder` and everything under it, feeding `tx`.
fn watcher(folder: &Path, tx: Sender<Message>) -> notify::Result<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // An error (a queue overflow) means events were lost: rescan.
        let relevant =
            event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)) && e.paths.iter().any(|p| matters(p)));
        if relevant {
            let _ = tx.send(Message::Changed);
        }
    };
    // Symlinked folders are not followed: the scan does not descend into them either, and one
    // pointing at `/` would put a watch on every folder of the machine.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut w = notify::RecommendedWatcher::new(handler, config)?;
    w.watch(folder, RecursiveMode::Recursive)?;
    Ok(w)
}
