//! The HTTP server: Airflow 2's stable REST API under `/api/v1` (same paths, JSON field names,
//! status codes, RFC 7807 problem bodies). Reads go to the store; actions that need the service
//! layer's rules (trigger, clear, mark, pause) go through [`Actions`], which `app` implements.
//! No SQL and no scheduling rules here.

mod api;
pub mod auth;
mod json;
mod openapi;
mod problem;

pub use openapi::document as openapi_document;
pub use problem::Problem;

use crate::model::{DagRunState, TaskState, TiKey};
use crate::operators::TriggerRequest;
use crate::store::{DagRunRow, Store, TiRow};
use axum::Router;
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
}

/// The server's shared state: cheap to clone.
#[derive(Clone)]
pub struct Web {
    pub store: Store,
    pub actions: Arc<dyn Actions>,
    pub settings: Arc<WebSettings>,
}

/// The whole server's router: the API and its fallbacks (problem bodies for unknown paths and
/// methods).
pub fn router(web: Web) -> Router {
    let mut api = Router::new();
    for route in api::routes() {
        api = api.route(route.path, route.handler);
    }
    api.fallback(problem::no_route)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(axum::middleware::map_response(problem::as_problem))
        .layer(axum::middleware::from_fn_with_state(auth::Auth::new(), auth::identify))
        .with_state(web)
}

/// The `(method, path)` of every route served, as the OpenAPI document lists them.
pub fn served_routes() -> Vec<(&'static str, &'static str)> {
    api::routes().into_iter().map(|r| (r.method, r.path)).collect()
}

/// Serves `router(web)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(web)).with_graceful_shutdown(shutdown).await
}
