//! Dates in templates as Airflow hands them out: pendulum `DateTime`s (`logical_date.year`,
//! `.strftime(...)`, `.isoformat()`, `.in_timezone(...)`, `.add(days=1)`), Python's naive
//! `datetime`, `date` and `timedelta`, and the `macros.datetime` class. Every operation is checked:
//! a date pushed past the calendar is an error, never a panic.

use super::fail;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use minijinja::value::{Kwargs, Object, ObjectRepr, Value, from_args};
use minijinja::{Error, ErrorKind, State};
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// What a date value stands for in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pendulum `DateTime` with a time zone (every date of the context).
    Aware,
    /// A naive `datetime.datetime` (`macros.datetime(2024, 1, 1)`): wall time, shown with a space.
    Naive,
    /// A `datetime.date` (`logical_date.date()`).
    Date,
}

/// A date or date-time value in a template. Naive values keep their wall time in UTC.
#[derive(Debug, Clone, Copy)]
pub struct When {
    pub at: DateTime<Tz>,
    pub kind: Kind,
}

/// Longest strftime format a template may ask for.
const MAX_FORMAT_BYTES: usize = 4096;
/// Largest shift `add`/`subtract`/`timedelta` accept: about 3,000 years, in microseconds.
const MAX_MICROS: f64 = 1e17;

/// The attributes a date has, for "did you mean" on a misspelt one.
pub const WHEN_ATTRIBUTES: &[&str] = &[
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "microsecond",
    "day_of_week",
    "day_of_year",
    "int_timestamp",
    "float_timestamp",
    "timezone_name",
    "tzinfo",
    "strftime",
    "isoformat",
    "in_timezone",
    "in_tz",
    "astimezone",
    "add",
    "subtract",
    "date",
    "replace",
    "timestamp",
    "weekday",
    "isoweekday",
    "to_date_string",
    "to_datetime_string",
    "to_iso8601_string",
    "start_of",
    "end_of",
];

impl When {
    pub fn utc(at: DateTime<Utc>) -> When {
        When { at: at.with_timezone(&Tz::UTC), kind: Kind::Aware }
    }

    pub fn value(at: DateTime<Utc>) -> Value {
        Value::from_object(When::utc(at))
    }

    fn naive(&self) -> NaiveDateTime {
        self.at.naive_local()
    }

    /// Python's `isoformat(sep)`: microseconds only when there are some, the offset when aware.
    pub fn isoformat(&self, sep: &str) -> String {
        let date = self.at.format("%Y-%m-%d").to_string();
        if self.kind == Kind::Date {
            return date;
        }
        let mut out = format!("{date}{sep}{}", self.at.format("%H:%M:%S"));
        let micros = self.at.nanosecond() / 1000 % 1_000_000;
        if micros != 0 {
            out.push_str(&format!(".{micros:06}"));
        }
        if self.kind == Kind::Aware {
            out.push_str(&self.at.format("%:z").to_string());
        }
        out
    }

    /// Python's `strftime`: `%f` is microseconds; a malformed format is an error.
    pub fn strftime(&self, format: &str) -> Result<String, Error> {
        let items = strftime_items(format)?;
        let mut out = String::new();
        use std::fmt::Write as _;
        let written = if self.kind == Kind::Aware {
            write!(out, "{}", self.at.format_with_items(items.iter()))
        } else {
            write!(out, "{}", self.naive().format_with_items(items.iter()))
        };
        written.map_err(|_| fail(format!("`{format}` asks for a field this date cannot give")))?;
        Ok(out)
    }

