//! Keyword arguments as object maps: the keys each constructor accepts, their types, and checking them.

use super::error::{ScriptError, ScriptResult};
use super::values::{DateTimeValue, TimeDelta};
use crate::model::TimeSpan;
use rhai::{Array, Dynamic, FnPtr, Map};
use std::collections::BTreeMap;

/// The type a key's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    /// A `timedelta`, or a number of seconds.
    Duration,
    DateTime,
    /// One string, or an array of strings (`email: "a@x"` or `email: ["a@x", "b@x"]`).
    StrList,
    IntList,
    /// A map of string values (`env`, `headers`).
    StrMap,
    /// Any plain data, kept as JSON (`params`, `conf`).
    Json,
    Closure,
    Dag,
    /// A `TaskGroup` returned by `TaskGroup(...)` of the same DAG.
    Group,
    /// A cron string, a preset, a `timedelta`, or `()`.
    Schedule,
    /// A string, or a map sent as JSON (`data` of an HTTP request).
    Body,
    /// An object map checked later by its own table (`default_args`).
    Map,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "`true` or `false`",
            Kind::Duration => "a duration such as `minutes(5)` or `timedelta(#{ hours: 1 })`",
            Kind::DateTime => "a date such as `datetime(2024, 1, 1)` or `days_ago(1)`",
            Kind::StrList => "a string or an array of strings",
            Kind::IntList => "an integer or an array of integers",
            Kind::StrMap => "a map of strings, like `#{ KEY: \"value\" }`",
            Kind::Json => "plain data (a map, array, string, number or bool)",
            Kind::Closure => "a closure such as `|ctx| { ... }`",
            Kind::Dag => "a DAG returned by `DAG(...)`",
            Kind::Group => "a task group returned by `TaskGroup(...)`",
            Kind::Schedule => "a cron string, a preset like \"@daily\", a duration, or `()`",
            Kind::Body => "a string or a map",
            Kind::Map => "an object map like `#{ retries: 1 }`",
        }
    }
}

/// The value of one key, checked against its `Kind`.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Duration(TimeSpan),
    DateTime(DateTimeValue),
    StrList(Vec<String>),
    IntList(Vec<i64>),
    StrMap(BTreeMap<String, String>),
    Json(serde_json::Value),
    Closure(FnPtr),
    Dag(usize),
    Group(GroupHandle),
    /// `None` for `schedule: ()`.
    Schedule(Option<ScheduleArg>),
    Map(Map),
}

impl Value {
    /// The value as the script sees it again (`dag.tags`, `task.retries`).
    pub fn to_dynamic(&self) -> Dynamic {
        let strings = |l: &[String]| Dynamic::from_array(l.iter().map(|s| Dynamic::from(s.clone())).collect());
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(i) => (*i).into(),
            Value::Bool(b) => (*b).into(),
            Value::Duration(d) => Dynamic::from(TimeDelta(*d)),
            Value::DateTime(d) => Dynamic::from(*d),
            Value::StrList(l) => strings(l),
            Value::IntList(l) => Dynamic::from_array(l.iter().map(|i| Dynamic::from(*i)).collect()),
            Value::StrMap(m) => {
                Dynamic::from_map(m.iter().map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone()))).collect())
            }
            Value::Json(j) => rhai::serde::to_dynamic(j).unwrap_or(Dynamic::UNIT),
            Value::Closure(f) => Dynamic::from(f.clone()),
            Value::Dag(i) => Dynamic::from(DagHandle(*i)),
            Value::Group(g) => Dynamic::from(*g),
            Value::Schedule(None) => Dynamic::UNIT,
            Value::Schedule(Some(ScheduleArg::Text(t))) => t.clone().into(),
            Value::Schedule(Some(ScheduleArg::Every(d))) => Dynamic::from(TimeDelta(*d)),
            Value::Map(m) => Dynamic::from_map(m.clone()),
        }
    }

    fn approx_bytes(&self) -> usize {
        const SLOT: usize = 24;
        SLOT + match self {
            Value::Str(s) => s.len(),
            Value::StrList(l) => l.iter().map(|s| SLOT + s.len()).sum(),
            Value::IntList(l) => l.len() * 8,
            Value::StrMap(m) => m.iter().map(|(k, v)| 2 * SLOT + k.len() + v.len()).sum(),
            Value::Json(j) => json_bytes(j),
            Value::Schedule(Some(ScheduleArg::Text(t))) => t.len(),
            Value::Map(m) => m.iter().map(|(k, v)| SLOT + k.len() + dynamic_bytes(v)).sum(),
            _ => 0,
        }
    }
}

