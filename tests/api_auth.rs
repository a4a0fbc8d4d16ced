//! `[webserver] auth = "password"` over a real socket: HTTP basic auth on `/api/v1` (401, 403 by
//! role), the login page, the session cookie, CSRF, logout, failed-login limits; the `users`
//! commands; the refusal to serve beyond loopback without auth; and rhaiflow's own API extras
//! (DAG versions, alert deliveries, `next_dagrun*`). No password appears in any output.

mod common;
mod peers;

use common::{Home, Running, wait_until};
use serde_json::Value;
use std::io::Write;

const MANUAL: &str = "start_date: datetime(2024, 1, 1), schedule: ()";
const ADMIN_PW: &str = "adm1n-Pw-7731";
const OPERATOR_PW: &str = "0perator-Pw-2218";
const VIEWER_PW: &str = "v1ewer-Pw-9904";
const HOOK_TOKEN: &str = "hook-token-5521";

fn dags() -> Vec<(&'static str, String)> {
    vec![
        (
            "etl.rhai",
            format!(
                r#"let dag = DAG("etl", #{{ {MANUAL} }});
let extract = BashOperator(#{{ task_id: "extract", bash_command: "echo hi" }});
let load = BashOperator(#{{ task_id: "load", bash_command: "exit 3" }});
extract >> load;"#
            ),
        ),
        (
            "daily.rhai",
            r#"let dag = DAG("daily", #{ start_date: datetime(2024, 1, 1), schedule: "@daily", catchup: false });
EmptyOperator(#{ task_id: "noop" });"#
                .to_string(),
        ),
    ]
}

/// Every command's output, searched for passwords (and session ids) at the end of each test; and
/// every HTTP answer, searched for passwords and hashes (a session id is in its `Set-Cookie`).
#[derive(Default)]
struct Outputs(std::sync::Mutex<Vec<String>>, std::sync::Mutex<Vec<String>>);

impl Outputs {
    fn keep(&self, o: &std::process::Output) -> (Option<i32>, String, String) {
        let (out, err) =
            (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
        self.0.lock().unwrap().push(format!("{out}\n{err}"));
        (o.status.code(), out, err)
    }

    fn assert_no_secrets(&self, extra: &[&str]) {
        for text in self.1.lock().unwrap().iter() {
            for secret in [ADMIN_PW, OPERATOR_PW, VIEWER_PW, HOOK_TOKEN, "$argon2"] {
                assert!(!text.contains(secret), "`{secret}` in an answer: {text}");
            }
        }
        for text in self.0.lock().unwrap().iter() {
            for secret in [ADMIN_PW, OPERATOR_PW, VIEWER_PW, HOOK_TOKEN].iter().chain(extra) {
                assert!(!text.contains(secret), "`{secret}` in the output: {text}");
            }
            assert!(!text.contains("$argon2"), "a hash in the output: {text}");
        }
    }
}

/// A command of `home` with the alert channel's secret URL in its environment.
fn command(home: &Home, args: &[&str]) -> std::process::Command {
    let mut c = home.command(args);
    c.env("HOOK_URL", format!("http://127.0.0.1:9/hook?token={HOOK_TOKEN}"));
    c
}

/// A command with `stdin` fed to it.
fn run_with_stdin(home: &Home, args: &[&str], stdin: &str, outputs: &Outputs) -> (Option<i32>, String, String) {
    let mut c = command(home, args);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    // A command refused before it reads stdin (a bad argument) closes it: that is no error here.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    outputs.keep(&child.wait_with_output().unwrap())
}

fn write_config(home: &Home, extra: &str) {
    let toml = format!(
        "[webserver]\n{extra}\n[alerts]\non_failure = [\"webhook.hook\"]\n[alerts.webhook.hook]\nurl_env = \"HOOK_URL\"\n"
    );
    std::fs::write(home.path().join("rhaiflow.toml"), toml).unwrap();
}

struct Server {
    home: Home,
    process: Running,
    base: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    outputs: Outputs,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> String {
        self.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>().join("\n")
    }
}

/// How a request proves who it is.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Basic(&'a str, &'a str),
    /// A session cookie and, when given, the CSRF header.
    Session(&'a str, Option<&'a str>),
}

impl Server {
    /// A home with three users (admin, operator, viewer), a failed `dags test etl` run, and a
    /// webserver with `auth = "password"` on a free port.
    fn start() -> Server {
        let files = dags();
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let home = Home::new(&refs);
        write_config(&home, "auth = \"password\"");
        let outputs = Outputs::default();
        for (name, role, pw) in
            [("ada", "admin", ADMIN_PW), ("otto", "operator", OPERATOR_PW), ("vic", "viewer", VIEWER_PW)]
        {
            let (code, out, err) = run_with_stdin(
                &home,
                &["users", "create", "--username", name, "--role", role, "--password-stdin"],
                &format!("{pw}\n"),
                &outputs,
            );
            assert_eq!(code, Some(0), "{out}{err}");
            assert_eq!(out, format!("user {name} created with role {role}\n"));
        }
        let test = command(&home, &["dags", "test", "etl", "2024-03-01T00:00:00+00:00"]);
        let o = common::output_within_deadline(test, "dags test");
        assert_eq!(outputs.keep(&o).0, Some(1), "load fails");
        let port = peers::free_port();
        let mut c = command(&home, &["webserver", "--port", &port.to_string()]);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let process = Running(Some(c.spawn().unwrap()));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = Server {
            home,
            process,
            base: format!("http://127.0.0.1:{port}"),
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            outputs,
        };
        wait_until("the webserver answers", || server.try_send("GET", "/api/v1/health", None, As::Nobody, &[]).ok());
        server
    }

    fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
        who: As,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<Answer> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some((content_type, b)) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        match who {
            As::Nobody => {}
            As::Basic(user, pw) => req = req.basic_auth(user, Some(pw)),
            As::Session(cookie, csrf) => {
                req = req.header("cookie", format!("rhaiflow_session={cookie}"));
                if let Some(t) = csrf {
                    req = req.header("x-csrf-token", t);
                }
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.rt.block_on(async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            Ok(Answer { status, headers, text: resp.text().await? })
        })
    }

    fn send(&self, method: &str, path: &str, json: Option<&str>, who: As) -> Answer {
        let body = json.map(|b| ("application/json", b));
        let a = self.try_send(method, path, body, who, &[]).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        self.outputs.1.lock().unwrap().push(format!("{:?}\n{}", a.headers, a.text));
        a
    }

    fn form(&self, path: &str, fields: &[(&str, &str)], cookies: &str, headers: &[(&str, &str)]) -> Answer {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let mut all = vec![("cookie", cookies)];
        all.extend_from_slice(headers);
        let a = self
            .try_send("POST", path, Some(("application/x-www-form-urlencoded", &body.join("&"))), As::Nobody, &all)
            .unwrap();
        self.outputs.1.lock().unwrap().push(format!("{:?}\n{}", a.headers, a.text));
        a
    }

    /// A problem body with this status.
    fn problem(&self, method: &str, path: &str, json: Option<&str>, who: As, status: u16) -> Value {
        let a = self.send(method, path, json, who);
        assert_eq!(a.status, status, "{method} {path}: {}", a.text);
        assert_eq!(a.header("content-type"), "application/problem+json", "{method} {path}");
        let p = a.json();
        assert_eq!(p["status"], status);
        p
    }

    fn get(&self, path: &str, who: As) -> Value {
        let a = self.send("GET", path, None, who);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json()
    }

    /// Stops the server and checks nothing it or the commands printed holds a secret.
    fn finish(mut self, extra: &[&str]) {
        self.process.signal(nix::sys::signal::Signal::SIGTERM);
        let (_, out, err) = self.process.finish();
        self.outputs.0.lock().unwrap().push(format!("{out}\n{err}"));
        self.outputs.assert_no_secrets(extra);
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `name=VALUE` of a `Set-Cookie` header.
fn cookie_value(set_cookie: &str, name: &str) -> Option<String> {
    set_cookie
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|rest| rest.split(';').next().unwrap().to_string())
}

/// The value of the hidden `csrf` field of a page.
fn csrf_field(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

/// Logs in through the form; the session id.
fn login(s: &Server, user: &str, password: &str) -> String {
    let page = s.send("GET", "/login", None, As::Nobody);
    let nonce = cookie_value(&page.header("set-cookie"), "rhaiflow_login").unwrap();
    let csrf = csrf_field(&page.text);
    let fields = [("username", user), ("password", password), ("csrf", csrf.as_str()), ("next", "/")];
    let a = s.form("/login", &fields, &format!("rhaiflow_login={nonce}"), &[]);
    assert_eq!(a.status, 303, "{}", a.text);
    cookie_value(&a.header("set-cookie"), "rhaiflow_session").unwrap()
}

fn etl_run(s: &Server) -> String {
    s.get("/api/v1/dags/etl/dagRuns", As::Basic("vic", VIEWER_PW))["dag_runs"][0]["dag_run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn api_takes_basic_auth_and_checks_roles() {
    let s = Server::start();
    let viewer = As::Basic("vic", VIEWER_PW);
    let operator = As::Basic("otto", OPERATOR_PW);
    let admin = As::Basic("ada", ADMIN_PW);

    // Without credentials or with wrong ones: 401, a problem body, and the basic challenge.
    let a = s.send("GET", "/api/v1/dags", None, As::Nobody);
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.header("www-authenticate").starts_with("Basic"), "{:?}", a.headers);
    assert_eq!(a.json()["status"], 401);
    s.problem("GET", "/api/v1/dags", None, As::Basic("vic", "wrong"), 401);
    s.problem("GET", "/api/v1/dags", None, As::Basic("nobody", VIEWER_PW), 401);
    // Health stays public; DAG source needs a user.
    assert_eq!(s.get("/api/v1/health", As::Nobody)["metadatabase"]["status"], "healthy");
    let token = s.get("/api/v1/dags/etl", viewer)["file_token"].as_str().unwrap().to_string();
    s.problem("GET", &format!("/api/v1/dagSources/{token}"), None, As::Nobody, 401);
    assert!(s.get(&format!("/api/v1/dagSources/{token}"), viewer)["content"].as_str().unwrap().contains("extract"));

    // A viewer reads but may not act.
    assert_eq!(s.get("/api/v1/dags", viewer)["total_entries"], 2);
    let run = etl_run(&s);
    let run_path = format!("/api/v1/dags/etl/dagRuns/{run}");
    let refused = [
        ("PATCH", "/api/v1/dags/etl".to_string(), r#"{"is_paused": true}"#),
        ("POST", "/api/v1/dags/etl/dagRuns".to_string(), "{}"),
        ("POST", "/api/v1/dags/etl/clearTaskInstances".to_string(), r#"{"dry_run": false}"#),
        ("POST", format!("{run_path}/clear"), r#"{"dry_run": false}"#),
        ("PATCH", run_path.clone(), r#"{"state": "success"}"#),
        ("PATCH", format!("{run_path}/taskInstances/load"), r#"{"new_state": "success"}"#),
    ];
    for (method, path, body) in &refused {
        let p = s.problem(method, path, Some(body), viewer, 403);
        assert!(p["detail"].as_str().unwrap().contains("operator"), "{p}");
    }
    assert_eq!(s.get(&run_path, viewer)["state"], "failed", "nothing changed");
    // An operator may.
    for (method, path, body) in &refused[..2] {
        let a = s.send(method, path, Some(body), operator);
        assert_eq!(a.status, 200, "{method} {path}: {}", a.text);
    }
    let a = s.send("PATCH", &format!("{run_path}/taskInstances/load"), Some(r#"{"new_state": "success"}"#), operator);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(s.get(&format!("{run_path}/taskInstances/load"), viewer)["state"], "success");

    // Users: admins only.
    s.problem("GET", "/api/v1/users", None, viewer, 403);
    s.problem("GET", "/api/v1/users", None, operator, 403);
    let users = s.get("/api/v1/users", admin);
    assert_eq!(users["total_entries"], 3);
    let names: Vec<&str> = users["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["ada", "otto", "vic"]);
    assert_eq!(users["users"][2]["roles"][0]["name"], "viewer");
    assert!(!users.to_string().contains("password") && !users.to_string().contains("argon2"), "{users}");
    let page = s.get("/api/v1/users?limit=1&offset=1", admin);
    assert_eq!((page["total_entries"].as_u64(), page["users"][0]["username"].as_str()), (Some(3), Some("otto")));
    let new_pw = "n3w-User-Pw-6610";
    let body = format!(r#"{{"username": "nina", "password": "{new_pw}", "roles": [{{"name": "operator"}}]}}"#);
    s.problem("POST", "/api/v1/users", Some(&body), operator, 403);
    let made = s.send("POST", "/api/v1/users", Some(&body), admin);
    assert_eq!(made.status, 200, "{}", made.text);
    assert_eq!(made.json()["roles"][0]["name"], "operator");
    s.problem("POST", "/api/v1/users", Some(&body), admin, 409);
    s.problem(
        "POST",
        "/api/v1/users",
        Some(r#"{"username": "x", "password": "", "roles": [{"name": "viewer"}]}"#),
        admin,
        400,
    );
    s.problem(
        "POST",
        "/api/v1/users",
        Some(r#"{"username": "x", "password": "p", "roles": [{"name": "root"}]}"#),
        admin,
        400,
    );
    assert_eq!(s.get("/api/v1/dags", As::Basic("nina", new_pw))["total_entries"], 2);
    assert_eq!(s.get("/api/v1/users/nina", admin)["username"], "nina");
    let session = login(&s, "nina", new_pw);
    assert_eq!(s.get("/api/v1/dags", As::Session(&session, None))["total_entries"], 2);
    assert_eq!(s.send("DELETE", "/api/v1/users/nina", None, admin).status, 204);
    // A deleted user is out at once: basic auth and their session alike.
    s.problem("GET", "/api/v1/dags", None, As::Session(&session, None), 401);
    s.problem("DELETE", "/api/v1/users/nina", None, admin, 404);
    s.problem("GET", "/api/v1/dags", None, As::Basic("nina", new_pw), 401);
    // The last admin stays: nobody could manage users otherwise.
    let p = s.problem("DELETE", "/api/v1/users/ada", None, admin, 400);
    assert!(p["detail"].as_str().unwrap().contains("last admin"), "{p}");
    // A user deleted and made again (the way a password is reset, here with a higher role) is
    // another user: a session of the old one stays out.
    let session = login(&s, "otto", OPERATOR_PW);
    assert_eq!(s.send("DELETE", "/api/v1/users/otto", None, admin).status, 204);
    let body = format!(r#"{{"username": "otto", "password": "{new_pw}", "roles": [{{"name": "admin"}}]}}"#);
    assert_eq!(s.send("POST", "/api/v1/users", Some(&body), admin).status, 200);
    s.problem("GET", "/api/v1/users", None, As::Session(&session, None), 401);
    assert_eq!(s.send("GET", "/", None, As::Session(&session, None)).status, 303, "the UI sends it to log in");
    assert_eq!(s.get("/api/v1/users/otto", As::Basic("otto", new_pw))["username"], "otto");
    s.finish(&[new_pw, &session]);
}

#[test]
fn failed_logins_are_limited() {
    let s = Server::start();
    for _ in 0..5 {
        s.problem("GET", "/api/v1/dags", None, As::Basic("vic", "guess"), 401);
    }
    // The right password no longer helps for a while, from this address or for this user.
    let a = s.send("GET", "/api/v1/dags", None, As::Basic("vic", VIEWER_PW));
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.header("retry-after"), "60");
    let login = s.send("GET", "/login", None, As::Nobody);
    let nonce = cookie_value(&login.header("set-cookie"), "rhaiflow_login").unwrap();
    let csrf = csrf_field(&login.text);
    let fields = [("username", "ada"), ("password", ADMIN_PW), ("csrf", csrf.as_str()), ("next", "/")];
    let a = s.form("/login", &fields, &format!("rhaiflow_login={nonce}"), &[]);
    assert_eq!(a.status, 429, "{}", a.text);
    assert!(a.text.contains("Too many failed logins"), "{}", a.text);
    s.finish(&[]);
}

#[test]
fn login_page_session_cookie_csrf_and_logout() {
    let s = Server::start();
    // A UI page without a session goes to the login page, which comes back to it (local paths only).
    let a = s.send("GET", "/dags/etl?tab=grid", None, As::Nobody);
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), "/login?next=/dags/etl%3Ftab%3Dgrid");
    let zh = s.try_send("GET", "/login", None, As::Nobody, &[("accept-language", "zh-CN,zh;q=0.9,en;q=0.8")]).unwrap();
    assert!(zh.text.contains("lang=\"zh-CN\"") && zh.text.contains("登录"), "{}", zh.text);
    let page = s.send("GET", "/login?next=//evil.example/", None, As::Nobody);
    assert_eq!(page.status, 200);
    assert!(page.text.contains("lang=\"en\"") && page.text.contains("Log in"), "{}", page.text);
    assert!(page.text.contains("name=\"next\" value=\"&#x2f;\""), "an outside `next` becomes /: {}", page.text);
    let set = page.header("set-cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    let nonce = cookie_value(&set, "rhaiflow_login").unwrap();
    let login_cookie = format!("rhaiflow_login={nonce}");
    let csrf = csrf_field(&page.text);

    // The form without its token, or with another browser's, is refused.
    let fields = |user: &'static str, pw: &'static str, token: &str| {
        vec![("username", user), ("password", pw), ("csrf", token.to_string().leak()), ("next", "/dags/etl")]
    };
    let a = s.form("/login", &fields("otto", OPERATOR_PW, "0000"), &login_cookie, &[]);
    assert_eq!(a.status, 403, "{}", a.text);
    let a = s.form("/login", &fields("otto", OPERATOR_PW, &csrf), "rhaiflow_login=other", &[]);
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(a.header("set-cookie").is_empty() || !a.header("set-cookie").contains("rhaiflow_session"));
    // A wrong password: the same page, an error that does not say which part was wrong.
    let wrong = s.form("/login", &fields("otto", "not-it-4431", &csrf), &login_cookie, &[]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.text.contains("Wrong user name or password."), "{}", wrong.text);
    let unknown = s.form("/login", &fields("nobody", "not-it-4431", &csrf), &login_cookie, &[]);
    assert_eq!(unknown.status, 401);
    assert!(unknown.text.contains("Wrong user name or password."));
    assert!(!wrong.text.contains("not-it-4431"));

    // The right one: a session cookie, back to `next`.
    let ok = s.form("/login", &fields("otto", OPERATOR_PW, &csrf), &login_cookie, &[]);
    assert_eq!(ok.status, 303, "{}", ok.text);
    assert_eq!(ok.header("location"), "/dags/etl");
    let set = ok.header("set-cookie");
    let session_line = set.lines().find(|l| l.starts_with("rhaiflow_session=")).unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(session_line.contains(flag), "{session_line}");
    }
    let session = cookie_value(&set, "rhaiflow_session").unwrap();
    assert_eq!(session.len(), 32);

    // The session reads the API; a change needs the session's CSRF token too.
    assert_eq!(s.get("/api/v1/dags", As::Session(&session, None))["total_entries"], 2);
    let trigger = "/api/v1/dags/etl/dagRuns";
    let p = s.problem("POST", trigger, Some("{}"), As::Session(&session, None), 403);
    assert!(p["detail"].as_str().unwrap().contains("x-csrf-token"), "{p}");
    s.problem("POST", trigger, Some("{}"), As::Session(&session, Some("forged")), 403);
    let logout_page = s.send("GET", "/logout", None, As::Session(&session, None));
    assert_eq!(logout_page.status, 200);
    let token = csrf_field(&logout_page.text);
    assert_ne!(token, csrf, "each session has its own token");
    let a = s.send("POST", trigger, Some("{}"), As::Session(&session, Some(&token)));
    assert_eq!(a.status, 200, "{}", a.text);
    // Logged in, the login page goes straight on.
    let a = s.send("GET", "/login?next=/dags", None, As::Session(&session, None));
    assert_eq!((a.status, a.header("location")), (303, "/dags".to_string()));

    // Logout needs the token; then the session is gone.
    let cookie = format!("rhaiflow_session={session}");
    let a = s.form("/logout", &[("csrf", "forged")], &cookie, &[]);
    assert_eq!(a.status, 403);
    assert_eq!(s.get("/api/v1/dags", As::Session(&session, None))["total_entries"], 2);
    let a = s.form("/logout", &[("csrf", &token)], &cookie, &[]);
    assert_eq!((a.status, a.header("location")), (303, "/login".to_string()));
    assert!(a.header("set-cookie").contains("rhaiflow_session=;") && a.header("set-cookie").contains("Max-Age=0"));
    s.problem("GET", "/api/v1/dags", None, As::Session(&session, None), 401);
    assert_eq!(s.send("GET", "/", None, As::Session(&session, None)).status, 303);
    s.finish(&[&session, &token]);
}

#[test]
fn users_commands() {
    let home = Home::new(&[]);
    let outputs = Outputs::default();
    let create = |name: &str, role: &str, stdin: &str| {
        run_with_stdin(
            &home,
            &["users", "create", "--username", name, "--role", role, "--password-stdin"],
            stdin,
            &outputs,
        )
    };
    assert_eq!(create("ada", "admin", &format!("{ADMIN_PW}\n")).0, Some(0));
    assert_eq!(create("vic", "viewer", VIEWER_PW).0, Some(0));
    let (code, out, err) = create("ada", "viewer", &format!("{OPERATOR_PW}\n"));
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(err, "error: user `ada` already exists\n");
    let (code, _, err) = create("otto", "operator", "\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("the password is empty"), "{err}");
    let (code, _, err) = create("a b", "operator", OPERATOR_PW);
    assert_eq!(code, Some(2));
    assert!(err.contains("user name `a b` has a space"), "{err}");
    let (code, _, err) = create("otto", "root", OPERATOR_PW);
    assert_eq!(code, Some(2));
    assert!(err.contains("viewer") && err.contains("operator") && err.contains("admin"), "{err}");
    let (code, _, err) = outputs.keep(&home.run(&["users", "create", "--username", "otto", "--role", "viewer"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("--password-stdin"), "{err}");

    let (code, table, _) = outputs.keep(&home.run(&["users", "list"]));
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("username  role"), "{table}");
    assert!(lines[2].starts_with("ada       admin") && lines[3].starts_with("vic       viewer"), "{table}");
    let (_, json, _) = outputs.keep(&home.run(&["users", "list", "--output", "json"]));
    let rows: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["username"], "ada");
    assert_eq!(rows[0]["role"], "admin");
    assert!(rows[0].get("password_hash").is_none(), "{rows}");

    // The store keeps an argon2 PHC string, never the password.
    let hash: String =
        home.db().query_row("SELECT password_hash FROM web_user WHERE username = 'ada'", [], |r| r.get(0)).unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains(ADMIN_PW));

    let (code, out, _) = outputs.keep(&home.run(&["users", "delete", "--username", "vic"]));
    assert_eq!((code, out.as_str()), (Some(0), "user vic deleted\n"));
    let (code, _, err) = outputs.keep(&home.run(&["users", "delete", "--username", "vic"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no user `vic`"), "{err}");
    outputs.assert_no_secrets(&[]);
}

#[test]
fn public_bind_without_auth_is_refused_unless_allowed() {
    let home = Home::new(&[]);
    let port = peers::free_port().to_string();
    let o = home.run(&["webserver", "--host", "0.0.0.0", "--port", &port]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("refusing to listen on 0.0.0.0:{port} without authentication"))
            && err.contains("allow_public_without_auth")
            && err.contains("auth = \"password\""),
        "{err}"
    );
    let mut standalone = home.command(&["standalone"]);
    standalone.env("RHAIFLOW__WEBSERVER__BIND", format!("0.0.0.0:{port}"));
    let o = common::output_within_deadline(standalone, "standalone on 0.0.0.0");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("refusing to listen on 0.0.0.0:{port}")), "{o:?}");
    let mut bad = home.command(&["webserver"]);
    bad.env("RHAIFLOW__WEBSERVER__AUTH", "ldap");
    let o = common::output_within_deadline(bad, "webserver with auth = ldap");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("webserver.auth") && err.contains("ldap"), "{err}");

    let answers = |port: &str, path: &str| {
        wait_until("the server answers", || {
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).ok().map(|mut c| {
                use std::io::Read;
                let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                c.write_all(request.as_bytes()).unwrap();
                let mut text = String::new();
                let _ = c.read_to_string(&mut text);
                text
            })
        })
    };
    for (env, value) in
        [("RHAIFLOW__WEBSERVER__ALLOW_PUBLIC_WITHOUT_AUTH", "true"), ("RHAIFLOW__WEBSERVER__AUTH", "password")]
    {
        let port = peers::free_port().to_string();
        let mut c = home.command(&["webserver", "--host", "0.0.0.0", "--port", &port]);
        c.env(env, value).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let _server = Running(Some(c.spawn().unwrap()));
        assert!(answers(&port, "/api/v1/health").starts_with("HTTP/1.1 200"), "{env}");
    }
    // `standalone` with auth serves beyond loopback, and asks for users.
    let port = peers::free_port().to_string();
    let mut c = home.command(&["standalone"]);
    c.env("RHAIFLOW__WEBSERVER__BIND", format!("0.0.0.0:{port}"))
        .env("RHAIFLOW__WEBSERVER__AUTH", "password")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut standalone = Running(Some(c.spawn().unwrap()));
    assert!(answers(&port, "/api/v1/health").starts_with("HTTP/1.1 200"));
    assert!(answers(&port, "/api/v1/dags").starts_with("HTTP/1.1 401"));
    standalone.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, err) = standalone.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("users log in: `rhaiflow users`"), "{err}");
}

#[test]
fn versions_alert_deliveries_and_next_dagrun() {
    let s = Server::start();
    let viewer = As::Basic("vic", VIEWER_PW);
    // Versions: a second one after an edit, each with the runs pinned to it.
    let edited = dags()[0].1.replace("echo hi", "echo hello");
    std::fs::write(s.home.path().join("dags/etl.rhai"), edited).unwrap();
    let trigger = command(&s.home, &["dags", "trigger", "etl", "--logical-date", "2024-05-01"]);
    let o = common::output_within_deadline(trigger, "dags trigger");
    assert!(s.outputs.keep(&o).0 == Some(0), "{o:?}");
    let v = s.get("/api/v1/dags/etl/versions", viewer);
    assert_eq!(v["total_entries"], 2, "{v}");
    let versions = v["versions"].as_array().unwrap();
    let runs: Vec<u64> = versions.iter().map(|v| v["runs"].as_u64().unwrap()).collect();
    assert_eq!(runs, [1, 1]);
    assert_eq!(versions[0]["is_latest"], false);
    assert_eq!(versions[1]["is_latest"], true);
    assert_eq!(versions[1]["fileloc"], "etl.rhai");
    assert_eq!(versions[1]["version_hash"], s.get("/api/v1/dags/etl", viewer)["file_token"]);
    assert!(versions[0]["first_seen"].is_string());
    let page = s.get("/api/v1/dags/etl/versions?limit=1&offset=1", viewer);
    assert_eq!((page["total_entries"].as_u64(), page["versions"].as_array().unwrap().len()), (Some(2), 1));
    assert_eq!(page["versions"][0]["is_latest"], true);
    s.problem("GET", "/api/v1/dags/nope/versions", None, viewer, 404);

    // Alert deliveries: the failure `dags test` held for `webhook.hook`, no URL or token.
    let a = s.get("/api/v1/alertDeliveries", viewer);
    assert!(a["total_entries"].as_u64().unwrap() >= 1, "{a}");
    let first = &a["alert_deliveries"][0];
    assert_eq!(first["channel"], "webhook.hook");
    assert_eq!(first["dag_id"], "etl");
    assert_eq!(first["state"], "held");
    for key in ["event", "dag_run_id", "task_id", "try_number", "attempts", "last_error", "created_at"] {
        assert!(first.get(key).is_some(), "{key}: {first}");
    }
    assert!(!a.to_string().contains(HOOK_TOKEN) && !a.to_string().contains("127.0.0.1:9"), "{a}");
    let held = s.get("/api/v1/alertDeliveries?state=held&channel=webhook.hook&limit=1", viewer);
    assert_eq!(held["total_entries"], a["total_entries"]);
    assert_eq!(held["alert_deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/api/v1/alertDeliveries?state=sent", viewer)["total_entries"], 0);
    assert_eq!(s.get("/api/v1/alertDeliveries?channel=email", viewer)["total_entries"], 0);
    s.problem("GET", "/api/v1/alertDeliveries?state=lost", None, viewer, 400);
    s.problem("GET", "/api/v1/alertDeliveries?limit=0", None, viewer, 400);

    // next_dagrun*: a daily DAG without catchup waits for today's interval; a manual one has none.
    let daily = s.get("/api/v1/dags/daily", viewer);
    let start =
        chrono::DateTime::parse_from_rfc3339(daily["next_dagrun_data_interval_start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(daily["next_dagrun_data_interval_end"].as_str().unwrap()).unwrap();
    assert_eq!(end - start, chrono::Duration::days(1), "{daily}");
    assert_eq!(daily["next_dagrun"], daily["next_dagrun_data_interval_start"]);
    assert_eq!(daily["next_dagrun_create_after"], daily["next_dagrun_data_interval_end"]);
    let details = s.get("/api/v1/dags/daily/details", viewer);
    assert_eq!(details["next_dagrun"], daily["next_dagrun"]);
    let etl = s.get("/api/v1/dags/etl", viewer);
    for key in
        ["next_dagrun", "next_dagrun_data_interval_start", "next_dagrun_data_interval_end", "next_dagrun_create_after"]
    {
        assert_eq!(etl[key], Value::Null, "{key}");
    }
    let listed = s.get("/api/v1/dags?dag_id_pattern=daily", viewer);
    assert_eq!(listed["dags"][0]["next_dagrun"], daily["next_dagrun"]);
    s.finish(&[]);
}

/// An event stream opened by a session ends once the session does (here: its user deleted),
/// instead of going on feeding a browser that is logged out.
#[test]
fn an_event_stream_ends_with_its_session() {
    use std::io::{Read, Write};
    let s = Server::start();
    let session = login(&s, "vic", VIEWER_PW);
    let mut conn = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    write!(
        conn,
        "GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: rhaiflow_session={session}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let admin = As::Basic("ada", ADMIN_PW);
    assert_eq!(s.send("DELETE", "/api/v1/users/vic", None, admin).status, 204);
    // The stream closes (end of file) well within the read timeout.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("the stream closes instead of running on");
    s.finish(&[&session]);
}