    /// pendulum's `add`/`subtract`: years and months on the calendar (the day clamped to the month's
    /// end), weeks and days on the local calendar, hours and below as elapsed time.
    fn shifted(&self, sign: i64, kwargs: &Kwargs) -> Result<When, Error> {
        let years: i64 = kwargs.get::<Option<i64>>("years")?.unwrap_or(0);
        let months: i64 = kwargs.get::<Option<i64>>("months")?.unwrap_or(0);
        let mut days = 0f64;
        for (name, scale) in [("weeks", 7.0), ("days", 1.0)] {
            days += kwargs.get::<Option<f64>>(name)?.unwrap_or(0.0) * scale;
        }
        let mut micros = 0f64;
        for (name, scale) in [("hours", 3.6e9), ("minutes", 6e7), ("seconds", 1e6), ("microseconds", 1.0)] {
            micros += kwargs.get::<Option<f64>>(name)?.unwrap_or(0.0) * scale;
        }
        kwargs.assert_all_used()?;
        let whole_days = days.trunc();
        micros += (days - whole_days) * 8.64e10;
        let out_of_range = || fail("the shifted date is outside the supported dates (years 1 to 9999)".into());
        let total_months = years.checked_mul(12).and_then(|y| y.checked_add(months)).ok_or_else(out_of_range)?;
        if !(micros.is_finite()
            && micros.abs() <= MAX_MICROS
            && whole_days.abs() <= 4e6
            && total_months.abs() <= 120_000)
        {
            return Err(out_of_range());
        }
        let (total_months, whole_days, micros) = (total_months * sign, whole_days as i64 * sign, micros as i64 * sign);
        let mut local = self.naive();
        let step = chrono::Months::new(total_months.unsigned_abs() as u32);
        local = if total_months >= 0 { local.checked_add_months(step) } else { local.checked_sub_months(step) }
            .ok_or_else(out_of_range)?;
        local = local
            .checked_add_signed(TimeDelta::try_days(whole_days).ok_or_else(out_of_range)?)
            .ok_or_else(out_of_range)?;
        let at = localize(self.at.timezone(), local).ok_or_else(out_of_range)?;
        let at = at.checked_add_signed(TimeDelta::microseconds(micros)).ok_or_else(out_of_range)?;
        in_calendar(When { at, kind: self.kind })
    }

    fn replaced(&self, kwargs: &Kwargs) -> Result<When, Error> {
        let mut local = self.naive();
        let bad = |what: &str, v: i64| fail(format!("`replace({what}={v})` gives no valid date"));
        if let Some(y) = kwargs.get::<Option<i64>>("year")? {
            local = i32::try_from(y).ok().and_then(|y| local.with_year(y)).ok_or_else(|| bad("year", y))?;
        }
        type Setter = fn(&NaiveDateTime, u32) -> Option<NaiveDateTime>;
        let setters: [(&str, Setter); 5] = [
            ("month", |d, v| d.with_month(v)),
            ("day", |d, v| d.with_day(v)),
            ("hour", |d, v| d.with_hour(v)),
            ("minute", |d, v| d.with_minute(v)),
            ("second", |d, v| d.with_second(v)),
        ];
        for (name, set) in setters {
            if let Some(v) = kwargs.get::<Option<i64>>(name)? {
                local = u32::try_from(v).ok().and_then(|u| set(&local, u)).ok_or_else(|| bad(name, v))?;
            }
        }
        if let Some(v) = kwargs.get::<Option<i64>>("microsecond")? {
            local = u32::try_from(v)
                .ok()
                .filter(|u| *u < 1_000_000)
                .and_then(|u| local.with_nanosecond(u * 1000))
                .ok_or_else(|| bad("microsecond", v))?;
        }
        kwargs.assert_all_used()?;
        let at =
            localize(self.at.timezone(), local).ok_or_else(|| fail("`replace(...)` gives no valid date".into()))?;
        in_calendar(When { at, kind: self.kind })
    }

    /// pendulum's `start_of(unit)` / `end_of(unit)`.
    fn boundary(&self, unit: &str, end: bool) -> Result<When, Error> {
        let local = self.naive();
        let date = local.date();
        let start = match unit {
            "minute" => date.and_hms_opt(local.hour(), local.minute(), 0),
            "hour" => date.and_hms_opt(local.hour(), 0, 0),
            "day" => date.and_hms_opt(0, 0, 0),
            "week" => date
                .checked_sub_signed(TimeDelta::days(i64::from(date.weekday().num_days_from_monday())))
                .and_then(|d| d.and_hms_opt(0, 0, 0)),
            "month" => date.with_day(1).and_then(|d| d.and_hms_opt(0, 0, 0)),
            "year" => NaiveDate::from_ymd_opt(date.year(), 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)),
            other => {
                return Err(fail(format!(
                    "`{other}` is no unit of `start_of`/`end_of`: use minute, hour, day, week, month or year"
                )));
            }
        };
        let out_of_range = || fail("the date is outside the supported dates (years 1 to 9999)".into());
        let start = start.ok_or_else(out_of_range)?;
        let local = if end {
            let next = match unit {
                "minute" => start.checked_add_signed(TimeDelta::minutes(1)),
                "hour" => start.checked_add_signed(TimeDelta::hours(1)),
                "day" => start.checked_add_signed(TimeDelta::days(1)),
                "week" => start.checked_add_signed(TimeDelta::days(7)),
                "month" => start.checked_add_months(chrono::Months::new(1)),
                _ => start.checked_add_months(chrono::Months::new(12)),
            };
            next.and_then(|n| n.checked_sub_signed(TimeDelta::microseconds(1))).ok_or_else(out_of_range)?
        } else {
            start
        };
        let at = localize(self.at.timezone(), local).ok_or_else(out_of_range)?;
        in_calendar(When { at, kind: self.kind })
    }
}