fn json_bytes(j: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    32 + match j {
        J::String(s) => s.len(),
        J::Array(a) => a.iter().map(json_bytes).sum(),
        J::Object(o) => o.iter().map(|(k, v)| k.len() + json_bytes(v)).sum(),
        _ => 0,
    }
}

fn dynamic_bytes(v: &Dynamic) -> usize {
    if let Ok(s) = v.as_immutable_string_ref() {
        return s.len();
    }
    if let Some(a) = v.read_lock::<Array>() {
        return a.iter().map(|x| 16 + dynamic_bytes(x)).sum();
    }
    if let Some(m) = v.read_lock::<Map>() {
        return m.iter().map(|(k, x)| 16 + k.len() + dynamic_bytes(x)).sum();
    }
    16
}

#[derive(Debug, Clone)]
pub enum ScheduleArg {
    Text(String),
    Every(TimeSpan),
}

/// A DAG handle in a script: the index of a DAG declared in this file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DagHandle(pub usize);

/// A `TaskGroup` handle in a script: the index of a group of a DAG of this file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHandle {
    pub dag: usize,
    pub group: usize,
}

/// A task handle in a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskHandle {
    pub dag: usize,
    pub task: usize,
}

pub type KeySpec = (&'static str, Kind);

/// Arguments every operator accepts (and `default_args` may give).
pub const TASK_KEYS: &[KeySpec] = &[
    ("task_id", Kind::Str),
    ("dag", Kind::Dag),
    ("owner", Kind::Str),
    ("retries", Kind::Int),
    ("retry_delay", Kind::Duration),
    ("retry_exponential_backoff", Kind::Bool),
    ("max_retry_delay", Kind::Duration),
    ("execution_timeout", Kind::Duration),
    ("trigger_rule", Kind::Str),
    ("depends_on_past", Kind::Bool),
    ("pool", Kind::Str),
    ("pool_slots", Kind::Int),
    ("priority_weight", Kind::Int),
    ("weight_rule", Kind::Str),
    ("task_group", Kind::Group),
    ("queue", Kind::Str),
    ("email", Kind::StrList),
    ("email_on_failure", Kind::Bool),
    ("email_on_retry", Kind::Bool),
    ("ding_on_failure", Kind::Bool),
    ("ding_on_retry", Kind::Bool),
    ("alert_on_failure", Kind::StrList),
    ("alert_on_retry", Kind::StrList),
    ("alert_on_success", Kind::StrList),
    ("on_failure_callback", Kind::Closure),
    ("on_retry_callback", Kind::Closure),
    ("on_success_callback", Kind::Closure),
    ("params", Kind::Json),
    ("doc_md", Kind::Str),
];

/// Keys `default_args` may hold beyond the task keys, as in Airflow.
pub const DEFAULT_ONLY_KEYS: &[KeySpec] = &[("start_date", Kind::DateTime), ("end_date", Kind::DateTime)];

pub const SENSOR_KEYS: &[KeySpec] = &[
    ("poke_interval", Kind::Duration),
    ("timeout", Kind::Duration),
    ("mode", Kind::Str),
    ("soft_fail", Kind::Bool),
    ("exponential_backoff", Kind::Bool),
    ("max_wait", Kind::Duration),
];

pub const DAG_KEYS: &[KeySpec] = &[
    ("dag_id", Kind::Str),
    ("schedule", Kind::Schedule),
    ("schedule_interval", Kind::Schedule),
    ("start_date", Kind::DateTime),
    ("end_date", Kind::DateTime),
    ("catchup", Kind::Bool),
    ("default_args", Kind::Map),
    ("description", Kind::Str),
    ("tags", Kind::StrList),
    ("max_active_runs", Kind::Int),
    ("max_active_tasks", Kind::Int),
    ("params", Kind::Json),
    ("dagrun_timeout", Kind::Duration),
    ("timezone", Kind::Str),
    ("on_failure_callback", Kind::Closure),
    ("on_success_callback", Kind::Closure),
    ("doc_md", Kind::Str),
];

/// One operator constructor: its name, its own keys, which of them are required, and whether it is a sensor.
pub struct OperatorDef {
    pub name: &'static str,
    pub keys: &'static [KeySpec],
    pub required: &'static [&'static str],
    pub sensor: bool,
}

