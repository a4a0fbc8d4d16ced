//! The sensor framework: Airflow's `BaseSensorOperator` around a poke function.
//!
//! A sensor module writes only its poke (what to look at, once) and hands it to [`start`]; this
//! module does the rest as Airflow 2.10 does: `poke_interval`, `timeout` counted from the try's
//! first poke (across reschedules: the store's `task_reschedule` rows of the try), `exponential_backoff`
//! (jittered doubling, capped by `max_wait` and by what is left of `timeout`), `soft_fail` (a timeout
//! skips instead of failing), `mode: "poke"` (a loop inside the claimed try, holding its slot) and
//! `mode: "reschedule"` (one poke per claim; not done is [`Outcome::Reschedule`], which
//! `worker::finish` turns into `up_for_reschedule` with the next poke time as `next_try_at`, and the
//! scheduler's timer wakes it then).

use super::{Outcome, Start, TaskRun};
use crate::model::{Operator, SensorMode, SensorSpec, TimeSpan};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;

/// What one poke found.
#[derive(Debug, Clone, PartialEq)]
pub enum Poke {
    /// The condition holds: the task succeeds, `xcom` (if any) is its `return_value` (Airflow's
    /// `PokeReturnValue(is_done=True, xcom_value=...)`).
    Done { xcom: Option<serde_json::Value> },
    /// Not yet: poke again after the poke interval (or the backoff's).
    NotYet,
    /// Not yet, and nothing can change before `at` (a time sensor's target): the next poke is
    /// then, not a poke interval later; in reschedule mode the scheduler's timer wakes it at `at`.
    NotBefore(DateTime<Utc>),
    /// An error: the try fails at once (its retries apply), whatever `soft_fail` says, as an
    /// exception in Airflow's `poke` does.
    Fail(String),
    /// A definite failure (Airflow's `AirflowFailException` from `poke`: a `BashSensor`'s exit code
    /// other than 0 and 1): the try fails at once, or with `soft_fail` is skipped.
    Fatal(String),
    /// Skip the task at once (Airflow's `AirflowSkipException` from `poke`).
    Skip(String),
}

/// Starts a sensor's try: the pokes run once the try is claimed (`Start::Later`), under the
/// task's `SensorSpec` (its `poke_interval`, `timeout`, `mode`, `soft_fail`, `exponential_backoff`,
/// `max_wait`).
///
/// `poke` is called once per poke with the try (`run.ctx` for templates, `run.log(..)` for a line
/// in the try's log, `run.env` for settings, store and HTTP client) and answers a [`Poke`]. It is
/// called again after each `NotYet` in poke mode, and once per claim in reschedule mode. A sensor
/// module's runner is then one line:
///
/// ```ignore
/// pub async fn start(run: Arc<TaskRun>) -> Start {
///     sensor::start(run, |run| async move { poke(&run).await })
/// }
/// ```
pub fn start<P, F>(run: Arc<TaskRun>, poke: P) -> Start
where
    P: FnMut(Arc<TaskRun>) -> F + Send + 'static,
    F: Future<Output = Poke> + Send + 'static,
{
    Start::Later(Box::pin(sense(run, poke)))
}

/// The sensor's spec, or `None` when the task is not a sensor (a bug in the runner table).
pub fn spec(run: &TaskRun) -> Option<&SensorSpec> {
    match &run.task.task().operator {
        Operator::Sensor(spec) => Some(spec),
        _ => None,
    }
}