/// A local wall time in `tz`; in a DST gap, the instant an hour later (as pendulum does).
fn localize(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Tz>> {
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| tz.from_local_datetime(&local.checked_add_signed(TimeDelta::hours(1))?).earliest())
}

/// Years 1 to 9999, as Python's `datetime` allows.
fn in_calendar(when: When) -> Result<When, Error> {
    if (1..=9999).contains(&when.at.year()) {
        Ok(when)
    } else {
        Err(fail("the date is outside the supported dates (years 1 to 9999)".into()))
    }
}

/// Python strftime directives as chrono items: `%f` is six digits of microseconds.
fn strftime_items(format: &str) -> Result<Vec<chrono::format::Item<'static>>, Error> {
    if format.len() > MAX_FORMAT_BYTES {
        return Err(fail(format!("a date format is limited to {MAX_FORMAT_BYTES} bytes")));
    }
    let mut translated = String::with_capacity(format.len() + 4);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            translated.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => translated.push_str("%6f"),
            Some(other) => {
                translated.push('%');
                translated.push(other);
            }
            None => translated.push('%'),
        }
    }
    let items: Vec<chrono::format::Item<'static>> =
        chrono::format::StrftimeItems::new(&translated).map(|item| item.to_owned()).collect();
    if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(fail(format!("`{format}` is not a valid date format (strftime codes such as %Y-%m-%d %H:%M:%S)")));
    }
    Ok(items)
}

/// A time zone by IANA name (`Asia/Shanghai`, `UTC`), with a suggestion for a misspelt one.
pub fn time_zone(name: &str) -> Result<Tz, Error> {
    name.parse::<Tz>().map_err(|_| {
        let known: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
        match crate::model::suggest::nearest(name, &known) {
            Some(k) => fail(format!("unknown time zone `{name}` — did you mean `{k}`?")),
            None => fail(format!("unknown time zone `{name}`: use an IANA name such as `Europe/Paris` or `UTC`")),
        }
    })
}

fn tz_arg(value: &Value) -> Result<Tz, Error> {
    match value.as_str() {
        Some(name) => time_zone(name),
        None => Err(fail(format!("a time zone is a name such as `Asia/Shanghai`, not `{value}`"))),
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.kind == Kind::Naive { " " } else { "T" };
        f.write_str(&self.isoformat(sep))
    }
}

