//! Per-robot rate limits as sliding windows over the attempts the store recorded, so a restart
//! counts what the last process sent: never more than `max` attempts in any window of `per`.
//!
//! A token bucket of 20 can let 40 through in 60 s (a full bucket, then its refill); DingTalk
//! blocks a robot for 10 minutes past 20 a minute, so the window is counted, not estimated.

use super::channel::ChannelKind;
use chrono::{DateTime, TimeDelta, Utc};

/// At most `max` attempts in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: usize,
    pub per: TimeDelta,
}

const MINUTE: TimeDelta = TimeDelta::seconds(60);
const SECOND: TimeDelta = TimeDelta::seconds(1);
const DINGTALK: &[RateLimit] = &[RateLimit { max: 20, per: MINUTE }];
const WECOM: &[RateLimit] = &[RateLimit { max: 20, per: MINUTE }];
const FEISHU: &[RateLimit] = &[RateLimit { max: 100, per: MINUTE }, RateLimit { max: 5, per: SECOND }];

pub(super) fn limits_of(kind: ChannelKind) -> &'static [RateLimit] {
    match kind {
        ChannelKind::DingTalk => DINGTALK,
        ChannelKind::WeCom => WECOM,
        ChannelKind::Feishu => FEISHU,
        ChannelKind::Email | ChannelKind::Slack | ChannelKind::Webhook => &[],
    }
}

/// What a channel may send at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Attempts allowed now under every limit.
    pub now: usize,
    /// Attempts left in the longest window (what a burst is coalesced down to); `usize::MAX`
    /// without limits.
    pub window: usize,
    /// When one more attempt is allowed, if none is now.
    pub next_free: Option<DateTime<Utc>>,
}

/// The allowance at `now` given the attempts made (any order). An attempt at `t` counts in
/// every window `[t, t + per]`, ends included.
pub fn allowance(limits: &[RateLimit], attempts: &[DateTime<Utc>], now: DateTime<Utc>) -> Allowance {
    let mut out = Allowance { now: usize::MAX, window: usize::MAX, next_free: None };
    let longest = limits.iter().map(|l| l.per).max();
    for limit in limits {
        let since = now - limit.per;
        let mut inside: Vec<DateTime<Utc>> = attempts.iter().copied().filter(|t| *t >= since).collect();
        inside.sort();
        let left = limit.max.saturating_sub(inside.len());
        out.now = out.now.min(left);
        if Some(limit.per) == longest {
            out.window = out.window.min(left);
        }
        if left == 0 {
            // The oldest attempt that must leave the window before one more fits.
            let leaving = inside[inside.len() - limit.max];
            let free = leaving + limit.per + TimeDelta::milliseconds(1);
            out.next_free = Some(out.next_free.map_or(free, |f| f.max(free)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    /// Sends as fast as the allowance lets, over simulated time, and checks every window.
    #[test]
    fn no_window_of_sixty_seconds_ever_holds_more_than_twenty() {
        let limits = ChannelKind::DingTalk.limits();
        let mut sent: Vec<DateTime<Utc>> = Vec::new();
        let mut now = at(0);
        while now < at(300_000) {
            let a = allowance(limits, &sent, now);
            for _ in 0..a.now {
                sent.push(now);
            }
            now = a.next_free.unwrap_or(now + TimeDelta::milliseconds(250)).max(now + TimeDelta::milliseconds(1));
        }
        for t in &sent {
            let window = sent.iter().filter(|s| **s >= *t && **s <= *t + MINUTE).count();
            assert!(window <= 20, "{window} attempts in the minute from {t}");
        }
        assert!(sent.len() >= 80, "the budget is used: {}", sent.len());
    }

    #[test]
    fn feishu_counts_both_windows() {
        let limits = ChannelKind::Feishu.limits();
        let five: Vec<_> = (0..5).map(|i| at(i * 10)).collect();
        let a = allowance(limits, &five, at(100));
        assert_eq!((a.now, a.window), (0, 95));
        assert_eq!(a.next_free, Some(at(1001)));
        assert_eq!(allowance(limits, &five, at(1001)).now, 1);
        assert_eq!(allowance(limits, &five, at(1041)).now, 5);
        assert_eq!(allowance(&[], &five, at(0)).now, usize::MAX);
    }
}
