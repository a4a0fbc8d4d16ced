//! Bad configuration through the real binary: from `rhaiflow.toml`, from `RHAIFLOW__*` variables
//! and from flags, every bad value is one clear error with exit code 2, never a panic, and never
//! a secret's value.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Command, Output};

const NOW: &str = "2026-01-15T12:00:00Z";
const DAG: &str = "let dag = DAG(\"good\", #{ start_date: datetime(2026, 1, 1), schedule: \"@daily\", catchup: false });\nlet a = BashOperator(#{ task_id: \"a\", bash_command: \"true\" });\n";

/// A home directory with one DAG and the given `rhaiflow.toml` (none when empty).
fn home(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/good.rhai"), DAG).unwrap();
    if !toml.is_empty() {
        std::fs::write(dir.path().join("rhaiflow.toml"), toml).unwrap();
    }
    dir
}

fn rhaiflow(home: &Path, args: &[&str], env: &[(&OsStr, &OsStr)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rhaiflow"));
    cmd.args(args).arg("--now").arg(NOW).current_dir(home).env_remove("RHAIFLOW_HOME").env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs `dags test good` (which uses every duration of the config) and expects exit 2 with `expected`.
fn fails_with(toml: &str, env: &[(&str, &str)], expected: &str) {
    let dir = home(toml);
    let env: Vec<(&OsStr, &OsStr)> = env.iter().map(|(k, v)| (OsStr::new(*k), OsStr::new(*v))).collect();
    let o = rhaiflow(dir.path(), &["dags", "test", "good", "2026-01-02"], &env);
    assert_eq!(stderr(&o), format!("error: {expected}\n"), "{toml} {env:?}");
    assert_eq!(o.status.code(), Some(2), "{toml} {env:?}");
}

#[test]
fn durations_from_the_file_are_finite_non_negative_and_bounded() {
    let cases = [
        ("[scheduler]\nkill_grace = nan\n", "scheduler.kill_grace", "must be between 0 and 86400 seconds, got NaN"),
        ("[scheduler]\nkill_grace = inf\n", "scheduler.kill_grace", "must be between 0 and 86400 seconds, got inf"),
        (
            "[scheduler]\ntask_heartbeat_timeout = 0\n",
            "scheduler.task_heartbeat_timeout",
            "must be above 0 and at most 604800 seconds, got 0",
        ),
        (
            "[scheduler]\nshutdown_grace = -5\n",
            "scheduler.shutdown_grace",
            "must be between 0 and 86400 seconds, got -5",
        ),
        (
            "[core]\ndag_file_timeout = 1e300\n",
            "core.dag_file_timeout",
            "must be above 0 and at most 3600 seconds, got 1e300",
        ),
        ("[core]\ndag_file_timeout = 0\n", "core.dag_file_timeout", "must be above 0 and at most 3600 seconds, got 0"),
        (
            "[scheduler]\nkill_grace = \"5s\"\n",
            "scheduler.kill_grace",
            "must be between 0 and 86400 seconds, got string \"5s\"",
        ),
    ];
    for (toml, key, reason) in cases {
        fails_with(toml, &[], &format!("config key `{key}` (from rhaiflow.toml): {reason}"));
    }
}

#[test]
fn counts_from_the_file_are_bounded() {
    let cases = [
        (
            "[core]\nparse_threads = 100000000\n",
            "core.parse_threads",
            "must be between 0 and 256 (0: one per core), got 100000000",
        ),
        ("[core]\nparallelism = 0\n", "core.parallelism", "must be between 1 and 10000, got 0"),
        ("[core]\nparallelism = 4294967295\n", "core.parallelism", "must be between 1 and 10000, got 4294967295"),
        ("[core]\nparallelism = -1\n", "core.parallelism", "must be between 1 and 10000, got integer `-1`"),
        (
            "[logging]\nmax_log_bytes = 2000000000000\n",
            "logging.max_log_bytes",
            "must be between 0 and 1099511627776 bytes, got 2000000000000",
        ),
    ];
    for (toml, key, reason) in cases {
        fails_with(toml, &[], &format!("config key `{key}` (from rhaiflow.toml): {reason}"));
    }
    // Past TOML's 64-bit integers it is a syntax error, with its place.
    fails_with(
        "[logging]\nmax_log_bytes = 18446744073709551615\n",
        &[],
        "rhaiflow.toml: line 2, column 17: u64 value was too large",
    );
}

#[test]
fn numbers_from_the_environment_are_bounded_and_name_the_variable() {
    let cases = [
        (
            "RHAIFLOW__SCHEDULER__KILL_GRACE",
            "nan",
            "scheduler.kill_grace",
            "must be between 0 and 86400 seconds, got NaN",
        ),
        (
            "RHAIFLOW__SCHEDULER__SHUTDOWN_GRACE",
            "-5",
            "scheduler.shutdown_grace",
            "must be between 0 and 86400 seconds, got -5",
        ),
        (
            "RHAIFLOW__CORE__DAG_FILE_TIMEOUT",
            "1e300",
            "core.dag_file_timeout",
            "must be above 0 and at most 3600 seconds, got 1e300",
        ),
        (
            "RHAIFLOW__CORE__PARSE_THREADS",
            "100000",
            "core.parse_threads",
            "must be between 0 and 256 (0: one per core), got 100000",
        ),
        ("RHAIFLOW__CORE__PARALLELISM", "many", "core.parallelism", "must be between 1 and 10000, got string \"many\""),
    ];
    for (var, value, key, reason) in cases {
        // The environment wins over a good value in the file.
        fails_with(
            "[core]\nparallelism = 4\n",
            &[(var, value)],
            &format!("config key `{key}` (from environment variable {var}): {reason}"),
        );
    }
}

#[test]
fn values_at_the_bounds_load() {
    let toml = "[core]\nparallelism = 10000\ndag_file_timeout = 3600\nparse_threads = 256\n\n[scheduler]\nkill_grace = 0\nshutdown_grace = 86400\n\n[logging]\nmax_log_bytes = 0\n";
    let dir = home(toml);
    let o = rhaiflow(dir.path(), &["dags", "list"], &[]);
    assert_eq!(stderr(&o), "");
    assert!(o.status.success());
}

#[test]
fn a_toml_syntax_error_says_where_and_what_but_not_the_line() {
    let dir = home("[alerts.email]\nhost = \"127.0.0.1\"\npassword = \"hunter2\n");
    let o = rhaiflow(dir.path(), &["dags", "list"], &[]);
    assert_eq!(stderr(&o), "error: rhaiflow.toml: line 3, column 20: invalid basic string, expected `\"`\n");
    assert_eq!(o.status.code(), Some(2));
    // With `--home` the path is the file's full path.
    let o = rhaiflow(Path::new("/"), &["dags", "list", "--home", dir.path().to_str().unwrap()], &[]);
    let file = dir.path().join("rhaiflow.toml");
    assert_eq!(
        stderr(&o),
        format!("error: {}: line 3, column 20: invalid basic string, expected `\"`\n", file.display())
    );
}

#[test]
fn a_secret_of_the_wrong_type_is_not_echoed() {
    let dir = home("[alerts.email]\nhost = \"127.0.0.1\"\npassword = 86753091\n");
    let o = rhaiflow(dir.path(), &["dags", "list"], &[]);
    assert_eq!(
        stderr(&o),
        "error: config key `alerts.email.password` (from rhaiflow.toml): invalid type: integer, expected a string\n"
    );
    let dir = home("[alerts.webhook.ops]\nurl = \"http://127.0.0.1:9/\"\nheaders = { Authorization = 86753091 }\n");
    let o = rhaiflow(dir.path(), &["dags", "list"], &[]);
    assert!(!stderr(&o).contains("86753091"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_numeric_secret_from_the_environment_is_text() {
    let dir = home("[alerts.email]\nhost = \"127.0.0.1\"\n");
    let o = rhaiflow(
        dir.path(),
        &["dags", "list"],
        &[(OsStr::new("RHAIFLOW__ALERTS__EMAIL__PASSWORD"), OsStr::new("86753091"))],
    );
    assert_eq!(stderr(&o), "");
    assert!(o.status.success());
}

fn not_utf8(prefix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    bytes.extend_from_slice(b"caf\xe9");
    OsString::from_vec(bytes)
}

#[test]
fn a_rhaiflow_variable_that_is_not_utf8_is_an_error_naming_it() {
    let dir = home("");
    let value = not_utf8("");
    let o = rhaiflow(dir.path(), &["dags", "list"], &[(OsStr::new("RHAIFLOW__CORE__DEFAULT_OWNER"), &value)]);
    assert_eq!(
        stderr(&o),
        "error: environment variable `RHAIFLOW__CORE__DEFAULT_OWNER` is not valid UTF-8; set it to UTF-8 text or unset it\n"
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unrelated_variables_that_are_not_utf8_are_ignored() {
    let dir = home("");
    let value = not_utf8("");
    let name = not_utf8("WEIRD_");
    let o = rhaiflow(
        dir.path(),
        &["dags", "list"],
        &[(OsStr::new("UNRELATED"), &value), (&name, OsStr::new("x")), (OsStr::new("LANG_X"), &value)],
    );
    assert_eq!(stderr(&o), "");
    assert!(o.status.success());
}

#[test]
fn a_secret_variable_that_is_not_utf8_is_named_not_shown() {
    let dir = home("[alerts.email]\nhost = \"127.0.0.1\"\npassword_env = \"SMTP_PASSWORD\"\n");
    let value = not_utf8("hunter2");
    let o = rhaiflow(dir.path(), &["dags", "list"], &[(OsStr::new("SMTP_PASSWORD"), &value)]);
    assert_eq!(
        stderr(&o),
        "error: config key `alerts.email.password_env` (from rhaiflow.toml) names environment variable `SMTP_PASSWORD`, which is not valid UTF-8\n"
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_home_and_a_dags_folder_that_are_not_utf8_are_used_as_given() {
    let base = tempfile::tempdir().unwrap();
    let odd = base.path().join(OsStr::from_bytes(b"home-\xe9"));
    std::fs::create_dir_all(odd.join(OsStr::from_bytes(b"dags-\xe9"))).unwrap();
    std::fs::write(odd.join(OsStr::from_bytes(b"dags-\xe9")).join("good.rhai"), DAG).unwrap();
    std::fs::write(odd.join("rhaiflow.toml"), "[core]\ndags_folder = \"nowhere\"\n").unwrap();
    // RHAIFLOW_HOME from the environment, `--dags-folder` as a flag: both byte for byte.
    let o = Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
        .args(["dags", "list", "--output", "json", "--dags-folder"])
        .arg(odd.join(OsStr::from_bytes(b"dags-\xe9")))
        .args(["--now", NOW])
        .env("RHAIFLOW_HOME", &odd)
        .current_dir(base.path())
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "");
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["dag_id"], "good");
    // A relative `--dags-folder` is relative to the current directory, as any path argument.
    let o = Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
        .args(["dags", "list", "--output", "json", "--dags-folder"])
        .arg(OsStr::from_bytes(b"dags-\xe9"))
        .args(["--now", NOW])
        .env("RHAIFLOW_HOME", base.path())
        .current_dir(&odd)
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "");
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["dag_id"], "good");
}

#[test]
fn the_per_dag_caps_come_from_the_config() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("dags")).unwrap();
    std::fs::write(
        home.path().join("dags/wide.rhai"),
        r#"let d = DAG("wide", #{ schedule: () }); for i in 0..5 { EmptyOperator(#{ task_id: `t${i}` }); }"#,
    )
    .unwrap();
    std::fs::write(home.path().join("rhaiflow.toml"), "[core]\nmax_tasks_per_dag = 3\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
        .args(["dags", "check"])
        .current_dir(home.path())
        .env_remove("RHAIFLOW_HOME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(format!("{stdout}{stderr}").contains("max_tasks_per_dag"), "{stdout}{stderr}");
}
