//! Durable state: every SQL statement of rhaiflow, migrations, transactions and guarded updates.
//!
//! Callers see `Store` and `Tx`, with one method per statement; the caller owns the transaction
//! (`store.write(|tx| ...)`). SQLite today; the face carries no driver types so PostgreSQL can be
//! added behind it.

mod alerts;
mod api;
mod batch;
mod context;
mod migrations;
mod scheduling;
mod ui;
mod users;
mod versions;

use crate::model::{DagRunState, RunType, TaskState, TiKey};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use alerts::{AlertFilter, AlertOutcome, DirectSend, OutboxRow};
pub use api::{DagEntry, DagFilter, ImportErrorRow, PoolRow, RunDates, RunOrder, XComRow};
pub use migrations::MIGRATIONS;
pub use scheduling::{BusyCount, ChangeRow};
pub use ui::OutboxFilter;
pub use users::WebUserRow;
pub use versions::{DagRecord, DagVersionRow};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database `{}`: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    /// Another process held the database past the busy timeout.
    #[error("the database is busy (another process holds its write lock): {0}")]
    Busy(String),
    /// A row broke a constraint (a bug, or two writers racing on the same key).
    #[error("database constraint failed: {0}")]
    Constraint(String),
    /// The disk is full or unwritable.
    #[error("cannot write the database: {0}")]
    Io(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Sql(String),
    /// The blocking thread running a store call died.
    #[error("a store call failed: {0}")]
    Task(String),
    #[error("database `{}` has schema version {found}, newer than this rhaiflow ({known}); upgrade rhaiflow", path.display())]
    TooNew { path: PathBuf, found: u32, known: u32 },
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
    #[error("`{}` is not a rhaiflow database (application_id {id}); refusing to use it", path.display())]
    NotOurs { path: PathBuf, id: i64 },
}

/// A DAG version's file text as kept for its closures, with the dags-folder modules it imported
/// (path relative to the dags folder, text).
#[derive(Debug, Clone)]
pub struct KeptSource {
    pub file: String,
    pub text: String,
    pub modules: Vec<(String, String)>,
}

/// SQLite `PRAGMA application_id` of a rhaiflow database: "RHAF".
pub const APPLICATION_ID: i64 = 0x5248_4146;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let text = e.to_string();
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy(text),
            Some(C::ConstraintViolation) => StoreError::Constraint(text),
            Some(C::DiskFull | C::SystemIoFailure | C::ReadOnly | C::CannotOpen) => StoreError::Io(text),
            _ => StoreError::Sql(text),
        }
    }
}

impl StoreError {
    /// Worth trying again later (the database was busy).
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One page of a list: at most `limit` rows after skipping `offset` (as Airflow's REST API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
}

impl Page {
    /// The largest page a caller may ask for.
    pub const MAX_LIMIT: u32 = 10_000;

    pub fn new(limit: u32, offset: u64) -> Page {
        Page { limit: limit.clamp(1, Page::MAX_LIMIT), offset: offset.min(i64::MAX as u64) }
    }
}

/// A handle on the database; cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    /// The one writing connection: write transactions queue on it.
    conn: Arc<Mutex<Connection>>,
    /// Connections for reads, so readers never wait on the writer (WAL lets them read meanwhile).
    readers: Arc<ReadPool>,
    /// The writer thread that batches `write_async` calls (`batch`), started on first use.
    writer: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<batch::Job>>>,
    path: PathBuf,
    applied_on_open: Vec<u32>,
}

/// Idle read connections, opened on demand and kept up to `MAX_IDLE_READERS`.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 4;

/// A short-lived command closing the database's last connection would checkpoint the WAL into the
/// database and delete it (three fsyncs, and a directory fsync when the next command creates the
/// WAL again): most of a `dags trigger`'s time. The WAL is checkpointed when it grows past 1,000
/// pages instead (SQLite's automatic checkpoint, by whichever connection commits then).
fn no_checkpoint_on_close(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map(|_| ())
}

