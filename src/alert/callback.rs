//! Callbacks: the `on_failure_callback` / `on_retry_callback` / `on_success_callback` closures of
//! tasks and the `on_failure_callback` / `on_success_callback` of DAGs (the run's end), run by
//! the deliverer from their outbox row `callback:<id>`, written with the state change. So a
//! callback runs off the scheduling path, after the state it reports is in the store, from the
//! DAG version its run is pinned to (`script::TaskScripts`, as task closures), on a blocking
//! thread, bounded by `[core] task_script_timeout`. It gets one argument, `ctx`: the alert context
//! ([`callback_context`]), and may send through a channel (`alerts::send`), read XComs of its run,
//! `[variables]`, and make HTTP calls. A callback that throws or runs out of time is recorded
//! (the row `failed` with the error) and never retried; it changes no task or run state.

use super::message::{callback_context, context_of, log_tail};
use super::notify::Notifier;
use super::send::mask;
use crate::model::CallbackRef;
use crate::operators::Origin;
use crate::operators::closure::{http_request, send_text};
use crate::script::{CallArg, ClosureCall, HttpRequest, HttpResponse, TaskScripts, TaskServices, VersionSource};
use crate::store::{AlertOutcome, OutboxRow, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What callbacks may reach, from the config.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// `[core] task_script_timeout`: one callback's limit.
    pub timeout: Duration,
    /// `[webserver] base_url`, for `ctx.log_url`.
    pub base_url: Option<String>,
    /// `[variables]`.
    pub variables: BTreeMap<String, String>,
    /// Texts never shown (channels' secrets, secret variables).
    pub secrets: Vec<String>,
}

/// Runs callback rows.
pub struct CallbackRunner {
    store: Store,
    scripts: Arc<TaskScripts>,
    notifier: Notifier,
    http: reqwest::Client,
    settings: CallbackSettings,
}

impl CallbackRunner {
    /// `scripts` is the process's closure host (the worker's), so versions compile once.
    pub fn new(store: Store, scripts: Arc<TaskScripts>, notifier: Notifier, settings: CallbackSettings) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("rhaiflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        CallbackRunner { store, scripts, notifier, http, settings }
    }

    /// A callback's limit; its lease lasts a little longer.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Runs the callback of `row` once: `Sent` when it returned, `Failed` with its error otherwise.
    pub async fn run(&self, row: &OutboxRow) -> AlertOutcome {
        let outcome = match self.call(row).await {
            Ok(()) => AlertOutcome::Sent { at: chrono::Utc::now() },
            Err(error) => AlertOutcome::Failed { error: mask(&error, &self.settings.secrets) },
        };
        let field = field_of(&row.channel);
        let note = match &outcome {
            AlertOutcome::Failed { error } => format!("{field} failed: {error}"),
            _ => format!("{field} ran"),
        };
        match log_path(row) {
            Some(path) => crate::executor::log_line(&path, &note).await,
            None => tracing::info!(dag_id = %row.dag_id, run_id = %row.run_id, "{note}"),
        }
        if let AlertOutcome::Failed { error } = &outcome {
            tracing::warn!(alert_id = row.id, dag_id = %row.dag_id, run_id = %row.run_id, error = %error, "{field} failed");
        }
        outcome
    }

