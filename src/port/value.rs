//! What the static evaluator computes for a Python expression, and how plain values are written in Rhai.

use chrono::NaiveDateTime;

/// A Python value known at port time. Airflow objects are indexes into the evaluator's tables.
#[derive(Debug, Clone)]
pub enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    Tuple(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    DateTime(DateVal),
    /// A `timedelta` / `pendulum.duration`, in whole seconds.
    Duration(i64),
    Dag(usize),
    Task(usize),
    Group(usize),
    /// A task's result as an argument (`XComArg`): `extract()`, `t.output`, `t.output["k"]`.
    XCom {
        task: usize,
        key: Option<String>,
    },
    /// `Label("x")` on its own.
    Label(String),
    /// `a >> Label("x")` or `b << Label("x")`, waiting for the other side.
    LabelEdge {
        label: String,
        ups: Vec<usize>,
        downs: Vec<usize>,
    },
    /// A function defined in the file (index into the evaluator's functions), with TaskFlow overrides.
    Func {
        id: usize,
        overrides: Vec<(String, Val)>,
    },
    /// A lambda: its source text.
    Lambda(String),
    /// An imported or built-in name, dotted (`airflow.operators.bash.BashOperator`, `datetime.timedelta`).
    Symbol(String),
    /// `SomeOperator.partial(...)`: the class and its keyword arguments.
    Partial {
        class: String,
        kwargs: Vec<(String, Val)>,
    },
    /// A method of a value, looked up and not yet called (`"-".join`).
    Method(Box<Val>, String),
    /// What the evaluator cannot know at port time, with a short description of the expression.
    Unknown(String),
}

/// A date: a fixed one (naive or with a zone name), or `days_ago(n)` which moves with the clock.
#[derive(Debug, Clone)]
pub enum DateVal {
    Fixed { at: NaiveDateTime, tz: Option<String> },
    DaysAgo(i64),
}

impl Val {
    /// Python's truth value, `None` when it cannot be known.
    pub fn truthy(&self) -> Option<bool> {
        Some(match self {
            Val::None => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::List(l) | Val::Tuple(l) => !l.is_empty(),
            Val::Dict(d) => !d.is_empty(),
            Val::Duration(d) => *d != 0,
            Val::Unknown(_) => return None,
            _ => true,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's type for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Val::None => "None",
            Val::Bool(_) => "a bool",
            Val::Int(_) => "an int",
            Val::Float(_) => "a float",
            Val::Str(_) => "a string",
            Val::List(_) => "a list",
            Val::Tuple(_) => "a tuple",
            Val::Dict(_) => "a dict",
            Val::DateTime(_) => "a datetime",
            Val::Duration(_) => "a timedelta",
            Val::Dag(_) => "a DAG",
            Val::Task(_) => "a task",
            Val::Group(_) => "a task group",
            Val::XCom { .. } => "a task's result (XComArg)",
            Val::Label(_) | Val::LabelEdge { .. } => "a Label",
            Val::Func { .. } => "a function",
            Val::Lambda(_) => "a lambda",
            Val::Symbol(_) => "an imported name",
            Val::Partial { .. } => "a partial operator",
            Val::Method(..) => "a method",
            Val::Unknown(_) => "a value known only at run time",
        }
    }
}

/// Python's `str()` of a plain value; `None` for values with no text form here.
pub fn py_str(v: &Val) -> Option<String> {
    Some(match v {
        Val::Str(s) => s.clone(),
        Val::XCom { task: _, key: _ } => return None,
        other => py_repr(other)?,
    })
}

/// Python's `repr()` of a plain value.
pub fn py_repr(v: &Val) -> Option<String> {
    Some(match v {
        Val::None => "None".into(),
        Val::Bool(true) => "True".into(),
        Val::Bool(false) => "False".into(),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => float_text(*f),
        Val::Str(s) => {
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        }
        Val::List(l) => format!("[{}]", l.iter().map(py_repr).collect::<Option<Vec<_>>>()?.join(", ")),
        Val::Tuple(l) if l.len() == 1 => format!("({},)", py_repr(&l[0])?),
        Val::Tuple(l) => format!("({})", l.iter().map(py_repr).collect::<Option<Vec<_>>>()?.join(", ")),
        Val::Dict(d) => format!(
            "{{{}}}",
            d.iter()
                .map(|(k, v)| Some(format!("{}: {}", py_repr(k)?, py_repr(v)?)))
                .collect::<Option<Vec<_>>>()?
                .join(", ")
        ),
        Val::DateTime(DateVal::Fixed { at, .. }) => at.format("%Y-%m-%d %H:%M:%S").to_string(),
        Val::Duration(s) => duration_text(*s),
        _ => return None,
    })
}

fn float_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 { format!("{f:.1}") } else { f.to_string() }
}

/// Python's `str(timedelta)`: `1 day, 2:03:04`.
fn duration_text(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let hms = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => hms,
        1 | -1 => format!("{days} day, {hms}"),
        _ => format!("{days} days, {hms}"),
    }
}

