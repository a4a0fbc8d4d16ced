//! Jinja templates (minijinja) rendered with Airflow 2.10's template context, whole: `ds`, `ts`,
//! `logical_date` and the other dates as pendulum-like objects, `prev_ds`/`next_ds` and the other
//! deprecated names, `prev_*_success`, `dag_run`, `ti` (`xcom_pull`, `xcom_push`), `params`,
//! `var.value`/`var.json`, `conn.NAME`, `macros`, and Python's methods on strings and maps.
//! Every macro is fallible, and an undefined name says which one and what was meant.

mod accessors;
mod dates;

pub use accessors::{Connection, XcomPushes};

use accessors::{
    CONNECTION_ATTRIBUTES, ConnAccessor, DAG_RUN_ATTRIBUTES, DagRunObject, RandomModule, TI_ATTRIBUTES,
    TaskInstanceObject, TimeModule, UuidModule, VarAccessor,
};
use chrono::{DateTime, NaiveDate, Utc};
use dates::{DatetimeClass, Delta, WHEN_ATTRIBUTES, When};
use minijinja::value::{Object, ObjectRepr, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind, Output, State, Template, UndefinedBehavior};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a template can see. Built from plain data by the caller (`worker::template_context`).
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    /// Airflow's `run_type`: `scheduled`, `manual` or `backfill`.
    pub run_type: String,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    /// `prev_execution_date`: the previous logical date of the schedule (the logical date itself
    /// for a manual run; `None` when the schedule has none), as Airflow 2.10.
    pub prev_logical_date: Option<DateTime<Utc>>,
    /// `next_execution_date`: the next logical date of the schedule, by the same rules.
    pub next_logical_date: Option<DateTime<Utc>>,
    /// The latest successful run of the DAG before this one, read only when a template asks.
    pub prev_success: Option<PrevSuccess>,
    pub try_number: u32,
    pub max_tries: u32,
    pub hostname: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub conf: serde_json::Value,
    pub variables: BTreeMap<String, String>,
    /// `[connections.NAME] uri` by name.
    pub connections: BTreeMap<String, String>,
    /// XComs of the run, oldest first: `(task_id, key, value)`.
    pub xcoms: Vec<(String, String, serde_json::Value)>,
    /// `{{ dag }}` and `{{ task }}`: `(repr, attributes)`.
    pub dag: (String, serde_json::Value),
    pub task: (String, serde_json::Value),
    /// What `ti.xcom_push` recorded; the caller writes it.
    pub pushes: XcomPushes,
    pub max_xcom_bytes: u64,
}

/// The prior successful run (Airflow's `get_previous_dagrun(state=SUCCESS)`).
#[derive(Debug, Clone, Default)]
pub struct PrevSuccess {
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
}

/// A template that did not render: the field, the template's line, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template error in `{field}`{}: {reason}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub field: String,
    pub line: Option<usize>,
    pub reason: String,
}

/// What rendering a set of templates will read from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `ti.xcom_pull` (or `ti` handed on whole).
    pub xcoms: bool,
    /// `prev_data_interval_start_success` and the other `prev_*_success` names.
    pub prev_success: bool,
}

const PREV_SUCCESS_NAMES: [&str; 5] = [
    "prev_data_interval_start_success",
    "prev_data_interval_end_success",
    "prev_start_date_success",
    "prev_end_date_success",
    "prev_execution_date_success",
];

/// Template instructions one render may run (loops included): bounds a runaway `{% for %}`.
const FUEL: u64 = 50_000_000;

/// Which store reads the templates need: XComs only when `xcom_pull` appears, the prior
/// successful run only when a `prev_*_success` name does. A template that does not parse needs
/// nothing (rendering it reports the error).
pub fn needs<'a>(templates: impl IntoIterator<Item = &'a str>) -> Needs {
    let env = Environment::new();
    let mut out = Needs::default();
    for source in templates {
        if !is_template(source) {
            continue;
        }
        let Ok(template) = env.template_from_str(source) else { continue };
        for path in template.undeclared_variables(true) {
            let mut parts = path.splitn(3, '.');
            let (first, second) = (parts.next().unwrap_or_default(), parts.next());
            if matches!(first, "ti" | "task_instance") && matches!(second, None | Some("xcom_pull")) {
                out.xcoms = true;
            }
            if PREV_SUCCESS_NAMES.contains(&first) {
                out.prev_success = true;
            }
        }
    }
    out
}

fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

pub(crate) fn fail(reason: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, reason)
}

fn json_value(v: &serde_json::Value) -> Value {
    Value::from(Serde(v))
}

/// `macros.ds_add('2024-01-01', 5)`: checked, so a date past chrono's range is an error.
fn ds_add(ds: String, days: i64) -> Result<String, minijinja::Error> {
    let date =
        NaiveDate::parse_from_str(&ds, "%Y-%m-%d").map_err(|_| fail(format!("`{ds}` is not a YYYY-MM-DD date")))?;
    chrono::TimeDelta::try_days(days)
        .and_then(|delta| date.checked_add_signed(delta))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| fail(format!("`macros.ds_add({ds}, {days})` is outside the supported dates")))
}

/// `macros.ds_format(ds, input, output)`: Airflow parses with `strptime` and formats with
/// `strftime`, so `%H` of a date is `00`; a malformed output format is an error, not a panic.
fn ds_format(ds: String, input: String, output: String) -> Result<String, minijinja::Error> {
    let parsed = DatetimeClass.parse(&ds, &input)?;
    parsed.strftime(&output)
}

/// `{{ x | shell_quote }}`: POSIX single-quoting, so a value is one shell word whatever it holds.
fn shell_quote(value: Value) -> String {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Values print as Python prints them: `None`, `True`, `False`.
fn python_formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), minijinja::Error> {
    let text = match value.kind() {
        ValueKind::None => "None",
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "could not write the output"))
}

