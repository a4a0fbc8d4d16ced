//! The HTTP server: Airflow 2's stable REST API under `/api/v1` (same paths, JSON field names,
//! status codes, RFC 7807 problem bodies) and the web UI everywhere else (`ui`: HTML pages, HTML
//! error pages). Reads go to the store; actions that need the service layer's rules (trigger,
//! clear, mark, pause) go through [`Actions`], which `app` implements. No SQL and no scheduling
//! rules here.

mod api;
pub mod auth;
pub mod health;
mod json;
mod openapi;
mod problem;
pub mod serve;
mod ui;

pub use openapi::document as openapi_document;
pub use problem::Problem;

use crate::model::{DagRunState, TaskState, TiKey};
use crate::operators::TriggerRequest;
use crate::store::{DagRunRow, Store, TiRow, WebUserRow};
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the API asks of the service layer (implemented by `app`, as `operators::Notify` is by
/// `alert`). Calls block (they may open the store and load the dags folder): the API runs them on
/// the blocking pool.
pub trait Actions: Send + Sync {
    /// A manual run of the DAG as the store recorded it; a running scheduler is woken.
    fn trigger(&self, req: &TriggerRequest) -> Result<DagRunRow, ActionError>;
    fn set_paused(&self, dag_id: &str, paused: bool) -> Result<(), ActionError>;
    /// The task instances the request selects; cleared unless `dry_run`.
    fn clear(&self, req: &ClearTasks) -> Result<Vec<TiRow>, ActionError>;
    /// Marks one task instance `success`, `failed` or `skipped` by hand.
    fn mark(&self, key: &TiKey, to: TaskState) -> Result<(), ActionError>;
    /// Sets a run `success` / `failed` (its unfinished task instances with it) or `queued` (cleared).
    fn set_run_state(&self, dag_id: &str, run_id: &str, to: DagRunState) -> Result<(), ActionError>;
    /// Where a try's log file is.
    fn log_path(&self, key: &TiKey, try_number: u32) -> PathBuf;
    /// Adds a web user (`role`: viewer, operator or admin); a taken name is a conflict.
    fn create_user(&self, username: &str, role: &str, password: &str) -> Result<WebUserRow, ActionError>;
    fn delete_user(&self, username: &str) -> Result<(), ActionError>;
}

/// What `clearTaskInstances` (and a run's `clear`) selects.
#[derive(Debug, Clone, Default)]
pub struct ClearTasks {
    pub dag_id: String,
    /// Only these tasks (all when `None`).
    pub task_ids: Option<Vec<String>>,
    /// Only this run.
    pub run_id: Option<String>,
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    pub end: Option<chrono::DateTime<chrono::Utc>>,
    pub only_failed: bool,
    pub include_downstream: bool,
    pub dry_run: bool,
}

/// Why an action was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// The thing exists already (a run at that date or with that id): 409.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be done as asked: 400.
    #[error("{0}")]
    Invalid(String),
    /// Something broke on our side: 500.
    #[error("{0}")]
    Failed(String),
}

/// What the server reads besides the store.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// A scheduler whose heartbeat is older is reported `unhealthy`.
    pub heartbeat_timeout: Duration,
    /// Where DAG files are, for `dagSources` of versions that did not keep their text.
    pub dags_folder: PathBuf,
    /// `[webserver] auth = "password"`: users log in (see [`auth`]).
    pub password_auth: bool,
    /// Serving on loopback without auth: a request must name a loopback host (`Host`), so a web
    /// page whose domain resolves to 127.0.0.1 (DNS rebinding) cannot use the API.
    pub loopback_hosts_only: bool,
}

/// The server's shared state: cheap to clone.
#[derive(Clone)]
pub struct Web {
    pub store: Store,
    pub actions: Arc<dyn Actions>,
    pub settings: Arc<WebSettings>,
}

/// The whole server's router: the API (each route behind its role's guard; problem bodies for
/// every error under `/api/`), the login page, the UI (HTML pages and error pages everywhere
/// else), and the layer that identifies every caller.
pub fn router(web: Web) -> Router {
    app(web).0
}

