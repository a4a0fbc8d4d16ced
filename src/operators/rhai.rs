//! `RhaiOperator` (Airflow's `PythonOperator`): a closure of the DAG file run as the task.
//!
//! The closure gets as many of `ctx`, `op_args` (an array) and `op_kwargs` (a map) as it declares
//! parameters: `|ctx| ...`, `|ctx, args| ...`, `|ctx, args, kwargs| ...` (`||` gets none). String
//! values in `op_args`/`op_kwargs` are templates, as Airflow's. The closure's value is XCom
//! `return_value` (`()` pushes nothing, as Python's `None`); a `throw` or a runtime error fails the
//! try with the message and its place in the file (`boom.rhai:4:5`).

use super::closure::{self, context};
use super::{Outcome, Start, TaskRun, size};
use crate::executor::template::{TemplateContext, TemplateError, render};
use crate::model::Operator;
use crate::script::CallArg;
use std::sync::Arc;

pub fn templated(operator: &Operator) -> Vec<&str> {
    match operator {
        Operator::RhaiOperator { op_args, op_kwargs, .. } => {
            let mut texts = Vec::new();
            for v in op_args.iter().chain(op_kwargs.values()) {
                strings(v, &mut texts);
            }
            texts
        }
        _ => Vec::new(),
    }
}

/// Every string inside a JSON value (the templates of an operator's arguments).
pub(super) fn strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// `value` with each string rendered as a template.
pub fn render_json(
    field: &str,
    value: &serde_json::Value,
    ctx: &TemplateContext,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match value {
        serde_json::Value::String(s) if s.contains("{{") || s.contains("{%") => render(field, s, ctx)?.into(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| render_json(&format!("{field}[{i}]"), v, ctx))
            .collect::<Result<_, _>>()?,
        serde_json::Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), render_json(&format!("{field}.{k}"), v, ctx)?);
            }
            serde_json::Value::Object(out)
        }
        other => other.clone(),
    })
}

pub async fn start(run: Arc<TaskRun>) -> Start {
    let Operator::RhaiOperator { callable, op_args, op_kwargs } = &run.task.task().operator else {
        return Start::Done(Outcome::fail("not a RhaiOperator"));
    };
    let args = render_json("op_args", &serde_json::Value::Array(op_args.clone()), &run.ctx);
    let kwargs = op_kwargs.iter().map(|(k, v)| Ok((k.clone(), render_json(&format!("op_kwargs.{k}"), v, &run.ctx)?)));
    let (args, kwargs) = match (args, kwargs.collect::<Result<serde_json::Map<_, _>, TemplateError>>()) {
        (Ok(a), Ok(k)) => (a, serde_json::Value::Object(k)),
        (Err(e), _) | (_, Err(e)) => return Start::Done(Outcome::fail(e.to_string())),
    };
    let callable = callable.clone();
    Start::Later(Box::pin(async move {
        let call = vec![context(&run), CallArg::Json(args), CallArg::Json(kwargs)];
        match closure::call(&run, &callable, call).await {
            Ok(value) => returned(&run, value).await,
            Err(failure) => Outcome::fail(failure.to_string()),
        }
    }))
}

/// A closure's value as the try's outcome: XCom `return_value` unless `()` or too large.
pub async fn returned(run: &TaskRun, value: serde_json::Value) -> Outcome {
    if value.is_null() {
        run.log("Done. Returned value was: None").await;
        return Outcome::Success { xcom: None };
    }
    let text = value.to_string();
    let max = run.env.settings.max_xcom_bytes;
    if text.len() as u64 > max {
        return Outcome::fail(format!(
            "the closure's value is {} as JSON, more than `[core] max_xcom_bytes` ({})",
            size(text.len() as u64),
            size(max)
        ));
    }
    let shown: String = text.chars().take(1000).collect();
    let more = if shown.len() < text.len() { " …" } else { "" };
    run.log(&format!("Done. Returned value was: {shown}{more}")).await;
    Outcome::Success { xcom: Some(value) }
}
