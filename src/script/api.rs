//! The DAG API registered into the engine: `DAG(...)`, the operators, `>>`/`<<`, `chain`, ...
//!
//! Every function here finds its file's state through the engine's tag and raises `ScriptError`s
//! positioned at the call.

use super::args::{self, Args, DagHandle, GroupHandle, OPERATORS, OperatorDef, TaskHandle, Value};
use super::error::{ScriptError, ScriptResult, to_pos};
use super::groups::{GROUP_KEYS, LabelValue};
use super::state::{FileCell, FileState, allowed_keys, dag_keys};
use crate::model::SourcePos;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};
use std::any::TypeId;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The call's position in the user's file, or `None` when the call is inside a stdlib function.
fn call_pos(ctx: &NativeCallContext) -> Option<SourcePos> {
    match ctx.call_source() {
        Some(src) if !src.is_empty() => None,
        _ => to_pos(ctx.call_position()),
    }
}

/// Runs `f` on the file's state; errors are positioned at the call (or at the offending key).
fn with_state<T>(
    ctx: &NativeCallContext,
    f: impl FnOnce(&mut FileState, Option<SourcePos>) -> ScriptResult<T>,
) -> RhaiResult<T> {
    let cell = ctx
        .tag()
        .and_then(|t| t.clone().try_cast::<FileCell>())
        .ok_or_else(|| ScriptError::new("the DAG API is only available while a DAG file is evaluated"))?;
    let mut state = cell.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pos = call_pos(ctx);
    f(&mut state, pos).map_err(|mut e| {
        if e.pos.is_none()
            && let (Some(key), Some(from)) = (e.key.take(), pos)
        {
            e.pos = locate_key(&state.source, from, &key);
        }
        let mut err: Box<EvalAltResult> = e.into();
        err.set_position(ctx.call_position());
        err
    })
}

/// Finds `key:` in the source at or after `from` (within 200 lines), else before it (a map built
/// earlier, such as `let default_args = #{ ... };`), to put the caret on a bad key.
pub(super) fn locate_key(source: &str, from: SourcePos, key: &str) -> Option<SourcePos> {
    locate_key_in(source, from, key, from.line.saturating_sub(1), 200)
        .or_else(|| locate_key_in(source, SourcePos::new(1, 1), key, 0, from.line.saturating_sub(1)))
}

fn locate_key_in(source: &str, from: SourcePos, key: &str, skip: usize, take: usize) -> Option<SourcePos> {
    if key.is_empty() {
        return None;
    }
    for (i, line) in source.lines().enumerate().skip(skip).take(take) {
        let line_no = i + 1;
        let start = if line_no == from.line {
            line.char_indices().nth(from.col.saturating_sub(1)).map_or(line.len(), |(b, _)| b)
        } else {
            0
        };
        let mut search = start;
        while let Some(found) = line[search..].find(key) {
            let at = search + found;
            let before_ok = line[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let rest = line[at + key.len()..].trim_start();
            if before_ok && rest.starts_with(':') {
                return Some(SourcePos::new(line_no, line[..at].chars().count() + 1));
            }
            search = at + key.len();
        }
    }
    None
}

fn task_list(value: &Dynamic, what: &str) -> ScriptResult<Vec<TaskHandle>> {
    if let Some(t) = value.clone().try_cast::<TaskHandle>() {
        return Ok(vec![t]);
    }
    let Some(array) = value.clone().try_cast::<Array>() else {
        return Err(ScriptError::new(format!(
            "{what} must be a task or an array of tasks, not `{}`",
            value.type_name()
        )));
    };
    array
        .iter()
        .map(|v| {
            v.clone().try_cast::<TaskHandle>().ok_or_else(|| {
                ScriptError::new(format!("{what} must hold only tasks, but holds a `{}`", v.type_name()))
            })
        })
        .collect()
}

/// The tasks a value stands for in an edge: a task itself, a group's leaves (upstream side) or
/// roots (downstream side), each element of an array.
fn expand(state: &FileState, value: &Dynamic, upstream_side: bool, what: &str) -> ScriptResult<Vec<TaskHandle>> {
    if let Some(t) = value.clone().try_cast::<TaskHandle>() {
        return Ok(vec![t]);
    }
    if let Some(g) = value.clone().try_cast::<GroupHandle>() {
        return state.group_ends(g, upstream_side);
    }
    let Some(array) = value.clone().try_cast::<Array>() else {
        return Err(ScriptError::new(format!(
            "{what} must be a task, a TaskGroup or an array of them, not `{}`",
            value_kind(value)
        )));
    };
    let mut out = Vec::new();
    for v in &array {
        if let Some(t) = v.clone().try_cast::<TaskHandle>() {
            out.push(t);
        } else if let Some(g) = v.clone().try_cast::<GroupHandle>() {
            out.extend(state.group_ends(g, upstream_side)?);
        } else {
            return Err(ScriptError::new(format!(
                "{what} must hold only tasks and TaskGroups, but holds a `{}`",
                value_kind(v)
            )));
        }
    }
    Ok(out)
}

/// A value's type as the DAG language names it.
fn value_kind(value: &Dynamic) -> &'static str {
    if value.is::<LabelValue>() {
        "Label"
    } else if value.is::<DagHandle>() {
        "DAG"
    } else {
        value.type_name()
    }
}