/// Python's methods on strings, maps and lists (minijinja-contrib's `pycompat`); an unknown one
/// names itself, the value's type and the nearest method.
fn python_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, minijinja::Error> {
    match minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args) {
        // A callable stored under the name (`macros.ds_add(...)`): minijinja calls it next.
        Err(e) if e.kind() == ErrorKind::UnknownMethod && value.get_attr(method).is_ok_and(|v| !v.is_undefined()) => {
            Err(e)
        }
        Err(e) if e.kind() == ErrorKind::UnknownMethod => {
            let known = attribute_names(value);
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = crate::model::suggest::nearest(method, &known)
                .map(|k| format!(" — did you mean `{k}`?"))
                .unwrap_or_default();
            Err(fail(format!("{} has no method `{method}`{hint}", describe(value))))
        }
        other => other,
    }
}

const STRING_METHODS: &[&str] = &[
    "upper",
    "lower",
    "islower",
    "isupper",
    "isspace",
    "isdigit",
    "isnumeric",
    "isalnum",
    "isalpha",
    "isascii",
    "strip",
    "lstrip",
    "rstrip",
    "replace",
    "title",
    "split",
    "splitlines",
    "capitalize",
    "count",
    "find",
    "format",
    "rfind",
    "startswith",
    "endswith",
    "join",
];
const MAP_METHODS: &[&str] = &["keys", "values", "items", "get"];

