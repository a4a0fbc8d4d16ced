//! Hot reload: a scheduler keeps the dags folder's state (`loader::Folder`), watches the folder
//! (`loader::watch`) and rescans it on every burst of events and every `[core] rescan_interval`.
//! What a rescan changed is recorded in one store transaction (new versions, DAGs a file no
//! longer declares, import errors set and cleared, `on_import_error` alerts); the scheduler
//! follows the store's change log, so the next pass creates runs from the new versions while runs
//! already going keep the version they pinned.

use super::App;
use crate::loader::watch::{FolderWatch, Wake, identity};
use crate::loader::{Changes, Folder, LoadedDag, render_import_error};
use crate::model::Event;
use crate::scheduler::{DagVersion, record_version};
use crate::store::{NewAlert, Store, Tx};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender as Sender;

/// What one reload recorded, for the log.
#[derive(Default)]
pub struct Reloaded {
    pub changes: Changes,
    /// DAGs made inactive (their file is gone or no longer declares them).
    pub retired: Vec<String>,
}

pub fn version_of(d: &LoadedDag) -> DagVersion {
    DagVersion { spec: d.spec.clone(), json: d.json.clone(), hash: d.version_hash.clone(), source: d.source.clone() }
}

impl App {
    /// Rescans `folder` and records what changed. `first`: the folder state is new (a process
    /// starting), so DAGs recorded from files that are gone are retired and the import errors
    /// are replaced as a whole.
    pub fn reload(
        &self,
        store: &Store,
        folder: &mut Folder,
        first: bool,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Reloaded> {
        let changes = folder.rescan(self.loader(), &self.eval_context(now))?;
        if !first && changes.is_empty() {
            return Ok(Reloaded { changes, retired: Vec::new() });
        }
        let versions: Vec<DagVersion> = changes.versions.iter().map(version_of).collect();
        // The whole folder's files and errors only for the first load (later ones record changes).
        let (files, all_errors): (Vec<String>, Vec<(String, String)>) = if first {
            (
                folder.files().map(str::to_string).collect(),
                folder.import_errors().map(|e| (e.file.clone(), render_import_error(e))).collect(),
            )
        } else {
            Default::default()
        };
        let channels = &self.config.alerts.on_import_error;
        let paused = self.config.core.dags_are_paused_at_creation;
        let retired = store.write(|tx| -> anyhow::Result<Vec<String>> {
            let before: HashMap<String, String> =
                if channels.is_empty() { HashMap::new() } else { tx.import_errors()?.into_iter().collect() };
            for d in &versions {
                record_version(tx, d, now, paused)?;
            }
            let mut retired = Vec::new();
            for (file, declared) in &changes.loaded {
                retired.extend(tx.retire_file_dags(file, declared)?);
            }
            for file in &changes.deleted {
                retired.extend(tx.retire_file_dags(file, &[])?);
            }
            let told: Vec<(String, String)> = if first {
                retired.extend(tx.retire_dags_outside(&files)?);
                tx.replace_import_errors(&all_errors, now)?;
                all_errors
            } else {
                for file in &changes.cleared {
                    tx.clear_import_error(file)?;
                }
                let mut set = Vec::new();
                for e in &changes.errors {
                    let message = render_import_error(e);
                    tx.set_import_error(&e.file, &message, now)?;
                    set.push((e.file.clone(), message));
                }
                set
            };
            for (file, message) in told.iter().filter(|(f, m)| before.get(f) != Some(m)) {
                import_error_alerts(tx, channels, file, message, now)?;
            }
            Ok(retired)
        })?;
        Ok(Reloaded { changes, retired })
    }

    /// The reload thread of a scheduler: waits on the folder watch (or the rescan timer), reloads,
    /// logs what changed, and wakes the event loop. Returns when the watch is stopped.
    pub fn reload_until_stopped(
        &self,
        store: &Store,
        mut folder: Folder,
        mut watch: FolderWatch,
        events: &Sender<Event>,
    ) {
        let every = Duration::from_secs_f64(self.config.core.rescan_interval);
        let path = self.config.core.dags_folder.clone();
        let mut watched = identity(&path);
        let mut failing: Option<String> = None;
        loop {
            // While the folder is gone, look for it every second rather than every rescan interval.
            let timeout = if watched.is_none() { every.min(Duration::from_secs(1)) } else { every };
            if watch.wait(timeout) == Wake::Stop {
                return;
            }
            let now = identity(&path);
            if now != watched && now.is_some() {
                // Moved away and made anew (or back after being gone): the old watch follows the
                // old folder, so watch this one.
                if let Some(reason) = watch.rewatch(&path) {
                    tracing::warn!(reason, "cannot watch the dags folder again; the periodic rescan picks changes up");
                }
            }
            watched = now;
            let started = std::time::Instant::now();
            match self.reload(store, &mut folder, false, Utc::now()) {
                Ok(r) => {
                    if failing.take().is_some() {
                        tracing::info!("the dags folder loads again");
                    }
                    if !(r.changes.is_empty() && r.retired.is_empty()) {
                        log_reload(&r, started.elapsed());
                        let _ = events.send(Event::Wake);
                    }
                }
                // A folder that is gone (unmounted, moved) retires nothing: its DAGs stay as they
                // were until it is back. Said once, not at every try.
                Err(e) => {
                    let error = format!("{e:#}");
                    if failing.as_ref() != Some(&error) {
                        tracing::warn!(
                            error,
                            "cannot reload the dags folder; its DAGs stay as they are until it loads again"
                        );
                        failing = Some(error);
                    }
                }
            }
        }
    }
}

/// `[alerts] on_import_error`: one row per channel for a file whose error is new or changed.
pub fn import_error_alerts(
    tx: &Tx,
    channels: &[String],
    file: &str,
    message: &str,
    now: DateTime<Utc>,
) -> crate::store::StoreResult<()> {
    for channel in channels {
        let alert = NewAlert {
            event: "import_error".into(),
            dag_id: file.to_string(),
            run_id: String::new(),
            task_id: None,
            try_number: None,
            channel: channel.clone(),
            payload: serde_json::json!({ "file": file, "error": message }),
            held: false,
        };
        tx.insert_alert(&alert, now)?;
    }
    Ok(())
}

fn log_reload(r: &Reloaded, took: Duration) {
    let ms = took.as_secs_f64() * 1000.0;
    for d in &r.changes.versions {
        tracing::info!(dag_id = %d.spec.dag_id, version = d.short_hash(), file = %d.spec.fileloc, ms, "DAG version recorded");
    }
    for e in &r.changes.errors {
        let first = e.diagnostics.first();
        let line = first.and_then(|d| d.pos.as_ref().map(|p| p.line));
        let error = first.map(|d| d.message.as_str()).unwrap_or("unknown error");
        tracing::warn!(file = %e.file, line, error, "import error: the file did not load; the last good version of its DAGs, if it had one, stays scheduled");
    }
    for file in &r.changes.cleared {
        tracing::info!(%file, "import error cleared");
    }
    for dag_id in &r.retired {
        tracing::info!(%dag_id, "DAG inactive: its file is gone or no longer declares it; its history is kept");
    }
}
