//! Process ownership: every process that runs task instances (`scheduler`, `dags test`,
//! `dags backfill`) registers as a runner with an id, heartbeats, and owns the tries it queues or
//! claims. A successor takes over only what a gone runner left.

use crate::executor::{is_same_process, process_token};
use crate::store::{RunnerRow, Store, StoreResult};
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;
use std::time::Duration;

/// This process, as the store knows it.
#[derive(Debug, Clone)]
pub struct Runner {
    pub id: String,
    pub kind: String,
    pub hostname: String,
    pub pid: u32,
    /// Dropping the last clone (or `stop`) ends the heartbeat thread.
    heartbeat: Option<Arc<HeartbeatStop>>,
}

/// Ends a heartbeat thread when dropped.
#[derive(Debug)]
struct HeartbeatStop(std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>);

impl Runner {
    /// Records this process as a runner of `kind` (`scheduler`, `dags test`, `backfill`).
    pub fn register(store: &Store, kind: &str, hostname: &str, now: DateTime<Utc>) -> StoreResult<Runner> {
        let pid = std::process::id();
        let nanos = now.timestamp_nanos_opt().unwrap_or_default();
        let id = format!("{hostname}:{pid}:{nanos:x}");
        let row = RunnerRow {
            runner_id: id.clone(),
            kind: kind.to_string(),
            hostname: hostname.to_string(),
            pid: i64::from(pid),
            pid_token: process_token(pid),
            started_at: now,
            heartbeat_at: now,
            stopped_at: None,
        };
        store.write(|tx| -> StoreResult<()> {
            tx.insert_runner(&row)?;
            tx.prune_runners(now - TimeDelta::days(1))?;
            Ok(())
        })?;
        Ok(Runner { id, kind: kind.to_string(), hostname: hostname.to_string(), pid, heartbeat: None })
    }

    /// Heartbeats every `every` on a thread of its own, so nothing this process does (a long
    /// start-up, a takeover waiting out a `kill_grace`) can make it look gone.
    pub fn start_heartbeat(&mut self, store: &Store, every: Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (store, id) = (store.clone(), self.id.clone());
        let spawned = std::thread::Builder::new().name("rhaiflow-heartbeat".into()).spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = store.write(|tx| tx.runner_heartbeat(&id, Utc::now())) {
                    tracing::warn!(error = %e, "could not record this process's heartbeat");
                }
            }
        });
        if spawned.is_ok() {
            self.heartbeat = Some(Arc::new(HeartbeatStop(std::sync::Mutex::new(Some(tx)))));
        }
    }

    /// Says this runner is alive. `false` when the store says it stopped (taken over).
    pub fn heartbeat(&self, store: &Store, now: DateTime<Utc>) -> StoreResult<bool> {
        store.write(|tx| tx.runner_heartbeat(&self.id, now))
    }

    /// Marks this runner stopped: whatever it still owns is free for others at once.
    pub fn stop(&self, store: &Store, now: DateTime<Utc>) -> StoreResult<()> {
        if let Some(h) = &self.heartbeat
            && let Ok(mut sender) = h.0.lock()
        {
            sender.take();
        }
        store.write(|tx| tx.stop_runner(&self.id, now))
    }
}

/// How a successor judges whether the runner that owns a try is gone.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// This host's name: a runner on this host is judged by its process, others by heartbeat.
    pub hostname: String,
    /// A runner whose heartbeat is older than this is gone (`[scheduler] task_heartbeat_timeout`).
    pub heartbeat_timeout: TimeDelta,
    pub now: DateTime<Utc>,
}

impl Liveness {
    /// Judges owners from `hostname` at `now`, with a heartbeat timeout (an unrepresentable one
    /// never expires).
    pub fn at(hostname: &str, heartbeat_timeout: Duration, now: DateTime<Utc>) -> Liveness {
        let heartbeat_timeout = TimeDelta::from_std(heartbeat_timeout).unwrap_or(TimeDelta::MAX);
        Liveness { hostname: hostname.to_string(), heartbeat_timeout, now }
    }

    /// Whether `owner` (a runner id, or none recorded) no longer owns anything.
    pub fn is_gone(&self, owner: Option<&str>, runners: &[RunnerRow]) -> bool {
        let Some(owner) = owner else { return true };
        let Some(r) = runners.iter().find(|r| r.runner_id == owner) else { return true };
        if r.stopped_at.is_some() {
            return true;
        }
        if self.now.signed_duration_since(r.heartbeat_at) > self.heartbeat_timeout {
            return true;
        }
        r.hostname == self.hostname
            && !u32::try_from(r.pid).is_ok_and(|pid| is_same_process(pid, r.pid_token.as_deref()))
    }

    /// A short description of a runner for messages: `scheduler (pid 42 on host)`.
    pub fn describe(owner: Option<&str>, runners: &[RunnerRow]) -> String {
        match owner.and_then(|o| runners.iter().find(|r| r.runner_id == o)) {
            Some(r) => format!("{} (pid {} on {})", r.kind, r.pid, r.hostname),
            None => "a process rhaiflow no longer knows".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, host: &str, pid: u32, heartbeat: DateTime<Utc>) -> RunnerRow {
        RunnerRow {
            runner_id: id.into(),
            kind: "scheduler".into(),
            hostname: host.into(),
            pid: i64::from(pid),
            pid_token: process_token(pid),
            started_at: heartbeat,
            heartbeat_at: heartbeat,
            stopped_at: None,
        }
    }

    #[test]
    fn a_runner_is_gone_when_stopped_silent_or_dead_here() {
        let now = Utc::now();
        let l = Liveness { hostname: "here".into(), heartbeat_timeout: TimeDelta::seconds(60), now };
        let me = std::process::id();
        let alive = row("a", "here", me, now);
        assert!(!l.is_gone(Some("a"), std::slice::from_ref(&alive)));
        assert!(l.is_gone(None, std::slice::from_ref(&alive)), "no owner recorded");
        assert!(l.is_gone(Some("b"), std::slice::from_ref(&alive)), "unknown runner");
        let mut stopped = alive.clone();
        stopped.stopped_at = Some(now);
        assert!(l.is_gone(Some("a"), &[stopped]));
        let silent = row("a", "elsewhere", 1, now - TimeDelta::seconds(120));
        assert!(l.is_gone(Some("a"), &[silent]), "heartbeat too old");
        let remote = row("a", "elsewhere", 1, now);
        assert!(!l.is_gone(Some("a"), &[remote]), "another host with a fresh heartbeat is alive");
        let mut dead = alive;
        dead.pid_token = Some("another-boot:1".into());
        assert!(l.is_gone(Some("a"), &[dead]), "a process that is not the recorded one");
    }
}
