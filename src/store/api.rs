//! The reads of the REST API (`web`): filtered, paginated lists (`LIMIT`/`OFFSET` with a total,
//! as Airflow's `total_entries`) and the few single rows the other queries do not give.

use super::{Page, RUN_COLUMNS, StoreResult, TI_COLUMNS, TiRow, Tx, run_row, ti_row};
use crate::model::TiKey;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

/// Which DAGs a listing shows (Airflow's `GET /dags` filters).
#[derive(Debug, Clone, Default)]
pub struct DagFilter {
    /// DAGs carrying any of these tags.
    pub tags: Vec<String>,
    /// A substring of the dag_id (SQL `LIKE`, case-insensitive, as Airflow's `ilike`).
    pub dag_id_pattern: Option<String>,
    /// Only DAGs whose file still declares them.
    pub only_active: bool,
    pub paused: Option<bool>,
    /// By dag_id descending (`order_by=-dag_id`).
    pub descending: bool,
    /// Only DAGs whose latest run (by logical date) failed (the UI's "failed only").
    pub failed_only: bool,
}

/// A DAG row with what a listing shows of it.
#[derive(Debug, Clone)]
pub struct DagEntry {
    pub dag_id: String,
    pub is_paused: bool,
    pub is_active: bool,
    pub fileloc: String,
    pub latest_version_hash: String,
    pub last_parsed_at: Option<DateTime<Utc>>,
    /// The latest version's `DagSpec` as JSON (`None`: the version is missing).
    pub spec_json: Option<String>,
    /// Its file has an import error now (its last good version is what is shown).
    pub has_import_errors: bool,
}

/// One import error, with the id the API names it by.
#[derive(Debug, Clone)]
pub struct ImportErrorRow {
    pub id: i64,
    pub filename: String,
    pub message: String,
    pub timestamp: DateTime<Utc>,
}

/// A pool with the slots its task instances take, by state.
#[derive(Debug, Clone)]
pub struct PoolRow {
    pub name: String,
    pub slots: u32,
    pub description: String,
    pub running_slots: u64,
    pub queued_slots: u64,
    pub scheduled_slots: u64,
}

/// One XCom with its time.
#[derive(Debug, Clone)]
pub struct XComRow {
    pub key: String,
    pub value: serde_json::Value,
    pub timestamp: DateTime<Utc>,
}

/// The order of a run listing: a column the API allows, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOrder {
    LogicalDate,
    StartDate,
    EndDate,
    RunId,
    State,
}

impl RunOrder {
    fn column(self) -> &'static str {
        match self {
            RunOrder::LogicalDate => "logical_date",
            RunOrder::StartDate => "start_date",
            RunOrder::EndDate => "end_date",
            RunOrder::RunId => "run_id",
            RunOrder::State => "state",
        }
    }
}

const DAG_ENTRY: &str = "SELECT d.dag_id, d.is_paused, d.is_active, d.fileloc, d.latest_version_hash, d.last_parsed_at,
        v.spec_json, EXISTS (SELECT 1 FROM import_error e WHERE e.filename = d.fileloc)
   FROM dag d LEFT JOIN dag_version v ON v.version_hash = d.latest_version_hash";

fn dag_entry(r: &rusqlite::Row) -> rusqlite::Result<DagEntry> {
    Ok(DagEntry {
        dag_id: r.get(0)?,
        is_paused: r.get(1)?,
        is_active: r.get(2)?,
        fileloc: r.get(3)?,
        latest_version_hash: r.get(4)?,
        last_parsed_at: r.get(5).ok(),
        spec_json: r.get(6)?,
        has_import_errors: r.get(7)?,
    })
}

