//! The statements only the scheduler uses: what is busy across every process, the change log it
//! follows so a pass reads only what changed, and reads of one DAG or one run.

use super::{DagRow, DagRunRow, RUN_COLUMNS, StoreResult, TiStateRow, Tx, parse_enum, run_row};
use crate::model::TiKey;
use rusqlite::{OptionalExtension, params};

/// Claimed (`queued` or `running`) task instances of one DAG in one pool, whoever claimed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyCount {
    pub dag_id: String,
    pub pool: String,
    pub tasks: u32,
    pub pool_slots: u32,
}

/// One entry of the change log: a run (its row or one of its task instances) or, with no run, a
/// DAG row changed. Written by triggers, so every writer in every process is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub seq: i64,
    pub dag_id: String,
    pub run_id: Option<String>,
    /// Set when one task instance's state changed (its run is `run_id`); unset for run and DAG rows.
    pub task_id: Option<String>,
}

impl Tx<'_> {
    /// Claimed task instances in the whole store, grouped by DAG and pool (one query).
    pub fn busy_task_counts(&self) -> StoreResult<Vec<BusyCount>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT dag_id, pool, COUNT(*), COALESCE(SUM(pool_slots), 0) FROM task_instance
             WHERE state IN ('queued', 'running', 'restarting') GROUP BY dag_id, pool",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BusyCount { dag_id: r.get(0)?, pool: r.get(1)?, tasks: r.get(2)?, pool_slots: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The lowest and highest sequence number in the change log (`(0, 0)` when it is empty).
    pub fn change_log_bounds(&self) -> StoreResult<(i64, i64)> {
        Ok(self
            .tx
            // Two subqueries: SQLite reads a lone MIN or MAX off the index's end, but scans the
            // whole table for both in one aggregate (a third of a 10,000-DAG start went there).
            .prepare_cached(
                "SELECT COALESCE((SELECT MIN(seq) FROM change_log), 0), COALESCE((SELECT MAX(seq) FROM change_log), 0)",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Change log entries after `seq`, oldest first.
    pub fn changes_since(&self, seq: i64) -> StoreResult<Vec<ChangeRow>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT seq, dag_id, run_id, task_id FROM change_log WHERE seq > ?1 ORDER BY seq")?;
        let rows = stmt.query_map([seq], |r| {
            Ok(ChangeRow { seq: r.get(0)?, dag_id: r.get(1)?, run_id: r.get(2)?, task_id: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets change log entries up to `seq`. A reader that had not seen them notices the gap
    /// (`change_log_bounds`) and reads everything again. The newest entry is always kept: a new
    /// entry's `seq` is one more than the largest left, so `seq` never goes back.
    pub fn prune_change_log(&self, seq: i64) -> StoreResult<()> {
        self.tx
            .prepare_cached("DELETE FROM change_log WHERE seq <= ?1 AND seq < (SELECT MAX(seq) FROM change_log)")?
            .execute([seq])?;
        Ok(())
    }

    /// One active DAG row.
    pub fn dag(&self, dag_id: &str) -> StoreResult<Option<DagRow>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT dag_id, is_paused, fileloc, latest_version_hash FROM dag WHERE dag_id = ?1 AND is_active = 1",
            )?
            .query_row([dag_id], |r| {
                Ok(DagRow {
                    dag_id: r.get(0)?,
                    is_paused: r.get(1)?,
                    fileloc: r.get(2)?,
                    latest_version_hash: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// The `queued` and `running` runs of one DAG, oldest logical date first.
    pub fn active_runs_of_dag(&self, dag_id: &str) -> StoreResult<Vec<DagRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 AND state IN ('queued', 'running') ORDER BY logical_date"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([dag_id], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many runs of one DAG are `queued` or `running`.
    pub fn active_run_count(&self, dag_id: &str) -> StoreResult<u32> {
        Ok(self
            .tx
            .prepare_cached("SELECT COUNT(*) FROM dag_run WHERE dag_id = ?1 AND state IN ('queued', 'running')")?
            .query_row([dag_id], |r| r.get(0))?)
    }

    /// The scheduling view of the task instances of one run.
    pub fn task_states_of_run(&self, dag_id: &str, run_id: &str) -> StoreResult<Vec<TiStateRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT task_id, state, try_number, max_tries, next_try_at FROM task_instance
             WHERE dag_id = ?1 AND run_id = ?2",
        )?;
        let rows = stmt.query_map(params![dag_id, run_id], |r| {
            Ok(TiStateRow {
                key: TiKey { dag_id: dag_id.to_string(), run_id: run_id.to_string(), task_id: r.get(0)? },
                state: parse_enum(r.get(1)?)?,
                try_number: r.get(2)?,
                max_tries: r.get(3)?,
                next_try_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The scheduling view of one task instance (`None`: no such row).
    pub fn task_state(&self, key: &TiKey) -> StoreResult<Option<TiStateRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT state, try_number, max_tries, next_try_at FROM task_instance
             WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3",
        )?;
        let row = stmt
            .query_row(params![key.dag_id, key.run_id, key.task_id], |r| {
                Ok(TiStateRow {
                    key: key.clone(),
                    state: parse_enum(r.get(0)?)?,
                    try_number: r.get(1)?,
                    max_tries: r.get(2)?,
                    next_try_at: r.get(3)?,
                })
            })
            .optional()?;
        Ok(row)
    }
}