/// `a >> b` (`down`) or `a << b`: joins the two sides, or with a `Label` on one side, waits for
/// the other; returns `b` (or the waiting label) so chains go on.
fn shift(ctx: &NativeCallContext, a: Dynamic, b: Dynamic, down: bool) -> RhaiResult<Dynamic> {
    let op = if down { ">>" } else { "<<" };
    with_state(ctx, |s, pos| {
        if a.is_array() && b.is_array() {
            return Err(ScriptError::new(format!("`{op}` cannot join two arrays")).with_help(
                "use `cross_downstream(from, to)` for every pair, or `chain(from, to)` to pair them by position",
            ));
        }
        let left = format!("the left side of `{op}`");
        let right = format!("the right side of `{op}`");
        if let Some(mut label) = b.clone().try_cast::<LabelValue>() {
            if a.is::<LabelValue>() || label.ups.is_some() || label.downs.is_some() {
                return Err(ScriptError::new(format!("`{op}` cannot join a `Label` to another `Label`")));
            }
            // `a >> Label`: `a` is upstream, waiting; `a << Label`: `a` is downstream, waiting.
            if down {
                label.ups = Some(expand(s, &a, true, &left)?);
            } else {
                label.downs = Some(expand(s, &a, false, &left)?);
            }
            return Ok(Dynamic::from(label));
        }
        let (ups, downs, label) = match a.clone().try_cast::<LabelValue>() {
            Some(label) => match (down, label.ups.clone(), label.downs.clone()) {
                (true, Some(ups), _) => (ups, expand(s, &b, false, &right)?, Some(label.label)),
                (false, _, Some(downs)) => (expand(s, &b, true, &right)?, downs, Some(label.label)),
                _ => {
                    return Err(ScriptError::new(format!(
                        "a `Label` stands between two tasks: `a {op} Label(\"...\") {op} b`"
                    )));
                }
            },
            None if down => (expand(s, &a, true, &left)?, expand(s, &b, false, &right)?, None),
            None => (expand(s, &b, true, &right)?, expand(s, &a, false, &left)?, None),
        };
        for up in &ups {
            for d in &downs {
                match &label {
                    Some(l) => s.label_edge(*up, *d, l, pos)?,
                    None => s.add_edge(*up, *d, pos)?,
                }
            }
        }
        Ok(b)
    })
}

fn declare_group(ctx: &NativeCallContext, group_id: Option<String>, map: Map) -> RhaiResult<GroupHandle> {
    with_state(ctx, |state, pos| {
        let (mut args, mut errors) = Args::check(&map, GROUP_KEYS, "TaskGroup");
        let default_args = match args.take("default_args") {
            Some(Value::Map(raw)) => {
                let (defaults, more) = Args::check(&raw, &args::default_args_keys(), "default_args");
                errors.extend(more);
                defaults
            }
            _ => Args::default(),
        };
        state.record(errors, pos, None)?;
        state.declare_group(group_id, args, default_args, pos)
    })
}

fn link(state: &mut FileState, ups: &[TaskHandle], downs: &[TaskHandle], pos: Option<SourcePos>) -> ScriptResult<()> {
    for up in ups {
        for down in downs {
            state.add_edge(*up, *down, pos)?;
        }
    }
    Ok(())
}

