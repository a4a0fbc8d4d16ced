//! `LatestOnlyOperator`: its direct downstream tasks run only in the latest scheduled run.
//!
//! As Airflow 2.10: a manual run (`dags trigger`, `dags test`) runs them; otherwise the run is the
//! latest when now falls in the data interval of the run after it (`next_start < now <= next_end`);
//! when the timetable has no run after it, it is the last one and runs them. Not the latest: every
//! direct downstream task is skipped (`Outcome::Branch { follow: [] }`) and the skips propagate by
//! trigger rule.

use super::{Outcome, Start, TaskRun};
use crate::model::{QueuedTask, RunType};
use crate::schedule::{DataInterval, Restriction, Timetable};
use chrono::{DateTime, SecondsFormat, Utc};
use std::sync::Arc;

pub async fn start(run: Arc<TaskRun>) -> Start {
    Start::Later(Box::pin(async move {
        let (line, outcome) = decide(&run.task, Utc::now());
        run.log(&line).await;
        outcome
    }))
}

/// The decision at `now`, with the log line that explains it.
pub fn decide(task: &QueuedTask, now: DateTime<Utc>) -> (String, Outcome) {
    let me = &task.task().task_id;
    let downstream: Vec<String> =
        task.dag.tasks.iter().filter(|t| t.upstream.contains(me)).map(|t| t.task_id.clone()).collect();
    let all = |line: &str| (line.to_string(), Outcome::Branch { follow: downstream.clone(), xcom: None });
    if task.run.run_type == RunType::Manual {
        return all("Externally triggered DAG_Run: allowing execution to proceed.");
    }
    let next = Timetable::new(&task.dag).ok().and_then(|timetable| {
        let interval = DataInterval { start: task.run.data_interval_start, end: task.run.data_interval_end };
        let unrestricted = Restriction { earliest: None, latest: None, catchup: true };
        timetable.next_dagrun_info(Some(interval), unrestricted, task.run.logical_date)
    });
    let Some(next) = next else {
        return all("Last scheduled execution: allowing execution to proceed.");
    };
    let (left, right) = (next.data_interval.start, next.data_interval.end);
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let checking = format!(
        "Checking latest only with left_window: {} right_window: {} now: {}",
        stamp(left),
        stamp(right),
        stamp(now)
    );
    if left < now && now <= right {
        let (_, outcome) = all("");
        (format!("{checking}; latest, allowing execution to proceed."), outcome)
    } else {
        let skipped = if downstream.is_empty() { "nothing".to_string() } else { downstream.join(", ") };
        (
            format!("{checking}; not latest execution, skipping downstream ({skipped})."),
            Outcome::Branch { follow: Vec::new(), xcom: None },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DagSpec, RunInfo, TiKey};
    use chrono::TimeZone;

    fn task(run_type: RunType, logical: DateTime<Utc>) -> QueuedTask {
        let json = serde_json::json!({
            "dag_id": "d", "fileloc": "d.rhai", "description": null,
            "schedule": { "kind": "cron", "expr": "0 0 * * *", "preset": "@daily" },
            "start_date": "2024-01-01T00:00:00Z", "end_date": null, "timezone": "UTC", "catchup": true,
            "tags": [], "max_active_runs": 16, "max_active_tasks": 16, "params": {}, "dagrun_timeout": null,
            "on_failure_callback": null, "on_success_callback": null, "doc_md": null,
            "tasks": [task_json("latest", &[]), task_json("after", &["latest"]), task_json("beside", &[])],
        });
        let dag: DagSpec = serde_json::from_value(json).unwrap();
        QueuedTask {
            key: TiKey { dag_id: "d".into(), run_id: "r".into(), task_id: "latest".into() },
            dag: Arc::new(dag),
            task_index: 0,
            run: RunInfo {
                run_id: "r".into(),
                run_type,
                logical_date: logical,
                data_interval_start: logical,
                data_interval_end: logical + chrono::TimeDelta::days(1),
                conf: serde_json::json!({}),
                version_hash: String::new(),
            },
            try_number: 1,
            max_tries: 0,
        }
    }

    fn task_json(id: &str, upstream: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "task_id": id, "operator": { "type": "LatestOnlyOperator" }, "owner": "o", "retries": 0,
            "retry_delay": 300, "retry_exponential_backoff": false, "max_retry_delay": null,
            "execution_timeout": null, "trigger_rule": "all_success", "depends_on_past": false,
            "pool": "default_pool", "pool_slots": 1, "priority_weight": 1, "queue": "default", "email": [],
            "email_on_failure": true, "email_on_retry": true, "ding_on_failure": false, "ding_on_retry": false,
            "on_failure_callback": null, "on_retry_callback": null, "on_success_callback": null,
            "params": {}, "doc_md": null, "upstream": upstream,
        })
    }

    fn day(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, d, h, 0, 0).unwrap()
    }

    #[test]
    fn only_the_run_whose_next_interval_holds_now_runs_its_downstream() {
        // The run of 03-10 covers [03-10, 03-11]; the next covers [03-11, 03-12].
        let follow = |run_type, now| match decide(&task(run_type, day(10, 0)), now).1 {
            Outcome::Branch { follow, .. } => follow,
            other => panic!("{other:?}"),
        };
        assert_eq!(follow(RunType::Scheduled, day(11, 12)), ["after"], "latest: now in (03-11, 03-12]");
        assert_eq!(follow(RunType::Scheduled, day(12, 0)), ["after"], "the right edge is inside");
        assert!(follow(RunType::Scheduled, day(11, 0)).is_empty(), "the left edge is outside");
        assert!(follow(RunType::Scheduled, day(13, 1)).is_empty(), "a newer run exists");
        assert!(follow(RunType::Backfill, day(20, 0)).is_empty(), "a backfilled old date skips");
        assert_eq!(follow(RunType::Manual, day(20, 0)), ["after"], "manual runs are not skipped");
        let (line, _) = decide(&task(RunType::Scheduled, day(10, 0)), day(20, 0));
        assert!(line.contains("not latest execution, skipping downstream (after)"), "{line}");
    }
}
