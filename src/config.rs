//! One typed configuration: `rhaiflow.toml` in the home directory, overridden by
//! `RHAIFLOW__SECTION__KEY` environment variables, overridden by command-line flags.
//!
//! This is the only module that reads environment variables. Errors name the key and where its
//! value came from; secret values never appear in messages or `Debug` output.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "rhaiflow.toml";
pub const HOME_VAR: &str = "RHAIFLOW_HOME";
const ENV_PREFIX: &str = "RHAIFLOW__";

/// The arguments after `__task-supervisor` when this process is a task supervisor (see
/// `executor::supervisor`); read here because only this module reads the process environment.
pub fn task_supervisor_args() -> Option<Vec<std::ffi::OsString>> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "__task-supervisor" {
        return None;
    }
    Some(args.collect())
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// A TOML syntax error: where and what, never the line's text (it may hold a secret).
    #[error("{}: line {line}, column {column}: {reason}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, reason: String },
    #[error("config key `{key}` (from {origin}): {reason}")]
    Key { key: String, origin: String, reason: String },
    #[error("config key `{key}` (from {origin}) names environment variable `{var}`, which is not set")]
    MissingSecretEnv { key: String, origin: String, var: String },
    #[error("config key `{key}` (from {origin}) names environment variable `{var}`, which is not valid UTF-8")]
    SecretEnvNotUtf8 { key: String, origin: String, var: String },
    #[error("environment variable `{var}` is not valid UTF-8; set it to UTF-8 text or unset it")]
    EnvNotUtf8 { var: String },
}

/// Inclusive bounds of one number in the config (README's configuration section lists them too).
struct Bound {
    key: &'static str,
    min: f64,
    max: f64,
    /// The minimum itself is not allowed (a timeout of 0 would fail every file).
    above_min: bool,
    unit: &'static str,
}

/// Every number in the config. A value outside its bounds is an error naming the key and source.
const BOUNDS: &[Bound] = &[
    Bound { key: "core.parallelism", min: 1.0, max: 10_000.0, above_min: false, unit: "" },
    Bound { key: "core.dag_file_timeout", min: 0.0, max: 3_600.0, above_min: true, unit: " seconds" },
    Bound { key: "core.rescan_interval", min: 0.0, max: 86_400.0, above_min: true, unit: " seconds" },
    Bound { key: "core.task_script_timeout", min: 0.0, max: 604_800.0, above_min: true, unit: " seconds" },
    Bound { key: "core.max_tasks_per_dag", min: 1.0, max: 1_000_000.0, above_min: false, unit: "" },
    Bound { key: "core.max_edges_per_dag", min: 1.0, max: 10_000_000.0, above_min: false, unit: "" },
    Bound { key: "core.max_dag_file_memory_mib", min: 1.0, max: 4_096.0, above_min: false, unit: " MiB" },
    Bound { key: "core.max_xcom_bytes", min: 1.0, max: (1u64 << 30) as f64, above_min: false, unit: " bytes" },
    Bound { key: "core.parse_threads", min: 0.0, max: 256.0, above_min: false, unit: " (0: one per core)" },
    Bound { key: "scheduler.shutdown_grace", min: 0.0, max: 86_400.0, above_min: false, unit: " seconds" },
    Bound { key: "scheduler.kill_grace", min: 0.0, max: 86_400.0, above_min: false, unit: " seconds" },
    Bound { key: "scheduler.task_heartbeat_timeout", min: 0.0, max: 604_800.0, above_min: true, unit: " seconds" },
    Bound { key: "webserver.header_timeout", min: 0.0, max: 3_600.0, above_min: true, unit: " seconds" },
    Bound { key: "webserver.max_connections", min: 1.0, max: 65_536.0, above_min: false, unit: "" },
    Bound { key: "logging.max_log_bytes", min: 0.0, max: (1u64 << 40) as f64, above_min: false, unit: " bytes" },
    Bound { key: "alerts.delivery_attempts", min: 1.0, max: 1_000.0, above_min: false, unit: "" },
    Bound { key: "alerts.delivery_backoff_max", min: 0.0, max: 86_400.0, above_min: true, unit: " seconds" },
    Bound { key: "alerts.delivery_timeout", min: 0.0, max: 600.0, above_min: true, unit: " seconds" },
];

impl Bound {
    fn of(key: &str) -> Option<&'static Bound> {
        BOUNDS.iter().find(|b| b.key == key)
    }

    fn describe(&self) -> String {
        let (min, max, unit) = (show_number(self.min), show_number(self.max), self.unit);
        if self.above_min {
            format!("must be above {min} and at most {max}{unit}")
        } else {
            format!("must be between {min} and {max}{unit}")
        }
    }

    fn admits(&self, v: f64) -> bool {
        let above = if self.above_min { v > self.min } else { v >= self.min };
        above && v <= self.max
    }
}

/// A number as a person reads it: `NaN`, `inf`, `1e300`, `86400`, `0.5`.
fn show_number(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-6..1e16).contains(&v.abs()) { format!("{v:e}") } else { format!("{v}") }
}

/// Keys whose values are secrets: errors about them never show the value.
fn is_secret_key(path: &str) -> bool {
    let mut parts = path.split('.');
    let last = parts.next_back().unwrap_or_default();
    let webhook_url = path.starts_with("alerts.webhook.") && last == "url";
    webhook_url || matches!(last, "password" | "webhook" | "secret" | "uri") || path.split('.').any(|p| p == "headers")
}

/// Drops every `quoted` piece (serde quotes the offending value) from a message about a secret.
fn redact(reason: &str) -> String {
    let mut out = String::new();
    let mut pieces = reason.split('`');
    while let Some(outside) = pieces.next() {
        out.push_str(outside);
        if pieces.next().is_some() && out.ends_with(' ') {
            out.pop();
        }
    }
    out
}

