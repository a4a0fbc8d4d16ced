//! `RhaiOperator`: closures of the DAG file run as tasks, through the real binary (`dags test` and
//! the scheduler), against a real SQLite file and a real HTTP server on 127.0.0.1.

mod common;

use common::{Home, wait_until};

const MANUAL: &str = r#"schedule: (), start_date: datetime(2024, 1, 1)"#;

fn xcom(home: &Home, dag_id: &str, task_id: &str, key: &str) -> Option<serde_json::Value> {
    let db = home.db();
    let value: Option<String> = db
        .query_row(
            "SELECT value FROM xcom WHERE dag_id = ?1 AND task_id = ?2 AND key = ?3",
            [dag_id, task_id, key],
            |r| r.get(0),
        )
        .ok();
    value.map(|v| serde_json::from_str(&v).unwrap())
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn state(home: &Home, dag_id: &str, run_id: &str, task_id: &str) -> String {
    home.states(dag_id, run_id).into_iter().find(|(t, _, _)| t == task_id).map(|(_, s, _)| s).unwrap_or_default()
}

#[test]
fn closures_get_their_context_return_values_and_pass_xcoms() {
    let dag = format!(
        r#"import "schedules" as s;
        let dag = DAG("ctx", #{{ {MANUAL}, params: #{{ name: "dag", keep: 1 }} }});
        let factor = 3;
        fn double(x) {{ x * 2 }}
        let a = RhaiOperator(#{{ task_id: "a", callable: |ctx| {{
            ctx.log(`hello from ${{ctx.task_id}} on ${{ctx.ds}}`);
            print("printed too");
            ctx.ti.xcom_push("side", #{{ n: 7 }});
            double(21) * factor
        }} }});
        let b = RhaiOperator(#{{ task_id: "b", op_args: [1, "{{{{ ds_nodash }}}}"], op_kwargs: #{{ k: "v" }},
            python_callable: |ctx, args, kwargs| #{{
                from_a: ctx.ti.xcom_pull("a"),
                side: ctx.ti.xcom_pull("a", "side"),
                missing: ctx.ti.xcom_pull("a", "nope"),
                args: args, kwargs: kwargs,
                name: ctx.params.name, keep: ctx.params.keep, conf: ctx.dag_run.conf,
                run_id: ctx.run_id, try_number: ctx.ti.try_number,
                ts: ctx.ts, logical_date: ctx.logical_date,
                bucket: ctx.var("bucket"), other: ctx.var("nope", "fallback"),
            }} }});
        let c = RhaiOperator(#{{ task_id: "c", callable: || () }});
        RhaiOperator(#{{ task_id: "imports", callable: |ctx| s::daily_at(3, 4) }});
        a >> b >> c;"#
    );
    let home = Home::new(&[("ctx.rhai", &dag)]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[variables]\nbucket = \"s3://reports\"\n").unwrap();
    let o = home.run(&["dags", "test", "ctx", "2024-03-05", "--conf", r#"{"name": "conf"}"#]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), String::from_utf8_lossy(&o.stderr));

    assert_eq!(xcom(&home, "ctx", "a", "return_value"), Some(serde_json::json!(126)));
    assert_eq!(xcom(&home, "ctx", "a", "side"), Some(serde_json::json!({"n": 7})));
    let b = xcom(&home, "ctx", "b", "return_value").expect("b returned a value");
    let run_id = "manual__2024-03-05T00:00:00+00:00";
    assert_eq!(
        b,
        serde_json::json!({
            "from_a": 126, "side": {"n": 7}, "missing": null,
            "args": [1, "20240305"], "kwargs": {"k": "v"},
            "name": "conf", "keep": 1, "conf": {"name": "conf"},
            "run_id": run_id, "try_number": 1,
            "ts": "2024-03-05T00:00:00+00:00", "logical_date": "2024-03-05T00:00:00+00:00",
            "bucket": "s3://reports", "other": "fallback",
        })
    );
    assert_eq!(xcom(&home, "ctx", "c", "return_value"), None, "`()` pushes nothing, as Python's None");
    assert_eq!(
        xcom(&home, "ctx", "imports", "return_value"),
        Some(serde_json::json!("4 3 * * *")),
        "a module the file imported"
    );
    let log = home.log("ctx", run_id, "a");
    assert!(log.contains("hello from a on 2024-03-05"), "{log}");
    assert!(log.contains("printed too"), "`print` in a task closure goes to the task's log: {log}");
    assert!(log.contains("Done. Returned value was: 126"), "{log}");
}

#[test]
fn a_throw_or_runtime_error_fails_with_its_place_in_the_file() {
    let dag = format!(
        r#"let dag = DAG("boom", #{{ {MANUAL} }});
let t = RhaiOperator(#{{ task_id: "t", callable: |ctx| {{
    let x = 1;
    throw `boom ${{x}}`;
}} }});
let u = RhaiOperator(#{{ task_id: "u", trigger_rule: "all_done", callable: |ctx| {{
    let items = [1, 2];
    items[5]
}} }});
t >> u;"#
    );
    let home = Home::new(&[("boom.rhai", &dag)]);
    let o = home.run(&["dags", "test", "boom", "2024-01-02"]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("boom.rhai:4:5: error thrown: boom 1"), "{out}");
    assert!(out.contains("boom.rhai:8:11:"), "{out}");
    assert!(out.contains("Array index 5 out of bounds"), "{out}");
    let log = home.log("boom", "manual__2024-01-02T00:00:00+00:00", "t");
    assert!(log.contains("boom.rhai:4:5: error thrown: boom 1; marking task as FAILED"), "{log}");
}