/// The attributes and methods a value has, for "did you mean".
fn attribute_names(value: &Value) -> Vec<String> {
    let fixed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if value.downcast_object_ref::<When>().is_some() {
        return fixed(WHEN_ATTRIBUTES);
    }
    if value.downcast_object_ref::<TaskInstanceObject>().is_some() {
        return fixed(TI_ATTRIBUTES);
    }
    if value.downcast_object_ref::<DagRunObject>().is_some() {
        return fixed(DAG_RUN_ATTRIBUTES);
    }
    if value.downcast_object_ref::<Connection>().is_some() {
        return fixed(CONNECTION_ATTRIBUTES);
    }
    if value.downcast_object_ref::<Delta>().is_some() {
        return fixed(&["days", "seconds", "microseconds", "total_seconds"]);
    }
    if let Some(var) = value.downcast_object_ref::<VarAccessor>() {
        return var.names();
    }
    if let Some(conn) = value.downcast_object_ref::<ConnAccessor>() {
        return conn.names();
    }
    if let Some(attrs) = value.downcast_object_ref::<Attributes>() {
        return attrs.names();
    }
    match value.kind() {
        ValueKind::String => fixed(STRING_METHODS),
        ValueKind::Map => {
            let mut names: Vec<String> = value
                .try_iter()
                .map(|keys| keys.filter_map(|k| k.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            names.extend(fixed(MAP_METHODS));
            names
        }
        ValueKind::Seq => fixed(&["count"]),
        _ => Vec::new(),
    }
}

fn describe(value: &Value) -> String {
    if value.downcast_object_ref::<When>().is_some() {
        return "a date".into();
    }
    match value.kind() {
        ValueKind::String => "a string".into(),
        ValueKind::Map => "a map".into(),
        ValueKind::Seq => "a list".into(),
        ValueKind::Number => "a number".into(),
        ValueKind::None => "`None`".into(),
        ValueKind::Undefined => "an undefined value".into(),
        _ => format!("`{value}`"),
    }
}

/// `{{ dag }}` / `{{ task }}`: a repr (`<DAG: etl>`) and attributes.
#[derive(Debug)]
struct Attributes {
    repr: String,
    attrs: serde_json::Value,
}

impl Attributes {
    fn names(&self) -> Vec<String> {
        self.attrs.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}

impl Object for Attributes {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.attrs.get(key.as_str()?).map(json_value)
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repr)
    }
}

/// Names every template sees besides the context (minijinja's globals).
const GLOBALS: [&str; 5] = ["range", "dict", "debug", "namespace", "loop"];

/// The context as name → value: Airflow 2.10's `get_template_context`.
fn context_values(ctx: &TemplateContext) -> BTreeMap<&'static str, Value> {
    let date = |at: DateTime<Utc>| When::value(at);
    let maybe = |at: Option<DateTime<Utc>>| at.map(When::value).unwrap_or(Value::from(()));
    let day = |at: Option<DateTime<Utc>>, format: &str| {
        at.map(|a| Value::from(a.format(format).to_string())).unwrap_or(Value::from(()))
    };
    let logical = When::utc(ctx.logical_date);
    let ds = ctx.logical_date.format("%Y-%m-%d").to_string();
    let ds_nodash = ds.replace('-', "");
    let ts = logical.isoformat("T");
    let shifted = |days: i64| ctx.logical_date.checked_add_signed(chrono::TimeDelta::days(days));
    let (yesterday, tomorrow) = (shifted(-1), shifted(1));
    let ti = Value::from_object(TaskInstanceObject {
        dag_id: ctx.dag_id.clone(),
        task_id: ctx.task_id.clone(),
        run_id: ctx.run_id.clone(),
        try_number: ctx.try_number,
        max_tries: ctx.max_tries,
        hostname: ctx.hostname.clone(),
        task: Value::from_object(Attributes { repr: ctx.task.0.clone(), attrs: ctx.task.1.clone() }),
        xcoms: ctx.xcoms.clone(),
        pushes: ctx.pushes.clone(),
        max_xcom_bytes: ctx.max_xcom_bytes,
    });
    let variables = Arc::new(ctx.variables.clone());
    let var = BTreeMap::from([
        ("value", Value::from_object(VarAccessor { variables: variables.clone(), json: false })),
        ("json", Value::from_object(VarAccessor { variables, json: true })),
    ]);
    let macros = BTreeMap::from([
        ("ds_add", Value::from_function(ds_add)),
        ("ds_format", Value::from_function(ds_format)),
        ("datetime", Value::from_object(DatetimeClass)),
        ("timedelta", Value::from_object(accessors::TimedeltaClass)),
        ("random", Value::from_object(RandomModule)),
        ("time", Value::from_object(TimeModule)),
        ("uuid", Value::from_object(UuidModule)),
    ]);
    let prev = ctx.prev_success.as_ref();
    let mut params: serde_json::Map<String, serde_json::Value> =
        ctx.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    params.sort_keys();
    BTreeMap::from([
        ("ds", Value::from(ds.clone())),
        ("ds_nodash", Value::from(ds_nodash.clone())),
        ("ts", Value::from(ts.clone())),
        ("ts_nodash", Value::from(ctx.logical_date.format("%Y%m%dT%H%M%S").to_string())),
        ("ts_nodash_with_tz", Value::from(ts.replace(['-', ':'], ""))),
        ("logical_date", date(ctx.logical_date)),
        ("execution_date", date(ctx.logical_date)),
        ("data_interval_start", date(ctx.data_interval_start)),
        ("data_interval_end", date(ctx.data_interval_end)),
        ("prev_execution_date", maybe(ctx.prev_logical_date)),
        ("prev_ds", day(ctx.prev_logical_date, "%Y-%m-%d")),
        ("prev_ds_nodash", day(ctx.prev_logical_date, "%Y%m%d")),
        ("next_execution_date", maybe(ctx.next_logical_date)),
        ("next_ds", day(ctx.next_logical_date, "%Y-%m-%d")),
        ("next_ds_nodash", day(ctx.next_logical_date, "%Y%m%d")),
        ("yesterday_ds", day(yesterday, "%Y-%m-%d")),
        ("yesterday_ds_nodash", day(yesterday, "%Y%m%d")),
        ("tomorrow_ds", day(tomorrow, "%Y-%m-%d")),
        ("tomorrow_ds_nodash", day(tomorrow, "%Y%m%d")),
        ("prev_data_interval_start_success", maybe(prev.map(|p| p.data_interval_start))),
        ("prev_data_interval_end_success", maybe(prev.map(|p| p.data_interval_end))),
        ("prev_start_date_success", maybe(prev.and_then(|p| p.start_date))),
        ("prev_end_date_success", maybe(prev.and_then(|p| p.end_date))),
        ("prev_execution_date_success", maybe(prev.map(|p| p.logical_date))),
        ("task_instance_key_str", Value::from(format!("{}__{}__{ds_nodash}", ctx.dag_id, ctx.task_id))),
        ("run_id", Value::from(ctx.run_id.clone())),
        (
            "dag_run",
            Value::from_object(DagRunObject {
                dag_id: ctx.dag_id.clone(),
                run_id: ctx.run_id.clone(),
                run_type: ctx.run_type.clone(),
                logical_date: logical,
                data_interval_start: When::utc(ctx.data_interval_start),
                data_interval_end: When::utc(ctx.data_interval_end),
                conf: json_value(&ctx.conf),
            }),
        ),
        ("dag", Value::from_object(Attributes { repr: ctx.dag.0.clone(), attrs: ctx.dag.1.clone() })),
        ("task", Value::from_object(Attributes { repr: ctx.task.0.clone(), attrs: ctx.task.1.clone() })),
        ("ti", ti.clone()),
        ("task_instance", ti),
        ("params", json_value(&serde_json::Value::Object(params))),
        ("var", Value::from(var)),
        ("conn", Value::from_object(ConnAccessor::new(&ctx.connections))),
        ("macros", Value::from(macros)),
        ("inlets", Value::from(Vec::<Value>::new())),
        ("outlets", Value::from(Vec::<Value>::new())),
        ("expanded_ti_count", Value::from(())),
        ("map_index_template", Value::from(())),
        ("templates_dict", Value::from(())),
        ("test_mode", Value::from(false)),
    ])
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_formatter(python_formatter);
    env.set_unknown_method_callback(python_methods);
    env.add_filter("shell_quote", shell_quote);
    env.add_filter("ds", dates::filter_ds);
    env.add_filter("ds_nodash", dates::filter_ds_nodash);
    env.add_filter("ts", dates::filter_ts);
    env.add_filter("ts_nodash", dates::filter_ts_nodash);
    env.add_filter("ts_nodash_with_tz", dates::filter_ts_nodash_with_tz);
    env
}

/// Renders one templated field.
pub fn render(field: &str, template: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    if !is_template(template) {
        return Ok(template.to_string());
    }
    let env = environment();
    let fail = |e: minijinja::Error, reason: Option<String>| TemplateError {
        field: field.to_string(),
        line: e.line(),
        reason: reason.unwrap_or_else(|| e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string())),
    };
    let tmpl = env.template_from_named_str(field, template).map_err(|e| fail(e, None))?;
    let values = context_values(ctx);
    match tmpl.render(Value::from(values.clone())) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == ErrorKind::UndefinedError => {
            let why = explain_undefined(&tmpl, &values);
            Err(fail(e, why))
        }
        Err(e) if e.kind() == ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.contains("operator")) => {
            let hint = " (dates do not add with `+`/`-`: write `logical_date.add(days=1)` or `.subtract(hours=2)`, or `macros.ds_add(ds, 1)`)";
            let reason = e.detail().map(|d| format!("{d}{hint}"));
            Err(fail(e, reason))
        }
        Err(e) => Err(fail(e, None)),
    }
}