fn declare_dag(ctx: &NativeCallContext, dag_id: Option<String>, map: Map) -> RhaiResult<DagHandle> {
    with_state(ctx, |state, pos| {
        let (mut args, mut errors) = Args::check(&map, dag_keys(), "DAG");
        let dag_id = match (dag_id, args.str("dag_id")) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                state.record(errors, pos, None)?;
                return Err(ScriptError::new("`DAG` needs a dag_id: `DAG(\"my_dag\", #{ ... })`"));
            }
        };
        let default_args = match args.take("default_args") {
            Some(Value::Map(raw)) => {
                let (defaults, more) = Args::check(&raw, &args::default_args_keys(), "default_args");
                errors.extend(more);
                defaults
            }
            _ => Args::default(),
        };
        if args.contains("schedule") && args.contains("schedule_interval") {
            errors
                .push(ScriptError::new("give `schedule` or `schedule_interval`, not both").at_key("schedule_interval"));
            args.take("schedule_interval");
        }
        if let Some(tz) = args.str("timezone")
            && let Err(e) = super::state::parse_timezone(&tz)
        {
            errors.push(e.at_key("timezone"));
            args.take("timezone");
        }
        if let Some(vital) = errors.iter().find(|e| e.key.as_deref() == Some("dag_id")) {
            return Err(vital.clone());
        }
        let dag = state.declare_dag(dag_id, args, default_args, pos)?;
        state.record(errors, pos, Some(dag))?;
        Ok(DagHandle(dag))
    })
}

fn declare_task(ctx: &NativeCallContext, op: &'static OperatorDef, map: Map) -> RhaiResult<TaskHandle> {
    with_state(ctx, |state, pos| {
        let (args, errors) = Args::check(&map, &allowed_keys(op), op.name);
        state.record(errors, pos, None)?;
        state.declare_task(op, args, pos)
    })
}

/// `chain(a, [b, c], d)`: each element upstream of the next; two arrays in a row pair up by index.
fn chain(ctx: &NativeCallContext, elements: Vec<Dynamic>) -> RhaiResult<()> {
    with_state(ctx, |state, pos| {
        let elements = match elements.as_slice() {
            [only] if only.is_array() => only.clone().cast::<Array>(),
            _ => elements,
        };
        for pair in elements.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let ups = expand(state, a, true, "each `chain` element")?;
            let downs = expand(state, b, false, "each `chain` element")?;
            if a.is_array() && b.is_array() {
                if ups.len() != downs.len() {
                    return Err(ScriptError::new(format!(
                        "`chain` pairs two arrays in a row by position, but they hold {} and {} tasks",
                        ups.len(),
                        downs.len()
                    ))
                    .with_help(
                        "use `cross_downstream(from, to)` to join every task of one array to every task of another",
                    ));
                }
                for (up, down) in ups.iter().zip(&downs) {
                    state.add_edge(*up, *down, pos)?;
                }
            } else {
                link(state, &ups, &downs, pos)?;
            }
        }
        Ok(())
    })
}

