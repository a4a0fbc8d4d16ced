//! `WeComOperator`: a message through a WeCom group robot (`[alerts.wecom.NAME]`, named by
//! `wecom_conn_id`): `markdown` (the default) or `text` with `mentioned_list` and
//! `mentioned_mobile_list`. `message` is a template.

use super::notify::{Notification, render, start_sending};
use super::{Start, TaskRun};
use crate::model::{Operator, WeComSpec};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::WeComOperator(w) = operator else { return Vec::new() };
    vec![w.message.as_str()]
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::WeComOperator(spec) = &run.task.task().operator else {
        return Start::Done(super::Outcome::fail("not a WeComOperator"));
    };
    let spec: WeComSpec = (**spec).clone();
    let prepared = render("message", &spec.message, &run).map(|m| Notification::Body(body(&spec, m)));
    start_sending(run, "wecom", spec.wecom_conn_id.clone(), prepared)
}

fn body(spec: &WeComSpec, content: String) -> serde_json::Value {
    let kind = spec.message_type.as_str();
    let mut body = serde_json::json!({ "msgtype": kind });
    body[kind] = match kind {
        "text" => serde_json::json!({
            "content": content,
            "mentioned_list": spec.mentioned_list,
            "mentioned_mobile_list": spec.mentioned_mobile_list,
        }),
        // Markdown mentions are written in the text (`<@userid>`); the list is kept for robots
        // that read it.
        _ => serde_json::json!({ "content": content, "mentioned_mobile_list": spec.mentioned_mobile_list }),
    };
    body
}