impl Object for When {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let at = &self.at;
        Some(match key.as_str()? {
            "year" => Value::from(at.year()),
            "month" => Value::from(at.month()),
            "day" => Value::from(at.day()),
            "hour" => Value::from(at.hour()),
            "minute" => Value::from(at.minute()),
            "second" => Value::from(at.second()),
            "microsecond" => Value::from(at.nanosecond() / 1000 % 1_000_000),
            // pendulum 3 (Airflow 2.10 on current Python): Monday is 0.
            "day_of_week" => Value::from(at.weekday().num_days_from_monday()),
            "day_of_year" => Value::from(at.ordinal()),
            "int_timestamp" => Value::from(at.timestamp()),
            "float_timestamp" => Value::from(timestamp(at)),
            "timezone_name" | "tzinfo" | "tz" | "timezone" => match self.kind {
                Kind::Aware => Value::from(at.timezone().name()),
                _ => Value::from(()),
            },
            _ => return None,
        })
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        let when = |w: When| Ok(Value::from_object(w));
        match method {
            "strftime" => {
                let (format,): (String,) = from_args(args)?;
                self.strftime(&format).map(Value::from)
            }
            "isoformat" => {
                let (sep, kwargs): (Option<String>, Kwargs) = from_args(args)?;
                let sep = sep.or(kwargs.get::<Option<String>>("sep")?).unwrap_or_else(|| "T".into());
                kwargs.assert_all_used()?;
                Ok(Value::from(self.isoformat(&sep)))
            }
            "to_iso8601_string" => {
                let () = from_args(args)?;
                Ok(Value::from(self.isoformat("T")))
            }
            "to_date_string" => {
                let () = from_args(args)?;
                Ok(Value::from(self.at.format("%Y-%m-%d").to_string()))
            }
            "to_datetime_string" => {
                let () = from_args(args)?;
                Ok(Value::from(self.at.format("%Y-%m-%d %H:%M:%S").to_string()))
            }
            "in_timezone" | "in_tz" | "astimezone" => {
                let (tz,): (Value,) = from_args(args)?;
                if self.kind == Kind::Date {
                    return Err(fail("a date has no time zone; call `in_timezone` on a date-time".into()));
                }
                when(When { at: self.at.with_timezone(&tz_arg(&tz)?), kind: Kind::Aware })
            }
            "add" | "subtract" => {
                let (kwargs,): (Kwargs,) = from_args(args).map_err(|_| {
                    fail(format!(
                        "`{method}` takes keyword arguments: `{method}(days=1)`, `{method}(hours=2, minutes=30)`"
                    ))
                })?;
                when(self.shifted(if method == "add" { 1 } else { -1 }, &kwargs)?)
            }
            "replace" => {
                let (kwargs,): (Kwargs,) = from_args(args)?;
                when(self.replaced(&kwargs)?)
            }
            "start_of" | "end_of" => {
                let (unit,): (String,) = from_args(args)?;
                when(self.boundary(&unit, method == "end_of")?)
            }
            "date" => {
                let () = from_args(args)?;
                let midnight = localize(Tz::UTC, self.naive().date().and_time(chrono::NaiveTime::MIN))
                    .ok_or_else(|| fail("the date is outside the supported dates".into()))?;
                when(When { at: midnight, kind: Kind::Date })
            }
            "timestamp" => {
                let () = from_args(args)?;
                Ok(Value::from(timestamp(&self.at)))
            }
            "weekday" => {
                let () = from_args(args)?;
                Ok(Value::from(self.at.weekday().num_days_from_monday()))
            }
            "isoweekday" => {
                let () = from_args(args)?;
                Ok(Value::from(self.at.weekday().number_from_monday()))
            }
            "format" => {
                Err(fail("pendulum's `format` tokens are not supported: use `strftime('%Y-%m-%d')` instead".into()))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn custom_cmp(self: &Arc<Self>, other: &minijinja::value::DynObject) -> Option<Ordering> {
        other.downcast_ref::<When>().map(|o| self.at.cmp(&o.at))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

fn timestamp(at: &DateTime<Tz>) -> f64 {
    at.timestamp() as f64 + f64::from(at.timestamp_subsec_micros()) / 1e6
}

/// A date argument: a date value, or an ISO string.
pub fn when_of(value: &Value) -> Result<When, Error> {
    if let Some(w) = value.downcast_object_ref::<When>() {
        return Ok(*w);
    }
    if let Some(s) = value.as_str() {
        return parse_iso(s);
    }
    Err(fail(format!("expected a date, got `{value}`")))
}

/// Python's `datetime.fromisoformat`, for the forms people write.
fn parse_iso(s: &str) -> Result<When, Error> {
    if let Ok(at) = DateTime::parse_from_rfc3339(s).or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z"))
    {
        return Ok(When::utc(at.to_utc()));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(When { at: Tz::UTC.from_utc_datetime(&naive), kind: Kind::Naive });
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(When { at: Tz::UTC.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN)), kind: Kind::Naive });
    }
    Err(fail(format!("`{s}` is not an ISO date such as `2024-01-31` or `2024-01-31T06:00:00+00:00`")))
}

/// Airflow's date filters: `{{ logical_date | ds }}` and friends.
pub fn filter_ds(value: Value) -> Result<String, Error> {
    Ok(when_of(&value)?.at.format("%Y-%m-%d").to_string())
}
pub fn filter_ds_nodash(value: Value) -> Result<String, Error> {
    Ok(when_of(&value)?.at.format("%Y%m%d").to_string())
}
pub fn filter_ts(value: Value) -> Result<String, Error> {
    Ok(when_of(&value)?.isoformat("T"))
}
pub fn filter_ts_nodash(value: Value) -> Result<String, Error> {
    Ok(when_of(&value)?.at.format("%Y%m%dT%H%M%S").to_string())
}
pub fn filter_ts_nodash_with_tz(value: Value) -> Result<String, Error> {
    Ok(when_of(&value)?.isoformat("T").replace(['-', ':'], ""))
}

/// `macros.datetime`: Python's `datetime.datetime` class — callable, with `now`, `utcnow`, `today`,
/// `strptime`, `fromisoformat` and `fromtimestamp`.
#[derive(Debug)]
pub struct DatetimeClass;

impl fmt::Display for DatetimeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<class 'datetime.datetime'>")
    }
}

