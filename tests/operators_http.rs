//! `HttpOperator` and `HttpSensor` through the real binary (`dags test`), against an HTTP server
//! listening on 127.0.0.1 in the test: what it answers (JSON, errors, slow answers, 404 then 200)
//! and what it saw (method, path, query, headers, body, basic auth).

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::Home;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

const RUN: &str = "manual__2026-11-05T00:00:00+00:00";
const PASSWORD: &str = "s3cretPassw0rd";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: String,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    later_calls: AtomicU32,
    count_calls: AtomicU32,
}

/// An HTTP server on 127.0.0.1:0 on its own runtime, for the life of the test.
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Arc::new(Shared::default());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Server { addr, shared, _runtime: runtime }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }

    /// A home whose `rhaiflow.toml` has connection `api` (basic auth, a default header in its
    /// extra) to this server; `$URL` in the DAG file is the server's base URL.
    fn home(&self, dag: &str) -> Home {
        let home = Home::new(&[("h.rhai", &dag.replace("$URL", &self.url("")))]);
        let extra = "%7B%22X-From-Extra%22%3A%20%22extra-value%22%2C%20%22timeout%22%3A%205%7D";
        std::fs::write(
            home.path().join("rhaiflow.toml"),
            format!("[connections.api]\nuri = \"http://apiuser:{PASSWORD}@{}/?__extra__={extra}\"\n", self.addr),
        )
        .unwrap();
        home
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.seen.lock().unwrap().push(seen);
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    match uri.path() {
        "/json" => (json, r#"{"ok": true, "items": [1, 2, 3], "name": "rhai"}"#).into_response(),
        "/fail" => {
            let body = format!("database exploded at row 7\n{}", "x".repeat(200_000));
            (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
        }
        "/slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            "too late".into_response()
        }
        "/text" => "<html>not json</html>".into_response(),
        "/leak" => (StatusCode::UNAUTHORIZED, format!("bad password {PASSWORD} for apiuser")).into_response(),
        "/later" => match shared.later_calls.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => (StatusCode::NOT_FOUND, "not there yet").into_response(),
            _ => (json, r#"{"status": "ready"}"#).into_response(),
        },
        "/count" => {
            let n = shared.count_calls.fetch_add(1, Ordering::SeqCst) + 1;
            (json, format!(r#"{{"n": {n}}}"#)).into_response()
        }
        _ => "echoed".into_response(),
    }
}

fn dag(tasks: &str) -> String {
    format!("let dag = DAG(\"h\", #{{ start_date: datetime(2026, 1, 1), schedule: (), catchup: false }});\n{tasks}")
}

fn dags_test(home: &Home) -> std::process::Output {
    home.run(&["dags", "test", "h", "2026-11-05"])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn xcom(home: &Home, task_id: &str) -> Option<serde_json::Value> {
    let value: Option<String> = home
        .db()
        .query_row(
            "SELECT value FROM xcom WHERE dag_id = 'h' AND task_id = ?1 AND key = 'return_value'",
            [task_id],
            |r| r.get(0),
        )
        .ok();
    value.map(|v| serde_json::from_str(&v).unwrap())
}

fn state(home: &Home, task_id: &str) -> String {
    home.states("h", RUN).into_iter().find(|(t, _, _)| t == task_id).map(|(_, s, _)| s).unwrap_or_default()
}

#[test]
fn a_json_answer_is_the_xcom_through_a_connection_and_through_a_full_url() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"let by_conn = HttpOperator(#{ task_id: "by_conn", http_conn_id: "api", endpoint: "json", method: "GET" });
let by_url = HttpOperator(#{ task_id: "by_url", endpoint: "$URL/json?x=1", method: "GET" });"#,
    ));
    let o = dags_test(&home);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let answer = r#"{"ok": true, "items": [1, 2, 3], "name": "rhai"}"#;
    assert_eq!(xcom(&home, "by_conn"), Some(serde_json::Value::String(answer.into())));
    assert_eq!(xcom(&home, "by_url"), Some(serde_json::Value::String(answer.into())));
    let seen = server.seen("/json");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.method == "GET"));
    // The connection's login and extra apply to its requests only.
    let with_auth: Vec<_> = seen.iter().filter(|s| s.headers.contains_key("authorization")).collect();
    assert_eq!(with_auth.len(), 1, "{seen:?}");
    assert_eq!(with_auth[0].headers.get("x-from-extra").map(String::as_str), Some("extra-value"));
    assert!(seen.iter().any(|s| s.query == "x=1" && !s.headers.contains_key("x-from-extra")), "{seen:?}");
    let log = home.log("h", RUN, "by_conn");
    assert!(log.contains(&format!("Sending 'GET' to url: {}", server.url("/json"))), "{log}");
    assert!(log.contains("HTTP 200 OK"), "{log}");
}

