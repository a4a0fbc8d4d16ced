//! The event loop: an async task that selects over events (a task finished, a wake from another
//! command, SIGINT/SIGTERM) and the next due time, runs a scheduling pass when something may have
//! changed, and owns shutdown. Time comes from an injected `Clock`, so tests can run it on tokio's
//! paused clock and wait on events, never on sleeps.

use super::Progress;
use crate::model::Event;
use crate::scheduler::{Pass, Scheduler};
use crate::worker::Worker;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Where the loop reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows tokio's (pausable) time from a starting instant: under
/// `tokio::time::pause()` the loop's sleeps advance it at once, deterministically.
pub struct TokioClock {
    start: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: DateTime<Utc>) -> TokioClock {
        TokioClock { start, base: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::TimeDelta::from_std(self.base.elapsed()).unwrap_or(chrono::TimeDelta::MAX);
        self.start.checked_add_signed(elapsed).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// What the loop drives and how it stops.
pub struct LoopParts<'a> {
    pub scheduler: &'a mut Scheduler,
    pub worker: &'a Worker,
    pub events: UnboundedReceiver<Event>,
    pub clock: &'a dyn Clock,
    /// With runs: stop when these have finished (`dags test`, `backfill`); without: run until
    /// shutdown (the scheduler).
    pub until: Option<HashSet<(String, String)>>,
    /// After SIGINT/SIGTERM, how long running tasks get before they are terminated.
    pub grace: Duration,
}

/// How long events are gathered into one pass while other tasks still run: a wide DAG finishing
/// is then one pass, not one per task.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Runs the loop until shutdown (or until the given runs finish).
pub async fn drive(parts: LoopParts<'_>, report: &mut dyn FnMut(Progress)) -> anyhow::Result<()> {
    let LoopParts { scheduler, worker, mut events, clock, until, grace } = parts;
    let mut pending = until;
    let mut next_wake: Option<DateTime<Utc>> = None;
    let mut need_pass = true;
    loop {
        if need_pass {
            let pass = run_pass(scheduler, clock, pending.is_some())?;
            for (key, state) in &pass.decided {
                tracing::info!(
                    dag_id = %key.dag_id, task_id = %key.task_id, run_id = %key.run_id, %state,
                    "task decided without running"
                );
                report(Progress::Finished(key, *state, 0.0));
            }
            if !pass.finished_runs.is_empty() {
                // A run's end may have written its DAG-level callback to the outbox.
                worker.tell_outbox();
            }
            for (dag_id, run_id, state) in &pass.finished_runs {
                tracing::info!(%dag_id, %run_id, %state, "run finished");
                report(Progress::RunFinished(dag_id, run_id, *state));
                if let Some(p) = &mut pending {
                    p.remove(&(dag_id.clone(), run_id.clone()));
                }
            }
            for task in pass.to_run {
                worker.launch(task);
            }
            for (task, reason) in pass.refused {
                worker.refuse(task, reason);
            }
            // A run of ours may have been finished by another process: the store says so.
            if let Some(p) = &mut pending {
                let ids: Vec<(String, String)> = p.iter().cloned().collect();
                for (dag_id, run_id, state) in blocking(|| scheduler.run_states(&ids))? {
                    if state.is_finished() {
                        report(Progress::RunFinished(&dag_id, &run_id, state));
                        p.remove(&(dag_id, run_id));
                    }
                }
            }
            if pending.as_ref().is_some_and(|p| p.is_empty()) {
                // Report what tasks finishing in the same instant as the run sent.
                worker.wait_idle().await;
                while let Ok(event) = events.try_recv() {
                    report_event(&event, report);
                }
                return Ok(());
            }
            next_wake = pass.next_wake;
            need_pass = false;
        }
        let due = next_wake.map(|at| (at - clock.now()).to_std().unwrap_or(Duration::ZERO));
        let first = tokio::select! {
            event = events.recv() => match event {
                Some(e) => Some(e),
                None => return Ok(()),
            },
            _ = sleep_for(due) => None,
        };
        // A timeout means something fell due.
        let Some(first) = first else {
            need_pass = true;
            continue;
        };
        let mut batch = vec![first];
        if worker.running() > 0 {
            let window = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(window);
            loop {
                tokio::select! {
                    Some(e) = events.recv() => batch.push(e),
                    _ = &mut window => break,
                }
            }
        }
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        for event in batch {
            report_event(&event, report);
            match event {
                // A task merely starting changes nothing the scheduler decides on.
                Event::TaskStarted { .. } => {}
                Event::TaskFinished { .. } => need_pass = true,
                // Another command changed the store: a `tasks clear` may have stopped a running try.
                Event::Wake => {
                    worker.stop_cleared();
                    // Another process may have written alerts (a backfill, `dags test`).
                    worker.tell_outbox();
                    need_pass = true;
                }
                Event::Shutdown => return shut_down(worker, &mut events, grace, report).await,
            }
        }
    }
}

/// One scheduling pass, off the async threads' hot path (SQLite work blocks).
fn run_pass(scheduler: &mut Scheduler, clock: &dyn Clock, foreground: bool) -> anyhow::Result<Pass> {
    let started = std::time::Instant::now();
    let pass = match blocking(|| scheduler.pass(clock.now())) {
        Ok(pass) => pass,
        // The long-running scheduler outlives a bad pass (e.g. the store busy beyond its timeout);
        // it logs and looks again a second later.
        Err(e) if !foreground => {
            tracing::error!(error = %e, "scheduling pass failed; retrying in 1 s");
            Pass { next_wake: Some(clock.now() + chrono::TimeDelta::seconds(1)), ..Default::default() }
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, queued = pass.to_run.len(), "scheduling pass");
    Ok(pass)
}

/// Runs blocking store work from the loop: on a multi-threaded runtime other tasks move off this
/// thread meanwhile; a current-thread runtime (tests on paused time) just runs it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn sleep_for(due: Option<Duration>) {
    match due {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn report_event(event: &Event, report: &mut dyn FnMut(Progress)) {
    match event {
        Event::TaskStarted { key, try_number } => {
            tracing::info!(
                dag_id = %key.dag_id, task_id = %key.task_id, run_id = %key.run_id, try_number,
                "task started"
            );
            report(Progress::Started(key, *try_number))
        }
        Event::TaskFinished { key, state, duration, try_number } => {
            let (dag_id, task_id, run_id) = (&key.dag_id, &key.task_id, &key.run_id);
            let duration_s = (duration * 1000.0).round() / 1000.0;
            // At `info` like every line of the scheduler's own doing: `dags test` and `backfill`
            // (at `warn`) print their own progress lines.
            tracing::info!(%dag_id, %task_id, %run_id, try_number, %state, duration_s, "task finished");
            report(Progress::Finished(key, *state, *duration))
        }
        Event::Wake | Event::Shutdown => {}
    }
}

/// Starts nothing new; lets launched tasks finish for up to `grace`, then terminates the rest
/// (SIGTERM, SIGKILL after `kill_grace`) and waits until each has written its outcome.
async fn shut_down(
    worker: &Worker,
    events: &mut UnboundedReceiver<Event>,
    grace: Duration,
    report: &mut dyn FnMut(Progress),
) -> anyhow::Result<()> {
    worker.close();
    if worker.in_flight() > 0 {
        eprintln!("rhaiflow: shutting down; waiting up to {grace:?} for {} running task(s)", worker.running());
    }
    let idle = worker.wait_idle();
    tokio::pin!(idle);
    let timer = tokio::time::sleep(grace);
    tokio::pin!(timer);
    let mut terminated = false;
    loop {
        tokio::select! {
            _ = &mut idle => break,
            _ = &mut timer, if !terminated => {
                eprintln!("rhaiflow: grace period over; terminating {} running task(s)", worker.running());
                worker.terminate_all();
                terminated = true;
            }
            Some(event) = events.recv() => {
                report_event(&event, report);
                // A second SIGINT/SIGTERM: the grace is over now.
                if matches!(event, Event::Shutdown) && !terminated {
                    eprintln!("rhaiflow: asked again; terminating {} running task(s) now", worker.running());
                    worker.terminate_all();
                    terminated = true;
                }
            }
        }
    }
    while let Ok(event) = events.try_recv() {
        report_event(&event, report);
    }
    Ok(())
}
