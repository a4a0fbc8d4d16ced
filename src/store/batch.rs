//! Group commit for async writers: `Store::write_async` hands its transaction body to one writer
//! thread per store, which runs every body waiting at that moment in one SQLite transaction, each
//! inside its own savepoint (a body's error rolls back only its own writes), commits once, and then
//! answers each caller. The bodies run one after another, as separate transactions would; what is
//! saved is the cost of beginning and committing a transaction (file locks, WAL frames, a thread
//! hand-off) per body, which bounds a wide run's tries otherwise: each try writes its claim and
//! its outcome.

use super::{StoreError, StoreResult, Tx};
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Bodies run in one transaction at most (a scheduler pass waits for the batch before it).
const MAX_BATCH: usize = 128;

/// How one body answers, once its batch is committed (`Ok`) or not (the commit's error).
type Deliver = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// A body run in the batch's transaction: whether it succeeded, and how to answer.
type Work = Box<dyn FnOnce(&Tx) -> (bool, Deliver) + Send>;

pub(super) struct Job {
    /// Runs the body in the batch's transaction: whether it succeeded, and how to answer.
    work: Work,
    /// Answers without running (the batch's transaction could not begin).
    refuse: Box<dyn FnOnce(StoreError) + Send>,
}

impl Job {
    /// A job for `f`, answered on the returned receiver.
    pub(super) fn new<T: Send + 'static>(
        f: impl FnOnce(&Tx) -> StoreResult<T> + Send + 'static,
    ) -> (Job, tokio::sync::oneshot::Receiver<StoreResult<T>>) {
        let (send, recv) = tokio::sync::oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(send)));
        let answer = slot.clone();
        let work: Work = Box::new(move |tx: &Tx| -> (bool, Deliver) {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| crate::model::caught::caught(|| f(tx))))
                .unwrap_or_else(|panic| Err(StoreError::Task(format!("a store write panicked: {}", message(&panic)))));
            let ok = result.is_ok();
            let deliver: Deliver = Box::new(move |committed: StoreResult<()>| {
                let result = match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(e),
                    (Err(e), _) => Err(e),
                };
                if let Some(send) = answer.lock().ok().and_then(|mut s| s.take()) {
                    let _ = send.send(result);
                }
            });
            (ok, deliver)
        });
        let refuse = Box::new(move |e: StoreError| {
            if let Some(send) = slot.lock().ok().and_then(|mut s| s.take()) {
                let _ = send.send(Err(e));
            }
        });
        (Job { work, refuse }, recv)
    }
}

fn message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Starts the writer thread of a store's connection; it ends when every sender is gone.
pub(super) fn start(conn: Arc<Mutex<Connection>>) -> Sender<Job> {
    let (send, recv) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new().name("rhaiflow-store-writer".into()).spawn(move || writer(&conn, &recv));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store's writer thread");
    }
    send
}

fn writer(conn: &Mutex<Connection>, recv: &Receiver<Job>) {
    while let Ok(first) = recv.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match recv.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        run_batch(conn, jobs);
    }
}

fn run_batch(conn: &Mutex<Connection>, jobs: Vec<Job>) {
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => Tx { tx },
        Err(e) => {
            let e = StoreError::from(e);
            for job in jobs {
                (job.refuse)(clone_error(&e));
            }
            return;
        }
    };
    let mut answers = Vec::with_capacity(jobs.len());
    let mut broken: Option<StoreError> = None;
    for job in jobs {
        if let Some(e) = &broken {
            (job.refuse)(clone_error(e));
            continue;
        }
        if let Err(e) = tx.tx.execute_batch("SAVEPOINT job") {
            let e = StoreError::from(e);
            (job.refuse)(e.clone());
            broken = Some(e);
            continue;
        }
        let (ok, deliver) = (job.work)(&tx);
        // A savepoint left open would let the next failing body roll back every body since:
        // any error here ends the batch (`broken`).
        let ended = if ok {
            tx.tx.execute_batch("RELEASE job")
        } else {
            tx.tx.execute_batch("ROLLBACK TO job").and_then(|()| tx.tx.execute_batch("RELEASE job"))
        };
        if let Err(e) = ended {
            broken = Some(e.into());
        }
        answers.push(deliver);
    }
    let committed = match broken {
        Some(e) => Err(e),
        None => tx.tx.commit().map_err(StoreError::from),
    };
    for deliver in answers {
        deliver(committed.as_ref().map(|_| ()).map_err(clone_error));
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    e.clone()
}
