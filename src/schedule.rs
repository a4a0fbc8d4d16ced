//! Timetables: when a DAG's runs are due and which data interval each covers, as Airflow defines it.
//!
//! A scheduled run covers `[start, end)` and is due at `end`; its logical date is `start`.
//! Cron schedules are evaluated in the DAG's time zone (DST-aware, via croner and chrono-tz).
//! All date arithmetic is checked: a run that would fall outside the calendar is "no next run".

use crate::model::{DagSpec, ScheduleSpec, TimeSpan, TimeZoneSpec};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds as CronSeconds, Year as CronYear};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression `{expr}`: {reason}")]
    InvalidCron { expr: String, reason: String },
    #[error("DAG `{dag_id}` has a schedule but no `start_date`")]
    NoStartDate { dag_id: String },
}

impl ScheduleError {
    pub fn help(&self) -> &'static str {
        match self {
            ScheduleError::InvalidCron { .. } => {
                "use 5 fields `minute hour day-of-month month day-of-week` (e.g. \"*/10 * * * *\"), or a preset such as \"@daily\""
            }
            ScheduleError::NoStartDate { .. } => {
                "add `start_date` to the DAG or its `default_args`, or use `schedule: ()` for manual runs only"
            }
        }
    }
}

/// The half-open span of time a run processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A run the timetable asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DagRunInfo {
    pub logical_date: DateTime<Utc>,
    pub data_interval: DataInterval,
    /// The earliest time the run may start.
    pub run_after: DateTime<Utc>,
}

impl DagRunInfo {
    fn interval(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        DagRunInfo { logical_date: start, data_interval: DataInterval { start, end }, run_after: end }
    }
}

/// Bounds on automated runs: the DAG's `start_date`, `end_date` and `catchup`.
#[derive(Debug, Clone, Copy)]
pub struct Restriction {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub catchup: bool,
}

impl Restriction {
    pub fn of(spec: &DagSpec) -> Self {
        Restriction { earliest: spec.start_date, latest: spec.end_date, catchup: spec.catchup }
    }
}

/// The run the scheduler creates next for `spec`, after `last` (the data interval of its latest
/// scheduled run, `None` without history): what `dags list` shows as the next run and the API as
/// `next_dagrun*`. `None` for manual-only DAGs and once the timetable has no more runs.
pub fn next_dagrun(spec: &DagSpec, last: Option<DataInterval>, now: DateTime<Utc>) -> Option<DagRunInfo> {
    let tt = Timetable::new(spec).ok()?;
    tt.next_dagrun_info(last, Restriction::of(spec), now).filter(|info| last != Some(info.data_interval))
}

/// Parses a 5-field Unix cron expression strictly: no seconds, no year; day-of-month OR day-of-week.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(ScheduleError::InvalidCron {
            expr: expr.to_string(),
            reason: format!("expected 5 fields, found {fields}"),
        });
    }
    CronParser::builder()
        .seconds(CronSeconds::Disallowed)
        .year(CronYear::Disallowed)
        .dom_and_dow(false)
        .build()
        .parse(expr)
        .map_err(|e| ScheduleError::InvalidCron { expr: expr.to_string(), reason: e.to_string() })
}

/// Parsed cron expressions by text, shared by the loader's threads: a folder of DAGs mostly repeats
/// a few schedules (`@daily`), and parsing one costs ~20 µs.
#[derive(Default)]
pub struct CronCache {
    parsed: std::sync::Mutex<std::collections::HashMap<String, Result<Cron, ScheduleError>>>,
}

impl CronCache {
    pub fn parse(&self, expr: &str) -> Result<Cron, ScheduleError> {
        if let Some(hit) = self.parsed.lock().ok().and_then(|m| m.get(expr).cloned()) {
            return hit;
        }
        let parsed = parse_cron(expr);
        if let Ok(mut m) = self.parsed.lock() {
            m.insert(expr.to_string(), parsed.clone());
        }
        parsed
    }
}

/// The zone a cron schedule is evaluated in: an IANA zone, or a fixed offset such as `+05:30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Named(Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// The zone a spec names; an unknown name (not produced by the loader) reads as UTC.
    pub fn of(spec: &TimeZoneSpec) -> Zone {
        match spec {
            TimeZoneSpec::Named(n) => Zone::Named(n.parse().unwrap_or(chrono_tz::UTC)),
            TimeZoneSpec::Offset(secs) => FixedOffset::east_opt(*secs).map_or(Zone::Named(chrono_tz::UTC), Zone::Fixed),
        }
    }
}

