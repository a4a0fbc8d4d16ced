//! Sending one message through one channel: public and reusable (the deliverer, `alerts test`,
//! and the notifier operators and callbacks use the same function). Each service's answer is
//! judged as the service means it (`errcode`, `code`, `ok`); errors never carry a URL or secret.

use super::channel::{Channel, ChannelKind, Target};
use super::message::Message;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use std::time::Duration;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What the service answered to a delivered message (bounded, secrets masked).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Could not reach the service or the conversation broke (retried).
    #[error("{0}")]
    Transport(String),
    /// No connection was made: the service never saw the message (a rate limit need not count it).
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?} (the channel's timeout)")]
    Timeout(Duration),
    /// The service answered with an HTTP error status (retried).
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The service answered 200 with an error code in its body (retried, bounded).
    #[error("{service} refused the message: errcode {code}{hint}: {message}")]
    Refused { service: &'static str, code: i64, hint: &'static str, message: String },
    /// Nothing to retry: the message or the channel's settings are wrong.
    #[error("{0}")]
    Invalid(String),
}

impl SendError {
    /// Another try cannot succeed without a change of config.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Invalid(_))
    }

    /// The message certainly did not reach the service.
    pub fn unreached(&self) -> bool {
        matches!(self, SendError::Unreachable(_))
    }

    /// The service asks for a pause longer than the usual backoff: DingTalk's 130101 (sent too
    /// fast) blocks the robot for 10 minutes.
    pub fn pause(&self) -> Option<Duration> {
        match self {
            SendError::Refused { code: 130101, .. } => Some(Duration::from_secs(600)),
            _ => None,
        }
    }
}

/// Replaces every secret in `text` with `***` (longest first).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// DingTalk's robot signature: base64 of HMAC-SHA256 keyed by the secret over
/// `"{timestamp_ms}\n{secret}"` (URL-encoded when appended to the webhook as `sign`).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    base64(&hmac_sha256(secret.as_bytes(), format!("{timestamp_ms}\n{secret}").as_bytes()))
}

/// Feishu/Lark's bot signature: base64 of HMAC-SHA256 keyed by `"{timestamp_s}\n{secret}"` over
/// an empty message.
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    base64(&hmac_sha256(format!("{timestamp_s}\n{secret}").as_bytes(), b""))
}

/// `X-Rhaiflow-Signature` of a webhook body: `sha256=HEX` of HMAC-SHA256 keyed by the secret.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), body)))
}

/// Longest answer text kept.
const ANSWER_CHARS: usize = 500;