/// A Rhai string literal.
pub fn rhai_str(s: &str) -> String {
    // JSON's escapes (`\"`, `\\`, `\n`, `\uXXXX`) are Rhai's too; `${` is only special in backticks.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A Rhai map key: bare when it is an identifier, else quoted.
pub fn rhai_key(k: &str) -> String {
    let ident = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident { k.to_string() } else { rhai_str(k) }
}

/// A duration in Rhai: `days(1)`, `hours(2)`, `minutes(5)` or `seconds(n)`.
pub fn rhai_duration(secs: i64) -> String {
    for (unit, name) in [(604_800, "weeks"), (86_400, "days"), (3_600, "hours"), (60, "minutes")] {
        if secs != 0 && secs % unit == 0 {
            return format!("{name}({})", secs / unit);
        }
    }
    format!("seconds({secs})")
}

/// A date in Rhai: `datetime(2024, 1, 1)`, `datetime(2024, 1, 1, 6, 30)` or `days_ago(n)`.
pub fn rhai_date(d: &DateVal) -> String {
    match d {
        DateVal::DaysAgo(n) => format!("days_ago({n})"),
        DateVal::Fixed { at, .. } => {
            use chrono::{Datelike, Timelike};
            let mut parts = vec![at.year().to_string(), at.month().to_string(), at.day().to_string()];
            let time = [at.hour(), at.minute(), at.second()];
            let last = time.iter().rposition(|x| *x != 0);
            if let Some(last) = last {
                parts.extend(time[..=last].iter().map(|x| x.to_string()));
            }
            format!("datetime({})", parts.join(", "))
        }
    }
}

/// Why a value could not be written as plain Rhai data.
pub type NotPlain = String;

/// Plain data in Rhai (strings, numbers, arrays, maps, `()`, dates, durations); `xcom` writes a
/// task's result as `#{ xcom_pull: "id" }` (for `op_args`/`op_kwargs`), else as a template.
pub fn rhai_data(v: &Val, xcom: XComForm, ids: &dyn Fn(usize) -> String) -> Result<String, NotPlain> {
    Ok(match v {
        Val::None => "()".into(),
        Val::Bool(b) => b.to_string(),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => float_text(*f),
        Val::Str(s) => rhai_str(s),
        Val::List(l) | Val::Tuple(l) => {
            let items: Result<Vec<String>, _> = l.iter().map(|x| rhai_data(x, xcom, ids)).collect();
            format!("[{}]", items?.join(", "))
        }
        Val::Dict(d) => {
            if d.is_empty() {
                return Ok("#{}".into());
            }
            let mut items = Vec::new();
            for (k, x) in d {
                let key = match k {
                    Val::Str(s) => s.clone(),
                    Val::Int(_) | Val::Bool(_) | Val::Float(_) => py_repr(k).unwrap_or_default(),
                    other => return Err(format!("a dict key that is {}", other.kind())),
                };
                items.push(format!("{}: {}", rhai_key(&key), rhai_data(x, xcom, ids)?));
            }
            format!("#{{ {} }}", items.join(", "))
        }
        Val::DateTime(d) => rhai_date(d),
        Val::Duration(s) => rhai_duration(*s),
        Val::XCom { task, key } => match xcom {
            XComForm::Marker => match key {
                Some(k) => format!("#{{ xcom_pull: {}, key: {} }}", rhai_str(&ids(*task)), rhai_str(k)),
                None => format!("#{{ xcom_pull: {} }}", rhai_str(&ids(*task))),
            },
            XComForm::Template => rhai_str(&xcom_template(&ids(*task), key.as_deref())),
        },
        other => return Err(other.kind().to_string()),
    })
}

/// How a task's result is written where a value is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XComForm {
    /// `#{ xcom_pull: "id" }`: `PythonOperator` replaces it by the XCom at run time.
    Marker,
    /// `"{{ ti.xcom_pull(task_ids='id') }}"`: Airflow's `str(XComArg)`, rendered in templated fields.
    Template,
}

/// Airflow's `str(XComArg)`: the template that pulls it.
pub fn xcom_template(task_id: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("{{{{ ti.xcom_pull(task_ids='{task_id}', key='{k}') }}}}"),
        None => format!("{{{{ ti.xcom_pull(task_ids='{task_id}') }}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_largest_whole_unit() {
        assert_eq!(rhai_duration(86_400), "days(1)");
        assert_eq!(rhai_duration(300), "minutes(5)");
        assert_eq!(rhai_duration(90), "seconds(90)");
        assert_eq!(rhai_duration(0), "seconds(0)");
    }

    #[test]
    fn strings_and_keys_are_escaped() {
        assert_eq!(rhai_str("a \"b\"\n${x}"), r#""a \"b\"\n${x}""#);
        assert_eq!(rhai_key("ok_1"), "ok_1");
        assert_eq!(rhai_key("Content-Type"), "\"Content-Type\"");
    }
}
