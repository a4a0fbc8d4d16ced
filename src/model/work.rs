//! What flows between the scheduler, the worker and the app: task instances to run, and events.

use super::{DagSpec, RunType, TaskSpec, TaskState, TimeSpan};
use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};
use std::sync::Arc;

/// Identifies a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TiKey {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
}

impl std::fmt::Display for TiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} ({})", self.dag_id, self.task_id, self.run_id)
    }
}

/// The run a task instance belongs to, as templates and context variables see it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: serde_json::Value,
    /// The DAG version the run is pinned to (its closures come from that version's file).
    pub version_hash: String,
}

/// A task instance the scheduler has queued, with the pinned DAG version it runs from.
#[derive(Debug, Clone)]
pub struct QueuedTask {
    pub key: TiKey,
    pub dag: Arc<DagSpec>,
    pub task_index: usize,
    pub run: RunInfo,
    /// The try this run will be (the stored try number plus one).
    pub try_number: u32,
    pub max_tries: u32,
}

impl QueuedTask {
    pub fn task(&self) -> &TaskSpec {
        &self.dag.tasks[self.task_index]
    }
}

/// What wakes the scheduler.
#[derive(Debug, Clone)]
pub enum Event {
    /// A task instance reached a state (written to the store before this is sent).
    TaskFinished { key: TiKey, state: TaskState, try_number: u32, duration: f64 },
    /// A task instance started (for live progress).
    TaskStarted { key: TiKey, try_number: u32 },
    /// Another process changed the store (a trigger, a clear, a pause).
    Wake,
    /// Stop starting new work.
    Shutdown,
}

/// Airflow's retry delay: `retry_delay`, or with `retry_exponential_backoff` the doubling delay with a
/// deterministic per-try jitter, capped by `max_retry_delay`. `try_number` is the try that failed.
pub fn retry_delay(task: &TaskSpec, dag_id: &str, logical_date: DateTime<Utc>, try_number: u32) -> TimeSpan {
    let base = task.retry_delay;
    let delay = if task.retry_exponential_backoff {
        let exponent = try_number.saturating_sub(1).min(30);
        let min_backoff = (base.as_secs_f64() * f64::from(2u32.pow(exponent))).ceil().max(1.0) as u64;
        let seed = format!("{dag_id}#{}#{}#{try_number}", task.task_id, logical_date.to_rfc3339());
        let digest = Sha1::digest(seed.as_bytes());
        let hash = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        TimeSpan::from_secs(min_backoff + hash % min_backoff)
    } else {
        base
    };
    match task.max_retry_delay {
        Some(max) if task.retry_exponential_backoff => delay.min(max),
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operator, TriggerRule};
    use chrono::TimeZone;

    fn task(backoff: bool, max: Option<TimeSpan>) -> TaskSpec {
        TaskSpec {
            task_id: "t".into(),
            operator: Operator::EmptyOperator,
            owner: "o".into(),
            retries: 5,
            retry_delay: TimeSpan::from_secs(60),
            retry_exponential_backoff: backoff,
            max_retry_delay: max,
            execution_timeout: None,
            trigger_rule: TriggerRule::AllSuccess,
            depends_on_past: false,
            pool: "default_pool".into(),
            pool_slots: 1,
            priority_weight: 1,
            weight_rule: Default::default(),
            queue: "default".into(),
            email: vec![],
            email_on_failure: true,
            email_on_retry: true,
            ding_on_failure: false,
            ding_on_retry: false,
            alert_on_failure: vec![],
            alert_on_retry: vec![],
            alert_on_success: vec![],
            on_failure_callback: None,
            on_retry_callback: None,
            on_success_callback: None,
            params: Default::default(),
            doc_md: None,
            upstream: vec![],
            task_group: None,
        }
    }

    #[test]
    fn retry_delay_follows_airflow() {
        let at = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(retry_delay(&task(false, None), "d", at, 3), TimeSpan::from_secs(60));
        // Backoff: between 60·2^(n-1) and twice that, deterministic for the same try.
        for n in 1..=4u32 {
            let d = retry_delay(&task(true, None), "d", at, n).as_millis() / 1000;
            let floor = 60 * 2u64.pow(n - 1);
            assert!((floor..2 * floor).contains(&d), "try {n}: {d}s");
            assert_eq!(retry_delay(&task(true, None), "d", at, n).as_millis() / 1000, d);
        }
        let capped = retry_delay(&task(true, Some(TimeSpan::from_secs(90))), "d", at, 4);
        assert_eq!(capped, TimeSpan::from_secs(90));
    }
}