#[test]
fn a_value_with_no_json_form_fails_the_task_clearly() {
    let dag = format!(
        r#"let dag = DAG("nojson", #{{ {MANUAL} }});
        RhaiOperator(#{{ task_id: "f", callable: |ctx| #{{ ok: 1, nested: [1, || 2] }} }});
        RhaiOperator(#{{ task_id: "nan", callable: |ctx| 0.0 / 0.0 }});"#
    );
    let home = Home::new(&[("nojson.rhai", &dag)]);
    let o = home.run(&["dags", "test", "nojson", "2024-01-02"]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("the closure's value.nested[1] is a function, which has no JSON form"), "{out}");
    assert!(out.contains("which JSON cannot hold"), "{out}");
}

#[test]
fn an_endless_closure_fails_at_its_execution_timeout() {
    let dag = format!(
        r#"let dag = DAG("endless", #{{ {MANUAL} }});
        let spin = RhaiOperator(#{{ task_id: "spin", execution_timeout: seconds(1), callable: |ctx| {{ let n = 0; loop {{ n += 1; }} }} }});
        let after = RhaiOperator(#{{ task_id: "after", trigger_rule: "all_failed", callable: |ctx| "ran" }});
        spin >> after;"#
    );
    let home = Home::new(&[("endless.rhai", &dag)]);
    let o = home.run(&["dags", "test", "endless", "2024-01-02"]);
    let out = stdout(&o);
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    assert_eq!(state(&home, "endless", run_id, "spin"), "failed", "{out}");
    assert_eq!(state(&home, "endless", run_id, "after"), "success", "{out}");
    let log = home.log("endless", run_id, "spin");
    assert!(log.contains("0:00:01") && (log.contains("ran longer than") || log.contains("execution_timeout")), "{log}");
}

#[test]
fn json_and_http_reach_only_what_a_task_closure_asks() {
    // At parse time the modules exist (the file compiles) but do nothing.
    let dag = format!(
        r#"let dag = DAG("parse_http", #{{ {MANUAL} }});
        let answer = http::get("http://127.0.0.1:9/");
        RhaiOperator(#{{ task_id: "t", callable: |ctx| 1 }});"#
    );
    let home = Home::new(&[("parse_http.rhai", &dag)]);
    let o = home.run(&["dags", "check"]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("`http::get` is only available inside a task's closure"), "{all}");
}

/// An HTTP server on 127.0.0.1 for the closures to call: JSON, an echo, a 503, a slow answer, bad JSON.
fn server() -> (String, std::sync::mpsc::Sender<()>) {
    use axum::routing::{get, post};
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/items", get(|| async { axum::Json(serde_json::json!({"items": [1, 2, 3], "next": null})) }))
                .route(
                    "/echo",
                    post(|headers: axum::http::HeaderMap, body: String| async move {
                        let kind = headers.get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
                        let token = headers.get("x-token").map(|v| v.to_str().unwrap_or("").to_string());
                        axum::Json(serde_json::json!({"got": body, "type": kind, "token": token}))
                    }),
                )
                .route("/down", get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "maintenance") }))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        "late"
                    }),
                )
                .route("/bad", get(|| async { "{\"oops\": " }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let serve = axum::serve(listener, app);
            tokio::select! {
                _ = serve => {}
                _ = tokio::task::spawn_blocking(move || { let _ = stop_rx.recv(); }) => {}
            }
        });
    });
    let addr = addr_rx.recv().unwrap();
    (format!("http://{addr}"), stop_tx)
}

