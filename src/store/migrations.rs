//! Versioned schema migrations, applied in order on open and by `rhaiflow db migrate`.

/// `(version, description, SQL)`. Append only: never edit a migration that has shipped.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "dags, versions, runs, task instances, xcom, import errors, pools, alert outbox",
        r#"
CREATE TABLE dag (
    dag_id              TEXT PRIMARY KEY,
    is_paused           INTEGER NOT NULL DEFAULT 0,
    fileloc             TEXT NOT NULL,
    latest_version_hash TEXT NOT NULL,
    is_active           INTEGER NOT NULL DEFAULT 1,
    last_parsed_at      TEXT NOT NULL
);
CREATE TABLE dag_version (
    version_hash TEXT PRIMARY KEY,
    dag_id       TEXT NOT NULL,
    spec_json    TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE TABLE dag_run (
    dag_id              TEXT NOT NULL,
    run_id              TEXT NOT NULL,
    logical_date        TEXT NOT NULL,
    data_interval_start TEXT NOT NULL,
    data_interval_end   TEXT NOT NULL,
    run_type            TEXT NOT NULL,
    state               TEXT NOT NULL,
    conf                TEXT NOT NULL DEFAULT '{}',
    version_hash        TEXT NOT NULL,
    queued_at           TEXT NOT NULL,
    start_date          TEXT,
    end_date            TEXT,
    PRIMARY KEY (dag_id, run_id),
    UNIQUE (dag_id, logical_date)
);
CREATE INDEX dag_run_state ON dag_run (state);
CREATE TABLE task_instance (
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'none',
    try_number      INTEGER NOT NULL DEFAULT 0,
    max_tries       INTEGER NOT NULL DEFAULT 0,
    priority_weight INTEGER NOT NULL DEFAULT 1,
    pool            TEXT NOT NULL DEFAULT 'default_pool',
    pool_slots      INTEGER NOT NULL DEFAULT 1,
    operator        TEXT NOT NULL,
    hostname        TEXT,
    pid             INTEGER,
    queued_at       TEXT,
    start_date      TEXT,
    end_date        TEXT,
    duration        REAL,
    heartbeat_at    TEXT,
    next_try_at     TEXT,
    PRIMARY KEY (dag_id, run_id, task_id)
);
CREATE INDEX task_instance_state ON task_instance (state);
CREATE TABLE xcom (
    dag_id     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, key)
);
CREATE TABLE import_error (
    filename  TEXT PRIMARY KEY,
    message   TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE TABLE pool (
    name        TEXT PRIMARY KEY,
    slots       INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
INSERT INTO pool (name, slots, description) VALUES ('default_pool', 128, 'Default pool');
CREATE TABLE alert_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   TEXT NOT NULL,
    event        TEXT NOT NULL,
    dag_id       TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    task_id      TEXT,
    try_number   INTEGER,
    channel      TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
"#,
    ),
    (
        2,
        "process ownership: runners, task instance and run owners",
        r#"
CREATE TABLE runner (
    runner_id    TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    pid_token    TEXT,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at   TEXT
);
ALTER TABLE task_instance ADD COLUMN owner TEXT;
ALTER TABLE task_instance ADD COLUMN pid_token TEXT;
ALTER TABLE dag_run ADD COLUMN owner TEXT;
CREATE INDEX task_instance_claimed ON task_instance (owner) WHERE state IN ('queued', 'running');
"#,
    ),
    (
        3,
        "change log the scheduler follows, so a pass reads only the runs and DAGs that changed",
        r#"
CREATE TABLE change_log (
    seq    INTEGER PRIMARY KEY,
    dag_id TEXT NOT NULL,
    run_id TEXT
);
CREATE TRIGGER change_log_ti_state AFTER UPDATE OF state ON task_instance
    WHEN OLD.state IS NOT NEW.state
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (NEW.dag_id, NEW.run_id); END;
CREATE TRIGGER change_log_run_insert AFTER INSERT ON dag_run
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (NEW.dag_id, NEW.run_id); END;
CREATE TRIGGER change_log_run_state AFTER UPDATE OF state, owner ON dag_run
    WHEN OLD.state IS NOT NEW.state OR OLD.owner IS NOT NEW.owner
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (NEW.dag_id, NEW.run_id); END;
CREATE TRIGGER change_log_run_delete AFTER DELETE ON dag_run
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (OLD.dag_id, OLD.run_id); END;
CREATE TRIGGER change_log_dag_insert AFTER INSERT ON dag
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (NEW.dag_id, NULL); END;
CREATE TRIGGER change_log_dag_update AFTER UPDATE ON dag
    WHEN OLD.is_paused IS NOT NEW.is_paused OR OLD.is_active IS NOT NEW.is_active
        OR OLD.latest_version_hash IS NOT NEW.latest_version_hash
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (NEW.dag_id, NULL); END;
CREATE TRIGGER change_log_dag_delete AFTER DELETE ON dag
    BEGIN INSERT INTO change_log (dag_id, run_id) VALUES (OLD.dag_id, NULL); END;
"#,
    ),
    (
        4,
        "task_reschedule: the pokes of sensors in reschedule mode (a try's first poke starts its timeout)",
        r#"
CREATE TABLE task_reschedule (
    id              INTEGER PRIMARY KEY,
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    try_number      INTEGER NOT NULL,
    start_date      TEXT NOT NULL,
    end_date        TEXT NOT NULL,
    duration        REAL NOT NULL,
    reschedule_date TEXT NOT NULL
);
CREATE INDEX task_reschedule_ti ON task_reschedule (dag_id, run_id, task_id, try_number);
CREATE TRIGGER task_reschedule_clear AFTER UPDATE OF state ON task_instance
    WHEN NEW.state = 'none' AND OLD.state IS NOT 'none'
    BEGIN DELETE FROM task_reschedule
          WHERE dag_id = NEW.dag_id AND run_id = NEW.run_id AND task_id = NEW.task_id; END;
CREATE TRIGGER task_reschedule_ti_delete AFTER DELETE ON task_instance
    BEGIN DELETE FROM task_reschedule
          WHERE dag_id = OLD.dag_id AND run_id = OLD.run_id AND task_id = OLD.task_id; END;
"#,
    ),
    (
        5,
        "DAG sources: each closure-bearing DAG version keeps its file's text, so runs call their own version's closures",
        r#"
CREATE TABLE dag_source (
    source_hash TEXT PRIMARY KEY,
    file        TEXT NOT NULL,
    source      TEXT NOT NULL
);
ALTER TABLE dag_version ADD COLUMN source_hash TEXT;
"#,
    ),
    (
        6,
        "change log names the task instance whose state changed, so a pass re-reads that one row, not its whole run",
        r#"
ALTER TABLE change_log ADD COLUMN task_id TEXT;
DROP TRIGGER change_log_ti_state;
CREATE TRIGGER change_log_ti_state AFTER UPDATE OF state ON task_instance
    WHEN OLD.state IS NOT NEW.state
    BEGIN INSERT INTO change_log (dag_id, run_id, task_id) VALUES (NEW.dag_id, NEW.run_id, NEW.task_id); END;
"#,
    ),
    (
        7,
        "task_log: the log text of quick in-process tries, written with their outcome instead of a file each",
        r#"
CREATE TABLE task_log (
    dag_id     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    try_number INTEGER NOT NULL,
    text       TEXT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, try_number)
);
CREATE TRIGGER task_log_ti_delete AFTER DELETE ON task_instance
    BEGIN DELETE FROM task_log
          WHERE dag_id = OLD.dag_id AND run_id = OLD.run_id AND task_id = OLD.task_id; END;
"#,
    ),
    (
        8,
        "alert delivery: outbox leases, attempts, next attempt, sent time, coalescing",
        r#"
ALTER TABLE alert_outbox ADD COLUMN next_attempt_at TEXT;
ALTER TABLE alert_outbox ADD COLUMN attempted_at TEXT;
ALTER TABLE alert_outbox ADD COLUMN sent_at TEXT;
ALTER TABLE alert_outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE alert_outbox ADD COLUMN lease_until TEXT;
ALTER TABLE alert_outbox ADD COLUMN coalesced_into INTEGER;
UPDATE alert_outbox SET next_attempt_at = created_at WHERE next_attempt_at IS NULL;
CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_at);
CREATE INDEX alert_outbox_attempted ON alert_outbox (channel, attempted_at);
"#,
    ),
    (
        9,
        "DAG versions keep the dags-folder modules their file imports (each text once)",
        r#"
CREATE TABLE dag_module (
    module_hash TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    text        TEXT NOT NULL
);
ALTER TABLE dag_source ADD COLUMN modules TEXT;
"#,
    ),
    (
        10,
        "web users: name, role, argon2 password hash (PHC string)",
        r#"
CREATE TABLE web_user (
    username      TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created       TEXT NOT NULL
);
"#,
    ),
];