impl ReadPool {
    fn take(&self) -> StoreResult<Connection> {
        if let Some(conn) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        no_checkpoint_on_close(&conn)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// One transaction. Every method is one SQL statement.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

#[derive(Debug, Clone)]
pub struct DagRow {
    pub dag_id: String,
    pub is_paused: bool,
    pub fileloc: String,
    pub latest_version_hash: String,
}

#[derive(Debug, Clone)]
pub struct DagRunRow {
    pub dag_id: String,
    pub run_id: String,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub run_type: RunType,
    pub state: DagRunState,
    pub conf: serde_json::Value,
    pub version_hash: String,
    pub queued_at: DateTime<Utc>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// The runner (`dags test`, `dags backfill`) that drives this run itself; `None` for runs the
    /// scheduler drives.
    pub owner: Option<String>,
}

/// A new task instance row, written with its run.
#[derive(Debug, Clone)]
pub struct NewTaskInstance {
    pub task_id: String,
    pub max_tries: u32,
    pub priority_weight: i64,
    pub pool: String,
    pub pool_slots: u32,
    pub operator: String,
}

#[derive(Debug, Clone)]
pub struct TiRow {
    pub key: TiKey,
    pub state: TaskState,
    pub try_number: u32,
    pub max_tries: u32,
    pub priority_weight: i64,
    pub pool: String,
    pub pool_slots: u32,
    pub operator: String,
    pub hostname: Option<String>,
    pub pid: Option<i64>,
    pub queued_at: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub next_try_at: Option<DateTime<Utc>>,
    /// The runner that queued or claimed this try.
    pub owner: Option<String>,
    pub pid_token: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// A process that runs task instances (`scheduler`, `dags test`, `dags backfill`), as recorded.
#[derive(Debug, Clone)]
pub struct RunnerRow {
    pub runner_id: String,
    pub kind: String,
    pub hostname: String,
    pub pid: i64,
    pub pid_token: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// One poke of a sensor in reschedule mode that found its condition not met yet.
#[derive(Debug, Clone)]
pub struct TaskReschedule {
    pub try_number: u32,
    pub start_date: DateTime<Utc>,
    pub end_date: DateTime<Utc>,
    pub duration: f64,
    /// When the next poke is due.
    pub reschedule_date: DateTime<Utc>,
}

/// What the scheduler reads of a task instance: enough to decide, nothing more.
#[derive(Debug, Clone)]
pub struct TiStateRow {
    pub key: TiKey,
    pub state: TaskState,
    pub try_number: u32,
    pub max_tries: u32,
    pub next_try_at: Option<DateTime<Utc>>,
}

/// The fields a state change sets besides the state. `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct TiChange {
    pub try_number: Option<u32>,
    pub max_tries: Option<u32>,
    pub hostname: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub next_try_at: Option<DateTime<Utc>>,
    /// The process group running the try (set with the claim, so it is durable before the command runs).
    pub pid: Option<i64>,
    /// Clears start/end/duration/pid/next_try (for `tasks clear`).
    pub reset_times: bool,
    /// Sets the owner (the runner that queues or claims the try). Moving to `none`, `scheduled` or
    /// `up_for_retry` clears it: nobody owns a try that is not queued or running.
    pub owner: Option<String>,
    /// The exec-proof identity of the process group leader, set with `pid`.
    pub pid_token: Option<String>,
    /// Applies the change only while the row is owned by this runner (a try taken over by
    /// recovery is no longer its old owner's to finish).
    pub guard_owner: Option<String>,
}

/// An alert written in the same transaction as the state change that causes it.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub event: String,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub try_number: Option<u32>,
    pub channel: String,
    pub payload: serde_json::Value,
    /// Written `held` rather than `pending`: `dags test` shows what it would send and sends only
    /// with `--send-alerts`, so no deliverer picks these up meanwhile.
    pub held: bool,
}

#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: i64,
    pub event: String,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub channel: String,
    pub state: String,
}

fn parse_enum<T: std::str::FromStr<Err = String>>(text: String) -> rusqlite::Result<T> {
    text.parse::<T>().map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

const TI_COLUMNS: &str = "dag_id, run_id, task_id, state, try_number, max_tries, priority_weight, pool, pool_slots, \
     operator, hostname, pid, queued_at, start_date, end_date, duration, next_try_at, owner, pid_token, heartbeat_at";

fn ti_row(r: &rusqlite::Row) -> rusqlite::Result<TiRow> {
    Ok(TiRow {
        key: TiKey { dag_id: r.get(0)?, run_id: r.get(1)?, task_id: r.get(2)? },
        state: parse_enum(r.get(3)?)?,
        try_number: r.get(4)?,
        max_tries: r.get(5)?,
        priority_weight: r.get(6)?,
        pool: r.get(7)?,
        pool_slots: r.get(8)?,
        operator: r.get(9)?,
        hostname: r.get(10)?,
        pid: r.get(11)?,
        queued_at: r.get(12)?,
        start_date: r.get(13)?,
        end_date: r.get(14)?,
        duration: r.get(15)?,
        next_try_at: r.get(16)?,
        owner: r.get(17)?,
        pid_token: r.get(18)?,
        heartbeat_at: r.get(19)?,
    })
}

const RUN_COLUMNS: &str = "dag_id, run_id, logical_date, data_interval_start, data_interval_end, run_type, state, conf, \
     version_hash, queued_at, start_date, end_date, owner";

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<DagRunRow> {
    let conf: String = r.get(7)?;
    Ok(DagRunRow {
        dag_id: r.get(0)?,
        run_id: r.get(1)?,
        logical_date: r.get(2)?,
        data_interval_start: r.get(3)?,
        data_interval_end: r.get(4)?,
        run_type: parse_enum(r.get(5)?)?,
        state: parse_enum(r.get(6)?)?,
        conf: serde_json::from_str(&conf).unwrap_or(serde_json::Value::Null),
        version_hash: r.get(8)?,
        queued_at: r.get(9)?,
        start_date: r.get(10)?,
        end_date: r.get(11)?,
        owner: r.get(12)?,
    })
}

impl Store {
    /// Opens (creating if needed) the SQLite file, in WAL mode, and applies pending migrations.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open { path: path.to_path_buf(), reason: e.to_string() };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(&e))?;
        }
        // Switching to WAL and migrating take locks that SQLite refuses at once (without the busy
        // handler) while another process does the same; such a refusal is retried for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open_once(path) {
                Err(StoreError::Busy(e) | StoreError::Sql(e) | StoreError::Open { reason: e, .. })
                    if (e.contains("locked") || e.contains("busy")) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> StoreResult<Store> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open { path: path.to_path_buf(), reason: e.to_string() };
        // Created private (0600 whatever the umask); SQLite gives its -wal, -shm and -journal
        // files the database file's mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(&e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| open_err(&e))?;
        no_checkpoint_on_close(&conn).map_err(|e| open_err(&e))?;
        Store::claim_file(&conn, path).map_err(|e| match e {
            // SQLite's "file is not a database" names no file.
            StoreError::Sql(reason) if reason.contains("not a database") => StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("{reason}; point `[database] url` at a rhaiflow database, or move the file away"),
            },
            other => other,
        })?;
        // WAL: readers never block the writer. NORMAL: durable across a process crash (kill -9);
        // only a power loss can drop the last transactions. temp_store MEMORY keeps the savepoint
        // journals of a group commit (`batch.rs`) in memory instead of a temporary file.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
        )
            .map_err(|e| open_err(&e))?;
        let readers = Arc::new(ReadPool { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) });
        let mut store = Store {
            conn: Arc::new(Mutex::new(conn)),
            readers,
            writer: Arc::default(),
            path: path.to_path_buf(),
            applied_on_open: Vec::new(),
        };
        store.applied_on_open = store.migrate()?;
        Ok(store)
    }

    /// Refuses a database that is not rhaiflow's, before anything in it changes: ours carries
    /// `APPLICATION_ID`; an empty file, or one an earlier rhaiflow made (`schema_migration` and
    /// application_id 0), is stamped.
    fn claim_file(conn: &Connection, path: &Path) -> StoreResult<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let checked = (|| {
            let id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            if id == APPLICATION_ID {
                return Ok(());
            }
            let mut stmt = conn.prepare("SELECT name FROM sqlite_master")?;
            let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            if id != 0 || !(names.is_empty() || names.iter().any(|n| n == "schema_migration")) {
                return Err(StoreError::NotOurs { path: path.to_path_buf(), id });
            }
            conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}"))?;
            Ok(())
        })();
        match checked {
            Ok(()) => conn.execute_batch("COMMIT").map_err(StoreError::from),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The migrations `open` applied.
    pub fn applied_on_open(&self) -> &[u32] {
        &self.applied_on_open
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the migrations not yet applied; returns their versions.
    pub fn migrate(&self) -> StoreResult<Vec<u32>> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migration (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )?;
        let current: u32 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migration", [], |r| r.get(0))?;
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > known {
            return Err(StoreError::TooNew { path: self.path.clone(), found: current, known });
        }
        let mut applied = Vec::new();
        for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migration (version, description, applied_at) VALUES (?1, ?2, ?3)",
                params![version, description, Utc::now()],
            )?;
            applied.push(*version);
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Runs `f` in a write transaction (taken at once, so writers queue rather than deadlock).
    /// Any error from `f` rolls the transaction back.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&Tx) -> Result<T, E>) -> Result<T, E> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = Tx {
            tx: conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(StoreError::from)?,
        };
        let out = f(&tx)?;
        tx.tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Runs `f` in a read transaction (one consistent snapshot), on a pooled read connection: it
    /// never waits for a write transaction to finish.
    pub fn read<T, E: From<StoreError>>(&self, f: impl FnOnce(&Tx) -> Result<T, E>) -> Result<T, E> {
        let mut conn = self.readers.take()?;
        let out = {
            let tx = Tx {
                tx: conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
                    .map_err(StoreError::from)?,
            };
            f(&tx)
        };
        self.readers.give_back(conn);
        out
    }

    /// `write` for async callers: `f` runs on the store's writer thread, in one transaction with
    /// the other async writes waiting at that moment (each in its own savepoint: an error from `f`
    /// rolls back only `f`'s writes); the answer comes once that transaction is committed.
    pub async fn write_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tx) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (job, answer) = batch::Job::new(f);
        let writer = self.writer.get_or_init(|| batch::start(self.conn.clone()));
        writer.send(job).map_err(|_| StoreError::Task("the store's writer thread is gone".into()))?;
        answer.await.map_err(|_| StoreError::Task("the store's writer thread dropped a write".into()))?
    }

    /// `read` on the blocking pool, for async callers.
    pub async fn read_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tx) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || crate::model::caught::caught(|| store.read(f)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Tx<'_> {
    // ---- DAGs and versions ----------------------------------------------------------------

    /// Records a DAG seen by the loader; a DAG seen for the first time starts paused when
    /// `paused_if_new` (`[core] dags_are_paused_at_creation`), an existing one keeps its flag.
    pub fn upsert_dag(
        &self,
        dag_id: &str,
        fileloc: &str,
        version_hash: &str,
        now: DateTime<Utc>,
        paused_if_new: bool,
    ) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO dag (dag_id, fileloc, latest_version_hash, is_active, last_parsed_at, is_paused) VALUES (?1, ?2, ?3, 1, ?4, ?5)
                 ON CONFLICT (dag_id) DO UPDATE SET fileloc = ?2, latest_version_hash = ?3, is_active = 1, last_parsed_at = ?4",
            )?
            .execute(params![dag_id, fileloc, version_hash, now, paused_if_new])?;
        Ok(())
    }

    /// Marks DAGs not in `present` inactive (their file is gone), except those recorded from one
    /// of `broken` (files with an import error keep their last good version).
    pub fn deactivate_dags_except(&self, present: &[String], broken: &[String]) -> StoreResult<()> {
        let list = serde_json::to_string(present).unwrap_or_else(|_| "[]".into());
        let broken = serde_json::to_string(broken).unwrap_or_else(|_| "[]".into());
        self.tx.execute(
            "UPDATE dag SET is_active = 0
              WHERE is_active = 1 AND dag_id NOT IN (SELECT value FROM json_each(?1))
                AND fileloc NOT IN (SELECT value FROM json_each(?2))",
            [list, broken],
        )?;
        Ok(())
    }

    /// Marks inactive the DAGs recorded from `file` that it no longer declares (`declared`);
    /// returns their ids.
    pub fn retire_file_dags(&self, file: &str, declared: &[String]) -> StoreResult<Vec<String>> {
        let list = serde_json::to_string(declared).unwrap_or_else(|_| "[]".into());
        let mut stmt = self.tx.prepare_cached(
            "UPDATE dag SET is_active = 0
              WHERE fileloc = ?1 AND is_active = 1 AND dag_id NOT IN (SELECT value FROM json_each(?2))
              RETURNING dag_id",
        )?;
        let rows = stmt.query_map(params![file, list], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks inactive the DAGs recorded from files that are not in `files` (deleted while no
    /// scheduler watched); returns their ids.
    pub fn retire_dags_outside(&self, files: &[String]) -> StoreResult<Vec<String>> {
        let list = serde_json::to_string(files).unwrap_or_else(|_| "[]".into());
        let mut stmt = self.tx.prepare_cached(
            "UPDATE dag SET is_active = 0
              WHERE is_active = 1 AND fileloc NOT IN (SELECT value FROM json_each(?1))
              RETURNING dag_id",
        )?;
        let rows = stmt.query_map(params![list], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a version once (its hash identifies it); `source_hash` names the file text its
    /// closures come from (`insert_dag_source`), for a DAG that has closures.
    pub fn insert_dag_version(
        &self,
        version_hash: &str,
        dag_id: &str,
        spec_json: &str,
        source_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO dag_version (version_hash, dag_id, spec_json, source_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![version_hash, dag_id, spec_json, source_hash, now])?;
        Ok(())
    }

    /// Whether a DAG version is recorded (so its source need not be written again).
    pub fn has_dag_version(&self, version_hash: &str) -> StoreResult<bool> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM dag_version WHERE version_hash = ?1")?
            .query_row([version_hash], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Keeps a DAG file's text once per content (`source_hash` covers the file name, the text and
    /// the modules), and each module it imports once per path and text (`dag_module`: many files
    /// importing one module, and many versions of one file, share it).
    pub fn insert_dag_source(
        &self,
        source_hash: &str,
        file: &str,
        source: &str,
        modules: &[(&str, &str)],
    ) -> StoreResult<()> {
        use sha2::Digest;
        let mut list = Vec::with_capacity(modules.len());
        for (path, text) in modules {
            let mut hasher = sha2::Sha256::new();
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            let hash = hex::encode(hasher.finalize());
            self.tx
                .prepare_cached(
                    "INSERT INTO dag_module (module_hash, path, text) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .execute(params![hash, path, text])?;
            list.push(serde_json::json!({ "path": path, "hash": hash }));
        }
        let modules = (!list.is_empty()).then(|| serde_json::Value::Array(list).to_string());
        self.tx
            .prepare_cached(
                "INSERT INTO dag_source (source_hash, file, source, modules) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![source_hash, file, source, modules])?;
        Ok(())
    }

    /// The file and text a DAG version's closures come from, with the modules it imported;
    /// `None` when the version has no closures or was recorded before sources were kept.
    pub fn dag_version_source(&self, version_hash: &str) -> StoreResult<Option<KeptSource>> {
        let row: Option<(String, String, Option<String>)> = self
            .tx
            .prepare_cached(
                "SELECT s.file, s.source, s.modules FROM dag_version v JOIN dag_source s ON s.source_hash = v.source_hash
                 WHERE v.version_hash = ?1",
            )?
            .query_row([version_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((file, text, modules)) = row else { return Ok(None) };
        let mut kept_modules = Vec::new();
        if let Some(json) = modules {
            #[derive(serde::Deserialize)]
            struct Kept {
                path: String,
                hash: String,
            }
            let corrupt =
                |what: String| StoreError::Corrupt(format!("the modules kept with DAG version {version_hash}: {what}"));
            let kept: Vec<Kept> = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
            for k in kept {
                let text: Option<String> = self
                    .tx
                    .prepare_cached("SELECT text FROM dag_module WHERE module_hash = ?1")?
                    .query_row([&k.hash], |r| r.get(0))
                    .optional()?;
                let text = text.ok_or_else(|| corrupt(format!("module `{}` ({}) is missing", k.path, k.hash)))?;
                kept_modules.push((k.path, text));
            }
        }
        Ok(Some(KeptSource { file, text, modules: kept_modules }))
    }

    pub fn dag_version_json(&self, version_hash: &str) -> StoreResult<Option<String>> {
        Ok(self
            .tx
            .prepare_cached("SELECT spec_json FROM dag_version WHERE version_hash = ?1")?
            .query_row([version_hash], |r| r.get(0))
            .optional()?)
    }

    pub fn dags(&self) -> StoreResult<Vec<DagRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT dag_id, is_paused, fileloc, latest_version_hash FROM dag WHERE is_active = 1 ORDER BY dag_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DagRow { dag_id: r.get(0)?, is_paused: r.get(1)?, fileloc: r.get(2)?, latest_version_hash: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets the paused flag; `false` when the DAG is unknown.
    pub fn set_paused(&self, dag_id: &str, paused: bool) -> StoreResult<bool> {
        Ok(self.tx.execute("UPDATE dag SET is_paused = ?2 WHERE dag_id = ?1", params![dag_id, paused])? == 1)
    }

    pub fn replace_import_errors(&self, errors: &[(String, String)], now: DateTime<Utc>) -> StoreResult<()> {
        self.tx.execute("DELETE FROM import_error", [])?;
        let mut stmt =
            self.tx.prepare_cached("INSERT INTO import_error (filename, message, timestamp) VALUES (?1, ?2, ?3)")?;
        for (file, message) in errors {
            stmt.execute(params![file, message, now])?;
        }
        Ok(())
    }

    /// Records (or replaces) one file's import error.
    pub fn set_import_error(&self, file: &str, message: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.tx.execute("DELETE FROM import_error WHERE filename = ?1", params![file])?;
        self.tx.execute(
            "INSERT INTO import_error (filename, message, timestamp) VALUES (?1, ?2, ?3)",
            params![file, message, now],
        )?;
        Ok(())
    }

    /// Forgets one file's import error (fixed or deleted).
    pub fn clear_import_error(&self, file: &str) -> StoreResult<()> {
        self.tx.execute("DELETE FROM import_error WHERE filename = ?1", params![file])?;
        Ok(())
    }

    pub fn import_errors(&self) -> StoreResult<Vec<(String, String)>> {
        let mut stmt = self.tx.prepare_cached("SELECT filename, message FROM import_error ORDER BY filename")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- DAG runs -----------------------------------------------------------------------------

    /// Inserts a run; `false` when one exists for the same `(dag_id, logical_date)` or `run_id`.
    pub fn insert_dag_run(&self, run: &DagRunRow) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO dag_run (dag_id, run_id, logical_date, data_interval_start, data_interval_end,
                     run_type, state, conf, version_hash, queued_at, start_date, end_date, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                run.dag_id,
                run.run_id,
                run.logical_date,
                run.data_interval_start,
                run.data_interval_end,
                run.run_type.as_str(),
                run.state.as_str(),
                run.conf.to_string(),
                run.version_hash,
                run.queued_at,
                run.start_date,
                run.end_date,
                run.owner
            ])?;
        Ok(n == 1)
    }

    /// The data interval of the latest scheduled run, which the timetable continues from.
    pub fn latest_scheduled_interval(&self, dag_id: &str) -> StoreResult<Option<(DateTime<Utc>, DateTime<Utc>)>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT data_interval_start, data_interval_end FROM dag_run
                 WHERE dag_id = ?1 AND run_type = 'scheduled' ORDER BY logical_date DESC LIMIT 1",
            )?
            .query_row([dag_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Runs in `queued` or `running`, oldest logical date first.
    pub fn active_runs(&self) -> StoreResult<Vec<DagRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE state IN ('queued', 'running') ORDER BY logical_date, dag_id"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn dag_runs(&self, dag_id: &str) -> StoreResult<Vec<DagRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 ORDER BY logical_date");
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([dag_id], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One page of a DAG's runs, newest logical date first, and how many there are in all.
    pub fn dag_runs_page(&self, dag_id: &str, page: Page) -> StoreResult<(Vec<DagRunRow>, u64)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 ORDER BY logical_date DESC LIMIT ?2 OFFSET ?3"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![dag_id, page.limit, page.offset as i64], run_row)?;
        let rows: Vec<DagRunRow> = rows.collect::<Result<_, _>>()?;
        let total: i64 = self
            .tx
            .prepare_cached("SELECT COUNT(*) FROM dag_run WHERE dag_id = ?1")?
            .query_row([dag_id], |r| r.get(0))?;
        Ok((rows, u64::try_from(total).unwrap_or_default()))
    }

    /// The run of a DAG at a logical date, whatever its run id.
    pub fn dag_run_at(&self, dag_id: &str, logical_date: DateTime<Utc>) -> StoreResult<Option<DagRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 AND logical_date = ?2");
        Ok(self.tx.prepare_cached(&sql)?.query_row(params![dag_id, logical_date], run_row).optional()?)
    }

    pub fn dag_run(&self, dag_id: &str, run_id: &str) -> StoreResult<Option<DagRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = ?1 AND run_id = ?2");
        Ok(self.tx.prepare_cached(&sql)?.query_row([dag_id, run_id], run_row).optional()?)
    }

    /// Deletes a run's row (with `delete_task_instances_of_run` and `delete_xcoms_of_run`: how
    /// `dags test` replaces its earlier run of a date, as Airflow's does).
    pub fn delete_dag_run(&self, dag_id: &str, run_id: &str) -> StoreResult<bool> {
        Ok(self
            .tx
            .prepare_cached("DELETE FROM dag_run WHERE dag_id = ?1 AND run_id = ?2")?
            .execute([dag_id, run_id])?
            == 1)
    }

    pub fn delete_task_instances_of_run(&self, dag_id: &str, run_id: &str) -> StoreResult<usize> {
        Ok(self
            .tx
            .prepare_cached("DELETE FROM task_instance WHERE dag_id = ?1 AND run_id = ?2")?
            .execute([dag_id, run_id])?)
    }

    pub fn delete_xcoms_of_run(&self, dag_id: &str, run_id: &str) -> StoreResult<usize> {
        Ok(self.tx.prepare_cached("DELETE FROM xcom WHERE dag_id = ?1 AND run_id = ?2")?.execute([dag_id, run_id])?)
    }

    /// The run before `logical_date` of the same DAG (for `depends_on_past`).
    pub fn previous_run_id(&self, dag_id: &str, logical_date: DateTime<Utc>) -> StoreResult<Option<String>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT run_id FROM dag_run WHERE dag_id = ?1 AND logical_date < ?2 ORDER BY logical_date DESC LIMIT 1",
            )?
            .query_row(params![dag_id, logical_date], |r| r.get(0))
            .optional()?)
    }

    /// Guarded run state change: `false` when the run was not in `from` (a lost race).
    pub fn set_run_state(
        &self,
        dag_id: &str,
        run_id: &str,
        from: DagRunState,
        to: DagRunState,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE dag_run SET state = ?4,
                     start_date = CASE WHEN ?4 = 'running' THEN COALESCE(start_date, ?5)
                                       WHEN ?4 = 'queued' THEN NULL ELSE start_date END,
                     end_date = CASE WHEN ?4 IN ('success', 'failed') THEN ?5 ELSE NULL END
                 WHERE dag_id = ?1 AND run_id = ?2 AND state = ?3",
            )?
            .execute(params![dag_id, run_id, from.as_str(), to.as_str(), at])?;
        Ok(n == 1)
    }

    // ---- task instances ---------------------------------------------------------------------

    pub fn insert_task_instances(&self, dag_id: &str, run_id: &str, tis: &[NewTaskInstance]) -> StoreResult<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO task_instance (dag_id, run_id, task_id, state, max_tries, priority_weight, pool, pool_slots, operator)
             VALUES (?1, ?2, ?3, 'none', ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT DO NOTHING",
        )?;
        for ti in tis {
            stmt.execute(params![
                dag_id,
                run_id,
                ti.task_id,
                ti.max_tries,
                ti.priority_weight,
                ti.pool,
                ti.pool_slots,
                ti.operator
            ])?;
        }
        Ok(())
    }

    /// The scheduling view of every task instance of every active run, in one query.
    pub fn task_states_of_active_runs(&self) -> StoreResult<Vec<TiStateRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.state, ti.try_number, ti.max_tries, ti.next_try_at
             FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
             WHERE r.state IN ('queued', 'running')",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TiStateRow {
                key: TiKey { dag_id: r.get(0)?, run_id: r.get(1)?, task_id: r.get(2)? },
                state: parse_enum(r.get(3)?)?,
                try_number: r.get(4)?,
                max_tries: r.get(5)?,
                next_try_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn task_instances_of_run(&self, dag_id: &str, run_id: &str) -> StoreResult<Vec<TiRow>> {
        let sql = format!("SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = ?1 AND run_id = ?2 ORDER BY rowid");
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([dag_id, run_id], ti_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn task_instance(&self, key: &TiKey) -> StoreResult<Option<TiRow>> {
        let sql = format!("SELECT {TI_COLUMNS} FROM task_instance WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3");
        Ok(self.tx.prepare_cached(&sql)?.query_row([&key.dag_id, &key.run_id, &key.task_id], ti_row).optional()?)
    }

    /// Task instances in `queued`, `running` or `restarting`, whatever their run (for crash recovery).
    pub fn unfinished_claimed_task_instances(&self) -> StoreResult<Vec<TiRow>> {
        let sql = format!("SELECT {TI_COLUMNS} FROM task_instance WHERE state IN ('queued', 'running', 'restarting')");
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt.query_map([], ti_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The guarded state update: applies only when the task instance is still in `from`.
    /// `false` means another actor changed it first (a lost race).
    pub fn set_ti_state(&self, key: &TiKey, from: TaskState, to: TaskState, change: &TiChange) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE task_instance SET state = ?5,
                     try_number = COALESCE(?6, try_number),
                     max_tries = COALESCE(?7, max_tries),
                     hostname = COALESCE(?8, hostname),
                     queued_at = COALESCE(?9, queued_at),
                     start_date = CASE WHEN ?15 THEN NULL ELSE COALESCE(?10, start_date) END,
                     end_date = CASE WHEN ?15 THEN NULL ELSE COALESCE(?11, end_date) END,
                     duration = CASE WHEN ?15 THEN NULL ELSE COALESCE(?12, duration) END,
                     next_try_at = CASE WHEN ?15 THEN NULL ELSE ?13 END,
                     pid = CASE WHEN ?15 OR ?14 THEN NULL ELSE COALESCE(?16, pid) END,
                     pid_token = CASE WHEN ?15 OR ?14 THEN NULL ELSE COALESCE(?18, pid_token) END,
                     heartbeat_at = CASE WHEN ?16 IS NULL THEN heartbeat_at ELSE ?10 END,
                     owner = CASE WHEN ?5 IN ('none', 'scheduled', 'up_for_retry', 'up_for_reschedule') THEN NULL
                                  ELSE COALESCE(?17, owner) END
                 WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND state = ?4
                   AND (?19 IS NULL OR owner = ?19)",
            )?
            .execute(params![
                key.dag_id,
                key.run_id,
                key.task_id,
                from.as_str(),
                to.as_str(),
                change.try_number,
                change.max_tries,
                change.hostname,
                change.queued_at,
                change.start_date,
                change.end_date,
                change.duration,
                change.next_try_at,
                to.is_finished() || matches!(to, TaskState::UpForRetry | TaskState::UpForReschedule),
                change.reset_times,
                change.pid,
                change.owner,
                change.pid_token,
                change.guard_owner,
            ])?;
        Ok(n == 1)
    }

    /// Moves a claimed try from a gone owner to `new_owner` (state unchanged); `false` when its
    /// state or owner changed meanwhile.
    pub fn take_over_ti(
        &self,
        key: &TiKey,
        state: TaskState,
        old_owner: Option<&str>,
        new_owner: &str,
    ) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE task_instance SET owner = ?6
                 WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND state = ?4
                   AND (owner = ?5 OR (owner IS NULL AND ?5 IS NULL))",
            )?
            .execute(params![key.dag_id, key.run_id, key.task_id, state.as_str(), old_owner, new_owner])?;
        Ok(n == 1)
    }

    pub fn heartbeat(&self, key: &TiKey, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE task_instance SET heartbeat_at = ?4 WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND state = 'running'",
            )?
            .execute(params![key.dag_id, key.run_id, key.task_id, now])?;
        Ok(n == 1)
    }

    /// The state of one task in the run before (for `depends_on_past`).
    pub fn ti_state(&self, dag_id: &str, run_id: &str, task_id: &str) -> StoreResult<Option<TaskState>> {
        let text: Option<String> = self
            .tx
            .prepare_cached("SELECT state FROM task_instance WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3")?
            .query_row([dag_id, run_id, task_id], |r| r.get(0))
            .optional()?;
        text.map(|t| t.parse::<TaskState>().map_err(StoreError::Corrupt)).transpose()
    }

    // ---- sensors in reschedule mode ---------------------------------------------------------

    /// Records the process group of a running try's latest process (a `BashSensor`'s poke), while
    /// `owner` still owns the try; `false` when it does not.
    pub fn set_ti_process(&self, key: &TiKey, owner: &str, pid: i64, pid_token: Option<&str>) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE task_instance SET pid = ?5, pid_token = ?6
                 WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND state = 'running' AND owner = ?4",
            )?
            .execute(params![key.dag_id, key.run_id, key.task_id, owner, pid, pid_token])?;
        Ok(n == 1)
    }

    /// Records one poke of a sensor in reschedule mode that was not done (Airflow's `task_reschedule`).
    pub fn insert_task_reschedule(&self, key: &TiKey, poke: &TaskReschedule) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO task_reschedule (dag_id, run_id, task_id, try_number, start_date, end_date, duration, reschedule_date)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                key.dag_id,
                key.run_id,
                key.task_id,
                poke.try_number,
                poke.start_date,
                poke.end_date,
                poke.duration,
                poke.reschedule_date
            ])?;
        Ok(())
    }

    /// The first poke's start and the number of pokes recorded for one try of a sensor in
    /// reschedule mode; `None` when it has none (its first claim, or cleared since).
    pub fn task_reschedules(&self, key: &TiKey, try_number: u32) -> StoreResult<Option<(DateTime<Utc>, u32)>> {
        let (first, count): (Option<DateTime<Utc>>, u32) = self
            .tx
            .prepare_cached(
                "SELECT MIN(start_date), COUNT(*) FROM task_reschedule
                 WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND try_number = ?4",
            )?
            .query_row(params![key.dag_id, key.run_id, key.task_id, try_number], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(first.map(|first| (first, count)))
    }

    // ---- runners ----------------------------------------------------------------------------

    pub fn insert_runner(&self, runner: &RunnerRow) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO runner (runner_id, kind, hostname, pid, pid_token, started_at, heartbeat_at, stopped_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                runner.runner_id,
                runner.kind,
                runner.hostname,
                runner.pid,
                runner.pid_token,
                runner.started_at,
                runner.heartbeat_at,
                runner.stopped_at
            ])?;
        Ok(())
    }

    /// Records that a runner is alive; `false` when it is unknown or marked stopped.
    pub fn runner_heartbeat(&self, runner_id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached("UPDATE runner SET heartbeat_at = ?2 WHERE runner_id = ?1 AND stopped_at IS NULL")?
            .execute(params![runner_id, now])?;
        Ok(n == 1)
    }

    pub fn stop_runner(&self, runner_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.tx
            .prepare_cached("UPDATE runner SET stopped_at = ?2 WHERE runner_id = ?1")?
            .execute(params![runner_id, now])?;
        Ok(())
    }

    /// Forgets runners that stopped before `before` and own nothing any more.
    pub fn prune_runners(&self, before: DateTime<Utc>) -> StoreResult<usize> {
        Ok(self
            .tx
            .prepare_cached(
                "DELETE FROM runner WHERE stopped_at IS NOT NULL AND stopped_at < ?1
               AND NOT EXISTS (SELECT 1 FROM task_instance ti WHERE ti.owner = runner.runner_id
                               AND ti.state IN ('queued', 'running'))",
            )?
            .execute(params![before])?)
    }

    pub fn runners(&self) -> StoreResult<Vec<RunnerRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT runner_id, kind, hostname, pid, pid_token, started_at, heartbeat_at, stopped_at FROM runner",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunnerRow {
                runner_id: r.get(0)?,
                kind: r.get(1)?,
                hostname: r.get(2)?,
                pid: r.get(3)?,
                pid_token: r.get(4)?,
                started_at: r.get(5)?,
                heartbeat_at: r.get(6)?,
                stopped_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Unfinished runs that a runner drives itself: `(dag_id, run_id, run_type, owner)`.
    pub fn owned_unfinished_runs(&self) -> StoreResult<Vec<(String, String, RunType, String)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT dag_id, run_id, run_type, owner FROM dag_run
             WHERE owner IS NOT NULL AND state IN ('queued', 'running')",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, parse_enum(r.get(2)?)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Hands a run back to the scheduler; `false` when its owner changed meanwhile.
    pub fn release_run(&self, dag_id: &str, run_id: &str, old_owner: &str) -> StoreResult<bool> {
        let n = self
            .tx
            .prepare_cached("UPDATE dag_run SET owner = NULL WHERE dag_id = ?1 AND run_id = ?2 AND owner = ?3")?
            .execute(params![dag_id, run_id, old_owner])?;
        Ok(n == 1)
    }

    /// Gives runs to a runner (`dags test`, `dags backfill` resuming what a dead one left).
    pub fn set_run_owner(&self, dag_id: &str, run_id: &str, owner: Option<&str>) -> StoreResult<()> {
        self.tx
            .prepare_cached("UPDATE dag_run SET owner = ?3 WHERE dag_id = ?1 AND run_id = ?2")?
            .execute(params![dag_id, run_id, owner])?;
        Ok(())
    }

    /// Guarded `set_run_owner`: takes the run for `owner` only if its owner is still `expected`;
    /// `false` when another process took it first (a lost race).
    pub fn claim_run_owner(
        &self,
        dag_id: &str,
        run_id: &str,
        expected: Option<&str>,
        owner: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .tx
            .prepare_cached("UPDATE dag_run SET owner = ?4 WHERE dag_id = ?1 AND run_id = ?2 AND owner IS ?3")?
            .execute(params![dag_id, run_id, expected, owner])?
            == 1)
    }

    // ---- XCom -------------------------------------------------------------------------------

    pub fn set_xcom(&self, key: &TiKey, name: &str, value: &serde_json::Value, now: DateTime<Utc>) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO xcom (dag_id, run_id, task_id, key, value, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (dag_id, run_id, task_id, key) DO UPDATE SET value = ?5, created_at = ?6",
            )?
            .execute(params![key.dag_id, key.run_id, key.task_id, name, value.to_string(), now])?;
        Ok(())
    }

    /// Appends to the stored log text of one try (`executor::try_log`).
    pub fn append_task_log(&self, key: &TiKey, try_number: u32, text: &str) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO task_log (dag_id, run_id, task_id, try_number, text) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (dag_id, run_id, task_id, try_number) DO UPDATE SET text = text || ?5",
            )?
            .execute(params![key.dag_id, key.run_id, key.task_id, try_number, text])?;
        Ok(())
    }

    /// The stored log text of one try (`None`: its log is only in its file, if anywhere).
    pub fn task_log(&self, key: &TiKey, try_number: u32) -> StoreResult<Option<String>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT text FROM task_log WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND try_number = ?4",
            )?
            .query_row(params![key.dag_id, key.run_id, key.task_id, try_number], |r| r.get(0))
            .optional()?)
    }

    pub fn clear_xcoms(&self, key: &TiKey) -> StoreResult<()> {
        self.tx.prepare_cached("DELETE FROM xcom WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3")?.execute([
            &key.dag_id,
            &key.run_id,
            &key.task_id,
        ])?;
        Ok(())
    }

    /// One XCom of a run: what `task_id` pushed under `key`.
    pub fn xcom(&self, dag_id: &str, run_id: &str, task_id: &str, key: &str) -> StoreResult<Option<serde_json::Value>> {
        let value: Option<String> = self
            .tx
            .prepare_cached("SELECT value FROM xcom WHERE dag_id = ?1 AND run_id = ?2 AND task_id = ?3 AND key = ?4")?
            .query_row([dag_id, run_id, task_id, key], |r| r.get(0))
            .optional()?;
        Ok(value.map(|v| serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v))))
    }

    /// Every XCom of a run: `(task_id, key, value)`.
    pub fn xcoms_of_run(&self, dag_id: &str, run_id: &str) -> StoreResult<Vec<(String, String, serde_json::Value)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT task_id, key, value FROM xcom WHERE dag_id = ?1 AND run_id = ?2 ORDER BY created_at",
        )?;
        let rows = stmt.query_map([dag_id, run_id], |r| {
            let value: String = r.get(2)?;
            Ok((r.get(0)?, r.get(1)?, serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value))))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- pools and alerts -----------------------------------------------------------------------

    pub fn pools(&self) -> StoreResult<Vec<(String, u32)>> {
        let mut stmt = self.tx.prepare_cached("SELECT name, slots FROM pool ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_pool(&self, name: &str, slots: u32, description: &str) -> StoreResult<()> {
        self.tx.execute(
            "INSERT INTO pool (name, slots, description) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET slots = ?2, description = ?3",
            params![name, slots, description],
        )?;
        Ok(())
    }

    /// Writes an outbox row (due at once) and returns its id.
    pub fn insert_alert(&self, alert: &NewAlert, now: DateTime<Utc>) -> StoreResult<i64> {
        let state = if alert.held { "held" } else { "pending" };
        self.tx
            .prepare_cached(
                "INSERT INTO alert_outbox (created_at, event, dag_id, run_id, task_id, try_number, channel, payload,
                                           state, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?1)",
            )?
            .execute(params![
                now,
                alert.event,
                alert.dag_id,
                alert.run_id,
                alert.task_id,
                alert.try_number,
                alert.channel,
                alert.payload.to_string(),
                state
            ])?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn alerts(&self) -> StoreResult<Vec<AlertRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, event, dag_id, run_id, task_id, channel, state FROM alert_outbox ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AlertRow {
                id: r.get(0)?,
                event: r.get(1)?,
                dag_id: r.get(2)?,
                run_id: r.get(3)?,
                task_id: r.get(4)?,
                channel: r.get(5)?,
                state: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dag_id: &str, run_id: &str, at: DateTime<Utc>) -> DagRunRow {
        DagRunRow {
            dag_id: dag_id.into(),
            run_id: run_id.into(),
            logical_date: at,
            data_interval_start: at,
            data_interval_end: at,
            run_type: RunType::Manual,
            state: DagRunState::Queued,
            conf: serde_json::json!({}),
            version_hash: "h".into(),
            queued_at: at,
            start_date: None,
            end_date: None,
            owner: None,
        }
    }

    #[test]
    fn migrations_apply_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        assert!(store.migrate().unwrap().is_empty(), "already applied on open");
        drop(store);
        let again = Store::open(&path).unwrap();
        let pools = again.read(|tx| tx.pools()).unwrap();
        assert_eq!(pools, vec![("default_pool".to_string(), 128)]);
    }

    #[test]
    fn one_run_per_logical_date_and_guarded_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let at = Utc::now();
        assert!(store.write(|tx| tx.insert_dag_run(&run("d", "r1", at))).unwrap());
        assert!(!store.write(|tx| tx.insert_dag_run(&run("d", "r2", at))).unwrap(), "same logical date refused");
        let ti = NewTaskInstance {
            task_id: "t".into(),
            max_tries: 1,
            priority_weight: 1,
            pool: "default_pool".into(),
            pool_slots: 1,
            operator: "BashOperator".into(),
        };
        store.write(|tx| tx.insert_task_instances("d", "r1", std::slice::from_ref(&ti))).unwrap();
        let key = TiKey { dag_id: "d".into(), run_id: "r1".into(), task_id: "t".into() };
        let moved =
            store.write(|tx| tx.set_ti_state(&key, TaskState::None, TaskState::Scheduled, &TiChange::default()));
        assert!(moved.unwrap());
        let lost = store.write(|tx| tx.set_ti_state(&key, TaskState::None, TaskState::Queued, &TiChange::default()));
        assert!(!lost.unwrap(), "a stale `from` state is a lost race");
        assert_eq!(store.read(|tx| tx.task_instance(&key)).unwrap().unwrap().state, TaskState::Scheduled);
    }

    #[test]
    fn runs_come_in_pages_newest_first_with_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let base = Utc::now();
        for i in 0..5 {
            let r = run("d", &format!("r{i}"), base + chrono::TimeDelta::hours(i));
            assert!(store.write(|tx| tx.insert_dag_run(&r)).unwrap());
        }
        let page = |limit, offset| {
            let (rows, total) = store.read(|tx| tx.dag_runs_page("d", Page::new(limit, offset))).unwrap();
            (rows.into_iter().map(|r| r.run_id).collect::<Vec<_>>(), total)
        };
        assert_eq!(page(2, 0), (vec!["r4".to_string(), "r3".to_string()], 5));
        assert_eq!(page(2, 4), (vec!["r0".to_string()], 5));
        assert_eq!(page(2, 9), (vec![], 5));
        assert_eq!(Page::new(0, u64::MAX), Page { limit: 1, offset: i64::MAX as u64 }, "bounded");
    }

    #[test]
    fn readers_do_not_wait_for_a_write_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let at = Utc::now();
        assert!(store.write(|tx| tx.insert_dag_run(&run("d", "r1", at))).unwrap());
        let reader = store.clone();
        // Inside an open write transaction, another thread's read completes (it would deadlock
        // on a single shared connection).
        let seen = store
            .write(|tx| -> StoreResult<usize> {
                tx.insert_dag_run(&run("d", "r2", at + chrono::TimeDelta::hours(1)))?;
                let handle = std::thread::spawn(move || reader.read(|tx| tx.dag_runs("d")).unwrap().len());
                Ok(handle.join().unwrap())
            })
            .unwrap();
        assert_eq!(seen, 1, "the reader sees the last committed state");
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let at = Utc::now();
        let result: StoreResult<()> = store.write(|tx| {
            tx.insert_dag_run(&run("d", "r1", at))?;
            Err(StoreError::Corrupt("boom".into()))
        });
        assert!(result.is_err());
        assert!(store.read(|tx| tx.dag_run("d", "r1")).unwrap().is_none());
    }

    /// Async writes share a transaction (`batch`): one body's error or panic undoes only its own
    /// writes; the others are committed and answered with their values.
    #[test]
    fn batched_writes_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let at = Utc::now();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let answers = runtime.block_on(async {
            let mut handles = Vec::new();
            for i in 0..60 {
                let store = store.clone();
                handles.push(tokio::spawn(async move {
                    store
                        .write_async(move |tx| {
                            let at = at + chrono::Duration::seconds(i as i64);
                            assert!(tx.insert_dag_run(&run("d", &format!("r{i}"), at))?);
                            match i % 3 {
                                0 => Ok(i),
                                1 => Err(StoreError::Corrupt(format!("body {i} refuses"))),
                                _ if i == 2 => panic!("body {i} panics"),
                                _ => Ok(i),
                            }
                        })
                        .await
                }));
            }
            let mut answers = Vec::new();
            for h in handles {
                answers.push(h.await.unwrap());
            }
            answers
        });
        let all_kept: Vec<bool> =
            (0..60).map(|i| store.read(|tx| tx.dag_run("d", &format!("r{i}"))).unwrap().is_some()).collect();
        for (i, answer) in answers.iter().enumerate() {
            let kept = all_kept[i];
            match answer {
                Ok(v) => {
                    assert_eq!(*v, i);
                    assert!(kept, "body {i} succeeded, so its run is committed");
                }
                Err(e) => {
                    assert!(i % 3 == 1 || i == 2, "body {i} failed: {e}");
                    assert!(!kept, "body {i} failed, so its run is rolled back");
                    if i == 2 {
                        assert!(e.to_string().contains("panicked"), "{e}");
                    }
                }
            }
        }
    }

    /// The change log names the task instance whose state changed, so the scheduler re-reads
    /// only that row; and a try's stored log text is appended to, and goes with its task instance.
    #[test]
    fn change_log_names_the_task_and_task_logs_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let at = Utc::now();
        let key = TiKey { dag_id: "d".into(), run_id: "r".into(), task_id: "t".into() };
        store
            .write(|tx| {
                tx.insert_dag_run(&run("d", "r", at))?;
                tx.insert_task_instances(
                    "d",
                    "r",
                    &[NewTaskInstance {
                        task_id: "t".into(),
                        operator: "RhaiOperator".into(),
                        priority_weight: 1,
                        pool: "default_pool".into(),
                        pool_slots: 1,
                        max_tries: 0,
                    }],
                )
            })
            .unwrap();
        let (_, seen) = store.read(|tx| tx.change_log_bounds()).unwrap();
        store.write(|tx| tx.set_ti_state(&key, TaskState::None, TaskState::Scheduled, &TiChange::default())).unwrap();
        let changes = store.read(|tx| tx.changes_since(seen)).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].run_id.as_deref(), changes[0].task_id.as_deref()), (Some("r"), Some("t")));
        assert_eq!(store.read(|tx| tx.task_state(&key)).unwrap().unwrap().state, TaskState::Scheduled);
        store.write(|tx| tx.append_task_log(&key, 1, "a\n")).unwrap();
        store.write(|tx| tx.append_task_log(&key, 1, "b\n")).unwrap();
        assert_eq!(store.read(|tx| tx.task_log(&key, 1)).unwrap().as_deref(), Some("a\nb\n"));
        assert_eq!(store.read(|tx| tx.task_log(&key, 2)).unwrap(), None);
        store.write(|tx| tx.delete_task_instances_of_run("d", "r")).unwrap();
        assert_eq!(store.read(|tx| tx.task_log(&key, 1)).unwrap(), None);
    }
}
