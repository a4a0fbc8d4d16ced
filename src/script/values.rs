//! Time values a DAG file builds: `timedelta`, `minutes(5)`, `datetime(...)`, `days_ago(n)`.

use super::error::{ScriptError, ScriptResult, lift};
use crate::model::TimeSpan;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use rhai::{Dynamic, Engine, INT, Map};

/// `timedelta(#{ minutes: 5 })` in a DAG file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeDelta(pub TimeSpan);

/// `datetime(...)`: naive until a DAG gives it a time zone, as pendulum does in Airflow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DateTimeValue {
    pub naive: NaiveDateTime,
    pub offset: Option<FixedOffset>,
}

impl DateTimeValue {
    pub fn utc(at: DateTime<Utc>) -> Self {
        DateTimeValue { naive: at.naive_utc(), offset: Some(Utc.fix()) }
    }

    /// The instant, reading a naive value in `tz` (the DAG's time zone).
    pub fn resolve<Z: TimeZone>(&self, tz: &Z) -> Option<DateTime<Utc>> {
        match self.offset {
            Some(off) => off.from_local_datetime(&self.naive).single().map(|d| d.with_timezone(&Utc)),
            None => tz.from_local_datetime(&self.naive).earliest().map(|d| d.with_timezone(&Utc)),
        }
    }
}

const TIMEDELTA_KEYS: [(&str, f64); 7] = [
    ("weeks", 604_800.0),
    ("days", 86_400.0),
    ("hours", 3_600.0),
    ("minutes", 60.0),
    ("seconds", 1.0),
    ("milliseconds", 0.001),
    ("microseconds", 0.000_001),
];

/// Dates a DAG file may name: years 1 to 9999, so every later step (adding intervals, printing
/// RFC 3339, storing) stays inside what chrono and the store can hold.
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

fn in_range(value: DateTimeValue, what: impl FnOnce() -> String) -> ScriptResult<DateTimeValue> {
    if YEARS.contains(&value.naive.year()) {
        Ok(value)
    } else {
        Err(ScriptError::new(format!("{} is out of range: dates run from year 1 to 9999", what())))
    }
}

fn too_long(what: impl std::fmt::Display) -> ScriptError {
    ScriptError::new(format!("{what} is out of range: durations are limited to 100 years"))
}

fn number(value: &Dynamic) -> Option<f64> {
    value.as_int().map(|i| i as f64).ok().or_else(|| value.as_float().ok())
}

fn timedelta(map: Map) -> ScriptResult<TimeDelta> {
    let mut total = 0.0;
    for (key, value) in &map {
        let Some((_, unit)) = TIMEDELTA_KEYS.iter().find(|(k, _)| *k == key.as_str()) else {
            let known: Vec<&str> = TIMEDELTA_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(ScriptError::unknown_key(key, "timedelta", &known));
        };
        let n = number(value).ok_or_else(|| {
            ScriptError::new(format!("`{key}` in `timedelta` must be a number, not {}", value.type_name()))
        })?;
        total += n * unit;
    }
    if total < 0.0 {
        return Err(ScriptError::new("a negative `timedelta` is not supported"));
    }
    let shown = || {
        let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("`timedelta(#{{ {} }})`", parts.join(", "))
    };
    TimeSpan::checked_from_secs_f64(total).map(TimeDelta).ok_or_else(|| too_long(shown()))
}

fn scaled(n: f64, unit: f64, name: &str) -> ScriptResult<TimeDelta> {
    if n < 0.0 || !n.is_finite() {
        return Err(ScriptError::new(format!("a duration must be zero or more, not {n}")));
    }
    TimeSpan::checked_from_secs_f64(n * unit).map(TimeDelta).ok_or_else(|| too_long(format!("`{name}({n})`")))
}

fn ymd_hms(y: INT, m: INT, d: INT, h: INT, mi: INT, s: INT) -> ScriptResult<DateTimeValue> {
    let not_a_date = || ScriptError::new(format!("`datetime({y}, {m}, {d})` is not a date"));
    let date = match (i32::try_from(y), u32::try_from(m), u32::try_from(d)) {
        (Ok(y), Ok(m), Ok(d)) => NaiveDate::from_ymd_opt(y, m, d).ok_or_else(not_a_date)?,
        _ => return Err(not_a_date()),
    };
    let not_a_time = || ScriptError::new(format!("`{h}:{mi}:{s}` is not a time of day"));
    let naive = match (u32::try_from(h), u32::try_from(mi), u32::try_from(s)) {
        (Ok(h), Ok(mi), Ok(s)) => date.and_hms_opt(h, mi, s).ok_or_else(not_a_time)?,
        _ => return Err(not_a_time()),
    };
    in_range(DateTimeValue { naive, offset: None }, || format!("`datetime({y}, {m}, {d})`"))
}

