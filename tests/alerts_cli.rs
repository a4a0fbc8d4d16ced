//! Alerts end to end, through the binary, against real peers on 127.0.0.1: the seed's settings
//! (`ding_on_failure`, `ding_on_retry`, email) on a task that fails twice; `dags test` showing
//! rather than sending; `alerts list` and `alerts test`; kill -9 of the scheduler between the
//! state change and the send; and every secret searched for in everything written.

mod common;
mod peers;

use common::{Home, output_within_deadline, wait_until};
use peers::{Http, Smtp};
use std::process::Output;

const DING_SECRET: &str = "SECd1ngS1gnS3cretValue0000000000000";
const TOKEN: &str = "d1ngAccessT0kenValue";
const SMTP_PASSWORD: &str = "smtpPa55wordValue";

const SEED_DAG: &str = r#"
let dag = DAG("seed", #{
    start_date: datetime(2024, 1, 1),
    schedule: (),
    default_args: #{
        email: ["ops@example.com"],
        email_on_failure: true,
        email_on_retry: true,
        ding_on_failure: true,
        ding_on_retry: true,
        retries: 1,
        retry_delay: seconds(0),
    },
});
let load = BashOperator(#{ task_id: "load", bash_command: "echo loading rows; echo 'boom: table missing' >&2; exit 3" });
"#;

struct Setup {
    home: Home,
    http: Http,
    smtp: Option<Smtp>,
}

/// A home whose robot `ops` (signed) posts to `http_port` and whose mail goes to an SMTP peer;
/// secrets come from environment variables, as a careful user sets them.
fn setup(http: Http, smtp: Option<Smtp>, extra: &str) -> Setup {
    let home = Home::new(&[("seed.rhai", SEED_DAG)]);
    let email = match &smtp {
        Some(s) => format!(
            "[alerts.email]\nhost = \"127.0.0.1\"\nport = {}\nmail_from = \"rhaiflow@example.com\"\nuser = \"ops\"\npassword_env = \"SMTP_PASSWORD\"\n",
            s.port
        ),
        None => String::new(),
    };
    let toml = format!(
        r#"
[webserver]
base_url = "https://rhaiflow.example.com/"
[alerts]
on_failure = ["dingtalk.ops"]
{extra}
[alerts.dingtalk.ops]
webhook_env = "DING_URL"
secret_env = "DING_SECRET"
{email}
"#
    );
    std::fs::write(home.path().join("rhaiflow.toml"), toml).unwrap();
    Setup { home, http, smtp }
}

impl Setup {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.home.command(args);
        c.env("DING_URL", format!("http://127.0.0.1:{}/dingtalk?access_token={TOKEN}", self.http.port))
            .env("DING_SECRET", DING_SECRET)
            .env("SMTP_PASSWORD", SMTP_PASSWORD);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_within_deadline(self.command(args), &format!("{args:?}"))
    }

    fn spawn(&self, args: &[&str]) -> common::Running {
        let child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        common::Running(Some(child))
    }

    fn alerts(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["alerts", "list", "--output", "json"];
        args.extend(extra);
        let o = self.run(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().clone()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn peer_on(port: u16) -> Http {
    Http::start_on(port, (DING_SECRET, "", ""))
}

/// Every file under `dir`, as bytes, with its path.
fn every_file(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            every_file(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

/// No secret in any file of the home (database, WAL, logs) nor in any output.
fn assert_no_secret_anywhere(home: &Home, outputs: &[String]) {
    let mut files = Vec::new();
    every_file(home.path(), &mut files);
    for secret in [DING_SECRET, TOKEN, SMTP_PASSWORD] {
        for (path, bytes) in &files {
            if path.ends_with("rhaiflow.toml") {
                continue;
            }
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "secret found in {}", path.display());
        }
        for (i, out) in outputs.iter().enumerate() {
            assert!(!out.contains(secret), "secret found in output {i}: {out}");
        }
    }
}

#[test]
fn a_task_failing_twice_sends_one_signed_markdown_and_one_email_per_try_naming_it_and_linking_its_log() {
    let s = setup(peer_on(0), Some(Smtp::start()), "");
    let o = s.run(&["dags", "test", "seed", "2026-02-01", "--send-alerts"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("4 alerts (sent with --send-alerts):"), "{out}");
    let run = "manual__2026-02-01T00:00:00+00:00";

    // DingTalk: one signed markdown message per try; `ding_on_failure` and `[alerts] on_failure`
    // naming the same robot give one message, not two.
    // Sent side by side: in either order.
    let mut ding = s.http.received();
    ding.sort_by_key(|r| r.body["markdown"]["text"].as_str().unwrap().contains("**Try**: 2 of 2"));
    assert_eq!(ding.len(), 2, "{ding:?}");
    for (n, (r, what)) in ding.iter().zip(["up for retry", "failed"]).enumerate() {
        let n = n + 1;
        assert_eq!(r.signed, Some(true), "signed as DingTalk checks it");
        assert_eq!(r.body["msgtype"], "markdown");
        let md = r.body["markdown"]["text"].as_str().unwrap();
        assert!(md.contains(&format!("seed.load {what}")), "{md}");
        assert!(md.contains(&format!("**Try**: {n} of 2")), "{md}");
        assert!(md.contains("boom: table missing"), "the log's last lines: {md}");
        let link = format!("(https://rhaiflow.example.com/dags/seed/runs/{run}/tasks/load/tries/{n})");
        assert!(md.contains(&link), "{md}");
    }
    assert!(ding[0].body["markdown"]["text"].as_str().unwrap().contains("(retrying at "));

    // Email: one per try, to the task's address, naming the try and linking its log.
    let mut mails = s.smtp.as_ref().unwrap().mails();
    mails.sort_by_key(|m| m.data.contains("(try 2 of 2)"));
    assert_eq!(mails.len(), 2);
    for (n, mail) in mails.iter().enumerate() {
        let n = n + 1;
        assert_eq!(mail.to, ["ops@example.com"]);
        assert_eq!(mail.from, "rhaiflow@example.com");
        assert!(mail.data.contains(&format!("(try {n} of 2)")), "{}", mail.data);
        assert!(mail.data.contains(&format!("/tasks/load/tries/{n}")), "{}", mail.data);
        assert!(mail.data.contains("boom: table missing"), "{}", mail.data);
    }

    let rows = s.alerts(&[]);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["state"] == "sent" && r["attempts"] == 1), "{rows:?}");
    let channels: Vec<(&str, &str)> =
        rows.iter().rev().map(|r| (r["event"].as_str().unwrap(), r["channel"].as_str().unwrap())).collect();
    assert_eq!(
        channels,
        [("up_for_retry", "email"), ("up_for_retry", "dingtalk.ops"), ("failed", "email"), ("failed", "dingtalk.ops")]
    );
    let table = text(&s.run(&["alerts", "list"]).stdout);
    assert!(table.starts_with("id  channel       event         dag_id  task_id  run_id"), "{table}");

    let tested = s.run(&["alerts", "test", "dingtalk.ops"]);
    assert_eq!(
        text(&tested.stdout),
        "sent a test message to `dingtalk.ops`; the service answered: {\"errcode\":0,\"errmsg\":\"ok\"}\n"
    );
    let unknown = s.run(&["alerts", "test", "slack.x"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(text(&unknown.stderr), "error: unknown alert channel `slack.x` (configured: dingtalk.ops, email)\n");
    let outputs: Vec<String> =
        [&o, &tested, &unknown].iter().flat_map(|o| [text(&o.stdout), text(&o.stderr)]).chain([table]).collect();
    assert_no_secret_anywhere(&s.home, &outputs);
}

#[test]
fn dags_test_prints_the_alerts_it_would_send_and_sends_none() {
    let s = setup(peer_on(0), Some(Smtp::start()), "");
    let o = s.run(&["dags", "test", "seed", "2026-02-01"]);
    let out = text(&o.stdout);
    assert!(out.contains("4 alerts it would send (not sent; add --send-alerts):"), "{out}");
    assert!(
        out.contains("- dingtalk.ops failed load try 2: held\n  [rhaiflow] seed.load failed (try 2 of 2)"),
        "{out}"
    );
    assert!(out.contains("  | - **Try**: 2 of 2"), "{out}");
    assert!(s.http.received().is_empty() && s.smtp.as_ref().unwrap().mails().is_empty());
    assert_eq!(s.alerts(&["--state", "held"]).len(), 4);
    // A scheduler started later leaves them alone too.
    assert_eq!(s.alerts(&["--state", "pending"]).len(), 0);
}

#[test]
fn config_errors_name_unknown_channels_and_ambiguous_robots() {
    let s = setup(peer_on(0), None, "on_retry = [\"slack.nope\"]");
    let o = s.run(&["alerts", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("`alerts.on_retry`")
            && text(&o.stderr).contains("unknown alert channel `slack.nope` (configured: dingtalk.ops)"),
        "{}",
        text(&o.stderr)
    );
    let s = setup(peer_on(0), None, "[alerts.dingtalk.other]\nwebhook = \"http://127.0.0.1:1/x\"");
    let o = s.run(&["alerts", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("several DingTalk robots (`dingtalk.ops`, `dingtalk.other`) and none named `default`"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn kill_9_of_the_scheduler_before_the_send_loses_nothing_and_sends_once_after_restart() {
    let port = peers::free_port();
    // The robot is down while the scheduler runs the task; attempts keep failing, fast.
    let s = setup(
        Http::start_on(peers::free_port(), (DING_SECRET, "", "")),
        None,
        "delivery_attempts = 1000\ndelivery_backoff_max = 0.2",
    );
    let s = Setup { http: Http { port, ..s.http.clone() }, ..s };
    let mut scheduler = s.spawn(&["scheduler"]);
    assert!(s.run(&["dags", "trigger", "seed", "--logical-date", "2026-03-01"]).status.success());
    // (The DAG's `email` flags name a channel this home has not configured: those rows fail at once.)
    let ding =
        || -> Vec<serde_json::Value> { s.alerts(&[]).into_iter().filter(|r| r["channel"] == "dingtalk.ops").collect() };
    let tried = |r: &serde_json::Value| r["attempts"].as_u64().unwrap_or(0) >= 1 && r["state"] == "pending";
    wait_until("both alerts attempted and pending", || {
        let rows = ding();
        (rows.len() == 2 && rows.iter().all(tried)).then_some(())
    });
    scheduler.kill_9();
    let pending = ding();
    assert!(pending.iter().all(|r| r["last_error"].as_str().unwrap().contains("onnect")), "{pending:?}");

    // The robot comes back; a new scheduler delivers each alert once.
    let http = peer_on(port);
    let mut scheduler = s.spawn(&["scheduler"]);
    wait_until("both alerts sent", || ding().iter().all(|r| r["state"] == "sent").then_some(()));
    scheduler.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, out, err) = scheduler.finish();
    let mut got = http.received();
    got.sort_by_key(|r| r.body["markdown"]["text"].as_str().unwrap().contains("**Try**: 2 of 2"));
    assert_eq!(got.len(), 2, "each alert once: {got:?}");
    assert!(got.iter().all(|r| r.signed == Some(true)));
    let texts: Vec<&str> = got.iter().map(|r| r.body["markdown"]["text"].as_str().unwrap()).collect();
    assert!(texts[0].contains("up for retry") && texts[1].contains("seed.load failed"), "{texts:?}");
    assert_no_secret_anywhere(&s.home, &[out, err, serde_json::to_string(&pending).unwrap()]);
}

#[test]
fn an_import_error_is_told_once_to_the_on_import_error_channels() {
    let s = setup(peer_on(0), None, "on_import_error = [\"dingtalk.ops\"]");
    std::fs::write(s.home.path().join("dags/broken.rhai"), "let dag = DAG(\"broken\", #{ schedule: \"@daily\" ")
        .unwrap();
    let mut scheduler = s.spawn(&["scheduler"]);
    wait_until("the import error sent", || s.alerts(&["--state", "sent"]).len().eq(&1).then_some(()));
    scheduler.kill_9();
    // Loading the folder again (any command that syncs it) finds the same error: no new alert.
    assert!(s.run(&["dags", "trigger", "seed"]).status.success());
    let rows = s.alerts(&[]);
    assert_eq!(rows.len(), 1, "once per new error: {rows:?}");
    assert_eq!((rows[0]["event"].as_str(), rows[0]["dag_id"].as_str()), (Some("import_error"), Some("broken.rhai")));
    let got = s.http.received();
    assert_eq!(got.len(), 1);
    let md = got[0].body["markdown"]["text"].as_str().unwrap();
    assert!(md.starts_with("### ❌ import error in broken.rhai\n```\n"), "{md}");
    assert_eq!(got[0].body["markdown"]["title"], "[rhaiflow] import error in broken.rhai");
}
