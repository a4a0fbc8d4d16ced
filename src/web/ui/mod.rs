//! The web UI: server-rendered pages (minijinja templates, CSS and JS embedded with
//! `include_str!`), HTML error pages, the actions' forms (CSRF-checked, operators only), the
//! language catalogues, and the live updates (`events`: one change-log follower per process,
//! server-sent events to each browser).

/// A template context from `name => value` pairs of any serialisable values.
macro_rules! ctx {
    ($($k:ident => $v:expr),* $(,)?) => {{
        let mut map = std::collections::BTreeMap::<&'static str, minijinja::Value>::new();
        $( map.insert(stringify!($k), minijinja::Value::from(minijinja::value::Serde(&$v))); )*
        minijinja::Value::from(minijinja::value::Serde(&map))
    }};
}

mod events;
mod layout;
mod pages;
mod views;
mod words;

pub use events::Bus;

use super::auth::{Caller, Role};
use super::{ActionError, Actions, Web};
use crate::store::{StoreError, Tx};
use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The UI's shared state: the server's, the templates, the catalogues and the event bus.
#[derive(Clone)]
pub struct Ui(Arc<Inner>);

struct Inner {
    web: Web,
    env: Environment<'static>,
    bus: Bus,
    catalogues: [Catalogue; 2],
}

/// One language's strings: the map (for Rust-side text) and the same as a template value.
struct Catalogue {
    map: BTreeMap<String, String>,
    value: minijinja::Value,
}

/// The languages of the UI. Ids, logs and code are never translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    fn parse(text: &str) -> Option<Lang> {
        let t = text.trim().to_ascii_lowercase();
        if t.starts_with("zh") {
            Some(Lang::Zh)
        } else if t.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The `lang` cookie, else the first language of `Accept-Language` the UI has, else English.
    fn of(headers: &HeaderMap) -> Lang {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| kv.trim().strip_prefix("lang=").and_then(Lang::parse));
        if let Some(lang) = cookie {
            return lang;
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut choices: Vec<(f32, Lang)> = accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let lang = Lang::parse(it.next()?)?;
                let q = it.find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok()).unwrap_or(1.0);
                Some((q, lang))
            })
            .collect();
        choices.sort_by(|a, b| b.0.total_cmp(&a.0));
        choices.first().map_or(Lang::En, |c| c.1)
    }
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("error.html", include_str!("templates/error.html")),
    ("dags.html", include_str!("templates/dags.html")),
    ("dags_live.html", include_str!("templates/dags_live.html")),
    ("dag_header.html", include_str!("templates/dag_header.html")),
    ("grid.html", include_str!("templates/grid.html")),
    ("grid_live.html", include_str!("templates/grid_live.html")),
    ("graph.html", include_str!("templates/graph.html")),
    ("graph_live.html", include_str!("templates/graph_live.html")),
    ("gantt.html", include_str!("templates/gantt.html")),
    ("gantt_live.html", include_str!("templates/gantt_live.html")),
    ("durations.html", include_str!("templates/durations.html")),
    ("durations_live.html", include_str!("templates/durations_live.html")),
    ("code.html", include_str!("templates/code.html")),
    ("details.html", include_str!("templates/details.html")),
    ("task.html", include_str!("templates/task.html")),
    ("task_live.html", include_str!("templates/task_live.html")),
    ("alerts.html", include_str!("templates/alerts.html")),
    ("import_errors.html", include_str!("templates/import_errors.html")),
];

const CSS: &str = include_str!("static/ui.css");
const JS: &str = include_str!("static/ui.js");

fn catalogue(text: &str) -> Catalogue {
    // The catalogues are part of the binary and checked by a test; a broken one shows keys.
    let map: BTreeMap<String, String> = toml::from_str(text).unwrap_or_default();
    let value = minijinja::Value::from(minijinja::value::Serde(&map));
    Catalogue { map, value }
}

