//! A span of time as DAG authors write it (`minutes(5)`): milliseconds inside, seconds in JSON.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A non-negative span of time with millisecond precision, serialised as a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimeSpan {
    millis: u64,
}

impl TimeSpan {
    pub const ZERO: TimeSpan = TimeSpan { millis: 0 };

    /// The longest span a DAG file may give (100 years of 365.25 days): far beyond any real
    /// schedule or timeout, and far inside what date arithmetic can add to a date.
    pub const MAX: TimeSpan = TimeSpan { millis: 3_155_760_000_000 };

    /// Whole seconds, or `None` past `TimeSpan::MAX`.
    pub fn checked_from_secs(secs: u64) -> Option<Self> {
        secs.checked_mul(1000).map(TimeSpan::from_millis).filter(|d| *d <= TimeSpan::MAX)
    }

    /// Fractional seconds, or `None` when negative, not finite, or past `TimeSpan::MAX`.
    pub fn checked_from_secs_f64(secs: f64) -> Option<Self> {
        let millis = (secs * 1000.0).round();
        (millis.is_finite() && millis >= 0.0 && millis <= TimeSpan::MAX.millis as f64)
            .then_some(TimeSpan { millis: millis as u64 })
    }

    /// The sum, or `None` past `TimeSpan::MAX`.
    pub fn checked_add(self, other: TimeSpan) -> Option<Self> {
        self.millis.checked_add(other.millis).map(TimeSpan::from_millis).filter(|d| *d <= TimeSpan::MAX)
    }

    /// `n` times this span, or `None` when `n` is negative or the product is past `TimeSpan::MAX`.
    pub fn checked_mul(self, n: i64) -> Option<Self> {
        let n = u64::try_from(n).ok()?;
        self.millis.checked_mul(n).map(TimeSpan::from_millis).filter(|d| *d <= TimeSpan::MAX)
    }

    pub fn from_millis(millis: u64) -> Self {
        TimeSpan { millis }
    }

    pub fn from_secs(secs: u64) -> Self {
        TimeSpan { millis: secs.saturating_mul(1000) }
    }

    /// Converts fractional seconds, clamping negatives to zero.
    pub fn from_secs_f64(secs: f64) -> Self {
        if secs.is_finite() && secs > 0.0 {
            TimeSpan { millis: (secs * 1000.0).round() as u64 }
        } else {
            TimeSpan::ZERO
        }
    }

    pub fn as_millis(self) -> u64 {
        self.millis
    }

    pub fn as_secs_f64(self) -> f64 {
        self.millis as f64 / 1000.0
    }

    pub fn as_std(self) -> Duration {
        Duration::from_millis(self.millis)
    }

    pub fn as_chrono(self) -> chrono::TimeDelta {
        let millis = i64::try_from(self.millis).unwrap_or(i64::MAX);
        chrono::TimeDelta::try_milliseconds(millis).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl fmt::Display for TimeSpan {
    /// Airflow-style `H:MM:SS` (with days when long), e.g. `0:05:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.millis / 1000;
        let (days, rem) = (total / 86_400, total % 86_400);
        let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
        if days > 0 {
            write!(f, "{days} day{}, ", if days == 1 { "" } else { "s" })?;
        }
        write!(f, "{h}:{m:02}:{s:02}")?;
        let ms = self.millis % 1000;
        if ms > 0 {
            write!(f, ".{ms:03}")?;
        }
        Ok(())
    }
}

impl Serialize for TimeSpan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.millis.is_multiple_of(1000) {
            s.serialize_u64(self.millis / 1000)
        } else {
            s.serialize_f64(self.as_secs_f64())
        }
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = f64::deserialize(d)?;
        Ok(TimeSpan::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_python_timedelta() {
        assert_eq!(TimeSpan::from_secs(300).to_string(), "0:05:00");
        assert_eq!(TimeSpan::from_secs(90_061).to_string(), "1 day, 1:01:01");
        assert_eq!(TimeSpan::from_millis(1500).to_string(), "0:00:01.500");
    }

    #[test]
    fn checked_constructors_refuse_what_dates_cannot_hold() {
        assert_eq!(TimeSpan::checked_from_secs(60), Some(TimeSpan::from_secs(60)));
        assert_eq!(TimeSpan::checked_from_secs(100_000_000 * 86_400), None);
        assert_eq!(TimeSpan::checked_from_secs(u64::MAX), None);
        assert_eq!(TimeSpan::checked_from_secs_f64(1.5), Some(TimeSpan::from_millis(1500)));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert_eq!(TimeSpan::checked_from_secs_f64(bad), None, "{bad}");
        }
        assert_eq!(TimeSpan::from_secs(10).checked_mul(-1), None);
        assert_eq!(TimeSpan::MAX.checked_add(TimeSpan::from_millis(1)), None);
        assert_eq!(TimeSpan::from_secs(1).checked_mul(3), Some(TimeSpan::from_secs(3)));
    }

    #[test]
    fn round_trips_through_json() {
        let d = TimeSpan::from_millis(2500);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "2.5");
        assert_eq!(serde_json::from_str::<TimeSpan>(&json).unwrap(), d);
    }
}