    async fn call(&self, row: &OutboxRow) -> Result<(), String> {
        let id = row.channel.strip_prefix("callback:").unwrap_or(&row.channel).to_string();
        let (dag_id, run_id) = (row.dag_id.clone(), row.run_id.clone());
        let run = self
            .store
            .read_async(move |tx| tx.dag_run(&dag_id, &run_id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("run `{}` of DAG `{}` is gone", row.run_id, row.dag_id))?;
        let tail = match log_path(row) {
            Some(p) => log_tail(super::message::stored_log(&self.store, row).await, &p)
                .await
                .map(|t| mask(&t, &self.settings.secrets)),
            None => None,
        };
        let ctx = context_of(row, self.settings.base_url.as_deref(), tail);
        let call = ClosureCall {
            callback: CallbackRef(id),
            args: vec![CallArg::Context(callback_context(&ctx))],
            timeout: self.settings.timeout,
        };
        let services: Arc<dyn TaskServices> = Arc::new(CallbackServices {
            store: self.store.clone(),
            dag_id: row.dag_id.clone(),
            run_id: row.run_id.clone(),
            variables: self.settings.variables.clone(),
            http: self.http.clone(),
            notifier: self.notifier.clone(),
            handle: tokio::runtime::Handle::current(),
            log_path: log_path(row),
            secrets: self.settings.secrets.clone(),
            origin: Origin {
                dag_id: row.dag_id.clone(),
                run_id: row.run_id.clone(),
                task_id: row.task_id.clone(),
                try_number: row.try_number,
            },
        });
        let (scripts, store, version) = (self.scripts.clone(), self.store.clone(), run.version_hash.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let load = {
                let version = version.clone();
                move || -> Result<Option<VersionSource>, String> {
                    let found = store.read(|tx| tx.dag_version_source(&version)).map_err(|e| e.to_string())?;
                    Ok(found.map(|k| VersionSource::kept(k.file, k.text, k.modules)))
                }
            };
            scripts.call(&version, &load, call, services)
        })
        .await;
        match joined {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(failure)) => Err(failure.to_string()),
            Err(_) => Err("internal error while running the callback (a bug in rhaiflow)".into()),
        }
    }
}

/// `on_failure_callback` from `callback:etl.load.on_failure_callback#anon$…`.
fn field_of(channel: &str) -> &str {
    let id = channel.strip_prefix("callback:").unwrap_or(channel);
    let before = id.split('#').next().unwrap_or(id);
    before.rsplit('.').next().unwrap_or(before)
}

fn log_path(row: &OutboxRow) -> Option<PathBuf> {
    row.payload.get("log_path").and_then(|p| p.as_str()).map(PathBuf::from)
}

/// What a callback may reach: its run's XComs, `[variables]`, its try's log, HTTP, the channels.
struct CallbackServices {
    store: Store,
    dag_id: String,
    run_id: String,
    variables: BTreeMap<String, String>,
    http: reqwest::Client,
    notifier: Notifier,
    handle: tokio::runtime::Handle,
    log_path: Option<PathBuf>,
    secrets: Vec<String>,
    /// The try (or run) the callback is for: what its `alerts::send` counts under.
    origin: Origin,
}

impl TaskServices for CallbackServices {
    fn xcom_pull(&self, task_id: &str, key: &str) -> Result<Option<serde_json::Value>, String> {
        self.store.read(|tx| tx.xcom(&self.dag_id, &self.run_id, task_id, key)).map_err(|e| e.to_string())
    }

    fn xcom_push(&self, key: &str, _value: serde_json::Value) -> Result<(), String> {
        Err(format!("a callback cannot push XComs (`{key}`): its task has finished"))
    }

    fn variable(&self, name: &str) -> Option<String> {
        self.variables.get(name).cloned()
    }

    fn log(&self, line: &str) {
        let line = mask(line, &self.secrets);
        match &self.log_path {
            Some(path) => self.handle.block_on(crate::executor::log_line(path, &line)),
            None => {
                tracing::info!(target: "rhaiflow::callback", dag_id = %self.dag_id, run_id = %self.run_id, "{line}")
            }
        }
    }

    fn http(&self, request: HttpRequest) -> Result<HttpResponse, String> {
        http_request(&self.http, &self.handle, request)
    }

    fn send_alert(&self, channel: &str, title: Option<&str>, text: &str) -> Result<String, String> {
        send_text(&self.notifier, &self.handle, &self.origin, channel, title, text)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn callback_fields_are_read_from_their_ids() {
        assert_eq!(super::field_of("callback:etl.load.on_failure_callback#anon$12ab"), "on_failure_callback");
        assert_eq!(super::field_of("callback:etl.on_success_callback#anon$1"), "on_success_callback");
    }
}