/// The UI's routes and its shared state (the caller keeps it to render error pages and to close
/// the event bus at shutdown).
pub fn router(web: Web) -> (Router, Ui) {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    // Ids in paths and query strings: everything but unreserved characters percent-encoded.
    env.add_filter("urlencode", |s: String| pages::path_segment(&s));
    for (name, text) in TEMPLATES {
        if let Err(e) = env.add_template(name, text) {
            // Templates are embedded: a syntax error is a bug the page tests catch.
            tracing::error!(template = name, error = %e, "a UI template does not compile");
        }
    }
    let bus = Bus::new(web.store.clone());
    let catalogues = [catalogue(include_str!("i18n/en.toml")), catalogue(include_str!("i18n/zh.toml"))];
    let ui = Ui(Arc::new(Inner { web, env, bus, catalogues }));
    let router = Router::new()
        .route("/", get(pages::dag_list))
        .route("/dags/{dag_id}", get(pages::grid))
        .route("/dags/{dag_id}/graph", get(views::graph))
        .route("/dags/{dag_id}/gantt", get(views::gantt))
        .route("/dags/{dag_id}/durations", get(views::durations))
        .route("/dags/{dag_id}/code", get(views::code))
        .route("/dags/{dag_id}/details", get(views::details))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", get(pages::task_instance))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/log", get(pages::log_download))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}", get(pages::try_link))
        .route("/dags/{dag_id}/pause", post(pages::pause))
        .route("/dags/{dag_id}/trigger", post(pages::trigger))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/clear", post(pages::clear))
        .route("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/mark", post(pages::mark))
        .route("/alerts", get(pages::alerts))
        .route("/import-errors", get(pages::import_errors))
        .route("/ui/events", get(events::stream))
        .route("/ui/log-tail", get(events::log_tail))
        .route("/ui/lang", get(set_lang))
        .route("/ui/static/ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/static/ui.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .with_state(ui.clone());
    (router, ui)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

impl Ui {
    pub fn bus(&self) -> &Bus {
        &self.0.bus
    }

    fn web(&self) -> &Web {
        &self.0.web
    }

    fn text(&self, lang: Lang, key: &str) -> String {
        let cat = &self.0.catalogues[lang as usize];
        cat.map.get(key).cloned().unwrap_or_else(|| key.to_string())
    }

    /// A page (or, with `?partial=1`, only its live part) with the context every page shares.
    fn render(&self, r: &Req, page: Rendered) -> Response {
        let name = if r.partial { page.live.unwrap_or(page.template) } else { page.template };
        let base = Base {
            lang: r.lang.code(),
            other_lang: if r.lang == Lang::En { "zh" } else { "en" },
            user: r.caller.user.clone(),
            auth_on: r.caller.auth_on,
            can_operate: r.caller.may(Role::Operator),
            csrf: r.caller.csrf.to_string(),
            here: r.here.clone(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let ctx = minijinja::context! { base => minijinja::Value::from(minijinja::value::Serde(&base)), t => self.0.catalogues[r.lang as usize].value.clone(), ..page.ctx };
        let out = self.0.env.get_template(name).and_then(|t| t.render(ctx));
        match out {
            Ok(html) => {
                let mut resp = (page.status, Html(html)).into_response();
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            Err(e) => {
                tracing::error!(template = name, error = format!("{e:#}"), "a UI page failed to render");
                plain_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the page failed to render: {e}"))
            }
        }
    }

    fn error_page(&self, r: &Req, e: UiError) -> Response {
        let title = self.text(r.lang, e.title_key());
        let page = Rendered {
            template: "error.html",
            live: None,
            status: e.status,
            ctx: ctx! { title => title, detail => e.detail, status => e.status.as_u16() },
        };
        self.render(r, page)
    }

    fn respond(&self, r: &Req, page: Result<Rendered, UiError>) -> Response {
        match page {
            Ok(p) => self.render(r, p),
            Err(e) => self.error_page(r, e),
        }
    }

    /// A read on the blocking pool; store errors are 500 pages.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tx) -> Result<T, UiError> + Send + 'static,
    ) -> Result<T, UiError> {
        self.web().store.read_async(move |tx| Ok(f(tx))).await?
    }

    /// An action through the service layer, on the blocking pool.
    async fn act<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Actions) -> Result<T, ActionError> + Send + 'static,
    ) -> Result<T, UiError> {
        let actions = self.web().actions.clone();
        match tokio::task::spawn_blocking(move || f(actions.as_ref())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ActionError::Conflict(m))) => Err(UiError::new(StatusCode::CONFLICT, m)),
            Ok(Err(ActionError::Invalid(m))) => Err(UiError::bad_request(m)),
            Ok(Err(ActionError::Failed(m))) => Err(UiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)),
            Err(e) => Err(UiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the action failed: {e}"))),
        }
    }
}

/// What every page's template sees as `base`.
#[derive(Serialize)]
struct Base {
    lang: &'static str,
    other_lang: &'static str,
    user: Option<String>,
    auth_on: bool,
    can_operate: bool,
    csrf: String,
    /// This page's path and query (where actions return to, and the language toggle's `next`).
    here: String,
    version: &'static str,
}

/// A page to render: its template, the template of its live part (re-fetched on change events),
/// and its own context.
struct Rendered {
    template: &'static str,
    live: Option<&'static str>,
    status: StatusCode,
    ctx: minijinja::Value,
}

impl Rendered {
    fn page(template: &'static str, live: Option<&'static str>, ctx: minijinja::Value) -> Rendered {
        Rendered { template, live, status: StatusCode::OK, ctx }
    }
}

/// An error shown as an HTML page: a status and a detail naming the thing and the place.
#[derive(Debug)]
struct UiError {
    status: StatusCode,
    detail: String,
}