pub const OPERATORS: &[OperatorDef] = &[
    OperatorDef { name: "EmptyOperator", keys: &[], required: &[], sensor: false },
    OperatorDef {
        name: "BashOperator",
        keys: &[
            ("bash_command", Kind::Str),
            ("env", Kind::StrMap),
            ("append_env", Kind::Bool),
            ("cwd", Kind::Str),
            ("skip_on_exit_code", Kind::IntList),
        ],
        required: &["bash_command"],
        sensor: false,
    },
    OperatorDef {
        name: "RhaiOperator",
        keys: &[
            ("callable", Kind::Closure),
            ("python_callable", Kind::Closure),
            ("op_args", Kind::Json),
            ("op_kwargs", Kind::Json),
        ],
        required: &["callable"],
        sensor: false,
    },
    OperatorDef {
        name: "PythonOperator",
        keys: &[
            ("python_callable", Kind::Str),
            ("op_args", Kind::Json),
            ("op_kwargs", Kind::Json),
            ("templates_dict", Kind::Json),
            ("python", Kind::Str),
            ("requirements", Kind::StrList),
            ("show_return_value_in_logs", Kind::Bool),
            ("multiple_outputs", Kind::Bool),
            ("branch", Kind::Bool),
            ("short_circuit", Kind::Bool),
        ],
        required: &["python_callable"],
        sensor: false,
    },
    OperatorDef {
        name: "EmailOperator",
        keys: &[
            ("to", Kind::StrList),
            ("subject", Kind::Str),
            ("html_content", Kind::Str),
            ("cc", Kind::StrList),
            ("bcc", Kind::StrList),
            ("files", Kind::StrList),
        ],
        required: &["to", "subject", "html_content"],
        sensor: false,
    },
    OperatorDef {
        name: "HttpOperator",
        keys: &[
            ("http_conn_id", Kind::Str),
            ("endpoint", Kind::Str),
            ("method", Kind::Str),
            ("data", Kind::Body),
            ("headers", Kind::StrMap),
            ("response_check", Kind::Closure),
            ("response_filter", Kind::Closure),
            ("timeout", Kind::Duration),
        ],
        required: &["endpoint"],
        sensor: false,
    },
    OperatorDef {
        name: "DingdingOperator",
        keys: &[
            ("dingding_conn_id", Kind::Str),
            ("message_type", Kind::Str),
            ("message", Kind::Body),
            ("at_mobiles", Kind::StrList),
            ("at_user_ids", Kind::StrList),
            ("at_all", Kind::Bool),
        ],
        required: &["message"],
        sensor: false,
    },
    OperatorDef {
        name: "SlackWebhookOperator",
        keys: &[
            ("slack_webhook_conn_id", Kind::Str),
            ("message", Kind::Str),
            ("channel", Kind::Str),
            ("username", Kind::Str),
            ("icon_emoji", Kind::Str),
            ("icon_url", Kind::Str),
            ("blocks", Kind::Json),
            ("attachments", Kind::Json),
        ],
        required: &[],
        sensor: false,
    },
    OperatorDef {
        name: "FeishuOperator",
        keys: &[("feishu_conn_id", Kind::Str), ("message_type", Kind::Str), ("message", Kind::Body)],
        required: &["message"],
        sensor: false,
    },
    OperatorDef {
        name: "WeComOperator",
        keys: &[
            ("wecom_conn_id", Kind::Str),
            ("message_type", Kind::Str),
            ("message", Kind::Str),
            ("mentioned_list", Kind::StrList),
            ("mentioned_mobile_list", Kind::StrList),
        ],
        required: &["message"],
        sensor: false,
    },
    OperatorDef {
        name: "BranchOperator",
        keys: &[("callable", Kind::Closure), ("python_callable", Kind::Closure)],
        required: &["callable"],
        sensor: false,
    },
    OperatorDef {
        name: "ShortCircuitOperator",
        keys: &[
            ("callable", Kind::Closure),
            ("python_callable", Kind::Closure),
            ("ignore_downstream_trigger_rules", Kind::Bool),
        ],
        required: &["callable"],
        sensor: false,
    },
    OperatorDef {
        name: "TriggerDagRunOperator",
        keys: &[
            ("trigger_dag_id", Kind::Str),
            ("trigger_run_id", Kind::Str),
            ("conf", Kind::Json),
            ("logical_date", Kind::Str),
            ("execution_date", Kind::Str),
            ("reset_dag_run", Kind::Bool),
            ("wait_for_completion", Kind::Bool),
            ("poke_interval", Kind::Duration),
            ("allowed_states", Kind::StrList),
            ("failed_states", Kind::StrList),
            ("skip_when_already_exists", Kind::Bool),
        ],
        required: &["trigger_dag_id"],
        sensor: false,
    },
    OperatorDef { name: "LatestOnlyOperator", keys: &[], required: &[], sensor: false },
    OperatorDef {
        name: "FileSensor",
        keys: &[("filepath", Kind::Str), ("recursive", Kind::Bool)],
        required: &["filepath"],
        sensor: true,
    },
    OperatorDef { name: "BashSensor", keys: &[("bash_command", Kind::Str)], required: &["bash_command"], sensor: true },
    OperatorDef {
        name: "HttpSensor",
        keys: &[
            ("http_conn_id", Kind::Str),
            ("endpoint", Kind::Str),
            ("method", Kind::Str),
            ("response_check", Kind::Closure),
            ("headers", Kind::StrMap),
            ("request_params", Kind::Body),
            ("response_error_codes_allowlist", Kind::StrList),
        ],
        required: &["endpoint"],
        sensor: true,
    },
    OperatorDef {
        name: "ExternalTaskSensor",
        keys: &[
            ("external_dag_id", Kind::Str),
            ("external_task_id", Kind::Str),
            ("external_task_ids", Kind::StrList),
            ("allowed_states", Kind::StrList),
            ("failed_states", Kind::StrList),
            ("skipped_states", Kind::StrList),
            ("execution_delta", Kind::Duration),
            ("check_existence", Kind::Bool),
        ],
        required: &["external_dag_id"],
        sensor: true,
    },
    OperatorDef { name: "TimeDeltaSensor", keys: &[("delta", Kind::Duration)], required: &["delta"], sensor: true },
    OperatorDef {
        name: "DateTimeSensor",
        keys: &[("target_time", Kind::Str)],
        required: &["target_time"],
        sensor: true,
    },
];

