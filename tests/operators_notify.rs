//! `EmailOperator`, `DingdingOperator`, `SlackWebhookOperator`, `FeishuOperator` and
//! `WeComOperator` through `dags test`, against a real SMTP server and an HTTP receiver on
//! 127.0.0.1 that checks the DingTalk and Feishu signatures as the services do; a send failure
//! fails the task with the service's error and never shows the webhook's token.

mod common;
mod peers;

use common::Home;
use peers::{Http, Mode, Smtp};

const DING_SECRET: &str = "SECoperator0123456789";
const FEISHU_SECRET: &str = "feishu-operator-secret";
const TOKEN: &str = "optok3n5ecret";
const RUN: &str = "manual__2026-03-04T00:00:00+00:00";

fn home(http: &Http, smtp: &Smtp, dag: &str) -> Home {
    let home = Home::new(&[("n.rhai", dag)]);
    std::fs::write(home.path().join("report.csv"), "a,b\n1,2\n").unwrap();
    let toml = format!(
        r#"
[alerts]
delivery_timeout = 5
[alerts.email]
host = "127.0.0.1"
port = {smtp}
mail_from = "rhaiflow@example.com"
[alerts.dingtalk.ops]
webhook = "http://127.0.0.1:{port}/dingtalk?access_token={TOKEN}"
secret = "{DING_SECRET}"
[alerts.feishu.team]
webhook = "http://127.0.0.1:{port}/feishu/{TOKEN}"
secret = "{FEISHU_SECRET}"
[alerts.wecom.group]
webhook = "http://127.0.0.1:{port}/wecom?key={TOKEN}"
[alerts.slack.dev]
webhook = "http://127.0.0.1:{port}/slack/{TOKEN}"
[alerts.slack.other]
webhook = "http://127.0.0.1:{port}/slack/other{TOKEN}"
"#,
        port = http.port,
        smtp = smtp.port
    );
    std::fs::write(home.path().join("rhaiflow.toml"), toml).unwrap();
    home
}

fn peers() -> (Http, Smtp) {
    (Http::start_on(0, (DING_SECRET, FEISHU_SECRET, "unused")), Smtp::start())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_notifier_operator_sends_through_its_channel() {
    let (http, smtp) = peers();
    let home = home(
        &http,
        &smtp,
        r####"let dag = DAG("n", #{ start_date: datetime(2026, 1, 1), schedule: () });
let mail = EmailOperator(#{
    task_id: "mail",
    to: ["ops@example.com", "{{ params.boss }}"],
    cc: "cc@example.com",
    bcc: ["hidden@example.com"],
    subject: "report for {{ ds }}",
    html_content: "<h1>Report</h1><p>run {{ run_id }}</p>",
    files: ["$HOME_DIR/report.csv"],
    params: #{ boss: "boss@example.com" },
});
let md = DingdingOperator(#{
    task_id: "ding_md",
    dingding_conn_id: "ops",
    message_type: "markdown",
    message: #{ title: "done {{ ds }}", text: "### done\n- run {{ run_id }}" },
    at_mobiles: ["13800000000"],
});
let card = DingdingOperator(#{
    task_id: "ding_card",
    dingding_conn_id: "ops",
    message_type: "actionCard",
    message: #{ title: "card", text: "see {{ ds_nodash }}", singleTitle: "open", singleURL: "https://example.com" },
});
let slack = SlackWebhookOperator(#{
    task_id: "slack",
    slack_webhook_conn_id: "dev",
    message: "deployed {{ ds }}",
    channel: "#ops",
    blocks: [#{ "type": "section", text: #{ "type": "mrkdwn", text: "*{{ dag.dag_id }}*" } }],
});
let feishu = FeishuOperator(#{ task_id: "feishu", message: "feishu {{ ds }}" });
let wecom = WeComOperator(#{ task_id: "wecom", wecom_conn_id: "group", message: "**wecom** {{ ds }}", mentioned_mobile_list: ["139"] });
mail >> md >> card >> slack >> feishu >> wecom;"####,
    );
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    let mut to = mail.to.clone();
    to.sort();
    assert_eq!(to, ["boss@example.com", "cc@example.com", "hidden@example.com", "ops@example.com"]);
    assert!(mail.data.contains("Subject: report for 2026-03-04"), "{}", mail.data);
    assert!(mail.data.contains("Cc: cc@example.com"), "{}", mail.data);
    assert!(!mail.data.contains("hidden@example.com"), "bcc is not a header: {}", mail.data);
    assert!(mail.data.contains("text/html"), "{}", mail.data);
    assert!(mail.data.contains("filename=\"report.csv\""), "{}", mail.data);

    let received = http.received();
    let services: Vec<&str> = received.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(services, ["dingtalk", "dingtalk", "slack", "feishu", "wecom"]);
    let md = &received[0];
    assert_eq!(md.signed, Some(true));
    assert_eq!(md.body["msgtype"], "markdown");
    assert_eq!(md.body["markdown"]["title"], "done 2026-03-04");
    assert_eq!(md.body["markdown"]["text"], format!("### done\n- run {RUN}"));
    assert_eq!(md.body["at"]["atMobiles"][0], "13800000000");
    let card = &received[1].body;
    assert_eq!(card["msgtype"], "actionCard");
    assert_eq!(card["actionCard"]["text"], "see 20260304");
    assert_eq!(card["actionCard"]["singleURL"], "https://example.com");
    let slack = &received[2].body;
    assert_eq!(slack["text"], "deployed 2026-03-04");
    assert_eq!(slack["channel"], "#ops");
    assert_eq!(slack["blocks"][0]["text"]["text"], "*n*");
    let feishu = &received[3];
    assert_eq!(feishu.signed, Some(true));
    assert_eq!(feishu.body["msg_type"], "text");
    assert_eq!(feishu.body["content"]["text"], "feishu 2026-03-04");
    let wecom = &received[4].body;
    assert_eq!(wecom["msgtype"], "markdown");
    assert_eq!(wecom["markdown"]["content"], "**wecom** 2026-03-04");
    assert!(home.log("n", RUN, "ding_md").contains("`dingtalk.ops` answered"), "{}", home.log("n", RUN, "ding_md"));
}