impl UiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> UiError {
        UiError { status, detail: detail.into() }
    }

    fn bad_request(detail: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, detail)
    }

    fn not_found(detail: impl Into<String>) -> UiError {
        UiError::new(StatusCode::NOT_FOUND, detail)
    }

    fn forbidden(detail: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, detail)
    }

    fn title_key(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "err_bad_request",
            StatusCode::NOT_FOUND => "err_not_found",
            StatusCode::FORBIDDEN => "err_forbidden",
            StatusCode::CONFLICT => "err_conflict",
            StatusCode::METHOD_NOT_ALLOWED => "err_method",
            _ => "err_internal",
        }
    }
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// What every UI handler gets: the state, the caller, the language, and whether only the live
/// part of the page is asked for.
#[derive(Clone)]
struct Req {
    ui: Ui,
    caller: Caller,
    lang: Lang,
    partial: bool,
    here: String,
}

impl FromRequestParts<Ui> for Req {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            plain_error(StatusCode::INTERNAL_SERVER_ERROR, "the request carries no caller (the auth layer is missing)")
        })?;
        let query = parts.uri.query().unwrap_or("");
        let partial = query.split('&').any(|kv| kv == "partial=1");
        let here = match parts.uri.query() {
            Some(q) => {
                let kept: Vec<&str> = q.split('&').filter(|kv| *kv != "partial=1").collect();
                if kept.is_empty() {
                    parts.uri.path().to_string()
                } else {
                    format!("{}?{}", parts.uri.path(), kept.join("&"))
                }
            }
            None => parts.uri.path().to_string(),
        };
        Ok(Req { ui: ui.clone(), caller, lang: Lang::of(&parts.headers), partial, here })
    }
}

impl Req {
    fn respond(&self, page: Result<Rendered, UiError>) -> Response {
        self.ui.respond(self, page)
    }

    /// An action's checks: the caller may operate and sent this session's CSRF token.
    fn may_act(&self, form: &BTreeMap<String, String>, headers: &HeaderMap) -> Result<(), UiError> {
        let sent = form
            .get("csrf")
            .map(String::as_str)
            .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
            .unwrap_or("");
        if !self.caller.check_csrf(sent) {
            return Err(UiError::forbidden(self.ui.text(self.lang, "err_csrf")));
        }
        if !self.caller.may(Role::Operator) {
            return Err(UiError::forbidden(self.ui.text(self.lang, "err_role")));
        }
        Ok(())
    }
}

/// Where a form returns to: its `next` field when it is a path on this server, else `fallback`.
fn back_to(form: &BTreeMap<String, String>, fallback: &str) -> Redirect {
    let next = form.get("next").map(String::as_str).filter(|n| is_local_path(n)).unwrap_or(fallback);
    Redirect::to(next)
}

fn is_local_path(p: &str) -> bool {
    p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.chars().any(char::is_control)
}

/// `/ui/lang?to=zh&next=/dags/x`: remembers the language in a cookie and goes back.
async fn set_lang(axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>) -> Response {
    let lang = q.get("to").and_then(|t| Lang::parse(t)).unwrap_or(Lang::En);
    let next = q.get("next").map(String::as_str).filter(|n| is_local_path(n)).unwrap_or("/");
    let cookie = format!("lang={}; Path=/; Max-Age=31536000; SameSite=Lax", lang.code());
    let mut resp = Redirect::to(next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn plain_error(status: StatusCode, detail: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>{}</title><h1>{}</h1><p>{}</p><p><a href=\"/\">rhaiflow</a></p>",
        status.as_u16(),
        status,
        html_escape(detail)
    );
    (status, Html(body)).into_response()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn req_of(ui: &Ui, caller: Option<Caller>, headers: &HeaderMap, here: &str) -> Option<Req> {
    Some(Req { ui: ui.clone(), caller: caller?, lang: Lang::of(headers), partial: false, here: here.to_string() })
}

/// A path no page serves: an HTML 404 page.
pub async fn not_found(ui: Ui, req: Request) -> Response {
    let detail = format!("no page `{}`", req.uri().path());
    match req_of(&ui, req.extensions().get::<Caller>().cloned(), req.headers(), req.uri().path()) {
        Some(r) => ui.error_page(&r, UiError::not_found(detail)),
        None => plain_error(StatusCode::NOT_FOUND, &detail),
    }
}

/// A page served, but not for this method.
pub async fn method_not_allowed(ui: Ui, req: Request) -> Response {
    let detail = format!("`{} {}` is not served", req.method(), req.uri().path());
    match req_of(&ui, req.extensions().get::<Caller>().cloned(), req.headers(), req.uri().path()) {
        Some(r) => ui.error_page(&r, UiError::new(StatusCode::METHOD_NOT_ALLOWED, detail)),
        None => plain_error(StatusCode::METHOD_NOT_ALLOWED, &detail),
    }
}

/// An error answer that is not an HTML page yet (axum's own rejections: a bad path segment, a
/// form that does not read) as one.
pub async fn as_error_page(ui: &Ui, resp: Response, caller: Option<Caller>, headers: &HeaderMap) -> Response {
    let status = resp.status();
    let is_html = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let is_stream =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_html || is_stream || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&bytes).trim().to_string();
    match req_of(ui, caller, headers, "/") {
        Some(r) => ui.error_page(&r, UiError::new(status, detail)),
        None => plain_error(status, &detail),
    }
}
