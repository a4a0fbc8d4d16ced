//! Reads the template context needs, each made only when a template asks for it.

use super::{DagRunRow, RUN_COLUMNS, StoreResult, Tx, run_row};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

impl Tx<'_> {
    /// The latest successful run of `dag_id` with a logical date before `logical_date` (Airflow's
    /// `get_previous_dagrun(state=SUCCESS)`, any run type), for `prev_*_success`.
    pub fn previous_successful_run(&self, dag_id: &str, logical_date: DateTime<Utc>) -> StoreResult<Option<DagRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 AND state = 'success' AND logical_date < ?2 \
             ORDER BY logical_date DESC LIMIT 1"
        );
        Ok(self.tx.prepare_cached(&sql)?.query_row(params![dag_id, logical_date], run_row).optional()?)
    }
}