/// A secret value: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    pub dags_folder: PathBuf,
    /// Task instances running at once across the installation.
    pub parallelism: u32,
    pub default_timezone: String,
    pub default_owner: String,
    /// Wall-clock limit on evaluating one DAG file, in seconds.
    pub dag_file_timeout: f64,
    /// A running scheduler rescans the dags folder this often, in seconds, besides watching it
    /// (file events can be lost); a rescan re-reads only files whose size or time changed.
    pub rescan_interval: f64,
    /// Wall-clock limit on a task's Rhai closure (`RhaiOperator`, branch choosers, response
    /// checks) when the task has no `execution_timeout`, in seconds.
    pub task_script_timeout: f64,
    /// Threads that evaluate DAG files; 0 means one per core.
    pub parse_threads: usize,
    /// Tasks one DAG may declare.
    pub max_tasks_per_dag: u64,
    /// Dependencies (edges) one DAG may declare.
    pub max_edges_per_dag: u64,
    /// MiB a DAG file's declarations may hold (the evaluation itself may use 4 × this).
    pub max_dag_file_memory_mib: u64,
    /// The largest XCom value a task may return, in bytes; a bigger one fails the task.
    pub max_xcom_bytes: u64,
    /// Airflow 2's default: a DAG seen for the first time starts paused, so a new file with
    /// catchup does not flood the machine before anyone looked at it.
    pub dags_are_paused_at_creation: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            dags_folder: PathBuf::from("dags"),
            parallelism: 32,
            default_timezone: "UTC".into(),
            default_owner: "rhaiflow".into(),
            dag_file_timeout: 1.0,
            rescan_interval: 60.0,
            task_script_timeout: 300.0,
            parse_threads: 0,
            max_tasks_per_dag: 20_000,
            max_edges_per_dag: 100_000,
            max_dag_file_memory_mib: 64,
            max_xcom_bytes: 1 << 20,
            dags_are_paused_at_creation: true,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// May hold a password (`postgres://user:password@host/db`): `Debug` hides it.
    pub url: String,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig").field("url", &without_password(&self.url)).finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: "sqlite://rhaiflow.db".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Airflow 2's default: a DAG without `catchup:` runs every missed interval.
    pub catchup_by_default: bool,
    /// Seconds running tasks get to finish after SIGINT/SIGTERM before they are killed.
    pub shutdown_grace: f64,
    /// Seconds between SIGTERM and SIGKILL when a task times out.
    pub kill_grace: f64,
    /// Seconds without a heartbeat after which a process that runs tasks counts as gone and its
    /// tries are taken over (on this host a dead process is noticed at once).
    pub task_heartbeat_timeout: f64,
    /// Where a scheduler serves `/health` and `/metrics` (Airflow's scheduler health check server,
    /// port 8974 there); empty: not served.
    pub health_check_bind: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            catchup_by_default: true,
            shutdown_grace: 30.0,
            kill_grace: 5.0,
            task_heartbeat_timeout: 300.0,
            health_check_bind: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub base_log_folder: PathBuf,
    /// Bytes kept per task try log; output beyond is dropped with a marker line.
    pub max_log_bytes: u64,
    /// rhaiflow's own log on stderr: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `RUST_LOG`-style directives (`info,rhaiflow::scheduler=debug`). `RUST_LOG` overrides the
    /// file; unset, `scheduler` logs at `info` and other commands at `warn`.
    pub level: Option<String>,
    /// `text` (human lines) or `json` (one JSON object a line).
    pub format: LogFormat,
}

/// `[logging] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            base_log_folder: PathBuf::from("logs"),
            max_log_bytes: 10 << 20,
            level: None,
            format: LogFormat::Text,
        }
    }
}

/// Longest `[logging] level` / `RUST_LOG` accepted.
const MAX_LOG_FILTER_BYTES: usize = 4096;

/// A plain level word (`info`), as opposed to `RUST_LOG` directives.
pub fn is_plain_level(filter: &str) -> bool {
    ["off", "error", "warn", "info", "debug", "trace"].iter().any(|l| filter.trim().eq_ignore_ascii_case(l))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebserverConfig {
    pub bind: String,
    /// The public address of the UI, for log links in alerts.
    pub base_url: Option<String>,
    /// Who may use the UI and the API: nobody needs to log in (`none`, the default) or users
    /// log in with a password (`password`).
    pub auth: WebAuth,
    /// Serve on an address other than loopback with `auth = "none"` (refused otherwise).
    pub allow_public_without_auth: bool,
    /// Seconds a client gets to send a request's head (and a keep-alive connection may idle),
    /// for every HTTP server of the process.
    pub header_timeout: f64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: u32,
}

/// `[webserver] auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebAuth {
    /// No login: everyone is an admin (the server binds loopback).
    #[default]
    None,
    /// Users of `rhaiflow users` log in (UI) or send HTTP basic auth (API).
    Password,
}

