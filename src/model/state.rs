//! Task instance and DAG run states, and the one function that decides task state transitions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(TaskState {
    None = "none",
    Scheduled = "scheduled",
    Queued = "queued",
    Running = "running",
    // Cleared while running (`tasks clear`): its owner kills the try and it runs again at once.
    Restarting = "restarting",
    Success = "success",
    Failed = "failed",
    UpForRetry = "up_for_retry",
    UpForReschedule = "up_for_reschedule",
    UpstreamFailed = "upstream_failed",
    Skipped = "skipped",
    Removed = "removed",
});

string_enum!(DagRunState {
    Queued = "queued",
    Running = "running",
    Success = "success",
    Failed = "failed",
});

string_enum!(RunType {
    Scheduled = "scheduled",
    Manual = "manual",
    Backfill = "backfill",
});

impl TaskState {
    /// A state the task instance will not leave without being cleared.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::UpstreamFailed
                | TaskState::Skipped
                | TaskState::Removed
        )
    }
}

impl DagRunState {
    pub fn is_finished(self) -> bool {
        matches!(self, DagRunState::Success | DagRunState::Failed)
    }
}

impl RunType {
    /// The `run_id` prefix Airflow uses: `scheduled__2024-01-01T00:00:00+00:00`.
    pub fn run_id_prefix(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
        }
    }
}

/// What happens to a task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TiEvent {
    /// Its trigger rule is met: it may be queued.
    Schedule,
    /// A slot was found: hand it to the executor.
    Queue,
    /// The executor started it.
    Start,
    Succeed,
    /// It failed; `can_retry` when tries are left.
    Fail {
        can_retry: bool,
    },
    /// Skipped by exit code 99, a branch, a short circuit, or its trigger rule.
    Skip,
    /// Its trigger rule can no longer be met because upstreams failed.
    UpstreamFailed,
    /// A sensor in reschedule mode gave back its slot.
    Reschedule,
    /// The retry delay or reschedule interval passed.
    Wake,
    /// `tasks clear`: run it again (a running try is stopped first: `restarting`).
    Clear,
    /// The stopped try of a `restarting` task instance is gone: it runs again at once, as a retry
    /// that does not count against `retries`.
    Restart,
    /// The task is gone from the pinned DAG version.
    Remove,
    /// An operator with nothing to run (`EmptyOperator`) succeeds as soon as it is ready.
    Noop,
    /// Its owner is gone before it started: it goes back to be queued again.
    Requeue,
}

/// The one state machine of task instances: `Some(next)` when `event` is allowed in `from`.
pub fn transition(from: TaskState, event: TiEvent) -> Option<TaskState> {
    use TaskState as S;
    use TiEvent as E;
    let next = match (from, event) {
        (S::None | S::Scheduled, E::Schedule) => S::Scheduled,
        (S::Scheduled, E::Queue) => S::Queued,
        (S::Queued, E::Start) => S::Running,
        (S::Running, E::Succeed) => S::Success,
        (S::Running | S::Queued, E::Fail { can_retry: true }) => S::UpForRetry,
        (S::Running | S::Queued, E::Fail { can_retry: false }) => S::Failed,
        (S::None | S::Scheduled | S::Queued | S::Running | S::UpForRetry | S::UpForReschedule, E::Skip) => S::Skipped,
        (S::Queued, E::Requeue) => S::Scheduled,
        (S::None | S::Scheduled, E::UpstreamFailed) => S::UpstreamFailed,
        (S::Running, E::Reschedule) => S::UpForReschedule,
        (S::UpForRetry | S::UpForReschedule, E::Wake) => S::Scheduled,
        (S::Running | S::Restarting, E::Clear) => S::Restarting,
        (S::Restarting, E::Restart) => S::UpForRetry,
        (_, E::Clear) => S::None,
        (S::None | S::Scheduled, E::Noop) => S::Success,
        (s, E::Remove) if !s.is_finished() || s == S::Removed => S::Removed,
        _ => return None,
    };
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), *s);
        }
    }

    #[test]
    fn a_failure_with_tries_left_waits_for_retry_then_runs_again() {
        let s = transition(TaskState::Running, TiEvent::Fail { can_retry: true }).unwrap();
        assert_eq!(s, TaskState::UpForRetry);
        assert_eq!(transition(s, TiEvent::Wake), Some(TaskState::Scheduled));
        assert_eq!(transition(TaskState::Running, TiEvent::Fail { can_retry: false }), Some(TaskState::Failed));
    }

    #[test]
    fn a_running_try_cleared_restarts_as_a_retry() {
        assert_eq!(transition(TaskState::Running, TiEvent::Clear), Some(TaskState::Restarting));
        assert_eq!(transition(TaskState::Restarting, TiEvent::Clear), Some(TaskState::Restarting));
        assert_eq!(transition(TaskState::Restarting, TiEvent::Restart), Some(TaskState::UpForRetry));
        assert_eq!(transition(TaskState::Running, TiEvent::Restart), None);
        assert!(!TaskState::Restarting.is_finished());
    }

    #[test]
    fn finished_task_instances_only_leave_by_clear() {
        for event in [TiEvent::Schedule, TiEvent::Queue, TiEvent::Start, TiEvent::Succeed, TiEvent::Wake] {
            assert_eq!(transition(TaskState::Success, event), None);
        }
        assert_eq!(transition(TaskState::Failed, TiEvent::Clear), Some(TaskState::None));
    }
}