fn bounded(text: &str) -> String {
    match text.char_indices().nth(ANSWER_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Sends messages; cheap to clone (one pooled HTTP client).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    timeout: Duration,
}

impl Sender {
    pub fn new(timeout: Duration) -> Sender {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("rhaiflow/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Sender { http, timeout }
    }

    /// Sends `message` through `channel` at `now` (signatures carry the time). Errors and the
    /// answer are masked with the channel's secrets.
    pub async fn send(&self, channel: &Channel, message: &Message, now: DateTime<Utc>) -> Result<Answer, SendError> {
        let result = match &channel.target {
            Target::Email(c) => self.email(c, &Mail::of(message)).await,
            _ => match body_of(channel, message) {
                Ok(body) => self.post(channel, body, now).await,
                Err(e) => Err(e),
            },
        };
        masked(channel, result)
    }

    /// Sends a service's own JSON body (a DingTalk `msgtype`, a Feishu `msg_type`, a WeCom or
    /// Slack message: the notifier operators) through an HTTP channel, signed as the channel
    /// signs; the answer is judged as the service means it. Masked as [`Sender::send`].
    pub async fn send_body(
        &self,
        channel: &Channel,
        body: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Answer, SendError> {
        masked(channel, self.post(channel, body, now).await)
    }

    /// Sends a mail (`EmailOperator`: cc, bcc, HTML, attachments) through the `email` channel.
    pub async fn send_mail(&self, channel: &Channel, mail: &Mail) -> Result<Answer, SendError> {
        let result = match &channel.target {
            Target::Email(c) => self.email(c, mail).await,
            _ => Err(SendError::Invalid(format!("channel `{}` does not send mail", channel.name))),
        };
        masked(channel, result)
    }

    async fn post(
        &self,
        channel: &Channel,
        mut body: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Answer, SendError> {
        let invalid = |what: &str| SendError::Invalid(format!("channel `{}`: {what}", channel.name));
        let url_of = |s: &Option<crate::config::Secret>| {
            let text = s.as_ref().map(|s| s.expose()).unwrap_or_default();
            reqwest::Url::parse(text).map_err(|_| invalid("its webhook is not a URL"))
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        let url = match &channel.target {
            Target::DingTalk(c) => {
                let mut url = url_of(&c.webhook)?;
                if let Some(secret) = &c.secret {
                    let ts = now.timestamp_millis();
                    let sign = dingtalk_sign(secret.expose(), ts);
                    url.query_pairs_mut().append_pair("timestamp", &ts.to_string()).append_pair("sign", &sign);
                }
                url
            }
            Target::Feishu(c) => {
                if let Some(secret) = &c.secret {
                    let ts = now.timestamp();
                    body["timestamp"] = serde_json::Value::String(ts.to_string());
                    body["sign"] = serde_json::Value::String(feishu_sign(secret.expose(), ts));
                }
                url_of(&c.webhook)?
            }
            Target::WeCom(c) => url_of(&c.webhook)?,
            Target::Slack(c) => url_of(&c.webhook)?,
            Target::Webhook(c) => {
                headers.extend(c.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                if let Some(secret) = &c.secret {
                    let bytes = serde_json::to_vec(&body).unwrap_or_default();
                    headers.push(("X-Rhaiflow-Signature".into(), webhook_signature(secret.expose(), &bytes)));
                }
                url_of(&c.url)?
            }
            Target::Email(_) => return Err(invalid("is not an HTTP channel")),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| invalid(&e.to_string()))?;
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(bytes);
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport(e))?;
        let text = bounded(&text);
        if !status.is_success() {
            return Err(SendError::Status { status: status.as_u16(), body: text });
        }
        judge(channel.kind(), &text)?;
        Ok(Answer { text })
    }

    fn transport(&self, e: reqwest::Error) -> SendError {
        if e.is_timeout() {
            return SendError::Timeout(self.timeout);
        }
        // The URL holds the token: drop it, then name the causes.
        let e = e.without_url();
        let mut causes = vec![e.to_string()];
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            causes.push(inner.to_string());
            source = inner.source();
        }
        causes.dedup();
        if e.is_connect() { SendError::Unreachable(causes.join(": ")) } else { SendError::Transport(causes.join(": ")) }
    }

    async fn email(&self, c: &crate::config::EmailConfig, m: &Mail) -> Result<Answer, SendError> {
        use lettre::message::header::ContentType;
        use lettre::message::{Attachment, MultiPart, SinglePart};
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
        let invalid = |what: String| SendError::Invalid(format!("channel `email`: {what}"));
        if c.host.trim().is_empty() {
            return Err(invalid("`[alerts.email] host` is empty; name the SMTP server".into()));
        }
        let recipients: Vec<String> = if m.to.is_empty() { c.to.clone() } else { m.to.clone() };
        if recipients.is_empty() {
            return Err(invalid("no recipient (the task's `email`, or `[alerts.email] to`)".into()));
        }
        let from = c.mail_from.clone().unwrap_or_else(|| "rhaiflow@localhost".into());
        let mut mail = lettre::Message::builder()
            .from(from.parse().map_err(|e| invalid(format!("`mail_from` `{from}`: {e}")))?)
            .subject(m.subject.clone());
        for to in &recipients {
            mail = mail.to(to.parse().map_err(|e| invalid(format!("recipient `{to}`: {e}")))?);
        }
        for cc in &m.cc {
            mail = mail.cc(cc.parse().map_err(|e| invalid(format!("cc `{cc}`: {e}")))?);
        }
        for bcc in &m.bcc {
            mail = mail.bcc(bcc.parse().map_err(|e| invalid(format!("bcc `{bcc}`: {e}")))?);
        }
        let content_type = if m.html { ContentType::TEXT_HTML } else { ContentType::TEXT_PLAIN };
        let mail = if m.files.is_empty() {
            mail.header(content_type).body(m.body.clone())
        } else {
            let mut parts =
                MultiPart::mixed().singlepart(SinglePart::builder().header(content_type).body(m.body.clone()));
            for (name, bytes) in &m.files {
                let octets = ContentType::parse("application/octet-stream").map_err(|e| invalid(e.to_string()))?;
                parts = parts.singlepart(Attachment::new(name.clone()).body(bytes.clone(), octets));
            }
            mail.multipart(parts)
        }
        .map_err(|e| invalid(e.to_string()))?;
        let smtp_error = |e: lettre::transport::smtp::Error| SendError::Transport(format!("SMTP: {e}"));
        let builder = if c.ssl {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host).map_err(smtp_error)?
        } else if c.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host).map_err(smtp_error)?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host)
        };
        let port = c.port.unwrap_or(if c.ssl {
            465
        } else if c.starttls {
            587
        } else {
            25
        });
        let timeout = Duration::from_secs_f64(c.timeout);
        let mut builder = builder.port(port).timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&c.user, &c.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string()));
        }
        let transport = builder.build();
        let sent = tokio::time::timeout(timeout, transport.send(mail)).await;
        let response = match sent {
            Err(_) => return Err(SendError::Timeout(timeout)),
            Ok(r) => r.map_err(smtp_error)?,
        };
        let text = format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" "));
        Ok(Answer { text: bounded(&text) })
    }
}