impl Default for WebserverConfig {
    fn default() -> Self {
        WebserverConfig {
            bind: "127.0.0.1:8080".into(),
            base_url: None,
            auth: WebAuth::None,
            allow_public_without_auth: false,
            header_timeout: 30.0,
            max_connections: 512,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    pub host: String,
    /// Default: 465 with `ssl`, 587 with `starttls`, else 25.
    pub port: Option<u16>,
    /// Upgrade a plain connection with STARTTLS (required when set).
    pub starttls: bool,
    /// TLS from the first byte (SMTPS, usually port 465).
    pub ssl: bool,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub mail_from: Option<String>,
    /// Recipients of alerts whose task names no `email` (`[alerts] on_failure = ["email"]`).
    pub to: Vec<String>,
    /// Seconds one SMTP conversation may take.
    pub timeout: f64,
    /// A minijinja template for the mail's body (the alert context, see README's Alerts section).
    pub template: Option<String>,
    /// A minijinja template for the subject line.
    pub subject_template: Option<String>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            host: String::new(),
            port: None,
            starttls: false,
            ssl: false,
            user: None,
            password: None,
            password_env: None,
            mail_from: None,
            to: Vec::new(),
            timeout: 30.0,
            template: None,
            subject_template: None,
        }
    }
}

/// `[alerts.dingtalk.NAME]`: a DingTalk custom robot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DingTalkConfig {
    pub webhook: Option<Secret>,
    pub webhook_env: Option<String>,
    /// The robot's signing secret (`SEC…`), for robots with "sign" security.
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    pub at_mobiles: Vec<String>,
    pub at_user_ids: Vec<String>,
    pub at_all: bool,
    pub template: Option<String>,
}

/// `[alerts.feishu.NAME]`: a Feishu/Lark custom bot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeishuConfig {
    pub webhook: Option<Secret>,
    pub webhook_env: Option<String>,
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    pub template: Option<String>,
}

/// `[alerts.wecom.NAME]`: a WeCom group robot (its key is in the webhook URL).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeComConfig {
    pub webhook: Option<Secret>,
    pub webhook_env: Option<String>,
    pub mentioned_mobile_list: Vec<String>,
    pub template: Option<String>,
}

/// `[alerts.slack.NAME]`: a Slack incoming webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    pub webhook: Option<Secret>,
    pub webhook_env: Option<String>,
    pub template: Option<String>,
}

/// `[alerts.webhook.NAME]`: a JSON POST to any URL, signed when `secret` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// May hold a token: treated as a secret.
    pub url: Option<Secret>,
    pub url_env: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    pub template: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Channels (`email`, `dingtalk.NAME`, `feishu.NAME`, `wecom.NAME`, `slack.NAME`,
    /// `webhook.NAME`) told of every failure.
    pub on_failure: Vec<String>,
    pub on_retry: Vec<String>,
    pub on_success: Vec<String>,
    pub on_import_error: Vec<String>,
    /// Tries to deliver one alert before it is marked `failed`.
    pub delivery_attempts: u32,
    /// The longest wait between two tries of one alert, in seconds (the backoff doubles up to it).
    pub delivery_backoff_max: f64,
    /// Seconds one request to a channel may take.
    pub delivery_timeout: f64,
    pub email: Option<EmailConfig>,
    pub dingtalk: BTreeMap<String, DingTalkConfig>,
    pub feishu: BTreeMap<String, FeishuConfig>,
    pub wecom: BTreeMap<String, WeComConfig>,
    pub slack: BTreeMap<String, SlackConfig>,
    pub webhook: BTreeMap<String, WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            on_failure: Vec::new(),
            on_retry: Vec::new(),
            on_success: Vec::new(),
            on_import_error: Vec::new(),
            delivery_attempts: 20,
            delivery_backoff_max: 300.0,
            delivery_timeout: 10.0,
            email: None,
            dingtalk: BTreeMap::new(),
            feishu: BTreeMap::new(),
            wecom: BTreeMap::new(),
            slack: BTreeMap::new(),
            webhook: BTreeMap::new(),
        }
    }
}

impl AlertsConfig {
    /// Every configured channel's name (`email`, `dingtalk.ops`, …), sorted.
    pub fn channel_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.email.iter().map(|_| "email".to_string()).collect();
        let groups: [(&str, Vec<&String>); 5] = [
            ("dingtalk", self.dingtalk.keys().collect()),
            ("feishu", self.feishu.keys().collect()),
            ("wecom", self.wecom.keys().collect()),
            ("slack", self.slack.keys().collect()),
            ("webhook", self.webhook.keys().collect()),
        ];
        for (kind, keys) in groups {
            names.extend(keys.into_iter().map(|k| format!("{kind}.{k}")));
        }
        names.sort();
        names
    }

    /// The robot `ding_on_failure` / `ding_on_retry` use: `dingtalk.default`, or the only robot;
    /// `None` when no robot is configured.
    pub fn ding_robot(&self) -> Result<Option<String>, String> {
        if self.dingtalk.contains_key("default") || self.dingtalk.len() <= 1 {
            return Ok(self
                .dingtalk
                .keys()
                .find(|k| *k == "default")
                .or(self.dingtalk.keys().next())
                .map(|k| format!("dingtalk.{k}")));
        }
        let names: Vec<String> = self.dingtalk.keys().map(|k| format!("`dingtalk.{k}`")).collect();
        Err(format!(
            "several DingTalk robots ({}) and none named `default`: `ding_on_failure` / `ding_on_retry` \
             would not know which to use; name one `[alerts.dingtalk.default]`",
            names.join(", ")
        ))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    pub uri: Option<Secret>,
    pub uri_env: Option<String>,
}

/// The whole configuration, with relative paths already resolved against the home directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub core: CoreConfig,
    pub database: DatabaseConfig,
    pub scheduler: SchedulerConfig,
    pub logging: LoggingConfig,
    pub webserver: WebserverConfig,
    pub alerts: AlertsConfig,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub variables: BTreeMap<String, toml::Value>,
    #[serde(skip)]
    pub home: PathBuf,
    /// `RHAIFLOW__…` variables of the environment that set a secret key.
    #[serde(skip)]
    secret_env_overrides: Vec<String>,
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub home: Option<PathBuf>,
    pub dags_folder: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// The process environment as config reads it: UTF-8 variables, and the names of those that are not.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Variables with a UTF-8 name and a value that is not UTF-8.
    not_utf8: BTreeSet<String>,
    /// `RHAIFLOW_HOME` as the OS gave it: a path need not be UTF-8.
    home: Option<PathBuf>,
}