/// Every key any operator accepts: what `default_args` may carry.
pub fn default_args_keys() -> Vec<KeySpec> {
    let mut keys: Vec<KeySpec> =
        TASK_KEYS.iter().filter(|(k, _)| !matches!(*k, "task_id" | "dag" | "task_group")).copied().collect();
    keys.extend_from_slice(DEFAULT_ONLY_KEYS);
    keys.extend_from_slice(SENSOR_KEYS);
    for op in OPERATORS {
        for key in op.keys {
            if !keys.iter().any(|(k, _)| k == &key.0) {
                keys.push(*key);
            }
        }
    }
    keys
}

/// Checked arguments of one call.
#[derive(Debug, Default, Clone)]
pub struct Args {
    values: BTreeMap<String, Value>,
    /// Keys given with a value of the wrong type, or misspelt: reported already, and not also
    /// "missing" for required checks.
    rejected: Vec<String>,
}

/// Where else a key is known, for "`endpoint` is a key of `HttpOperator`, not of `BashOperator`".
fn owners_of(key: &str) -> Vec<String> {
    let mut owners = Vec::new();
    if DAG_KEYS.iter().any(|(k, _)| *k == key) {
        owners.push("`DAG`".to_string());
    }
    let sensor_key = SENSOR_KEYS.iter().any(|(k, _)| *k == key);
    if sensor_key {
        owners.push("every sensor".to_string());
    }
    for op in OPERATORS {
        if op.keys.iter().any(|(k, _)| *k == key) && !(sensor_key && op.sensor) {
            owners.push(format!("`{}`", op.name));
        }
    }
    owners
}

fn list_names(names: &[String]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        2..=3 => format!("{} and {}", names[..names.len() - 1].join(", "), names[names.len() - 1]),
        _ => format!("{}, {}, {} and others", names[0], names[1], names[2]),
    }
}

