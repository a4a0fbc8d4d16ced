//! The serialised form of a DAG: what a DAG file declares, with defaults filled in.
//!
//! `DagSpec` is stable JSON (maps are ordered) so its hash identifies a DAG version; runs pin it.

use super::TimeSpan;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A closure defined in a DAG file, called later (callbacks, `RhaiOperator`, branch choosers).
/// The name is Rhai's content-derived function name, so it is stable across re-parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallbackRef(pub String);

/// When a DAG runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// `schedule: ()`: only manual triggers.
    None,
    /// `@once`: a single run at `start_date`.
    Once,
    /// A 5-field cron expression; `preset` keeps the `@daily` spelling when one was used.
    Cron { expr: String, preset: Option<String> },
    /// A fixed interval from `start_date` (`schedule: hours(6)`).
    Interval { every: TimeSpan },
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleSpec::None => f.write_str("None"),
            ScheduleSpec::Once => f.write_str("@once"),
            ScheduleSpec::Cron { preset: Some(p), .. } => f.write_str(p),
            ScheduleSpec::Cron { expr, .. } => f.write_str(expr),
            ScheduleSpec::Interval { every } => write!(f, "{every}"),
        }
    }
}

/// The zone a DAG's schedule is evaluated in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimeZoneSpec {
    /// An IANA name such as `Asia/Shanghai` (DST-aware).
    Named(String),
    /// A fixed offset east of UTC in seconds, kept from a `start_date` such as
    /// `2024-01-01T00:00:00+05:30` that no IANA zone holds (serialised as a number).
    Offset(i32),
}

impl TimeZoneSpec {
    pub fn utc() -> Self {
        TimeZoneSpec::Named("UTC".into())
    }
}

impl fmt::Display for TimeZoneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeZoneSpec::Named(n) => f.write_str(n),
            TimeZoneSpec::Offset(secs) => {
                let sign = if *secs < 0 { '-' } else { '+' };
                let abs = secs.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)?;
                if abs % 60 != 0 {
                    write!(f, ":{:02}", abs % 60)?;
                }
                Ok(())
            }
        }
    }
}

/// Airflow's trigger rules: when a task may run given its upstreams' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    #[default]
    AllSuccess,
    AllFailed,
    AllDone,
    AllSkipped,
    OneSuccess,
    OneFailed,
    OneDone,
    NoneFailed,
    NoneFailedMinOneSuccess,
    NoneSkipped,
    Always,
}

impl TriggerRule {
    pub const ALL: [(&'static str, TriggerRule); 11] = [
        ("all_success", TriggerRule::AllSuccess),
        ("all_failed", TriggerRule::AllFailed),
        ("all_done", TriggerRule::AllDone),
        ("all_skipped", TriggerRule::AllSkipped),
        ("one_success", TriggerRule::OneSuccess),
        ("one_failed", TriggerRule::OneFailed),
        ("one_done", TriggerRule::OneDone),
        ("none_failed", TriggerRule::NoneFailed),
        ("none_failed_min_one_success", TriggerRule::NoneFailedMinOneSuccess),
        ("none_skipped", TriggerRule::NoneSkipped),
        ("always", TriggerRule::Always),
    ];

    pub fn parse(s: &str) -> Option<TriggerRule> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map(|(n, _)| *n).unwrap_or("all_success")
    }
}

/// How a task's effective priority is computed from the weights around it (Airflow's `weight_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightRule {
    /// Its own weight plus the weights of every task downstream of it (Airflow's default).
    #[default]
    Downstream,
    /// Its own weight plus the weights of every task upstream of it.
    Upstream,
    /// Its own weight only.
    Absolute,
}

impl WeightRule {
    pub const ALL: [(&'static str, WeightRule); 3] = [
        ("downstream", WeightRule::Downstream),
        ("upstream", WeightRule::Upstream),
        ("absolute", WeightRule::Absolute),
    ];

    pub fn parse(s: &str) -> Option<WeightRule> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r)
    }

    pub fn is_downstream(&self) -> bool {
        *self == WeightRule::Downstream
    }
}

/// A `TaskGroup` of a DAG, kept for drawing: its full id (`outer.inner`), its parent's, and its tooltip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroupSpec {
    pub group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tooltip: Option<String>,
    pub prefix_group_id: bool,
}

/// A `Label` on the edge `upstream >> downstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeLabel {
    pub upstream: String,
    pub downstream: String,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SensorMode {
    #[default]
    Poke,
    Reschedule,
}

