//! The web API's actions through the service layer (`web::Actions`), and the server's wiring:
//! `App::serve_web` (run by `rhaiflow webserver`, and by `standalone` in the same process).

use super::{App, ClearRequest, NewUser, UserError};
use crate::config::{WebAuth, WebserverConfig};
use crate::model::{DagRunState, TaskState, TiKey};
use crate::operators::{TriggerError, TriggerRequest};
use crate::store::{DagRunRow, Store, StoreError, TiChange, TiRow, WebUserRow};
use crate::web::{ActionError, Actions, ClearTasks, Web, WebSettings};
use anyhow::Context;
use chrono::Utc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// `web::Actions` over an `App` of its own (the server's threads share it) and the store.
struct AppActions {
    app: App,
    store: Store,
}

fn failed(e: anyhow::Error) -> ActionError {
    ActionError::Invalid(format!("{e:#}"))
}

impl Actions for AppActions {
    fn trigger(&self, req: &TriggerRequest) -> Result<DagRunRow, ActionError> {
        // The DAG as the store recorded it (a running scheduler keeps it current), not a re-parse
        // of the folder per request; the scheduler is woken through its socket.
        match self.app.run_trigger(&self.store, true).trigger(req, Utc::now()) {
            Ok(t) => Ok(t.run),
            Err(TriggerError::AlreadyExists(run)) => Err(ActionError::Conflict(format!(
                "DAGRun with DAG ID: '{}' and DAGRun ID: '{}' already exists (logical date {})",
                run.dag_id,
                run.run_id,
                run.logical_date.to_rfc3339()
            ))),
            Err(TriggerError::Refused(m)) => Err(ActionError::Invalid(m)),
        }
    }

    fn set_paused(&self, dag_id: &str, paused: bool) -> Result<(), ActionError> {
        let found =
            self.store.write(|tx| tx.set_paused(dag_id, paused)).map_err(|e| ActionError::Failed(e.to_string()))?;
        if !found {
            return Err(ActionError::Invalid(format!("no DAG `{dag_id}`")));
        }
        self.app.wake_scheduler();
        Ok(())
    }

    fn clear(&self, req: &ClearTasks) -> Result<Vec<TiRow>, ActionError> {
        let mut clear = ClearRequest {
            dag_id: req.dag_id.clone(),
            task_regex: req.task_ids.as_ref().map(|ids| {
                let alternatives: Vec<String> = ids.iter().map(|t| regex::escape(t)).collect();
                format!("^(?:{})$", alternatives.join("|"))
            }),
            downstream: req.include_downstream,
            start: req.start,
            end: req.end,
            only_failed: req.only_failed,
        };
        if let Some(run_id) = &req.run_id {
            let run = self
                .store
                .read(|tx| tx.dag_run(&req.dag_id, run_id))
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let Some(run) = run else { return Err(ActionError::Invalid(format!("no run `{run_id}`"))) };
            clear.start = Some(run.logical_date);
            clear.end = Some(run.logical_date);
        }
        let now = Utc::now();
        let selected = self.app.clear_selection(&clear, now).map_err(failed)?;
        if !req.dry_run && !selected.is_empty() {
            self.app.clear(&clear, now).map_err(failed)?;
        }
        Ok(selected)
    }

    fn mark(&self, key: &TiKey, to: TaskState) -> Result<(), ActionError> {
        self.app.mark_task_instance(key, to, Utc::now()).map_err(failed)
    }

