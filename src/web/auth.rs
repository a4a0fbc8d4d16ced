//! Who is asking. Every request carries a [`Caller`] in its extensions, put there by
//! [`identify`]: UI pages read it to show or hide actions and to put the CSRF token in their
//! forms; handlers that act check [`Caller::may`] and [`Caller::check_csrf`].
//!
//! With `[webserver] auth` unset (the default, loopback only) everyone is an admin without a name.
//! With `auth = "password"`: API requests (`/api/v1/…`) send HTTP basic auth (Airflow's
//! `basic_auth` backend) or a session cookie with the session's CSRF token in `X-CSRF-Token` on
//! anything but GET; UI requests need a session (the login page makes one). Sessions live in this
//! process's memory ([`Auth`]); failed logins are limited per user name and per address.
//! Public: `/api/v1/health`, `/login` and `/static/…`.

use super::Problem;
use crate::store::Store;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What a user may do: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything but DAG source when auth is on.
    Viewer,
    /// Also triggers, clears, marks, pauses.
    Operator,
    /// Also manages users.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| format!("`{text}` is not a role; use viewer, operator or admin"))
    }
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The logged-in user; `None` when auth is off (or on a public path without a session).
    pub user: Option<String>,
    pub role: Role,
    /// Whether `[webserver] auth` is on (the UI then shows "log out").
    pub auth_on: bool,
    /// The token every UI form must send back (hidden field `csrf`); empty when the caller has no
    /// session (basic auth, a public path), so no form of theirs passes.
    pub csrf: Arc<str>,
}

