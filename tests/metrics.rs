//! `/metrics` of `rhaiflow standalone`: a real run with a failing task, a real webhook receiver on
//! 127.0.0.1 taking the alert, then the Prometheus text read over a real socket.

mod common;
mod peers;

use common::{Home, Running, wait_until};
use std::io::{Read, Write};

const DAG: &str = r#"let dag = DAG("metered", #{ start_date: datetime(2024, 1, 1), schedule: () });
let ok = BashOperator(#{ task_id: "ok", bash_command: "echo fine" });
let bad = BashOperator(#{ task_id: "bad", bash_command: "exit 3" });
ok >> bad;
"#;

fn scrape(port: u16) -> Option<String> {
    get(port, "/metrics")
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[test]
fn metrics_count_what_ran_what_the_store_holds_and_the_alerts_sent() {
    let receiver = peers::Http::start_on(0, ("ding", "feishu", "hook-secret-1"));
    let home = Home::new(&[("metered.rhai", DAG), ("broken.rhai", "let dag = DAG(\"broken\", #{ schedule: ( });\n")]);
    let port = peers::free_port();
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        format!(
            "[webserver]\nbind = \"127.0.0.1:{port}\"\n[alerts]\non_failure = [\"webhook.hook\"]\n\
             [alerts.webhook.hook]\nurl = \"http://127.0.0.1:{}/webhook\"\nsecret = \"hook-secret-1\"\n",
            receiver.port
        ),
    )
    .unwrap();
    let _standalone = Running(Some(
        home.command(&["standalone"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until("standalone serves /metrics", || scrape(port).filter(|a| a.starts_with("HTTP/1.1 200")));
    let out = home.run(&["dags", "trigger", "metered"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the failure alert arrives", || (!receiver.received().is_empty()).then_some(()));
    let text = wait_until("the alert's delivery counted", || {
        scrape(port)
            .filter(|t| t.contains("rhaiflow_alert_deliveries_total{channel=\"webhook.hook\",outcome=\"sent\"} 1"))
    });
    assert!(text.contains("content-type: application/openmetrics-text"), "{text}");
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect("rhaiflow_task_duration_seconds_count{operator=\"BashOperator\",state=\"success\"}", 1.0);
    expect("rhaiflow_task_duration_seconds_count{operator=\"BashOperator\",state=\"failed\"}", 1.0);
    expect("rhaiflow_dag_runs{state=\"failed\"}", 1.0);
    expect("rhaiflow_task_instances{state=\"success\"}", 1.0);
    expect("rhaiflow_task_instances{state=\"failed\"}", 1.0);
    expect("rhaiflow_queue_depth", 0.0);
    expect("rhaiflow_import_errors", 1.0);
    expect("rhaiflow_task_start_delay_seconds_count", 2.0);
    expect("rhaiflow_worker_slots_used", 0.0);
    for series in ["rhaiflow_scheduler_pass_duration_seconds_count", "rhaiflow_dag_file_parse_duration_seconds_count"] {
        assert!(sample(&text, series).is_some_and(|n| n >= 1.0), "{series} in:\n{text}");
    }
    assert!(sample(&text, "rhaiflow_worker_slots").is_some_and(|n| n >= 1.0), "{text}");
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// A plain `scheduler` (no web server) serves `/health` and `/metrics` on
/// `[scheduler] health_check_bind`, as Airflow's scheduler health check server.
#[test]
fn a_plain_scheduler_serves_health_and_metrics_on_its_health_check_address() {
    let home = Home::new(&[("metered.rhai", DAG)]);
    let port = peers::free_port();
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        format!("[scheduler]\nhealth_check_bind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let _scheduler = Running(Some(
        home.command(&["scheduler"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let health = wait_until("the scheduler answers /health", || get(port, "/health"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"healthy\""), "{health}");
    assert!(health.contains("\"latest_scheduler_heartbeat\":\"20"), "{health}");
    let out = home.run(&["dags", "trigger", "metered"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = wait_until("the failed run counted", || {
        get(port, "/metrics").filter(|t| sample(t, "rhaiflow_dag_runs{state=\"failed\"}") == Some(1.0))
    });
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(sample(&text, "rhaiflow_task_instances{state=\"success\"}"), Some(1.0), "{text}");
    assert!(sample(&text, "rhaiflow_scheduler_pass_duration_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    let other = get(port, "/api/v1/dags").unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "no API here: {other}");
}

#[test]
fn a_bad_or_taken_health_check_address_is_an_error_naming_the_key() {
    let home = Home::new(&[("metered.rhai", DAG)]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[scheduler]\nhealth_check_bind = \"localhost\"\n").unwrap();
    let out = home.run(&["dags", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("scheduler.health_check_bind") && err.contains("`localhost` is not an address"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        format!("[scheduler]\nhealth_check_bind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let out = home.run(&["scheduler"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port} (`[scheduler] health_check_bind`)")), "{err}");
}

/// A flood that runs the scheduler out of file descriptors (here through its health port, under
/// a lowered limit) must not leave its wake socket dead: once the flood is gone, a trigger is
/// heard and runs.
#[test]
fn a_scheduler_out_of_file_descriptors_for_a_while_still_hears_triggers_afterwards() {
    const AFTER: &str = r#"let dag = DAG("after", #{ start_date: datetime(2024, 1, 1), schedule: () });
let t = BashOperator(#{ task_id: "t", bash_command: "echo after" });
"#;
    let home = Home::new(&[("after.rhai", AFTER)]);
    let port = peers::free_port();
    std::fs::write(
        home.path().join("rhaiflow.toml"),
        format!(
            "[scheduler]\nhealth_check_bind = \"127.0.0.1:{port}\"\n[webserver]\nmax_connections = 5000\nheader_timeout = 3600.0\n"
        ),
    )
    .unwrap();
    let scheduler = home
        .command(&["scheduler"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = scheduler.id();
    let _scheduler = Running(Some(scheduler));
    wait_until("the scheduler answers /health", || get(port, "/health"));
    // Lowered now (prlimit), so loading had room.
    let limited = std::process::Command::new("prlimit").args(["--pid", &pid.to_string(), "--nofile=100:100"]).status();
    assert!(limited.is_ok_and(|s| s.success()), "prlimit must lower the scheduler's descriptor limit");
    let flood: Vec<std::net::TcpStream> =
        (0..200).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    wait_until("the scheduler runs out of descriptors", || {
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        (open >= 99).then_some(())
    });
    // Heard or not while the flood lasts (its try may fail to start); either way the socket must
    // still listen afterwards.
    let _ = home.run(&["dags", "trigger", "after"]);
    drop(flood);
    let out = home.run(&["dags", "trigger", "after"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("a run triggered after the flood succeeds", || {
        home.runs("after").iter().any(|r| r["state"] == "success").then_some(())
    });
}