/// A mail as the `email` channel sends it: an alert's (plain text to the task's `email`) or
/// `EmailOperator`'s (cc, bcc, HTML, attachments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mail {
    /// Empty: `[alerts.email] to`.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
    /// The body is HTML (`html_content`), else plain text.
    pub html: bool,
    /// Attachments: file name and content.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Mail {
    fn of(message: &Message) -> Mail {
        Mail {
            to: message.context.email.clone(),
            subject: message.title.clone(),
            body: message.text.clone(),
            ..Mail::default()
        }
    }
}

/// Errors and answers never show a channel's secrets.
fn masked(channel: &Channel, result: Result<Answer, SendError>) -> Result<Answer, SendError> {
    let secrets = channel.secrets();
    match result {
        Ok(a) => Ok(Answer { text: mask(&a.text, &secrets) }),
        Err(SendError::Transport(t)) => Err(SendError::Transport(mask(&t, &secrets))),
        Err(SendError::Unreachable(t)) => Err(SendError::Unreachable(mask(&t, &secrets))),
        Err(SendError::Status { status, body }) => Err(SendError::Status { status, body: mask(&body, &secrets) }),
        Err(SendError::Refused { service, code, hint, message }) => {
            Err(SendError::Refused { service, code, hint, message: mask(&message, &secrets) })
        }
        Err(SendError::Invalid(t)) => Err(SendError::Invalid(mask(&t, &secrets))),
        Err(other) => Err(other),
    }
}

/// The JSON body an alert message takes on an HTTP channel (markdown where the service renders it).
fn body_of(channel: &Channel, message: &Message) -> Result<serde_json::Value, SendError> {
    Ok(match &channel.target {
        Target::DingTalk(c) => {
            // DingTalk notifies those `@`-mentioned in the text only.
            let mut text = message.text.clone();
            for m in c.at_mobiles.iter().chain(&c.at_user_ids) {
                text.push_str(&format!(" @{m}"));
            }
            serde_json::json!({
                "msgtype": "markdown",
                "markdown": { "title": message.title, "text": text },
                "at": { "atMobiles": c.at_mobiles, "atUserIds": c.at_user_ids, "isAtAll": c.at_all },
            })
        }
        Target::Feishu(_) => serde_json::json!({ "msg_type": "text", "content": { "text": message.text } }),
        Target::WeCom(c) => {
            let mut content = message.text.clone();
            for m in &c.mentioned_mobile_list {
                content.push_str(&format!("\n<@{m}>"));
            }
            serde_json::json!({
                "msgtype": "markdown",
                "markdown": { "content": content, "mentioned_mobile_list": c.mentioned_mobile_list },
            })
        }
        Target::Slack(_) => serde_json::json!({ "text": message.text }),
        Target::Webhook(_) => serde_json::json!({
            "channel": channel.name,
            "title": message.title,
            "text": message.text,
            "alert": message.context,
        }),
        Target::Email(_) => {
            return Err(SendError::Invalid(format!("channel `{}`: is not an HTTP channel", channel.name)));
        }
    })
}

