//! The deliverer: a tokio task of the scheduler process that drains the outbox. Woken when rows
//! are written (a `Notify` the worker tells) and when the next row falls due, never by a tight
//! poll. One pass, in one write transaction, takes the due rows, applies each robot's rate limit
//! (coalescing a burst into one summary row, deferring what must wait) and leases what it sends;
//! each send then runs on its own task, bounded by a timeout, and records its outcome. A crash
//! between the state change and the send leaves the row `pending` (or `sending` with a lease
//! that runs out), so the next process sends it: as far as the store can know, once.

use super::callback::CallbackRunner;
use super::channel::{Channel, Channels};
use super::limit::allowance;
use super::message::{context_of, log_tail, render, summary_of};
use super::send::{SendError, Sender, mask};
use crate::config::Config;
use crate::store::{AlertOutcome, NewAlert, OutboxRow, Store, StoreResult, Tx};
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;
use std::time::Duration;

/// Where the deliverer reads the time: the wall clock in a process, a controlled one in tests.
pub type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `[alerts] delivery_attempts`.
    pub attempts: u32,
    /// `[alerts] delivery_backoff_max`.
    pub backoff_max: Duration,
    /// `[alerts] delivery_timeout`: one request's limit.
    pub timeout: Duration,
    /// `[webserver] base_url`, for log links.
    pub base_url: Option<String>,
    /// The runner whose leases these are.
    pub owner: String,
    /// Rows one pass takes.
    pub batch: u32,
    /// Sends in flight at once.
    pub concurrency: usize,
}

impl DeliverySettings {
    pub fn from_config(config: &Config, owner: String) -> DeliverySettings {
        DeliverySettings {
            attempts: config.alerts.delivery_attempts,
            backoff_max: Duration::from_secs_f64(config.alerts.delivery_backoff_max),
            timeout: Duration::from_secs_f64(config.alerts.delivery_timeout),
            base_url: config.webserver.base_url.clone(),
            owner,
            batch: 1_000,
            concurrency: 64,
        }
    }

    /// The wait before attempt `n + 1` after `n` failed: 1 s, 2 s, 4 s, … up to `backoff_max`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        Duration::from_secs(1u64 << exp).min(self.backoff_max)
    }

    /// How long a lease lasts: the request's timeout and a margin, so a live sender never loses
    /// its lease mid-send, and a dead one's rows are taken again soon after.
    fn lease(&self) -> TimeDelta {
        TimeDelta::from_std(self.timeout + Duration::from_secs(30)).unwrap_or(TimeDelta::MAX)
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// Rows leased and being sent (summaries included).
    pub sending: usize,
    /// Rows folded into summaries.
    pub coalesced: usize,
    /// Rows held back by a rate limit until their window frees.
    pub deferred: usize,
    /// Rows failed at once (unknown channel, no DingTalk robot).
    pub failed: usize,
}

#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    channels: Arc<Channels>,
    sender: Sender,
    settings: DeliverySettings,
    clock: WallClock,
    wake: Arc<tokio::sync::Notify>,
    permits: Arc<tokio::sync::Semaphore>,
    secrets: Vec<String>,
    /// Runs `callback:…` rows; without it they are left for a deliverer that has one.
    callbacks: Option<Arc<CallbackRunner>>,
}

/// A row a pass leased, with its channel (or why it has none).
struct Leased {
    row: OutboxRow,
}

impl Deliverer {
    pub fn new(store: Store, channels: Channels, settings: DeliverySettings, clock: WallClock) -> Deliverer {
        let secrets = channels.secrets();
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
        Deliverer {
            inner: Arc::new(Inner {
                store,
                channels: Arc::new(channels),
                sender: Sender::new(settings.timeout),
                settings,
                clock,
                wake: Arc::default(),
                permits,
                secrets,
                callbacks: None,
            }),
        }
    }

