//! The alert channels as a capability for the operators (layer 2): `EmailOperator`, the chat
//! operators and `alerts::send` in closures and callbacks send through [`Notifier`], which
//! implements `operators::Notify` with the channels and [`Sender`] the deliverer uses.

use super::channel::{ChannelKind, Channels};
use super::message::{AlertContext, Message};
use super::send::{Mail, Sender};
use crate::operators::{BoxFuture, MailRequest, Notification, Notify};
use std::sync::Arc;
use std::time::Duration;

/// All attachments of one mail together: a bound on what a task may send (mail servers commonly
/// refuse more than 25 MiB).
const MAX_ATTACHMENTS: u64 = 25 << 20;

#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Channels>,
    sender: Sender,
}

impl Notifier {
    /// `timeout` bounds each request (`[alerts] delivery_timeout`).
    pub fn new(channels: Channels, timeout: Duration) -> Notifier {
        Notifier { channels: Arc::new(channels), sender: Sender::new(timeout) }
    }

    fn of_kind(&self, kind: &str) -> Vec<String> {
        let prefix = format!("{kind}.");
        self.channels.names().into_iter().filter(|n| n.starts_with(&prefix) || n == kind).collect()
    }

    async fn deliver(&self, channel: String, notification: Notification) -> Result<String, String> {
        let channel = self.channels.get(&channel).map_err(|e| e.to_string())?.clone();
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

    fn send(&self, channel: &str, notification: Notification) -> BoxFuture<Result<String, String>> {
        let (this, channel) = (self.clone(), channel.to_string());
        Box::pin(async move { this.deliver(channel, notification).await })
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