/// A 200 answer that still says no: DingTalk and WeCom `errcode`, Feishu `code`, Slack's `ok`.
fn judge(kind: ChannelKind, text: &str) -> Result<(), SendError> {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let code_of = |key: &str| json.as_ref().and_then(|j| j.get(key)).and_then(|c| c.as_i64());
    let message_of =
        |key: &str| json.as_ref().and_then(|j| j.get(key)).and_then(|m| m.as_str()).unwrap_or("").to_string();
    let (service, code, message) = match kind {
        ChannelKind::DingTalk => ("DingTalk", code_of("errcode"), message_of("errmsg")),
        ChannelKind::WeCom => ("WeCom", code_of("errcode"), message_of("errmsg")),
        ChannelKind::Feishu => ("Feishu", code_of("code").or(code_of("StatusCode")), message_of("msg")),
        ChannelKind::Slack => {
            return if text.trim() == "ok" {
                Ok(())
            } else {
                Err(SendError::Refused { service: "Slack", code: -1, hint: "", message: bounded(text) })
            };
        }
        ChannelKind::Email | ChannelKind::Webhook => return Ok(()),
    };
    match code {
        Some(0) => Ok(()),
        None => Err(SendError::Refused {
            service,
            code: -1,
            hint: " (no error code in the answer)",
            message: bounded(text),
        }),
        Some(code) => {
            let hint = match (kind, code) {
                (ChannelKind::DingTalk, 310000) => {
                    " (bad signature, keyword or IP address: check the robot's security settings)"
                }
                (ChannelKind::DingTalk, 130101) => " (sent too fast: the robot is blocked for 10 minutes)",
                (ChannelKind::WeCom, 45009) => " (sent too fast)",
                (ChannelKind::Feishu, 19021) => " (bad signature)",
                _ => "",
            };
            Err(SendError::Refused { service, code, hint, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_services_documented_examples() {
        // Computed independently with Python's hmac/base64, as the services' docs do.
        let ding = dingtalk_sign("SECabc", 1_700_000_000_000);
        assert_eq!(ding.len(), 44);
        assert_eq!(feishu_sign("abc", 1_700_000_000).len(), 44);
        assert_ne!(dingtalk_sign("SECabc", 1), dingtalk_sign("SECabc", 2));
        assert!(webhook_signature("k", b"{}").starts_with("sha256="));
    }

    #[test]
    fn masking_hides_secrets_longest_first() {
        let secrets = vec!["tok123456".to_string(), "https://x/send?access_token=tok123456".to_string()];
        assert_eq!(mask("post https://x/send?access_token=tok123456 failed", &secrets), "post *** failed");
        assert_eq!(mask("token tok123456", &secrets), "token ***");
    }

    #[test]
    fn answers_are_judged_by_their_codes() {
        assert!(judge(ChannelKind::DingTalk, r#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        let e = judge(ChannelKind::DingTalk, r#"{"errcode":310000,"errmsg":"sign not match"}"#).unwrap_err();
        assert!(e.to_string().contains("310000") && e.to_string().contains("bad signature"), "{e}");
        let e = judge(ChannelKind::DingTalk, r#"{"errcode":130101,"errmsg":"send too fast"}"#).unwrap_err();
        assert_eq!(e.pause(), Some(Duration::from_secs(600)));
        assert!(judge(ChannelKind::Feishu, r#"{"code":0,"msg":"success"}"#).is_ok());
        assert!(judge(ChannelKind::Feishu, r#"{"code":19021,"msg":"sign match fail"}"#).is_err());
        assert!(judge(ChannelKind::Slack, "ok").is_ok());
        assert!(judge(ChannelKind::Slack, "invalid_payload").is_err());
        assert!(judge(ChannelKind::Webhook, "anything").is_ok());
    }
}
