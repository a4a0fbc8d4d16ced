//! What the store knows of DAGs for commands that read it instead of parsing the folder: a DAG's
//! row whether active or not, and its recorded versions with the runs that used each.

use super::{StoreResult, Tx};
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;

/// A DAG row, active or not (`is_active = 0`: its file is gone, or was broken when the folder was
/// last recorded as a whole).
#[derive(Debug, Clone)]
pub struct DagRecord {
    pub dag_id: String,
    pub is_paused: bool,
    pub is_active: bool,
    pub fileloc: String,
    pub latest_version_hash: String,
}

/// One recorded version of a DAG and how many runs were pinned to it.
#[derive(Debug, Clone)]
pub struct DagVersionRow {
    pub version_hash: String,
    pub created_at: DateTime<Utc>,
    /// The file the DAG was declared in when this version was recorded (from its spec).
    pub fileloc: Option<String>,
    pub runs: u64,
}

fn dag_record(r: &rusqlite::Row) -> rusqlite::Result<DagRecord> {
    Ok(DagRecord {
        dag_id: r.get(0)?,
        is_paused: r.get(1)?,
        is_active: r.get(2)?,
        fileloc: r.get(3)?,
        latest_version_hash: r.get(4)?,
    })
}

impl Tx<'_> {
    /// One DAG row, active or not.
    pub fn dag_record(&self, dag_id: &str) -> StoreResult<Option<DagRecord>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT dag_id, is_paused, is_active, fileloc, latest_version_hash FROM dag WHERE dag_id = ?1",
            )?
            .query_row([dag_id], dag_record)
            .optional()?)
    }

    /// Every DAG row, active or not, by id.
    pub fn dag_records(&self) -> StoreResult<Vec<DagRecord>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT dag_id, is_paused, is_active, fileloc, latest_version_hash FROM dag ORDER BY dag_id",
        )?;
        let rows = stmt.query_map([], dag_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every recorded version of `dag_id`, oldest first, with the number of runs pinned to each.
    pub fn dag_versions(&self, dag_id: &str) -> StoreResult<Vec<DagVersionRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT v.version_hash, v.created_at, json_extract(v.spec_json, '$.fileloc'),
                    (SELECT count(*) FROM dag_run r WHERE r.dag_id = v.dag_id AND r.version_hash = v.version_hash)
             FROM dag_version v WHERE v.dag_id = ?1 ORDER BY v.created_at, v.rowid",
        )?;
        let rows = stmt.query_map([dag_id], |r| {
            Ok(DagVersionRow {
                version_hash: r.get(0)?,
                created_at: r.get(1)?,
                fileloc: r.get(2)?,
                runs: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