impl Env {
    /// Sorts OS variables into UTF-8 ones and the rest; a name that is not UTF-8 is no variable
    /// rhaiflow reads, so it is dropped.
    pub fn from_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Env {
        let mut env = Env::default();
        for (name, value) in vars {
            if name == HOME_VAR {
                env.home = Some(PathBuf::from(&value));
            }
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => {
                    env.vars.insert(name, value);
                }
                (Ok(name), Err(_)) => {
                    env.not_utf8.insert(name);
                }
                (Err(_), _) => {}
            }
        }
        env
    }
}

impl From<BTreeMap<String, String>> for Env {
    fn from(vars: BTreeMap<String, String>) -> Env {
        let home = vars.get(HOME_VAR).map(PathBuf::from);
        Env { vars, not_utf8: BTreeSet::new(), home }
    }
}

impl Config {
    /// Loads from the real environment: `RHAIFLOW_HOME` (or `--home`, or the current directory).
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        Config::load_env(flags, Env::from_os(std::env::vars_os()))
    }

    /// Loads with an explicit environment (tests pass their own).
    pub fn load_from(flags: &Flags, env: BTreeMap<String, String>) -> Result<Config, ConfigError> {
        Config::load_env(flags, Env::from(env))
    }

    /// Loads with an environment that may hold variables that are not UTF-8.
    pub fn load_env(flags: &Flags, env: Env) -> Result<Config, ConfigError> {
        if let Some(var) = env.not_utf8.iter().find(|v| v.starts_with(ENV_PREFIX)) {
            return Err(ConfigError::EnvNotUtf8 { var: var.clone() });
        }
        let home = flags.home.clone().or_else(|| env.home.clone()).unwrap_or_else(|| PathBuf::from("."));
        let file = home.join(CONFIG_FILE);
        let mut tree = toml::Table::new();
        let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
        if file.exists() {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ConfigError::Read { path: file.clone(), reason: e.to_string() })?;
            let shown = if home == Path::new(".") { Path::new(CONFIG_FILE) } else { file.as_path() };
            tree = text.parse::<toml::Table>().map_err(|e| syntax_error(shown, &text, &e))?;
            record_origins(&tree, "", &Origin::File(file.clone()), &mut origins);
        }
        let mut secret_env_overrides = Vec::new();
        for (var, raw) in &env.vars {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let key = path.join(".");
            if is_secret_key(&key) || key == "webserver.auth" || (key == "database.url" && raw.contains('@')) {
                secret_env_overrides.push(var.clone());
            }
            // A secret from the environment is text even when it looks like a number.
            let value = if is_secret_key(&key) { toml::Value::String(raw.clone()) } else { env_value(raw) };
            set_path(&mut tree, &path, value);
            origins.insert(key, Origin::Env(var.clone()));
        }
        // `RUST_LOG` sets the log filter over the file; `RHAIFLOW__LOGGING__LEVEL` wins over both.
        if let Some(filter) = env.vars.get("RUST_LOG").filter(|v| !v.trim().is_empty())
            && !matches!(origins.get("logging.level"), Some(Origin::Env(_)))
        {
            set_path(&mut tree, &["logging".to_string(), "level".to_string()], toml::Value::String(filter.clone()));
            origins.insert("logging.level".into(), Origin::Env("RUST_LOG".into()));
        }
        // `--dags-folder` replaces the file's and the environment's value here, and its path is set
        // after deserialising: a path need not be UTF-8.
        let flag_values = [
            ("core.dags_folder", "--dags-folder", flags.dags_folder.as_ref().map(|_| String::new())),
            ("database.url", "--database-url", flags.database_url.clone()),
        ];
        for (key, flag, value) in flag_values {
            if let Some(v) = value {
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                set_path(&mut tree, &path, toml::Value::String(v));
                origins.insert(key.into(), Origin::Flag(flag.into()));
            }
        }
        let file = if home == Path::new(".") { PathBuf::from(CONFIG_FILE) } else { file };
        for origin in origins.values_mut() {
            if let Origin::File(p) = origin {
                *p = file.clone();
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let key = e.path().to_string();
            let origin = origin_of(&origins, &key).map(|o| o.to_string()).unwrap_or_else(|| "defaults".into());
            let reason = e.inner().message().trim_end().to_string();
            let reason = if is_secret_key(&key) {
                redact(&reason)
            } else if let Some(bound) = Bound::of(&key) {
                format!("{}, got {}", bound.describe(), got(&reason))
            } else {
                explain(reason)
            };
            ConfigError::Key { key, origin, reason }
        })?;
        if let Some(dags_folder) = &flags.dags_folder {
            config.core.dags_folder = dags_folder.clone();
        }
        config.home = home.clone();
        config.secret_env_overrides = secret_env_overrides;
        config.resolve(&origins, &env)?;
        // A folder given on the command line is relative to the current directory, as any path
        // argument of a Unix tool (Airflow's `--subdir` too); the config file's is relative to home.
        if let Some(dags_folder) = &flags.dags_folder {
            config.core.dags_folder = dags_folder.clone();
        }
        Ok(config)
    }

    /// Every number with bounds, as (key, value, value as written).
    fn numbers(&self) -> Vec<(&'static str, f64, String)> {
        let int = |v: u64| (v as f64, v.to_string());
        let float = |v: f64| (v, show_number(v));
        let rows = [
            ("core.parallelism", int(self.core.parallelism.into())),
            ("core.dag_file_timeout", float(self.core.dag_file_timeout)),
            ("core.rescan_interval", float(self.core.rescan_interval)),
            ("core.task_script_timeout", float(self.core.task_script_timeout)),
            ("core.parse_threads", int(self.core.parse_threads as u64)),
            ("core.max_xcom_bytes", int(self.core.max_xcom_bytes)),
            ("core.max_tasks_per_dag", int(self.core.max_tasks_per_dag)),
            ("core.max_edges_per_dag", int(self.core.max_edges_per_dag)),
            ("core.max_dag_file_memory_mib", int(self.core.max_dag_file_memory_mib)),
            ("scheduler.shutdown_grace", float(self.scheduler.shutdown_grace)),
            ("scheduler.kill_grace", float(self.scheduler.kill_grace)),
            ("scheduler.task_heartbeat_timeout", float(self.scheduler.task_heartbeat_timeout)),
            ("webserver.header_timeout", float(self.webserver.header_timeout)),
            ("webserver.max_connections", int(self.webserver.max_connections.into())),
            ("logging.max_log_bytes", int(self.logging.max_log_bytes)),
            ("alerts.delivery_attempts", int(self.alerts.delivery_attempts.into())),
            ("alerts.delivery_backoff_max", float(self.alerts.delivery_backoff_max)),
            ("alerts.delivery_timeout", float(self.alerts.delivery_timeout)),
        ];
        rows.into_iter().map(|(key, (v, shown))| (key, v, shown)).collect()
    }

    /// Validates values and resolves relative paths and `*_env` secrets.
    fn resolve(&mut self, origins: &BTreeMap<String, Origin>, env: &Env) -> Result<(), ConfigError> {
        let key_error = |key: &str, reason: String| ConfigError::Key {
            key: key.into(),
            origin: origin_of(origins, key).map(|o| o.to_string()).unwrap_or_else(|| "defaults".into()),
            reason,
        };
        if self.core.default_timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(key_error(
                "core.default_timezone",
                format!(
                    "unknown time zone `{}`; use an IANA name such as `UTC` or `Asia/Shanghai`",
                    self.core.default_timezone
                ),
            ));
        }
        for (key, value, shown) in self.numbers() {
            let Some(bound) = Bound::of(key) else { continue };
            if !bound.admits(value) {
                return Err(key_error(key, format!("{}, got {shown}", bound.describe())));
            }
        }
        if let Some(level) = &self.logging.level {
            let shown: String = level.chars().take(64).collect();
            let parsed = if level.trim().is_empty() {
                Err("it is empty".to_string())
            } else if level.len() > MAX_LOG_FILTER_BYTES {
                Err(format!("is longer than {MAX_LOG_FILTER_BYTES} bytes"))
            } else if is_plain_level(level) {
                Ok(())
            } else {
                tracing_subscriber::EnvFilter::builder().parse(level).map(|_| ()).map_err(|e| e.to_string())
            };
            if let Err(why) = parsed {
                return Err(key_error(
                    "logging.level",
                    format!(
                        "`{shown}` is not a log level or filter ({why}); write error, warn, info, debug or trace, \
                         or directives such as `info,rhaiflow::scheduler=debug`"
                    ),
                ));
            }
        }
        let postgres = ["postgres://", "postgresql://"].iter().any(|p| self.database.url.starts_with(p));
        if self.database_path().is_none() && !postgres {
            return Err(key_error(
                "database.url",
                format!(
                    "`{}` is not a database URL; use `sqlite://PATH` or `postgres://...`",
                    without_password(&self.database.url)
                ),
            ));
        }
        self.core.dags_folder = self.under_home(&self.core.dags_folder);
        self.logging.base_log_folder = self.under_home(&self.logging.base_log_folder);
        let secret = |key: &str, var: &Option<String>, value: &mut Option<Secret>| -> Result<(), ConfigError> {
            if let Some(var) = var {
                let origin = origin_of(origins, key).map(|o| o.to_string()).unwrap_or_default();
                if env.not_utf8.contains(var) {
                    return Err(ConfigError::SecretEnvNotUtf8 { key: key.into(), origin, var: var.clone() });
                }
                let found = env.vars.get(var).ok_or_else(|| ConfigError::MissingSecretEnv {
                    key: key.into(),
                    origin,
                    var: var.clone(),
                })?;
                *value = Some(Secret(found.clone()));
            }
            Ok(())
        };
        if let Some(email) = &mut self.alerts.email {
            secret("alerts.email.password_env", &email.password_env, &mut email.password)?;
        }
        for (name, d) in &mut self.alerts.dingtalk {
            secret(&format!("alerts.dingtalk.{name}.webhook_env"), &d.webhook_env, &mut d.webhook)?;
            secret(&format!("alerts.dingtalk.{name}.secret_env"), &d.secret_env, &mut d.secret)?;
        }
        for (name, f) in &mut self.alerts.feishu {
            secret(&format!("alerts.feishu.{name}.webhook_env"), &f.webhook_env, &mut f.webhook)?;
            secret(&format!("alerts.feishu.{name}.secret_env"), &f.secret_env, &mut f.secret)?;
        }
        for (name, w) in &mut self.alerts.wecom {
            secret(&format!("alerts.wecom.{name}.webhook_env"), &w.webhook_env, &mut w.webhook)?;
        }
        for (name, s) in &mut self.alerts.slack {
            secret(&format!("alerts.slack.{name}.webhook_env"), &s.webhook_env, &mut s.webhook)?;
        }
        for (name, w) in &mut self.alerts.webhook {
            secret(&format!("alerts.webhook.{name}.url_env"), &w.url_env, &mut w.url)?;
            secret(&format!("alerts.webhook.{name}.secret_env"), &w.secret_env, &mut w.secret)?;
        }
        self.check_alerts(origins)?;
        let bind = &self.scheduler.health_check_bind;
        if !bind.is_empty() && bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Key {
                key: "scheduler.health_check_bind".into(),
                origin: origin_of(origins, "scheduler.health_check_bind")
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "defaults".into()),
                reason: format!("`{bind}` is not an address like 127.0.0.1:8974 (an IP address and a port), or empty"),
            });
        }
        for (name, c) in &mut self.connections {
            secret(&format!("connections.{name}.uri_env"), &c.uri_env, &mut c.uri)?;
        }
        Ok(())
    }

    /// `[alerts]`: every default names a configured channel, each channel has its address, the
    /// DingTalk robot `ding_on_*` use is unambiguous, and the email timeout is bounded.
    fn check_alerts(&self, origins: &BTreeMap<String, Origin>) -> Result<(), ConfigError> {
        let key_error = |key: &str, reason: String| ConfigError::Key {
            key: key.into(),
            origin: origin_of(origins, key).map(|o| o.to_string()).unwrap_or_else(|| "defaults".into()),
            reason,
        };
        let alerts = &self.alerts;
        let known = alerts.channel_names();
        let shown = if known.is_empty() {
            "none is configured".to_string()
        } else {
            format!("configured: {}", known.join(", "))
        };
        let lists = [
            ("alerts.on_failure", &alerts.on_failure),
            ("alerts.on_retry", &alerts.on_retry),
            ("alerts.on_success", &alerts.on_success),
            ("alerts.on_import_error", &alerts.on_import_error),
        ];
        for (key, names) in lists {
            let unknown: Vec<String> = names.iter().filter(|n| !known.contains(n)).map(|n| format!("`{n}`")).collect();
            if !unknown.is_empty() {
                return Err(key_error(key, format!("unknown alert channel {} ({shown})", unknown.join(", "))));
            }
        }
        if let Err(why) = alerts.ding_robot() {
            return Err(key_error("alerts.dingtalk", why));
        }
        let missing = |kind: &str, name: &str, what: &str| {
            key_error(
                &format!("alerts.{kind}.{name}"),
                format!("channel `{kind}.{name}` has no `{what}` (or `{what}_env`)"),
            )
        };
        for (name, c) in &alerts.dingtalk {
            if c.webhook.is_none() {
                return Err(missing("dingtalk", name, "webhook"));
            }
        }
        for (name, c) in &alerts.feishu {
            if c.webhook.is_none() {
                return Err(missing("feishu", name, "webhook"));
            }
        }
        for (name, c) in &alerts.wecom {
            if c.webhook.is_none() {
                return Err(missing("wecom", name, "webhook"));
            }
        }
        for (name, c) in &alerts.slack {
            if c.webhook.is_none() {
                return Err(missing("slack", name, "webhook"));
            }
        }
        for (name, c) in &alerts.webhook {
            if c.url.is_none() {
                return Err(missing("webhook", name, "url"));
            }
        }
        if let Some(email) = &alerts.email {
            if !(email.timeout > 0.0 && email.timeout <= 600.0) {
                return Err(key_error(
                    "alerts.email.timeout",
                    format!("must be above 0 and at most 600 seconds, got {}", show_number(email.timeout)),
                ));
            }
            if email.ssl && email.starttls {
                return Err(key_error("alerts.email", "`ssl` and `starttls` exclude each other; set one".into()));
            }
        }
        Ok(())
    }

    /// A path from the config, relative to the home directory (kept short when home is `.`).
    fn under_home(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.home == Path::new(".") { path.to_path_buf() } else { self.home.join(path) }
    }

    /// The SQLite file of `database.url`, resolved against the home directory.
    pub fn database_path(&self) -> Option<PathBuf> {
        let rest = self.database.url.strip_prefix("sqlite://")?;
        Some(self.under_home(Path::new(rest)))
    }

    /// The environment variables rhaiflow reads secrets from: every `*_env` key's variable, and
    /// `RHAIFLOW__…` variables that set a secret key. Tasks do not inherit them unless their `env`
    /// names them.
    pub fn secret_env_names(&self) -> Vec<String> {
        let mut names = self.secret_env_overrides.clone();
        if let Some(email) = &self.alerts.email {
            names.extend(email.password_env.clone());
        }
        for d in self.alerts.dingtalk.values() {
            names.extend(d.webhook_env.clone());
            names.extend(d.secret_env.clone());
        }
        for f in self.alerts.feishu.values() {
            names.extend(f.webhook_env.clone());
            names.extend(f.secret_env.clone());
        }
        names.extend(self.alerts.wecom.values().filter_map(|w| w.webhook_env.clone()));
        names.extend(self.alerts.slack.values().filter_map(|s| s.webhook_env.clone()));
        for w in self.alerts.webhook.values() {
            names.extend(w.url_env.clone());
            names.extend(w.secret_env.clone());
        }
        names.extend(self.connections.values().filter_map(|c| c.uri_env.clone()));
        names.sort();
        names.dedup();
        names
    }

    /// `[variables]` as strings, for `{{ var.value.NAME }}`.
    pub fn variables(&self) -> BTreeMap<String, String> {
        self.variables.iter().map(|(k, v)| (k.clone(), variable_text(v))).collect()
    }
}

