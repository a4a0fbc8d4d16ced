//! The channels of `[alerts]` by name (`email`, `dingtalk.ops`, …), resolved once from the config.

use super::limit::{RateLimit, limits_of};
use crate::config::{AlertsConfig, DingTalkConfig, EmailConfig, FeishuConfig, SlackConfig, WeComConfig, WebhookConfig};
use std::collections::BTreeMap;

/// The kinds of channel; each has its own message shape, signing and rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Email,
    DingTalk,
    Feishu,
    WeCom,
    Slack,
    Webhook,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::DingTalk => "dingtalk",
            ChannelKind::Feishu => "feishu",
            ChannelKind::WeCom => "wecom",
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
        }
    }

    /// The service's published limits, per robot.
    pub fn limits(self) -> &'static [RateLimit] {
        limits_of(self)
    }
}

/// Where one channel sends, with its secrets.
#[derive(Debug, Clone)]
pub enum Target {
    Email(EmailConfig),
    DingTalk(DingTalkConfig),
    Feishu(FeishuConfig),
    WeCom(WeComConfig),
    Slack(SlackConfig),
    Webhook(WebhookConfig),
}

/// One configured channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub target: Target,
}

impl Channel {
    pub fn kind(&self) -> ChannelKind {
        match &self.target {
            Target::Email(_) => ChannelKind::Email,
            Target::DingTalk(_) => ChannelKind::DingTalk,
            Target::Feishu(_) => ChannelKind::Feishu,
            Target::WeCom(_) => ChannelKind::WeCom,
            Target::Slack(_) => ChannelKind::Slack,
            Target::Webhook(_) => ChannelKind::Webhook,
        }
    }

    /// `[alerts.CHANNEL] template`, when set.
    pub fn template(&self) -> Option<&str> {
        match &self.target {
            Target::Email(c) => c.template.as_deref(),
            Target::DingTalk(c) => c.template.as_deref(),
            Target::Feishu(c) => c.template.as_deref(),
            Target::WeCom(c) => c.template.as_deref(),
            Target::Slack(c) => c.template.as_deref(),
            Target::Webhook(c) => c.template.as_deref(),
        }
    }

    /// Every secret this channel holds (addresses with tokens, sign secrets, passwords), for masking.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |s: &Option<crate::config::Secret>| {
            if let Some(s) = s {
                out.push(s.expose().to_string());
            }
        };
        match &self.target {
            Target::Email(c) => add(&c.password),
            Target::DingTalk(c) => {
                add(&c.webhook);
                add(&c.secret);
            }
            Target::Feishu(c) => {
                add(&c.webhook);
                add(&c.secret);
            }
            Target::WeCom(c) => add(&c.webhook),
            Target::Slack(c) => add(&c.webhook),
            Target::Webhook(c) => {
                add(&c.url);
                add(&c.secret);
                out.extend(c.headers.values().cloned());
            }
        }
        // A URL's query values (`access_token=…`, `key=…`) and last path segment are tokens too,
        // and so is its password, however a receiver may echo it back: as written, decoded, as
        // `user:password`, and as the Basic credentials it becomes.
        let mut parts = Vec::new();
        for s in &out {
            if let Ok(url) = reqwest::Url::parse(s) {
                if let Some(password) = url.password() {
                    use base64::Engine;
                    let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy().into_owned();
                    let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy().into_owned();
                    let pair = format!("{user}:{decoded}");
                    parts.push(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
                    parts.push(pair);
                    parts.push(password.to_string());
                    parts.push(decoded);
                }
                parts.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
                if let Some(last) = url.path_segments().and_then(|mut p| p.next_back()) {
                    parts.push(last.to_string());
                }
                if let Some(q) = url.query() {
                    parts.push(q.to_string());
                }
            }
        }
        out.extend(parts);
        out.retain(|s| s.len() >= 6);
        out
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChannelError {
    #[error("unknown alert channel `{name}` ({known})")]
    Unknown { name: String, known: String },
    #[error(
        "`ding_on_failure` / `ding_on_retry` is set but no DingTalk robot is configured (add `[alerts.dingtalk.default]`)"
    )]
    NoDingRobot,
    #[error("the task asks for email but has no `email` address and `[alerts.email] to` is empty")]
    NoRecipients,
}

/// Every configured channel by name.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    by_name: BTreeMap<String, Channel>,
    /// The robot plain `dingtalk` (`ding_on_failure`) means.
    ding: Option<String>,
}

impl Channels {
    pub fn from_config(c: &AlertsConfig) -> Channels {
        let mut by_name = BTreeMap::new();
        let mut add = |name: String, target: Target| {
            by_name.insert(name.clone(), Channel { name, target });
        };
        if let Some(e) = &c.email {
            add("email".into(), Target::Email(e.clone()));
        }
        for (k, v) in &c.dingtalk {
            add(format!("dingtalk.{k}"), Target::DingTalk(v.clone()));
        }
        for (k, v) in &c.feishu {
            add(format!("feishu.{k}"), Target::Feishu(v.clone()));
        }
        for (k, v) in &c.wecom {
            add(format!("wecom.{k}"), Target::WeCom(v.clone()));
        }
        for (k, v) in &c.slack {
            add(format!("slack.{k}"), Target::Slack(v.clone()));
        }
        for (k, v) in &c.webhook {
            add(format!("webhook.{k}"), Target::Webhook(v.clone()));
        }
        Channels { by_name, ding: c.ding_robot().ok().flatten() }
    }

    /// The channel called `name`; plain `dingtalk` (rows written before names were resolved)
    /// is the default robot.
    pub fn get(&self, name: &str) -> Result<&Channel, ChannelError> {
        let resolved = match (name, &self.ding) {
            ("dingtalk", Some(robot)) => robot.as_str(),
            ("dingtalk", None) => return Err(ChannelError::NoDingRobot),
            _ => name,
        };
        self.by_name.get(resolved).ok_or_else(|| ChannelError::Unknown { name: name.to_string(), known: self.known() })
    }

    fn known(&self) -> String {
        if self.by_name.is_empty() {
            "no channel is configured in `[alerts]`".into()
        } else {
            format!("configured: {}", self.names().join(", "))
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every secret of every channel, longest first (so a URL is masked before its token).
    pub fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = self.by_name.values().flat_map(Channel::secrets).collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook URL's password is masked however a receiver echoes it back in an error: as
    /// written, decoded, as `user:password`, and as the Basic credentials it becomes.
    #[test]
    fn a_urls_password_is_a_secret_in_every_form() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rhaiflow.toml"), "[alerts.webhook.pager]\nurl_env = \"PAGER_URL\"\n").unwrap();
        let url = "http://hookuser:Hook%40Passw0rd@127.0.0.1:1/hook/TOKEN123abc?key=SECRETKEY456";
        let env = [("PAGER_URL".to_string(), url.to_string())].into_iter().collect();
        let flags = crate::config::Flags { home: Some(dir.path().into()), ..Default::default() };
        let config = crate::config::Config::load_from(&flags, env).unwrap();
        let secrets = Channels::from_config(&config.alerts).secrets();
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("hookuser:Hook@Passw0rd");
        let echoed =
            format!("HTTP 500: auth=Basic {basic} decoded=hookuser:Hook@Passw0rd raw=Hook%40Passw0rd url={url}");
        let masked = crate::alert::send::mask(&echoed, &secrets);
        for leak in ["Passw0rd", basic.as_str(), "TOKEN123abc", "SECRETKEY456"] {
            assert!(!masked.contains(leak), "{leak} in {masked}");
        }
    }
}