impl Caller {
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether `sent` (a form's `csrf` field) is this caller's token.
    pub fn check_csrf(&self, sent: &str) -> bool {
        !self.csrf.is_empty() && constant_time_eq(self.csrf.as_bytes(), sent.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 hex digits from the kernel's random source.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    hex::encode(bytes)
}

fn fill_random(bytes: &mut [u8]) {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    OsRng.fill_bytes(bytes);
}

// ---- passwords ----------------------------------------------------------------------------------

/// The longest password accepted (argon2 takes any length; this bounds the work per request).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The PHC string (`$argon2id$v=19$…`) of `password` with a fresh salt and argon2's default
/// parameters.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `phc` (a malformed string matches nothing).
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

// ---- the server's auth state --------------------------------------------------------------------

/// How long a UI session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once; past it the one closest to expiry goes.
const MAX_SESSIONS: usize = 10_000;
/// Failed logins allowed per user name and per address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Checked basic-auth credentials remembered (as MACs), so a client's every call does not pay
/// for argon2.
const MAX_VERIFIED: usize = 1024;
/// Password checks (argon2) running at once; more wait their turn.
const MAX_CHECKS: usize = 2;

pub const SESSION_COOKIE: &str = "rhaiflow_session";
const LOGIN_COOKIE: &str = "rhaiflow_login";
/// The header a session-authenticated API call that changes something carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

struct Session {
    username: String,
    /// When the user row it logged in as was made: a user deleted and made again (the way a
    /// password is reset) is another user, and the session ends.
    user_created: Option<chrono::DateTime<chrono::Utc>>,
    csrf: Arc<str>,
    expires: Instant,
}

/// The auth state of one server: cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `[webserver] auth = "password"`.
    on: bool,
    /// Auth off on loopback: refuse requests naming another host (see `WebSettings`).
    loopback_hosts_only: bool,
    store: Option<Store>,
    /// The token for callers when auth is off.
    anonymous_csrf: Arc<str>,
    /// This process's key for the login form's CSRF token and the verified-credentials cache.
    key: [u8; 32],
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    verified: Mutex<HashMap<Vec<u8>, String>>,
    /// A hash to check unknown users' passwords against, so they take as long as known ones.
    decoy: OnceLock<String>,
    /// Password checks running at once.
    checking: tokio::sync::Semaphore,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password (never which).
    Wrong,
    /// Too many failures for this user name or address in the last minute.
    TooMany,
    /// The store could not be read.
    Unavailable,
}

impl Auth {
    /// Auth off: every caller is an anonymous admin.
    pub fn new() -> Auth {
        Auth::build(false, None, false)
    }

    /// Auth off, refusing requests whose `Host` is not `localhost` or a loopback address.
    pub fn loopback_only() -> Auth {
        Auth::build(false, None, true)
    }

    /// `[webserver] auth = "password"` over the users in `store`.
    pub fn with_passwords(store: Store) -> Auth {
        Auth::build(true, Some(store), false)
    }

    fn build(on: bool, store: Option<Store>, loopback_hosts_only: bool) -> Auth {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Auth {
            inner: Arc::new(Inner {
                on,
                loopback_hosts_only,
                store,
                anonymous_csrf: random_token().into(),
                key,
                sessions: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
                verified: Mutex::new(HashMap::new()),
                decoy: OnceLock::new(),
                checking: tokio::sync::Semaphore::new(MAX_CHECKS),
            }),
        }
    }

    pub fn is_on(&self) -> bool {
        self.inner.on
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.inner.key) else { return Vec::new() };
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The login form's CSRF token for the browser holding login cookie `nonce`.
    fn login_csrf(&self, nonce: &str) -> String {
        hex::encode(self.mac(&[b"login-csrf", nonce.as_bytes()]))
    }

    /// Checks a user name and password (basic auth or the login form), limited per name and
    /// address. The role is the store's now.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<Role, LoginError> {
        let keys = [Some(format!("user:{username}")), from.map(|ip| format!("addr:{ip}"))];
        let keys: Vec<String> = keys.into_iter().flatten().collect();
        if self.limited(&keys) {
            tracing::warn!(address = ?from, "login refused: too many failed logins for this user name or address");
            return Err(LoginError::TooMany);
        }
        let store = self.inner.store.clone().ok_or(LoginError::Unavailable)?;
        let name = username.to_string();
        let found =
            store.read_async(move |tx| tx.web_user_with_hash(&name)).await.map_err(|_| LoginError::Unavailable)?;
        let cache_key = self.mac(&[b"verified", username.as_bytes(), password.as_bytes()]);
        if let Some((user, phc)) = &found
            && self.inner.verified.lock().map(|v| v.get(&cache_key) == Some(phc)).unwrap_or(false)
        {
            return user.role.parse().map_err(|_| LoginError::Wrong);
        }
        let known = found.as_ref().map(|(_, phc)| phc.clone());
        let (pw, auth) = (password.to_string(), self.clone());
        // Each check takes argon2's 19 MiB for tens of ms: a few at a time, whatever arrives.
        let Ok(_permit) = self.inner.checking.acquire().await else { return Err(LoginError::Unavailable) };
        // Failures recorded while this one waited count too.
        if self.limited(&keys) {
            return Err(LoginError::TooMany);
        }
        let checked = tokio::task::spawn_blocking(move || {
            let phc = known.unwrap_or_else(|| auth.decoy());
            verify_password(&pw, &phc).then_some(phc)
        })
        .await
        .ok()
        .flatten();
        match (found, checked) {
            (Some((user, _)), Some(phc)) => {
                if let Ok(mut v) = self.inner.verified.lock() {
                    if v.len() >= MAX_VERIFIED {
                        v.clear();
                    }
                    v.insert(cache_key, phc);
                }
                user.role.parse().map_err(|_| LoginError::Wrong)
            }
            _ => {
                // Not the name: a password typed into the name field would land in the log.
                tracing::info!(address = ?from, "failed login");
                self.record_failure(&keys);
                Err(LoginError::Wrong)
            }
        }
    }

    fn decoy(&self) -> String {
        self.inner.decoy.get_or_init(|| hash_password(&random_token()).unwrap_or_default()).clone()
    }

    fn limited(&self, keys: &[String]) -> bool {
        let Ok(mut failures) = self.inner.failures.lock() else { return true };
        let now = Instant::now();
        keys.iter().any(|k| {
            failures.get_mut(k).is_some_and(|times| {
                while times.front().is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW) {
                    times.pop_front();
                }
                times.len() >= MAX_FAILURES
            })
        })
    }

