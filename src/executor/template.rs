//! Jinja templates (minijinja) rendered with Airflow's context: `ds`, `ts`, `params`, `ti.xcom_pull`,
//! `var.value.NAME`, `conn.NAME`, `macros.ds_add`, ...

use chrono::{DateTime, NaiveDate, Utc};
use minijinja::value::{Kwargs, Object, Serde, Value, from_args};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a template can see. Built from plain data by the caller.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub try_number: u32,
    pub max_tries: u32,
    pub params: BTreeMap<String, serde_json::Value>,
    pub conf: serde_json::Value,
    pub variables: BTreeMap<String, String>,
    pub connections: BTreeMap<String, String>,
    /// XComs of the run: `(task_id, key, value)`.
    pub xcoms: Vec<(String, String, serde_json::Value)>,
}

/// A template that did not render: the field, the template's line, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template error in `{field}`{}: {reason}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub field: String,
    pub line: Option<usize>,
    pub reason: String,
}

#[derive(Debug)]
struct TaskInstanceObject {
    dag_id: String,
    task_id: String,
    run_id: String,
    try_number: u32,
    max_tries: u32,
    xcoms: Vec<(String, String, serde_json::Value)>,
}

impl TaskInstanceObject {
    fn pull(&self, task_id: &str, key: &str) -> Value {
        self.xcoms
            .iter()
            .find(|(t, k, _)| t == task_id && k == key)
            .map(|(_, _, v)| Value::from(Serde(v)))
            .unwrap_or(Value::from(()))
    }
}

impl Object for TaskInstanceObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "dag_id" => Value::from(self.dag_id.clone()),
            "task_id" => Value::from(self.task_id.clone()),
            "run_id" => Value::from(self.run_id.clone()),
            "try_number" => Value::from(self.try_number),
            "max_tries" => Value::from(self.max_tries),
            _ => return None,
        })
    }

    /// `ti.xcom_pull(task_ids='a')`, `ti.xcom_pull('a')`, `ti.xcom_pull(task_ids=['a','b'], key='k')`.
    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        if method != "xcom_pull" {
            return Err(minijinja::Error::new(ErrorKind::UnknownMethod, format!("`ti` has no method `{method}`")));
        }
        let (positional, kwargs): (Option<Value>, Kwargs) = from_args(args)?;
        let task_ids: Option<Value> = kwargs.get("task_ids")?;
        let key: Option<String> = kwargs.get("key")?;
        kwargs.assert_all_used()?;
        let key = key.unwrap_or_else(|| "return_value".into());
        let target = task_ids.or(positional).unwrap_or_else(|| Value::from(self.task_id.clone()));
        if let Some(one) = target.as_str() {
            return Ok(self.pull(one, &key));
        }
        let mut out = Vec::new();
        for id in target.try_iter()? {
            out.push(self.pull(id.as_str().unwrap_or_default(), &key));
        }
        Ok(Value::from(out))
    }
}

fn template_fail(reason: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, reason)
}

/// `macros.ds_add('2024-01-01', 5)`: checked, so a date past chrono's range is an error.
fn ds_add(ds: String, days: i64) -> Result<String, minijinja::Error> {
    let date = NaiveDate::parse_from_str(&ds, "%Y-%m-%d")
        .map_err(|_| template_fail(format!("`{ds}` is not a YYYY-MM-DD date")))?;
    chrono::TimeDelta::try_days(days)
        .and_then(|delta| date.checked_add_signed(delta))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| template_fail(format!("`macros.ds_add({ds}, {days})` is outside the supported dates")))
}

/// `macros.ds_format(ds, input, output)`: an output format the date cannot fill (`%H` of a date) or
/// a malformed one is an error, not a panic.
fn ds_format(ds: String, input: String, output: String) -> Result<String, minijinja::Error> {
    use std::fmt::Write as _;
    let date = NaiveDate::parse_from_str(&ds, &input)
        .map_err(|e| template_fail(format!("`{ds}` does not match `{input}`: {e}")))?;
    let items: Vec<chrono::format::Item<'_>> = chrono::format::StrftimeItems::new(&output).collect();
    if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(template_fail(format!("`{output}` is not a valid date format")));
    }
    let mut out = String::new();
    write!(out, "{}", date.format_with_items(items.into_iter()))
        .map_err(|_| template_fail(format!("`{output}` asks for fields a date does not have (use %Y, %m, %d, ...)")))?;
    Ok(out)
}

