//! Callbacks under the real scheduler, against real peers on 127.0.0.1: a task that fails with
//! a retry runs `on_retry_callback` then `on_failure_callback` with the alert context; a DAG's
//! `on_success_callback`; a callback that throws is recorded and changes no state; `alerts::send`
//! reaches the HTTP receiver through configured channels.

mod common;
mod peers;

use common::{Home, wait_until};
use peers::Http;

const DING_SECRET: &str = "SECcallback0123456789";
const TOKEN: &str = "cbtok3n5ecret";

fn home(http: &Http, dag: &str) -> Home {
    let home = Home::new(&[("cb.rhai", dag)]);
    let toml = format!(
        r#"
[webserver]
base_url = "https://ui.example.com"
[alerts]
delivery_timeout = 5
[alerts.dingtalk.ops]
webhook = "http://127.0.0.1:{port}/dingtalk?access_token={TOKEN}"
secret = "{DING_SECRET}"
[alerts.slack.dev]
webhook = "http://127.0.0.1:{port}/slack/{TOKEN}"
[alerts.webhook.hook]
url = "http://127.0.0.1:{port}/webhook"
"#,
        port = http.port
    );
    std::fs::write(home.path().join("rhaiflow.toml"), toml).unwrap();
    home
}

fn peer() -> Http {
    Http::start_on(0, (DING_SECRET, "unused-feishu", "unused-webhook"))
}