/// The router and the UI's state (whose event bus is closed at shutdown so event streams end).
fn app(web: Web) -> (Router, ui::Ui) {
    let auth = if web.settings.password_auth {
        auth::Auth::with_passwords(web.store.clone())
    } else if web.settings.loopback_hosts_only {
        auth::Auth::loopback_only()
    } else {
        auth::Auth::new()
    };
    let mut api = Router::new();
    for route in api::routes() {
        let role = route.role;
        let guard = axum::middleware::from_fn(move |req, next| auth::require(role, req, next));
        let handler = route.handler.route_layer(axum::middleware::from_fn(problem::needs_json));
        api = api.route(route.path, handler.route_layer(guard));
    }
    let login = Router::new()
        .route("/login", axum::routing::get(auth::login_form).post(auth::login_submit))
        .route("/logout", axum::routing::get(auth::logout_form).post(auth::logout))
        .with_state(auth.clone());
    let api = api.with_state(web.clone());
    // Prometheus scrapes `/metrics` as a viewer (basic auth when auth is on).
    let metrics = Router::new()
        .route(
            "/metrics",
            axum::routing::get(metrics_text)
                .route_layer(axum::middleware::from_fn(|req, next| auth::require(auth::Role::Viewer, req, next))),
        )
        .with_state(web.clone());
    let (pages, ui) = ui::router(web);
    let (for_404, for_405) = (ui.clone(), ui.clone());
    let router = api
        .merge(login)
        .merge(metrics)
        .merge(pages)
        .fallback(move |req: Request| not_found(for_404.clone(), req))
        .method_not_allowed_fallback(move |req: Request| method_not_allowed(for_405.clone(), req))
        .layer(axum::middleware::from_fn_with_state(ui.clone(), error_bodies))
        .layer(axum::middleware::from_fn_with_state(auth, auth::identify))
        .layer(axum::middleware::map_response(no_framing));
    (router, ui)
}

/// `/metrics`: this process's metrics and the store's counts, in the OpenMetrics text format.
async fn metrics_text(State(web): State<Web>) -> Response {
    metrics_response(&web.store).await
}

/// This process's metrics with the store's counts, or 503 when the store cannot be read.
async fn metrics_response(store: &Store) -> Response {
    match store.read_async(|tx| tx.metrics_counts()).await {
        Ok(counts) => (
            [(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            crate::metrics::global().encode(&counts),
        )
            .into_response(),
        Err(e) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("the store cannot be read: {e}\n")).into_response()
        }
    }
}

/// No page of ours may be framed by another site (clickjacking a Trigger or Mark button): with
/// auth off, a page on any site could frame `localhost`.
async fn no_framing(mut resp: Response) -> Response {
    use axum::http::HeaderValue;
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(axum::http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    h.insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn is_api(uri: &axum::http::Uri) -> bool {
    uri.path() == "/api" || uri.path().starts_with("/api/")
}

async fn not_found(ui: ui::Ui, req: Request) -> Response {
    if is_api(req.uri()) {
        problem::no_route(req.uri().clone()).await.into_response()
    } else {
        ui::not_found(ui, req).await
    }
}

async fn method_not_allowed(ui: ui::Ui, req: Request) -> Response {
    if is_api(req.uri()) {
        problem::method_not_allowed(req.method().clone(), req.uri().clone()).await.into_response()
    } else {
        ui::method_not_allowed(ui, req).await
    }
}

/// Every error answer in its family's shape: a problem body under `/api/`, an HTML page elsewhere
/// (axum's own rejections included).
async fn error_bodies(State(ui): State<ui::Ui>, req: Request, next: Next) -> Response {
    let api = is_api(req.uri());
    let caller = req.extensions().get::<auth::Caller>().cloned();
    let headers = req.headers().clone();
    let resp = next.run(req).await;
    if api { problem::as_problem(resp).await } else { ui::as_error_page(&ui, resp, caller, &headers).await }
}

/// The `(method, path)` of every route served, as the OpenAPI document lists them.
pub fn served_routes() -> Vec<(&'static str, &'static str)> {
    api::routes().into_iter().map(|r| (r.method, r.path)).collect()
}

/// Serves `router(web)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    limits: serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, ui) = app(web);
    // Event streams never end by themselves: the bus ends them when shutdown begins, so the
    // graceful shutdown does not wait on open browser tabs.
    let shutdown = async move {
        shutdown.await;
        ui.bus().close();
    };
    // The peer's address (which limits failed logins per address) comes with each request.
    serve::serve(listener, router, limits, shutdown).await
}