#[test]
fn an_error_status_fails_the_task_with_the_status_and_the_head_of_the_body() {
    let server = Server::start();
    let home = server.home(&dag(r#"HttpOperator(#{ task_id: "post", http_conn_id: "api", endpoint: "/fail" });"#));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(state(&home, "post"), "failed");
    assert_eq!(server.seen("/fail")[0].method, "POST", "POST is the default method, as Airflow's");
    let log = home.log("h", RUN, "post");
    assert!(log.contains("HTTP error: 500 Internal Server Error"), "{log}");
    assert!(log.contains("database exploded at row 7"), "{log}");
    assert!(log.contains("more of the body not shown"), "{log}");
    assert!(log.len() < 20_000, "the log holds the head of a 200 KB body, not all of it: {} bytes", log.len());
    assert!(text(&o.stdout).contains("500 Internal Server Error"), "{}", text(&o.stdout));
}

#[test]
fn a_slow_answer_fails_the_task_at_its_timeout() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"HttpOperator(#{ task_id: "slow", http_conn_id: "api", endpoint: "slow", method: "GET", timeout: seconds(1) });"#,
    ));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    let log = home.log("h", RUN, "slow");
    assert!(
        log.contains(&format!("`GET {}` timed out after 0:00:01 (the request's `timeout`)", server.url("/slow"))),
        "{log}"
    );
}

#[test]
fn templated_headers_and_data_reach_the_server_with_basic_auth_from_the_connection() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"HttpOperator(#{ task_id: "post_json", http_conn_id: "api", endpoint: "echo/{{ ds_nodash }}",
    headers: #{ "X-Run": "{{ run_id }}", "X-From-Extra": "overridden" },
    data: #{ day: "{{ ds }}", n: 3, tags: ["{{ dag.dag_id }}"] } });
HttpOperator(#{ task_id: "get_query", http_conn_id: "api", endpoint: "query", method: "GET",
    data: #{ day: "{{ ds }}", q: "a b" } });
HttpOperator(#{ task_id: "put_text", http_conn_id: "api", endpoint: "text_body", method: "PUT",
    data: "day={{ ds }}", headers: #{ "Content-Type": "text/plain" } });
HttpOperator(#{ task_id: "leak", http_conn_id: "api", endpoint: "leak" });"#,
    ));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    let states: Vec<_> = ["post_json", "get_query", "put_text", "leak"].iter().map(|t| state(&home, t)).collect();
    assert_eq!(states, ["success", "success", "success", "failed"]);
    // An answer that repeats the password shows it masked.
    let leak = home.log("h", RUN, "leak");
    assert!(leak.contains("HTTP error: 401 Unauthorized") && leak.contains("bad password *** for apiuser"), "{leak}");

    let post = &server.seen("/echo/20261105")[0];
    assert_eq!(post.method, "POST");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&post.body).unwrap(),
        serde_json::json!({"day": "2026-11-05", "n": 3, "tags": ["h"]})
    );
    assert_eq!(post.headers["content-type"], "application/json");
    assert_eq!(post.headers["x-run"], RUN);
    assert_eq!(post.headers["x-from-extra"], "overridden", "the task's headers win over the connection's extra");
    assert_eq!(post.headers["authorization"], "Basic YXBpdXNlcjpzM2NyZXRQYXNzdzByZA==", "apiuser:{PASSWORD}");
    assert!(!post.headers.contains_key("timeout"), "`timeout` in the extra is a setting, not a header");

    let get = &server.seen("/query")[0];
    assert_eq!((get.method.as_str(), get.query.as_str(), get.body.as_str()), ("GET", "day=2026-11-05&q=a+b", ""));

    let put = &server.seen("/text_body")[0];
    assert_eq!((put.method.as_str(), put.body.as_str()), ("PUT", "day=2026-11-05"));
    assert_eq!(put.headers["content-type"], "text/plain");

    for task in ["post_json", "get_query", "put_text", "leak"] {
        let log = home.log("h", RUN, task);
        assert!(!log.contains(PASSWORD), "the password in the log of {task}:\n{log}");
    }
    assert!(!text(&o.stdout).contains(PASSWORD) && !text(&o.stderr).contains(PASSWORD));
}