/// Outbox rows of callbacks: `(channel, state, last_error)`.
fn callback_rows(home: &Home) -> Vec<(String, String, Option<String>)> {
    let db = home.db();
    let mut stmt = db
        .prepare("SELECT channel, state, last_error FROM alert_outbox WHERE channel LIKE 'callback:%' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

fn finished(home: &Home, dag_id: &str) -> String {
    wait_until("the run to finish", || {
        home.runs(dag_id)
            .first()
            .map(|r| r["state"].as_str().unwrap_or_default().to_string())
            .filter(|s| s == "success" || s == "failed")
    })
}

#[test]
fn a_task_that_fails_with_a_retry_runs_its_retry_then_its_failure_callback() {
    let http = peer();
    let home = home(
        &http,
        r#"import "alerts" as alerts;
let dag = DAG("cb", #{ start_date: datetime(2026, 1, 1), schedule: () });
BashOperator(#{
    task_id: "flaky",
    bash_command: "echo last words; exit 3",
    retries: 1,
    retry_delay: seconds(0),
    on_retry_callback: |ctx| {
        alerts::send("slack.dev", `retry ${ctx.dag_id}.${ctx.task_id} state=${ctx.state} try=${ctx.try_number}/${ctx.tries} ti=${ctx.ti.try_number} max=${ctx.max_tries} run=${ctx.run_id} date=${ctx.ds} url=${ctx.log_url}`);
    },
    on_failure_callback: |ctx| {
        alerts::send("dingtalk.ops", alerts::ding_markdown(ctx) + "\n\ntail: " + ctx.log_tail + "\nerror: " + ctx.exception, #{ title: "flaky failed" });
    },
});"#,
    );
    let mut scheduler = home.spawn(&["scheduler"]);
    let o = home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-04"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(finished(&home, "cb"), "failed");
    let received = wait_until("both callbacks' messages", || {
        let r = http.received();
        (r.len() >= 2).then_some(r)
    });
    let rows = wait_until("both callback rows recorded", || {
        let rows = callback_rows(&home);
        (rows.len() == 2 && rows.iter().all(|r| r.1 != "pending" && r.1 != "sending")).then_some(rows)
    });
    scheduler.kill_9();
    assert!(rows.iter().all(|r| r.1 == "sent"), "{rows:?}");
    assert!(rows[0].0.contains("on_retry_callback") && rows[1].0.contains("on_failure_callback"), "{rows:?}");

    // The retry's message came first, through Slack.
    assert_eq!(received[0].service, "slack");
    let retry = received[0].body["text"].as_str().unwrap();
    let run_id = "manual__2026-03-04T00:00:00+00:00";
    assert_eq!(
        retry,
        format!(
            "retry cb.flaky state=up_for_retry try=1/2 ti=1 max=1 run={run_id} date=2026-03-04 \
             url=https://ui.example.com/dags/cb/runs/{run_id}/tasks/flaky/tries/1"
        )
    );
    // The failure's, signed, through DingTalk: the stdlib's markdown with the context of try 2.
    assert_eq!(received[1].service, "dingtalk");
    assert_eq!(received[1].signed, Some(true));
    let md = &received[1].body["markdown"];
    assert_eq!(md["title"], "flaky failed");
    let text = md["text"].as_str().unwrap();
    assert!(text.starts_with("### cb.flaky failed"), "{text}");
    assert!(text.contains("- try 2 out of 2"), "{text}");
    assert!(text.contains("tail: ") && text.contains("last words"), "{text}");
    assert!(text.contains("error: ") && text.contains("exit code 3"), "{text}");
    assert!(text.contains("/tries/2)"), "{text}");
    // The task's state is the task's own.
    assert_eq!(home.states("cb", run_id), vec![("flaky".to_string(), "failed".to_string(), 2)]);
    // What the callbacks did is in the tries' logs.
    assert!(home.log("cb", run_id, "flaky").contains("on_failure_callback ran"));
}

#[test]
fn a_callback_that_throws_is_recorded_once_and_changes_no_state() {
    let http = peer();
    let home = home(
        &http,
        r#"let dag = DAG("cb", #{ start_date: datetime(2026, 1, 1), schedule: () });
BashOperator(#{
    task_id: "ok",
    bash_command: "true",
    on_success_callback: |ctx| { throw `no luck for ${ctx.task_id}`; },
});"#,
    );
    let mut scheduler = home.spawn(&["scheduler"]);
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-04"]).status.success());
    assert_eq!(finished(&home, "cb"), "success");
    let rows = wait_until("the callback row recorded", || {
        let rows = callback_rows(&home);
        rows.first().filter(|r| r.1 == "failed").map(|_| rows.clone())
    });
    // Another wake of the deliverer does not run it again.
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-05"]).status.success());
    let rows_after = wait_until("the second run's callback", || {
        let rows = callback_rows(&home);
        (rows.len() == 2 && rows[1].1 == "failed").then_some(rows)
    });
    scheduler.kill_9();
    assert_eq!(rows.len(), 1);
    let error = rows[0].2.clone().unwrap();
    assert!(error.contains("no luck for ok") && error.contains("cb.rhai:"), "{error}");
    assert_eq!(rows_after[0], rows[0]);
    let attempts: u32 = home.db().query_row("SELECT MAX(attempts) FROM alert_outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(attempts, 1);
    let run_id = "manual__2026-03-04T00:00:00+00:00";
    assert_eq!(home.states("cb", run_id), vec![("ok".to_string(), "success".to_string(), 1)]);
    assert!(http.received().is_empty());
}

#[test]
fn a_dag_level_on_success_callback_runs_when_the_run_succeeds() {
    let http = peer();
    let home = home(
        &http,
        r#"import "alerts" as alerts;
let dag = DAG("cb", #{
    start_date: datetime(2026, 1, 1),
    schedule: (),
    on_success_callback: |ctx| {
        let pushed = ctx.ti.xcom_pull("a");
        alerts::send("webhook.hook", `run ${ctx.run_id} of ${ctx.dag_id} ${ctx.state} (${ctx.event}) task=${ctx.task_id} xcom=${pushed}`);
    },
});
BashOperator(#{ task_id: "a", bash_command: "echo 42" });"#,
    );
    let mut scheduler = home.spawn(&["scheduler"]);
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-04"]).status.success());
    assert_eq!(finished(&home, "cb"), "success");
    let received = wait_until("the webhook's message", || http.received().first().cloned());
    scheduler.kill_9();
    assert_eq!(received.service, "webhook");
    assert_eq!(
        received.body["text"],
        "run manual__2026-03-04T00:00:00+00:00 of cb success (dag_run_success) task= xcom=42"
    );
    assert_eq!(callback_rows(&home)[0].1, "sent");
}

/// A callback that never returns is stopped at `[core] task_script_timeout`, recorded failed
/// with the reason, and holds up neither its task's state nor the next run.
#[test]
fn a_callback_that_never_returns_is_stopped_at_the_timeout_and_holds_up_nothing() {
    let http = peer();
    let home = home(
        &http,
        r#"let dag = DAG("cb", #{ start_date: datetime(2026, 1, 1), schedule: () });
BashOperator(#{
    task_id: "ok",
    bash_command: "true",
    on_success_callback: |ctx| { let n = 0; loop { n += 1; } },
});"#,
    );
    let toml = home.path().join("rhaiflow.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("[core]\ntask_script_timeout = 2\n{config}")).unwrap();
    let mut scheduler = home.spawn(&["scheduler"]);
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-04"]).status.success());
    assert_eq!(finished(&home, "cb"), "success");
    // The next run finishes while the first callback still spins.
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-05"]).status.success());
    wait_until("both runs done", || {
        (home.runs("cb").iter().filter(|r| r["state"] == "success").count() == 2).then_some(())
    });
    let rows = wait_until("both callbacks stopped", || {
        let rows = callback_rows(&home);
        (rows.len() == 2 && rows.iter().all(|r| r.1 == "failed")).then_some(rows)
    });
    scheduler.kill_9();
    let error = rows[0].2.clone().unwrap();
    assert!(error.contains("2 s") || error.contains("timeout") || error.contains("time"), "{error}");
    for date in ["2026-03-04", "2026-03-05"] {
        let run_id = format!("manual__{date}T00:00:00+00:00");
        assert_eq!(home.states("cb", &run_id), vec![("ok".to_string(), "success".to_string(), 1)]);
    }
}

/// A scheduler killed while a callback runs: the next scheduler runs it again (its lease was a
/// dead process's), once, and records how it ended.
#[test]
fn a_callback_cut_off_by_kill_9_runs_again_after_restart() {
    let http = peer();
    let home = home(
        &http,
        r#"import "alerts" as alerts;
let dag = DAG("cb", #{ start_date: datetime(2026, 1, 1), schedule: () });
BashOperator(#{
    task_id: "ok",
    bash_command: "true",
    on_success_callback: |ctx| {
        let started = timestamp();
        while started.elapsed < 3.0 { }
        alerts::send("webhook.hook", `callback done for ${ctx.task_id}`);
    },
});"#,
    );
    let mut scheduler = home.spawn(&["scheduler"]);
    assert!(home.run(&["dags", "trigger", "cb", "--logical-date", "2026-03-04"]).status.success());
    assert_eq!(finished(&home, "cb"), "success");
    wait_until("the callback leased", || callback_rows(&home).first().filter(|r| r.1 == "sending").map(|_| ()));
    scheduler.kill_9();
    assert!(http.received().is_empty(), "killed before the callback could send");
    let mut scheduler = home.spawn(&["scheduler"]);
    let rows = wait_until("the callback ran again", || {
        let rows = callback_rows(&home);
        rows.first().filter(|r| r.1 == "sent").map(|_| rows.clone())
    });
    let received = wait_until("the message", || http.received().first().cloned());
    std::thread::sleep(std::time::Duration::from_millis(500));
    scheduler.kill_9();
    assert_eq!(rows.len(), 1);
    assert_eq!(received.body["text"], "callback done for ok");
    assert_eq!(http.received().len(), 1);
    let attempts: u32 = home.db().query_row("SELECT attempts FROM alert_outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(attempts, 2);
}
