//! The deliverer against real peers on 127.0.0.1, with the clock an input: rate limits and
//! coalescing of a burst, a receiver down then back, error answers, hangs, and every channel's
//! signature checked the way its service checks it.

mod peers;

use chrono::{DateTime, TimeDelta, Utc};
use peers::{Http, Mode, Smtp};
use rhaiflow::alert::{Channels, Deliverer, DeliverySettings};
use rhaiflow::config::{Config, Flags};
use rhaiflow::store::{NewAlert, OutboxRow, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DING_SECRET: &str = "SEC0123456789abcdefghijklmnopqrstuvwxyz";
const FEISHU_SECRET: &str = "feishu-secret-4242";
const WEBHOOK_SECRET: &str = "webhook-secret-9999";
const TOKEN: &str = "tok3n5ecret0000";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    config: Config,
    clock: Arc<Mutex<DateTime<Utc>>>,
}

impl Fixture {
    fn new(http_port: u16, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"
[webserver]
base_url = "https://rhaiflow.example.com"
[alerts]
delivery_attempts = 3
delivery_backoff_max = 5
delivery_timeout = 0.5
[alerts.dingtalk.ops]
webhook = "http://127.0.0.1:{http_port}/dingtalk?access_token={TOKEN}"
secret = "{DING_SECRET}"
at_mobiles = ["13800000000"]
[alerts.feishu.team]
webhook = "http://127.0.0.1:{http_port}/feishu/{TOKEN}"
secret = "{FEISHU_SECRET}"
[alerts.wecom.group]
webhook = "http://127.0.0.1:{http_port}/wecom?key={TOKEN}"
mentioned_mobile_list = ["13900000000"]
[alerts.slack.dev]
webhook = "http://127.0.0.1:{http_port}/slack/{TOKEN}"
[alerts.webhook.hook]
url = "http://127.0.0.1:{http_port}/webhook"
secret = "{WEBHOOK_SECRET}"
{extra}
"#
        );
        std::fs::write(dir.path().join("rhaiflow.toml"), toml).unwrap();
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let config = Config::load_from(&flags, Default::default()).unwrap();
        let store = Store::open(&dir.path().join("rhaiflow.db")).unwrap();
        // Near the real time: the peers refuse signatures more than an hour off, as the services do.
        let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        Fixture { _dir: dir, store, config, clock: Arc::new(Mutex::new(start)) }
    }

    fn now(&self) -> DateTime<Utc> {
        *self.clock.lock().unwrap()
    }

    fn advance(&self, by: TimeDelta) -> DateTime<Utc> {
        let mut c = self.clock.lock().unwrap();
        *c += by;
        *c
    }

    fn deliverer(&self) -> Deliverer {
        let settings = DeliverySettings::from_config(&self.config, "test-runner".into());
        let clock = self.clock.clone();
        Deliverer::new(
            self.store.clone(),
            Channels::from_config(&self.config.alerts),
            settings,
            Arc::new(move || *clock.lock().unwrap()),
        )
    }

    /// A failure alert of `task` try `n` of 3 for `channel`.
    fn fail(&self, channel: &str, task: &str, n: u32) -> i64 {
        let alert = NewAlert {
            event: "failed".into(),
            dag_id: "etl".into(),
            run_id: "manual__2026-01-01T00:00:00+00:00".into(),
            task_id: Some(task.into()),
            try_number: Some(n),
            channel: channel.into(),
            payload: serde_json::json!({
                "logical_date": "2026-01-01T00:00:00+00:00", "try_number": n, "max_tries": 2,
                "error": "Bash command failed. The command returned a non-zero exit code 1.",
                "duration": 1.5, "email": ["ops@example.com"],
            }),
            held: false,
        };
        let now = self.now();
        self.store.write(|tx| tx.insert_alert(&alert, now)).unwrap()
    }

    fn rows(&self) -> Vec<OutboxRow> {
        let mut rows = self.store.read(|tx| tx.alert_list(&Default::default())).unwrap();
        rows.reverse();
        rows
    }

    fn row(&self, id: i64) -> OutboxRow {
        self.store.read(|tx| tx.outbox_row(id)).unwrap().unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn peer() -> Http {
    Http::start_on(0, (DING_SECRET, FEISHU_SECRET, WEBHOOK_SECRET))
}

#[test]
fn every_channel_sends_signed_messages_its_service_accepts() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let ids: Vec<i64> = ["dingtalk.ops", "feishu.team", "wecom.group", "slack.dev", "webhook.hook"]
        .iter()
        .map(|c| f.fail(c, "load", 2))
        .collect();
    let report = runtime().block_on(f.deliverer().deliver_due(f.now())).unwrap();
    assert_eq!(report.sending, 5);
    for id in ids {
        let row = f.row(id);
        assert_eq!((row.state.as_str(), row.attempts), ("sent", 1), "{row:?}");
        assert_eq!(row.sent_at, Some(f.now()));
    }
    let got = http.received();
    let by = |s: &str| got.iter().find(|r| r.service == s).unwrap_or_else(|| panic!("no {s} request"));
    let ding = by("dingtalk");
    assert_eq!(ding.signed, Some(true), "DingTalk signature checks out");
    assert_eq!(ding.body["msgtype"], "markdown");
    let text = ding.body["markdown"]["text"].as_str().unwrap();
    assert!(text.contains("etl.load failed") && text.contains("**Try**: 2 of 3"), "{text}");
    assert!(text.contains("[Log of try 2](https://rhaiflow.example.com/dags/etl/runs/"), "{text}");
    assert!(text.contains("/tasks/load/tries/2)") && text.contains("@13800000000"), "{text}");
    assert_eq!(ding.body["at"]["atMobiles"][0], "13800000000");
    assert_eq!(by("feishu").signed, Some(true), "Feishu signature checks out");
    assert!(by("feishu").body["content"]["text"].as_str().unwrap().contains("Try: 2 of 3"));
    assert_eq!(by("wecom").body["markdown"]["mentioned_mobile_list"][0], "13900000000");
    assert!(by("slack").body["text"].as_str().unwrap().contains("etl.load failed"));
    assert_eq!(by("webhook").signed, Some(true), "X-Rhaiflow-Signature checks out");
    assert_eq!(by("webhook").body["alert"]["try_number"], 2);
}