/// What a sensor waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "sensor", rename_all = "snake_case")]
pub enum SensorKind {
    File {
        filepath: String,
        /// `**` matches folders at any depth (Airflow's `recursive`; otherwise it is `*`).
        #[serde(default)]
        recursive: bool,
    },
    Bash {
        bash_command: String,
    },
    Http {
        http_conn_id: Option<String>,
        endpoint: String,
        method: String,
        response_check: Option<CallbackRef>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Sent as the query of a GET, the body otherwise (Airflow's `request_params`).
        #[serde(default)]
        request_params: Option<serde_json::Value>,
        /// Error statuses that mean "not yet" rather than a failure (Airflow's default: 404).
        #[serde(default = "default_allowlist")]
        response_error_codes_allowlist: Vec<u16>,
    },
    ExternalTask {
        external_dag_id: String,
        /// `external_task_id` or `external_task_ids`; empty waits for the whole run.
        #[serde(default)]
        external_task_ids: Vec<String>,
        allowed_states: Vec<String>,
        #[serde(default)]
        failed_states: Vec<String>,
        #[serde(default)]
        skipped_states: Vec<String>,
        execution_delta: Option<TimeSpan>,
        /// Fail at once when the other DAG (or an awaited task of it) does not exist.
        #[serde(default)]
        check_existence: bool,
    },
    TimeDelta {
        delta: TimeSpan,
    },
    DateTime {
        target_time: String,
    },
}

/// The arguments every sensor shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorSpec {
    #[serde(flatten)]
    pub kind: SensorKind,
    pub poke_interval: TimeSpan,
    pub timeout: TimeSpan,
    pub mode: SensorMode,
    pub soft_fail: bool,
    /// Growing intervals between pokes, as Airflow's (jittered doubling, capped by `max_wait`
    /// and by what is left of `timeout`).
    #[serde(default)]
    pub exponential_backoff: bool,
    #[serde(default)]
    pub max_wait: Option<TimeSpan>,
}

/// What a task does when it runs. Templated fields hold the unrendered Jinja text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Operator {
    EmptyOperator,
    BashOperator {
        bash_command: String,
        env: BTreeMap<String, String>,
        append_env: bool,
        cwd: Option<String>,
        skip_on_exit_code: Vec<i32>,
    },
    RhaiOperator {
        callable: CallbackRef,
        /// Positional and keyword arguments for the closure (`|ctx, args, kwargs|`); templated.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        op_args: Vec<serde_json::Value>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        op_kwargs: BTreeMap<String, serde_json::Value>,
    },
    // The larger, rarer operators are boxed so every task's `Operator` stays the size of a
    // `BashOperator` (a scheduler holds every task of every DAG); the JSON form is the same.
    EmailOperator(Box<EmailSpec>),
    HttpOperator(Box<HttpSpec>),
    DingdingOperator(Box<DingdingSpec>),
    SlackWebhookOperator(Box<SlackSpec>),
    FeishuOperator(Box<FeishuSpec>),
    WeComOperator(Box<WeComSpec>),
    BranchOperator {
        callable: CallbackRef,
    },
    ShortCircuitOperator {
        callable: CallbackRef,
        /// A false condition skips every downstream task (`true`, Airflow's default) or only the
        /// direct ones, leaving the rest to their trigger rules.
        #[serde(default = "yes")]
        ignore_downstream_trigger_rules: bool,
    },
    TriggerDagRunOperator(Box<TriggerSpec>),
    Sensor(Box<SensorSpec>),
    LatestOnlyOperator,
    PythonOperator(Box<PythonSpec>),
}

/// `PythonOperator`: a Python function (`module:function`, the module beside the DAG file) run in
/// its own `python` process. Templated: every string inside `op_args`, `op_kwargs` and
/// `templates_dict`; a map `#{ xcom_pull: "task" [, key: "k"] }` inside `op_args`/`op_kwargs` is
/// replaced by that XCom of the run when the task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonSpec {
    /// `module:function`, the module a dotted Python module name, the function a dotted attribute path.
    pub python_callable: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub op_args: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub op_kwargs: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates_dict: Option<BTreeMap<String, serde_json::Value>>,
    /// The interpreter: a command (`python3`), a path to one, or a virtualenv's folder.
    pub python: String,
    /// Accepted for ported DAGs and not installed (the task's log says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    #[serde(default = "yes")]
    pub show_return_value_in_logs: bool,
    /// A returned dict's keys are pushed as XComs of their own too (Airflow's `multiple_outputs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multiple_outputs: bool,
    /// The function returns the task id(s) to follow; the other direct downstream tasks are
    /// skipped (Airflow's `BranchPythonOperator`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub branch: bool,
    /// A falsy result skips everything downstream (Airflow's `ShortCircuitOperator`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short_circuit: bool,
}