#[test]
fn a_refused_message_fails_the_task_with_the_services_error_and_no_token() {
    let (http, smtp) = peers();
    http.set_mode(Mode::BadSign);
    let home = home(
        &http,
        &smtp,
        r#"let dag = DAG("n", #{ start_date: datetime(2026, 1, 1), schedule: () });
DingdingOperator(#{ task_id: "ding", dingding_conn_id: "dingtalk.ops", message: "hello" });"#,
    );
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    let log = home.log("n", RUN, "ding");
    assert!(log.contains("errcode 310000") && log.contains("bad signature"), "{log}");
    let everything = format!("{}{}{log}", text(&o.stdout), text(&o.stderr));
    assert!(!everything.contains(TOKEN) && !everything.contains("127.0.0.1"), "{everything}");
    assert_eq!(http.received()[0].body["text"]["content"], "hello");

    http.set_mode(Mode::Status500);
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(1));
    let log = home.log("n", RUN, "ding");
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
}

#[test]
fn a_channel_that_is_not_configured_or_ambiguous_fails_naming_the_configured_ones() {
    let (http, smtp) = peers();
    let home = home(
        &http,
        &smtp,
        r#"let dag = DAG("n", #{ start_date: datetime(2026, 1, 1), schedule: () });
SlackWebhookOperator(#{ task_id: "ambiguous", message: "hello" });
DingdingOperator(#{ task_id: "unknown", dingding_conn_id: "nope", message: "hi" });"#,
    );
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(1));
    let log = home.log("n", RUN, "ambiguous");
    assert!(log.contains("`slack.default`") && log.contains("slack.dev, slack.other"), "{log}");
    let log = home.log("n", RUN, "unknown");
    assert!(log.contains("unknown channel `dingtalk.nope`") && log.contains("configured: dingtalk.ops"), "{log}");
    assert!(http.received().is_empty());
}

#[test]
fn alerts_send_works_from_a_task_closure_too() {
    let (http, smtp) = peers();
    let home = home(
        &http,
        &smtp,
        r#"import "alerts" as alerts;
let dag = DAG("n", #{ start_date: datetime(2026, 1, 1), schedule: () });
RhaiOperator(#{ task_id: "r", callable: |ctx| alerts::send("email", `hello from ${ctx.task_id}`, #{ title: "closure mail" }) });"#,
    );
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(1), "email with no recipient fails: {}", text(&o.stdout));
    let log = home.log("n", RUN, "r");
    assert!(log.contains("no recipient"), "{log}");
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        std::fs::read_to_string(home.path().join("rhaiflow.toml")).unwrap().replace(
            "mail_from = \"rhaiflow@example.com\"",
            "mail_from = \"rhaiflow@example.com\"\nto = [\"ops@example.com\"]",
        ),
    )
    .unwrap();
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].data.contains("Subject: closure mail") && mails[0].data.contains("hello from r"));
}

/// Sends through a DingTalk robot from operators share its 20-a-minute window with the alerts
/// (and with earlier processes): the window is full of attempts recorded 55 s ago, so the
/// operators wait until it frees, and no 60-second window ever holds more than 20 attempts.
#[test]
fn operator_sends_wait_for_room_in_the_robots_rate_limit_window() {
    let (http, smtp) = peers();
    let home = home(
        &http,
        &smtp,
        r#"let dag = DAG("n", #{ start_date: datetime(2026, 1, 1), schedule: () });
DingdingOperator(#{ task_id: "a", dingding_conn_id: "ops", message: "first" });
DingdingOperator(#{ task_id: "b", dingding_conn_id: "ops", message: "second" });"#,
    );
    let o = home.run(&["db", "migrate"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let earlier = chrono::Utc::now() - chrono::TimeDelta::seconds(55);
    let db = home.db();
    for i in 0..20 {
        db.execute(
            "INSERT INTO alert_outbox (created_at, event, dag_id, run_id, channel, payload, state, attempts,
                                       attempted_at, sent_at, next_attempt_at)
             VALUES (?1, 'failure', 'other', 'r', 'dingtalk.ops', '{}', 'sent', 1, ?1, ?1, ?1)",
            rusqlite::params![earlier + chrono::TimeDelta::milliseconds(i)],
        )
        .unwrap();
    }
    let o = home.run(&["dags", "test", "n", "2026-03-04"]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(http.received().len(), 2);

    // Both sends are recorded, sent, after the seeded attempts left the window.
    let mut stmt = db
        .prepare("SELECT attempted_at, state, task_id FROM alert_outbox WHERE channel = 'dingtalk.ops' ORDER BY attempted_at")
        .unwrap();
    let rows: Vec<(chrono::DateTime<chrono::Utc>, String, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 22);
    let sends: Vec<_> = rows.iter().filter(|r| r.2.is_some()).collect();
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|r| r.1 == "sent"), "{sends:?}");
    for (i, row) in rows.iter().enumerate() {
        let inside = rows[i..].iter().filter(|r| r.0 <= row.0 + chrono::TimeDelta::seconds(60)).count();
        assert!(inside <= 20, "{inside} attempts in the 60 s from {}", row.0);
    }
}