#[test]
fn a_burst_of_25_failures_never_trips_the_robot_and_the_rest_is_summarised() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let rt = runtime();
    let d = f.deliverer();
    for i in 0..25 {
        f.fail("dingtalk.ops", &format!("t{i:02}"), 2);
    }
    let report = rt.block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!((report.sending, report.coalesced), (20, 6), "19 alone and one summary of 6");
    let got = http.received();
    assert_eq!(got.len(), 20);
    // Sent side by side, so in any order.
    let texts: Vec<String> = got.iter().map(|r| r.body["markdown"]["text"].as_str().unwrap().to_string()).collect();
    let summary = texts.iter().find(|t| t.contains("more failures")).unwrap().clone();
    assert!(summary.starts_with("### 6 more failures: etl.t19 try 2/3, etl.t20 try 2/3"), "{summary}");
    let rows = f.rows();
    assert_eq!(rows.iter().filter(|r| r.state == "coalesced").count(), 6);
    let summary_id = rows.iter().find(|r| r.event == "summary").unwrap().id;
    assert!(rows.iter().filter(|r| r.state == "coalesced").all(|r| r.coalesced_into == Some(summary_id)));

    // 30 s later, 25 more: the minute's budget is spent, so they wait (nothing is sent, nothing lost).
    f.advance(TimeDelta::seconds(30));
    for i in 0..25 {
        f.fail("dingtalk.ops", &format!("u{i:02}"), 3);
    }
    let report = rt.block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!((report.sending, report.deferred), (0, 25));
    // Just before the window frees: still nothing.
    f.advance(TimeDelta::seconds(30));
    assert_eq!(rt.block_on(d.deliver_due(f.now())).unwrap().sending, 0);
    f.advance(TimeDelta::milliseconds(1));
    let report = rt.block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!((report.sending, report.coalesced), (20, 6));
    let got = http.received();
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|r| r.signed == Some(true) && r.answered.contains("\"errcode\":0")));
    // In no window of 60 s (by the signed timestamps, as the service counts) more than 20.
    let times: Vec<i64> = got.iter().map(|r| r.timestamp_ms.unwrap()).collect();
    for t in &times {
        let inside = times.iter().filter(|s| **s >= *t && **s <= t + 60_000).count();
        assert!(inside <= 20, "{inside} messages in the minute from {t}");
    }
    let rows = f.rows();
    assert_eq!(rows.iter().filter(|r| r.state == "sent").count(), 40);
    assert_eq!(rows.iter().filter(|r| r.state == "coalesced").count(), 12);
    assert_eq!(rows.iter().filter(|r| r.state == "pending").count(), 0, "nothing left behind");
}