impl PythonSpec {
    /// `(module, function)` of a well-formed `python_callable`.
    pub fn split_callable(callable: &str) -> Option<(&str, &str)> {
        let (module, function) = callable.split_once(':')?;
        let dotted = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    let mut chars = part.chars();
                    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                        && chars.all(|c| c.is_alphanumeric() || c == '_')
                })
        };
        (dotted(module) && dotted(function)).then_some((module, function))
    }
}

/// `TriggerDagRunOperator`'s arguments. Templated: `trigger_dag_id`, `trigger_run_id`,
/// `logical_date` and every string inside `conf` (or `conf` itself when it is a string, which must
/// render to a JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub trigger_dag_id: String,
    pub trigger_run_id: Option<String>,
    pub conf: serde_json::Value,
    /// Default: the time the task runs.
    pub logical_date: Option<String>,
    pub reset_dag_run: bool,
    pub wait_for_completion: bool,
    pub poke_interval: TimeSpan,
    pub allowed_states: Vec<super::DagRunState>,
    pub failed_states: Vec<super::DagRunState>,
    pub skip_when_already_exists: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailSpec {
    pub to: Vec<String>,
    pub subject: String,
    pub html_content: String,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// Paths of files to attach (templated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// `DingdingOperator`: a message through a DingTalk robot (`[alerts.dingtalk.NAME]`). `message`
/// is the text (`text`, `markdown`) or the message's object as DingTalk documents it (`link`,
/// `markdown`, `actionCard`, `feedCard`); every string inside it is a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DingdingSpec {
    /// The robot: `NAME` of `[alerts.dingtalk.NAME]` (Airflow's `dingding_conn_id`).
    pub dingding_conn_id: Option<String>,
    pub message_type: String,
    pub message: serde_json::Value,
    pub at_mobiles: Vec<String>,
    #[serde(default)]
    pub at_user_ids: Vec<String>,
    pub at_all: bool,
}

/// `SlackWebhookOperator`: a message through a Slack incoming webhook (`[alerts.slack.NAME]`).
/// Templated as Airflow's: `message`, `channel`, `username`, and the strings of `blocks` and
/// `attachments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlackSpec {
    /// `NAME` of `[alerts.slack.NAME]`.
    pub slack_webhook_conn_id: Option<String>,
    pub message: String,
    /// The Slack channel to post to (a legacy webhook's override), not a rhaiflow channel.
    pub channel: Option<String>,
    pub username: Option<String>,
    pub icon_emoji: Option<String>,
    pub icon_url: Option<String>,
    pub blocks: Option<serde_json::Value>,
    pub attachments: Option<serde_json::Value>,
}

/// `FeishuOperator`: a message through a Feishu/Lark bot (`[alerts.feishu.NAME]`). `message` is
/// the text (`text`) or the content object of `post`, `interactive` (the card), `share_chat`,
/// `image`; every string inside it is a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeishuSpec {
    pub feishu_conn_id: Option<String>,
    pub message_type: String,
    pub message: serde_json::Value,
}

/// `WeComOperator`: a message through a WeCom group robot (`[alerts.wecom.NAME]`), `markdown` or
/// `text`; `message` is a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeComSpec {
    pub wecom_conn_id: Option<String>,
    pub message_type: String,
    pub message: String,
    /// User ids to mention (`text` messages; `@all` for everyone).
    pub mentioned_list: Vec<String>,
    pub mentioned_mobile_list: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpSpec {
    pub http_conn_id: Option<String>,
    pub endpoint: String,
    pub method: String,
    /// A string is sent as it is; any other value as JSON (`data: #{ ... }`).
    pub data: Option<serde_json::Value>,
    pub headers: BTreeMap<String, String>,
    pub response_check: Option<CallbackRef>,
    /// Its value becomes XCom `return_value` instead of the response text.
    #[serde(default)]
    pub response_filter: Option<CallbackRef>,
    /// The request's timeout (`None`: the default, `operators::http::DEFAULT_TIMEOUT`).
    #[serde(default)]
    pub timeout: Option<TimeSpan>,
}

/// Airflow's `HttpSensor.response_error_codes_allowlist` default.
pub fn default_allowlist() -> Vec<u16> {
    vec![404]
}

