//! `BranchOperator` (Airflow's `BranchPythonOperator`) and `ShortCircuitOperator`: a closure
//! decides which downstream tasks run.
//!
//! A branch closure returns a task id or an array of them (`()` or `[]`: none); each must be a
//! direct downstream task. The other direct downstream tasks are skipped in the same transaction
//! as the branch's success and the skips propagate by trigger rule. A short-circuit closure's
//! value is tested as Python tests truth (`false`, `()`, `0`, `""`, `[]`, `#{}` are false):
//! true succeeds with the value as XCom; false skips every task downstream whatever its trigger
//! rule (`ignore_downstream_trigger_rules: true`, Airflow's default) or only the direct
//! downstream tasks, leaving the rest to their trigger rules (`false`).

use super::closure::{self, context};
use super::{Outcome, Start, TaskRun};
use crate::model::Operator;
use std::sync::Arc;

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::BranchOperator { callable } = &run.task.task().operator else {
        return Start::Done(Outcome::fail("not a BranchOperator"));
    };
    let callable = callable.clone();
    Start::Later(Box::pin(async move {
        let value = match closure::call(&run, &callable, vec![context(&run)]).await {
            Ok(v) => v,
            Err(failure) => return Outcome::fail(failure.to_string()),
        };
        let follow = match chosen(&value) {
            Some(ids) => ids,
            None => {
                return Outcome::fail(format!(
                    "the branch closure returned {value}; it must return a task id, an array of task ids, or ()"
                ));
            }
        };
        let me = &run.task.key.task_id;
        let direct: Vec<&str> =
            run.task.dag.tasks.iter().filter(|t| t.upstream.contains(me)).map(|t| t.task_id.as_str()).collect();
        let unknown: Vec<&String> = follow.iter().filter(|id| !direct.contains(&id.as_str())).collect();
        if let Some(first) = unknown.first() {
            let valid =
                if direct.is_empty() { "it has none".to_string() } else { format!("they are {}", direct.join(", ")) };
            let mut message = format!(
                "the branch closure returned `{first}`, which is not a direct downstream task of `{me}`; {valid}"
            );
            if let Some(near) = crate::model::suggest::nearest(first, &direct) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            return Outcome::fail(message);
        }
        let skipped: Vec<&str> = direct.iter().copied().filter(|d| !follow.iter().any(|f| f == d)).collect();
        run.log(&format!(
            "Branch into {}; skipping {}",
            if follow.is_empty() { "nothing".into() } else { follow.join(", ") },
            if skipped.is_empty() { "nothing".into() } else { skipped.join(", ") }
        ))
        .await;
        let xcom = (!value.is_null()).then_some(value);
        Outcome::Branch { follow, xcom }
    }))
}

/// The task ids a branch closure chose.
fn chosen(value: &serde_json::Value) -> Option<Vec<String>> {
    match value {
        serde_json::Value::Null => Some(Vec::new()),
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// Python's truth of a value.
fn truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

pub async fn start_short_circuit(run: Arc<TaskRun>) -> Start {
    let Operator::ShortCircuitOperator { callable, ignore_downstream_trigger_rules } = &run.task.task().operator else {
        return Start::Done(Outcome::fail("not a ShortCircuitOperator"));
    };
    let (callable, ignore) = (callable.clone(), *ignore_downstream_trigger_rules);
    Start::Later(Box::pin(async move {
        let value = match closure::call(&run, &callable, vec![context(&run)]).await {
            Ok(v) => v,
            Err(failure) => return Outcome::fail(failure.to_string()),
        };
        let xcom = (!value.is_null()).then(|| value.clone());
        if truthy(&value) {
            run.log(&format!("Condition result is {value}; proceeding with downstream tasks")).await;
            return Outcome::Success { xcom };
        }
        if ignore {
            run.log(&format!("Condition result is {value}; skipping all downstream tasks")).await;
            Outcome::SkipDownstream { xcom }
        } else {
            run.log(&format!(
                "Condition result is {value}; skipping the direct downstream tasks (their downstream follow trigger rules)"
            ))
            .await;
            Outcome::Branch { follow: Vec::new(), xcom }
        }
    }))
}
