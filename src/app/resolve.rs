//! Which DAG a command that acts on one DAG works on: the store says which file declares it, and
//! only that file is parsed; a file that broke gives the last good version recorded, with a
//! warning; a DAG whose file was deleted is inactive. The folder is parsed only for a DAG the
//! store has not recorded (a new file no scheduler has seen) or whose file no longer declares it.

use super::App;
use crate::loader::{DagBag, LoadedDag};
use crate::model::DagSpec;
use crate::scheduler::{DagVersion, PinnedDag, record_version};
use crate::script::{ScriptProgram, VersionSource};
use crate::store::{DagRecord, Store, StoreError};
use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A DAG as a command acting on it sees it.
pub struct ResolvedDag {
    pub version: DagVersion,
    pub pinned: Arc<PinnedDag>,
    /// The compiled file, when this command parsed it and the DAG has closures (`tasks test`
    /// calls them from here; runs call them from the version's stored source).
    pub program: Option<Arc<ScriptProgram>>,
}

/// Whether the command records what it parsed in the store (commands that change state do, as
/// they always have; `dags show`, `next-runs` and `tasks test` only read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Yes,
    No,
}

/// Stderr lines for the user, handed to whoever drives the service layer (the CLI prints them).
pub type Notices = Arc<dyn Fn(&str) + Send + Sync>;

impl ResolvedDag {
    fn loaded(dag: &LoadedDag) -> ResolvedDag {
        let version = super::reload::version_of(dag);
        let pinned = Arc::new(PinnedDag::new(dag.spec.clone(), dag.version_hash.clone()));
        ResolvedDag { version, pinned, program: dag.program.clone() }
    }

    pub fn short_hash(&self) -> &str {
        &self.version.hash[..self.version.hash.len().min(12)]
    }
}

impl App {
    /// The DAG `dag_id` for a command that acts on it, parsing at most its own file (see the
    /// module doc). `store`: `None` when there is no database yet (then the folder is parsed).
    pub fn resolve_dag(
        &self,
        store: Option<&Store>,
        dag_id: &str,
        record: Record,
        now: DateTime<Utc>,
    ) -> anyhow::Result<ResolvedDag> {
        let Some(store) = store else { return self.resolve_from_folder(None, dag_id, now) };
        let Some(row) = store.read(|tx| tx.dag_record(dag_id))? else {
            // Not recorded yet (a new file no scheduler has seen): only the folder says which
            // file declares it.
            return self.resolve_from_folder(Some((store, record)), dag_id, now);
        };
        let path = self.config.core.dags_folder.join(&row.fileloc);
        if std::fs::symlink_metadata(&path).is_err() {
            if !row.is_active {
                return Err(inactive(&row).into());
            }
            // The store is behind (no scheduler has noticed the file went): the DAG may have moved
            // to another file, which only the folder can tell.
            return self.resolve_from_folder(Some((store, record)), dag_id, now);
        }
        let bag = self.loader().load_one(&row.fileloc, &self.eval_context(now));
        if let Some(dag) = bag.dags.get(dag_id) {
            if record == Record::Yes {
                self.record_file(store, &row.fileloc, &bag, now)?;
            }
            return Ok(ResolvedDag::loaded(dag));
        }
        let Some(error) = bag.import_errors.first() else {
            // The file loads but no longer declares the DAG: renamed, or moved to another file.
            return self.resolve_from_folder(Some((store, record)), dag_id, now);
        };
        if record == Record::Yes {
            self.record_file(store, &row.fileloc, &bag, now)?;
        }
        let resolved = self.stored_version(store, &row)?;
        let first = error.diagnostics.first();
        let at = first.map(|d| d.location()).unwrap_or_else(|| row.fileloc.clone());
        // One line: the whole error is in `dags list-import-errors`.
        let message = first.and_then(|d| d.message.lines().next()).unwrap_or("does not load");
        self.notice(&format!(
            "warning: {at}: {message}; using the last good version {} of DAG {dag_id}",
            resolved.short_hash()
        ));
        Ok(resolved)
    }

    /// Whether `dag_id` is recorded inactive with its file gone: the reason, for commands that refuse.
    pub fn inactive_reason(&self, store: &Store, dag_id: &str) -> anyhow::Result<Option<DagInactive>> {
        let Some(row) = store.read(|tx| tx.dag_record(dag_id))? else { return Ok(None) };
        let gone = std::fs::symlink_metadata(self.config.core.dags_folder.join(&row.fileloc)).is_err();
        Ok((!row.is_active && gone).then(|| inactive(&row)))
    }

