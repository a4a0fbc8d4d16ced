//! Writing what the evaluator found: the `.rhai` DAG file, and the `_tasks.py` module holding the
//! Python callables with the imports, constants and helpers they use.

use super::eval::{Evaluator, FuncKind};
use super::value::{Val, XComForm, rhai_str};
use super::{HEADER, Loss};
use rustpython_parser::ast::{self, Ranged, Stmt};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

/// Rhai's keywords and reserved words, which cannot name a variable.
const RHAI_RESERVED: &[&str] = &[
    "true",
    "false",
    "let",
    "const",
    "if",
    "else",
    "switch",
    "do",
    "while",
    "until",
    "loop",
    "for",
    "in",
    "continue",
    "break",
    "return",
    "throw",
    "try",
    "catch",
    "import",
    "export",
    "as",
    "global",
    "fn",
    "private",
    "this",
    "is",
    "Fn",
    "call",
    "curry",
    "type_of",
    "print",
    "debug",
    "eval",
    "var",
    "static",
    "shared",
    "goto",
    "exit",
    "match",
    "case",
    "public",
    "protected",
    "new",
    "use",
    "with",
    "module",
    "package",
    "super",
    "thread",
    "spawn",
    "go",
    "await",
    "async",
    "sync",
    "yield",
    "default",
    "void",
    "null",
    "nil",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

struct Names(HashSet<String>);

impl Names {
    fn fresh(&mut self, hint: &str) -> String {
        let mut base: String = hint.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) || RHAI_RESERVED.contains(&base.as_str()) {
            base = format!("t_{base}");
        }
        // Rhai rejects identifiers made of underscores only and those starting with two of them... keep simple.
        if base.chars().all(|c| c == '_') {
            base = format!("t{base}");
        }
        let mut name = base.clone();
        let mut n = 1;
        while !self.0.insert(name.clone()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        name
    }
}

fn map_text(args: &[(String, String)], indent: &str) -> String {
    if args.is_empty() {
        return "#{}".into();
    }
    let one_line = format!(
        "#{{ {} }}",
        args.iter().map(|(k, v)| format!("{}: {v}", super::value::rhai_key(k))).collect::<Vec<_>>().join(", ")
    );
    if one_line.len() <= 80 && !one_line.contains('\n') {
        return one_line;
    }
    let mut out = String::from("#{\n");
    for (k, v) in args {
        let _ = writeln!(out, "{indent}    {}: {v},", super::value::rhai_key(k));
    }
    out.push_str(indent);
    out.push('}');
    out
}

/// The `.rhai` text for everything the evaluator declared.
pub fn rhai_file(ev: &Evaluator, source_name: &str, tasks_module: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{HEADER}{source_name}");
    if let Some(m) = tasks_module {
        let _ = writeln!(out, "// Its Python task code is in {m}.py beside this file.");
    }
    let mut names = Names(HashSet::new());
    let mut task_vars = vec![String::new(); ev.tasks.len()];
    let mut group_vars = vec![String::new(); ev.groups.len()];
    for (d, dag) in ev.dags.iter().enumerate() {
        out.push('\n');
        let mut args = dag.args.clone();
        if let Some(defaults) = &dag.default_args {
            let var = names.fresh("default_args");
            let _ = writeln!(out, "let {var} = {};", map_text(defaults, ""));
            args.insert(0, ("default_args".into(), var));
        }
        let var = names.fresh("dag");
        let _ = writeln!(out, "let {var} = DAG({}, {});", rhai_str(&dag.dag_id), map_text(&args, ""));
        let groups: Vec<usize> = (0..ev.groups.len()).filter(|g| ev.groups[*g].dag == d).collect();
        if !groups.is_empty() {
            out.push('\n');
        }
        for g in groups {
            let group = &ev.groups[g];
            let mut args = Vec::new();
            if let Some(p) = group.parent {
                args.push(("parent_group".to_string(), group_vars[p].clone()));
            }
            args.extend(group.args.iter().cloned());
            let var = names.fresh(&format!("{}_group", group.local_id));
            let _ = writeln!(out, "let {var} = TaskGroup({}, {});", rhai_str(&group.local_id), map_text(&args, ""));
            group_vars[g] = var;
        }
        let tasks: Vec<usize> = (0..ev.tasks.len()).filter(|t| ev.tasks[*t].dag == d).collect();
        if !tasks.is_empty() {
            out.push('\n');
        }
        for t in &tasks {
            let task = &ev.tasks[*t];
            let mut args = task.args.clone();
            if let Some(g) = task.group {
                args.insert(1.min(args.len()), ("task_group".into(), group_vars[g].clone()));
            }
            if let Some(c) = &task.comment {
                let _ = writeln!(out, "// {}", c.replace('\n', " "));
            }
            let var = names.fresh(&task.local_id);
            let _ = writeln!(out, "let {var} = {}({});", task.operator, map_text(&args, ""));
            task_vars[*t] = var;
        }
        if !dag.edges.is_empty() {
            out.push('\n');
        }
        for (u, v) in &dag.edges {
            match dag.labels.get(&(*u, *v)) {
                Some(label) => {
                    let _ = writeln!(out, "{} >> Label({}) >> {};", task_vars[*u], rhai_str(label), task_vars[*v]);
                }
                None => {
                    let _ = writeln!(out, "{} >> {};", task_vars[*u], task_vars[*v]);
                }
            }
        }
    }
    out
}

/// Identifiers in Python source (an over-approximation: names in strings and comments count too).
fn identifiers(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            cur.push(c);
        } else if !cur.is_empty() {
            if !cur.starts_with(|c: char| c.is_ascii_digit()) {
                out.insert(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.insert(cur);
    }
    out
}

/// A function's source from its `def` line (decorators left behind), dedented to column 0.
fn function_source(ev: &Evaluator, def: &ast::StmtFunctionDef, src: &str) -> String {
    let start = def.range().start().to_usize();
    let end = def.range().end().to_usize().min(src.len());
    let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let text = &src[line_start..end];
    let mut lines: Vec<&str> = text.lines().collect();
    // Skip decorator lines (and anything before `def`).
    let def_at = lines
        .iter()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with("def ") || t.starts_with("async def ")
        })
        .unwrap_or(0);
    lines.drain(..def_at);
    let indent = lines.first().map(|l| l.len() - l.trim_start().len()).unwrap_or(0);
    let _ = ev;
    lines
        .iter()
        .map(|l| {
            let strip = l.chars().take(indent).take_while(|c| c.is_whitespace()).count();
            &l[strip..]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `_tasks.py` module: the moved callables with what they reference at module level.
pub fn python_module(ev: &mut Evaluator, body: &[Stmt], src: &str, source_name: &str) -> Option<String> {
    if ev.moved.is_empty() && ev.lambdas.is_empty() {
        return None;
    }
    let mut pieces: Vec<(usize, String)> = Vec::new();
    let mut used = BTreeSet::new();
    let moved: Vec<usize> = ev.moved.clone();
    for id in &moved {
        let def = ev.funcs[*id].def;
        let mut text = function_source(ev, def, src);
        let name = ev.moved_names.get(id).cloned().unwrap_or_else(|| def.name.to_string());
        if name != def.name.as_str() {
            text = text.replacen(&format!("def {}(", def.name), &format!("def {name}("), 1);
        }
        used.extend(identifiers(&text));
        pieces.push((def.range().start().to_usize(), text));
    }
    for (_, lambda) in &ev.lambdas {
        used.extend(identifiers(lambda));
    }
    // Module-level helper functions the moved code calls, and the ones those call.
    let moved_set: HashSet<usize> = moved.iter().copied().collect();
    let mut helpers: Vec<usize> = Vec::new();
    loop {
        let more: Vec<usize> = (0..ev.funcs.len())
            .filter(|id| {
                let f = &ev.funcs[*id];
                f.top_level
                    && matches!(f.kind, FuncKind::Plain)
                    && !moved_set.contains(id)
                    && !helpers.contains(id)
                    && used.contains(f.def.name.as_str())
            })
            .collect();
        if more.is_empty() {
            break;
        }
        for id in more {
            let text = function_source(ev, ev.funcs[id].def, src);
            used.extend(identifiers(&text));
            pieces.push((ev.funcs[id].def.range().start().to_usize(), text));
            helpers.push(id);
        }
    }
    pieces.sort_by_key(|(at, _)| *at);
    let mut imports = Vec::new();
    let mut constants = Vec::new();
    let mut airflow_imports = Vec::new();
    // Constants first: the names they use (a `datetime` in a dict) need their imports too.
    for stmt in body {
        if let Stmt::Assign(s) = stmt
            && let [ast::Expr::Name(n)] = s.targets.as_slice()
            && used.contains(n.id.as_str())
            && ev.global(n.id.as_str()).is_some_and(|v| plain(ev, v))
        {
            let text = ev.text_of(stmt).to_string();
            constants.push(text);
        }
    }
    for c in &constants {
        used.extend(identifiers(c));
    }
    for stmt in body {
        match stmt {
            Stmt::Import(s) => {
                let bound: Vec<String> = s
                    .names
                    .iter()
                    .map(|a| match &a.asname {
                        Some(n) => n.to_string(),
                        None => a.name.split('.').next().unwrap_or("").to_string(),
                    })
                    .collect();
                if bound.iter().any(|b| used.contains(b)) {
                    let text = ev.text_of(stmt).to_string();
                    if s.names.iter().any(|a| a.name.starts_with("airflow")) {
                        airflow_imports.push((ev.line_of(stmt), text.clone()));
                    }
                    imports.push(text);
                }
            }
            Stmt::ImportFrom(s) => {
                let module = s.module.as_ref().map(|m| m.to_string()).unwrap_or_default();
                let wanted: Vec<&ast::Alias> =
                    s.names.iter().filter(|a| used.contains(a.asname.as_ref().unwrap_or(&a.name).as_str())).collect();
                if wanted.is_empty() {
                    continue;
                }
                let names: Vec<String> = wanted
                    .iter()
                    .map(|a| match &a.asname {
                        Some(n) => format!("{} as {n}", a.name),
                        None => a.name.to_string(),
                    })
                    .collect();
                let dots = ".".repeat(s.level.as_ref().map(|l| l.to_u32() as usize).unwrap_or(0));
                let text = format!("from {dots}{module} import {}", names.join(", "));
                if module.starts_with("airflow") {
                    airflow_imports.push((ev.line_of(stmt), text.clone()));
                }
                imports.push(text);
            }
            _ => {}
        }
    }
    for (line, text) in airflow_imports {
        ev.losses.push(Loss {
            line,
            what: format!("`{text}`, used by Python task code"),
            why: "the moved code imports Airflow".into(),
            instead: "the import copied into the tasks module: it needs Airflow installed where the task runs".into(),
        });
    }
    let mut out = format!("# ported by rhaiflow port from {source_name}: the Python callables of its tasks.\n");
    if !imports.is_empty() {
        out.push('\n');
        for i in imports {
            out.push_str(&i);
            out.push('\n');
        }
    }
    if !constants.is_empty() {
        out.push('\n');
        for c in constants {
            out.push_str(&c);
            out.push('\n');
        }
    }
    for (_, text) in pieces {
        out.push_str("\n\n");
        out.push_str(&text);
        out.push('\n');
    }
    for (name, lambda) in ev.lambdas.clone() {
        let _ = write!(out, "\n\n{name} = {lambda}\n");
    }
    Some(out)
}

/// Whether a module-level value is plain data that can be copied as it was written.
fn plain(ev: &Evaluator, v: &Val) -> bool {
    !matches!(v, Val::Unknown(_) | Val::Symbol(_)) && ev.data(v, XComForm::Template).is_ok() && !contains_task(v)
}

fn contains_task(v: &Val) -> bool {
    match v {
        Val::XCom { .. } | Val::Task(_) | Val::Dag(_) | Val::Group(_) => true,
        Val::List(l) | Val::Tuple(l) => l.iter().any(contains_task),
        Val::Dict(d) => d.iter().any(|(k, v)| contains_task(k) || contains_task(v)),
        _ => false,
    }
}
