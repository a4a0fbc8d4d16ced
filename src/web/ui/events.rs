//! Live updates: ONE follower task per server process reads the store's change log and publishes
//! what changed on a broadcast channel; each browser gets the changes of the DAG it looks at as
//! server-sent events (`/ui/events?dag_id=`) and re-fetches the live part of its page. Browsers
//! never make the server poll the database for them. A log pruned past the follower's position
//! (a gap) tells every browser to reload what it shows.
//!
//! `/ui/log-tail` streams the growth of one try's log file (the file, not the database).

use super::{Req, Ui, UiError};
use crate::model::TiKey;
use crate::web::auth::SessionCheck;
use axum::extract::{Extension, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::Stream;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often the follower looks at the change log (one read per tick for the whole process,
/// and only while some browser listens).
const TICK: Duration = Duration::from_millis(250);
/// The most change log entries read per tick.
const BATCH: u32 = 5_000;

/// What the follower publishes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A DAG row, a run, or task instances of a run changed (`run_id` unset: the DAG row).
    Dag { dag_id: String, run_id: Option<String> },
    /// The follower lost track (the log was pruned past it): reload everything.
    Refresh,
}

/// The process's one event bus.
#[derive(Clone)]
pub struct Bus(Arc<BusInner>);

struct BusInner {
    store: crate::store::Store,
    tx: broadcast::Sender<Change>,
    started: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Bus {
    pub fn new(store: crate::store::Store) -> Bus {
        let (tx, _) = broadcast::channel(4096);
        let (closing, _) = watch::channel(false);
        Bus(Arc::new(BusInner { store, tx, started: AtomicBool::new(false), closing }))
    }

    /// Ends every event stream and the follower (at shutdown).
    pub fn close(&self) {
        self.0.closing.send_replace(true);
    }

    /// A receiver of every change from now on; the follower starts with the first one.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        let rx = self.0.tx.subscribe();
        if !self.0.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(follow(self.0.clone()));
        }
        rx
    }
}

/// The follower: reads entries after the last one it saw, folds them per run, publishes.
async fn follow(bus: Arc<BusInner>) {
    let mut closing = bus.closing.subscribe();
    let mut seen: Option<i64> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.changed() => return,
        }
        if *closing.borrow() {
            return;
        }
        if bus.tx.receiver_count() == 0 {
            // Nobody listens: forget the position, so a later listener starts from then.
            seen = None;
            continue;
        }
        let from = seen;
        let read = bus
            .store
            .read_async(move |tx| {
                let (oldest, newest) = tx.change_log_bounds()?;
                // The first listener after none: what changed between its page and now is
                // unknown, so it reloads what it shows (a "gap").
                let Some(from) = from else { return Ok((newest, true, Vec::new())) };
                let gap = from < newest && oldest > from + 1;
                if gap {
                    return Ok((newest, true, Vec::new()));
                }
                Ok((from, false, tx.changes_after(from, BATCH)?))
            })
            .await;
        let (position, gap, changes) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the UI's change follower cannot read the change log");
                continue;
            }
        };
        seen = Some(changes.last().map_or(position, |c| c.seq));
        if gap {
            let _ = bus.tx.send(Change::Refresh);
            continue;
        }
        let folded: BTreeSet<(String, Option<String>)> = changes.into_iter().map(|c| (c.dag_id, c.run_id)).collect();
        for (dag_id, run_id) in folded {
            let _ = bus.tx.send(Change::Dag { dag_id, run_id });
        }
    }
}