/// Which name of the template is undefined, and what was probably meant: "`dss` is undefined —
/// did you mean `ds`?", "`dag_run.confx` is undefined — did you mean `dag_run.conf`?".
fn explain_undefined(tmpl: &Template<'_, '_>, values: &BTreeMap<&'static str, Value>) -> Option<String> {
    let mut paths: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
    paths.sort();
    for path in &paths {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let Some(mut value) = values.get(first).cloned() else {
            if GLOBALS.contains(&first) {
                continue;
            }
            let known: Vec<&str> = values.keys().copied().collect();
            return Some(match crate::model::suggest::nearest(first, &known) {
                Some(k) => format!("`{first}` is undefined — did you mean `{k}`?"),
                None => format!("`{first}` is undefined"),
            });
        };
        let mut walked = first.to_string();
        for part in parts {
            match value.get_attr(part).ok().filter(|v| !v.is_undefined()) {
                Some(next) => {
                    value = next;
                    walked = format!("{walked}.{part}");
                }
                None => {
                    if let Some(missing) = missing_attribute(&value, &walked, part) {
                        return Some(missing);
                    }
                    break;
                }
            }
        }
    }
    None
}

/// `walked.part` is not there: why, or `None` when `part` is a method (called, not looked up).
fn missing_attribute(parent: &Value, walked: &str, part: &str) -> Option<String> {
    if let Some(var) = parent.downcast_object_ref::<VarAccessor>() {
        return (part != "get").then(|| format!("`{walked}.{part}` is undefined: {}", var.explain(part)));
    }
    if let Some(conn) = parent.downcast_object_ref::<ConnAccessor>() {
        return (part != "get").then(|| format!("`{walked}.{part}` is undefined: {}", conn.explain(part)));
    }
    if let Some(c) = parent.downcast_object_ref::<Connection>()
        && part == "extra_dejson"
    {
        return Some(format!("connection `{}`: its extra is not JSON", c.conn_id));
    }
    let known = attribute_names(parent);
    let is_method = |name: &str| {
        (parent.kind() == ValueKind::Map && MAP_METHODS.contains(&name))
            || (parent.kind() == ValueKind::String && STRING_METHODS.contains(&name))
            || (parent.as_object().is_some() && known.iter().any(|k| k == name))
    };
    if is_method(part) {
        return None;
    }
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    Some(match crate::model::suggest::nearest(part, &refs) {
        Some(k) => format!("`{walked}.{part}` is undefined — did you mean `{walked}.{k}`?"),
        None if parent.kind() == ValueKind::Map && !known.is_empty() && known.len() <= 20 => {
            let keys: Vec<&str> = refs.iter().copied().filter(|k| !MAP_METHODS.contains(k)).collect();
            format!("`{walked}.{part}` is undefined (`{walked}` has {})", list_or_nothing(&keys))
        }
        None => format!("`{walked}.{part}` is undefined"),
    })
}