    fn record_failure(&self, keys: &[String]) {
        let Ok(mut failures) = self.inner.failures.lock() else { return };
        let now = Instant::now();
        if failures.len() >= MAX_SESSIONS {
            failures.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) <= FAILURE_WINDOW));
        }
        for k in keys {
            let times = failures.entry(k.clone()).or_default();
            times.push_back(now);
            while times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
    }

    /// A new session for `username`: its id (the cookie's value).
    fn open_session(&self, username: &str, user_created: Option<chrono::DateTime<chrono::Utc>>) -> String {
        let id = random_token();
        let now = Instant::now();
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            if sessions.len() >= MAX_SESSIONS {
                sessions.retain(|_, s| s.expires > now);
            }
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
            let session = Session {
                username: username.to_string(),
                user_created,
                csrf: random_token().into(),
                expires: now + SESSION_LIFETIME,
            };
            sessions.insert(id.clone(), session);
        }
        id
    }

    /// The live session `id` names: its user and CSRF token.
    fn session(&self, id: &str) -> Option<(String, Option<chrono::DateTime<chrono::Utc>>, Arc<str>)> {
        let mut sessions = self.inner.sessions.lock().ok()?;
        let s = sessions.get(id)?;
        if s.expires <= Instant::now() {
            sessions.remove(id);
            return None;
        }
        Some((s.username.clone(), s.user_created, s.csrf.clone()))
    }

    /// When user `name`'s row was made, if there is one.
    async fn user_created(&self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let store = self.inner.store.clone()?;
        let name = name.to_string();
        store.read_async(move |tx| tx.web_user(&name)).await.ok().flatten().map(|u| u.created)
    }

    fn close_session(&self, id: &str) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.remove(id);
        }
    }

    /// The session's user as the store has them now (a deleted user's session ends).
    async fn session_caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let (username, created, csrf) = self.session(&id)?;
        let store = self.inner.store.clone()?;
        let name = username.clone();
        let user = store.read_async(move |tx| tx.web_user(&name)).await.ok().flatten();
        let Some(user) = user.filter(|u| Some(u.created) == created) else {
            self.close_session(&id);
            return None;
        };
        let role = user.role.parse().ok()?;
        Some(Caller { user: Some(username), role, auth_on: true, csrf })
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    let text = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Authorization: Basic …` as (user, password).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4 * MAX_PASSWORD_BYTES {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Paths anyone may reach when auth is on.
fn is_public(path: &str) -> bool {
    path == "/api/v1/health"
        || path == "/login"
        || path.starts_with("/static/")
        || path.starts_with("/ui/static/")
        || path == "/ui/lang"
}

fn unauthenticated(detail: &str) -> Response {
    let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"rhaiflow\""));
    resp
}

fn too_many() -> Response {
    let mut resp = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        format!("more than {MAX_FAILURES} failed logins in a minute for this user or address; wait a minute"),
    )
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

/// The layer that puts a [`Caller`] on every request, and turns away those who must log in first.
pub async fn identify(
    axum::extract::State(auth): axum::extract::State<Auth>,
    mut req: Request,
    next: Next,
) -> Response {
    if !auth.is_on() {
        if auth.inner.loopback_hosts_only && !is_loopback_host(req.headers()) {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "this server has no authentication and answers only requests to localhost or a loopback address \
                 (the `Host` header); turn on `[webserver] auth = \"password\"` to serve other names",
            )
            .into_response();
        }
        let caller = Caller { user: None, role: Role::Admin, auth_on: false, csrf: auth.inner.anonymous_csrf.clone() };
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let session = auth.session_caller(req.headers()).await;
    if session.is_some() {
        // A long-lived answer (an event stream) asks again later whether the session stands.
        let mut headers = HeaderMap::new();
        for v in req.headers().get_all(header::COOKIE) {
            headers.append(header::COOKIE, v.clone());
        }
        req.extensions_mut().insert(SessionCheck { auth: auth.clone(), headers });
    }
    if is_public(&path) {
        let caller = session.unwrap_or(Caller { user: None, role: Role::Viewer, auth_on: true, csrf: "".into() });
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let caller = if path.starts_with("/api/") {
        match (basic_credentials(req.headers()), session) {
            (Some((user, password)), _) => match auth.login(&user, &password, peer(&req)).await {
                Ok(role) => Caller { user: Some(user), role, auth_on: true, csrf: "".into() },
                Err(LoginError::TooMany) => return too_many(),
                Err(LoginError::Unavailable) => {
                    return Problem::internal("the users could not be read from the database").into_response();
                }
                Err(LoginError::Wrong) => return unauthenticated("wrong user name or password"),
            },
            (None, Some(caller)) => {
                // A session's cookie goes with every request the browser makes: changes need the
                // session's token too, which only its own pages can read.
                let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                if !safe && !caller.check_csrf(sent) {
                    return Problem::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("a session's API call that changes something needs its CSRF token in `{CSRF_HEADER}`"),
                    )
                    .into_response();
                }
                caller
            }
            (None, None) => {
                return unauthenticated("this API needs HTTP basic auth (a user of `rhaiflow users`)");
            }
        }
    } else {
        match session {
            Some(caller) => caller,
            None => return to_login(&req),
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Lets a long-lived answer (an event stream, a log tail) ask whether the session that opened it
/// still stands: logged out, expired, or its user deleted, the stream ends.
#[derive(Clone)]
pub struct SessionCheck {
    auth: Auth,
    headers: HeaderMap,
}

impl SessionCheck {
    pub async fn alive(&self) -> bool {
        self.auth.session_caller(&self.headers).await.is_some()
    }
}

/// Whether the request's `Host` names this machine's loopback (`localhost`, `x.localhost`,
/// `127.0.0.1`, `[::1]`, with any port); a request without `Host` (HTTP/1.0) is let through.
fn is_loopback_host(headers: &axum::http::HeaderMap) -> bool {
    let Some(host) = headers.get(axum::http::header::HOST) else { return true };
    let Ok(host) = host.to_str() else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A UI request without a session goes to the login page, which comes back to it.
fn to_login(req: &Request) -> Response {
    let wanted = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let next = if req.method() == Method::GET { local_path(wanted) } else { "/" };
    let target = format!("/login?next={}", url_encode(next));
    redirect(&target)
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `path` when it is a path on this server (not `//host`, not a scheme), else `/`.
pub fn local_path(path: &str) -> &str {
    let local = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 2048
        && !path.chars().any(|c| c.is_control() || c == '\\');
    if local { path } else { "/" }
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- /login and /logout -------------------------------------------------------------------------

const LOGIN_TEMPLATE: &str = include_str!("login.html");

/// The login page's words, English or Simplified Chinese.
struct Words {
    lang: &'static str,
    title: &'static str,
    username: &'static str,
    password: &'static str,
    submit: &'static str,
    wrong: &'static str,
    too_many: &'static str,
    expired: &'static str,
}

const ENGLISH: Words = Words {
    lang: "en",
    title: "Log in to rhaiflow",
    username: "User name",
    password: "Password",
    submit: "Log in",
    wrong: "Wrong user name or password.",
    too_many: "Too many failed logins. Wait a minute and try again.",
    expired: "This form has expired. Please try again.",
};

const CHINESE: Words = Words {
    lang: "zh-CN",
    title: "登录 rhaiflow",
    username: "用户名",
    password: "密码",
    submit: "登录",
    wrong: "用户名或密码错误。",
    too_many: "登录失败次数过多，请一分钟后再试。",
    expired: "表单已过期，请重试。",
};

/// Chinese when the browser prefers it to English (the first of the two in `Accept-Language`).
fn words(headers: &HeaderMap) -> &'static Words {
    let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
    for tag in accept.split(',') {
        let lang = tag.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if lang.starts_with("zh") {
            return &CHINESE;
        }
        if lang.starts_with("en") {
            return &ENGLISH;
        }
    }
    &ENGLISH
}

fn login_page(words: &Words, csrf: &str, next: &str, error: Option<&str>, username: &str) -> String {
    let mut env = minijinja::Environment::new();
    let rendered = env.add_template("login.html", LOGIN_TEMPLATE).and_then(|_| {
        env.get_template("login.html")?.render(minijinja::context! {
            lang => words.lang,
            title => words.title,
            username_label => words.username,
            password_label => words.password,
            submit => words.submit,
            error => error,
            csrf => csrf,
            next => next,
            username => username,
        })
    });
    rendered.unwrap_or_else(|e| format!("<!doctype html><title>rhaiflow</title><p>the login page failed: {e}</p>"))
}

/// A login page answer: the page, with the login cookie when the browser has none yet.
fn page(status: StatusCode, html: String, new_nonce: Option<&str>) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    if let Some(nonce) = new_nonce {
        resp.headers_mut().insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, nonce, 3600));
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `GET /login`: the form (or, with a session, straight on to `next`).
pub async fn login_form(
    axum::extract::State(auth): axum::extract::State<Auth>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    let next = local_path(q.next.as_deref().unwrap_or("/")).to_string();
    if !auth.is_on() || auth.session_caller(&headers).await.is_some() {
        return redirect(&next);
    }
    let (nonce, new) = match cookie(&headers, LOGIN_COOKIE) {
        Some(n) => (n, false),
        None => (random_token(), true),
    };
    let html = login_page(words(&headers), &auth.login_csrf(&nonce), &next, None, "");
    page(StatusCode::OK, html, new.then_some(nonce.as_str()))
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: a session and back to `next`, or the form again with an error that does not
/// say which part was wrong.
pub async fn login_submit(
    axum::extract::State(auth): axum::extract::State<Auth>,
    ConnectInfoOpt(from): ConnectInfoOpt,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let words = words(&headers);
    let next = local_path(&form.next).to_string();
    if !auth.is_on() {
        return redirect(&next);
    }
    let nonce = cookie(&headers, LOGIN_COOKIE);
    let csrf_ok =
        nonce.as_deref().is_some_and(|n| constant_time_eq(auth.login_csrf(n).as_bytes(), form.csrf.as_bytes()));
    let (nonce, new) = match nonce {
        Some(n) => (n, false),
        None => (random_token(), true),
    };
    let again = |status: StatusCode, error: &str| {
        let html = login_page(words, &auth.login_csrf(&nonce), &next, Some(error), &form.username);
        page(status, html, new.then_some(nonce.as_str()))
    };
    if !csrf_ok {
        return again(StatusCode::FORBIDDEN, words.expired);
    }
    if form.password.len() > MAX_PASSWORD_BYTES || form.username.len() > 256 {
        return again(StatusCode::UNAUTHORIZED, words.wrong);
    }
    match auth.login(&form.username, &form.password, from).await {
        Ok(_) => {
            let created = auth.user_created(&form.username).await;
            let id = auth.open_session(&form.username, created);
            let mut resp = redirect(&next);
            resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, SESSION_LIFETIME.as_secs()));
            resp.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
            resp
        }
        Err(LoginError::TooMany) => {
            let mut resp = again(StatusCode::TOO_MANY_REQUESTS, words.too_many);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            resp
        }
        Err(LoginError::Wrong) => again(StatusCode::UNAUTHORIZED, words.wrong),
        Err(LoginError::Unavailable) => again(StatusCode::SERVICE_UNAVAILABLE, words.wrong),
    }
}

#[derive(serde::Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `GET /logout`: a page with the one button that logs out (the form carries the session's CSRF
/// token), for a browser without the UI's own "log out" button.
pub async fn logout_form(axum::Extension(caller): axum::Extension<Caller>, headers: HeaderMap) -> Response {
    let zh = std::ptr::eq(words(&headers), &CHINESE);
    let (lang, label) = if zh { ("zh-CN", "退出登录") } else { ("en", "Log out") };
    let user = caller.user.as_deref().unwrap_or("");
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    let html = env
        .render_str(
            "<!doctype html><html lang=\"{{ lang }}\"><meta charset=utf-8>\
             <meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{{ label }}</title>\
             <body style=\"font: 15px/1.5 system-ui, sans-serif; margin: 3rem auto; max-width: 22rem\">\
             <p>{{ user }}</p><form method=post action=/logout>\
             <input type=hidden name=\"csrf\" value=\"{{ csrf }}\"><button type=submit>{{ label }}</button></form>",
            minijinja::context! { lang => lang, label => label, user => user, csrf => caller.csrf.as_ref() },
        )
        .unwrap_or_default();
    page(StatusCode::OK, html, None)
}

/// `POST /logout` (with the session's CSRF token): the session ends, back to the login page.
pub async fn logout(
    axum::extract::State(auth): axum::extract::State<Auth>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Response {
    if !auth.is_on() {
        return redirect("/");
    }
    if !caller.check_csrf(&form.csrf) {
        let body = "<!doctype html><meta charset=utf-8><title>rhaiflow</title>\
                    <p>This form has expired: reload the page and log out again.</p>";
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        auth.close_session(&id);
    }
    let mut resp = redirect("/login");
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    resp
}

/// The peer's address when the server was started with it (`into_make_service_with_connect_info`).
pub struct ConnectInfoOpt(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ConnectInfoOpt(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// The router's role guard: a route that needs `role` answers 403 to a caller without it.
pub async fn require(role: Role, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return Problem::internal("the request was not identified").into_response();
    };
    if !caller.may(role) {
        let who = caller.user.as_deref().unwrap_or("anonymous");
        return Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("user `{who}` ({}) may not do this: it needs the {role} role", caller.role),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let phc = hash_password("s3cret pass").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("s3cret pass", &phc));
        assert!(!verify_password("s3cret pas", &phc));
        assert!(!verify_password("s3cret pass", "not a phc string"));
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().unwrap_err().contains("viewer, operator or admin"));
    }

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(local_path("/dags/etl?x=1"), "/dags/etl?x=1");
        for bad in ["//evil.example", "https://evil.example/", "/\\evil", "evil", "/a\nb", ""] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn cookies_and_basic_credentials_are_read() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; rhaiflow_session=abc ; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYTpzcw=="));
        assert_eq!(basic_credentials(&h), Some(("user".into(), "pa:ss".into())));
    }
}