    /// The recorded latest version of a DAG, with its closures' stored source.
    fn stored_version(&self, store: &Store, row: &DagRecord) -> anyhow::Result<ResolvedDag> {
        let hash = &row.latest_version_hash;
        let (json, source) = store
            .read(|tx| -> Result<_, StoreError> { Ok((tx.dag_version_json(hash)?, tx.dag_version_source(hash)?)) })?;
        let Some(json) = json else { bail!("DAG `{}`: its version {hash} is not in the database", row.dag_id) };
        let spec: DagSpec = serde_json::from_str(&json)
            .with_context(|| format!("DAG `{}`: its recorded version {hash} does not read", row.dag_id))?;
        self.version_of(spec, Arc::from(json), hash, source)
    }

    /// A recorded version of a DAG by its hash (`dags show --version`).
    pub fn recorded_version(&self, store: &Store, dag_id: &str, hash: &str) -> anyhow::Result<ResolvedDag> {
        let (json, source) = store
            .read(|tx| -> Result<_, StoreError> { Ok((tx.dag_version_json(hash)?, tx.dag_version_source(hash)?)) })?;
        let Some(json) = json else { bail!("DAG `{dag_id}` has no version {hash}") };
        let spec: DagSpec = serde_json::from_str(&json)
            .with_context(|| format!("DAG `{dag_id}`: its recorded version {hash} does not read"))?;
        self.version_of(spec, Arc::from(json), hash, source)
    }

    fn version_of(
        &self,
        spec: DagSpec,
        json: Arc<str>,
        hash: &str,
        source: Option<crate::store::KeptSource>,
    ) -> anyhow::Result<ResolvedDag> {
        let spec = Arc::new(spec);
        let source = source.map(|k| Arc::new(VersionSource::kept(k.file, k.text, k.modules)));
        let version = DagVersion { spec: spec.clone(), json, hash: hash.to_string(), source };
        let pinned = Arc::new(PinnedDag::new(spec, hash.to_string()));
        Ok(ResolvedDag { version, pinned, program: None })
    }

    /// The whole folder, as before the store knew files: recorded when `store` says so.
    fn resolve_from_folder(
        &self,
        store: Option<(&Store, Record)>,
        dag_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<ResolvedDag> {
        let bag = match store {
            Some((store, Record::Yes)) => self.sync_dags(store, now)?.1,
            _ => self.load_dags(now)?,
        };
        match bag.dags.get(dag_id) {
            Some(dag) => Ok(ResolvedDag::loaded(dag)),
            None => {
                if let Some((store, _)) = store
                    && let Some(reason) = self.inactive_reason(store, dag_id)?
                {
                    return Err(reason.into());
                }
                Err(self.no_dag(&bag, dag_id))
            }
        }
    }

    /// Records what parsing one file found, as a reload records a changed file: its DAGs' versions
    /// (active again), its DAGs it no longer declares inactive, its import error set (with the
    /// `on_import_error` alerts of a new or changed error) or cleared. Other files are untouched.
    fn record_file(&self, store: &Store, file: &str, bag: &DagBag, now: DateTime<Utc>) -> anyhow::Result<()> {
        let versions: Vec<DagVersion> = bag.dags.values().map(super::reload::version_of).collect();
        let error = bag.import_errors.iter().find(|e| e.file == file).map(crate::loader::render_import_error);
        let channels = &self.config.alerts.on_import_error;
        let paused = self.config.core.dags_are_paused_at_creation;
        store.write(|tx| -> anyhow::Result<()> {
            for d in &versions {
                record_version(tx, d, now, paused)?;
            }
            match &error {
                // A broken file keeps its DAGs' last good versions.
                Some(message) => {
                    let before = tx.import_errors()?.into_iter().find(|(f, _)| f == file).map(|(_, m)| m);
                    tx.set_import_error(file, message, now)?;
                    if before.as_ref() != Some(message) {
                        super::reload::import_error_alerts(tx, channels, file, message, now)?;
                    }
                }
                None => {
                    let declared: Vec<String> = versions.iter().map(|d| d.spec.dag_id.clone()).collect();
                    tx.retire_file_dags(file, &declared)?;
                    tx.clear_import_error(file)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The versions and pinned DAG of `dag_id` for a command that changes state (the resolved DAG
    /// recorded), as `load_dag` returned them when it parsed the whole folder.
    pub(super) fn resolve_for_change(
        &self,
        store: &Store,
        dag_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Vec<DagVersion>, Arc<PinnedDag>)> {
        let resolved = self.resolve_dag(Some(store), dag_id, Record::Yes, now)?;
        Ok((vec![resolved.version], resolved.pinned))
    }
}

/// A command cannot act on an inactive DAG whose file is gone (`dags trigger`, `dags test`, ...).
#[derive(Debug, thiserror::Error)]
#[error("DAG `{dag_id}` is inactive: its file `{fileloc}` is no longer in the dags folder")]
pub struct DagInactive {
    pub dag_id: String,
    pub fileloc: String,
}

fn inactive(row: &DagRecord) -> DagInactive {
    DagInactive { dag_id: row.dag_id.clone(), fileloc: row.fileloc.clone() }
}