    fn set_run_state(&self, dag_id: &str, run_id: &str, to: DagRunState) -> Result<(), ActionError> {
        if to == DagRunState::Queued {
            let req = ClearTasks {
                dag_id: dag_id.into(),
                run_id: Some(run_id.into()),
                only_failed: false,
                ..ClearTasks::default()
            };
            return self.clear(&req).map(|_| ());
        }
        // As Airflow's `set_dag_run_state_to_success/failed`: `success` marks every task instance
        // success (failed ones too); `failed` fails the running ones and skips the other
        // unfinished ones; then the run takes the state.
        let now = Utc::now();
        let done = self
            .store
            .write(|tx| -> Result<bool, StoreError> {
                let Some(run) = tx.dag_run(dag_id, run_id)? else { return Ok(false) };
                for ti in tx.task_instances_of_run(dag_id, run_id)? {
                    let ti_to = match to {
                        DagRunState::Success if ti.state != TaskState::Success => TaskState::Success,
                        DagRunState::Success => continue,
                        _ if ti.state.is_finished() => continue,
                        _ if ti.state == TaskState::Running => TaskState::Failed,
                        _ => TaskState::Skipped,
                    };
                    tx.set_ti_state(
                        &ti.key,
                        ti.state,
                        ti_to,
                        &TiChange { end_date: Some(now), ..TiChange::default() },
                    )?;
                }
                if run.state != to {
                    tx.set_run_state(dag_id, run_id, run.state, to, now)?;
                }
                Ok(true)
            })
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        if !done {
            return Err(ActionError::Invalid(format!("no run `{run_id}` of DAG `{dag_id}`")));
        }
        self.app.wake_scheduler();
        Ok(())
    }

    fn log_path(&self, key: &TiKey, try_number: u32) -> PathBuf {
        self.app.worker_settings().log_path(key, try_number)
    }

    fn create_user(&self, username: &str, role: &str, password: &str) -> Result<WebUserRow, ActionError> {
        let new = NewUser { username, role, password };
        self.app.create_user(&self.store, &new, Utc::now()).map_err(user_error)
    }

    fn delete_user(&self, username: &str) -> Result<(), ActionError> {
        self.app.delete_user(&self.store, username).map_err(user_error)
    }
}

fn user_error(e: UserError) -> ActionError {
    match e {
        UserError::Exists(_) => ActionError::Conflict(e.to_string()),
        UserError::Unknown(_) | UserError::Invalid(_) => ActionError::Invalid(e.to_string()),
        UserError::Store(e) => ActionError::Failed(e.to_string()),
    }
}

/// Listening beyond loopback without auth is refused, unless the configuration says it is meant.
pub fn refuse_public_without_auth(config: &WebserverConfig, addr: SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || config.auth != WebAuth::None {
        return Ok(());
    }
    if config.allow_public_without_auth {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} without authentication: anyone who can reach it could trigger and clear runs; \
         set `[webserver] auth = \"password\"` (and add users with `rhaiflow users create`), bind 127.0.0.1 \
         (`[webserver] bind`), or set `[webserver] allow_public_without_auth = true`"
    )
}

impl App {
    /// The web server on `addr` until `shutdown` completes: a future to run on a tokio runtime
    /// (the `webserver` command's own, or `standalone`'s beside the scheduler).
    pub fn serve_web(
        &self,
        store: &Store,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        refuse_public_without_auth(&self.config.webserver, addr)?;
        if !addr.ip().is_loopback() && self.config.webserver.auth == WebAuth::None {
            tracing::warn!(
                address = %addr,
                "serving without authentication beyond loopback (`[webserver] allow_public_without_auth = true`): \
                 anyone who can reach this address can trigger and clear runs"
            );
        }
        let actions = AppActions { app: App::new(self.config.clone())?, store: store.clone() };
        let settings = WebSettings {
            heartbeat_timeout: std::time::Duration::from_secs_f64(self.config.scheduler.task_heartbeat_timeout),
            dags_folder: self.config.core.dags_folder.clone(),
            password_auth: self.config.webserver.auth == WebAuth::Password,
            loopback_hosts_only: self.config.webserver.auth != WebAuth::Password && addr.ip().is_loopback(),
        };
        let web = Web { store: store.clone(), actions: Arc::new(actions), settings: Arc::new(settings) };
        let config = self.config.webserver.clone();
        Ok(async move {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(address = %local, "web server listening: REST API at http://{local}/api/v1");
            let limits = serve_limits(&config);
            crate::web::serve(listener, web, limits, shutdown).await.context("the web server failed")?;
            Ok(())
        })
    }
}

/// `[webserver] header_timeout` and `max_connections`, for every HTTP server of this process.
pub fn serve_limits(config: &crate::config::WebserverConfig) -> crate::web::serve::Limits {
    crate::web::serve::Limits {
        header_timeout: std::time::Duration::from_secs_f64(config.header_timeout),
        max_connections: config.max_connections as usize,
    }
}
