//! The alert outbox's statements: rows due for delivery, leases, outcomes, coalescing, the
//! attempts a rate limit counts, and the listing `rhaiflow alerts list` shows.
//!
//! States: `held` (written by `dags test`, sent only with `--send-alerts`) → `pending` →
//! `sending` (leased by one process until `lease_until`) → `sent` | `pending` (again, after a
//! backoff) | `failed`; or `pending` → `coalesced` (folded into the summary row `coalesced_into`).

use super::{StoreResult, Tx};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

/// One outbox row as the deliverer and `alerts list` read it. It holds channel names, never
/// addresses or secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub event: String,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub channel: String,
    pub payload: serde_json::Value,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub coalesced_into: Option<i64>,
}

/// What `alerts list` asks for.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub state: Option<String>,
    pub dag_id: Option<String>,
    pub run_id: Option<String>,
    pub limit: u32,
}

/// A send made outside the outbox (an operator, `alerts::send`), recorded for rate limits.
#[derive(Debug, Clone, Default)]
pub struct DirectSend {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub channel: String,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOutcome {
    Sent {
        at: DateTime<Utc>,
    },
    /// Try again at `at`. `reached`: the service may have seen the attempt (a connection was
    /// made), so rate limits count it; an attempt that never connected is not counted.
    Retry {
        error: String,
        at: DateTime<Utc>,
        reached: bool,
    },
    Failed {
        error: String,
    },
}

pub(super) const OUTBOX_COLUMNS: &str = "id, created_at, event, dag_id, run_id, task_id, try_number, channel, payload, state, \
     attempts, last_error, sent_at, attempted_at, next_attempt_at, coalesced_into";

pub(super) fn outbox_row(r: &rusqlite::Row) -> rusqlite::Result<OutboxRow> {
    let payload: String = r.get(8)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        event: r.get(2)?,
        dag_id: r.get(3)?,
        run_id: r.get(4)?,
        task_id: r.get(5)?,
        try_number: r.get(6)?,
        channel: r.get(7)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        state: r.get(9)?,
        attempts: r.get(10)?,
        last_error: r.get(11)?,
        sent_at: r.get(12)?,
        attempted_at: r.get(13)?,
        next_attempt_at: r.get(14)?,
        coalesced_into: r.get(15)?,
    })
}