#[test]
fn a_missing_connection_is_named_with_what_to_do() {
    let server = Server::start();
    let home = server.home(&dag(r#"HttpOperator(#{ task_id: "nowhere", endpoint: "json" });"#));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    let log = home.log("h", RUN, "nowhere");
    assert!(
        log.contains("connection `http_default` is not defined: add `[connections.http_default] uri = \"http://host:port\"` to rhaiflow.toml"),
        "{log}"
    );
    assert!(server.seen("/json").is_empty());
}

#[test]
fn a_bad_timeout_or_allowlist_is_refused_where_it_is_written() {
    let server = Server::start();
    let home = server.home(&dag(r#"HttpOperator(#{ task_id: "t", endpoint: "json", timeout: hours(2) });
HttpSensor(#{ task_id: "s", endpoint: "json", response_error_codes_allowlist: ["404", "40x"] });"#));
    let o = home.run(&["dags", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(out.contains("`timeout` must be more than 0 seconds and at most 1 hour, not 2:00:00"), "{out}");
    assert!(out.contains("h.rhai:2:"), "{out}");
    assert!(
        out.contains("`response_error_codes_allowlist` holds `40x`, which is not an HTTP status code (100 to 599)"),
        "{out}"
    );
    assert!(out.contains("h.rhai:3:"), "{out}");
}

#[test]
fn http_sensor_waits_through_404_until_200() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"let wait = HttpSensor(#{ task_id: "wait", http_conn_id: "api", endpoint: "later", poke_interval: 0.2, timeout: 60,
    headers: #{ "X-Day": "{{ ds }}" }, request_params: #{ since: "{{ ds_nodash }}" } });
let after = BashOperator(#{ task_id: "after", bash_command: "echo after" });
wait >> after;"#,
    ));
    let o = dags_test(&home);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!((state(&home, "wait"), state(&home, "after")), ("success".into(), "success".into()));
    let seen = server.seen("/later");
    assert_eq!(seen.len(), 3, "two 404s, then 200: {seen:?}");
    assert!(seen.iter().all(|s| s.method == "GET" && s.headers.contains_key("authorization")));
    assert!(seen.iter().all(|s| s.query == "since=20261105" && s.headers["x-day"] == "2026-11-05"), "{seen:?}");
    let log = home.log("h", RUN, "wait");
    assert_eq!(log.matches("HTTP 404 Not Found: not yet").count(), 2, "{log}");
    assert!(log.contains("Success criteria met"), "{log}");
}

#[test]
fn http_sensor_fails_at_once_on_an_error_outside_its_allowlist() {
    let server = Server::start();
    let home = server
        .home(&dag(r#"HttpSensor(#{ task_id: "wait", endpoint: "$URL/fail", poke_interval: 0.2, timeout: 60 });"#));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(server.seen("/fail").len(), 1);
    let log = home.log("h", RUN, "wait");
    assert!(log.contains("HTTP error: 500 Internal Server Error") && log.contains("database exploded"), "{log}");
}

#[test]
fn under_the_scheduler_a_rescheduled_sensor_waits_then_the_operator_runs() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"let wait = HttpSensor(#{ task_id: "wait", http_conn_id: "api", endpoint: "later", mode: "reschedule",
    poke_interval: 0.2, timeout: 60, response_check: |response, ctx| response.status_code == 200 && ctx.ds == "2026-11-05" });
let get = HttpOperator(#{ task_id: "get", http_conn_id: "api", endpoint: "json", method: "GET" });
wait >> get;"#,
    ));
    let mut scheduler = home.spawn(&["scheduler"]);
    let o = home.run(&["dags", "trigger", "h", "--logical-date", "2026-11-05"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let state = common::wait_until("the run to finish", || {
        home.runs("h")
            .first()
            .map(|r| r["state"].as_str().unwrap_or_default().to_string())
            .filter(|s| s == "success" || s == "failed")
    });
    scheduler.kill_9();
    assert_eq!(state, "success", "{}", home.log("h", RUN, "wait"));
    assert_eq!(server.seen("/later").len(), 3);
    let log = home.log("h", RUN, "wait");
    assert_eq!(log.matches("(UP_FOR_RESCHEDULE)").count(), 2, "{log}");
    let answer = r#"{"ok": true, "items": [1, 2, 3], "name": "rhai"}"#;
    assert_eq!(xcom(&home, "get"), Some(serde_json::Value::String(answer.into())));
}

#[test]
fn response_check_and_response_filter_closures_decide_and_shape_the_xcom() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"HttpOperator(#{ task_id: "filtered", http_conn_id: "api", endpoint: "json", method: "GET",
    response_check: |response, ctx| response.status_code == 200 && response.headers["content-type"] == "application/json"
        && ctx.ds == "2026-11-05",
    response_filter: |response| #{ name: response.json.name, total: response.json.items.reduce(|sum, x| sum + x, 0) } });
HttpOperator(#{ task_id: "checked_false", http_conn_id: "api", endpoint: "json", method: "GET",
    response_check: |response| response.json.ok == false });
HttpOperator(#{ task_id: "not_json", http_conn_id: "api", endpoint: "text", method: "GET",
    response_filter: |response| response.json.name.to_upper() });"#,
    ));
    let o = dags_test(&home);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(state(&home, "filtered"), "success", "{}", home.log("h", RUN, "filtered"));
    assert_eq!(xcom(&home, "filtered"), Some(serde_json::json!({"name": "rhai", "total": 6})));

    assert_eq!(state(&home, "checked_false"), "failed");
    let log = home.log("h", RUN, "checked_false");
    assert!(log.contains("Response check returned False."), "{log}");
    assert!(log.contains(r#"{"ok": true, "items": [1, 2, 3], "name": "rhai"}"#), "the body's head: {log}");
    assert_eq!(xcom(&home, "checked_false"), None);

    assert_eq!(state(&home, "not_json"), "failed");
    let log = home.log("h", RUN, "not_json");
    assert!(log.contains("`response_filter` failed: h.rhai:9:47: Unknown property 'name'"), "{log}");
    assert!(
        log.contains(r#"(the response body is not JSON: expected value at line 1 column 1; it starts "<html>not json</html>", so `response.json` is `()`)"#),
        "{log}"
    );
}

#[test]
fn http_sensor_response_check_keeps_it_waiting_until_true() {
    let server = Server::start();
    let home = server.home(&dag(
        r#"HttpSensor(#{ task_id: "wait", http_conn_id: "api", endpoint: "count", poke_interval: 0.2, timeout: 60,
    response_check: |response| response.json.n >= 3 });"#,
    ));
    let o = dags_test(&home);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(server.seen("/count").len(), 3, "pokes until n is 3");
}

/// `timeout` in `default_args` is the sensors' (as in Airflow, where only sensors take one): it is
/// not an `HttpOperator`'s request timeout, so six hours there is no error.
#[test]
fn a_sensor_timeout_in_default_args_is_not_the_operators_request_timeout() {
    let server = Server::start();
    let home = server.home(
        r#"let dag = DAG("h", #{ start_date: datetime(2026, 1, 1), schedule: (), catchup: false,
    default_args: #{ timeout: hours(6) } });
let wait = HttpSensor(#{ task_id: "wait", http_conn_id: "api", endpoint: "json" });
let get = HttpOperator(#{ task_id: "get", http_conn_id: "api", endpoint: "json", method: "GET" });
wait >> get;"#,
    );
    let o = dags_test(&home);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(server.seen("/json").len(), 2);
}

#[test]
fn tasks_test_runs_the_request_and_its_filter_without_a_database() {
    let server = Server::start();
    let home = server
        .home(&dag(r#"HttpOperator(#{ task_id: "get", http_conn_id: "api", endpoint: "json", method: "GET",
    response_filter: |response| response.json.items });"#));
    let o = home.run(&["tasks", "test", "h", "get", "2026-11-05"]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("HTTP 200 OK"), "{out}");
    assert!(out.contains("[rhaiflow] return_value: [1,2,3]"), "{out}");
    assert!(!home.path().join("rhaiflow.db").exists());
}