/// Pokes until done, failed, skipped, timed out or (reschedule mode) not done on this claim.
pub async fn sense<P, F>(run: Arc<TaskRun>, mut poke: P) -> Outcome
where
    P: FnMut(Arc<TaskRun>) -> F + Send + 'static,
    F: Future<Output = Poke> + Send + 'static,
{
    let Some(spec) = spec(&run).cloned() else {
        return Outcome::fail(format!("task `{}` is not a sensor", run.task.key.task_id));
    };
    let (first_poke, mut pokes) = match spec.mode {
        SensorMode::Poke => (Utc::now(), 0),
        SensorMode::Reschedule => match earlier_pokes(&run).await {
            Ok(Some((first, n))) => (first, n),
            Ok(None) => (Utc::now(), 0),
            Err(reason) => return Outcome::fail(reason),
        },
    };
    let deadline = first_poke.checked_add_signed(spec.timeout.as_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC);
    loop {
        pokes += 1;
        let hint = match poke(run.clone()).await {
            Poke::Done { xcom } => {
                run.log("Success criteria met. Exiting.").await;
                return Outcome::Success { xcom };
            }
            Poke::Fail(reason) => return Outcome::fail(reason),
            Poke::Fatal(reason) if spec.soft_fail => {
                return Outcome::Skip { reason: format!("{reason} (skipping due to soft_fail is set to True)") };
            }
            Poke::Fatal(reason) => return Outcome::fail(reason),
            Poke::Skip(reason) => return Outcome::Skip { reason },
            Poke::NotYet => None,
            Poke::NotBefore(at) => Some(at),
        };
        let now = Utc::now();
        if now >= deadline {
            let ran = (now - first_poke).num_milliseconds() as f64 / 1000.0;
            let message = format!(
                "Sensor has timed out; run duration of {ran} seconds exceeds the specified timeout of {}",
                spec.timeout.as_secs_f64()
            );
            // As Airflow's `AirflowSensorTimeout`: the task fails, however many retries it has left.
            return if spec.soft_fail {
                Outcome::Skip { reason: message }
            } else {
                Outcome::Fail { reason: message, final_try: true }
            };
        }
        let next = match hint {
            Some(at) => at.max(now),
            None => {
                let key = &run.task.key;
                let seed = format!("{}#{}#{}#{pokes}", key.dag_id, key.task_id, first_poke.to_rfc3339());
                let wait = next_interval(&spec, pokes, &seed, deadline - now);
                if spec.exponential_backoff {
                    run.log(&format!("new {} interval is {wait}", mode_name(spec.mode))).await;
                }
                now.checked_add_signed(wait.as_chrono()).unwrap_or(deadline)
            }
        }
        .min(deadline);
        match spec.mode {
            SensorMode::Reschedule => return Outcome::Reschedule { at: next },
            SensorMode::Poke => {
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn mode_name(mode: SensorMode) -> &'static str {
    match mode {
        SensorMode::Poke => "poke",
        SensorMode::Reschedule => "reschedule",
    }
}

/// The first poke time of this try and how many pokes it made before this claim (reschedule
/// mode), from the store's `task_reschedule` rows; `None` on the try's first claim or without a store.
async fn earlier_pokes(run: &TaskRun) -> Result<Option<(DateTime<Utc>, u32)>, String> {
    let Some(store) = run.env.store.clone() else { return Ok(None) };
    let (key, try_number) = (run.task.key.clone(), run.task.try_number);
    store
        .read_async(move |tx| tx.task_reschedules(&key, try_number))
        .await
        .map_err(|e| format!("could not read the sensor's earlier pokes: {e}"))
}

/// The wait before poke number `pokes + 1`: `poke_interval`, or with `exponential_backoff`
/// Airflow's: `max(⌊poke_interval · 2^(pokes−2)⌋ s, 1 s)` plus a jitter below that (a hash of
/// `seed`, so the same poke waits the same), capped by `max_wait` and by `left` (what remains of
/// `timeout`).
pub fn next_interval(spec: &SensorSpec, pokes: u32, seed: &str, left: chrono::TimeDelta) -> TimeSpan {
    if !spec.exponential_backoff {
        return spec.poke_interval;
    }
    let exponent = i32::try_from(pokes).unwrap_or(i32::MAX).saturating_sub(2).min(64);
    let min_backoff = (spec.poke_interval.as_secs_f64() * 2f64.powi(exponent)).floor().max(1.0);
    let min_backoff = min_backoff.min(TimeSpan::MAX.as_secs_f64());
    let jitter = (fnv1a(seed) % (min_backoff as u64).max(1)) as f64;
    let mut wait = TimeSpan::checked_from_secs_f64(min_backoff + jitter).unwrap_or(TimeSpan::MAX);
    if let Some(max_wait) = spec.max_wait {
        wait = wait.min(max_wait);
    }
    let left = TimeSpan::from_millis(u64::try_from(left.num_milliseconds()).unwrap_or(0));
    wait.min(left)
}

/// A stable 64-bit hash (FNV-1a): the backoff's jitter must not change between runs of rhaiflow.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The time now or later than `at`: how a time sensor reads its target against the clock.
pub fn reached(at: DateTime<Utc>) -> Poke {
    if Utc::now() >= at { Poke::Done { xcom: None } } else { Poke::NotBefore(at) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SensorKind;

    fn spec(backoff: bool, interval: u64, max_wait: Option<u64>) -> SensorSpec {
        SensorSpec {
            kind: SensorKind::TimeDelta { delta: TimeSpan::ZERO },
            poke_interval: TimeSpan::from_secs(interval),
            timeout: TimeSpan::from_secs(86_400),
            mode: SensorMode::Poke,
            soft_fail: false,
            exponential_backoff: backoff,
            max_wait: max_wait.map(TimeSpan::from_secs),
        }
    }

    #[test]
    fn without_backoff_the_interval_is_the_poke_interval() {
        let s = spec(false, 30, None);
        for n in 1..10 {
            assert_eq!(next_interval(&s, n, "x", chrono::TimeDelta::days(1)), TimeSpan::from_secs(30));
        }
    }

    #[test]
    fn backoff_grows_within_its_bounds_and_is_capped() {
        let s = spec(true, 10, None);
        let left = chrono::TimeDelta::days(1);
        for n in 2..8u32 {
            let base = 10u64 << (n - 2);
            let wait = next_interval(&s, n, &format!("seed{n}"), left).as_millis() / 1000;
            assert!((base..2 * base).contains(&wait), "poke {n}: {wait} not in [{base}, {})", 2 * base);
        }
        assert_eq!(next_interval(&s, 5, "a", left), next_interval(&s, 5, "a", left));
        let capped = spec(true, 10, Some(25));
        assert_eq!(next_interval(&capped, 9, "b", left), TimeSpan::from_secs(25));
        assert_eq!(next_interval(&s, 40, "c", chrono::TimeDelta::seconds(7)), TimeSpan::from_secs(7));
        // The first poke's wait is never below one second, even for a tiny interval.
        assert!(next_interval(&spec(true, 0, None), 1, "d", left) >= TimeSpan::from_secs(1));
    }
}
