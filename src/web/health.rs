//! A scheduler's own small HTTP server (`[scheduler] health_check_bind`), as Airflow 2's scheduler
//! health check server (`[scheduler] enable_health_check`, port 8974): `GET /health` says whether
//! this scheduler's heartbeat in the store is fresh, and `GET /metrics` serves this process's
//! metrics, so a plain `scheduler` (no web server) can be probed by an orchestrator and scraped by
//! Prometheus. No pages, no API, no auth: bind it to loopback or a private network.

use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A heartbeat older than this is unhealthy: Airflow's `scheduler_health_check_threshold`
/// default. A scheduler heartbeats at least every 10 s.
pub const HEALTH_THRESHOLD: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Health {
    store: Store,
    runner_id: String,
}

/// The router for a scheduler with runner id `runner_id`.
pub fn router(store: Store, runner_id: String) -> Router {
    Router::new()
        .route("/health", axum::routing::get(health))
        .route(
            "/metrics",
            axum::routing::get(|State(h): State<Health>| async move { super::metrics_response(&h.store).await }),
        )
        .with_state(Health { store, runner_id })
        .fallback(|| async { (StatusCode::NOT_FOUND, "this server answers /health and /metrics only\n") })
}

/// Whether a heartbeat at `at` is fresh at `now`.
pub fn is_healthy(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    at.is_some_and(|at| (now - at).to_std().map_or(true, |age| age <= HEALTH_THRESHOLD))
}

async fn health(State(h): State<Health>) -> Response {
    let id = h.runner_id.clone();
    let runner = h.store.read_async(move |tx| Ok(tx.runners()?.into_iter().find(|r| r.runner_id == id))).await;
    let (status, heartbeat) = match runner {
        Ok(Some(r)) if r.stopped_at.is_none() && is_healthy(Some(r.heartbeat_at), Utc::now()) => {
            ("healthy", Some(r.heartbeat_at))
        }
        Ok(Some(r)) => ("unhealthy", Some(r.heartbeat_at)),
        Ok(None) => ("unhealthy", None),
        Err(e) => {
            let body = serde_json::json!({ "status": "unhealthy", "error": format!("the store cannot be read: {e}") });
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
    };
    let code = if status == "healthy" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": status,
        "latest_scheduler_heartbeat": heartbeat.map(|t| t.to_rfc3339()),
    });
    (code, axum::Json(body)).into_response()
}

/// Serves the health router on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    runner_id: String,
    limits: super::serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    super::serve::serve(listener, router(store, runner_id), limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_healthy_up_to_the_threshold() {
        let now = Utc::now();
        assert!(is_healthy(Some(now), now));
        assert!(is_healthy(Some(now - chrono::Duration::seconds(30)), now));
        assert!(!is_healthy(Some(now - chrono::Duration::seconds(31)), now));
        assert!(!is_healthy(None, now));
        // A heartbeat from a clock ahead of ours is not stale.
        assert!(is_healthy(Some(now + chrono::Duration::seconds(5)), now));
    }
}