/// `/ui/events?dag_id=`: the changes of one DAG (of every DAG without `dag_id`) as server-sent
/// events named `change` (data: JSON `{kind, dag_id, run_id}`) and `refresh`. With auth on, the
/// stream ends once its session does (logout, expiry, the user deleted).
pub async fn stream(
    State(ui): State<Ui>,
    session: Option<Extension<SessionCheck>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let dag_id = q.get("dag_id").cloned();
    let rx = ui.bus().subscribe();
    let closing = ui.bus().0.closing.subscribe();
    Sse::new(changes(rx, closing, dag_id, session.map(|Extension(s)| s)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// How often a stream asks whether its session still stands.
const SESSION_CHECK: Duration = Duration::from_secs(5);

fn changes(
    rx: broadcast::Receiver<Change>,
    closing: watch::Receiver<bool>,
    dag_id: Option<String>,
    session: Option<SessionCheck>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let check = tokio::time::interval_at(tokio::time::Instant::now() + SESSION_CHECK, SESSION_CHECK);
    futures_util::stream::unfold(
        (rx, closing, dag_id, session, check),
        |(mut rx, mut closing, dag_id, session, mut check)| async move {
            loop {
                if *closing.borrow() {
                    return None;
                }
                let change = tokio::select! {
                    c = rx.recv() => c,
                    _ = closing.changed() => return None,
                    _ = check.tick() => {
                        if let Some(s) = &session && !s.alive().await {
                            return None;
                        }
                        continue;
                    }
                };
                let event = match change {
                    Ok(Change::Dag { dag_id: d, .. }) if dag_id.as_ref().is_some_and(|want| *want != d) => continue,
                    Ok(c @ Change::Dag { .. }) => {
                        Event::default().event("change").data(serde_json::to_string(&c).unwrap_or_default())
                    }
                    // A browser that fell behind the channel missed changes: it reloads what it shows.
                    Ok(Change::Refresh) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("refresh").data("{}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (rx, closing, dag_id, session, check)));
            }
        },
    )
}

/// How often a log tail looks at its file.
const LOG_TICK: Duration = Duration::from_millis(300);
/// The most bytes one log event carries.
const LOG_CHUNK: u64 = 64 << 10;

/// `/ui/log-tail?dag_id&run_id&task_id&try&offset`: the log file's new text from `offset` as
/// `append` events (data: the text), for a try the store has. The stream ends when the try is no
/// longer running and the file has nothing more, when its session ends, or at shutdown.
pub async fn log_tail(
    r: Req,
    session: Option<Extension<SessionCheck>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let need = |k: &str| q.get(k).cloned().ok_or_else(|| UiError::bad_request(format!("`{k}` is missing")));
    let parsed = (|| -> Result<(TiKey, u32, u64), UiError> {
        let key = TiKey { dag_id: need("dag_id")?, run_id: need("run_id")?, task_id: need("task_id")? };
        let try_text = need("try")?;
        let try_number =
            try_text.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                UiError::bad_request(format!("`try` must be an integer of at least 1, not `{try_text}`"))
            })?;
        // A browser reconnecting after a dropped stream says where it got to.
        let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let offset = match resumed.map(|o| o.to_string()).as_ref().or(q.get("offset")) {
            None => 0,
            Some(o) => {
                o.parse::<u64>().map_err(|_| UiError::bad_request(format!("`offset` `{o}` is not a byte offset")))?
            }
        };
        Ok((key, try_number, offset))
    })();
    let (key, try_number, offset) = match parsed {
        Ok(p) => p,
        Err(e) => return r.respond(Err(e)),
    };
    // Only a try the store has: the ids then passed the id rules, so the path stays in the logs.
    let k = key.clone();
    let known = r.ui.read(move |tx| Ok(tx.task_instance(&k)?)).await;
    match known {
        Ok(Some(ti)) if try_number <= ti.try_number.max(1) => {}
        Ok(_) => {
            let e = UiError::not_found(format!(
                "run `{}` of DAG `{}` has no try {try_number} of task `{}`",
                key.run_id, key.dag_id, key.task_id
            ));
            return r.respond(Err(e));
        }
        Err(e) => return r.respond(Err(e)),
    }
    let path = r.ui.web().actions.log_path(&key, try_number);
    let closing = r.ui.bus().0.closing.subscribe();
    let tail = Tail {
        ui: r.ui.clone(),
        key,
        try_number,
        path,
        offset,
        closing,
        session: session.map(|Extension(s)| s),
        checked: tokio::time::Instant::now(),
        ended: false,
        done: false,
    };
    let stream =
        futures_util::stream::unfold(tail, |mut t| async move {
            loop {
                if *t.closing.borrow() || t.done {
                    return None;
                }
                let p = t.path.clone();
                let offset = t.offset;
                let chunk = tokio::task::spawn_blocking(move || read_from(&p, offset)).await.ok().flatten();
                match chunk {
                    Some(bytes) if !bytes.is_empty() => {
                        t.offset += bytes.len() as u64;
                        // SSE cannot carry a carriage return.
                        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
                        let event = Event::default().event("append").id(t.offset.to_string()).data(text);
                        return Some((Ok::<_, Infallible>(event), t));
                    }
                    _ if t.ended => {
                        // The try is over and its log read: say so (the browser stops), then end.
                        t.done = true;
                        return Some((Ok(Event::default().event("end").data("")), t));
                    }
                    _ => {
                        if t.checked.elapsed() >= TAIL_CHECK {
                            t.checked = tokio::time::Instant::now();
                            if let Some(s) = &t.session
                                && !s.alive().await
                            {
                                return None;
                            }
                            // Nothing new and the try is over: one more read (the last lines), then the end.
                            let k = t.key.clone();
                            let n = t.try_number;
                            let running =
                                t.ui.read(move |tx| Ok(tx.task_instance(&k)?)).await.ok().flatten().is_some_and(|ti| {
                                    ti.try_number == n && ti.state == crate::model::TaskState::Running
                                });
                            if !running {
                                t.ended = true;
                                continue;
                            }
                        }
                        tokio::time::sleep(LOG_TICK).await
                    }
                }
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// A log tail's state between events.
struct Tail {
    ui: Ui,
    key: TiKey,
    try_number: u32,
    path: std::path::PathBuf,
    offset: u64,
    closing: watch::Receiver<bool>,
    session: Option<SessionCheck>,
    checked: tokio::time::Instant,
    /// The try is over: read what is left, then send `end`.
    ended: bool,
    done: bool,
}

/// How often an idle log tail asks whether its try still runs and its session stands.
const TAIL_CHECK: Duration = Duration::from_secs(2);

/// Up to `LOG_CHUNK` bytes of `path` from `offset`, cut after the last whole line.
fn read_from(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut out = Vec::new();
    f.take(LOG_CHUNK).read_to_end(&mut out).ok()?;
    let whole = out.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    // A whole chunk without a newline (a line longer than a chunk) goes as it is, or the tail
    // would wait for its end for ever.
    if whole > 0 || (out.len() as u64) < LOG_CHUNK {
        out.truncate(whole);
    }
    Some(out)
}
