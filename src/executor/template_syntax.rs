//! Templated fields checked when a DAG file is parsed, not when the task runs: every field the
//! worker renders with Jinja (`bash_command`, `env` values, messages, endpoints, paths, ...) must
//! compile, so `dags check` catches a `{{ ds ` before a run does.

use crate::model::{Operator, SensorKind, TaskSpec};
use minijinja::Environment;

/// A templated field that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The field as a DAG author names it: `bash_command`, `env.PATH`, `headers.Authorization`.
    pub field: String,
    /// The line inside the template (1-based), when minijinja knows it.
    pub line: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template error in `{}`", self.field)?;
        if let Some(line) = self.line {
            write!(f, " at line {line} of the template")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Whether text is a template at all (the same test `template::render` makes before rendering).
fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Compiles one template: `Err((line, reason))` when it does not.
pub fn syntax(env: &Environment<'_>, template: &str) -> Result<(), (Option<usize>, String)> {
    if !is_template(template) {
        return Ok(());
    }
    env.template_from_str(template)
        .map(|_| ())
        .map_err(|e| (e.line(), e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string())))
}

/// The fields of a task the worker renders, with their text (Airflow's `template_fields`).
pub fn templated_fields(op: &Operator) -> Vec<(String, &str)> {
    let mut fields: Vec<(String, &str)> = Vec::new();
    match op {
        Operator::BashOperator { bash_command, env, cwd, .. } => {
            fields.push(("bash_command".to_string(), bash_command.as_str()));
            if let Some(cwd) = cwd {
                fields.push(("cwd".to_string(), cwd.as_str()));
            }
            for (k, v) in env {
                fields.push((format!("env.{k}"), v));
            }
        }
        Operator::EmailOperator(email) => {
            fields.push(("subject".to_string(), email.subject.as_str()));
            fields.push(("html_content".to_string(), email.html_content.as_str()));
            for (name, list) in [("to", &email.to), ("cc", &email.cc), ("bcc", &email.bcc), ("files", &email.files)] {
                for address in list {
                    fields.push((name.to_string(), address));
                }
            }
        }
        Operator::HttpOperator(http) => {
            fields.push(("endpoint".to_string(), http.endpoint.as_str()));
            if let Some(data) = &http.data {
                json_strings("data", data, &mut fields);
            }
            for (k, v) in &http.headers {
                fields.push((format!("headers.{k}"), v));
            }
        }
        Operator::DingdingOperator(d) => json_strings("message", &d.message, &mut fields),
        Operator::FeishuOperator(f) => json_strings("message", &f.message, &mut fields),
        Operator::WeComOperator(w) => fields.push(("message".to_string(), w.message.as_str())),
        Operator::SlackWebhookOperator(slack) => {
            fields.push(("message".to_string(), slack.message.as_str()));
            for (name, value) in [("channel", &slack.channel), ("username", &slack.username)] {
                if let Some(v) = value {
                    fields.push((name.to_string(), v.as_str()));
                }
            }
            for (name, value) in [("blocks", &slack.blocks), ("attachments", &slack.attachments)] {
                if let Some(v) = value {
                    json_strings(name, v, &mut fields);
                }
            }
        }
        Operator::TriggerDagRunOperator(trigger) => {
            fields.push(("trigger_dag_id".to_string(), trigger.trigger_dag_id.as_str()));
            if let Some(run_id) = &trigger.trigger_run_id {
                fields.push(("trigger_run_id".to_string(), run_id.as_str()));
            }
            if let Some(date) = &trigger.logical_date {
                fields.push(("logical_date".to_string(), date.as_str()));
            }
            json_strings("conf", &trigger.conf, &mut fields);
        }
        Operator::Sensor(sensor) => match &sensor.kind {
            SensorKind::File { filepath, .. } => fields.push(("filepath".to_string(), filepath.as_str())),
            SensorKind::Bash { bash_command } => fields.push(("bash_command".to_string(), bash_command.as_str())),
            SensorKind::Http { endpoint, headers, request_params, .. } => {
                fields.push(("endpoint".to_string(), endpoint.as_str()));
                for (k, v) in headers {
                    fields.push((format!("headers.{k}"), v));
                }
                if let Some(params) = request_params {
                    json_strings("request_params", params, &mut fields);
                }
            }
            SensorKind::ExternalTask { external_dag_id, external_task_ids, .. } => {
                fields.push(("external_dag_id".to_string(), external_dag_id.as_str()));
                for id in external_task_ids {
                    fields.push(("external_task_ids".to_string(), id.as_str()));
                }
            }
            SensorKind::DateTime { target_time } => fields.push(("target_time".to_string(), target_time.as_str())),
            SensorKind::TimeDelta { .. } => {}
        },
        Operator::PythonOperator(python) => {
            python.op_args.iter().enumerate().for_each(|(i, v)| json_strings(&format!("op_args[{i}]"), v, &mut fields));
            python.op_kwargs.iter().for_each(|(k, v)| json_strings(&format!("op_kwargs.{k}"), v, &mut fields));
            for (k, v) in python.templates_dict.iter().flatten() {
                json_strings(&format!("templates_dict.{k}"), v, &mut fields);
            }
        }
        Operator::EmptyOperator
        | Operator::LatestOnlyOperator
        | Operator::RhaiOperator { .. }
        | Operator::BranchOperator { .. }
        | Operator::ShortCircuitOperator { .. } => {}
    }
    fields
}