impl Tx<'_> {
    /// Rows a deliverer may take now, oldest first: `pending` ones whose next attempt is due and
    /// `sending` ones whose lease ran out (their process died mid-send). Callback rows
    /// (`callback:…`) only with `callbacks` (a deliverer that can run them).
    pub fn due_alerts(&self, now: DateTime<Utc>, limit: u32, callbacks: bool) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM alert_outbox
             WHERE ((state = 'pending' AND next_attempt_at <= ?1) OR (state = 'sending' AND lease_until <= ?1))
               AND (?3 OR channel NOT LIKE 'callback:%')
             ORDER BY id LIMIT ?2"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now, limit, callbacks], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The earliest time a row falls due (a pending row's next attempt, a lease running out).
    pub fn next_alert_due(&self, callbacks: bool) -> StoreResult<Option<DateTime<Utc>>> {
        let due: Option<DateTime<Utc>> = self
            .tx
            .query_row(
                "SELECT MIN(at) FROM (
                     SELECT MIN(next_attempt_at) AS at FROM alert_outbox
                      WHERE state = 'pending' AND (?1 OR channel NOT LIKE 'callback:%')
                     UNION ALL
                     SELECT MIN(lease_until) FROM alert_outbox WHERE state = 'sending')",
                params![callbacks],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(due)
    }

    /// Takes a row for one attempt: `sending`, owned by `owner` until `until`, one more attempt
    /// counted at `now`. False when another process took it first.
    pub fn lease_alert(&self, id: i64, owner: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE alert_outbox SET state = 'sending', lease_owner = ?2, lease_until = ?4, attempted_at = ?3,
                    attempts = attempts + 1
              WHERE id = ?1 AND ((state = 'pending' AND next_attempt_at <= ?3)
                                 OR (state = 'sending' AND lease_until <= ?3))",
            )?
            .execute(params![id, owner, now, until])?;
        Ok(n == 1)
    }

    /// Records an attempt's outcome, if the row is still this owner's lease.
    pub fn finish_alert(&self, id: i64, owner: &str, outcome: &AlertOutcome) -> StoreResult<bool> {
        let n = match outcome {
            AlertOutcome::Sent { at } => self
                .tx
                .prepare_cached(
                    "UPDATE alert_outbox SET state = 'sent', sent_at = ?3, last_error = NULL, lease_owner = NULL,
                        lease_until = NULL
                  WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2",
                )?
                .execute(params![id, owner, at])?,
            AlertOutcome::Retry { error, at, reached } => self
                .tx
                .prepare_cached(
                    "UPDATE alert_outbox SET state = 'pending', next_attempt_at = ?3, last_error = ?4,
                        lease_owner = NULL, lease_until = NULL,
                        attempted_at = CASE WHEN ?5 THEN attempted_at ELSE NULL END
                  WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2",
                )?
                .execute(params![id, owner, at, error, reached])?,
            AlertOutcome::Failed { error } => self
                .tx
                .prepare_cached(
                    "UPDATE alert_outbox SET state = 'failed', last_error = ?3, lease_owner = NULL, lease_until = NULL
                  WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2",
                )?
                .execute(params![id, owner, error])?,
        };
        Ok(n == 1)
    }

    /// Holds pending rows back until `at` (a rate limit's window frees then); returns how many.
    pub fn defer_alerts(&self, ids: &[i64], at: DateTime<Utc>) -> StoreResult<usize> {
        let mut stmt = self
            .tx
            .prepare_cached("UPDATE alert_outbox SET next_attempt_at = ?2 WHERE id = ?1 AND state = 'pending'")?;
        let mut n = 0;
        for id in ids {
            n += stmt.execute(params![id, at])?;
        }
        Ok(n)
    }

    /// Folds pending rows into the summary row `into`; returns how many were folded.
    pub fn coalesce_alerts(&self, ids: &[i64], into: i64) -> StoreResult<usize> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE alert_outbox SET state = 'coalesced', coalesced_into = ?2 WHERE id = ?1 AND state = 'pending'",
        )?;
        let mut n = 0;
        for id in ids {
            n += stmt.execute(params![id, into])?;
        }
        Ok(n)
    }

    /// When each attempt on `channel` after `since` was made (sent, failed or in flight): what a
    /// rate limit counts, across restarts.
    pub fn alert_attempts_since(&self, channel: &str, since: DateTime<Utc>) -> StoreResult<Vec<DateTime<Utc>>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT attempted_at FROM alert_outbox WHERE channel = ?1 AND attempted_at >= ?2 ORDER BY attempted_at",
        )?;
        let rows = stmt.query_map(params![channel, since], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a message an operator, a closure's `alerts::send` or a callback sends itself
    /// through `channel` (event `send`), attempted at `now`, so rate limits count it with the
    /// deliverer's attempts. It reads `failed` ("interrupted") until [`Tx::finish_direct_send`]
    /// records the answer: a process killed mid-send leaves a true record.
    pub fn record_direct_send(&self, origin: &DirectSend, now: DateTime<Utc>) -> StoreResult<i64> {
        self.tx
            .prepare_cached(
                "INSERT INTO alert_outbox (created_at, event, dag_id, run_id, task_id, try_number, channel, payload,
                                           state, attempts, last_error, attempted_at, next_attempt_at)
                 VALUES (?1, 'send', ?2, ?3, ?4, ?5, ?6, '{}', 'failed', 1,
                         'interrupted: the process sending it stopped before the service answered', ?1, ?1)",
            )?
            .execute(params![now, origin.dag_id, origin.run_id, origin.task_id, origin.try_number, origin.channel])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// The answer to a [`Tx::record_direct_send`]: `Ok(at)` sent, or the error and whether the
    /// service may have seen the attempt (one that never connected stops counting).
    pub fn finish_direct_send(&self, id: i64, answer: Result<DateTime<Utc>, (&str, bool)>) -> StoreResult<()> {
        let (state, sent_at, error, reached) = match answer {
            Ok(at) => ("sent", Some(at), None, true),
            Err((error, reached)) => ("failed", None, Some(error), reached),
        };
        self.tx
            .prepare_cached(
                "UPDATE alert_outbox SET state = ?2, sent_at = ?3, last_error = ?4,
                    attempted_at = CASE WHEN ?5 THEN attempted_at ELSE NULL END
                  WHERE id = ?1 AND event = 'send'",
            )?
            .execute(params![id, state, sent_at, error, reached])?;
        Ok(())
    }

    /// Gives back the leases of an owner that is gone, so its rows are sent again at once.
    pub fn release_alert_leases(&self, owner: &str) -> StoreResult<usize> {
        Ok(self.tx.execute(
            "UPDATE alert_outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL
              WHERE state = 'sending' AND lease_owner = ?1",
            params![owner],
        )?)
    }

    /// The owners holding leases now.
    pub fn alert_lease_owners(&self) -> StoreResult<Vec<String>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT DISTINCT lease_owner FROM alert_outbox WHERE state = 'sending' AND lease_owner IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `held` rows of a run become `pending` (`dags test --send-alerts`); returns how many.
    pub fn release_held_alerts(&self, dag_id: &str, run_id: &str, now: DateTime<Utc>) -> StoreResult<usize> {
        Ok(self.tx.execute(
            "UPDATE alert_outbox SET state = 'pending', next_attempt_at = ?3
              WHERE state = 'held' AND dag_id = ?1 AND run_id = ?2",
            params![dag_id, run_id, now],
        )?)
    }

    pub fn outbox_row(&self, id: i64) -> StoreResult<Option<OutboxRow>> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM alert_outbox WHERE id = ?1");
        Ok(self.tx.prepare_cached(&sql)?.query_row(params![id], outbox_row).optional()?)
    }

    /// A page of outbox rows, newest first, in one state and/or of one channel, with the total.
    pub fn alert_page(
        &self,
        state: Option<&str>,
        channel: Option<&str>,
        page: super::Page,
    ) -> StoreResult<(Vec<OutboxRow>, u64)> {
        let filter_sql = "WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR channel = ?2)";
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM alert_outbox {filter_sql} ORDER BY id DESC LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let rows: Vec<OutboxRow> =
            self.tx.prepare_cached(&sql)?.query_map(params![state, channel], outbox_row)?.collect::<Result<_, _>>()?;
        let count = format!("SELECT COUNT(*) FROM alert_outbox {filter_sql}");
        let n: i64 = self.tx.prepare_cached(&count)?.query_row(params![state, channel], |r| r.get(0))?;
        Ok((rows, n.max(0) as u64))
    }

    /// Outbox rows, newest first, filtered.
    pub fn alert_list(&self, filter: &AlertFilter) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM alert_outbox
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR dag_id = ?2) AND (?3 IS NULL OR run_id = ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let limit = if filter.limit == 0 { u32::MAX } else { filter.limit };
        let rows = stmt.query_map(params![filter.state, filter.dag_id, filter.run_id, limit], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
