//! Sending through the alert channels of `[alerts]` from an operator (`EmailOperator`,
//! `DingdingOperator`, `SlackWebhookOperator`, `FeishuOperator`, `WeComOperator`) or a task
//! closure (`alerts::send`). The channels, signing and services' answers are `src/alert`'s
//! (layer 3); operators (layer 2) reach them through the [`Notify`] capability, which `app`
//! injects into `Env::notify` (implemented by `alert::Notifier`), as `TriggerRuns` is.

use super::{BoxFuture, Outcome, TaskRun};
use std::path::PathBuf;

/// A mail `EmailOperator` sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MailRequest {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub html_content: String,
    /// Files attached, read when sent.
    pub files: Vec<PathBuf>,
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A text as the channel's alerts take it (`alerts::send`): the channel shapes it (DingTalk
    /// markdown, a mail with `title` as its subject, ...).
    Text {
        title: String,
        text: String,
    },
    /// A service's own JSON body (DingTalk `msgtype`, Feishu `msg_type`, WeCom, Slack), sent
    /// as it is, signed as the channel signs.
    Body(serde_json::Value),
    Mail(MailRequest),
}

/// Who sends: the try (or the run, for a DAG-level callback) an operator, closure or callback
/// sends for. A rate-limited robot's sends are recorded in the outbox under it, so they count in
/// the robot's window as the alerts do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
}

impl Origin {
    pub fn of_try(key: &crate::model::TiKey, try_number: u32) -> Origin {
        Origin {
            dag_id: key.dag_id.clone(),
            run_id: key.run_id.clone(),
            task_id: Some(key.task_id.clone()),
            try_number: Some(try_number),
        }
    }
}

/// The capability: channels by name, and sending through them.
pub trait Notify: Send + Sync {
    /// The channel a task means: `name` (`"ops"` or `"dingtalk.ops"`) of `kind` (`dingtalk`,
    /// `feishu`, `wecom`, `slack`, `email`), else `KIND.default` or the only one of that kind.
    fn resolve(&self, kind: &str, name: Option<&str>) -> Result<String, String>;
    /// Sends; the service's answer, or its error (never a URL or secret).
    /// A robot with a published rate limit (DingTalk, WeCom, Feishu) waits for room in its
    /// window, counted with the alerts sent through it.
    fn send(&self, origin: &Origin, channel: &str, notification: Notification) -> BoxFuture<Result<String, String>>;
}

/// Sends `notification` through the channel of `kind` the task names, as one operator try:
/// success with the service's answer in the log, or a failure with the service's error.
pub async fn send(run: &TaskRun, kind: &str, name: Option<&str>, notification: Notification) -> Outcome {
    let Some(notify) = run.env.notify.get() else {
        return Outcome::fail(format!(
            "`{}` needs the alert channels of rhaiflow.toml, which this command does not load",
            run.task.task().operator.name()
        ));
    };
    let channel = match notify.resolve(kind, name) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(super::mask_secrets(&e, &run.env.settings)),
    };
    run.log(&format!("sending through channel `{channel}`")).await;
    let origin = Origin::of_try(&run.task.key, run.task.try_number);
    match notify.send(&origin, &channel, notification).await {
        Ok(answer) => {
            run.log(&format!("`{channel}` answered: {answer}")).await;
            Outcome::Success { xcom: None }
        }
        Err(e) => Outcome::fail(super::mask_secrets(&format!("channel `{channel}`: {e}"), &run.env.settings)),
    }
}

/// A templated text of the operator's spec, rendered; the error says which field.
pub(super) fn render(field: &str, text: &str, run: &TaskRun) -> Result<String, String> {
    crate::executor::template::render(field, text, &run.ctx).map_err(|e| e.to_string())
}

/// Templated data: every string inside it rendered, as Airflow renders a dict's values.
pub(super) fn render_data(field: &str, value: &serde_json::Value, run: &TaskRun) -> Result<serde_json::Value, String> {
    super::http::render_json(value, field, &run.ctx)
}

/// A rendered message's title: its first line without markdown's `#`s, at most 64 characters.
pub fn title_of(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("rhaiflow");
    first.trim().trim_start_matches('#').trim().chars().take(64).collect()
}

/// The runner's answer for a prepared notification: sent once the try is claimed; a template
/// that does not render fails the try before.
pub(super) fn start_sending(
    run: std::sync::Arc<TaskRun>,
    kind: &'static str,
    name: Option<String>,
    prepared: Result<Notification, String>,
) -> super::Start {
    match prepared {
        Err(reason) => super::Start::Done(Outcome::fail(super::mask_secrets(&reason, &run.env.settings))),
        Ok(notification) => {
            super::Start::Later(Box::pin(async move { send(&run, kind, name.as_deref(), notification).await }))
        }
    }
}