/// A `[variables]` value as Airflow stores variables, as text: strings as written, other values
/// as JSON (so `var.json.NAME` reads a TOML table or array), dates as TOML writes them.
fn variable_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
    }
}

fn record_origins(table: &toml::Table, prefix: &str, origin: &Origin, out: &mut BTreeMap<String, Origin>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if let toml::Value::Table(t) = v {
            record_origins(t, &key, origin, out);
        }
        out.insert(key, origin.clone());
    }
}

/// The origin of `key` or of its nearest parent.
fn origin_of<'a>(origins: &'a BTreeMap<String, Origin>, key: &str) -> Option<&'a Origin> {
    let mut k = key.to_string();
    loop {
        if let Some(o) = origins.get(&k) {
            return Some(o);
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return None,
        }
    }
}

/// An environment value as TOML when it reads as a number, bool or array; otherwise a string.
fn env_value(raw: &str) -> toml::Value {
    // Exactly one key: a value with a newline cannot smuggle in other keys or tables.
    let parsed =
        format!("v = {raw}").parse::<toml::Table>().ok().filter(|t| t.len() == 1).and_then(|mut t| t.remove("v"));
    match parsed {
        Some(
            v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) | toml::Value::Array(_)),
        ) => v,
        _ => toml::Value::String(raw.to_string()),
    }
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut table = tree;
    for p in parents {
        let entry = table.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        table = t;
    }
    table.insert(last.clone(), value);
}