/// Finds the cron occurrence after (or before) `at`, read in `zone`.
fn occurrence(cron: &Cron, zone: Zone, at: DateTime<Utc>, inclusive: bool, forward: bool) -> Option<DateTime<Utc>> {
    fn find<Z: TimeZone>(cron: &Cron, local: DateTime<Z>, inclusive: bool, forward: bool) -> Option<DateTime<Utc>> {
        let found = if forward {
            cron.find_next_occurrence(&local, inclusive)
        } else {
            cron.find_previous_occurrence(&local, inclusive)
        };
        found.ok().map(|t| t.to_utc())
    }
    match zone {
        Zone::Named(tz) => find(cron, tz.from_utc_datetime(&at.naive_utc()), inclusive, forward),
        Zone::Fixed(off) => find(cron, off.from_utc_datetime(&at.naive_utc()), inclusive, forward),
    }
}

/// A DAG's schedule, ready to compute runs.
#[derive(Debug, Clone)]
pub enum Timetable {
    /// Manual runs only.
    None,
    Once,
    Cron {
        cron: Box<Cron>,
        tz: Zone,
    },
    Delta {
        every: TimeSpan,
    },
}

impl Timetable {
    pub fn new(spec: &DagSpec) -> Result<Timetable, ScheduleError> {
        Timetable::with_parser(spec, parse_cron)
    }

    /// As `new`, reusing crons parsed before.
    pub fn new_cached(spec: &DagSpec, cache: &CronCache) -> Result<Timetable, ScheduleError> {
        Timetable::with_parser(spec, |expr| cache.parse(expr))
    }

    fn with_parser(
        spec: &DagSpec,
        parse: impl Fn(&str) -> Result<Cron, ScheduleError>,
    ) -> Result<Timetable, ScheduleError> {
        let tt = match &spec.schedule {
            ScheduleSpec::None => Timetable::None,
            ScheduleSpec::Once => Timetable::Once,
            ScheduleSpec::Cron { expr, .. } => {
                Timetable::Cron { cron: Box::new(parse(expr)?), tz: Zone::of(&spec.timezone) }
            }
            ScheduleSpec::Interval { every } => Timetable::Delta { every: *every },
        };
        if !matches!(tt, Timetable::None) && spec.start_date.is_none() {
            return Err(ScheduleError::NoStartDate { dag_id: spec.dag_id.clone() });
        }
        Ok(tt)
    }

    /// The next run after `last` (the data interval of the latest automated run), or `None` when
    /// the timetable has no more runs. `now` matters only without catchup.
    pub fn next_dagrun_info(
        &self,
        last: Option<DataInterval>,
        restriction: Restriction,
        now: DateTime<Utc>,
    ) -> Option<DagRunInfo> {
        let info = match self {
            Timetable::None => return None,
            Timetable::Once => {
                if last.is_some() {
                    return None;
                }
                let start = restriction.earliest?;
                DagRunInfo { logical_date: start, data_interval: DataInterval { start, end: start }, run_after: start }
            }
            Timetable::Cron { .. } => {
                let mut start = match last {
                    None => self.align_to_next(restriction.earliest?)?,
                    Some(last) => last.end,
                };
                if !restriction.catchup {
                    let latest_complete_end = self.align_to_prev(now)?;
                    let latest_start = self.prev_tick(latest_complete_end)?;
                    start = start.max(latest_start);
                }
                DagRunInfo::interval(start, self.next_tick(start)?)
            }
            Timetable::Delta { every } => {
                let every = every.as_chrono();
                let mut start = match last {
                    None => restriction.earliest?,
                    Some(last) => last.end,
                };
                if !restriction.catchup
                    && let Some(latest) = now.checked_sub_signed(every)
                {
                    start = start.max(latest);
                }
                DagRunInfo::interval(start, start.checked_add_signed(every)?)
            }
        };
        match restriction.latest {
            Some(latest) if info.logical_date > latest => None,
            _ => Some(info),
        }
    }