impl Operator {
    /// The constructor name a DAG author wrote (`BashOperator`, `FileSensor`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Operator::EmptyOperator => "EmptyOperator",
            Operator::BashOperator { .. } => "BashOperator",
            Operator::RhaiOperator { .. } => "RhaiOperator",
            Operator::EmailOperator(_) => "EmailOperator",
            Operator::HttpOperator(_) => "HttpOperator",
            Operator::DingdingOperator(_) => "DingdingOperator",
            Operator::SlackWebhookOperator(_) => "SlackWebhookOperator",
            Operator::FeishuOperator(_) => "FeishuOperator",
            Operator::WeComOperator(_) => "WeComOperator",
            Operator::BranchOperator { .. } => "BranchOperator",
            Operator::ShortCircuitOperator { .. } => "ShortCircuitOperator",
            Operator::TriggerDagRunOperator(_) => "TriggerDagRunOperator",
            Operator::LatestOnlyOperator => "LatestOnlyOperator",
            Operator::PythonOperator(_) => "PythonOperator",
            Operator::Sensor(s) => match s.kind {
                SensorKind::File { .. } => "FileSensor",
                SensorKind::Bash { .. } => "BashSensor",
                SensorKind::Http { .. } => "HttpSensor",
                SensorKind::ExternalTask { .. } => "ExternalTaskSensor",
                SensorKind::TimeDelta { .. } => "TimeDeltaSensor",
                SensorKind::DateTime { .. } => "DateTimeSensor",
            },
        }
    }
}

/// One task of a DAG, with `default_args` already applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub operator: Operator,
    /// `owner`, `pool` and `queue` are shared text: a scheduler holds every task of every DAG, and
    /// these few values repeat across all of them (`scheduler::Scheduler::set_dags` interns them).
    pub owner: Arc<str>,
    pub retries: u32,
    pub retry_delay: TimeSpan,
    pub retry_exponential_backoff: bool,
    pub max_retry_delay: Option<TimeSpan>,
    pub execution_timeout: Option<TimeSpan>,
    pub trigger_rule: TriggerRule,
    pub depends_on_past: bool,
    pub pool: Arc<str>,
    pub pool_slots: u32,
    pub priority_weight: i64,
    /// How the scheduler's effective priority sums weights (`PinnedDag` computes it once per version).
    #[serde(default, skip_serializing_if = "WeightRule::is_downstream")]
    pub weight_rule: WeightRule,
    pub queue: Arc<str>,
    pub email: Vec<String>,
    pub email_on_failure: bool,
    pub email_on_retry: bool,
    pub ding_on_failure: bool,
    pub ding_on_retry: bool,
    /// Alert channels (`dingtalk.ops`, `email`, …) told when a try fails for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_on_failure: Vec<String>,
    /// Alert channels told when a try fails and the task will retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_on_retry: Vec<String>,
    /// Alert channels told when the task succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_on_success: Vec<String>,
    pub on_failure_callback: Option<CallbackRef>,
    pub on_retry_callback: Option<CallbackRef>,
    pub on_success_callback: Option<CallbackRef>,
    pub params: BTreeMap<String, serde_json::Value>,
    pub doc_md: Option<String>,
    /// Direct upstream task ids, sorted.
    pub upstream: Vec<String>,
    /// The full id of the innermost `TaskGroup` holding the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_group: Option<String>,
}

/// A validated DAG as declared by its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagSpec {
    pub dag_id: String,
    /// Path of the file relative to the dags folder.
    pub fileloc: String,
    pub description: Option<String>,
    pub schedule: ScheduleSpec,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub timezone: TimeZoneSpec,
    pub catchup: bool,
    pub tags: Vec<String>,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    pub params: BTreeMap<String, serde_json::Value>,
    pub dagrun_timeout: Option<TimeSpan>,
    pub on_failure_callback: Option<CallbackRef>,
    pub on_success_callback: Option<CallbackRef>,
    pub doc_md: Option<String>,
    /// Tasks in declaration order.
    pub tasks: Vec<TaskSpec>,
    /// `TaskGroup`s in declaration order (outer groups before the groups they hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_groups: Vec<TaskGroupSpec>,
    /// `Label`s on edges, sorted by upstream then downstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge_labels: Vec<EdgeLabel>,
    /// `owners()` joined, computed once (every try's template context shows it).
    #[serde(skip)]
    pub owner_memo: Memo<String>,
}

/// A value derived from the rest of its struct, computed on first use; not part of the struct's
/// identity (always equal) nor of its serialised form.
#[derive(Clone, Default)]
pub struct Memo<T>(std::sync::OnceLock<T>);

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl DagSpec {
    pub fn task(&self, task_id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.task_id == task_id)
    }

    /// Distinct task owners, in first-seen order, as Airflow's DAG list shows them.
    pub fn owners(&self) -> Vec<&str> {
        let mut owners: Vec<&str> = Vec::new();
        for t in &self.tasks {
            if !owners.contains(&&*t.owner) {
                owners.push(&t.owner);
            }
        }
        owners
    }

    /// The distinct owners joined with ", " (Airflow's `dag.owner`), computed once.
    pub fn owner(&self) -> &str {
        self.owner_memo.0.get_or_init(|| self.owners().join(", "))
    }

    /// The stable serialised form the version hash is taken over.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn yes() -> bool {
    true
}