fn total(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

/// Date bounds of a DAG run listing (`*_gte`, `*_lte`), each optional.
#[derive(Debug, Clone, Default)]
pub struct RunDates {
    pub logical: (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>),
    pub start: (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>),
    pub end: (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>),
}

impl Tx<'_> {
    /// One page of DAGs by dag_id, and how many match.
    pub fn dag_page(&self, filter: &DagFilter, page: Page) -> StoreResult<(Vec<DagEntry>, u64)> {
        let tags = serde_json::to_string(&filter.tags).unwrap_or_else(|_| "[]".into());
        let filter_sql = "WHERE (?1 = 0 OR d.is_active = 1)
              AND (?2 IS NULL OR d.is_paused = ?2)
              AND (?3 IS NULL OR d.dag_id LIKE '%' || ?3 || '%')
              AND (?4 = '[]' OR EXISTS (SELECT 1 FROM json_each(v.spec_json, '$.tags') t
                                         WHERE t.value IN (SELECT value FROM json_each(?4))))
              AND (?5 = 0 OR (SELECT r.state FROM dag_run r WHERE r.dag_id = d.dag_id
                               ORDER BY r.logical_date DESC LIMIT 1) = 'failed')";
        let args = params![filter.only_active, filter.paused, filter.dag_id_pattern, tags, filter.failed_only];
        let dir = if filter.descending { "DESC" } else { "ASC" };
        let sql =
            format!("{DAG_ENTRY} {filter_sql} ORDER BY d.dag_id {dir} LIMIT {} OFFSET {}", page.limit, page.offset);
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows: Vec<DagEntry> = stmt.query_map(args, dag_entry)?.collect::<Result<_, _>>()?;
        let count = format!(
            "SELECT COUNT(*) FROM dag d LEFT JOIN dag_version v ON v.version_hash = d.latest_version_hash {filter_sql}"
        );
        let n: i64 = self.tx.prepare_cached(&count)?.query_row(args, |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    /// One DAG, active or not.
    pub fn dag_entry(&self, dag_id: &str) -> StoreResult<Option<DagEntry>> {
        let sql = format!("{DAG_ENTRY} WHERE d.dag_id = ?1");
        Ok(self.tx.prepare_cached(&sql)?.query_row([dag_id], dag_entry).optional()?)
    }

    /// One page of runs (of one DAG, or of all with `None`), in some states (all when empty).
    pub fn dag_run_page(
        &self,
        dag_id: Option<&str>,
        states: &[String],
        dates: &RunDates,
        (order, descending): (RunOrder, bool),
        page: Page,
    ) -> StoreResult<(Vec<super::DagRunRow>, u64)> {
        let states = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
        // Dates compare as instants (`julianday`), whatever offset and precision a row was written with.
        let filter_sql = "WHERE (?1 IS NULL OR dag_id = ?1)
              AND (?2 = '[]' OR state IN (SELECT value FROM json_each(?2)))
              AND (?3 IS NULL OR julianday(logical_date) >= julianday(?3))
              AND (?4 IS NULL OR julianday(logical_date) <= julianday(?4))
              AND (?5 IS NULL OR julianday(start_date) >= julianday(?5))
              AND (?6 IS NULL OR julianday(start_date) <= julianday(?6))
              AND (?7 IS NULL OR julianday(end_date) >= julianday(?7))
              AND (?8 IS NULL OR julianday(end_date) <= julianday(?8))";
        let bound =
            |d: Option<chrono::DateTime<chrono::Utc>>| d.map(|d| d.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string());
        let (l0, l1) = (bound(dates.logical.0), bound(dates.logical.1));
        let (s0, s1) = (bound(dates.start.0), bound(dates.start.1));
        let (e0, e1) = (bound(dates.end.0), bound(dates.end.1));
        let dir = if descending { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run {filter_sql} ORDER BY {} {dir}, dag_id, run_id LIMIT {} OFFSET {}",
            order.column(),
            page.limit,
            page.offset
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let args = params![dag_id, states, l0, l1, s0, s1, e0, e1];
        let rows = stmt.query_map(args, run_row)?.collect::<Result<_, _>>()?;
        let count = format!("SELECT COUNT(*) FROM dag_run {filter_sql}");
        let n: i64 = self.tx.prepare_cached(&count)?.query_row(args, |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    /// One page of a run's task instances by task_id.
    pub fn task_instance_page(
        &self,
        dag_id: &str,
        run_id: &str,
        states: &[String],
        page: Page,
    ) -> StoreResult<(Vec<TiRow>, u64)> {
        let states = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
        let filter = "WHERE dag_id = ?1 AND run_id = ?2 AND (?3 = '[]' OR state IN (SELECT value FROM json_each(?3)))";
        let sql = format!(
            "SELECT {TI_COLUMNS} FROM task_instance {filter} ORDER BY task_id LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![dag_id, run_id, states], ti_row)?.collect::<Result<_, _>>()?;
        let n: i64 = self
            .tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM task_instance {filter}"))?
            .query_row(params![dag_id, run_id, states], |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    /// One page of import errors by file.
    pub fn import_error_page(&self, page: Page) -> StoreResult<(Vec<ImportErrorRow>, u64)> {
        let sql = format!(
            "SELECT rowid, filename, message, timestamp FROM import_error ORDER BY filename LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([], import_error_row)?.collect::<Result<_, _>>()?;
        let n: i64 = self.tx.prepare_cached("SELECT COUNT(*) FROM import_error")?.query_row([], |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    pub fn import_error_by_id(&self, id: i64) -> StoreResult<Option<ImportErrorRow>> {
        Ok(self
            .tx
            .prepare_cached("SELECT rowid, filename, message, timestamp FROM import_error WHERE rowid = ?1")?
            .query_row([id], import_error_row)
            .optional()?)
    }

    /// One page of pools by name, with the slots taken (`name`: only that pool).
    pub fn pool_page(&self, name: Option<&str>, page: Page) -> StoreResult<(Vec<PoolRow>, u64)> {
        let sql = format!(
            "SELECT p.name, p.slots, p.description,
                    COALESCE(SUM(CASE WHEN ti.state = 'running' THEN ti.pool_slots END), 0),
                    COALESCE(SUM(CASE WHEN ti.state = 'queued' THEN ti.pool_slots END), 0),
                    COALESCE(SUM(CASE WHEN ti.state = 'scheduled' THEN ti.pool_slots END), 0)
               FROM pool p LEFT JOIN task_instance ti
                 ON ti.pool = p.name AND ti.state IN ('running', 'queued', 'scheduled')
              WHERE ?1 IS NULL OR p.name = ?1
              GROUP BY p.name ORDER BY p.name LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([name], |r| {
                Ok(PoolRow {
                    name: r.get(0)?,
                    slots: r.get(1)?,
                    description: r.get(2)?,
                    running_slots: r.get::<_, i64>(3)?.max(0) as u64,
                    queued_slots: r.get::<_, i64>(4)?.max(0) as u64,
                    scheduled_slots: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        let n: i64 = self
            .tx
            .prepare_cached("SELECT COUNT(*) FROM pool WHERE ?1 IS NULL OR name = ?1")?
            .query_row([name], |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    /// One page of a task instance's XComs by key (`key`: only that one).
    pub fn xcom_page(&self, ti: &TiKey, key: Option<&str>, page: Page) -> StoreResult<(Vec<XComRow>, u64)> {
        let filter_sql = "WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND (?4 IS NULL OR key = ?4)";
        let sql = format!(
            "SELECT key, value, created_at FROM xcom {filter_sql} ORDER BY key LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let args = params![ti.dag_id, ti.run_id, ti.task_id, key];
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(args, |r| {
                let value: String = r.get(1)?;
                Ok(XComRow {
                    key: r.get(0)?,
                    value: serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value)),
                    timestamp: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let n: i64 = self
            .tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM xcom {filter_sql}"))?
            .query_row(args, |r| r.get(0))?;
        Ok((rows, total(n)))
    }

    /// The file of a DAG version (relative to the dags folder) and, when the version kept it (it
    /// has closures), the file's text as it was.
    pub fn version_file(&self, version_hash: &str) -> StoreResult<Option<(String, Option<String>)>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COALESCE(s.file, d.fileloc), s.source FROM dag_version v
                   JOIN dag d ON d.dag_id = v.dag_id
                   LEFT JOIN dag_source s ON s.source_hash = v.source_hash
                  WHERE v.version_hash = ?1",
            )?
            .query_row([version_hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The latest heartbeat of a scheduler that has not stopped.
    pub fn latest_scheduler_heartbeat(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT heartbeat_at FROM runner WHERE kind = 'scheduler' AND stopped_at IS NULL
                 ORDER BY heartbeat_at DESC LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()?)
    }
}

fn import_error_row(r: &rusqlite::Row) -> rusqlite::Result<ImportErrorRow> {
    Ok(ImportErrorRow { id: r.get(0)?, filename: r.get(1)?, message: r.get(2)?, timestamp: r.get(3)? })
}