#[test]
fn closures_call_http_and_shape_json() {
    let (base, _stop) = server();
    let dag = format!(
        r#"let dag = DAG("api", #{{ {MANUAL} }});
let base = "{base}";
RhaiOperator(#{{ task_id: "items", callable: |ctx| {{
    let r = http::get(`${{base}}/items`);
    #{{ status: r.status, ok: r.ok, sum: r.json.items.reduce(|s, x| s + x, 0), type: r.headers["content-type"] }}
}} }});
RhaiOperator(#{{ task_id: "echo", callable: |ctx| {{
    let r = http::post(`${{base}}/echo`, #{{ a: [1, 2] }}, #{{ headers: #{{ "x-token": "t1" }}, timeout: 5 }});
    r.json
}} }});
RhaiOperator(#{{ task_id: "text", callable: |ctx| http::post(`${{base}}/echo`, "plain").json.got }});
RhaiOperator(#{{ task_id: "down", callable: |ctx| {{
    let r = http::get(`${{base}}/down`);
    if !r.ok {{ throw `status ${{r.status}}: ${{r.text}}`; }}
    r.text
}} }});
RhaiOperator(#{{ task_id: "slow", callable: |ctx| http::get(`${{base}}/slow`, #{{ timeout: 0.3 }}).text }});
RhaiOperator(#{{ task_id: "bad", callable: |ctx| {{
    let r = http::get(`${{base}}/bad`);
    if r.json != () {{ throw "expected no JSON"; }}
    json::parse(r.text)
}} }});
RhaiOperator(#{{ task_id: "shape", callable: |ctx| json::stringify(json::parse("{{\"x\": [1, 2.5, null]}}")) }});"#
    );
    let home = Home::new(&[("api.rhai", &dag)]);
    let o = home.run(&["dags", "test", "api", "2024-01-02"]);
    let out = stdout(&o);
    let run_id = "manual__2024-01-02T00:00:00+00:00";
    let states = home.states("api", run_id);
    let state_of = |t: &str| states.iter().find(|(id, _, _)| id == t).map(|s| s.1.clone()).unwrap_or_default();
    assert_eq!(
        xcom(&home, "api", "items", "return_value"),
        Some(serde_json::json!({"status": 200, "ok": true, "sum": 6, "type": "application/json"})),
        "{out}"
    );
    assert_eq!(
        xcom(&home, "api", "echo", "return_value"),
        Some(serde_json::json!({"got": "{\"a\":[1,2]}", "type": "application/json", "token": "t1"}))
    );
    assert_eq!(xcom(&home, "api", "text", "return_value"), Some(serde_json::json!("plain")));
    assert_eq!(xcom(&home, "api", "shape", "return_value"), Some(serde_json::json!("{\"x\":[1,2.5,null]}")));
    assert_eq!(state_of("down"), "failed");
    assert!(out.contains("error thrown: status 503: maintenance"), "{out}");
    assert_eq!(state_of("slow"), "failed");
    assert!(out.contains("/slow: no answer within 0.3 s"), "{out}");
    assert_eq!(state_of("bad"), "failed");
    assert!(out.contains("api.rhai:21:11: json::parse: not JSON"), "errors of natives are placed at their call: {out}");
}

