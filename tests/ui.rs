//! The web UI over a real socket: `rhaiflow standalone` on a free port with a temporary home (an
//! example DAG, a small DAG of our own, a broken file), read with reqwest (every page's status,
//! bad input as HTML error pages, the forms' CSRF check) and driven in Debian's headless chromium
//! through chromedriver (`fantoccini`): the DAG list, a graph, unpause and trigger, the cells
//! turning green without a reload, a task's log, the Chinese toggle. Screenshots are written to
//! `target/ui-screenshots/`.

mod common;
mod peers;

use common::{Home, Running, wait_until};
use std::time::Duration;

const SMOKE: &str = r#"let dag = DAG("ui_smoke", #{ start_date: datetime(2024, 1, 1), schedule: (), tags: ["ui"] });
let hello = BashOperator(#{ task_id: "hello", bash_command: "for i in $(seq 1200); do [ -f $HOME_DIR/go ] && break; sleep 0.1; done; echo hello-from-the-ui-test" });
let world = BashOperator(#{ task_id: "world", bash_command: "echo world" });
let done = EmptyOperator(#{ task_id: "done" });
hello >> world >> done;
"#;

const BROKEN: &str = "let x = 1;\nlet dag = DAG(\"broken\", #{ schedule: ( });\n";

/// A failed test shows what the server logged and where each task stood.
impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home.path().join("standalone.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("standalone's last log lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            if let Ok(db) = rusqlite::Connection::open(self.home.path().join("rhaiflow.db")) {
                let rows = db.prepare("SELECT run_id, task_id, state FROM task_instance ORDER BY run_id").and_then(
                    |mut st| {
                        st.query_map([], |r| {
                            Ok(format!(
                                "{} {} {}",
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?
                            ))
                        })?
                        .collect::<Result<Vec<String>, _>>()
                    },
                );
                eprintln!("task instances: {rows:#?}");
            }
        }
    }
}

/// `rhaiflow standalone` on a free port; new DAGs start paused (the default), so nothing runs
/// until a test unpauses it.
struct Server {
    home: Home,
    _process: Running,
    base: String,
}

