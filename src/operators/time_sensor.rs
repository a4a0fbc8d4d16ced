//! `TimeDeltaSensor` (done once `data_interval_end + delta` has passed, as Airflow's) and
//! `DateTimeSensor` (done once the rendered `target_time` has passed). Each answers
//! `Poke::NotBefore(target)`, so the next poke is at the target: a rescheduled one holds no slot and
//! the scheduler's timer wakes it then.

use super::sensor;
use super::{Outcome, Start, TaskRun};
use crate::executor::template::render;
use crate::model::{Operator, SensorKind};
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::Sensor(s) => match &s.kind {
            SensorKind::DateTime { target_time } => vec![target_time.as_str()],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let target = match sensor::spec(&run).map(|s| &s.kind) {
        Some(SensorKind::TimeDelta { delta }) => {
            let end = run.task.run.data_interval_end;
            match end.checked_add_signed(delta.as_chrono()) {
                Some(t) => Ok(t),
                None => Err(format!("`data_interval_end` + `delta` ({end} + {delta}) is out of the calendar")),
            }
        }
        Some(SensorKind::DateTime { target_time }) => {
            render("target_time", target_time, &run.ctx).map_err(|e| e.to_string()).and_then(|t| parse_time(&t))
        }
        _ => Err("not a time sensor".into()),
    };
    let target = match target {
        Ok(t) => t,
        Err(reason) => return Start::Done(Outcome::fail(reason)),
    };
    sensor::start(run, move |run| async move {
        let shown = target.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        run.log(&format!("Checking if the time ({shown}) has come")).await;
        sensor::reached(target)
    })
}

/// A `target_time` as Airflow's `timezone.parse` reads it: RFC 3339 or ISO 8601 with an offset, a
/// date and time without one (UTC), or a date.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(d) = DateTime::parse_from_str(t, format) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Ok(d.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(format!("`target_time` rendered `{t}`, which is not a date and time such as `2024-01-01T06:00:00+00:00`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_parse_as_airflow_reads_them() {
        let at = |s: &str| parse_time(s).unwrap().to_rfc3339();
        assert_eq!(at("2024-01-02T03:04:05+00:00"), "2024-01-02T03:04:05+00:00");
        assert_eq!(at("2024-01-02T05:04:05+02:00"), "2024-01-02T03:04:05+00:00");
        assert_eq!(at("2024-01-02 03:04:05"), "2024-01-02T03:04:05+00:00");
        assert_eq!(at("2024-01-02"), "2024-01-02T00:00:00+00:00");
        assert!(parse_time("tomorrow").unwrap_err().contains("`tomorrow`"));
    }
}