impl DatetimeClass {
    /// Python's `datetime.strptime(text, format)`: naive unless the format reads an offset.
    pub fn parse(&self, text: &str, format: &str) -> Result<When, Error> {
        let items = strftime_items(format)?;
        let mut parsed = chrono::format::Parsed::new();
        chrono::format::parse(&mut parsed, text, items.iter())
            .map_err(|e| fail(format!("`{text}` does not match `{format}`: {e}")))?;
        if let Ok(aware) = parsed.to_datetime() {
            return in_calendar(When::utc(aware.to_utc()));
        }
        let date = parsed.to_naive_date().map_err(|e| fail(format!("`{text}` does not match `{format}`: {e}")))?;
        let time = parsed.to_naive_time().unwrap_or(chrono::NaiveTime::MIN);
        in_calendar(When { at: Tz::UTC.from_utc_datetime(&date.and_time(time)), kind: Kind::Naive })
    }
}

impl Object for DatetimeClass {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    /// `macros.datetime(2024, 1, 31, 6)`: a naive date-time; `tzinfo='Asia/Shanghai'` makes it aware.
    fn call(self: &Arc<Self>, _state: &mut State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let (year, month, day, rest, kwargs): (i32, u32, u32, &[Value], Kwargs) = from_args(args)?;
        let mut parts = [0u32; 4];
        for (i, v) in rest.iter().enumerate() {
            let slot = parts.get_mut(i).ok_or_else(|| fail("`datetime(...)` takes at most 7 numbers".into()))?;
            *slot = u32::try_from(v.clone()).map_err(|_| fail(format!("`{v}` is not a valid date-time part")))?;
        }
        for (i, name) in ["hour", "minute", "second", "microsecond"].into_iter().enumerate() {
            if let Some(v) = kwargs.get::<Option<u32>>(name)? {
                parts[i] = v;
            }
        }
        let tz: Option<String> = kwargs.get("tzinfo")?;
        kwargs.assert_all_used()?;
        let [h, mi, s, us] = parts;
        let naive = NaiveDate::from_ymd_opt(year, month, day)
            .and_then(|d| d.and_hms_micro_opt(h, mi, s, us))
            .filter(|d| (1..=9999).contains(&d.year()))
            .ok_or_else(|| {
                fail(format!("`datetime({year}, {month}, {day}, {h}, {mi}, {s}, {us})` is no valid date"))
            })?;
        let when = match tz {
            Some(name) => {
                let zone = time_zone(&name)?;
                let at = localize(zone, naive).ok_or_else(|| fail("no such local time".into()))?;
                When { at, kind: Kind::Aware }
            }
            None => When { at: Tz::UTC.from_utc_datetime(&naive), kind: Kind::Naive },
        };
        Ok(Value::from_object(when))
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        let naive =
            |at: NaiveDateTime| Value::from_object(When { at: Tz::UTC.from_utc_datetime(&at), kind: Kind::Naive });
        match method {
            "now" | "today" => {
                let (tz,): (Option<Value>,) = from_args(args)?;
                Ok(match tz {
                    Some(tz) => {
                        Value::from_object(When { at: Utc::now().with_timezone(&tz_arg(&tz)?), kind: Kind::Aware })
                    }
                    None => naive(chrono::Local::now().naive_local()),
                })
            }
            "utcnow" => {
                let () = from_args(args)?;
                Ok(naive(Utc::now().naive_utc()))
            }
            "fromisoformat" => {
                let (s,): (String,) = from_args(args)?;
                Ok(Value::from_object(parse_iso(&s)?))
            }
            "fromtimestamp" | "utcfromtimestamp" => {
                let (ts, tz): (f64, Option<Value>) = from_args(args)?;
                let at = (ts.is_finite() && ts.abs() < 2.5e11)
                    .then(|| DateTime::<Utc>::from_timestamp_micros((ts * 1e6) as i64))
                    .flatten()
                    .filter(|at| (1..=9999).contains(&at.year()))
                    .ok_or_else(|| fail(format!("timestamp `{ts}` is outside the supported dates")))?;
                Ok(match tz {
                    Some(tz) => Value::from_object(When { at: at.with_timezone(&tz_arg(&tz)?), kind: Kind::Aware }),
                    None if method == "utcfromtimestamp" => naive(at.naive_utc()),
                    None => naive(at.with_timezone(&chrono::Local).naive_local()),
                })
            }
            "strptime" => {
                let (s, format): (String, String) = from_args(args)?;
                Ok(Value::from_object(self.parse(&s, &format)?))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}

/// Python's `datetime.timedelta`, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Delta {
    pub micros: i64,
}

impl Delta {
    fn parts(&self) -> (i64, i64, i64) {
        let days = self.micros.div_euclid(86_400_000_000);
        let rest = self.micros.rem_euclid(86_400_000_000);
        (days, rest / 1_000_000, rest % 1_000_000)
    }
}

/// `macros.timedelta(days=1, hours=2)`, or positionally as Python's
/// `timedelta(days, seconds, microseconds, milliseconds, minutes, hours, weeks)`.
pub fn timedelta(args: &[Value]) -> Result<Value, Error> {
    let (positional, kwargs): (&[Value], Kwargs) = from_args(args)?;
    const NAMES: [(&str, f64); 7] = [
        ("days", 8.64e10),
        ("seconds", 1e6),
        ("microseconds", 1.0),
        ("milliseconds", 1e3),
        ("minutes", 6e7),
        ("hours", 3.6e9),
        ("weeks", 6.048e11),
    ];
    if positional.len() > NAMES.len() {
        return Err(fail("`timedelta(...)` takes at most 7 numbers".into()));
    }
    let mut micros = 0f64;
    for (i, (name, scale)) in NAMES.into_iter().enumerate() {
        let from_position = positional.get(i).map(|v| f64::try_from(v.clone())).transpose()?;
        let from_keyword = kwargs.get::<Option<f64>>(name)?;
        micros += from_position.or(from_keyword).unwrap_or(0.0) * scale;
    }
    kwargs.assert_all_used()?;
    if !micros.is_finite() || micros.abs() > MAX_MICROS {
        return Err(fail("the timedelta is larger than the supported range (about 3,000 years)".into()));
    }
    Ok(Value::from_object(Delta { micros: micros.round() as i64 }))
}

impl fmt::Display for Delta {
    /// As Python's `str(timedelta)`: `1 day, 2:00:00`, `0:05:00`, `-1 day, 23:59:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, secs, micros) = self.parts();
        if days != 0 {
            write!(f, "{days} day{}, ", if days.abs() == 1 { "" } else { "s" })?;
        }
        write!(f, "{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        Ok(())
    }
}

impl Object for Delta {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let (days, secs, micros) = self.parts();
        Some(match key.as_str()? {
            "days" => Value::from(days),
            "seconds" => Value::from(secs),
            "microseconds" => Value::from(micros),
            _ => return None,
        })
    }

    fn call_method(self: &Arc<Self>, _state: &mut State<'_, '_>, method: &str, args: &[Value]) -> Result<Value, Error> {
        match method {
            "total_seconds" => {
                let () = from_args(args)?;
                Ok(Value::from(self.micros as f64 / 1e6))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn custom_cmp(self: &Arc<Self>, other: &minijinja::value::DynObject) -> Option<Ordering> {
        other.downcast_ref::<Delta>().map(|o| self.micros.cmp(&o.micros))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_ref(), f)
    }
}
