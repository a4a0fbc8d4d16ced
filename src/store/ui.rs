//! The reads of the web UI (`web::ui`): a page of DAGs' recent runs in one query, a run window's
//! task instances in one query, the change log in bounded steps, the alert outbox filtered.

use super::alerts::{OUTBOX_COLUMNS, outbox_row};
use super::scheduling::ChangeRow;
use super::{DagRunRow, OutboxRow, RUN_COLUMNS, StoreResult, TI_COLUMNS, TiRow, Tx, run_row, ti_row};
use rusqlite::params;

/// What the alerts page asks for (every field optional; newest first, at most `limit`).
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub channel: Option<String>,
    pub state: Option<String>,
    pub dag_id: Option<String>,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub limit: u32,
}

impl Tx<'_> {
    /// The newest `per_dag` runs of each of `dag_ids` (by logical date), in one query; oldest first
    /// within a DAG.
    pub fn recent_runs(&self, dag_ids: &[String], per_dag: u32) -> StoreResult<Vec<DagRunRow>> {
        let ids = serde_json::to_string(dag_ids).unwrap_or_else(|_| "[]".into());
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY dag_id ORDER BY logical_date DESC) AS n
                  FROM dag_run WHERE dag_id IN (SELECT value FROM json_each(?1)))
              WHERE n <= ?2 ORDER BY dag_id, logical_date"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![ids, per_dag], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The task instances of some runs of one DAG, in one query.
    pub fn task_instances_of_runs(&self, dag_id: &str, run_ids: &[String]) -> StoreResult<Vec<TiRow>> {
        let ids = serde_json::to_string(run_ids).unwrap_or_else(|_| "[]".into());
        let sql = format!(
            "SELECT {TI_COLUMNS} FROM task_instance
              WHERE dag_id = ?1 AND run_id IN (SELECT value FROM json_each(?2))"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![dag_id, ids], ti_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// At most `limit` change log entries after `seq`, oldest first.
    pub fn changes_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<ChangeRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT seq, dag_id, run_id, task_id FROM change_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![seq, limit], |r| {
            Ok(ChangeRow { seq: r.get(0)?, dag_id: r.get(1)?, run_id: r.get(2)?, task_id: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outbox rows, newest first, filtered by channel, state, DAG, run and task.
    pub fn outbox_page(&self, filter: &OutboxFilter) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM alert_outbox
              WHERE (?1 IS NULL OR channel = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR dag_id = ?3)
                AND (?4 IS NULL OR run_id = ?4) AND (?5 IS NULL OR task_id = ?5)
              ORDER BY id DESC LIMIT ?6"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let f = filter;
        let rows =
            stmt.query_map(params![f.channel, f.state, f.dag_id, f.run_id, f.task_id, f.limit.max(1)], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The distinct channels the outbox has rows for (the alerts page's filter).
    pub fn outbox_channels(&self) -> StoreResult<Vec<String>> {
        let mut stmt = self.tx.prepare_cached("SELECT DISTINCT channel FROM alert_outbox ORDER BY channel")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Tx<'_> {
    /// What `/metrics` reports from the store: runs and task instances by state (index scans of
    /// their `state` indexes), the queue, import errors, active DAGs by paused.
    pub fn metrics_counts(&self) -> StoreResult<crate::metrics::StoreCounts> {
        let by_state = |sql: &str| -> StoreResult<Vec<(String, i64)>> {
            let mut stmt = self.tx.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let runs = by_state("SELECT state, count(*) FROM dag_run GROUP BY state")?;
        let task_instances = by_state("SELECT state, count(*) FROM task_instance GROUP BY state")?;
        let queue_depth =
            task_instances.iter().filter(|(s, _)| s == "scheduled" || s == "queued").map(|(_, n)| n).sum();
        let import_errors = self.tx.prepare_cached("SELECT count(*) FROM import_error")?.query_row([], |r| r.get(0))?;
        let mut stmt =
            self.tx.prepare_cached("SELECT is_paused, count(*) FROM dag WHERE is_active = 1 GROUP BY is_paused")?;
        let dags = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(crate::metrics::StoreCounts { runs, task_instances, queue_depth, import_errors, dags })
    }
}