#[test]
fn a_run_calls_the_closures_of_the_version_it_is_pinned_to() {
    let v1 = format!(
        r#"let dag = DAG("pinned", #{{ {MANUAL} }});
        let label = "v1";
        RhaiOperator(#{{ task_id: "t", callable: |ctx| label }});"#
    );
    let home = Home::new(&[("pinned.rhai", &v1)]);
    let o = home.run(&["dags", "trigger", "pinned", "--logical-date", "2024-01-01"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Only a captured variable changes: the spec is the same, the code is not.
    std::fs::write(home.path().join("dags/pinned.rhai"), v1.replace("\"v1\"", "\"v2\"")).unwrap();
    let _scheduler = home.spawn(&["scheduler"]);
    wait_until("the first run", || {
        home.runs("pinned")
            .iter()
            .any(|r| r["run_id"].as_str().unwrap().contains("2024-01-01") && r["state"] == "success")
            .then_some(())
    });
    let o = home.run(&["dags", "trigger", "pinned", "--logical-date", "2024-01-02"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until("the second run", || home.runs("pinned").iter().filter(|r| r["state"] == "success").nth(1).map(|_| ()));
    let db = home.db();
    let value = |run: &str| -> String {
        db.query_row(
            "SELECT value FROM xcom WHERE dag_id = 'pinned' AND run_id = ?1 AND key = 'return_value'",
            [run],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(value("manual__2024-01-01T00:00:00+00:00"), "\"v1\"", "the run created from v1 runs v1's closure");
    assert_eq!(value("manual__2024-01-02T00:00:00+00:00"), "\"v2\"");
    let versions: i64 =
        db.query_row("SELECT count(*) FROM dag_version WHERE dag_id = 'pinned'", [], |r| r.get(0)).unwrap();
    assert_eq!(versions, 2, "editing a closure's captured value makes a new version");
}

#[test]
fn a_runaway_closure_does_not_stall_the_scheduler() {
    let spin = format!(
        r#"let dag = DAG("spin", #{{ {MANUAL} }});
        RhaiOperator(#{{ task_id: "forever", callable: |ctx| {{ loop {{ }} }} }});"#
    );
    let quick = format!(
        r#"let dag = DAG("quick", #{{ {MANUAL} }});
        let a = RhaiOperator(#{{ task_id: "a", callable: |ctx| 40 }});
        let b = RhaiOperator(#{{ task_id: "b", callable: |ctx| ctx.ti.xcom_pull("a") + 2 }});
        a >> b;"#
    );
    let home = Home::new(&[("spin.rhai", &spin), ("quick.rhai", &quick)]);
    let mut cmd = home.command(&["scheduler"]);
    cmd.env("RHAIFLOW__CORE__TASK_SCRIPT_TIMEOUT", "20")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _scheduler = common::Running(Some(cmd.spawn().unwrap()));
    assert!(home.run(&["dags", "trigger", "spin"]).status.success());
    wait_until("the endless closure to run", || {
        let runs = home.runs("spin");
        let run_id = runs.first()?["run_id"].as_str()?.to_string();
        (state(&home, "spin", &run_id, "forever") == "running").then_some(())
    });
    assert!(home.run(&["dags", "trigger", "quick"]).status.success());
    wait_until("the other DAG's run", || (home.runs("quick").first()?["state"] == "success").then_some(()));
    let spin_run = home.runs("spin")[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(state(&home, "spin", &spin_run, "forever"), "running", "the loop is still going meanwhile");
    assert_eq!(xcom(&home, "quick", "b", "return_value"), Some(serde_json::json!(42)));
    wait_until("the endless closure to fail", || {
        (state(&home, "spin", &spin_run, "forever") == "failed").then_some(())
    });
    let log = home.log("spin", &spin_run, "forever");
    assert!(log.contains("the closure ran longer than its 0:00:20 limit"), "{log}");
}

#[test]
fn tasks_test_runs_a_closure_without_a_database_and_masks_secrets() {
    let dag = format!(
        r#"let dag = DAG("tt", #{{ {MANUAL} }});
        let a = RhaiOperator(#{{ task_id: "a", callable: |ctx| 2 + 3 }});
        let b = RhaiOperator(#{{ task_id: "b", callable: |ctx| {{
            ctx.log(`using ${{ctx.var("api_token")}}`);
            throw `auth failed with ${{ctx.var("api_token")}}`;
        }} }});"#
    );
    let home = Home::new(&[("tt.rhai", &dag)]);
    std::fs::write(home.path().join("rhaiflow.toml"), "[variables]\napi_token = \"s3cr3t-value-xyz\"\n").unwrap();
    let o = home.run(&["tasks", "test", "tt", "a", "2024-01-02"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("[rhaiflow] return_value: 5"), "{out}");
    assert!(!home.path().join("rhaiflow.db").exists(), "tasks test needs no database");
    let o = home.run(&["tasks", "test", "tt", "b", "2024-01-02"]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("using ***"), "{all}");
    assert!(all.contains("tt.rhai:5:13: error thrown: auth failed with ***"), "{all}");
    assert!(!all.contains("s3cr3t-value-xyz"), "{all}");
}

#[test]
fn bad_arguments_are_named_where_they_are_written() {
    let dag = format!(
        r#"let dag = DAG("args", #{{ {MANUAL} }});
RhaiOperator(#{{ task_id: "a", callable: |ctx| 1, op_args: "not a list" }});
RhaiOperator(#{{ task_id: "b", callable: |ctx| 1, op_kwargs: [1] }});"#
    );
    let home = Home::new(&[("args.rhai", &dag)]);
    let o = home.run(&["dags", "check"]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("`op_args` must be an array"), "{all}");
    assert!(all.contains("args.rhai:2:"), "{all}");
    assert!(all.contains("`op_kwargs` must be a map"), "{all}");

    let dag = format!(
        r#"let dag = DAG("arity", #{{ {MANUAL} }});
RhaiOperator(#{{ task_id: "greedy", callable: |ctx, args, kwargs, more| 1 }});"#
    );
    let home = Home::new(&[("arity.rhai", &dag)]);
    let o = home.run(&["dags", "test", "arity", "2024-01-02"]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("the closure given as `callable` takes 4 parameters; it is given at most 3"), "{out}");
}

/// A quick closure's log is kept in the store with its outcome (no file, no folder per try); one
/// that runs on is written to its file, where its lines can be read while it runs; either way
/// `tasks logs` shows the whole log, and `dags test` shows a failed quick try's last lines.
#[test]
fn quick_tries_log_to_the_store_and_long_ones_to_their_file() {
    let dag = format!(
        r#"let dag = DAG("logs", #{{ {MANUAL} }});
        let quick = RhaiOperator(#{{ task_id: "quick", callable: |ctx| {{ ctx.log("quick line"); 1 }} }});
        let slow = RhaiOperator(#{{ task_id: "slow", callable: |ctx| {{
            ctx.log("slow starts");
            let t = timestamp();
            while t.elapsed < 4.0 {{ }}
            ctx.log("slow ends");
            2
        }} }});
        let bad = RhaiOperator(#{{ task_id: "bad", callable: |ctx| {{ ctx.log("about to throw"); throw "quick failure" }} }});
        quick >> slow;"#
    );
    let home = Home::new(&[("logs.rhai", &dag)]);
    let mut cmd = home.command(&["scheduler"]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _scheduler = common::Running(Some(cmd.spawn().unwrap()));
    assert!(home.run(&["dags", "unpause", "logs"]).status.success());
    assert!(home.run(&["dags", "trigger", "logs"]).status.success());
    let run_id = wait_until("the run", || Some(home.runs("logs").first()?["run_id"].as_str()?.to_string()));
    let folder = |task: &str| home.path().join(format!("logs/dag_id=logs/run_id={run_id}/task_id={task}"));
    // The slow try's first line is readable while it runs (after the moment it is kept in memory).
    wait_until("the slow closure's first line in its file", || {
        let running = state(&home, "logs", &run_id, "slow") == "running";
        (running && home.log("logs", &run_id, "slow").contains("slow starts")).then_some(())
    });
    assert!(folder("slow").join("attempt=1.log").exists(), "a try that runs on writes its file");
    wait_until("the run to end", || (home.runs("logs")[0]["state"] != "running").then_some(()));

    let quick = home.log("logs", &run_id, "quick");
    assert!(quick.contains("try 1 of 1") && quick.contains("quick line"), "{quick}");
    assert!(quick.contains("Marking task as SUCCESS"), "{quick}");
    assert!(!folder("quick").exists(), "a quick try makes no log file or folder");
    let slow = home.log("logs", &run_id, "slow");
    let order: Vec<usize> = ["try 1 of 1", "slow starts", "slow ends", "Marking task as SUCCESS"]
        .iter()
        .map(|line| slow.find(line).unwrap_or_else(|| panic!("`{line}` in {slow}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {slow}");
    let bad = home.log("logs", &run_id, "bad");
    assert!(bad.contains("about to throw") && bad.contains("quick failure"), "{bad}");

    // `dags test` shows the failed quick try's last lines from the store.
    let o = home.run(&["dags", "test", "logs", "2024-02-02"]);
    let out = stdout(&o);
    assert!(out.contains("about to throw") && out.contains("quick failure"), "{out}");
    assert!(out.contains("log: rhaiflow tasks logs logs"), "where to read the whole log: {out}");
}