/// Registers the whole DAG API.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<DagHandle>("DAG");
    engine.register_type_with_name::<TaskHandle>("Task");
    engine.register_type_with_name::<FileCell>("FileState");

    engine.register_fn("DAG", |ctx: NativeCallContext, id: &str| declare_dag(&ctx, Some(id.to_string()), Map::new()));
    engine
        .register_fn("DAG", |ctx: NativeCallContext, id: &str, map: Map| declare_dag(&ctx, Some(id.to_string()), map));
    engine.register_fn("DAG", |ctx: NativeCallContext, map: Map| declare_dag(&ctx, None, map));
    engine.register_get("dag_id", |ctx: NativeCallContext, d: &mut DagHandle| {
        let d = *d;
        with_state(&ctx, move |s, _| Ok(s.dags[d.0].dag_id.clone()))
    });

    // Airflow's attributes: `dag.doc_md = "..."`, `task.retries = 3` (Rhai reads a property it
    // has no getter or setter for through the string indexer).
    /// A property's errors point at its name, just after the `.` Rhai reports.
    fn property_pos(pos: Option<SourcePos>) -> Option<SourcePos> {
        pos.map(|p| SourcePos::new(p.line, p.col + 1))
    }
    fn at_property(e: ScriptError, pos: Option<SourcePos>) -> ScriptError {
        ScriptError { pos: e.pos.or(property_pos(pos)), key: None, ..e }
    }
    engine.register_indexer_get(|ctx: NativeCallContext, d: &mut DagHandle, key: &str| {
        let d = d.0;
        with_state(&ctx, move |s, pos| s.dag_property(d, key).map_err(|e| at_property(e, pos)))
    });
    engine.register_indexer_set(|ctx: NativeCallContext, d: &mut DagHandle, key: &str, value: Dynamic| {
        let d = d.0;
        with_state(&ctx, move |s, pos| {
            s.set_dag_property(d, key, value, property_pos(pos)).map_err(|e| at_property(e, pos))
        })
    });
    engine.register_indexer_get(|ctx: NativeCallContext, t: &mut TaskHandle, key: &str| {
        let t = *t;
        with_state(&ctx, move |s, pos| s.task_property(t, key).map_err(|e| at_property(e, pos)))
    });
    engine.register_indexer_set(|ctx: NativeCallContext, t: &mut TaskHandle, key: &str, value: Dynamic| {
        let t = *t;
        with_state(&ctx, move |s, pos| {
            s.set_task_property(t, key, value, property_pos(pos)).map_err(|e| at_property(e, pos))
        })
    });

    for op in OPERATORS {
        engine.register_fn(op.name, move |ctx: NativeCallContext, map: Map| declare_task(&ctx, op, map));
    }

    engine.register_get("task_id", |ctx: NativeCallContext, t: &mut TaskHandle| {
        let t = *t;
        with_state(&ctx, move |s, _| Ok(s.task_id(t)))
    });
    engine.register_get("dag_id", |ctx: NativeCallContext, t: &mut TaskHandle| {
        let t = *t;
        with_state(&ctx, move |s, _| Ok(s.dags[t.dag].dag_id.clone()))
    });
    engine.register_fn("to_string", |ctx: NativeCallContext, t: &mut TaskHandle| {
        let t = *t;
        with_state(&ctx, move |s, _| Ok(s.task_label(t)))
    });
    engine.register_fn("to_debug", |ctx: NativeCallContext, t: &mut TaskHandle| {
        let t = *t;
        with_state(&ctx, move |s, _| Ok(s.task_label(t)))
    });
    engine.register_fn("==", |a: TaskHandle, b: TaskHandle| a == b);

    // Airflow's methods: `b.set_upstream(a)`, `a.set_downstream([b, c])` (registered with `>>`).

    // `a >> b` returns `b`, so `a >> b >> [c, d]` chains; `a << b` makes `b` upstream of `a` and
    // returns `b`. Either side may be a task, a `TaskGroup`, an array of them, or a `Label`.
    engine.register_fn(">>", |ctx: NativeCallContext, a: TaskHandle, b: TaskHandle| {
        with_state(&ctx, |s, pos| s.add_edge(a, b, pos).map(|_| b))
    });
    engine.register_fn("<<", |ctx: NativeCallContext, a: TaskHandle, b: TaskHandle| {
        with_state(&ctx, |s, pos| s.add_edge(b, a, pos).map(|_| b))
    });
    macro_rules! shifts {
        ($($a:ty, $b:ty);+ $(;)?) => {$(
            engine.register_fn(">>", |ctx: NativeCallContext, a: $a, b: $b| {
                shift(&ctx, Dynamic::from(a), Dynamic::from(b), true)
            });
            engine.register_fn("<<", |ctx: NativeCallContext, a: $a, b: $b| {
                shift(&ctx, Dynamic::from(a), Dynamic::from(b), false)
            });
        )+};
    }
    shifts!(
        TaskHandle, Array; Array, TaskHandle; Array, Array;
        GroupHandle, TaskHandle; TaskHandle, GroupHandle; GroupHandle, GroupHandle;
        GroupHandle, Array; Array, GroupHandle;
        TaskHandle, LabelValue; GroupHandle, LabelValue; Array, LabelValue;
        LabelValue, TaskHandle; LabelValue, GroupHandle; LabelValue, Array; LabelValue, LabelValue;
    );

    engine.register_type_with_name::<GroupHandle>("TaskGroup");
    engine.register_type_with_name::<LabelValue>("Label");
    engine.register_fn("TaskGroup", |ctx: NativeCallContext, id: &str| {
        declare_group(&ctx, Some(id.to_string()), Map::new())
    });
    engine.register_fn("TaskGroup", |ctx: NativeCallContext, id: &str, map: Map| {
        declare_group(&ctx, Some(id.to_string()), map)
    });
    engine.register_fn("TaskGroup", |ctx: NativeCallContext, map: Map| declare_group(&ctx, None, map));
    engine.register_get("group_id", |ctx: NativeCallContext, g: &mut GroupHandle| {
        let g = *g;
        with_state(&ctx, move |s, _| Ok(s.group_id(g)))
    });
    for name in ["to_string", "to_debug"] {
        engine.register_fn(name, |ctx: NativeCallContext, g: &mut GroupHandle| {
            let g = *g;
            with_state(&ctx, move |s, _| Ok(format!("<TaskGroup: {}>", s.group_id(g))))
        });
        engine.register_fn(name, |l: &mut LabelValue| format!("<Label: {}>", l.label));
    }
    engine.register_fn("==", |a: GroupHandle, b: GroupHandle| a == b);
    engine.register_fn("Label", |ctx: NativeCallContext, label: &str| -> RhaiResult<LabelValue> {
        with_state(&ctx, |_, _| {
            if label.is_empty() || label.len() > 1000 {
                return Err(ScriptError::new("a `Label` must be 1 to 1000 characters long"));
            }
            Ok(LabelValue { label: label.to_string(), ups: None, downs: None })
        })
    });
    macro_rules! set_stream {
        ($t:ty) => {
            engine.register_fn("set_upstream", |ctx: NativeCallContext, t: &mut $t, other: Dynamic| {
                let me = Dynamic::from(t.clone());
                shift(&ctx, me, other, false).map(|_| ())
            });
            engine.register_fn("set_downstream", |ctx: NativeCallContext, t: &mut $t, other: Dynamic| {
                let me = Dynamic::from(t.clone());
                shift(&ctx, me, other, true).map(|_| ())
            });
            // Airflow's `a.set_downstream(b, Label("why"))` shape.
            engine.register_fn(
                "set_upstream",
                |ctx: NativeCallContext, t: &mut $t, other: Dynamic, label: LabelValue| {
                    let me = Dynamic::from(t.clone());
                    let waiting = shift(&ctx, me, Dynamic::from(label), false)?;
                    shift(&ctx, waiting, other, false).map(|_| ())
                },
            );
            engine.register_fn(
                "set_downstream",
                |ctx: NativeCallContext, t: &mut $t, other: Dynamic, label: LabelValue| {
                    let me = Dynamic::from(t.clone());
                    let waiting = shift(&ctx, me, Dynamic::from(label), true)?;
                    shift(&ctx, waiting, other, true).map(|_| ())
                },
            );
        };
    }
    set_stream!(TaskHandle);
    set_stream!(GroupHandle);

    engine.register_fn("days_ago", |ctx: NativeCallContext, n: rhai::INT| {
        with_state(&ctx, |s, _| super::values::days_ago(s.ctx.now, n))
    });

    engine.register_fn("cross_downstream", |ctx: NativeCallContext, from: Array, to: Array| {
        let ups = task_list(&Dynamic::from_array(from), "`cross_downstream`'s first array");
        let downs = task_list(&Dynamic::from_array(to), "`cross_downstream`'s second array");
        with_state(&ctx, |s, pos| link(s, &ups?, &downs?, pos))
    });

    // `chain` takes any number of tasks or arrays, as Airflow's does.
    for arity in 1..=32 {
        let types = vec![TypeId::of::<Dynamic>(); arity];
        engine.register_raw_fn("chain", types, |ctx: NativeCallContext, args: &mut [&mut Dynamic]| {
            let elements: Vec<Dynamic> = args.iter_mut().map(|a| std::mem::take(*a)).collect();
            chain(&ctx, elements)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_a_key_after_the_call() {
        let src = "let t = BashOperator(#{\n  task_id: \"a\",\n  retires: 2 });";
        assert_eq!(locate_key(src, SourcePos::new(1, 9), "retires"), Some(SourcePos::new(3, 3)));
        assert_eq!(locate_key(src, SourcePos::new(1, 9), "nothing"), None);
    }
}
