//! Things said in words: a schedule ("every 10 minutes", the cron on hover), a duration
//! ("1m 05s"), a state's short label (never colour alone).

use super::{Lang, Ui};
use crate::model::{DagSpec, ScheduleSpec, TaskState};

/// A schedule in words, in `lang`.
pub fn schedule(ui: &Ui, lang: Lang, spec: &DagSpec) -> String {
    let t = |k: &str| ui.text(lang, k);
    match &spec.schedule {
        ScheduleSpec::None => t("sched_none"),
        ScheduleSpec::Once => t("sched_once"),
        ScheduleSpec::Interval { every } => {
            t("sched_every").replace("{d}", &duration(every.as_millis() as f64 / 1000.0))
        }
        ScheduleSpec::Cron { expr, preset } => {
            let words = match preset.as_deref() {
                Some("@hourly") => Some(t("sched_hourly")),
                Some("@daily") | Some("@midnight") => Some(t("sched_daily")),
                Some("@weekly") => Some(t("sched_weekly")),
                Some("@monthly") => Some(t("sched_monthly")),
                Some("@yearly") | Some("@annually") => Some(t("sched_yearly")),
                _ => cron_words(ui, lang, expr),
            };
            let mut out = words.unwrap_or_else(|| t("sched_cron").replace("{c}", expr));
            let zone = spec.timezone.to_string();
            if zone != "UTC" {
                out.push_str(&format!(" ({zone})"));
            }
            out
        }
    }
}

/// The cron shapes people write most, in words; `None` for the rest (shown as the cron).
fn cron_words(ui: &Ui, lang: Lang, expr: &str) -> Option<String> {
    let t = |k: &str| ui.text(lang, k);
    let f: Vec<&str> = expr.split_whitespace().collect();
    let [min, hour, dom, mon, dow] = f[..] else { return None };
    let num = |s: &str| s.parse::<u32>().ok();
    let step = |s: &str| s.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    let rest_any = dom == "*" && mon == "*" && dow == "*";
    if rest_any && hour == "*" {
        if min == "*" {
            return Some(t("sched_every_minute"));
        }
        if let Some(n) = step(min) {
            return Some(t("sched_every_n_minutes").replace("{n}", &n.to_string()));
        }
        if let Some(m) = num(min) {
            return Some(t("sched_hourly_at").replace("{m}", &format!("{m:02}")));
        }
    }
    if rest_any && let (Some(m), Some(n)) = (num(min), step(hour)) {
        return Some(t("sched_every_n_hours").replace("{n}", &n.to_string()).replace("{m}", &format!("{m:02}")));
    }
    if let (Some(m), Some(h)) = (num(min), num(hour)) {
        let at = format!("{h:02}:{m:02}");
        if rest_any {
            return Some(t("sched_daily_at").replace("{t}", &at));
        }
        if dom == "*" && mon == "*" {
            return Some(t("sched_weekdays_at").replace("{t}", &at).replace("{d}", dow));
        }
        if mon == "*" && dow == "*" && num(dom).is_some() {
            return Some(t("sched_monthly_at").replace("{t}", &at).replace("{d}", dom));
        }
    }
    None
}

/// `3.2s`, `1m 05s`, `2h 03m`, `1d 04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return String::new();
    }
    if secs < 60.0 {
        return if secs < 10.0 { format!("{secs:.1}s") } else { format!("{secs:.0}s") };
    }
    let s = secs.round() as u64;
    match s {
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A short mark for each state, shown in the cell beside its colour.
pub fn glyph(state: &str) -> &'static str {
    match state {
        "success" => "✓",
        "failed" => "✗",
        "running" => "▶",
        "queued" => "…",
        "scheduled" => "◷",
        "up_for_retry" => "↻",
        "up_for_reschedule" => "⟳",
        "upstream_failed" => "!",
        "skipped" => "»",
        "restarting" => "↺",
        "deferred" => "⏸",
        "removed" => "–",
        _ => "",
    }
}

/// The worst state among a group's task instances (what its summary row shows).
pub fn worst(states: impl Iterator<Item = TaskState>) -> Option<TaskState> {
    fn rank(s: TaskState) -> u8 {
        match s {
            TaskState::Failed => 10,
            TaskState::UpstreamFailed => 9,
            TaskState::Running | TaskState::Restarting => 8,
            TaskState::UpForRetry => 7,
            TaskState::UpForReschedule => 6,
            TaskState::Queued => 5,
            TaskState::Scheduled => 4,
            TaskState::None => 3,
            TaskState::Success => 2,
            TaskState::Skipped => 1,
            TaskState::Removed => 0,
        }
    }
    states.max_by_key(|s| rank(*s))
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(3.24), "3.2s");
        assert_eq!(duration(65.0), "1m 05s");
        assert_eq!(duration(7380.0), "2h 03m");
        assert_eq!(duration(100_800.0), "1d 04h");
        assert_eq!(duration(f64::NAN), "");
    }
}
