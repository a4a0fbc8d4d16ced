//! The REST API (`/api/v1`) over a real socket: `rhaiflow webserver` on a free port, called with
//! reqwest. Shapes and status codes as Airflow 2.10's stable REST API.

mod common;
mod peers;

use common::{Home, Running, wait_until};
use serde_json::{Value, json};

const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";

fn dags() -> Vec<(&'static str, String)> {
    vec![
        (
            "etl.rhai",
            format!(
                r#"let dag = DAG("etl", #{{ {MANUAL}, tags: ["marketing"], description: "nightly load" }});
let extract = BashOperator(#{{ task_id: "extract", bash_command: "echo hello-from-extract" }});
let load = BashOperator(#{{ task_id: "load", bash_command: "echo loading; exit 3" }});
extract >> load;"#
            ),
        ),
        (
            "ops.rhai",
            format!(r#"let dag = DAG("ops", #{{ {MANUAL}, tags: ["ops"] }}); EmptyOperator(#{{ task_id: "noop" }});"#),
        ),
        ("zeta.rhai", format!(r#"let dag = DAG("zeta", #{{ {MANUAL} }}); EmptyOperator(#{{ task_id: "noop" }});"#)),
        ("broken.rhai", "let x = 1;\nlet y = 2;\nlet dag = DAG(\"broken\", #{ schedule: ( });\n".to_string()),
    ]
}

/// A webserver on a free port over a home where `dags test etl` has run (extract succeeded,
/// load failed).
struct Server {
    home: Home,
    _process: Running,
    base: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Server {
    fn start() -> Server {
        let files = dags();
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let home = Home::new(&refs);
        let o = home.run(&["dags", "test", "etl", "2024-03-01T00:00:00+00:00"]);
        assert_eq!(o.status.code(), Some(1), "load fails: {}", String::from_utf8_lossy(&o.stdout));
        let port = peers::free_port();
        let process = home.spawn(&["webserver", "--port", &port.to_string()]);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = Server {
            home,
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            client: reqwest::Client::new(),
        };
        wait_until("the webserver answers", || server.try_send("GET", "/api/v1/health", None, None).ok());
        server
    }

    fn try_send(&self, method: &str, path: &str, body: Option<&str>, accept: Option<&str>) -> reqwest::Result<Answer> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        self.rt.block_on(async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let content_type =
                resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            Ok(Answer { status, content_type, text: resp.text().await? })
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.try_send(method, path, body, None).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&self, path: &str) -> Value {
        let a = self.send("GET", path, None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json()
    }

    /// A problem body: status, content type, and the detail.
    fn problem(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
        let a = self.send(method, path, body);
        assert_eq!(a.status, status, "{method} {path}: {}", a.text);
        assert_eq!(a.content_type, "application/problem+json", "{method} {path}");
        let p = a.json();
        assert_eq!(p["status"], status);
        assert!(p["type"].is_string() && p["title"].is_string() && p["detail"].is_string(), "{p}");
        p
    }
}

fn etl_run_id(server: &Server) -> String {
    let runs = server.get("/api/v1/dags/etl/dagRuns");
    runs["dag_runs"][0]["dag_run_id"].as_str().unwrap().to_string()
}

#[test]
fn dags_list_get_details_patch_and_pagination() {
    let s = Server::start();
    let all = s.get("/api/v1/dags");
    assert_eq!(all["total_entries"], 3, "{all}");
    let ids: Vec<&str> = all["dags"].as_array().unwrap().iter().map(|d| d["dag_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["etl", "ops", "zeta"]);

    let page = s.get("/api/v1/dags?limit=1&offset=1");
    assert_eq!(page["total_entries"], 3);
    assert_eq!(page["dags"].as_array().unwrap().len(), 1);
    assert_eq!(page["dags"][0]["dag_id"], "ops");
    // Descending order is the store's, across pages (not one page reversed).
    assert_eq!(s.get("/api/v1/dags?order_by=-dag_id&limit=1")["dags"][0]["dag_id"], "zeta");
    s.problem("GET", "/api/v1/dags?order_by=owners", None, 400);

    let tagged = s.get("/api/v1/dags?tags=marketing");
    assert_eq!(tagged["total_entries"], 1);
    let etl = &tagged["dags"][0];
    assert_eq!(etl["dag_id"], "etl");
    assert_eq!(etl["tags"], json!([{"name": "marketing"}]));
    assert_eq!(etl["description"], "nightly load");
    assert_eq!(etl["is_paused"], false);
    assert_eq!(etl["fileloc"], "etl.rhai");
    assert_eq!(s.get("/api/v1/dags?dag_id_pattern=TL")["total_entries"], 1, "case-insensitive substring");

    let token = etl["file_token"].as_str().unwrap();
    let source = s.get(&format!("/api/v1/dagSources/{token}"));
    assert!(source["content"].as_str().unwrap().contains("hello-from-extract"), "{source}");
    let text = s.try_send("GET", &format!("/api/v1/dagSources/{token}"), None, Some("text/plain")).unwrap();
    assert!(text.text.starts_with("let dag = DAG(\"etl\""), "{}", text.text);
    s.problem("GET", "/api/v1/dagSources/nope", None, 404);

    let details = s.get("/api/v1/dags/etl/details");
    assert_eq!(details["catchup"], true);
    assert_eq!(details["start_date"], "2024-01-01T00:00:00+00:00");

    let patched = s.send("PATCH", "/api/v1/dags/ops?update_mask=is_paused", Some(r#"{"is_paused": true}"#));
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json()["is_paused"], true);
    assert_eq!(s.get("/api/v1/dags/ops")["is_paused"], true);
    assert_eq!(s.get("/api/v1/dags?paused=true")["total_entries"], 1);

    s.problem("GET", "/api/v1/dags?limit=0", None, 400);
    s.problem("GET", "/api/v1/dags?limit=ten", None, 400);
    s.problem("PATCH", "/api/v1/dags/ops", Some("{not json"), 400);
    s.problem("PATCH", "/api/v1/dags/ops?update_mask=owners", Some(r#"{"is_paused": true}"#), 400);
    let missing = s.problem("GET", "/api/v1/dags/nope", None, 404);
    assert!(missing["detail"].as_str().unwrap().contains("'nope'"), "{missing}");
    s.problem("GET", "/api/v1/dags/nope/details", None, 404);
}

#[test]
fn trigger_list_conflict_and_missing_runs() {
    let s = Server::start();
    let body = r#"{"dag_run_id": "api_run_1", "logical_date": "2024-05-01T00:00:00+00:00", "conf": {"who": "luffy"}}"#;
    let made = s.send("POST", "/api/v1/dags/zeta/dagRuns", Some(body));
    assert_eq!(made.status, 200, "{}", made.text);
    let run = made.json();
    assert_eq!(run["dag_run_id"], "api_run_1");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["conf"], json!({"who": "luffy"}));
    assert_eq!(run["logical_date"], "2024-05-01T00:00:00+00:00");
    assert_eq!(run["external_trigger"], true);

    let runs = s.get("/api/v1/dags/zeta/dagRuns");
    assert_eq!(runs["total_entries"], 1);
    assert_eq!(runs["dag_runs"][0]["conf"], json!({"who": "luffy"}));
    assert_eq!(s.get("/api/v1/dags/~/dagRuns")["total_entries"], 2, "etl's test run and this one");
    assert_eq!(s.get("/api/v1/dags/~/dagRuns?state=failed")["total_entries"], 1);
    assert_eq!(s.get("/api/v1/dags/zeta/dagRuns/api_run_1")["conf"]["who"], "luffy");

    let dup = s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(body), 409);
    assert!(dup["detail"].as_str().unwrap().contains("api_run_1"), "{dup}");
    // The same date under another id is a conflict too (one run per logical date).
    let same_date = r#"{"dag_run_id": "api_run_2", "logical_date": "2024-05-01T00:00:00+00:00"}"#;
    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(same_date), 409);

    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(r#"{"logical_date": "yesterday"}"#), 400);
    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(r#"{"conf": [1]}"#), 400);
    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(r#"{"confx": {}}"#), 400);
    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(r#"{"dag_run_id": "a/b"}"#), 400);
    let no_dag = s.problem("POST", "/api/v1/dags/nope/dagRuns", Some("{}"), 404);
    assert!(no_dag["detail"].as_str().unwrap().contains("nope"));
    let no_run = s.problem("GET", "/api/v1/dags/zeta/dagRuns/missing_run", None, 404);
    assert!(no_run["detail"].as_str().unwrap().contains("missing_run"), "{no_run}");
    s.problem("GET", "/api/v1/dags/zeta/dagRuns?order_by=colour", None, 400);

    let marked = s.send("PATCH", "/api/v1/dags/zeta/dagRuns/api_run_1", Some(r#"{"state": "failed"}"#));
    assert_eq!(marked.status, 200, "{}", marked.text);
    assert_eq!(marked.json()["state"], "failed");
    s.problem("PATCH", "/api/v1/dags/zeta/dagRuns/api_run_1", Some(r#"{"state": "running"}"#), 400);
}

#[test]
fn task_instances_clear_dry_run_and_mark() {
    let s = Server::start();
    let run_id = etl_run_id(&s);
    let tis = s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances"));
    assert_eq!(tis["total_entries"], 2);
    let states: Vec<(&str, &str)> = tis["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["task_id"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("extract", "success"), ("load", "failed")]);
    let load = s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load"));
    assert_eq!(load["try_number"], 1);
    assert_eq!(load["operator"], "BashOperator");
    let missing = s.problem("GET", &format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/nope"), None, 404);
    assert!(missing["detail"].as_str().unwrap().contains("nope"));

    // Airflow's defaults: dry_run and only_failed are true.
    let dry = s.send("POST", "/api/v1/dags/etl/clearTaskInstances", Some("{}"));
    assert_eq!(dry.status, 200, "{}", dry.text);
    let refs = dry.json()["task_instances"].clone();
    assert_eq!(
        refs,
        json!([{"task_id": "load", "dag_id": "etl", "execution_date": "2024-03-01T00:00:00+00:00", "dag_run_id": run_id}])
    );
    // A dry run changed nothing.
    assert_eq!(s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load"))["state"], "failed");
    let both = s.send(
        "POST",
        "/api/v1/dags/etl/clearTaskInstances",
        Some(r#"{"only_failed": false, "task_ids": ["extract", "load"]}"#),
    );
    assert_eq!(both.json()["task_instances"].as_array().unwrap().len(), 2, "{}", both.text);
    s.problem("POST", "/api/v1/dags/etl/clearTaskInstances", Some(r#"{"start_date": "soon"}"#), 400);
    s.problem("POST", "/api/v1/dags/etl/clearTaskInstances", Some(r#"{"dag_run_id": "nope"}"#), 404);

    let marked = s.send(
        "PATCH",
        &format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load"),
        Some(r#"{"new_state": "success"}"#),
    );
    assert_eq!(marked.status, 200, "{}", marked.text);
    assert_eq!(s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load"))["state"], "success");
    // As Airflow: the failed run goes back to `queued`, for a scheduler to decide again (the
    // scheduler: `marking_the_failed_task_success_makes_the_run_succeed`).
    assert_eq!(s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}"))["state"], "queued");

    // Cleared for real: the failed... now-marked task is no longer failed, so clear with only_failed=false.
    let cleared = s.send(
        "POST",
        "/api/v1/dags/etl/clearTaskInstances",
        Some(&format!(r#"{{"dry_run": false, "only_failed": false, "task_ids": ["load"], "dag_run_id": "{run_id}"}}"#)),
    );
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert_eq!(s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load"))["state"], Value::Null);
    assert_eq!(s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}"))["state"], "queued");
}

#[test]
fn logs_of_a_finished_try_in_text_and_json() {
    let s = Server::start();
    let run_id = etl_run_id(&s);
    let path = format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/logs/1");
    let text = s.try_send("GET", &path, None, Some("text/plain")).unwrap();
    assert_eq!(text.status, 200, "{}", text.text);
    assert!(text.content_type.starts_with("text/plain"), "{}", text.content_type);
    assert!(text.text.contains("hello-from-extract"), "{}", text.text);
    let json = s.try_send("GET", &path, None, Some("application/json")).unwrap().json();
    assert_eq!(json["content"], text.text);
    assert_eq!(json["continuation_token"], Value::Null, "a finished try's log is complete");
    let load = s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/load/logs/1"));
    assert!(load["content"].as_str().unwrap().contains("loading"), "{load}");
    s.problem("GET", &format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/logs/2"), None, 404);
    s.problem("GET", &format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/logs/zero"), None, 400);
}

#[test]
fn import_errors_health_version_pools_xcoms() {
    let s = Server::start();
    let errors = s.get("/api/v1/importErrors");
    assert_eq!(errors["total_entries"], 1, "{errors}");
    let e = &errors["import_errors"][0];
    assert_eq!(e["filename"], "broken.rhai");
    assert!(e["stack_trace"].as_str().unwrap().contains("broken.rhai:3"), "{e}");
    let id = e["import_error_id"].as_i64().unwrap();
    assert_eq!(s.get(&format!("/api/v1/importErrors/{id}"))["filename"], "broken.rhai");
    s.problem("GET", "/api/v1/importErrors/99999", None, 404);

    let health = s.get("/api/v1/health");
    assert_eq!(health["metadatabase"]["status"], "healthy");
    assert_eq!(health["scheduler"]["status"], "unhealthy", "no scheduler runs: {health}");
    assert_eq!(s.get("/api/v1/version")["version"], env!("CARGO_PKG_VERSION"));

    let pools = s.get("/api/v1/pools");
    assert_eq!(pools["pools"][0]["name"], "default_pool");
    assert_eq!(pools["pools"][0]["open_slots"], 128);
    assert_eq!(s.get("/api/v1/pools/default_pool")["slots"], 128);
    s.problem("GET", "/api/v1/pools/nope", None, 404);

    let run_id = etl_run_id(&s);
    let xcoms = s.get(&format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/xcomEntries"));
    assert_eq!(xcoms["total_entries"], 1, "{xcoms}");
    assert_eq!(xcoms["xcom_entries"][0]["key"], "return_value");
    let one = s.get(&format!(
        "/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/xcomEntries/return_value?deserialize=true"
    ));
    assert_eq!(one["value"], "hello-from-extract");
    s.problem("GET", &format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances/extract/xcomEntries/nope"), None, 404);

    // Unknown paths and methods are problems too.
    s.problem("GET", "/api/v1/nothing", None, 404);
    s.problem("DELETE", "/api/v1/dags", None, 405);
    // axum's own rejections get a problem body too: a path that is not UTF-8, a body too large.
    s.problem("GET", "/api/v1/dags/%FF", None, 400);
    let huge = format!(r#"{{"conf": {{"x": "{}"}}}}"#, "a".repeat(3 << 20));
    s.problem("POST", "/api/v1/dags/zeta/dagRuns", Some(&huge), 413);
    // No secret in any answer: the health of a home without config says nothing of one.
    assert!(!s.home.file("rhaiflow.toml").contains("password"));
}

/// The OpenAPI document lists exactly the routes served: every documented (method, path) reaches
/// a handler (not the router's fallbacks), and every route the router has is documented.
#[test]
fn openapi_document_matches_the_routes() {
    let s = Server::start();
    let doc = s.get("/api/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> =
        rhaiflow::web::served_routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    served.sort();
    assert_eq!(documented, served);
    for (method, path) in &documented {
        let concrete =
            path.split('/').map(|seg| if seg.starts_with('{') { "x1" } else { seg }).collect::<Vec<_>>().join("/");
        let a = s.send(&method.to_uppercase(), &concrete, Some("{}"));
        assert_ne!(a.status, 405, "{method} {path} is documented but not served");
        if a.status == 404 {
            let title = a.json()["title"].as_str().unwrap_or_default().to_string();
            assert_ne!(title, "Not Found", "{method} {path} is documented but not served: {}", a.text);
        }
    }
}

/// What an Airflow client does: trigger through the API while a scheduler runs, follow the
/// running try's log with its continuation token, see the run succeed; health sees the scheduler.
#[test]
fn trigger_with_a_scheduler_and_tail_a_running_log() {
    let dag = format!(
        r#"let dag = DAG("live", #{{ {MANUAL} }});
BashOperator(#{{ task_id: "talk", bash_command: "echo first-line; while [ ! -e $HOME_DIR/go ]; do sleep 0.05; done; echo last-line" }});"#
    );
    let home = Home::new(&[("live.rhai", &dag)]);
    let _scheduler = home.spawn(&["scheduler"]);
    wait_until("the scheduler records the DAG", || home.path().join("rhaiflow.db").exists().then_some(()));
    let port = peers::free_port();
    let process = home.spawn(&["webserver", "--port", &port.to_string()]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Server {
        home,
        _process: process,
        base: format!("http://127.0.0.1:{port}"),
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        client: reqwest::Client::new(),
    };
    wait_until("the scheduler is healthy", || {
        let h = s.try_send("GET", "/api/v1/health", None, None).ok()?.json();
        (h["scheduler"]["status"] == "healthy" && s.send("GET", "/api/v1/dags/live", None).status == 200).then_some(())
    });
    let made = s.send("POST", "/api/v1/dags/live/dagRuns", Some(r#"{"dag_run_id": "from_api"}"#));
    assert_eq!(made.status, 200, "{}", made.text);
    let log = "/api/v1/dags/live/dagRuns/from_api/taskInstances/talk/logs/1";
    let first = wait_until("the running try's first line", || {
        let a = s.send("GET", log, None);
        // The output line, not the `running: bash -c 'echo first-line; …'` line before it.
        (a.status == 200 && a.json()["content"].as_str()?.contains("] first-line\n")).then(|| a.json())
    });
    let token = first["continuation_token"].as_str().expect("a running try's log has a token").to_string();
    std::fs::write(s.home.path().join("go"), "").unwrap();
    wait_until("the run succeeds", || {
        (s.get("/api/v1/dags/live/dagRuns/from_api")["state"] == "success").then_some(())
    });
    let rest = s.get(&format!("{log}?token={token}"));
    let rest_text = rest["content"].as_str().unwrap();
    assert!(
        rest_text.contains("] last-line") && !rest_text.contains("] first-line"),
        "first: {first}\nrest: {rest}\nwhole: {}\nti: {}",
        s.get(log),
        s.get("/api/v1/dags/live/dagRuns/from_api/taskInstances/talk")
    );
    assert_eq!(rest["continuation_token"], Value::Null);
}

/// Bad addresses are refused at start with a message naming them (exit 2), and a taken port too.
#[test]
fn webserver_refuses_bad_addresses() {
    let home = Home::new(&[]);
    let o = home.run(&["webserver", "--host", "example.com"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`--host` `example.com` is not an IP address"), "{o:?}");
    let mut bad_bind = home.command(&["webserver"]);
    bad_bind.env("RHAIFLOW__WEBSERVER__BIND", "localhost");
    let o = common::output_within_deadline(bad_bind, "webserver with a bad bind");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`webserver.bind` `localhost` is not an address"), "{o:?}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = home.run(&["webserver", "--port", &port]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{o:?}");
}

/// A POST must carry JSON (415 otherwise, as Airflow): a form or a body-less POST from another web
/// site (which a browser sends without asking) changes nothing.
#[test]
fn posts_must_be_json() {
    let s = Server::start();
    let runs = s.get("/api/v1/dags/etl/dagRuns")["total_entries"].clone();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut req = s.client.post(format!("{}/api/v1/dags/etl/dagRuns", s.base));
        if let Some(c) = content_type {
            req = req.header("content-type", c).body("{}");
        }
        let (status, text) = s.rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        assert_eq!(status, 415, "{content_type:?}: {text}");
        assert!(text.contains("application/json"), "{text}");
    }
    assert_eq!(s.get("/api/v1/dags/etl/dagRuns")["total_entries"], runs, "no run was triggered");
}

/// A run's own clear (dry run lists, a real one re-queues it) and `PATCH` of its state.
#[test]
fn clear_a_run_and_set_its_state() {
    let s = Server::start();
    let run_id = etl_run_id(&s);
    let run_path = format!("/api/v1/dags/etl/dagRuns/{run_id}");
    let dry = s.send("POST", &format!("{run_path}/clear"), Some(r#"{"only_failed": true}"#));
    assert_eq!(dry.status, 200, "{}", dry.text);
    let listed: Vec<Value> =
        dry.json()["task_instances"].as_array().unwrap().iter().map(|t| t["task_id"].clone()).collect();
    assert_eq!(listed, [json!("load")]);
    assert_eq!(s.get(&run_path)["state"], "failed", "a dry run changes nothing");
    s.problem("POST", &format!("{run_path}/clear"), Some(r#"{"dry_run": "no"}"#), 400);
    s.problem("POST", "/api/v1/dags/etl/dagRuns/nope/clear", Some("{}"), 404);

    let marked = s.send("PATCH", &run_path, Some(r#"{"state": "success"}"#));
    assert_eq!(marked.status, 200, "{}", marked.text);
    assert_eq!(marked.json()["state"], "success");
    // As Airflow: marking a run success marks its failed task instances success too.
    assert_eq!(s.get(&format!("{run_path}/taskInstances/load"))["state"], "success");
    let requeued = s.send("PATCH", &run_path, Some(r#"{"state": "queued"}"#));
    assert_eq!(requeued.status, 200, "{}", requeued.text);
    assert_eq!(requeued.json()["state"], "queued");
    let tis = s.get(&format!("{run_path}/taskInstances"));
    let states: Vec<&Value> = tis["task_instances"].as_array().unwrap().iter().map(|t| &t["state"]).collect();
    assert_eq!(states, [&Value::Null, &Value::Null], "{tis}");

    let cleared = s.send("POST", &format!("{run_path}/clear"), Some(r#"{"dry_run": false}"#));
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert_eq!(cleared.json()["dag_run_id"], run_id.as_str());
}

#[test]
fn without_auth_only_loopback_host_names_are_answered() {
    let server = Server::start();
    let with_host = |host: &str| -> (u16, String) {
        let req = server.client.get(format!("{}/api/v1/dags", server.base)).header("host", host);
        server.rt.block_on(async {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let port = server.base.rsplit(':').next().unwrap().to_string();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "LOCALHOST".into(), format!("[::1]:{port}")]
    {
        assert_eq!(with_host(&host).0, 200, "{host}");
    }
    // DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1.
    for host in [format!("attacker.example:{port}"), "10.0.0.5".into(), "localhost.attacker.example".into()] {
        let (status, body) = with_host(&host);
        assert_eq!(status, 403, "{host}: {body}");
        assert!(body.contains("loopback"), "{body}");
    }
}

/// As Airflow: marking the one failed task `success` sends its run back to `queued`, and the
/// scheduler then decides it `success`.
#[test]
fn marking_the_failed_task_success_makes_the_run_succeed() {
    let dag = format!(
        r#"let dag = DAG("fixme", #{{ {MANUAL} }});
BashOperator(#{{ task_id: "broken", bash_command: "exit 3" }});"#
    );
    let home = Home::new(&[("fixme.rhai", &dag)]);
    let _scheduler = home.spawn(&["scheduler"]);
    wait_until("the scheduler records the DAG", || home.path().join("rhaiflow.db").exists().then_some(()));
    let port = peers::free_port();
    let process = home.spawn(&["webserver", "--port", &port.to_string()]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Server {
        home,
        _process: process,
        base: format!("http://127.0.0.1:{port}"),
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        client: reqwest::Client::new(),
    };
    wait_until("the DAG is served", || {
        (s.try_send("GET", "/api/v1/dags/fixme", None, None).ok()?.status == 200).then_some(())
    });
    let made = s.send("POST", "/api/v1/dags/fixme/dagRuns", Some(r#"{"dag_run_id": "r1"}"#));
    assert_eq!(made.status, 200, "{}", made.text);
    let run = "/api/v1/dags/fixme/dagRuns/r1";
    wait_until("the run fails", || (s.get(run)["state"] == "failed").then_some(()));
    let marked = s.send("PATCH", &format!("{run}/taskInstances/broken"), Some(r#"{"new_state": "success"}"#));
    assert_eq!(marked.status, 200, "{}", marked.text);
    wait_until("the run succeeds", || (s.get(run)["state"] == "success").then_some(()));
}

/// Listing filters do what they say (dates compare as instants), and a bad or unsupported one is
/// a 400 naming it, never ignored.
#[test]
fn run_and_task_instance_filters() {
    let s = Server::start();
    let run_id = etl_run_id(&s);
    let runs = "/api/v1/dags/etl/dagRuns";
    let total = |path: &str| s.get(path)["total_entries"].as_u64().unwrap();
    assert_eq!(total(runs), 1);
    assert_eq!(total(&format!("{runs}?execution_date_gte=2030-01-01T00:00:00%2B00:00")), 0);
    assert_eq!(total(&format!("{runs}?execution_date_lte=2030-01-01T00:00:00%2B00:00")), 1);
    assert_eq!(total(&format!("{runs}?execution_date_gte=2024-03-01T08:00:00%2B08:00")), 1, "the same instant");
    assert_eq!(total(&format!("{runs}?execution_date_gte=2024-03-01T07:59:59%2B07:00")), 0);
    assert_eq!(total(&format!("{runs}?start_date_gte=2030-01-01T00:00:00Z")), 0);
    assert_eq!(total(&format!("{runs}?end_date_lte=2030-01-01T00:00:00Z&state=failed")), 1);
    let p = s.problem("GET", &format!("{runs}?execution_date_gte=notadate"), None, 400);
    assert!(p["detail"].as_str().unwrap().contains("execution_date_gte"), "{p}");
    let p = s.problem("GET", &format!("{runs}?updated_at_gte=2024-01-01T00:00:00Z"), None, 400);
    assert!(p["detail"].as_str().unwrap().contains("`updated_at_gte` is not supported"), "{p}");
    let tis = format!("/api/v1/dags/etl/dagRuns/{run_id}/taskInstances");
    let failed = s.get(&format!("{tis}?state=failed"));
    assert_eq!(failed["total_entries"], 1);
    assert_eq!(failed["task_instances"][0]["task_id"], "load");
    assert_eq!(total(&format!("{tis}?state=failed,success")), 2);
    s.problem("GET", &format!("{tis}?state=bogus"), None, 400);
    s.problem("GET", &format!("{tis}?duration_gte=1000"), None, 400);
}