impl Server {
    fn start() -> Server {
        let mcwork =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/dags/mcwork.rhai")).unwrap();
        let home = Home::new(&[("mcwork.rhai", &mcwork), ("smoke.rhai", SMOKE), ("broken.rhai", BROKEN)]);
        let port = peers::free_port();
        let child = home
            .command(&["standalone"])
            .env("RHAIFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "true")
            .env("RHAIFLOW__WEBSERVER__BIND", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(home.path().join("standalone.log")).unwrap())
            .spawn()
            .expect("rhaiflow standalone starts");
        let server = Server { home, _process: Running(Some(child)), base: format!("http://127.0.0.1:{port}") };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = runtime();
        wait_until("the UI lists ui_smoke", || {
            rt.block_on(async { reqwest::get(format!("{}/", server.base)).await.ok()?.text().await.ok() })
                .filter(|page| page.contains("ui_smoke"))
        });
        server
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

struct Page {
    status: u16,
    content_type: String,
    text: String,
}

async fn get(client: &reqwest::Client, url: &str) -> Page {
    let resp = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Page { status, content_type, text: resp.text().await.unwrap_or_default() }
}

/// A form POST (reqwest's `form` feature is off in this crate).
fn post_form(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    pairs: &[(&str, &str)],
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    client.post(url).header("content-type", "application/x-www-form-urlencoded").body(body.join("&")).send()
}

/// The hidden `csrf` field of a page's first form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("the page has a form with a CSRF token") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[test]
fn every_page_answers_and_bad_input_gets_an_html_error_page() {
    let server = Server::start();
    let rt = runtime();
    rt.block_on(async {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let b = &server.base;
        for path in [
            "/",
            "/?q=smoke&tag=ui&failed=1",
            "/dags/ui_smoke",
            "/dags/ui_smoke/graph",
            "/dags/MCWork/graph",
            "/dags/ui_smoke/gantt",
            "/dags/ui_smoke/durations",
            "/dags/ui_smoke/code",
            "/dags/ui_smoke/details",
            "/alerts",
            "/alerts?state=failed",
            "/import-errors",
            "/ui/static/ui.css",
            "/ui/static/ui.js",
        ] {
            let page = get(&client, &format!("{b}{path}")).await;
            assert_eq!(page.status, 200, "{path}: {}", page.text);
        }
        let list = get(&client, &format!("{b}/")).await;
        assert!(list.content_type.starts_with("text/html"), "{}", list.content_type);
        let framed = client.get(format!("{b}/dags/ui_smoke")).send().await.unwrap();
        assert_eq!(framed.headers()["x-frame-options"], "DENY", "no other site may frame a page");
        assert_eq!(framed.headers()["content-security-policy"], "frame-ancestors 'none'");
        assert!(list.text.contains("broken.rhai:2"), "the import-error banner names file and line: {}", list.text);
        assert!(list.text.contains("every 10 minutes"), "MCWork's schedule in words");
        let code = get(&client, &format!("{b}/dags/MCWork/code")).await;
        assert!(code.text.contains("syncMarketingCloud"), "the code page shows the source");

        // Bad input: HTML pages naming the thing, with the right status.
        for (path, status, names) in [
            ("/dags/nope", 404, "nope"),
            ("/dags/nope/graph", 404, "nope"),
            ("/dags/ui_smoke/runs/no-such-run/tasks/hello", 404, "no-such-run"),
            ("/dags/ui_smoke/graph?run_id=no-such-run", 404, "no-such-run"),
            ("/dags/ui_smoke/code?version=zzz", 404, "zzz"),
            ("/dags/ui_smoke?runs=abc", 400, "runs"),
            ("/alerts?state=bogus", 400, "bogus"),
            ("/no-such-page", 404, "no-such"),
        ] {
            let page = get(&client, &format!("{b}{path}")).await;
            assert_eq!(page.status, status, "{path}: {}", page.text);
            assert!(page.content_type.starts_with("text/html"), "{path}: {}", page.content_type);
            assert!(page.text.contains(names), "{path} names `{names}`: {}", page.text);
        }
        // The link alert messages carry goes to the try's tab.
        let link = client.get(format!("{b}/dags/ui_smoke/runs/r/tasks/hello/tries/2")).send().await.unwrap();
        assert_eq!(link.status().as_u16(), 303);
        assert_eq!(link.headers()["location"], "/dags/ui_smoke/runs/r/tasks/hello?try=2");
        // The API keeps its problem bodies.
        let api = get(&client, &format!("{b}/api/v1/nope")).await;
        assert_eq!(api.status, 404);
        assert_eq!(api.content_type, "application/problem+json");

        // Forms: a POST without the token is refused; with it, bad conf is a 400 page.
        let trigger = format!("{b}/dags/ui_smoke/trigger");
        let refused = post_form(&client, &trigger, &[("conf", "{}")]).await.unwrap();
        assert_eq!(refused.status().as_u16(), 403);
        let csrf = csrf_of(&list.text);
        let bad = post_form(&client, &trigger, &[("csrf", csrf.as_str()), ("conf", "[1, 2")]).await.unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        assert!(bad.text().await.unwrap().contains("conf"), "the error names the conf");
        let ok = post_form(
            &client,
            &trigger,
            &[("csrf", csrf.as_str()), ("conf", "{\"k\": 1}"), ("next", "/dags/ui_smoke")],
        )
        .await
        .unwrap();
        assert_eq!(ok.status().as_u16(), 303, "a trigger goes back where it came from");
        let grid = get(&client, &format!("{b}/dags/ui_smoke")).await;
        assert!(grid.text.contains("manual__"), "the triggered run is a grid column: {}", grid.text);
        let unknown =
            post_form(&client, format!("{b}/dags/nope/pause"), &[("csrf", csrf.as_str()), ("paused", "true")])
                .await
                .unwrap();
        assert_eq!(unknown.status().as_u16(), 404);
    });
}

// ---- headless chromium --------------------------------------------------------------------------

/// A raw GET over a new connection (`Connection: close`): the whole answer, or what came within 60 s.
fn raw_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The live log tail reads only the logs of tries the store has (the ids never make a path that
/// leaves the logs folder), sends a line longer than its chunk instead of waiting for its end,
/// and ends (an `end` event, then the stream closes) once the try is over and its log sent.
#[test]
fn the_log_tail_reads_only_known_tries_sends_long_lines_and_ends_with_the_try() {
    let server = Server::start();
    for query in [
        "dag_id=ui_smoke/../../../elsewhere&run_id=r&task_id=t&try=1",
        "dag_id=ui_smoke&run_id=no_such_run&task_id=hello&try=1",
    ] {
        let answer = raw_get(&server.base, &format!("/ui/log-tail?{query}"));
        assert!(answer.starts_with("HTTP/1.1 404"), "{query}: {answer}");
    }
    let long = r#"let dag = DAG("long_line", #{ start_date: datetime(2024, 1, 1), schedule: () });
BashOperator(#{ task_id: "long", bash_command: "printf '%070000d' 7; echo; echo after-the-long-line" });
"#;
    std::fs::write(server.home.path().join("dags/long_line.rhai"), long).unwrap();
    wait_until("long_line recorded", || {
        server.home.run(&["dags", "unpause", "long_line"]).status.success().then_some(())
    });
    assert!(server.home.run(&["dags", "trigger", "long_line"]).status.success());
    let run_id = wait_until("the run ends", || {
        let runs = server.home.runs("long_line");
        let run = runs.first()?;
        (run["state"] == "success").then(|| run["run_id"].as_str().unwrap().to_string())
    });
    let answer = raw_get(
        &server.base,
        &format!(
            "/ui/log-tail?dag_id=long_line&run_id={}&task_id=long&try=1",
            run_id.replace('+', "%2B").replace(':', "%3A")
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&"0".repeat(60_000)), "the long line came");
    let after = answer.find("after-the-long-line").expect("the lines after it came");
    let end = answer.find("event: end").expect("the tail says it ended");
    assert!(after < end);
}

/// The event stream: a listener arriving when nobody listened is told to reload (what changed
/// between its page and its stream is unknown), then gets a `change` for each run that changes
/// and nothing for other DAGs.
#[test]
fn the_event_stream_tells_a_first_listener_to_reload_then_sends_each_change() {
    use std::io::{BufRead, Write};
    let server = Server::start();
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(conn, "GET /ui/events?dag_id=ui_smoke HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut lines = std::io::BufReader::new(conn.try_clone().unwrap()).lines();
    // The next event: its name and data.
    let mut next_event = || -> (String, String) {
        let mut name = String::new();
        loop {
            let line = lines.next().expect("the stream stays open").expect("an event within 60 s");
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                return (name, data.to_string());
            }
        }
    };
    assert_eq!(next_event().0, "refresh", "the first listener reloads what it shows");
    for dag_id in ["MCWork", "ui_smoke"] {
        let out = server.home.run(&["dags", "trigger", dag_id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (name, data) = next_event();
    assert_eq!(name, "change");
    assert!(data.contains("\"dag_id\":\"ui_smoke\"") && data.contains("manual__"), "only ui_smoke's run: {data}");
    std::fs::write(server.home.path().join("go"), "").unwrap();
}

/// chromedriver on a free port, killed on drop; the test fails with the install command when
/// chromium or chromedriver is missing.
fn chromedriver() -> (Running, u16) {
    for tool in ["chromium", "chromedriver"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`{tool}` is missing: the UI tests need Debian's headless chromium; install it with \
             `apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does)"
        );
    }
    let port = peers::free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    wait_until("chromedriver listens", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    (Running(Some(child)), port)
}

fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Polls a JavaScript condition (no fixed sleep is the assertion), for up to two minutes.
/// Clicks an element of a live part of the page, which an event may re-render between finding the
/// element and clicking it (the element found is then stale): found again and clicked again.
async fn click_live(c: &fantoccini::Client, css: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let clicked = match c.find(fantoccini::Locator::Css(css)).await {
            Ok(element) => element.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("clicking `{css}` again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot click `{css}`: {e}"),
        }
    }
}

async fn wait_js(c: &fantoccini::Client, what: &str, script: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(serde_json::Value::Null);
        if v == serde_json::Value::Bool(true) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = shot(c, &format!("timeout-{}", what.replace(' ', "-"))).await;
            // What the page fetched and when: tells a lost event from a fetch that never ended.
            let fetched = c
                .execute(
                    "return performance.getEntriesByType('resource').map(e => e.name + ' ' + Math.round(e.startTime) + '..' + Math.round(e.responseEnd)).join('\\n') + '\\nnow ' + Math.round(performance.now())",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}; the page's requests:\n{}", fetched.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn in_chromium_a_user_triggers_a_dag_and_watches_it_turn_green() {
    let server = Server::start();
    let (_driver, port) = chromedriver();
    let rt = runtime();
    rt.block_on(async {
        use fantoccini::Locator;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900", "--lang=en-US"],
                "prefs": {"intl.accept_languages": "en-US"}
            }),
        );
        let c = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        let b = &server.base;

        // The DAG list.
        c.goto(&format!("{b}/")).await.unwrap();
        let link = c.find(Locator::LinkText("ui_smoke")).await.expect("ui_smoke is listed");
        assert_eq!(link.text().await.unwrap(), "ui_smoke");
        c.find(Locator::Css(".banner.error")).await.expect("the import-error banner");
        shot(&c, "01-dag-list").await;

        // A graph: one node per task, laid out.
        c.goto(&format!("{b}/dags/MCWork/graph")).await.unwrap();
        let nodes = c.find_all(Locator::Css("svg#graph g.node")).await.unwrap();
        assert_eq!(nodes.len(), 4, "MCWork's four tasks");
        shot(&c, "02-graph").await;

        // Unpause, trigger, then watch the cells turn green on the same page (no reload: a
        // marker set on the window survives).
        c.goto(&format!("{b}/dags/ui_smoke")).await.unwrap();
        c.find(Locator::Id("pause-toggle")).await.unwrap().click().await.unwrap();
        wait_js(&c, "the DAG unpaused", "return document.getElementById('pause-toggle').getAttribute('aria-checked') === 'true'").await;
        c.find(Locator::Id("trigger-open")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("trigger-submit")).await.unwrap().click().await.unwrap();
        wait_js(&c, "the run's column", "return document.querySelectorAll('a.cell[data-task]').length >= 3").await;
        c.execute("window.__noReload = 42; return true;", vec![]).await.unwrap();
        let hello_state = c
            .execute("return document.querySelector(\"a.cell[data-task='hello']\").dataset.state", vec![])
            .await
            .unwrap();
        assert_ne!(hello_state, "success", "`hello` waits for the test's go-ahead file");
        // The go-ahead: `hello` ends, the rest follows; the page learns it from the event stream.
        std::fs::write(server.home.path().join("go"), "").unwrap();
        wait_js(
            &c,
            "every task green",
            "return window.__noReload === 42 && document.querySelectorAll('a.cell.st-success[data-task]').length === 3",
        )
        .await;
        shot(&c, "03-grid-green").await;

        // A task's log.
        click_live(&c, "a.cell[data-task='hello']").await;
        wait_js(&c, "the log", "const l = document.getElementById('log'); return !!l && l.textContent.includes('hello-from-the-ui-test')").await;
        shot(&c, "04-task-log").await;

        // The Chinese toggle, remembered across pages.
        c.find(Locator::Id("lang-toggle")).await.unwrap().click().await.unwrap();
        wait_js(&c, "the page in Chinese", "return document.documentElement.lang === 'zh' && document.body.textContent.includes('网格')").await;
        c.goto(&format!("{b}/")).await.unwrap();
        wait_js(&c, "the list in Chinese", "return document.documentElement.lang === 'zh' && document.body.textContent.includes('最近运行')").await;
        shot(&c, "05-chinese").await;
        c.close().await.unwrap();
    });
}

/// `standalone` with `[webserver] auth = "password"` and two users made with `rhaiflow users`.
fn start_with_auth() -> Server {
    let home = Home::new(&[("smoke.rhai", SMOKE)]);
    for (name, role, password) in [("olga", "operator", "op-secret-1"), ("vera", "viewer", "view-secret-2")] {
        let mut cmd = home.command(&["users", "create", "--username", name, "--role", role, "--password-stdin"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "users create {name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let port = peers::free_port();
    let child = home
        .command(&["standalone"])
        .env("RHAIFLOW__WEBSERVER__AUTH", "password")
        .env("RHAIFLOW__WEBSERVER__BIND", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rhaiflow standalone starts");
    let server = Server { home, _process: Running(Some(child)), base: format!("http://127.0.0.1:{port}") };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = runtime();
    wait_until("the login page answers", || {
        rt.block_on(async { reqwest::get(format!("{}/login", server.base)).await.ok()?.text().await.ok() })
            .filter(|page| page.contains("password"))
    });
    server
}

#[test]
fn in_chromium_users_log_in_and_out_and_a_viewer_cannot_trigger() {
    let server = start_with_auth();
    let (_driver, port) = chromedriver();
    let rt = runtime();
    rt.block_on(async {
        use fantoccini::Locator;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900", "--lang=en-US"],
                "prefs": {"intl.accept_languages": "en-US"}
            }),
        );
        let c = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        let b = &server.base;
        let log_in = |name: &'static str, password: &'static str| {
            let c = c.clone();
            async move {
                c.find(Locator::Id("username")).await.unwrap().send_keys(name).await.unwrap();
                c.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
                c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
            }
        };

        // Without a session, a page sends the browser to the login page, and back after it.
        c.goto(&format!("{b}/dags/ui_smoke")).await.unwrap();
        wait_js(&c, "the login page", "return location.pathname === '/login' && !!document.getElementById('password')").await;
        shot(&c, "10-login").await;
        // A wrong password: the same page again, nobody logged in.
        log_in("vera", "not-her-password").await;
        wait_js(&c, "the login page again", "return location.pathname === '/login' && !!document.getElementById('password')").await;

        // The viewer sees the DAG but no trigger, and a forged trigger is refused.
        c.find(Locator::Id("username")).await.unwrap().clear().await.unwrap();
        log_in("vera", "view-secret-2").await;
        wait_js(&c, "the grid as vera", "return location.pathname === '/dags/ui_smoke' && document.body.textContent.includes('vera')").await;
        let trigger = c.find_all(Locator::Id("trigger-open")).await.unwrap();
        assert!(trigger.is_empty(), "a viewer is offered no trigger");
        let status = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const csrf = document.querySelector('input[name=csrf]').value;
                 fetch('/dags/ui_smoke/trigger', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'},
                        body: 'csrf=' + encodeURIComponent(csrf) + '&conf='}).then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, serde_json::json!(403), "the server refuses a viewer's trigger");
        shot(&c, "11-viewer").await;

        // Log out: back to the login page; the pages need a session again.
        c.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
        c.goto(&format!("{b}/")).await.unwrap();
        wait_js(&c, "logged out", "return location.pathname === '/login'").await;

        // The operator may trigger.
        log_in("olga", "op-secret-1").await;
        wait_js(&c, "the list as olga", "return document.body.textContent.includes('olga')").await;
        c.goto(&format!("{b}/dags/ui_smoke")).await.unwrap();
        c.find(Locator::Id("trigger-open")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("trigger-submit")).await.unwrap().click().await.unwrap();
        wait_js(&c, "olga's run", "return document.querySelectorAll('a.cell[data-task]').length >= 3").await;
        shot(&c, "12-operator").await;
        c.close().await.unwrap();
    });
    assert_eq!(server.home.runs("ui_smoke").len(), 1, "one run: the operator's");
}
