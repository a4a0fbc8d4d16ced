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
        let events = tx.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // An error (a queue overflow) means events were lost: rescan.
            let relevant = event.map_or(true, |e| !matches!(e.kind, EventKind::Access(_)));
            if relevant {
                let _ = events.send(Message::Changed);
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(folder, RecursiveMode::Recursive)?;
            Ok(w)
        });
        match watched {
            Ok(w) => (FolderWatch { _watcher: Some(w), rx, tx }, None),
            Err(e) => (FolderWatch { _watcher: None, rx, tx }, Some(e.to_string())),
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