/// The strings of templated data (`data: #{ ... }`): each is a template, as Airflow renders a
/// dict's values.
fn json_strings<'a>(field: &str, value: &'a serde_json::Value, fields: &mut Vec<(String, &'a str)>) {
    match value {
        serde_json::Value::String(s) => fields.push((field.to_string(), s)),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, v)| json_strings(&format!("{field}[{i}]"), v, fields))
        }
        serde_json::Value::Object(map) => {
            map.iter().for_each(|(k, v)| json_strings(&format!("{field}.{k}"), v, fields))
        }
        _ => {}
    }
}

/// Template errors reported per DAG at most.
pub const MAX_ERRORS: usize = 50;

/// Every templated field of every task of `dag` that does not compile, with its task's id. The
/// template environment is only built when some field is a template.
pub fn check_dag(dag: &crate::model::DagSpec) -> Vec<(String, SyntaxError)> {
    let mut env: Option<Environment<'_>> = None;
    // Tasks made in a loop share their templates: each text is compiled once.
    let mut compiled: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for task in &dag.tasks {
        for (field, text) in templated_fields(&task.operator) {
            if !is_template(text) || compiled.contains(text) {
                continue;
            }
            let env = env.get_or_insert_with(Environment::new);
            // A broken text is reported for the first task that has it, at most `MAX_ERRORS` in all.
            compiled.insert(text);
            if let Err((line, reason)) = syntax(env, text)
                && errors.len() < MAX_ERRORS
            {
                errors.push((task.task_id.clone(), SyntaxError { field, line, reason }));
            }
        }
    }
    errors
}

/// Every templated field of `task` that does not compile.
pub fn check_task(env: &Environment<'_>, task: &TaskSpec) -> Vec<SyntaxError> {
    templated_fields(&task.operator)
        .into_iter()
        .filter_map(|(field, text)| syntax(env, text).err().map(|(line, reason)| SyntaxError { field, line, reason }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_expression_is_an_error_with_its_line() {
        let env = Environment::new();
        let (line, reason) = syntax(&env, "echo\n{{ ds ").unwrap_err();
        assert_eq!(line, Some(2));
        assert!(reason.contains("end of input"), "{reason}");
        assert_eq!(syntax(&env, "echo {{ ds }} {% if true %}x{% endif %}"), Ok(()));
        assert_eq!(syntax(&env, "no template at all { }"), Ok(()));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let env = Environment::new();
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5_000), ")".repeat(5_000));
        assert!(syntax(&env, &deep).is_err());
    }
}
