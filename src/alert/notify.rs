//! The alert channels as a capability for the operators (layer 2): `EmailOperator`, the chat
//! operators and `alerts::send` in closures and callbacks send through [`Notifier`], which
//! implements `operators::Notify` with the channels and [`Sender`] the deliverer uses.
//!
//! A robot with a published rate limit (DingTalk, WeCom, Feishu) is shared with the deliverer:
//! each send waits for room in the robot's windows and is recorded in the outbox (event `send`)
//! in the same transaction as that check, so alerts and operators together never exceed it.

use super::channel::{ChannelKind, Channels};
use super::limit::{RateLimit, allowance};
use super::message::{AlertContext, Message};
use super::send::{Mail, Sender};
use crate::operators::{BoxFuture, MailRequest, Notification, Notify, Origin};
use crate::store::{DirectSend, Store};
use chrono::{TimeDelta, Utc};
use std::sync::Arc;
use std::time::Duration;

/// All attachments of one mail together: a bound on what a task may send (mail servers commonly
/// refuse more than 25 MiB).
const MAX_ATTACHMENTS: u64 = 25 << 20;

#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Channels>,
    sender: Sender,
    /// Where sends through rate-limited robots are counted; without one (`tasks test` with no
    /// database) they go straight out.
    store: Option<Store>,
}

impl Notifier {
    /// `timeout` bounds each request (`[alerts] delivery_timeout`).
    pub fn new(channels: Channels, timeout: Duration) -> Notifier {
        Notifier { channels: Arc::new(channels), sender: Sender::new(timeout), store: None }
    }

    /// Counts sends through rate-limited robots in `store`, with the alerts.
    pub fn with_store(mut self, store: Store) -> Notifier {
        self.store = Some(store);
        self
    }

    /// Waits for room in `channel`'s windows, then records the send; its outbox row id.
    async fn reserve(
        &self,
        store: &Store,
        origin: &Origin,
        channel: &str,
        limits: &'static [RateLimit],
    ) -> Result<i64, String> {
        let longest = limits.iter().map(|l| l.per).max().unwrap_or_default();
        let send = DirectSend {
            dag_id: origin.dag_id.clone(),
            run_id: origin.run_id.clone(),
            task_id: origin.task_id.clone(),
            try_number: origin.try_number,
            channel: channel.to_string(),
        };
        loop {
            let now = Utc::now();
            let send = send.clone();
            let room = store
                .write_async(move |tx| {
                    let attempts = tx.alert_attempts_since(&send.channel, now - longest)?;
                    let allowed = allowance(limits, &attempts, now);
                    if allowed.now > 0 {
                        return Ok(Ok(tx.record_direct_send(&send, now)?));
                    }
                    Ok(Err(allowed.next_free.unwrap_or(now + TimeDelta::seconds(1))))
                })
                .await
                .map_err(|e| format!("cannot count the send against the rate limit: {e}"))?;
            match room {
                Ok(id) => return Ok(id),
                // The task's own timeout bounds the wait.
                Err(at) => {
                    tokio::time::sleep((at - now).to_std().unwrap_or_default().max(Duration::from_millis(10))).await
                }
            }
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<String> {
        let prefix = format!("{kind}.");
        self.channels.names().into_iter().filter(|n| n.starts_with(&prefix) || n == kind).collect()
    }

    async fn deliver(&self, origin: Origin, channel: String, notification: Notification) -> Result<String, String> {
        let name = channel;
        let channel = self.channels.get(&name).map_err(|e| e.to_string())?.clone();
        let limits = channel.kind().limits();
        let recorded = match &self.store {
            Some(store) if !limits.is_empty() => Some((store, self.reserve(store, &origin, &name, limits).await?)),
            _ => None,
        };
        let now = chrono::Utc::now();
        let answer = match notification {
            Notification::Text { title, text } => {
                let message = Message { title, text, context: AlertContext::default() };
                self.sender.send(&channel, &message, now).await
            }
            Notification::Body(body) => self.sender.send_body(&channel, body, now).await,
            Notification::Mail(request) => {
                let mail = read_attachments(request).await?;
                self.sender.send_mail(&channel, &mail).await
            }
        };
        if let Some((store, id)) = recorded {
            let outcome = match &answer {
                Ok(_) => Ok(Utc::now()),
                Err(e) => Err((e.to_string(), !e.unreached())),
            };
            let written = store
                .write_async(move |tx| {
                    tx.finish_direct_send(id, outcome.as_ref().map(|at| *at).map_err(|(e, r)| (e.as_str(), *r)))
                })
                .await;
            if let Err(e) = written {
                tracing::warn!(alert_id = id, error = %e, "cannot record a send's answer");
            }
        }
        answer.map(|a| a.text).map_err(|e| e.to_string())
    }
}

impl Notify for Notifier {
    fn resolve(&self, kind: &str, name: Option<&str>) -> Result<String, String> {
        let of_kind = self.of_kind(kind);
        let listed = || {
            if of_kind.is_empty() {
                format!("no `[alerts.{kind}]` channel is configured in rhaiflow.toml")
            } else {
                format!("configured: {}", of_kind.join(", "))
            }
        };
        let wanted = match name {
            Some(n) if n == kind || n.starts_with(&format!("{kind}.")) => n.to_string(),
            Some(n) if kind == ChannelKind::Email.as_str() => {
                return Err(format!("mail goes through the channel `email`, not `{n}`"));
            }
            Some(n) => format!("{kind}.{n}"),
            None if kind == ChannelKind::Email.as_str() => kind.to_string(),
            None => {
                let default = format!("{kind}.default");
                match of_kind.as_slice() {
                    [only] => only.clone(),
                    _ if of_kind.contains(&default) => default,
                    [] => return Err(listed()),
                    _ => {
                        return Err(format!(
                            "several {kind} channels and none is `{default}`: name one ({})",
                            listed()
                        ));
                    }
                }
            }
        };
        if of_kind.contains(&wanted) { Ok(wanted) } else { Err(format!("unknown channel `{wanted}` ({})", listed())) }
    }

    fn send(&self, origin: &Origin, channel: &str, notification: Notification) -> BoxFuture<Result<String, String>> {
        let (this, origin, channel) = (self.clone(), origin.clone(), channel.to_string());
        Box::pin(async move { this.deliver(origin, channel, notification).await })
    }
}

/// The mail with its files read (bounded in all by [`MAX_ATTACHMENTS`]).
async fn read_attachments(request: MailRequest) -> Result<Mail, String> {
    let mut files = Vec::new();
    let mut total = 0u64;
    for path in &request.files {
        let size = tokio::fs::metadata(path).await.map_err(|e| format!("attachment `{}`: {e}", path.display()))?.len();
        total = total.saturating_add(size);
        if total > MAX_ATTACHMENTS {
            return Err(format!("the attachments are larger than {} in all", crate::operators::size(MAX_ATTACHMENTS)));
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| format!("attachment `{}`: {e}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "attachment".into());
        files.push((name, bytes));
    }
    Ok(Mail {
        to: request.to,
        cc: request.cc,
        bcc: request.bcc,
        subject: request.subject,
        body: request.html_content,
        html: true,
        files,
    })
}