fn list_or_nothing(keys: &[&str]) -> String {
    if keys.is_empty() {
        "no keys".into()
    } else {
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ctx() -> TemplateContext {
        let at = Utc.with_ymd_and_hms(2024, 3, 9, 6, 30, 0).unwrap();
        let day = chrono::TimeDelta::days(1);
        TemplateContext {
            dag_id: "etl".into(),
            task_id: "load".into(),
            run_id: "scheduled__2024-03-09T06:30:00+00:00".into(),
            run_type: "scheduled".into(),
            logical_date: at,
            data_interval_start: at,
            data_interval_end: at + day,
            prev_logical_date: Some(at - day),
            next_logical_date: Some(at + day),
            prev_success: Some(PrevSuccess {
                logical_date: at - day - day,
                data_interval_start: at - day - day,
                data_interval_end: at - day,
                start_date: Some(Utc.with_ymd_and_hms(2024, 3, 8, 6, 31, 2).unwrap()),
                end_date: Some(Utc.with_ymd_and_hms(2024, 3, 8, 6, 35, 0).unwrap()),
            }),
            try_number: 2,
            max_tries: 3,
            hostname: "box1".into(),
            params: BTreeMap::from([("region".to_string(), serde_json::json!("eu"))]),
            conf: serde_json::json!({ "x": "a", "n": 3 }),
            variables: BTreeMap::from([
                ("bucket".to_string(), "s3://b".to_string()),
                ("cfg".to_string(), r#"{"k": [1, 2], "name": "n"}"#.to_string()),
            ]),
            connections: BTreeMap::from([
                ("db".to_string(), "postgresql://us%40er:p%40ss@DB.Example.com:5433/sales?sslmode=require".to_string()),
                ("bad".to_string(), "mysql://root:hunter2@host:99999/x".to_string()),
            ]),
            xcoms: vec![
                ("extract".into(), "return_value".into(), serde_json::json!("42")),
                ("extract".into(), "rows".into(), serde_json::json!(7)),
                ("other".into(), "return_value".into(), serde_json::json!("newest")),
            ],
            dag: ("<DAG: etl>".into(), serde_json::json!({ "dag_id": "etl", "owner": "luffy" })),
            task: ("<Task(BashOperator): load>".into(), serde_json::json!({ "task_id": "load", "owner": "zoro" })),
            max_xcom_bytes: 1 << 20,
            ..TemplateContext::default()
        }
    }

    fn r(template: &str) -> String {
        render("f", template, &ctx()).unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    fn err(template: &str) -> String {
        render("f", template, &ctx()).map(|ok| panic!("{template} rendered {ok:?}")).unwrap_err().to_string()
    }

    #[test]
    fn date_strings_follow_airflow() {
        assert_eq!(r("{{ ds }} {{ ds_nodash }} {{ ts }}"), "2024-03-09 20240309 2024-03-09T06:30:00+00:00");
        assert_eq!(r("{{ ts_nodash }} {{ ts_nodash_with_tz }}"), "20240309T063000 20240309T063000+0000");
        assert_eq!(
            r("{{ prev_ds }} {{ prev_ds_nodash }} {{ next_ds }} {{ next_ds_nodash }}"),
            "2024-03-08 20240308 2024-03-10 20240310"
        );
        assert_eq!(
            r("{{ yesterday_ds }} {{ yesterday_ds_nodash }} {{ tomorrow_ds }} {{ tomorrow_ds_nodash }}"),
            "2024-03-08 20240308 2024-03-10 20240310"
        );
        assert_eq!(
            r("{{ task_instance_key_str }} {{ run_id }}"),
            "etl__load__20240309 scheduled__2024-03-09T06:30:00+00:00"
        );
        // Microseconds appear when there are some, as Python's isoformat.
        let mut c = ctx();
        c.logical_date = Utc.with_ymd_and_hms(2024, 3, 9, 6, 30, 0).unwrap() + chrono::TimeDelta::microseconds(1234);
        assert_eq!(
            render("f", "{{ ts }}|{{ ts_nodash }}", &c).unwrap(),
            "2024-03-09T06:30:00.001234+00:00|20240309T063000"
        );
    }

    #[test]
    fn dates_are_objects() {
        assert_eq!(r("{{ logical_date }}"), "2024-03-09T06:30:00+00:00");
        assert_eq!(
            r("{{ execution_date }} {{ data_interval_end }}"),
            "2024-03-09T06:30:00+00:00 2024-03-10T06:30:00+00:00"
        );
        assert_eq!(
            r("{{ logical_date.year }}-{{ logical_date.month }}-{{ logical_date.day }} {{ logical_date.hour }}"),
            "2024-3-9 6"
        );
        assert_eq!(r("{{ logical_date.strftime('%Y/%m/%d %H:%M %f') }}"), "2024/03/09 06:30 000000");
        assert_eq!(
            r("{{ logical_date.isoformat() }} {{ logical_date.isoformat(' ') }}"),
            "2024-03-09T06:30:00+00:00 2024-03-09 06:30:00+00:00"
        );
        assert_eq!(r("{{ logical_date.in_timezone('Asia/Shanghai') }}"), "2024-03-09T14:30:00+08:00");
        assert_eq!(r("{{ logical_date.in_timezone('Asia/Shanghai').strftime('%H %Z') }}"), "14 CST");
        assert_eq!(r("{{ logical_date.add(days=1) }}"), "2024-03-10T06:30:00+00:00");
        assert_eq!(r("{{ logical_date.subtract(months=1, hours=1) }}"), "2024-02-09T05:30:00+00:00");
        assert_eq!(r("{{ logical_date.add(days=1).strftime('%Y%m%d') }}"), "20240310");
        assert_eq!(r("{{ logical_date.date() }} {{ logical_date.date().isoformat() }}"), "2024-03-09 2024-03-09");
        assert_eq!(
            r("{{ logical_date.start_of('month') }} {{ logical_date.end_of('day').hour }}"),
            "2024-03-01T00:00:00+00:00 23"
        );
        assert_eq!(r("{{ logical_date.replace(day=1, hour=0) }}"), "2024-03-01T00:30:00+00:00");
        assert_eq!(
            r("{{ logical_date.weekday() }} {{ logical_date.isoweekday() }} {{ logical_date.int_timestamp }}"),
            "5 6 1709965800"
        );
        assert_eq!(
            r("{{ logical_date.to_date_string() }} {{ logical_date.to_datetime_string() }}"),
            "2024-03-09 2024-03-09 06:30:00"
        );
        assert_eq!(
            r("{{ logical_date | ds }} {{ data_interval_end | ts_nodash }} {{ logical_date | ts_nodash_with_tz }}"),
            "2024-03-09 20240310T063000 20240309T063000+0000"
        );
        assert_eq!(r("{{ data_interval_end > logical_date }} {{ logical_date < prev_execution_date }}"), "True False");
        assert_eq!(
            r("{{ prev_execution_date }} {{ next_execution_date }}"),
            "2024-03-08T06:30:00+00:00 2024-03-10T06:30:00+00:00"
        );
        // DST: a calendar day in Europe/Paris across the spring change is 23 hours.
        assert_eq!(
            r("{{ macros.datetime(2024, 3, 30, 12, tzinfo='Europe/Paris').add(days=1) }}"),
            "2024-03-31T12:00:00+02:00"
        );
    }

    #[test]
    fn previous_successful_run() {
        assert_eq!(
            r("{{ prev_data_interval_start_success }} {{ prev_data_interval_end_success }}"),
            "2024-03-07T06:30:00+00:00 2024-03-08T06:30:00+00:00"
        );
        assert_eq!(
            r("{{ prev_start_date_success }} {{ prev_end_date_success }} {{ prev_execution_date_success | ds }}"),
            "2024-03-08T06:31:02+00:00 2024-03-08T06:35:00+00:00 2024-03-07"
        );
        let mut first = ctx();
        first.prev_success = None;
        first.prev_logical_date = None;
        first.next_logical_date = None;
        let none = "{{ prev_data_interval_start_success }} {{ prev_start_date_success }} {{ prev_ds }} {{ next_ds }} {{ prev_execution_date }}";
        assert_eq!(render("f", none, &first).unwrap(), "None None None None None");
        assert_eq!(render("f", "{{ prev_start_date_success is none }}", &first).unwrap(), "True");
    }

    #[test]
    fn needs_reads_only_what_templates_use() {
        assert_eq!(needs(["echo {{ ds }}", "plain"]), Needs::default());
        assert_eq!(needs(["{{ ti.try_number }}"]), Needs::default());
        assert!(needs(["{{ ti.xcom_pull('a') }}"]).xcoms);
        assert!(needs(["{{ task_instance.xcom_pull(task_ids='a') }}"]).xcoms);
        assert!(needs(["{% set t = ti %}{{ t.xcom_pull('a') }}"]).xcoms);
        assert_eq!(needs(["{{ prev_start_date_success }}"]), Needs { xcoms: false, prev_success: true });
        assert!(needs(["x", "{{ prev_data_interval_end_success | ds }}"]).prev_success);
        assert_eq!(needs(["{{ ds "]), Needs::default());
        assert!(needs(["{{ [ti][0].xcom_pull('a') }}"]).xcoms);
        assert!(needs(["{% macro f(t) %}{{ t.xcom_pull('a') }}{% endmacro %}{{ f(task_instance) }}"]).xcoms);
    }

    #[test]
    fn dag_run_and_task_instance() {
        assert_eq!(
            r("{{ dag_run.run_id }} {{ dag_run.run_type }} {{ dag_run.external_trigger }}"),
            "scheduled__2024-03-09T06:30:00+00:00 scheduled False"
        );
        assert_eq!(
            r(
                "{{ dag_run.logical_date | ds }} {{ dag_run.data_interval_start.day }} {{ dag_run.data_interval_end.day }}"
            ),
            "2024-03-09 9 10"
        );
        assert_eq!(
            r("{{ dag_run.conf.x }} {{ dag_run.conf.get('x', 1) }} {{ dag_run.conf.get('missing', 1) }}"),
            "a a 1"
        );
        assert_eq!(r("{% for k, v in dag_run.conf.items() %}{{ k }}={{ v }};{% endfor %}"), "n=3;x=a;");
        assert_eq!(
            r("{{ dag_run }}"),
            "<DagRun etl @ 2024-03-09 06:30:00+00:00: scheduled__2024-03-09T06:30:00+00:00, state:running, externally triggered: False>"
        );
        assert_eq!(
            r("{{ ti.try_number }} {{ task_instance.max_tries }} {{ ti.hostname }} {{ ti.task_id }} {{ ti.dag_id }}"),
            "2 3 box1 load etl"
        );
        assert_eq!(r("{{ ti }}"), "<TaskInstance: etl.load scheduled__2024-03-09T06:30:00+00:00 [running]>");
        assert_eq!(
            r("{{ dag }} {{ dag.owner }} {{ task }} {{ task.owner }} {{ ti.task.task_id }}"),
            "<DAG: etl> luffy <Task(BashOperator): load> zoro load"
        );
        assert_eq!(r("{{ params.region }} {{ params.get('nope', 'd') }}"), "eu d");
    }

    #[test]
    fn xcom_pull_as_airflow() {
        assert_eq!(r("{{ ti.xcom_pull(task_ids='extract') }}"), "42");
        assert_eq!(r("{{ ti.xcom_pull('extract') }}"), "42");
        assert_eq!(r("{{ ti.xcom_pull(task_ids='extract', key='rows') }}"), "7");
        assert_eq!(r("{{ ti.xcom_pull('extract', None, 'rows') }}"), "7");
        assert_eq!(r("{{ ti.xcom_pull(task_ids=['extract', 'missing', 'other']) }}"), "['42', 'newest']");
        // No task filter: the newest XCom of the key, as Airflow 2.10.
        assert_eq!(r("{{ ti.xcom_pull() }}"), "newest");
        assert_eq!(
            r("{{ ti.xcom_pull(task_ids='missing') }} {{ ti.xcom_pull(task_ids='missing', default='d') }}"),
            "None d"
        );
        assert!(err("{{ ti.xcom_pull(task_ids='a', dag_id='other') }}").contains("another DAG (`other`)"));
        assert!(err("{{ ti.xcom_pull(task_ids='a', include_prior_dates=True) }}").contains("include_prior_dates"));
    }

    #[test]
    fn xcom_push_records_and_renders_nothing() {
        let c = ctx();
        let out = render(
            "f",
            "a{{ ti.xcom_push(key='k', value={'n': 1}) }}b{{ task_instance.xcom_push('k2', [1, 'x']) }}",
            &c,
        )
        .unwrap();
        assert_eq!(out, "ab");
        render("f", "{{ ti.xcom_push(key='k', value=2) }}", &c).unwrap();
        assert_eq!(
            c.pushes.take(),
            vec![("k2".to_string(), serde_json::json!([1, "x"])), ("k".to_string(), serde_json::json!(2))]
        );
        assert!(c.pushes.take().is_empty());
        render("f", "{{ ti.xcom_push(key='when', value=logical_date) }}", &c).unwrap();
        assert_eq!(c.pushes.take(), vec![("when".to_string(), serde_json::json!("2024-03-09T06:30:00+00:00"))]);
        let mut small = ctx();
        small.max_xcom_bytes = 8;
        let e = render("f", "{{ ti.xcom_push(key='k', value='0123456789') }}", &small).unwrap_err().to_string();
        assert!(e.contains("XCom `k` is 12 bytes, over `core.max_xcom_bytes` (8)"), "{e}");
        assert!(err("{{ ti.xcom_push(key='', value=1) }}").contains("1 to 512 characters"));
        assert!(err("{{ ti.xcom_push(value=1) }}").contains("needs `key=`"));
    }

    #[test]
    fn variables_value_and_json() {
        assert_eq!(
            r("{{ var.value.bucket }} {{ var.value.get('bucket') }} {{ var.value.get('nope', 'fallback') }}"),
            "s3://b s3://b fallback"
        );
        assert_eq!(
            r(
                "{{ var.json.cfg.k[1] }} {{ var.json.cfg.name }} {{ var.json.get('cfg').name }} {{ var.json.get('nope', {'a': 1}).a }}"
            ),
            "2 n n 1"
        );
        assert_eq!(r("{{ var.value['bucket'] }}"), "s3://b");
        let e = err("{{ var.value.buckt }}");
        assert!(
            e.contains("`var.value.buckt` is undefined: variable `buckt` is not set — did you mean `bucket`?"),
            "{e}"
        );
        assert!(err("{{ var.value.get('nope') }}").contains("variable `nope` is not set"));
        let e = err("{{ var.json.bucket }}");
        assert!(e.contains("variable `bucket` is not JSON"), "{e}");
    }

    #[test]
    fn connections_parse_as_airflow() {
        assert_eq!(
            r(
                "{{ conn.db.conn_type }}|{{ conn.db.host }}|{{ conn.db.login }}|{{ conn.db.password }}|{{ conn.db.port }}|{{ conn.db.schema }}"
            ),
            "postgres|db.example.com|us@er|p@ss|5433|sales"
        );
        assert_eq!(
            r("{{ conn.db.extra_dejson.sslmode }} {{ conn.db.extra_dejson.get('x', 'y') }} {{ conn.db }}"),
            "require y db"
        );
        assert_eq!(r("{{ conn.get('db').port }} {{ conn.get('nope', 'dflt') }} {{ conn.db.conn_id }}"), "5433 dflt db");
        let parse = |uri: &str| Connection::parse("c", uri);
        let c = parse("google-cloud-platform://?__extra__=%7B%22project%22%3A+%22p%22%7D").unwrap();
        assert_eq!(
            (c.conn_type.as_str(), c.host.as_str(), c.extra.as_deref()),
            ("google_cloud_platform", "", Some(r#"{"project": "p"}"#))
        );
        let c = parse("http://https://user@api.example.com:8443/v1?a=1&b=&a=2").unwrap();
        assert_eq!(c.host, "https://api.example.com");
        assert_eq!(
            (c.login.as_deref(), c.password.as_deref(), c.port, c.schema.as_str()),
            (Some("user"), None, Some(8443), "v1")
        );
        assert!(parse("http://user@https://api.example.com").is_err(), "a login before the host's protocol");
        assert_eq!(c.extra.as_deref(), Some(r#"{"a":"2","b":""}"#));
        let c = parse("mysql://root@[::1]:3306").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.login.as_deref()), ("::1", Some(3306), Some("root")));
        let c = parse("sqlite://%2Ftmp%2Fdb.sqlite").unwrap();
        assert_eq!(c.host, "/tmp/db.sqlite");
        for bad in [
            "no-scheme",
            "a://b://c://d",
            "1x://h",
            "postgres://u:hunter2@h:99999/db",
            "postgres://u:hunter2@h:port/db",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("connection `c`: `[connections.c] uri` is not valid: "), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn connection_errors_never_show_the_password() {
        for whole in
            ["{{ conn }}", "{{ conn | pprint }}", "{{ conn.db | tojson }}", "{{ conn.db | pprint }}", "{{ debug() }}"]
        {
            assert!(!r(whole).contains("p@ss"), "{whole}");
        }
        let e = err("{{ conn.bad.host }}");
        assert!(e.contains("connection `bad`") && e.contains("port"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("{{ conn.get('bad') }}");
        assert!(!e.contains("hunter2"), "{e}");
        let mut c = ctx();
        c.connections.insert("x".into(), "http://h?__extra__=notjson".into());
        let e = render("f", "{{ conn.x.extra_dejson.a }}", &c).unwrap_err().to_string();
        assert!(e.contains("connection `x`: its extra is not JSON"), "{e}");
        let e = render("f", "{% for t in ['a'] %}{{ t.nope }}{% endfor %}", &c).unwrap_err().to_string();
        assert!(e.starts_with("template error in `f` at line 1: "), "{e}");
        let e = err("{{ dag_run.conf.zz }}");
        assert!(e.contains("`dag_run.conf.zz` is undefined (`dag_run.conf` has `n`, `x`)"), "{e}");
        let e = err("{{ conn.dbb.host }}");
        assert!(e.contains("connection `dbb` is not defined — did you mean `db`?"), "{e}");
    }

    #[test]
    fn macros() {
        assert_eq!(r("{{ macros.ds_add(ds, 1) }} {{ macros.ds_add('2024-03-01', -1) }}"), "2024-03-10 2024-02-29");
        assert_eq!(
            r("{{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m/%Y') }} {{ macros.ds_format('20240309', '%Y%m%d', '%H') }}"),
            "09/03/2024 00"
        );
        assert_eq!(
            r("{{ macros.datetime(2024, 1, 31) }} {{ macros.datetime(2024, 1, 31, 6, 5).isoformat() }}"),
            "2024-01-31 00:00:00 2024-01-31T06:05:00"
        );
        assert_eq!(r("{{ macros.datetime.strptime('2024-01-31', '%Y-%m-%d').add(months=1) | ds }}"), "2024-02-29");
        assert_eq!(r("{{ macros.datetime.fromisoformat('2024-01-31T06:00:00+00:00') }}"), "2024-01-31T06:00:00+00:00");
        assert_eq!(
            r("{{ macros.timedelta(days=1, hours=2) }} {{ macros.timedelta(minutes=5) }} {{ macros.timedelta(-1) }}"),
            "1 day, 2:00:00 0:05:00 -1 day, 0:00:00"
        );
        assert_eq!(
            r(
                "{{ macros.timedelta(hours=36).days }} {{ macros.timedelta(hours=36).seconds }} {{ macros.timedelta(minutes=1).total_seconds() }}"
            ),
            "1 43200 60.0"
        );
        assert_eq!(r("{{ macros.datetime }} {{ macros.time }}"), "<class 'datetime.datetime'> <module 'time'>");
        let random = r("{{ macros.random() }}").parse::<f64>().unwrap();
        assert!((0.0..1.0).contains(&random));
        let n = r("{{ macros.random.randint(3, 5) }}").parse::<i64>().unwrap();
        assert!((3..=5).contains(&n));
        assert!(r("{{ macros.time.time() }}").parse::<f64>().unwrap() > 1.7e9);
        let uuid = r("{{ macros.uuid.uuid4() }}");
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"), "{uuid}");
        assert_eq!(r("{{ macros.uuid.uuid4().hex | length }}"), "32");
        assert_ne!(r("{{ macros.uuid.uuid4() }}"), uuid);
    }

    #[test]
    fn python_methods_on_strings_maps_lists() {
        assert_eq!(
            r("{{ ds.replace('-', '/') }} {{ 'a,b'.split(',') }} {{ params.region.upper() }} {{ 'X'.lower() }}"),
            "2024/03/09 ['a', 'b'] EU x"
        );
        assert_eq!(r("{{ params.keys() | list }} {{ ds.startswith('2024') }}"), "['region'] True");
        let e = err("{{ ds.uper() }}");
        assert!(e.contains("a string has no method `uper` — did you mean `upper`?"), "{e}");
        let e = err("{{ logical_date.strftme('%Y') }}");
        assert!(e.contains("a date has no method `strftme` — did you mean `strftime`?"), "{e}");
    }

    #[test]
    fn undefined_names_say_which_and_what_was_meant() {
        let e = err("echo ok\necho {{ dss }}");
        assert_eq!(e, "template error in `f` at line 2: `dss` is undefined — did you mean `ds`?");
        assert!(err("{{ execution_dat }}").contains("`execution_dat` is undefined — did you mean `execution_date`?"));
        assert!(err("{{ dag_run.confx }}").contains("`dag_run.confx` is undefined — did you mean `dag_run.conf`?"));
        assert!(err("{{ params.regin }}").contains("`params.regin` is undefined — did you mean `params.region`?"));
        assert!(err("{{ params.zzz }}").contains("`params.zzz` is undefined (`params` has `region`)"));
        assert!(
            err("{{ logical_date.yeer }}")
                .contains("`logical_date.yeer` is undefined — did you mean `logical_date.year`?")
        );
        assert_eq!(err("{{ qqqqqqq }}"), "template error in `f` at line 1: `qqqqqqq` is undefined");
        // A name the template defines itself is not blamed.
        let e = err("{% set a = 1 %}{{ a }}{{ run_di }}");
        assert!(e.contains("`run_di` is undefined — did you mean `run_id`?"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let err = render("bash_command", "echo ok\necho {{ dss }}", &ctx()).unwrap_err();
        assert_eq!(err.field, "bash_command");
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("template error in `bash_command` at line 2:"), "{err}");
        let syntax = render("bash_command", "{{ ds ", &ctx()).unwrap_err();
        assert_eq!(syntax.line, Some(1));
        let plus = render("f", "{{ logical_date + macros.timedelta(days=1) }}", &ctx()).unwrap_err().to_string();
        assert!(plus.contains("logical_date.add(days=1)"), "{plus}");
    }

    #[test]
    fn hostile_templates_are_errors_not_panics_or_hangs() {
        for bad in [
            "{{ macros.ds_add(ds, 1e9) }}",
            "{{ macros.ds_add(ds, 1000000000) }}",
            "{{ macros.ds_add(ds, -9223372036854775807) }}",
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%Q') }}",
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%') }}",
            "{{ logical_date.add(years=100000) }}",
            "{{ logical_date.add(days=1e300) }}",
            "{{ logical_date.subtract(years=3000) }}",
            "{{ logical_date.add(months=-9223372036854775807) }}",
            "{{ logical_date.add(days='x') }}",
            "{{ logical_date.add(1) }}",
            "{{ logical_date.add(dayz=1) }}",
            "{{ logical_date.replace(month=13) }}",
            "{{ logical_date.replace(year=-5) }}",
            "{{ logical_date.in_timezone('Mars/Olympus') }}",
            "{{ logical_date.strftime('%') }}",
            "{{ logical_date.start_of('fortnight') }}",
            "{{ macros.datetime(2024, 2, 30) }}",
            "{{ macros.datetime(99999, 1, 1) }}",
            "{{ macros.datetime.strptime('x', '%Y') }}",
            "{{ macros.datetime.fromtimestamp(1e300) }}",
            "{{ macros.datetime.fromtimestamp(-1e11) }}",
            "{{ macros.timedelta(days=1e300) }}",
            "{{ macros.random.randint(5, 3) }}",
            "{{ macros.random.randint(-9223372036854775807, 9223372036854775807) }}",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        ] {
            let e = render("bash_command", bad, &ctx());
            if bad.contains("randint(-") {
                continue; // a valid, huge range
            }
            let e = e.map(|ok| panic!("{bad} rendered {ok}")).unwrap_err().to_string();
            assert!(e.starts_with("template error in `bash_command`"), "{bad}: {e}");
        }
        let tz = err("{{ logical_date.in_timezone('Asia/Shangai') }}");
        assert!(tz.contains("did you mean `Asia/Shanghai`?"), "{tz}");
    }

    #[test]
    fn shell_quote_makes_one_word() {
        let mut c = ctx();
        c.conf = serde_json::json!({ "x": "a'b; rm -rf / $(id)", "n": 3 });
        let out = render("f", "{{ dag_run.conf.x | shell_quote }} {{ dag_run.conf.n | shell_quote }}", &c).unwrap();
        assert_eq!(out, "'a'\\''b; rm -rf / $(id)' '3'");
        let o = std::process::Command::new("bash").arg("-c").arg(format!("printf '%s|' {out}")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "a'b; rm -rf / $(id)|3|");
    }

    #[test]
    fn airflow_extras_of_the_context() {
        assert_eq!(
            r("{{ inlets }} {{ outlets }} {{ expanded_ti_count }} {{ test_mode }} {{ templates_dict }}"),
            "[] [] None False None"
        );
    }
}
