//! `SlackWebhookOperator`: a message through a Slack incoming webhook (`[alerts.slack.NAME]`,
//! named by `slack_webhook_conn_id`), as Airflow's: `message` (the text), `blocks`,
//! `attachments`, and a legacy webhook's `channel`, `username`, `icon_emoji`, `icon_url`.

use super::notify::{Notification, render, render_data, start_sending};
use super::{Start, TaskRun};
use crate::model::{Operator, SlackSpec};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::SlackWebhookOperator(s) = operator else { return Vec::new() };
    let mut out = vec![s.message.as_str()];
    out.extend(s.channel.iter().chain(&s.username).map(String::as_str));
    for v in s.blocks.iter().chain(&s.attachments) {
        super::http::strings_of(v, &mut out);
    }
    out
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::SlackWebhookOperator(spec) = &run.task.task().operator else {
        return Start::Done(super::Outcome::fail("not a SlackWebhookOperator"));
    };
    let spec: SlackSpec = (**spec).clone();
    let prepared = body(&spec, &run).map(Notification::Body);
    start_sending(run, "slack", spec.slack_webhook_conn_id.clone(), prepared)
}

fn body(spec: &SlackSpec, run: &TaskRun) -> Result<serde_json::Value, String> {
    if spec.message.is_empty() && spec.blocks.is_none() && spec.attachments.is_none() {
        return Err("`SlackWebhookOperator` needs a `message`, `blocks` or `attachments`".into());
    }
    let mut body = serde_json::json!({ "text": render("message", &spec.message, run)? });
    for (key, value) in [("channel", &spec.channel), ("username", &spec.username)] {
        if let Some(v) = value {
            body[key] = render(key, v, run)?.into();
        }
    }
    for (key, value) in [("icon_emoji", &spec.icon_emoji), ("icon_url", &spec.icon_url)] {
        if let Some(v) = value {
            body[key] = v.clone().into();
        }
    }
    for (key, value) in [("blocks", &spec.blocks), ("attachments", &spec.attachments)] {
        if let Some(v) = value {
            body[key] = render_data(key, v, run)?;
        }
    }
    Ok(body)
}