/// A URL with the password of `scheme://user:password@host` replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// A TOML syntax error with its line and column, and what is wrong, but not the line's text.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    ConfigError::Syntax { path: path.to_path_buf(), line, column, reason: e.message().trim_end().to_string() }
}

/// What serde found, from "invalid type: string \"x\", expected u32" (or the whole message).
/// Long values are cut to their first [`GOT_CHARS`] characters.
fn got(reason: &str) -> String {
    let found = reason.strip_prefix("invalid type: ").or_else(|| reason.strip_prefix("invalid value: "));
    let what = match found {
        Some(rest) => rest.split_once(", expected").map_or(rest, |(what, _)| what),
        None => reason,
    };
    match what.char_indices().nth(GOT_CHARS) {
        Some((cut, _)) => format!("{}…", &what[..cut]),
        None => what.to_string(),
    }
}

const GOT_CHARS: usize = 60;

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a suggestion.
fn explain(reason: String) -> String {
    let Some(rest) = reason.strip_prefix("unknown field `") else { return reason };
    let Some((field, expected)) = rest.split_once('`') else { return reason };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match crate::model::suggest::nearest(field, &known) {
        Some(k) => format!("unknown key `{field}` — did you mean `{k}`?"),
        None => format!("unknown key `{field}`; known keys: {}", known.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn home_with(toml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), toml).unwrap();
        dir
    }

    #[test]
    fn defaults_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, env(&[])).unwrap();
        assert_eq!(c.core.dags_folder, dir.path().join("dags"));
        assert_eq!(c.database_path().unwrap(), dir.path().join("rhaiflow.db"));
        assert_eq!(c.webserver.bind, "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = home_with("[core]\nparallelism = 4\ndags_folder = \"from_file\"\n");
        let e = env(&[("RHAIFLOW__CORE__PARALLELISM", "8"), ("RHAIFLOW__CORE__DAGS_FOLDER", "from_env")]);
        let flags = Flags { home: Some(dir.path().into()), dags_folder: Some("from_flag".into()), ..Flags::default() };
        let c = Config::load_from(&flags, e).unwrap();
        assert_eq!(c.core.parallelism, 8);
        assert_eq!(
            c.core.dags_folder,
            PathBuf::from("from_flag"),
            "a flag's path is relative to the current directory"
        );
    }

    #[test]
    fn home_comes_from_the_environment() {
        let dir = home_with("[core]\nparallelism = 3\n");
        let c = Config::load_from(&Flags::default(), env(&[("RHAIFLOW_HOME", dir.path().to_str().unwrap())])).unwrap();
        assert_eq!(c.core.parallelism, 3);
    }

    #[test]
    fn unknown_keys_name_the_key_the_source_and_a_suggestion() {
        let dir = home_with("[core]\ndags_foldr = \"x\"\n");
        let err = Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`core.dags_foldr`"), "{err}");
        assert!(err.contains("rhaiflow.toml"), "{err}");
        assert!(err.contains("did you mean `dags_folder`?"), "{err}");
    }

    #[test]
    fn bad_values_from_env_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let err = Config::load_from(&flags, env(&[("RHAIFLOW__CORE__PARALLELISM", "many")])).unwrap_err().to_string();
        assert!(err.contains("core.parallelism"), "{err}");
        assert!(err.contains("environment variable RHAIFLOW__CORE__PARALLELISM"), "{err}");
        let err = Config::load_from(&flags, env(&[("RHAIFLOW__CORE__DEFAULT_TIMEZONE", "Mars/Base")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown time zone `Mars/Base`"), "{err}");
    }

    #[test]
    fn an_env_value_cannot_smuggle_in_other_keys_and_long_values_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let err = Config::load_from(&flags, env(&[("RHAIFLOW__CORE__PARALLELISM", "4\n[core]\nparse_threads = 9")]))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("must be between 1 and 10000, got string \"4\\n[core]\\nparse_threads = 9\""), "{err}");
        let long = "x".repeat(100_000);
        let err = Config::load_from(&flags, env(&[("RHAIFLOW__CORE__PARALLELISM", &long)])).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(err.ends_with(&format!("got string \"{}…", "x".repeat(52))), "{err}");
    }

    #[test]
    fn every_number_has_bounds_and_every_bound_a_number() {
        let config = Config::default();
        let checked: BTreeSet<&str> = config.numbers().iter().map(|(key, ..)| *key).collect();
        let bounded: BTreeSet<&str> = BOUNDS.iter().map(|b| b.key).collect();
        assert_eq!(checked, bounded);
    }

    #[test]
    fn a_bad_database_url_is_shown_without_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let url = "postgress://ops:hunter2@127.0.0.1:5432/rhaiflow";
        let good = Config::load_from(&flags, env(&[("RHAIFLOW__DATABASE__URL", "postgres://ops:hunter2@127.0.0.1/r")]));
        assert!(!format!("{:?}", good.unwrap()).contains("hunter2"));
        let err = Config::load_from(&flags, env(&[("RHAIFLOW__DATABASE__URL", url)])).unwrap_err().to_string();
        assert!(err.contains("`postgress://ops:***@127.0.0.1:5432/rhaiflow` is not a database URL"), "{err}");
        assert_eq!(without_password("mysql://a@b/c"), "mysql://a@b/c");
        assert_eq!(without_password("x://u:p@h/p@q"), "x://u:***@h/p@q");
        assert_eq!(without_password("nonsense"), "nonsense");
    }

    #[test]
    fn secrets_come_from_named_variables_and_never_print() {
        let dir = home_with("[alerts.dingtalk.ops]\nwebhook_env = \"DING_URL\"\nsecret_env = \"DING_SECRET\"\n");
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let c = Config::load_from(&flags, env(&[("DING_URL", "http://127.0.0.1/x"), ("DING_SECRET", "s3cr3t-value")]))
            .unwrap();
        let robot = &c.alerts.dingtalk["ops"];
        assert_eq!(robot.secret.as_ref().unwrap().expose(), "s3cr3t-value");
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        let err = Config::load_from(&flags, env(&[("DING_URL", "x")])).unwrap_err().to_string();
        assert!(err.contains("DING_SECRET") && err.contains("not set"), "{err}");
    }

    #[test]
    fn secret_env_names_cover_env_keys_and_secret_overrides() {
        let dir =
            home_with("[alerts.dingtalk.ops]\nwebhook_env = \"DING_URL\"\n[connections.db]\nuri_env = \"DB_URI\"\n");
        let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
        let e = env(&[
            ("DING_URL", "http://127.0.0.1/x"),
            ("DB_URI", "postgres://u:p@h/d"),
            ("RHAIFLOW__ALERTS__EMAIL__PASSWORD", "pw"),
            ("RHAIFLOW__CORE__PARALLELISM", "4"),
        ]);
        let c = Config::load_from(&flags, e).unwrap();
        assert_eq!(c.secret_env_names(), ["DB_URI", "DING_URL", "RHAIFLOW__ALERTS__EMAIL__PASSWORD"]);
    }

    #[test]
    fn log_levels_take_rust_log_directives_and_rust_log_overrides_the_file() {
        let load = |toml: &str, vars: &[(&str, &str)]| {
            let dir = home_with(toml);
            Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, env(vars))
        };
        let c = load("[logging]\nlevel = \"info,rhaiflow::scheduler=debug\"\nformat = \"json\"\n", &[]).unwrap();
        assert_eq!(c.logging.level.as_deref(), Some("info,rhaiflow::scheduler=debug"));
        assert_eq!(c.logging.format, LogFormat::Json);
        let c = load("[logging]\nlevel = \"info\"\n", &[("RUST_LOG", "debug")]).unwrap();
        assert_eq!(c.logging.level.as_deref(), Some("debug"));
        let c = load("", &[("RUST_LOG", "debug"), ("RHAIFLOW__LOGGING__LEVEL", "error")]).unwrap();
        assert_eq!(c.logging.level.as_deref(), Some("error"));
        assert_eq!(load("", &[]).unwrap().logging.level, None);
        for bad in ["", "   ", "rhaiflow=loud", "[unclosed"] {
            let err = load(&format!("[logging]\nlevel = {bad:?}\n"), &[]).unwrap_err().to_string();
            assert!(
                err.starts_with("config key `logging.level` (from ") && err.contains("is not a log level or filter"),
                "{bad:?}: {err}"
            );
        }
        let long = "a".repeat(5000);
        let err = load("", &[("RUST_LOG", &long)]).unwrap_err().to_string();
        assert!(err.contains("longer than 4096 bytes") && !err.contains(&long), "{err}");
        let err = load("[logging]\nformat = \"xml\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("logging.format"), "{err}");
    }

    #[test]
    fn variables_that_are_tables_read_as_json() {
        let dir = home_with("[variables]\ncfg = { a = 1, b = [true, \"x\"] }\nn = 3\ns = \"text\"\n");
        let c = Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, env(&[])).unwrap();
        let v = c.variables();
        assert_eq!(v["cfg"], r#"{"a":1,"b":[true,"x"]}"#);
        assert_eq!((v["n"].as_str(), v["s"].as_str()), ("3", "text"));
    }

    #[test]
    fn webserver_auth_is_none_or_password() {
        let load = |toml: &str| {
            let dir = home_with(toml);
            Config::load_from(&Flags { home: Some(dir.path().into()), ..Flags::default() }, env(&[]))
        };
        assert_eq!(load("").unwrap().webserver.auth, WebAuth::None);
        assert_eq!(load("[webserver]\nauth = \"none\"").unwrap().webserver.auth, WebAuth::None);
        let c = load("[webserver]\nauth = \"password\"\nallow_public_without_auth = true").unwrap();
        assert_eq!(c.webserver.auth, WebAuth::Password);
        assert!(c.webserver.allow_public_without_auth);
        let e = load("[webserver]\nauth = \"ldap\"").unwrap_err().to_string();
        assert!(e.contains("webserver.auth") && e.contains("ldap") && e.contains("password"), "{e}");
    }
}
