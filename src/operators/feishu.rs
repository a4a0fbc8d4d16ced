//! `FeishuOperator`: a message through a Feishu/Lark bot (`[alerts.feishu.NAME]`, named by
//! `feishu_conn_id`; signed when the bot has a `secret`): `text` (the default), `post`,
//! `interactive` (a card), `share_chat`, `image`, as the bot's webhook API takes them. Every
//! string of `message` is a template.

use super::notify::{Notification, render_data, start_sending};
use super::{Start, TaskRun};
use crate::model::{FeishuSpec, Operator};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::FeishuOperator(f) = operator else { return Vec::new() };
    let mut out = Vec::new();
    super::http::strings_of(&f.message, &mut out);
    out
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::FeishuOperator(spec) = &run.task.task().operator else {
        return Start::Done(super::Outcome::fail("not a FeishuOperator"));
    };
    let spec: FeishuSpec = (**spec).clone();
    let prepared = render_data("message", &spec.message, &run).map(|m| Notification::Body(body(&spec, m)));
    start_sending(run, "feishu", spec.feishu_conn_id.clone(), prepared)
}

fn body(spec: &FeishuSpec, message: serde_json::Value) -> serde_json::Value {
    match (spec.message_type.as_str(), message) {
        ("text", serde_json::Value::String(text)) => {
            serde_json::json!({ "msg_type": "text", "content": { "text": text } })
        }
        // A card goes in `card`; every other type's object is the `content`.
        ("interactive", card) => serde_json::json!({ "msg_type": "interactive", "card": card }),
        (kind, content) => serde_json::json!({ "msg_type": kind, "content": content }),
    }
}