/// Parses RFC 3339 (`2024-01-01T00:00:00+08:00`) or a naive `2024-01-01[ T]HH:MM[:SS]` / `2024-01-01`.
pub fn parse_datetime(text: &str) -> ScriptResult<DateTimeValue> {
    let text = text.trim();
    let shown = || format!("`datetime(\"{text}\")`");
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return in_range(DateTimeValue { naive: at.naive_local(), offset: Some(*at.offset()) }, shown);
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return in_range(DateTimeValue { naive, offset: None }, shown);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return in_range(DateTimeValue { naive: date.and_time(chrono::NaiveTime::MIN), offset: None }, shown);
    }
    Err(ScriptError::new(format!("`{text}` is not a date-time"))
        .with_help("write `2024-01-01`, `2024-01-01T06:00:00` or `2024-01-01T06:00:00+08:00`"))
}

/// `days_ago(n)`: midnight UTC `n` days before `now`, as Airflow's helper.
pub fn days_ago(now: DateTime<Utc>, n: INT) -> ScriptResult<DateTimeValue> {
    let midnight = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let shown = || format!("`days_ago({n})`");
    let at = chrono::TimeDelta::try_days(n).and_then(|d| midnight.checked_sub_signed(d));
    let at =
        at.ok_or_else(|| ScriptError::new(format!("{} is out of range: dates run from year 1 to 9999", shown())))?;
    in_range(DateTimeValue::utc(at), shown)
}

fn shift(a: DateTimeValue, d: TimeDelta, sign: i32) -> ScriptResult<DateTimeValue> {
    let delta = d.0.as_chrono() * sign;
    let what = || format!("`{} {} {}`", show(&a), if sign > 0 { '+' } else { '-' }, d.0);
    let naive = a
        .naive
        .checked_add_signed(delta)
        .ok_or_else(|| ScriptError::new(format!("{} is out of range: dates run from year 1 to 9999", what())))?;
    in_range(DateTimeValue { naive, ..a }, what)
}

fn show(d: &DateTimeValue) -> String {
    match d.offset {
        Some(off) => off.from_local_datetime(&d.naive).single().map(|t| t.to_rfc3339()).unwrap_or_default(),
        None => d.naive.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }
}

/// Registers the time constructors (`days_ago` lives with the DAG API: it reads the evaluation's clock).
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<TimeDelta>("timedelta");
    engine.register_type_with_name::<DateTimeValue>("datetime");

    engine.register_fn("timedelta", |map: Map| lift(timedelta(map)));
    for (name, unit) in
        [("seconds", 1.0), ("minutes", 60.0), ("hours", 3_600.0), ("days", 86_400.0), ("weeks", 604_800.0)]
    {
        engine.register_fn(name, move |n: INT| lift(scaled(n as f64, unit, name)));
        engine.register_fn(name, move |n: f64| lift(scaled(n, unit, name)));
    }
    engine.register_fn("+", |a: TimeDelta, b: TimeDelta| {
        lift(a.0.checked_add(b.0).map(TimeDelta).ok_or_else(|| too_long(format!("`{} + {}`", a.0, b.0))))
    });
    engine.register_fn("*", |a: TimeDelta, n: INT| {
        if n < 0 {
            return lift(Err(ScriptError::new(format!("a duration must be zero or more, not {} * {n}", a.0))));
        }
        lift(a.0.checked_mul(n).map(TimeDelta).ok_or_else(|| too_long(format!("`{} * {n}`", a.0))))
    });
    engine.register_fn("to_string", |d: &mut TimeDelta| d.0.to_string());
    engine.register_fn("to_debug", |d: &mut TimeDelta| format!("timedelta({})", d.0));
    engine.register_get("total_seconds", |d: &mut TimeDelta| d.0.as_secs_f64());

    engine.register_fn("datetime", |text: &str| lift(parse_datetime(text)));
    engine.register_fn("datetime", |y: INT, m: INT, d: INT| lift(ymd_hms(y, m, d, 0, 0, 0)));
    engine.register_fn("datetime", |y: INT, m: INT, d: INT, h: INT| lift(ymd_hms(y, m, d, h, 0, 0)));
    engine.register_fn("datetime", |y: INT, m: INT, d: INT, h: INT, mi: INT| lift(ymd_hms(y, m, d, h, mi, 0)));
    engine.register_fn("datetime", |y: INT, m: INT, d: INT, h: INT, mi: INT, s: INT| lift(ymd_hms(y, m, d, h, mi, s)));
    engine.register_fn("+", |a: DateTimeValue, d: TimeDelta| lift(shift(a, d, 1)));
    engine.register_fn("-", |a: DateTimeValue, d: TimeDelta| lift(shift(a, d, -1)));
    engine.register_fn("to_string", |d: &mut DateTimeValue| show(d));
}