    /// Airflow's `dag.previous_schedule(logical_date)` (the template's `prev_execution_date`):
    /// the schedule's logical date before `logical`; `None` for `@once` and manual-only DAGs.
    pub fn previous_logical_date(&self, logical: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timetable::None | Timetable::Once => None,
            Timetable::Cron { .. } => self.prev_tick(logical),
            Timetable::Delta { every } => logical.checked_sub_signed(every.as_chrono()),
        }
    }

    /// The data interval of a run triggered by hand at `run_after`: the last complete period.
    pub fn infer_manual_data_interval(&self, run_after: DateTime<Utc>) -> DataInterval {
        match self {
            Timetable::Cron { .. } => {
                let end = self.align_to_prev(run_after).unwrap_or(run_after);
                let start = self.prev_tick(end).unwrap_or(end);
                DataInterval { start, end }
            }
            Timetable::Delta { every } => DataInterval {
                start: run_after.checked_sub_signed(every.as_chrono()).unwrap_or(run_after),
                end: run_after,
            },
            Timetable::None | Timetable::Once => DataInterval { start: run_after, end: run_after },
        }
    }

    /// The next `n` runs the scheduler would create after `last` (the first may already be due).
    pub fn upcoming(
        &self,
        mut last: Option<DataInterval>,
        restriction: Restriction,
        now: DateTime<Utc>,
        n: usize,
    ) -> Vec<DagRunInfo> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(info) = self.next_dagrun_info(last, restriction, now) else { break };
            if last.is_some_and(|l| l == info.data_interval) {
                break;
            }
            last = Some(info.data_interval);
            out.push(info);
        }
        out
    }

    fn cron(&self) -> Option<(&Cron, Zone)> {
        match self {
            Timetable::Cron { cron, tz } => Some((cron, *tz)),
            _ => None,
        }
    }

    fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.cron()?;
        occurrence(cron, zone, after, false, true)
    }

    fn prev_tick(&self, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.cron()?;
        occurrence(cron, zone, before, false, false)
    }

    fn align_to_next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.cron()?;
        occurrence(cron, zone, t, true, true)
    }

    fn align_to_prev(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.cron()?;
        occurrence(cron, zone, t, true, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap()
    }

    fn cron(expr: &str, tz: Tz) -> Timetable {
        Timetable::Cron { cron: Box::new(parse_cron(expr).unwrap()), tz: Zone::Named(tz) }
    }

    #[test]
    fn strict_five_fields() {
        assert!(parse_cron("*/10 * * * *").is_ok());
        assert!(parse_cron("0 0 * * * *").is_err(), "six fields (seconds) are refused");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("* * *").is_err());
    }

    #[test]
    fn weekdays_are_unix_numbered_and_dom_dow_is_or() {
        // 1-5 is Monday to Friday. 2026-11-22 is a Sunday.
        let tt = cron("0 9 * * 1-5", chrono_tz::UTC);
        assert_eq!(tt.next_tick(utc(2026, 11, 22, 0, 0)), Some(utc(2026, 11, 23, 9, 0)));
        // "on the 1st OR on Mondays": the next after Sunday 22nd is Monday 23rd.
        let or = cron("0 0 1 * 1", chrono_tz::UTC);
        assert_eq!(or.next_tick(utc(2026, 11, 22, 0, 0)), Some(utc(2026, 11, 23, 0, 0)));
    }

    #[test]
    fn catchup_runs_every_interval_from_start_date() {
        let tt = cron("0 0 * * *", chrono_tz::UTC);
        let r = Restriction { earliest: Some(utc(2024, 1, 1, 0, 0)), latest: None, catchup: true };
        let now = utc(2024, 1, 10, 12, 0);
        let first = tt.next_dagrun_info(None, r, now).unwrap();
        assert_eq!(first.logical_date, utc(2024, 1, 1, 0, 0));
        assert_eq!(first.run_after, utc(2024, 1, 2, 0, 0));
        let second = tt.next_dagrun_info(Some(first.data_interval), r, now).unwrap();
        assert_eq!(second.data_interval.start, utc(2024, 1, 2, 0, 0));
    }

    #[test]
    fn without_catchup_the_latest_complete_interval_runs() {
        let tt = cron("*/10 * * * *", chrono_tz::UTC);
        let r = Restriction { earliest: Some(utc(2024, 1, 1, 0, 0)), latest: None, catchup: false };
        let info = tt.next_dagrun_info(None, r, utc(2024, 1, 10, 12, 25)).unwrap();
        assert_eq!(info.data_interval, DataInterval { start: utc(2024, 1, 10, 12, 10), end: utc(2024, 1, 10, 12, 20) });
    }

    #[test]
    fn end_date_stops_runs() {
        let tt = cron("0 0 * * *", chrono_tz::UTC);
        let r =
            Restriction { earliest: Some(utc(2024, 1, 1, 0, 0)), latest: Some(utc(2024, 1, 1, 0, 0)), catchup: true };
        let first = tt.next_dagrun_info(None, r, utc(2024, 2, 1, 0, 0)).unwrap();
        assert!(tt.next_dagrun_info(Some(first.data_interval), r, utc(2024, 2, 1, 0, 0)).is_none());
    }

    #[test]
    fn cron_follows_dst_in_the_dag_time_zone() {
        // New York springs forward on 2024-03-10: 02:30 local does not exist that day.
        let tt = cron("30 6 * * *", chrono_tz::America::New_York);
        let before = tt.next_tick(utc(2024, 3, 9, 12, 0)).unwrap();
        let after = tt.next_tick(before).unwrap();
        assert_eq!(before, utc(2024, 3, 10, 10, 30), "06:30 EDT is 10:30 UTC");
        assert_eq!(after, utc(2024, 3, 11, 10, 30));
        let winter = tt.next_tick(utc(2024, 3, 8, 12, 0)).unwrap();
        assert_eq!(winter, utc(2024, 3, 9, 11, 30), "06:30 EST is 11:30 UTC");
    }

    #[test]
    fn intervals_and_once() {
        let every = Timetable::Delta { every: TimeSpan::from_secs(3600) };
        let r = Restriction { earliest: Some(utc(2024, 1, 1, 0, 30)), latest: None, catchup: true };
        let first = every.next_dagrun_info(None, r, utc(2024, 1, 2, 0, 0)).unwrap();
        assert_eq!(first.data_interval, DataInterval { start: utc(2024, 1, 1, 0, 30), end: utc(2024, 1, 1, 1, 30) });
        let once = Timetable::Once;
        let info = once.next_dagrun_info(None, r, utc(2024, 1, 2, 0, 0)).unwrap();
        assert_eq!(info.run_after, utc(2024, 1, 1, 0, 30));
        assert!(once.next_dagrun_info(Some(info.data_interval), r, utc(2024, 1, 2, 0, 0)).is_none());
    }

    #[test]
    fn cron_in_a_fixed_offset_zone_fires_at_local_times() {
        // +05:30: 06:00 local is 00:30 UTC.
        let off = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let tt = Timetable::Cron { cron: Box::new(parse_cron("0 6 * * *").unwrap()), tz: Zone::Fixed(off) };
        assert_eq!(tt.next_tick(utc(2024, 1, 1, 0, 0)), Some(utc(2024, 1, 1, 0, 30)));
        assert_eq!(Zone::of(&TimeZoneSpec::Offset(19_800)), Zone::Fixed(off));
        assert_eq!(TimeZoneSpec::Offset(19_800).to_string(), "+05:30");
        assert_eq!(TimeZoneSpec::Offset(-12_600).to_string(), "-03:30");
    }

    #[test]
    fn intervals_past_the_calendar_are_no_next_run_not_a_panic() {
        let huge = Timetable::Delta { every: TimeSpan::from_secs(100_000_000 * 86_400) };
        let r = Restriction { earliest: Some(utc(2024, 1, 1, 0, 0)), latest: None, catchup: false };
        assert_eq!(huge.next_dagrun_info(None, r, utc(2026, 1, 1, 0, 0)), None);
        assert_eq!(huge.upcoming(None, r, utc(2026, 1, 1, 0, 0), 5), Vec::new());
        let di = huge.infer_manual_data_interval(utc(2026, 1, 1, 0, 0));
        assert_eq!(di.end, utc(2026, 1, 1, 0, 0));
        let late = Restriction { earliest: Some(DateTime::<Utc>::MAX_UTC), latest: None, catchup: true };
        let hourly = Timetable::Delta { every: TimeSpan::from_secs(3600) };
        assert_eq!(hourly.next_dagrun_info(None, late, utc(2026, 1, 1, 0, 0)), None);
        let daily = cron("0 0 * * *", chrono_tz::UTC);
        assert_eq!(daily.next_dagrun_info(None, late, utc(2026, 1, 1, 0, 0)), None);
    }

    #[test]
    fn manual_runs_cover_the_last_complete_period() {
        let tt = cron("0 0 * * *", chrono_tz::UTC);
        let di = tt.infer_manual_data_interval(utc(2024, 1, 25, 1, 0));
        assert_eq!(di, DataInterval { start: utc(2024, 1, 24, 0, 0), end: utc(2024, 1, 25, 0, 0) });
    }
}