#[test]
fn the_budget_is_counted_from_the_store_across_a_restart() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let rt = runtime();
    for i in 0..15 {
        f.fail("dingtalk.ops", &format!("a{i}"), 1);
    }
    rt.block_on(f.deliverer().deliver_due(f.now())).unwrap();
    // A new deliverer (a restarted process) 10 s later sees the 15 already sent.
    f.advance(TimeDelta::seconds(10));
    for i in 0..10 {
        f.fail("dingtalk.ops", &format!("b{i}"), 1);
    }
    let report = rt.block_on(f.deliverer().deliver_due(f.now())).unwrap();
    assert_eq!((report.sending, report.coalesced), (5, 6), "4 alone and a summary of 6");
    assert_eq!(http.received().len(), 20);
}

#[test]
fn a_receiver_down_then_back_gets_the_alert_once_after_backoff() {
    let port = peers::free_port();
    let f = Fixture::new(port, "");
    let rt = runtime();
    let d = f.deliverer();
    let id = f.fail("dingtalk.ops", "load", 1);
    rt.block_on(d.deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert_eq!((row.state.as_str(), row.attempts), ("pending", 1));
    let error = row.last_error.clone().unwrap();
    assert!(error.contains("onnect"), "{error}");
    assert!(!error.contains(TOKEN) && !error.contains("127.0.0.1:"), "no URL in errors: {error}");
    assert_eq!(row.next_attempt_at, Some(f.now() + TimeDelta::seconds(1)), "backoff 1 s after the first attempt");
    // Not due yet: nothing happens.
    assert_eq!(rt.block_on(d.deliver_due(f.now())).unwrap().sending, 0);
    let http = Http::start_on(port, (DING_SECRET, FEISHU_SECRET, WEBHOOK_SECRET));
    f.advance(TimeDelta::seconds(1));
    rt.block_on(d.deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert_eq!((row.state.as_str(), row.attempts, row.last_error.as_deref()), ("sent", 2, None));
    assert_eq!(http.received().len(), 1);
    f.advance(TimeDelta::seconds(60));
    rt.block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!(http.received().len(), 1, "sent once");
}

#[test]
fn error_answers_are_retried_with_backoff_then_failed_and_say_what_the_service_said() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let rt = runtime();
    let d = f.deliverer();
    http.set_mode(Mode::Status500);
    let id = f.fail("dingtalk.ops", "load", 1);
    rt.block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!(f.row(id).last_error.as_deref(), Some("HTTP 500: internal error"));
    http.set_mode(Mode::BadSign);
    f.advance(TimeDelta::seconds(1));
    rt.block_on(d.deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert!(row.last_error.as_deref().unwrap().contains("errcode 310000 (bad signature, keyword or IP"), "{row:?}");
    assert_eq!(row.next_attempt_at, Some(f.now() + TimeDelta::seconds(2)), "backoff doubles");
    f.advance(TimeDelta::seconds(2));
    rt.block_on(d.deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert_eq!((row.state.as_str(), row.attempts), ("failed", 3), "delivery_attempts = 3");
    assert!(row.last_error.unwrap().ends_with("(gave up after 3 attempts)"));

    // 130101: the robot is blocked for 10 minutes, so the next try waits that long.
    http.set_mode(Mode::TooFast);
    let id = f.fail("dingtalk.ops", "load", 2);
    rt.block_on(d.deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert!(row.last_error.as_deref().unwrap().contains("130101"), "{row:?}");
    assert_eq!(row.next_attempt_at, Some(f.now() + TimeDelta::seconds(600)));
}

#[test]
fn a_hanging_receiver_times_out_and_holds_up_nothing_else() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let rt = runtime();
    http.set_mode(Mode::Hang);
    let hung = f.fail("slack.dev", "load", 1);
    let started = std::time::Instant::now();
    rt.block_on(async {
        // The pass returns at once; the send runs on.
        let d = f.deliverer();
        let report = d.pass(f.now()).await.unwrap();
        assert_eq!(report.sending, 1);
        assert_eq!(f.row(hung).state, "sending", "leased while in flight");
        tokio::time::sleep(Duration::from_millis(800)).await;
    });
    let row = f.row(hung);
    assert_eq!(row.state, "pending");
    assert!(row.last_error.as_deref().unwrap().starts_with("no answer within 500ms"), "{row:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn unknown_channels_and_a_missing_robot_fail_at_once_naming_the_configured_ones() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let id = f.fail("dingtalk.nope", "load", 1);
    runtime().block_on(f.deliverer().deliver_due(f.now())).unwrap();
    let row = f.row(id);
    assert_eq!(row.state, "failed");
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            "unknown alert channel `dingtalk.nope` (configured: dingtalk.ops, feishu.team, slack.dev, webhook.hook, \
             wecom.group)"
        )
    );
    assert!(http.received().is_empty());
}

#[test]
fn email_reaches_the_smtp_server_with_recipients_subject_and_body() {
    let smtp = Smtp::start();
    let f = Fixture::new(
        peers::free_port(),
        &format!(
            "[alerts.email]\nhost = \"127.0.0.1\"\nport = {}\nmail_from = \"rhaiflow@example.com\"\nuser = \"ops\"\npassword = \"smtp-pa55word\"\n",
            smtp.port
        ),
    );
    let id = f.fail("email", "load", 2);
    runtime().block_on(f.deliverer().deliver_due(f.now())).unwrap();
    assert_eq!(f.row(id).state, "sent", "{:?}", f.row(id));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "rhaiflow@example.com");
    assert_eq!(mail.to, ["ops@example.com"]);
    assert!(mail.data.contains("Subject: [rhaiflow] etl.load failed (try 2 of 3)"), "{}", mail.data);
    assert!(mail.data.contains("Try: 2 of 3"), "{}", mail.data);
    assert!(mail.data.contains("Log: https://rhaiflow.example.com/dags/etl/runs/"), "{}", mail.data);
    assert!(!mail.auth.is_empty(), "logged in");
}

#[test]
fn a_channel_template_replaces_the_body_and_a_broken_one_is_caught_at_start() {
    let http = peer();
    let f = Fixture::new(http.port, "");
    let mut config = f.config.clone();
    config.alerts.slack.get_mut("dev").unwrap().template =
        Some("{{ dag_id }}.{{ task_id }}: {{ event_text }} ({{ try_number }}/{{ tries }}) {{ error | upper }}".into());
    let d = Deliverer::new(
        f.store.clone(),
        Channels::from_config(&config.alerts),
        DeliverySettings::from_config(&config, "t".into()),
        Arc::new(Utc::now),
    );
    f.fail("slack.dev", "load", 2);
    runtime().block_on(d.deliver_due(f.now())).unwrap();
    assert_eq!(
        http.received()[0].body["text"],
        "etl.load: failed (2/3) BASH COMMAND FAILED. THE COMMAND RETURNED A NON-ZERO EXIT CODE 1."
    );
    config.alerts.slack.get_mut("dev").unwrap().template = Some("{{ broken".into());
    let e = rhaiflow::alert::check_templates(&Channels::from_config(&config.alerts)).unwrap_err();
    assert!(e.to_string().starts_with("template of channel `slack.dev`: syntax error"), "{e}");
}