    /// This deliverer also runs callbacks (the scheduler's). Call before the first clone.
    pub fn with_callbacks(mut self, callbacks: CallbackRunner) -> Deliverer {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.callbacks = Some(Arc::new(callbacks)),
            None => tracing::error!("a deliverer was given its callback runner after being shared (a bug)"),
        }
        self
    }

    /// Told when outbox rows are written: the deliverer looks at once.
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.inner.wake.clone()
    }

    pub fn channels(&self) -> &Channels {
        &self.inner.channels
    }

    /// Delivers until the task is dropped: a pass, then a sleep until the next row falls due or
    /// a wake.
    pub async fn run(self) {
        let callbacks = self.inner.callbacks.is_some();
        loop {
            let now = (self.inner.clock)();
            let wait = match self.pass(now).await {
                Ok(_) => match self.inner.store.read_async(move |tx| tx.next_alert_due(callbacks)).await {
                    Ok(Some(due)) => (due - (self.inner.clock)()).to_std().unwrap_or(Duration::ZERO),
                    Ok(None) => Duration::MAX,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the alert outbox; looking again in 1 s");
                        Duration::from_secs(1)
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "alert delivery pass failed; looking again in 1 s");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                // Due now but not taken (leased elsewhere, or a lost race): yield, then look again.
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let sleep = async {
                if wait == Duration::MAX { std::future::pending::<()>().await } else { tokio::time::sleep(wait).await }
            };
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// One pass at `now`, and waits for every send it started to record its outcome (tests,
    /// `dags test --send-alerts`, `alerts test`).
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> StoreResult<PassReport> {
        let (report, mut sends) = self.plan_and_start(now).await?;
        while sends.join_next().await.is_some() {}
        Ok(report)
    }

    /// One pass at `now`: its sends run on, each recording its own outcome.
    pub async fn pass(&self, now: DateTime<Utc>) -> StoreResult<PassReport> {
        let (report, mut sends) = self.plan_and_start(now).await?;
        sends.detach_all();
        Ok(report)
    }

    async fn plan_and_start(&self, now: DateTime<Utc>) -> StoreResult<(PassReport, tokio::task::JoinSet<()>)> {
        let inner = self.inner.clone();
        let (report, leased) = self.inner.store.write_async(move |tx| plan(tx, &inner, now)).await?;
        let mut sends = tokio::task::JoinSet::new();
        for Leased { row } in leased {
            let inner = self.inner.clone();
            sends.spawn(async move {
                let Ok(_permit) = inner.permits.clone().acquire_owned().await else { return };
                deliver_one(&inner, row).await;
            });
        }
        Ok((report, sends))
    }
}

/// Takes the due rows, applies rate limits, and leases what goes now; in one transaction.
fn plan(tx: &Tx, inner: &Inner, now: DateTime<Utc>) -> StoreResult<(PassReport, Vec<Leased>)> {
    let settings = &inner.settings;
    let due = tx.due_alerts(now, settings.batch, inner.callbacks.is_some())?;
    let mut report = PassReport::default();
    let mut leased = Vec::new();
    let until = now.checked_add_signed(settings.lease()).unwrap_or(DateTime::<Utc>::MAX_UTC);
    // Rows by channel name, in id order.
    let mut by_channel: Vec<(String, Vec<OutboxRow>)> = Vec::new();
    for row in due {
        match by_channel.iter_mut().find(|(c, _)| *c == row.channel) {
            Some((_, rows)) => rows.push(row),
            None => by_channel.push((row.channel.clone(), vec![row])),
        }
    }
    for (name, rows) in by_channel {
        if let (true, Some(callbacks)) = (name.starts_with("callback:"), &inner.callbacks) {
            // A callback is user code: no rate limit, and a lease as long as its timeout.
            let lease = TimeDelta::from_std(callbacks.timeout() + Duration::from_secs(30)).unwrap_or(TimeDelta::MAX);
            let until = now.checked_add_signed(lease).unwrap_or(DateTime::<Utc>::MAX_UTC);
            for mut row in rows {
                if tx.lease_alert(row.id, &settings.owner, now, until)? {
                    row.attempts += 1;
                    report.sending += 1;
                    leased.push(Leased { row });
                }
            }
            continue;
        }
        let channel = match inner.channels.get(&name) {
            Ok(c) => c,
            Err(e) => {
                for row in rows {
                    if tx.lease_alert(row.id, &settings.owner, now, until)? {
                        tx.finish_alert(row.id, &settings.owner, &AlertOutcome::Failed { error: e.to_string() })?;
                        tracing::warn!(alert_id = row.id, channel = %name, error = %e, "alert not deliverable");
                        report.failed += 1;
                    }
                }
                continue;
            }
        };
        // Rate limits count the robot's attempts under the name the rows carry.
        let limits = channel.kind().limits();
        let mut rows = rows;
        if !limits.is_empty() {
            let longest = limits.iter().map(|l| l.per).max().unwrap_or_default();
            let attempts = tx.alert_attempts_since(&name, now - longest)?;
            let allowed = allowance(limits, &attempts, now);
            if allowed.window == 0 {
                let at = allowed.next_free.unwrap_or(now + TimeDelta::seconds(1));
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                report.deferred += tx.defer_alerts(&ids, at)?;
                continue;
            }
            if rows.len() > allowed.window {
                // Keep `window - 1` rows as they are; fold the rest into one summary row.
                let folded = rows.split_off(allowed.window - 1);
                let summary = summary_of(&folded);
                let first = &folded[0];
                let alert = NewAlert {
                    event: "summary".into(),
                    dag_id: first.dag_id.clone(),
                    run_id: first.run_id.clone(),
                    task_id: None,
                    try_number: None,
                    channel: name.clone(),
                    payload: serde_json::json!({ "summary": summary }),
                    held: false,
                };
                let id = tx.insert_alert(&alert, now)?;
                let ids: Vec<i64> = folded.iter().map(|r| r.id).collect();
                report.coalesced += tx.coalesce_alerts(&ids, id)?;
                if let Some(row) = tx.outbox_row(id)? {
                    rows.push(row);
                }
            }
            if rows.len() > allowed.now {
                // A shorter window (Feishu's 5 a second) holds the rest back a moment.
                let later = rows.split_off(allowed.now);
                let at = allowed.next_free.unwrap_or(now + TimeDelta::seconds(1));
                let ids: Vec<i64> = later.iter().map(|r| r.id).collect();
                report.deferred += tx.defer_alerts(&ids, at)?;
            }
        }
        for mut row in rows {
            if tx.lease_alert(row.id, &settings.owner, now, until)? {
                row.attempts += 1;
                report.sending += 1;
                leased.push(Leased { row });
            }
        }
    }
    Ok((report, leased))
}

/// Renders and sends one leased row, then records the outcome under the lease.
async fn deliver_one(inner: &Inner, row: OutboxRow) {
    let outcome = match (&inner.callbacks, inner.channels.get(&row.channel)) {
        // Run once: a callback that failed is recorded, never retried.
        (Some(callbacks), _) if row.channel.starts_with("callback:") => callbacks.run(&row).await,
        (_, Err(e)) => AlertOutcome::Failed { error: e.to_string() },
        (_, Ok(channel)) => attempt(inner, channel, &row).await,
    };
    let channel_kind = if row.channel.starts_with("callback:") { "callback" } else { row.channel.as_str() };
    let result = match &outcome {
        AlertOutcome::Failed { .. } => "failed",
        AlertOutcome::Retry { .. } => "retry",
        _ => "sent",
    };
    crate::metrics::global().alert_delivery(channel_kind, result);
    if let AlertOutcome::Failed { error } = &outcome {
        tracing::warn!(alert_id = row.id, channel = %row.channel, attempts = row.attempts, error = %error, "alert delivery failed for good");
    } else if let AlertOutcome::Retry { error, .. } = &outcome {
        tracing::info!(alert_id = row.id, channel = %row.channel, attempts = row.attempts, error = %error, "alert delivery failed; will retry");
    }
    let (id, owner) = (row.id, inner.settings.owner.clone());
    let written = inner.store.write_async(move |tx| tx.finish_alert(id, &owner, &outcome)).await;
    if let Err(e) = written {
        tracing::warn!(alert_id = id, error = %e, "cannot record an alert's delivery; its lease runs out and it is sent again");
    }
    inner.wake.notify_one();
}

async fn attempt(inner: &Inner, channel: &Channel, row: &OutboxRow) -> AlertOutcome {
    let tail = match row.payload.get("log_path").and_then(|p| p.as_str()) {
        Some(path) if row.event != "summary" => {
            log_tail(super::message::stored_log(&inner.store, row).await, std::path::Path::new(path)).await
        }
        _ => None,
    };
    let ctx = context_of(row, inner.settings.base_url.as_deref(), tail.map(|t| mask(&t, &inner.secrets)));
    let message = match render(channel, &ctx) {
        Ok(m) => m,
        Err(e) => return AlertOutcome::Failed { error: mask(&e.to_string(), &inner.secrets) },
    };
    let now = (inner.clock)();
    match inner.sender.send(channel, &message, now).await {
        Ok(_) => AlertOutcome::Sent { at: (inner.clock)() },
        Err(e) => retry_or_fail(&inner.settings, row.attempts, &e, now, &inner.secrets),
    }
}

fn retry_or_fail(
    settings: &DeliverySettings,
    attempts: u32,
    e: &SendError,
    now: DateTime<Utc>,
    secrets: &[String],
) -> AlertOutcome {
    let error = mask(&e.to_string(), secrets);
    if e.is_permanent() || attempts >= settings.attempts {
        let error = if e.is_permanent() { error } else { format!("{error} (gave up after {attempts} attempts)") };
        return AlertOutcome::Failed { error };
    }
    let wait = e.pause().unwrap_or_default().max(settings.backoff(attempts));
    let at =
        now.checked_add_signed(TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX)).unwrap_or(DateTime::<Utc>::MAX_UTC);
    AlertOutcome::Retry { error, at, reached: !e.unreached() }
}