/// `{{ x | shell_quote }}`: POSIX single-quoting, so a value is one shell word whatever it holds.
fn shell_quote(value: Value) -> String {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Renders one templated field.
pub fn render(field: &str, template: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    if !template.contains("{{") && !template.contains("{%") && !template.contains("{#") {
        return Ok(template.to_string());
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("shell_quote", shell_quote);
    let fail = |e: minijinja::Error| TemplateError {
        field: field.to_string(),
        line: e.line(),
        reason: e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string()),
    };
    let ts = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let ds = ctx.logical_date.format("%Y-%m-%d").to_string();
    let ti = Value::from_object(TaskInstanceObject {
        dag_id: ctx.dag_id.clone(),
        task_id: ctx.task_id.clone(),
        run_id: ctx.run_id.clone(),
        try_number: ctx.try_number,
        max_tries: ctx.max_tries,
        xcoms: ctx.xcoms.clone(),
    });
    let mut macros = BTreeMap::new();
    macros.insert("ds_add", Value::from_function(ds_add));
    macros.insert("ds_format", Value::from_function(ds_format));
    let var = BTreeMap::from([("value", Value::from(Serde(&ctx.variables)))]);
    let context = minijinja::context! {
        ds => ds.clone(),
        ds_nodash => ds.replace('-', ""),
        ts => ts(&ctx.logical_date),
        ts_nodash => ctx.logical_date.format("%Y%m%dT%H%M%S").to_string(),
        logical_date => ts(&ctx.logical_date),
        execution_date => ts(&ctx.logical_date),
        data_interval_start => ts(&ctx.data_interval_start),
        data_interval_end => ts(&ctx.data_interval_end),
        run_id => ctx.run_id.clone(),
        dag => minijinja::context! { dag_id => ctx.dag_id.clone() },
        task => minijinja::context! { task_id => ctx.task_id.clone() },
        ti => ti.clone(),
        task_instance => ti,
        params => Value::from(Serde(&ctx.params)),
        dag_run => minijinja::context! { run_id => ctx.run_id.clone(), conf => Value::from(Serde(&ctx.conf)) },
        var => var,
        conn => Value::from(Serde(&ctx.connections)),
        macros => macros,
    };
    let tmpl = env.template_from_named_str(field, template).map_err(fail)?;
    tmpl.render(context).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ctx() -> TemplateContext {
        let at = Utc.with_ymd_and_hms(2024, 3, 9, 6, 30, 0).unwrap();
        TemplateContext {
            dag_id: "etl".into(),
            task_id: "load".into(),
            run_id: "manual__x".into(),
            logical_date: at,
            data_interval_start: at,
            data_interval_end: at + chrono::TimeDelta::days(1),
            try_number: 2,
            max_tries: 3,
            params: BTreeMap::from([("region".to_string(), serde_json::json!("eu"))]),
            variables: BTreeMap::from([("bucket".to_string(), "s3://b".to_string())]),
            xcoms: vec![("extract".into(), "return_value".into(), serde_json::json!("42"))],
            ..TemplateContext::default()
        }
    }

    #[test]
    fn renders_airflow_context() {
        let out = render(
            "bash_command",
            "{{ ds }} {{ ds_nodash }} {{ ts }} {{ params.region }} {{ var.value.bucket }} {{ ti.try_number }} {{ macros.ds_add(ds, 1) }} {{ dag.dag_id }}",
            &ctx(),
        )
        .unwrap();
        assert_eq!(out, "2024-03-09 20240309 2024-03-09T06:30:00+00:00 eu s3://b 2 2024-03-10 etl");
    }

    #[test]
    fn xcom_pull_by_keyword_or_position() {
        assert_eq!(render("f", "{{ ti.xcom_pull(task_ids='extract') }}", &ctx()).unwrap(), "42");
        assert_eq!(render("f", "{{ ti.xcom_pull('extract') }}", &ctx()).unwrap(), "42");
        assert_eq!(render("f", "{{ ti.xcom_pull(task_ids=['extract']) }}", &ctx()).unwrap(), "['42']");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let err = render("bash_command", "echo ok\necho {{ dss }}", &ctx()).unwrap_err();
        assert_eq!(err.field, "bash_command");
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("template error in `bash_command` at line 2:"), "{err}");
        let syntax = render("bash_command", "{{ ds ", &ctx()).unwrap_err();
        assert_eq!(syntax.line, Some(1));
    }

    #[test]
    fn macros_out_of_range_are_errors_not_panics() {
        for bad in [
            "{{ macros.ds_add(ds, 1e9) }}",
            "{{ macros.ds_add(ds, 1000000000) }}",
            "{{ macros.ds_add(ds, -9223372036854775807) }}",
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%H') }}",
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%Q') }}",
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%') }}",
        ] {
            let err = render("bash_command", bad, &ctx()).unwrap_err();
            assert!(err.to_string().starts_with("template error in `bash_command`"), "{bad}: {err}");
        }
        assert_eq!(render("f", "{{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m/%Y') }}", &ctx()).unwrap(), "09/03/2024");
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
}