/// An unknown key: a key of another constructor says so ("a key of `HttpOperator`, not of
/// `BashOperator`"), a typo gets the nearest key `owner` knows, never a key it does not take.
pub fn unknown_key(key: &str, owner: &str, allowed: &[KeySpec]) -> ScriptError {
    let known: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
    let task_key = default_args_keys().iter().any(|(k, _)| *k == key) || key == "task_id";
    if owner == "DAG" && task_key {
        return ScriptError::new(format!("`{key}` is a task key, not a key of `DAG`"))
            .with_help(format!("put it in the DAG's `default_args: #{{ {key}: ... }}` to apply it to every task"))
            .at_key(key);
    }
    let owner_label = format!("`{owner}`");
    let owners: Vec<String> = owners_of(key).into_iter().filter(|o| *o != owner_label).collect();
    if !owners.is_empty() {
        let own: Vec<&str> = OPERATORS
            .iter()
            .find(|op| op.name == owner)
            .map(|op| op.keys.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default();
        let is_operator = OPERATORS.iter().any(|op| op.name == owner);
        let help = if owner == "default_args" {
            format!("give `{key}` to `DAG(...)` itself, not in `default_args`")
        } else if is_operator && own.is_empty() {
            format!("`{owner}` takes only the keys every task takes: {}", known.join(", "))
        } else if is_operator {
            format!("`{owner}` takes {} and the keys every task takes", own.join(", "))
        } else {
            format!("`{owner}` takes: {}", known.join(", "))
        };
        return ScriptError::new(format!("`{key}` is a key of {}, not of `{owner}`", list_names(&owners)))
            .with_help(help)
            .at_key(key);
    }
    ScriptError::unknown_key(key, owner, &known)
}

impl Args {
    /// Checks every key of `map` against `allowed`; `owner` names the constructor in messages.
    /// A key that is unknown or has a value of the wrong type is left out and its error returned,
    /// so one call reports every bad key and the file can go on.
    pub fn check(map: &Map, allowed: &[KeySpec], owner: &str) -> (Args, Vec<ScriptError>) {
        let mut args = Args::default();
        let mut errors = Vec::new();
        for (key, raw) in map {
            let Some((_, kind)) = allowed.iter().find(|(k, _)| *k == key.as_str()) else {
                // A misspelt key counts as given, so a required key is not also reported missing.
                let known: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
                if let Some(meant) = super::error::nearest(key, &known) {
                    args.rejected.push(meant.to_string());
                }
                errors.push(unknown_key(key, owner, allowed));
                continue;
            };
            match convert(raw, *kind, key, owner) {
                Ok(value) => {
                    args.values.insert(key.to_string(), value);
                }
                Err(e) => {
                    args.rejected.push(key.to_string());
                    errors.push(e.at_key_if_none(key));
                }
            }
        }
        (args, errors)
    }

    /// Whether `key` was given, even with a value that was rejected.
    pub fn given(&self, key: &str) -> bool {
        self.values.contains_key(key) || self.rejected.iter().any(|k| k == key)
    }

    /// Sets the keys of `other` over these.
    pub fn merge(&mut self, other: Args) {
        for (key, value) in other.values {
            self.values.insert(key, value);
        }
    }

    /// Every key and value, to read one back (`dag.doc_md`).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Fills keys this call left out from `defaults`, skipping those `allowed` does not list.
    pub fn fill_from(&mut self, defaults: &Args, allowed: &[KeySpec]) {
        for (key, value) in &defaults.values {
            if allowed.iter().any(|(k, _)| k == key) {
                self.values.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }

    /// Roughly the bytes these values hold once copied into a spec (their text and containers).
    pub fn approx_bytes(&self) -> usize {
        self.values.iter().map(|(k, v)| k.len() + v.approx_bytes()).sum()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.values.remove(key)
    }

    pub fn str(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn duration(&self, key: &str) -> Option<TimeSpan> {
        match self.get(key) {
            Some(Value::Duration(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn datetime(&self, key: &str) -> Option<DateTimeValue> {
        match self.get(key) {
            Some(Value::DateTime(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn str_list(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key) {
            Some(Value::StrList(l)) => Some(l.clone()),
            _ => None,
        }
    }

    pub fn int_list(&self, key: &str) -> Option<Vec<i64>> {
        match self.get(key) {
            Some(Value::IntList(l)) => Some(l.clone()),
            _ => None,
        }
    }

    pub fn str_map(&self, key: &str) -> Option<BTreeMap<String, String>> {
        match self.get(key) {
            Some(Value::StrMap(m)) => Some(m.clone()),
            _ => None,
        }
    }

    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        match self.get(key) {
            Some(Value::Json(j)) => Some(j.clone()),
            _ => None,
        }
    }

    /// A `Kind::Body` value: a string as it is, a map or other data as JSON.
    pub fn body(&self, key: &str) -> Option<serde_json::Value> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(serde_json::Value::String(s.clone())),
            Some(Value::Json(j)) => Some(j.clone()),
            _ => None,
        }
    }

    pub fn closure(&self, key: &str) -> Option<FnPtr> {
        match self.get(key) {
            Some(Value::Closure(f)) => Some(f.clone()),
            _ => None,
        }
    }
}

fn type_error(key: &str, owner: &str, kind: Kind, got: &Dynamic) -> ScriptError {
    let error = ScriptError::new(format!("`{key}` in `{owner}` must be {}, not {}", kind.expected(), describe(got)))
        .at_key(key);
    if owner == "PythonOperator" && key == "python_callable" && got.is::<FnPtr>() {
        // A DAG written for an earlier rhaiflow, or a closure meant for `RhaiOperator`.
        return error.with_help(
            "`PythonOperator` runs a Python function: `python_callable: \"module:function\"`; \
             a Rhai closure runs with `RhaiOperator(#{ task_id: \"t\", callable: |ctx| { ... } })`",
        );
    }
    error
}

/// A value's type in words for messages: `a string ("3")`, `an integer (3)`.
fn describe(value: &Dynamic) -> String {
    if let Ok(s) = value.as_immutable_string_ref() {
        let mut text: String = s.chars().take(40).collect();
        if s.chars().count() > 40 {
            text.push('…');
        }
        return format!("a string (\"{text}\")");
    }
    if let Ok(i) = value.as_int() {
        return format!("an integer ({i})");
    }
    if let Ok(f) = value.as_float() {
        return format!("a number ({f})");
    }
    if let Ok(b) = value.as_bool() {
        return format!("a bool ({b})");
    }
    if value.is_unit() {
        return "`()`".into();
    }
    if let Ok(c) = value.as_char() {
        return format!(
            "a character (`'{c}'`: single quotes make one character in Rhai; write strings in double quotes)"
        );
    }
    if value.is::<FnPtr>() {
        return "a closure".into();
    }
    format!("a value of type `{}`", value.type_name())
}

fn convert(raw: &Dynamic, kind: Kind, key: &str, owner: &str) -> ScriptResult<Value> {
    let fail = || type_error(key, owner, kind, raw);
    let value = match kind {
        Kind::Str => Value::Str(raw.clone().into_string().map_err(|_| fail())?),
        Kind::Int => Value::Int(raw.as_int().map_err(|_| fail())?),
        Kind::Bool => Value::Bool(raw.as_bool().map_err(|_| fail())?),
        Kind::Duration => Value::Duration(duration(raw, key, owner)?.ok_or_else(fail)?),
        Kind::DateTime => {
            if let Some(dt) = raw.clone().try_cast::<DateTimeValue>() {
                Value::DateTime(dt)
            } else if let Ok(text) = raw.as_immutable_string_ref() {
                Value::DateTime(super::values::parse_datetime(&text)?)
            } else {
                return Err(fail());
            }
        }
        Kind::StrList => Value::StrList(str_list(raw).ok_or_else(fail)?),
        Kind::IntList => Value::IntList(int_list(raw).ok_or_else(fail)?),
        Kind::StrMap => {
            let map = raw.clone().try_cast::<Map>().ok_or_else(fail)?;
            let mut out = BTreeMap::new();
            for (k, v) in map {
                let text = scalar_text(&v).ok_or_else(|| {
                    ScriptError::new(format!("`{key}.{k}` in `{owner}` must be a string, not {}", describe(&v)))
                })?;
                out.insert(k.to_string(), text);
            }
            Value::StrMap(out)
        }
        Kind::Json => Value::Json(to_json(raw).map_err(|what| {
            ScriptError::new(format!("`{key}` in `{owner}` must be {}, but holds {what}", kind.expected()))
        })?),
        Kind::Closure => Value::Closure(raw.clone().try_cast::<FnPtr>().ok_or_else(fail)?),
        Kind::Dag => Value::Dag(raw.clone().try_cast::<DagHandle>().ok_or_else(fail)?.0),
        Kind::Group => Value::Group(raw.clone().try_cast::<GroupHandle>().ok_or_else(fail)?),
        Kind::Schedule => {
            if raw.is_unit() {
                Value::Schedule(None)
            } else if let Ok(text) = raw.as_immutable_string_ref() {
                Value::Schedule(Some(ScheduleArg::Text(text.to_string())))
            } else if let Some(d) = raw.clone().try_cast::<TimeDelta>() {
                Value::Schedule(Some(ScheduleArg::Every(d.0)))
            } else {
                return Err(fail());
            }
        }
        Kind::Map => Value::Map(raw.clone().try_cast::<Map>().ok_or_else(fail)?),
        Kind::Body => {
            if let Ok(text) = raw.as_immutable_string_ref() {
                Value::Str(text.to_string())
            } else {
                Value::Json(to_json(raw).map_err(|_| fail())?)
            }
        }
    };
    Ok(value)
}

/// A duration, `None` when the value is not one (a type error), an error when it is out of range.
fn duration(raw: &Dynamic, key: &str, owner: &str) -> ScriptResult<Option<TimeSpan>> {
    if let Some(d) = raw.clone().try_cast::<TimeDelta>() {
        return Ok(Some(d.0));
    }
    let out_of_range = |shown: String| {
        ScriptError::new(format!(
            "`{key}` in `{owner}`: {shown} seconds is out of range: durations are limited to 100 years"
        ))
        .at_key(key)
    };
    if let Ok(i) = raw.as_int() {
        let Ok(secs) = u64::try_from(i) else { return Ok(None) };
        return TimeSpan::checked_from_secs(secs).map(Some).ok_or_else(|| out_of_range(i.to_string()));
    }
    match raw.as_float() {
        Ok(f) if f >= 0.0 => TimeSpan::checked_from_secs_f64(f).map(Some).ok_or_else(|| out_of_range(f.to_string())),
        _ => Ok(None),
    }
}

fn scalar_text(v: &Dynamic) -> Option<String> {
    if let Ok(s) = v.as_immutable_string_ref() {
        return Some(s.to_string());
    }
    if v.is_int() || v.is_float() || v.is_bool() {
        return Some(v.to_string());
    }
    None
}

fn str_list(raw: &Dynamic) -> Option<Vec<String>> {
    if let Ok(s) = raw.as_immutable_string_ref() {
        // Airflow accepts "a@x, b@x" as well as a list.
        return Some(s.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect());
    }
    let array = raw.clone().try_cast::<Array>()?;
    array.iter().map(|v| v.as_immutable_string_ref().ok().map(|s| s.to_string())).collect()
}

fn int_list(raw: &Dynamic) -> Option<Vec<i64>> {
    if let Ok(i) = raw.as_int() {
        return Some(vec![i]);
    }
    let array = raw.clone().try_cast::<Array>()?;
    array.iter().map(|v| v.as_int().ok()).collect()
}

/// Plain Rhai data to JSON; `Err` names the first value that is not plain data.
pub fn to_json(raw: &Dynamic) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if raw.is_unit() {
        return Ok(J::Null);
    }
    if let Ok(b) = raw.as_bool() {
        return Ok(J::Bool(b));
    }
    if let Ok(i) = raw.as_int() {
        return Ok(J::from(i));
    }
    if let Ok(f) = raw.as_float() {
        return Ok(serde_json::Number::from_f64(f).map(J::Number).unwrap_or(J::Null));
    }
    if let Ok(s) = raw.as_immutable_string_ref() {
        return Ok(J::String(s.to_string()));
    }
    if let Some(d) = raw.clone().try_cast::<TimeDelta>() {
        return Ok(J::from(d.0.as_secs_f64()));
    }
    if let Some(array) = raw.clone().try_cast::<Array>() {
        return array.iter().map(to_json).collect::<Result<Vec<_>, _>>().map(J::Array);
    }
    if let Some(map) = raw.clone().try_cast::<Map>() {
        let mut out = serde_json::Map::new();
        for (k, v) in &map {
            out.insert(k.to_string(), to_json(v)?);
        }
        return Ok(J::Object(out));
    }
    Err(format!("a value of type `{}`", raw.type_name()))
}
