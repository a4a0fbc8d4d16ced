//! `DingdingOperator`: a message through a DingTalk robot (`[alerts.dingtalk.NAME]`, named by
//! `dingding_conn_id`; signed when the robot has a `secret`), as Airflow's DingdingHook builds
//! it: `text`, `link`, `markdown`, `actionCard`, `feedCard`, with `at_mobiles`, `at_user_ids`,
//! `at_all`. Every string of `message` is a template.

use super::notify::{Notification, render_data, start_sending, title_of};
use super::{Start, TaskRun};
use crate::model::{DingdingSpec, Operator};
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    let Operator::DingdingOperator(d) = operator else { return Vec::new() };
    let mut out = Vec::new();
    super::http::strings_of(&d.message, &mut out);
    out
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::DingdingOperator(spec) = &run.task.task().operator else {
        return Start::Done(super::Outcome::fail("not a DingdingOperator"));
    };
    let spec: DingdingSpec = (**spec).clone();
    let prepared = render_data("message", &spec.message, &run).map(|m| Notification::Body(body(&spec, m)));
    start_sending(run, "dingtalk", spec.dingding_conn_id.clone(), prepared)
}

/// The robot's JSON body (DingTalk's custom robot API).
fn body(spec: &DingdingSpec, message: serde_json::Value) -> serde_json::Value {
    let kind = spec.message_type.as_str();
    let content = match (kind, message) {
        ("text", serde_json::Value::String(text)) => serde_json::json!({ "content": text }),
        ("markdown", serde_json::Value::String(text)) => serde_json::json!({ "title": title_of(&text), "text": text }),
        (_, other) => other,
    };
    let mut body = serde_json::json!({ "msgtype": kind });
    body[kind] = content;
    // Only text and markdown messages notify those mentioned (DingTalk ignores `at` elsewhere).
    if matches!(kind, "text" | "markdown") {
        body["at"] = serde_json::json!({
            "atMobiles": spec.at_mobiles, "atUserIds": spec.at_user_ids, "isAtAll": spec.at_all,
        });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> DingdingSpec {
        DingdingSpec {
            dingding_conn_id: None,
            message_type: kind.into(),
            message: serde_json::Value::Null,
            at_mobiles: vec!["138".into()],
            at_user_ids: vec![],
            at_all: false,
        }
    }

    #[test]
    fn bodies_follow_dingtalks_robot_api() {
        let text = body(&spec("text"), "hi".into());
        assert_eq!(text["text"]["content"], "hi");
        assert_eq!(text["at"]["atMobiles"][0], "138");
        let md = body(&spec("markdown"), "### Done\nall good".into());
        assert_eq!(md["markdown"]["title"], "Done");
        let card = body(&spec("actionCard"), serde_json::json!({"title": "t", "text": "x", "singleTitle": "go"}));
        assert_eq!(card["msgtype"], "actionCard");
        assert_eq!(card["actionCard"]["singleTitle"], "go");
        assert!(card.get("at").is_none());
    }
}
