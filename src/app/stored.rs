//! What the store knows of DAGs, for listings that need not parse the folder: when a live
//! scheduler keeps the store current (it records the folder as it changes), `dags list` and
//! `dags list-import-errors` show the store; `dags versions` always does.

use super::App;
use crate::model::DagSpec;
use crate::store::{DagRecord, DagVersionRow, Store, StoreError};
use anyhow::bail;
use std::sync::Arc;

/// One DAG row and its latest version's spec (`None` when that version does not read).
pub struct StoredDag {
    pub record: DagRecord,
    pub spec: Option<Arc<DagSpec>>,
}

/// The versions of one DAG and which is the latest.
pub struct StoredVersions {
    pub record: DagRecord,
    /// Oldest first.
    pub versions: Vec<DagVersionRow>,
}

impl App {
    /// The store, when a scheduler that keeps it current is alive on it: a runner of kind
    /// `scheduler` (or `standalone`) with a fresh heartbeat whose process is there.
    pub fn store_kept_current(&self) -> anyhow::Result<Option<Store>> {
        let Some(store) = self.existing_store()? else { return Ok(None) };
        let runners = store.read(|tx| tx.runners())?;
        let liveness = self.liveness();
        let live = runners.iter().any(|r| {
            matches!(r.kind.as_str(), "scheduler" | "standalone") && !liveness.is_gone(Some(&r.runner_id), &runners)
        });
        Ok(live.then_some(store))
    }

    /// `bag` (a parse of the folder) with the DAGs of its broken files that the store keeps
    /// active on their last good version: they are still scheduled and triggerable, so a listing
    /// shows them.
    pub fn with_last_good(&self, mut bag: crate::loader::DagBag) -> anyhow::Result<crate::loader::DagBag> {
        if bag.import_errors.is_empty() {
            return Ok(bag);
        }
        let Some(store) = self.existing_store()? else { return Ok(bag) };
        for stored in self.stored_dags(&store)? {
            let broken = bag.import_errors.iter().any(|e| e.file == stored.record.fileloc);
            if !stored.record.is_active || !broken || bag.dags.contains_key(&stored.record.dag_id) {
                continue;
            }
            let Some(spec) = stored.spec else { continue };
            let json: Arc<str> = Arc::from(spec.to_json());
            let dag = crate::loader::LoadedDag {
                spec,
                json,
                version_hash: stored.record.latest_version_hash.clone(),
                program: None,
                source: None,
            };
            bag.dags.insert(stored.record.dag_id.clone(), dag);
        }
        Ok(bag)
    }

    /// Every DAG the store has recorded, active or not, with its latest version's spec.
    pub fn stored_dags(&self, store: &Store) -> anyhow::Result<Vec<StoredDag>> {
        let rows = store.read(|tx| -> Result<_, StoreError> {
            let mut out = Vec::new();
            for record in tx.dag_records()? {
                let json = tx.dag_version_json(&record.latest_version_hash)?;
                out.push((record, json));
            }
            Ok(out)
        })?;
        Ok(rows
            .into_iter()
            .map(|(record, json)| StoredDag {
                record,
                spec: json.and_then(|j| serde_json::from_str::<DagSpec>(&j).ok()).map(Arc::new),
            })
            .collect())
    }

    /// The recorded versions of `dag_id`; an unknown DAG is an error with the nearest known id.
    pub fn stored_versions(&self, dag_id: &str) -> anyhow::Result<StoredVersions> {
        let store = self.existing_store()?;
        let found = match &store {
            Some(store) => store.read(|tx| -> Result<_, StoreError> {
                let Some(record) = tx.dag_record(dag_id)? else { return Ok(Err(tx.dag_records()?)) };
                Ok(Ok((record, tx.dag_versions(dag_id)?)))
            })?,
            None => Err(Vec::new()),
        };
        match found {
            Ok((record, versions)) => Ok(StoredVersions { record, versions }),
            Err(known) => {
                let known: Vec<&str> = known.iter().map(|d| d.dag_id.as_str()).collect();
                match crate::model::suggest::nearest(dag_id, &known) {
                    Some(k) => bail!("no DAG `{dag_id}` in the database — did you mean `{k}`?"),
                    None => bail!(
                        "no DAG `{dag_id}` in the database (it records a DAG when a scheduler loads its file, \
                         or when `dags trigger`, `dags test` or `dags pause` act on it)"
                    ),
                }
            }
        }
    }

    /// The recorded version of `dag_id` whose hash starts with `prefix` (at least 6 hex digits),
    /// which must be the only one.
    pub fn version_by_prefix(&self, dag_id: &str, prefix: &str) -> anyhow::Result<super::ResolvedDag> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 6 || prefix.len() > 64 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                "`--version {prefix}`: give at least 6 hex digits of a version hash (see `rhaiflow dags versions {dag_id}`)"
            );
        }
        let stored = self.stored_versions(dag_id)?;
        let matching: Vec<&DagVersionRow> =
            stored.versions.iter().filter(|v| v.version_hash.starts_with(&prefix)).collect();
        match matching.as_slice() {
            [one] => {
                let Some(store) = self.existing_store()? else { bail!("no database") };
                self.recorded_version(&store, dag_id, &one.version_hash)
            }
            [] => bail!("DAG `{dag_id}` has no version `{prefix}`; see `rhaiflow dags versions {dag_id}`"),
            many => bail!(
                "`{prefix}` matches {} versions of DAG `{dag_id}` ({}); give more digits",
                many.len(),
                many.iter().map(|v| &v.version_hash[..12]).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}
