//! The static evaluator: runs a DAG file's module-level Python on the AST, with Airflow's classes
//! standing in as builders, and records DAGs, task groups, tasks, edges and losses.

use super::airflow::{self, OperatorClass};
use super::value::{DateVal, Val, XComForm, py_repr, py_str, rhai_data, xcom_template};
use super::{Loss, Model};
use rustpython_parser::ast::{self, Constant, Expr, Ranged, Stmt};
use std::collections::{HashMap, HashSet};

/// Statements and expressions evaluated at most, so an endless comprehension is a loss, not a hang.
const MAX_STEPS: u64 = 2_000_000;
/// Items a `range(...)` or loop may produce.
const MAX_ITEMS: i64 = 100_000;
/// Nested calls of functions defined in the file.
const MAX_DEPTH: usize = 64;
/// Tasks in one file.
pub const MAX_TASKS: usize = 100_000;
/// Nested expressions evaluated (each level is a few native frames).
const MAX_EXPR_DEPTH: usize = 400;

pub struct DagOut {
    pub dag_id: String,
    pub line: usize,
    pub args: Vec<(String, String)>,
    pub default_args: Option<Vec<(String, String)>>,
    pub edges: Vec<(usize, usize)>,
    pub edge_set: HashSet<(usize, usize)>,
    pub labels: HashMap<(usize, usize), String>,
    pub task_ids: HashSet<String>,
    pub group_ids: HashSet<String>,
}

pub struct TaskOut {
    pub dag: usize,
    pub full_id: String,
    pub local_id: String,
    pub group: Option<usize>,
    pub operator: String,
    pub args: Vec<(String, String)>,
    pub comment: Option<String>,
    pub line: usize,
}

pub struct GroupOut {
    pub dag: usize,
    pub full_id: String,
    pub local_id: String,
    pub parent: Option<usize>,
    pub prefix: bool,
    pub args: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub enum FuncKind {
    Plain,
    Task { flavor: String, kwargs: Vec<(String, Val)>, setup: bool, teardown: bool },
    Dag { kwargs: Vec<(String, Val)> },
    Group { kwargs: Vec<(String, Val)> },
}

pub struct FuncInfo<'a> {
    pub def: &'a ast::StmtFunctionDef,
    pub kind: FuncKind,
    /// Defined at module level (a helper the moved code may call).
    pub top_level: bool,
}

enum Flow {
    Normal,
    Return(Val),
    Break,
    Continue,
}

pub struct Evaluator<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
    frames: Vec<HashMap<String, Val>>,
    pub funcs: Vec<FuncInfo<'a>>,
    pub dags: Vec<DagOut>,
    pub tasks: Vec<TaskOut>,
    pub groups: Vec<GroupOut>,
    pub losses: Vec<Loss>,
    /// Functions that run as tasks and move to the `_tasks.py` module, in the order first used.
    pub moved: Vec<usize>,
    /// Lambdas used as callables: (name in the tasks module, source).
    pub lambdas: Vec<(String, String)>,
    dag_stack: Vec<usize>,
    group_stack: Vec<usize>,
    last_dag: Option<usize>,
    steps: u64,
    depth: usize,
    docstring: Option<String>,
    /// The `_tasks` module's name, for `python_callable: "module:function"`.
    pub module: String,
    /// Names each moved function has in the tasks module (function id -> name).
    pub moved_names: HashMap<usize, String>,
    stopped: bool,
    expr_depth: usize,
    too_deep: bool,
}

/// Keyword arguments as evaluated, in order.
type Kwargs = Vec<(String, Val)>;

fn get<'k>(kwargs: &'k Kwargs, key: &str) -> Option<&'k Val> {
    kwargs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl<'a> Evaluator<'a> {
    pub fn new(src: &'a str, module: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Evaluator {
            src,
            line_starts,
            frames: vec![HashMap::new()],
            funcs: Vec::new(),
            dags: Vec::new(),
            tasks: Vec::new(),
            groups: Vec::new(),
            losses: Vec::new(),
            moved: Vec::new(),
            lambdas: Vec::new(),
            dag_stack: Vec::new(),
            group_stack: Vec::new(),
            last_dag: None,
            steps: 0,
            depth: 0,
            docstring: None,
            module,
            moved_names: HashMap::new(),
            stopped: false,
            expr_depth: 0,
            too_deep: false,
        }
    }

    pub fn into_model(self) -> Model {
        Model { dags: self.dags, tasks: self.tasks, groups: self.groups, losses: self.losses }
    }

    pub fn line_of(&self, node: &impl Ranged) -> usize {
        let offset = node.range().start().to_usize();
        self.line_starts.partition_point(|s| *s <= offset)
    }

    pub fn text_of(&self, node: &impl Ranged) -> &'a str {
        let r = node.range();
        self.src.get(r.start().to_usize()..r.end().to_usize()).unwrap_or("")
    }

    pub fn loss(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>, instead: impl Into<String>) {
        self.losses.push(Loss { line, what: what.into(), why: why.into(), instead: instead.into() });
    }

    /// A call's source on one line, shortened, for `// port: was ...` comments and messages.
    pub fn short_text(&self, node: &impl Ranged) -> String {
        let text: String = self.text_of(node).split_whitespace().collect::<Vec<_>>().join(" ");
        if text.chars().count() > 120 { format!("{}…", text.chars().take(120).collect::<String>()) } else { text }
    }

    fn tick(&mut self, line: usize) -> bool {
        self.steps += 1;
        if self.steps > MAX_STEPS && !self.stopped {
            self.stopped = true;
            self.loss(
                line,
                "evaluation stopped",
                format!("the file took more than {MAX_STEPS} evaluation steps"),
                "what was declared until then",
            );
        }
        !self.stopped
    }

    // --- statements ---------------------------------------------------------------------------

    pub fn run_module(&mut self, body: &'a [Stmt]) {
        if let Some(Stmt::Expr(e)) = body.first()
            && let Expr::Constant(c) = e.value.as_ref()
            && let Constant::Str(s) = &c.value
        {
            self.docstring = Some(s.clone());
        }
        self.exec_block(body, true);
    }

    fn exec_block(&mut self, body: &'a [Stmt], top_level: bool) -> Flow {
        for stmt in body {
            match self.exec_stmt(stmt, top_level) {
                Flow::Normal => {}
                other => return other,
            }
        }
        Flow::Normal
    }

    fn exec_stmt(&mut self, stmt: &'a Stmt, top_level: bool) -> Flow {
        let line = self.line_of(stmt);
        if !self.tick(line) {
            return Flow::Return(Val::None);
        }
        match stmt {
            Stmt::Expr(s) => {
                self.eval(&s.value);
            }
            Stmt::Assign(s) => {
                let v = self.eval(&s.value);
                for target in &s.targets {
                    self.assign(target, v.clone());
                }
            }
            Stmt::AnnAssign(s) => {
                if let Some(value) = &s.value {
                    let v = self.eval(value);
                    self.assign(&s.target, v);
                }
            }
            Stmt::AugAssign(s) => {
                let cur = self.eval(&s.target);
                let rhs = self.eval(&s.value);
                let v = self.binop(cur, &s.op, rhs, line);
                self.assign(&s.target, v);
            }
            Stmt::For(s) => {
                let iter = self.eval(&s.iter);
                let Some(items) = self.iterate(&iter) else {
                    let shown = self.short_text(s.iter.as_ref());
                    self.loss(
                        line,
                        format!("`for` over `{shown}`"),
                        "what it iterates over is known only at run time",
                        "nothing for this loop",
                    );
                    return Flow::Normal;
                };
                let mut broke = false;
                for item in items {
                    self.assign(&s.target, item);
                    match self.exec_block(&s.body, false) {
                        Flow::Break => {
                            broke = true;
                            break;
                        }
                        Flow::Return(v) => return Flow::Return(v),
                        _ => {}
                    }
                    if self.stopped {
                        break;
                    }
                }
                if !broke {
                    return self.exec_block(&s.orelse, false);
                }
            }
            Stmt::While(_) => {
                self.loss(line, "a `while` loop", "loops other than `for` are not evaluated", "nothing for this loop");
            }
            Stmt::If(s) => {
                let test = self.eval(&s.test);
                let branch = match test.truthy() {
                    Some(b) => b,
                    None => {
                        let shown = self.short_text(s.test.as_ref());
                        self.loss(
                            line,
                            format!("`if {shown}`"),
                            "the condition is known only at run time",
                            "the `if` branch, as if it were true",
                        );
                        true
                    }
                };
                return if branch { self.exec_block(&s.body, false) } else { self.exec_block(&s.orelse, false) };
            }
            Stmt::With(s) => {
                let mut pushed_dags = 0;
                let mut pushed_groups = 0;
                for item in &s.items {
                    let v = self.eval(&item.context_expr);
                    match &v {
                        Val::Dag(d) => {
                            self.dag_stack.push(*d);
                            pushed_dags += 1;
                        }
                        Val::Group(g) => {
                            self.group_stack.push(*g);
                            pushed_groups += 1;
                        }
                        _ => {}
                    }
                    if let Some(target) = &item.optional_vars {
                        self.assign(target, v);
                    }
                }
                let flow = self.exec_block(&s.body, false);
                for _ in 0..pushed_dags {
                    self.dag_stack.pop();
                }
                for _ in 0..pushed_groups {
                    self.group_stack.pop();
                }
                return flow;
            }
            Stmt::FunctionDef(def) => {
                let kind = self.classify(def);
                self.funcs.push(FuncInfo { def, kind, top_level });
                let id = self.funcs.len() - 1;
                self.set(def.name.as_str(), Val::Func { id, overrides: Vec::new() });
            }
            Stmt::AsyncFunctionDef(def) => {
                self.set(def.name.as_str(), Val::Unknown(format!("async def {}", def.name)));
            }
            // A class of the file (a custom operator): calling it with a `task_id` is an operator
            // rhaiflow does not have.
            Stmt::ClassDef(def) => self.set(def.name.as_str(), Val::Symbol(format!("__main__.{}", def.name))),
            Stmt::Import(s) => {
                for alias in &s.names {
                    let name = alias.name.as_str();
                    match &alias.asname {
                        Some(as_name) => self.set(as_name.as_str(), Val::Symbol(name.to_string())),
                        None => {
                            let first = name.split('.').next().unwrap_or(name);
                            self.set(first, Val::Symbol(first.to_string()));
                        }
                    }
                }
            }
            Stmt::ImportFrom(s) => {
                let module = s.module.as_ref().map(|m| m.as_str()).unwrap_or("");
                for alias in &s.names {
                    let bound = alias.asname.as_ref().unwrap_or(&alias.name).as_str();
                    self.set(bound, Val::Symbol(format!("{module}.{}", alias.name)));
                }
            }
            Stmt::Return(s) => {
                let v = s.value.as_ref().map(|v| self.eval(v)).unwrap_or(Val::None);
                return Flow::Return(v);
            }
            Stmt::Try(s) => {
                let flow = self.exec_block(&s.body, false);
                if !matches!(flow, Flow::Normal) {
                    return flow;
                }
                let flow = self.exec_block(&s.orelse, false);
                if !matches!(flow, Flow::Normal) {
                    return flow;
                }
                return self.exec_block(&s.finalbody, false);
            }
            Stmt::Break(_) => return Flow::Break,
            Stmt::Continue(_) => return Flow::Continue,
            _ => {}
        }
        Flow::Normal
    }

    // --- names ---------------------------------------------------------------------------------

    fn set(&mut self, name: &str, v: Val) {
        if let Some(frame) = self.frames.last_mut() {
            frame.insert(name.to_string(), v);
        }
    }

    fn lookup(&self, name: &str) -> Option<Val> {
        // Innermost first, then outward: enclosing functions' names are visible (closures), as
        // are the module's.
        self.frames.iter().rev().find_map(|f| f.get(name).cloned())
    }

    fn assign(&mut self, target: &'a Expr, v: Val) {
        match target {
            Expr::Name(n) => self.set(n.id.as_str(), v),
            Expr::Tuple(t) => self.assign_many(&t.elts, v),
            Expr::List(l) => self.assign_many(&l.elts, v),
            Expr::Subscript(s) => {
                let Expr::Name(n) = s.value.as_ref() else { return };
                let key = self.eval(&s.slice);
                if let Some(mut container) = self.lookup(n.id.as_str()) {
                    match &mut container {
                        Val::Dict(d) => match d.iter_mut().find(|(k, _)| same(k, &key)) {
                            Some(slot) => slot.1 = v,
                            None => d.push((key, v)),
                        },
                        Val::List(l) => {
                            if let Val::Int(i) = key
                                && let Some(slot) = index(l.len(), i).and_then(|i| l.get_mut(i))
                            {
                                *slot = v;
                            }
                        }
                        _ => {}
                    }
                    self.set_existing(n.id.as_str(), container);
                }
            }
            Expr::Attribute(a) => {
                let obj = self.eval(&a.value);
                let line = self.line_of(target);
                match obj {
                    Val::Task(t) => self.set_task_attr(t, a.attr.as_str(), v, line),
                    Val::Dag(d) => self.set_dag_attr(d, a.attr.as_str(), v, line),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn assign_many(&mut self, targets: &'a [Expr], v: Val) {
        let items = self.iterate(&v).unwrap_or_default();
        for (i, t) in targets.iter().enumerate() {
            self.assign(t, items.get(i).cloned().unwrap_or(Val::Unknown("unpacking".into())));
        }
    }

    /// Writes a name where it lives (a list appended to in a loop body lives in an outer frame).
    fn set_existing(&mut self, name: &str, v: Val) {
        for frame in self.frames.iter_mut().rev() {
            if let Some(slot) = frame.get_mut(name) {
                *slot = v;
                return;
            }
        }
        self.set(name, v);
    }

    // --- expressions ---------------------------------------------------------------------------

    pub fn eval(&mut self, e: &'a Expr) -> Val {
        if self.expr_depth >= MAX_EXPR_DEPTH {
            if !self.too_deep {
                self.too_deep = true;
                let line = self.line_of(e);
                self.loss(
                    line,
                    "an expression nested too deep",
                    format!("more than {MAX_EXPR_DEPTH} levels (Python itself refuses far fewer)"),
                    "what it holds is left out",
                );
            }
            return Val::Unknown("an expression nested too deep".into());
        }
        self.expr_depth += 1;
        let v = self.eval_inner(e);
        self.expr_depth -= 1;
        v
    }

    fn eval_inner(&mut self, e: &'a Expr) -> Val {
        let line = self.line_of(e);
        if !self.tick(line) {
            return Val::Unknown("evaluation stopped".into());
        }
        match e {
            Expr::Constant(c) => constant(&c.value),
            Expr::Name(n) => match self.lookup(n.id.as_str()) {
                Some(v) => v,
                None if n.id.as_str() == "__doc__" => self.docstring.clone().map(Val::Str).unwrap_or(Val::None),
                // Airflow imports DAG files under a made-up module name, never as `__main__`.
                None if n.id.as_str() == "__name__" => Val::Str("unusual_prefix_dag_file".into()),
                None if BUILTINS.contains(&n.id.as_str()) => Val::Symbol(format!("builtins.{}", n.id)),
                None => Val::Unknown(n.id.to_string()),
            },
            Expr::JoinedStr(j) => self.fstring(&j.values),
            Expr::FormattedValue(f) => {
                let v = self.eval(&f.value);
                let spec = f.format_spec.as_ref().map(|s| self.eval(s));
                self.format_one(&v, spec.as_ref().and_then(|s| s.as_str()).unwrap_or(""))
            }
            Expr::BinOp(b) => {
                let l = self.eval(&b.left);
                let r = self.eval(&b.right);
                self.binop(l, &b.op, r, line)
            }
            Expr::UnaryOp(u) => {
                let v = self.eval(&u.operand);
                match (&u.op, v) {
                    (ast::UnaryOp::Not, v) => v.truthy().map(|b| Val::Bool(!b)).unwrap_or(Val::Unknown("not".into())),
                    (ast::UnaryOp::USub, Val::Int(i)) => Val::Int(-i),
                    (ast::UnaryOp::USub, Val::Float(f)) => Val::Float(-f),
                    (ast::UnaryOp::USub, Val::Duration(d)) => Val::Duration(-d),
                    (ast::UnaryOp::UAdd, v) => v,
                    _ => Val::Unknown(self.short_text(e)),
                }
            }
            Expr::BoolOp(b) => {
                let and = matches!(b.op, ast::BoolOp::And);
                let mut last = Val::None;
                for value in &b.values {
                    last = self.eval(value);
                    match last.truthy() {
                        Some(t) if t != and => return last,
                        Some(_) => {}
                        None => return Val::Unknown(self.short_text(e)),
                    }
                }
                last
            }
            Expr::Compare(c) => {
                let mut left = self.eval(&c.left);
                for (op, right) in c.ops.iter().zip(&c.comparators) {
                    let right = self.eval(right);
                    match compare(&left, op, &right) {
                        Some(true) => left = right,
                        Some(false) => return Val::Bool(false),
                        None => return Val::Unknown(self.short_text(e)),
                    }
                }
                Val::Bool(true)
            }
            Expr::IfExp(i) => {
                let test = self.eval(&i.test);
                match test.truthy() {
                    Some(true) => self.eval(&i.body),
                    Some(false) => self.eval(&i.orelse),
                    None => Val::Unknown(self.short_text(e)),
                }
            }
            Expr::Dict(d) => {
                let mut out: Vec<(Val, Val)> = Vec::new();
                for (k, v) in d.keys.iter().zip(&d.values) {
                    let value = self.eval(v);
                    match k {
                        Some(k) => {
                            let key = self.eval(k);
                            dict_set(&mut out, key, value);
                        }
                        None => {
                            if let Val::Dict(more) = value {
                                for (k, v) in more {
                                    dict_set(&mut out, k, v);
                                }
                            }
                        }
                    }
                }
                Val::Dict(out)
            }
            Expr::List(l) => Val::List(self.eval_items(&l.elts)),
            Expr::Tuple(t) => Val::Tuple(self.eval_items(&t.elts)),
            Expr::Set(s) => Val::List(self.eval_items(&s.elts)),
            Expr::ListComp(c) => self
                .comprehension(&c.generators, &mut |ev| Some(ev.eval(&c.elt)))
                .map_or_else(|| Val::Unknown(self.short_text(e)), Val::List),
            Expr::SetComp(c) => self
                .comprehension(&c.generators, &mut |ev| Some(ev.eval(&c.elt)))
                .map_or_else(|| Val::Unknown(self.short_text(e)), Val::List),
            Expr::GeneratorExp(c) => self
                .comprehension(&c.generators, &mut |ev| Some(ev.eval(&c.elt)))
                .map_or_else(|| Val::Unknown(self.short_text(e)), Val::List),
            Expr::DictComp(c) => {
                let pairs = self.comprehension(&c.generators, &mut |ev| {
                    let k = ev.eval(&c.key);
                    let v = ev.eval(&c.value);
                    Some(Val::Tuple(vec![k, v]))
                });
                match pairs {
                    Some(pairs) => {
                        let mut out = Vec::new();
                        for p in pairs {
                            if let Val::Tuple(mut kv) = p
                                && kv.len() == 2
                            {
                                let v = kv.pop().unwrap_or(Val::None);
                                let k = kv.pop().unwrap_or(Val::None);
                                dict_set(&mut out, k, v);
                            }
                        }
                        Val::Dict(out)
                    }
                    None => Val::Unknown(self.short_text(e)),
                }
            }
            Expr::Attribute(a) => {
                let v = self.eval(&a.value);
                self.attr(v, a.attr.as_str())
            }
            Expr::Subscript(s) => {
                let v = self.eval(&s.value);
                if let Expr::Slice(sl) = s.slice.as_ref() {
                    let mut bound = |b: &'a Option<Box<Expr>>| match b {
                        None => Some(None),
                        Some(x) => match self.eval(x) {
                            Val::Int(i) => Some(Some(i)),
                            Val::None => Some(None),
                            _ => None,
                        },
                    };
                    let (Some(lo), Some(hi), Some(step)) = (bound(&sl.lower), bound(&sl.upper), bound(&sl.step)) else {
                        return Val::Unknown(self.short_text(e));
                    };
                    return match v {
                        Val::List(l) => slice(&l, lo, hi, step).map(Val::List),
                        Val::Tuple(l) => slice(&l, lo, hi, step).map(Val::Tuple),
                        Val::Str(st) => {
                            let chars: Vec<Val> = st.chars().map(|c| Val::Str(c.to_string())).collect();
                            slice(&chars, lo, hi, step)
                                .map(|cs| Val::Str(cs.iter().filter_map(|c| c.as_str()).collect::<String>()))
                        }
                        _ => None,
                    }
                    .unwrap_or_else(|| Val::Unknown(self.short_text(e)));
                }
                let key = self.eval(&s.slice);
                self.subscript(v, key, e)
            }
            Expr::Call(c) => self.call(c),
            Expr::Lambda(_) => Val::Lambda(self.text_of(e).to_string()),
            Expr::Starred(s) => self.eval(&s.value),
            _ => Val::Unknown(self.short_text(e)),
        }
    }

    fn eval_items(&mut self, elts: &'a [Expr]) -> Vec<Val> {
        let mut out = Vec::new();
        for x in elts {
            if let Expr::Starred(s) = x {
                let v = self.eval(&s.value);
                out.extend(self.iterate(&v).unwrap_or_default());
            } else {
                out.push(self.eval(x));
            }
        }
        out
    }

    /// Runs the `for`/`if` clauses of a comprehension, calling `each` for every item.
    fn comprehension(
        &mut self,
        generators: &'a [ast::Comprehension],
        each: &mut dyn FnMut(&mut Self) -> Option<Val>,
    ) -> Option<Vec<Val>> {
        self.frames.push(HashMap::new());
        let mut out = Vec::new();
        let ok = self.comprehension_level(generators, each, &mut out);
        self.frames.pop();
        ok.then_some(out)
    }

    fn comprehension_level(
        &mut self,
        generators: &'a [ast::Comprehension],
        each: &mut dyn FnMut(&mut Self) -> Option<Val>,
        out: &mut Vec<Val>,
    ) -> bool {
        let Some((first, rest)) = generators.split_first() else {
            if let Some(v) = each(self) {
                out.push(v);
            }
            return true;
        };
        let iter = self.eval(&first.iter);
        let Some(items) = self.iterate(&iter) else { return false };
        'items: for item in items {
            self.assign(&first.target, item);
            for cond in &first.ifs {
                match self.eval(cond).truthy() {
                    Some(true) => {}
                    Some(false) => continue 'items,
                    None => return false,
                }
            }
            if !self.comprehension_level(rest, each, out) {
                return false;
            }
        }
        true
    }

    fn fstring(&mut self, values: &'a [Expr]) -> Val {
        let mut out = String::new();
        for v in values {
            match self.eval(v) {
                Val::Str(s) => out.push_str(&s),
                Val::Unknown(u) => return Val::Unknown(u),
                other => match py_str(&other) {
                    Some(s) => out.push_str(&s),
                    None => return Val::Unknown(format!("f-string with {}", other.kind())),
                },
            }
        }
        Val::Str(out)
    }

    /// `format(v, spec)` for the specs DAG files use: width, fill, alignment, `d`, `s`, `.Nf`.
    fn format_one(&mut self, v: &Val, spec: &str) -> Val {
        let text = match v {
            Val::XCom { task, key } => {
                let id = self.tasks[*task].full_id.clone();
                return Val::Str(xcom_template(&id, key.as_deref()));
            }
            Val::Task(t) => format!("<Task({}): {}>", self.tasks[*t].operator, self.tasks[*t].full_id),
            Val::Unknown(u) => return Val::Unknown(u.clone()),
            other => match py_str(other) {
                Some(s) => s,
                None => return Val::Unknown(format!("formatting {}", other.kind())),
            },
        };
        if spec.is_empty() {
            return Val::Str(text);
        }
        match apply_spec(v, &text, spec) {
            Some(s) => Val::Str(s),
            None => Val::Unknown(format!("format spec `{spec}`")),
        }
    }

    pub fn iterate(&self, v: &Val) -> Option<Vec<Val>> {
        match v {
            Val::List(l) | Val::Tuple(l) => Some(l.clone()),
            Val::Dict(d) => Some(d.iter().map(|(k, _)| k.clone()).collect()),
            Val::Str(s) => Some(s.chars().map(|c| Val::Str(c.to_string())).collect()),
            _ => None,
        }
    }

    fn binop(&mut self, l: Val, op: &ast::Operator, r: Val, line: usize) -> Val {
        use ast::Operator as O;
        match (op, l, r) {
            (O::RShift, l, r) => self.shift(l, r, line),
            (O::LShift, l, r) => self.shift_left(l, r, line),
            (O::Add, Val::Int(a), Val::Int(b)) => {
                a.checked_add(b).map(Val::Int).unwrap_or(Val::Unknown("overflow".into()))
            }
            (O::Add, Val::Str(a), Val::Str(b)) => Val::Str(format!("{a}{b}")),
            (O::Add, Val::List(mut a), Val::List(b)) => {
                a.extend(b);
                Val::List(a)
            }
            (O::Add, Val::Tuple(mut a), Val::Tuple(b)) => {
                a.extend(b);
                Val::Tuple(a)
            }
            (O::Add, Val::Duration(a), Val::Duration(b)) => Val::Duration(a.saturating_add(b)),
            (O::Sub, Val::Duration(a), Val::Duration(b)) => Val::Duration(a.saturating_sub(b)),
            (O::Add, Val::DateTime(d), Val::Duration(s)) | (O::Add, Val::Duration(s), Val::DateTime(d)) => {
                shift_date(d, s)
            }
            (O::Sub, Val::DateTime(d), Val::Duration(s)) => shift_date(d, -s),
            (O::Sub, Val::Int(a), Val::Int(b)) => {
                a.checked_sub(b).map(Val::Int).unwrap_or(Val::Unknown("overflow".into()))
            }
            (O::Mult, Val::Int(a), Val::Int(b)) => {
                a.checked_mul(b).map(Val::Int).unwrap_or(Val::Unknown("overflow".into()))
            }
            (O::Mult, Val::Duration(a), Val::Int(b)) | (O::Mult, Val::Int(b), Val::Duration(a)) => {
                Val::Duration(a.saturating_mul(b))
            }
            (O::Mult, Val::Str(s), Val::Int(n)) | (O::Mult, Val::Int(n), Val::Str(s)) if (0..10_000).contains(&n) => {
                Val::Str(s.repeat(n as usize))
            }
            (O::Mult, Val::List(l), Val::Int(n)) if (0..10_000).contains(&n) && l.len() * (n as usize) < 100_000 => {
                Val::List(l.iter().cloned().cycle().take(l.len() * n as usize).collect())
            }
            (O::FloorDiv, Val::Int(a), Val::Int(b)) if b != 0 => Val::Int(a.div_euclid(b)),
            (O::Mod, Val::Int(a), Val::Int(b)) if b != 0 => Val::Int(a.rem_euclid(b)),
            (O::Div, Val::Int(a), Val::Int(b)) if b != 0 => Val::Float(a as f64 / b as f64),
            (O::Add | O::Sub | O::Mult | O::Div, a, b) if num(&a).is_some() && num(&b).is_some() => {
                let (x, y) = (num(&a).unwrap_or(0.0), num(&b).unwrap_or(0.0));
                Val::Float(match op {
                    O::Add => x + y,
                    O::Sub => x - y,
                    O::Mult => x * y,
                    _ => x / y,
                })
            }
            (O::Mod, Val::Str(fmt), args) => match percent_format(&fmt, &args) {
                Some(s) => Val::Str(s),
                None => Val::Unknown(format!("`%` formatting of `{fmt}`")),
            },
            (O::BitOr, Val::Dict(mut a), Val::Dict(b)) => {
                for (k, v) in b {
                    dict_set(&mut a, k, v);
                }
                Val::Dict(a)
            }
            (_, a, b) => Val::Unknown(format!("{} with {}", a.kind(), b.kind())),
        }
    }

    fn subscript(&mut self, v: Val, key: Val, e: &'a Expr) -> Val {
        match (v, key) {
            (Val::Dict(d), key) => d
                .into_iter()
                .find(|(k, _)| same(k, &key))
                .map(|(_, v)| v)
                .unwrap_or_else(|| Val::Unknown(self.short_text(e))),
            (Val::List(l) | Val::Tuple(l), Val::Int(i)) => {
                index(l.len(), i).and_then(|i| l.get(i).cloned()).unwrap_or(Val::Unknown(self.short_text(e)))
            }
            (Val::Str(s), Val::Int(i)) => {
                let chars: Vec<char> = s.chars().collect();
                index(chars.len(), i)
                    .map(|i| Val::Str(chars[i].to_string()))
                    .unwrap_or(Val::Unknown(self.short_text(e)))
            }
            (Val::XCom { task, key: None }, Val::Str(k)) => Val::XCom { task, key: Some(k) },
            _ => Val::Unknown(self.short_text(e)),
        }
    }

    fn attr(&mut self, v: Val, name: &str) -> Val {
        match v {
            Val::Symbol(s) => {
                let parent = s.rsplit('.').next().unwrap_or(&s);
                if airflow::ENUMS.contains(&parent) {
                    return Val::Str(name.to_lowercase());
                }
                if parent == "datetime" && name == "min" {
                    let at = chrono::NaiveDate::from_ymd_opt(1, 1, 1).map(|d| d.and_time(chrono::NaiveTime::MIN));
                    return at.map(|at| Val::DateTime(DateVal::Fixed { at, tz: None })).unwrap_or(Val::Unknown(s));
                }
                Val::Symbol(format!("{s}.{name}"))
            }
            Val::Task(t) => match name {
                "output" => Val::XCom { task: t, key: None },
                "task_id" => Val::Str(self.tasks[t].full_id.clone()),
                _ => Val::Method(Box::new(Val::Task(t)), name.to_string()),
            },
            Val::Dag(d) if name == "dag_id" => Val::Str(self.dags[d].dag_id.clone()),
            Val::Group(g) if name == "group_id" => Val::Str(self.groups[g].full_id.clone()),
            Val::Duration(s) if name == "days" => Val::Int(s.div_euclid(86_400)),
            Val::Duration(s) if name == "seconds" => Val::Int(s.rem_euclid(86_400)),
            Val::Unknown(u) => Val::Unknown(format!("{u}.{name}")),
            other => Val::Method(Box::new(other), name.to_string()),
        }
    }

    // --- calls ---------------------------------------------------------------------------------

    fn call(&mut self, c: &'a ast::ExprCall) -> Val {
        let line = self.line_of(c);
        let f = self.eval(&c.func);
        let mut args = Vec::new();
        for a in &c.args {
            if let Expr::Starred(s) = a {
                let v = self.eval(&s.value);
                args.extend(self.iterate(&v).unwrap_or_default());
            } else {
                args.push(self.eval(a));
            }
        }
        let mut kwargs: Kwargs = Vec::new();
        for k in &c.keywords {
            let v = self.eval(&k.value);
            match &k.arg {
                Some(name) => kwargs.push((name.to_string(), v)),
                None => {
                    if let Val::Dict(d) = v {
                        for (key, v) in d {
                            if let Val::Str(key) = key {
                                kwargs.push((key, v));
                            }
                        }
                    }
                }
            }
        }
        match f {
            Val::Symbol(s) => self.call_symbol(&s, args, kwargs, c),
            Val::Func { id, overrides } => self.call_func(id, overrides, args, kwargs, c),
            Val::Method(recv, name) => self.call_method(*recv, &name, args, kwargs, c, line),
            Val::Partial { .. } => Val::Unknown(self.short_text(c)),
            _ => Val::Unknown(self.short_text(c)),
        }
    }

    fn call_symbol(&mut self, path: &str, args: Vec<Val>, kwargs: Kwargs, c: &'a ast::ExprCall) -> Val {
        let line = self.line_of(c);
        let name = path.rsplit('.').next().unwrap_or(path);
        let parent = path.rsplit('.').nth(1).unwrap_or("");
        let arg = |i: usize, key: &str| get(&kwargs, key).cloned().or_else(|| args.get(i).cloned());
        match name {
            "DAG" => return self.new_dag(arg(0, "dag_id"), &kwargs, line),
            "TaskGroup" => return self.new_group(arg(0, "group_id"), &kwargs, line, false),
            "Label" => {
                return match arg(0, "label") {
                    Some(Val::Str(s)) => Val::Label(s),
                    _ => Val::Unknown(self.short_text(c)),
                };
            }
            "chain" => {
                for pair in args.windows(2) {
                    self.chain_pair(&pair[0], &pair[1], line);
                }
                return Val::None;
            }
            "cross_downstream" => {
                if let (Some(from), Some(to)) = (arg(0, "from_tasks"), arg(1, "to_tasks")) {
                    let ups = self.side(&from, true);
                    let downs = self.side(&to, false);
                    for u in &ups {
                        for d in &downs {
                            self.edge(*u, *d, None, line);
                        }
                    }
                }
                return Val::None;
            }
            "chain_linear" => {
                for pair in args.windows(2) {
                    self.shift(pair[0].clone(), pair[1].clone(), line);
                }
                return Val::None;
            }
            "days_ago" => {
                return match arg(0, "n") {
                    Some(Val::Int(n)) => Val::DateTime(DateVal::DaysAgo(n)),
                    _ => Val::Unknown(self.short_text(c)),
                };
            }
            "timedelta" | "duration" | "relativedelta" => return duration(&args, &kwargs),
            "Param" => {
                let v = arg(0, "default").unwrap_or(Val::None);
                self.loss(
                    line,
                    "`Param(...)`",
                    "rhaiflow's `params` are plain values, without a type or validation",
                    "its default value",
                );
                return v;
            }
            _ => {}
        }
        if name == "datetime" || (name == "date" && parent == "datetime") {
            let tz = get(&kwargs, "tz").or_else(|| get(&kwargs, "tzinfo")).cloned();
            return datetime(&args, &kwargs, tz);
        }
        if name == "parse"
            && parent == "pendulum"
            && let Some(Val::Str(s)) = args.first()
        {
            let tz = get(&kwargs, "tz").cloned();
            return parse_date(s, tz).unwrap_or(Val::Unknown(self.short_text(c)));
        }
        if name == "partial" && (airflow::operator_class(parent).is_some() || parent.ends_with("Operator")) {
            return Val::Partial { class: parent.to_string(), kwargs };
        }
        if path.starts_with("builtins.") {
            return self.builtin(name, args, kwargs, c);
        }
        if let Some(class) = airflow::operator_class(name) {
            let mut kwargs = kwargs;
            // Positional task_id, as some files write it for sensors.
            if let Some(Val::Str(id)) = args.first()
                && get(&kwargs, "task_id").is_none()
            {
                kwargs.insert(0, ("task_id".into(), Val::Str(id.clone())));
            }
            return self.new_task(class, name, kwargs, c);
        }
        if get(&kwargs, "task_id").is_some() {
            return self.new_task(OperatorClass::Unknown, name, kwargs, c);
        }
        Val::Unknown(self.short_text(c))
    }

    fn builtin(&mut self, name: &str, args: Vec<Val>, _kwargs: Kwargs, c: &'a ast::ExprCall) -> Val {
        let unknown = || Val::Unknown(self.short_text(c));
        let ints: Option<Vec<i64>> = args.iter().map(|a| if let Val::Int(i) = a { Some(*i) } else { None }).collect();
        match name {
            "range" => {
                let Some(ints) = ints else { return unknown() };
                let (start, stop, step) = match ints.as_slice() {
                    [stop] => (0, *stop, 1),
                    [a, b] => (*a, *b, 1),
                    [a, b, s] if *s != 0 => (*a, *b, *s),
                    _ => return unknown(),
                };
                let count = if step > 0 { (stop - start + step - 1) / step } else { (start - stop - step - 1) / -step };
                if count > MAX_ITEMS {
                    return unknown();
                }
                let mut out = Vec::new();
                let mut i = start;
                while (step > 0 && i < stop) || (step < 0 && i > stop) {
                    out.push(Val::Int(i));
                    i += step;
                }
                Val::List(out)
            }
            "len" => match args.first() {
                Some(Val::Str(s)) => Val::Int(s.chars().count() as i64),
                Some(v) => self.iterate(v).map(|l| Val::Int(l.len() as i64)).unwrap_or_else(unknown),
                None => unknown(),
            },
            "str" => match args.first() {
                Some(Val::XCom { task, key }) => {
                    Val::Str(xcom_template(&self.tasks[*task].full_id.clone(), key.as_deref()))
                }
                Some(v) => py_str(v).map(Val::Str).unwrap_or_else(unknown),
                None => Val::Str(String::new()),
            },
            "repr" => args.first().and_then(py_repr).map(Val::Str).unwrap_or_else(unknown),
            "int" => match args.first() {
                Some(Val::Int(i)) => Val::Int(*i),
                Some(Val::Float(f)) => Val::Int(*f as i64),
                Some(Val::Str(s)) => s.trim().parse().map(Val::Int).unwrap_or_else(|_| unknown()),
                Some(Val::Bool(b)) => Val::Int(*b as i64),
                _ => unknown(),
            },
            "float" => args.first().and_then(num).map(Val::Float).unwrap_or_else(unknown),
            "bool" => args.first().and_then(|v| v.truthy()).map(Val::Bool).unwrap_or_else(unknown),
            "list" | "tuple" | "set" | "sorted" | "reversed" => {
                let Some(items) = args.first().map(|a| self.iterate(a)).unwrap_or(Some(Vec::new())) else {
                    return unknown();
                };
                let mut items = items;
                if name == "sorted" {
                    items.sort_by(|a, b| compare_order(a, b).unwrap_or(std::cmp::Ordering::Equal));
                }
                if name == "reversed" {
                    items.reverse();
                }
                if name == "tuple" { Val::Tuple(items) } else { Val::List(items) }
            }
            "dict" => match args.first() {
                Some(Val::Dict(d)) => {
                    let mut d = d.clone();
                    for (k, v) in _kwargs {
                        dict_set(&mut d, Val::Str(k), v);
                    }
                    Val::Dict(d)
                }
                None => Val::Dict(_kwargs.into_iter().map(|(k, v)| (Val::Str(k), v)).collect()),
                Some(other) => match self.iterate(other) {
                    Some(pairs) => {
                        let mut out = Vec::new();
                        for p in pairs {
                            if let Some(kv) = self.iterate(&p)
                                && kv.len() == 2
                            {
                                dict_set(&mut out, kv[0].clone(), kv[1].clone());
                            }
                        }
                        Val::Dict(out)
                    }
                    None => unknown(),
                },
            },
            "enumerate" => match args.first().and_then(|a| self.iterate(a)) {
                Some(items) => {
                    let start = if let Some(Val::Int(s)) = args.get(1) { *s } else { 0 };
                    Val::List(
                        items
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| Val::Tuple(vec![Val::Int(start + i as i64), v]))
                            .collect(),
                    )
                }
                None => unknown(),
            },
            "zip" => {
                let lists: Option<Vec<Vec<Val>>> = args.iter().map(|a| self.iterate(a)).collect();
                let Some(lists) = lists else { return unknown() };
                let n = lists.iter().map(|l| l.len()).min().unwrap_or(0);
                Val::List((0..n).map(|i| Val::Tuple(lists.iter().map(|l| l[i].clone()).collect())).collect())
            }
            "min" | "max" | "sum" => {
                let items = if args.len() == 1 { self.iterate(&args[0]) } else { Some(args.clone()) };
                let Some(items) = items else { return unknown() };
                if name == "sum" {
                    let ints: Option<Vec<i64>> =
                        items.iter().map(|a| if let Val::Int(i) = a { Some(*i) } else { None }).collect();
                    return ints.map(|i| Val::Int(i.iter().sum())).unwrap_or_else(unknown);
                }
                let mut best: Option<Val> = None;
                for item in items {
                    best = Some(match best {
                        None => item,
                        Some(b) => match compare_order(&item, &b) {
                            Some(std::cmp::Ordering::Less) if name == "min" => item,
                            Some(std::cmp::Ordering::Greater) if name == "max" => item,
                            Some(_) => b,
                            None => return unknown(),
                        },
                    });
                }
                best.unwrap_or_else(unknown)
            }
            "abs" => match args.first() {
                Some(Val::Int(i)) => Val::Int(i.abs()),
                Some(Val::Float(f)) => Val::Float(f.abs()),
                _ => unknown(),
            },
            "print" => Val::None,
            _ => unknown(),
        }
    }

    fn call_method(
        &mut self,
        recv: Val,
        name: &str,
        args: Vec<Val>,
        kwargs: Kwargs,
        c: &'a ast::ExprCall,
        line: usize,
    ) -> Val {
        let unknown = |ev: &Self| Val::Unknown(ev.short_text(c));
        // In-place changes of a named list or dict (`tasks.append(t)`, `args.update(...)`).
        if let Expr::Attribute(a) = c.func.as_ref()
            && let Expr::Name(n) = a.value.as_ref()
            && matches!(name, "append" | "extend" | "insert" | "update" | "setdefault" | "pop")
        {
            let mut target = recv.clone();
            let result = match (&mut target, name) {
                (Val::List(l), "append") => {
                    l.extend(args.first().cloned());
                    Val::None
                }
                (Val::List(l), "extend") => {
                    if let Some(more) = args.first().and_then(|a| self.iterate(a)) {
                        l.extend(more);
                    }
                    Val::None
                }
                (Val::List(l), "insert") => {
                    if let (Some(Val::Int(i)), Some(v)) = (args.first(), args.get(1)) {
                        let at = (*i).clamp(0, l.len() as i64) as usize;
                        l.insert(at, v.clone());
                    }
                    Val::None
                }
                (Val::List(l), "pop") => l.pop().unwrap_or(Val::None),
                (Val::Dict(d), "update") => {
                    if let Some(Val::Dict(more)) = args.first() {
                        for (k, v) in more.clone() {
                            dict_set(d, k, v);
                        }
                    }
                    for (k, v) in kwargs.iter().cloned() {
                        dict_set(d, Val::Str(k), v);
                    }
                    Val::None
                }
                (Val::Dict(d), "setdefault") => {
                    let key = args.first().cloned().unwrap_or(Val::None);
                    match d.iter().find(|(k, _)| same(k, &key)) {
                        Some((_, v)) => v.clone(),
                        None => {
                            let v = args.get(1).cloned().unwrap_or(Val::None);
                            d.push((key, v.clone()));
                            v
                        }
                    }
                }
                (Val::Dict(d), "pop") => {
                    let key = args.first().cloned().unwrap_or(Val::None);
                    match d.iter().position(|(k, _)| same(k, &key)) {
                        Some(i) => d.remove(i).1,
                        None => args.get(1).cloned().unwrap_or(Val::None),
                    }
                }
                _ => return unknown(self),
            };
            self.set_existing(n.id.as_str(), target);
            return result;
        }
        match (recv, name) {
            (Val::Task(t), "set_downstream") => {
                for a in args {
                    self.shift(Val::Task(t), a, line);
                }
                Val::None
            }
            (Val::Task(t), "set_upstream") => {
                for a in args {
                    self.shift(a, Val::Task(t), line);
                }
                Val::None
            }
            (Val::Group(g), "set_downstream") => {
                for a in args {
                    self.shift(Val::Group(g), a, line);
                }
                Val::None
            }
            (Val::Group(g), "set_upstream") => {
                for a in args {
                    self.shift(a, Val::Group(g), line);
                }
                Val::None
            }
            (Val::XCom { task, .. }, m @ ("set_downstream" | "set_upstream" | "as_setup" | "as_teardown")) => {
                self.call_method(Val::Task(task), m, args, kwargs, c, line)
            }
            (Val::Task(t), "as_setup") => {
                self.loss(
                    line,
                    format!("setup task `{}`", self.tasks[t].full_id),
                    "rhaiflow has no setup/teardown tasks",
                    "an ordinary task with ordinary edges",
                );
                Val::Task(t)
            }
            (Val::Task(t), "as_teardown") => {
                if let Some(setups) = get(&kwargs, "setups").cloned() {
                    for s in self.side(&setups, true) {
                        self.edge(s, t, None, line);
                    }
                }
                self.teardown(t, line);
                Val::Task(t)
            }
            (Val::Func { id, mut overrides }, "override") => {
                overrides.extend(kwargs);
                Val::Func { id, overrides }
            }
            (Val::Func { id, mut overrides }, "partial") => {
                overrides.extend(kwargs.into_iter().map(|(k, v)| (format!("arg:{k}"), v)));
                Val::Func { id, overrides }
            }
            (Val::Func { id, overrides }, m @ ("expand" | "expand_kwargs")) => {
                let mut kw: Kwargs = Vec::new();
                let mut positional = Vec::new();
                for (k, v) in overrides.iter() {
                    if let Some(arg) = k.strip_prefix("arg:") {
                        kw.push((arg.to_string(), v.clone()));
                    }
                }
                let keep: Vec<(String, Val)> = overrides.into_iter().filter(|(k, _)| !k.starts_with("arg:")).collect();
                if m == "expand" {
                    kw.extend(kwargs);
                } else if let Some(a) = args.first() {
                    positional.push(a.clone());
                }
                let result = self.call_func(id, keep, positional, kw, c);
                if let Val::XCom { task, .. } = &result {
                    let id = self.tasks[*task].full_id.clone();
                    self.loss(
                        line,
                        format!("`.{m}()` of task `{id}`"),
                        "rhaiflow has no dynamic task mapping",
                        "one task, called once with the whole lists as its arguments",
                    );
                }
                result
            }
            (Val::Symbol(s), "partial") => {
                let class = s.rsplit('.').next().unwrap_or(&s).to_string();
                Val::Partial { class, kwargs }
            }
            (Val::Partial { class, kwargs: mut partial }, m @ ("expand" | "expand_kwargs")) => {
                let mut mapped_over = Vec::new();
                for (k, v) in kwargs {
                    let v = match v {
                        Val::List(l) | Val::Tuple(l)
                            if !l.is_empty() && !matches!(k.as_str(), "op_args" | "op_kwargs") =>
                        {
                            mapped_over.push(format!("{k} ({} values)", l.len()));
                            l[0].clone()
                        }
                        other => other,
                    };
                    partial.push((k, v));
                }
                let op = airflow::operator_class(&class).unwrap_or(OperatorClass::Unknown);
                let result = self.new_task(op, &class, partial, c);
                if let Val::Task(t) = &result {
                    let id = self.tasks[*t].full_id.clone();
                    self.loss(
                        line,
                        format!("`.{m}()` of task `{id}`"),
                        "rhaiflow has no dynamic task mapping",
                        if mapped_over.is_empty() {
                            "one task with the mapped arguments as they are".to_string()
                        } else {
                            format!("one task with the first value of {}", mapped_over.join(", "))
                        },
                    );
                }
                result
            }
            (Val::Str(s), m) => string_method(&s, m, &args, &kwargs).unwrap_or_else(|| unknown(self)),
            (Val::Dict(d), "get") => {
                let key = args.first().cloned().unwrap_or(Val::None);
                d.into_iter()
                    .find(|(k, _)| same(k, &key))
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| args.get(1).cloned().unwrap_or(Val::None))
            }
            (Val::Dict(d), "items") => Val::List(d.into_iter().map(|(k, v)| Val::Tuple(vec![k, v])).collect()),
            (Val::Dict(d), "keys") => Val::List(d.into_iter().map(|(k, _)| k).collect()),
            (Val::Dict(d), "values") => Val::List(d.into_iter().map(|(_, v)| v).collect()),
            (Val::Dict(d), "copy") => Val::Dict(d),
            (Val::List(l), "copy") => Val::List(l),
            (Val::List(l), "index") => {
                let key = args.first().cloned().unwrap_or(Val::None);
                l.iter().position(|x| same(x, &key)).map(|i| Val::Int(i as i64)).unwrap_or_else(|| unknown(self))
            }
            (Val::Duration(s), "total_seconds") => Val::Float(s as f64),
            (Val::DateTime(DateVal::Fixed { at, .. }), "strftime") => match args.first() {
                Some(Val::Str(f)) => strftime(&at, f).map(Val::Str).unwrap_or_else(|| unknown(self)),
                _ => unknown(self),
            },
            (Val::DateTime(DateVal::Fixed { at, .. }), "isoformat") => {
                Val::Str(at.format("%Y-%m-%dT%H:%M:%S").to_string())
            }
            (Val::DateTime(d), "replace") => {
                let tz = get(&kwargs, "tzinfo").or_else(|| get(&kwargs, "tz")).cloned();
                match (d, tz) {
                    (DateVal::Fixed { at, .. }, Some(tz)) => Val::DateTime(DateVal::Fixed { at, tz: tz_name(&tz) }),
                    _ => unknown(self),
                }
            }
            _ => unknown(self),
        }
    }

    /// Calls a function defined in the file: a plain helper runs; `@task`, `@dag` and `@task_group`
    /// functions declare what Airflow's decorators declare.
    fn call_func(&mut self, id: usize, overrides: Kwargs, args: Vec<Val>, kwargs: Kwargs, c: &'a ast::ExprCall) -> Val {
        let line = self.line_of(c);
        if self.depth >= MAX_DEPTH {
            self.loss(line, "a call nested too deep", format!("more than {MAX_DEPTH} nested calls"), "nothing for it");
            return Val::Unknown("deep call".into());
        }
        let kind = self.funcs[id].kind.clone();
        match kind {
            FuncKind::Plain => self.run_function(id, args, kwargs).0,
            FuncKind::Task { flavor, kwargs: deco, setup, teardown } => {
                let mut deco = deco;
                let mut call_kwargs = kwargs;
                for (k, v) in overrides {
                    match k.strip_prefix("arg:") {
                        Some(arg) => call_kwargs.insert(0, (arg.to_string(), v)),
                        None => deco.push((k, v)),
                    }
                }
                self.taskflow(id, &flavor, deco, args, call_kwargs, c, (setup, teardown))
            }
            FuncKind::Dag { kwargs: deco } => {
                let name = self.funcs[id].def.name.to_string();
                let dag_id = get(&deco, "dag_id").cloned().unwrap_or(Val::Str(name));
                let dag = self.new_dag(Some(dag_id), &deco, line);
                let Val::Dag(d) = dag else { return dag };
                self.dag_stack.push(d);
                self.run_function(id, args, kwargs);
                self.dag_stack.pop();
                Val::Dag(d)
            }
            FuncKind::Group { kwargs: deco } => {
                let name = self.funcs[id].def.name.to_string();
                let mut deco = deco;
                deco.extend(overrides);
                let group_id = get(&deco, "group_id").cloned().unwrap_or(Val::Str(name));
                let group = self.new_group(Some(group_id), &deco, line, true);
                let Val::Group(g) = group else { return group };
                self.group_stack.push(g);
                let (ret, _) = self.run_function(id, args, kwargs);
                self.group_stack.pop();
                if matches!(ret, Val::None) { Val::Group(g) } else { ret }
            }
        }
    }

    /// Runs a function of the file with these arguments and returns its value (`@task.bash`).
    pub fn run_function_value(&mut self, id: usize, args: Vec<Val>, kwargs: Kwargs) -> Val {
        self.run_function(id, args, kwargs).0
    }

    /// A module-level name's value after the file ran.
    pub fn global(&self, name: &str) -> Option<&Val> {
        self.frames.first().and_then(|f| f.get(name))
    }

    /// Binds parameters and runs a function's body; returns its value.
    fn run_function(&mut self, id: usize, args: Vec<Val>, kwargs: Kwargs) -> (Val, ()) {
        let def = self.funcs[id].def;
        let mut frame = HashMap::new();
        let params: Vec<&ast::ArgWithDefault> = def.args.posonlyargs.iter().chain(&def.args.args).collect();
        let mut extra = Vec::new();
        for (i, a) in args.into_iter().enumerate() {
            match params.get(i) {
                Some(p) => {
                    frame.insert(p.def.arg.to_string(), a);
                }
                None => extra.push(a),
            }
        }
        let mut extra_kw = Vec::new();
        for (k, v) in kwargs {
            if params.iter().copied().chain(def.args.kwonlyargs.iter()).any(|p| p.def.arg.as_str() == k) {
                frame.insert(k, v);
            } else {
                extra_kw.push((Val::Str(k), v));
            }
        }
        let mut defaults = Vec::new();
        for p in params.iter().copied().chain(def.args.kwonlyargs.iter()) {
            if !frame.contains_key(p.def.arg.as_str()) {
                defaults.push((p.def.arg.to_string(), p.default.as_deref()));
            }
        }
        if let Some(v) = &def.args.vararg {
            frame.insert(v.arg.to_string(), Val::Tuple(extra));
        }
        if let Some(k) = &def.args.kwarg {
            frame.insert(k.arg.to_string(), Val::Dict(extra_kw));
        }
        for (name, default) in defaults {
            let v = match default {
                Some(d) => self.eval(d),
                None => Val::Unknown(name.clone()),
            };
            frame.insert(name, v);
        }
        self.depth += 1;
        self.frames.push(frame);
        let flow = self.exec_block(&def.body, false);
        self.frames.pop();
        self.depth -= 1;
        match flow {
            Flow::Return(v) => (v, ()),
            _ => (Val::None, ()),
        }
    }

    /// Decorators → what calling the function declares.
    fn classify(&mut self, def: &'a ast::StmtFunctionDef) -> FuncKind {
        let mut kind = FuncKind::Plain;
        let (mut setup, mut teardown) = (false, false);
        for deco in &def.decorator_list {
            let (target, kwargs) = match deco {
                Expr::Call(c) => {
                    let mut kw = Vec::new();
                    for k in &c.keywords {
                        if let Some(name) = &k.arg {
                            let v = self.eval(&k.value);
                            kw.push((name.to_string(), v));
                        }
                    }
                    // `@task.bash("echo")`-style positional arguments are rare; `@dag("id")` is not.
                    if let Some(first) = c.args.first() {
                        let v = self.eval(first);
                        kw.push(("__positional".to_string(), v));
                    }
                    (c.func.as_ref(), kw)
                }
                other => (other, Vec::new()),
            };
            let path = match self.eval(target) {
                Val::Symbol(s) => s,
                _ => continue,
            };
            let mut parts = path.rsplit('.');
            let last = parts.next().unwrap_or("");
            let parent = parts.next().unwrap_or("");
            let mut kwargs = kwargs;
            let positional = kwargs.iter().position(|(k, _)| k == "__positional").map(|i| kwargs.remove(i).1);
            match (parent, last) {
                (_, "dag") => {
                    if let Some(p) = positional {
                        kwargs.insert(0, ("dag_id".into(), p));
                    }
                    kind = FuncKind::Dag { kwargs };
                }
                (_, "task_group") => {
                    if let Some(p) = positional {
                        kwargs.insert(0, ("group_id".into(), p));
                    }
                    kind = FuncKind::Group { kwargs };
                }
                (_, "task") => kind = FuncKind::Task { flavor: "python".into(), kwargs, setup, teardown },
                ("task", flavor) => kind = FuncKind::Task { flavor: flavor.into(), kwargs, setup, teardown },
                (_, "setup") => setup = true,
                (_, "teardown") => teardown = true,
                _ => {}
            }
        }
        if let FuncKind::Task { setup: s, teardown: t, .. } = &mut kind {
            *s |= setup;
            *t |= teardown;
        } else if setup || teardown {
            kind = FuncKind::Task { flavor: "python".into(), kwargs: Vec::new(), setup, teardown };
        }
        kind
    }

    // --- DAGs, groups, tasks ------------------------------------------------------------------

    fn new_dag(&mut self, dag_id: Option<Val>, kwargs: &Kwargs, line: usize) -> Val {
        let Some(Val::Str(dag_id)) = dag_id else {
            self.loss(line, "a `DAG(...)`", "its dag_id is not known at port time", "nothing for this DAG");
            return Val::Unknown("DAG".into());
        };
        let converted = airflow::dag_args(self, kwargs, line);
        self.dags.push(DagOut {
            dag_id,
            line,
            args: converted.args,
            default_args: converted.default_args,
            edges: Vec::new(),
            edge_set: HashSet::new(),
            labels: HashMap::new(),
            task_ids: HashSet::new(),
            group_ids: HashSet::new(),
        });
        let d = self.dags.len() - 1;
        self.last_dag = Some(d);
        Val::Dag(d)
    }

    fn current_dag(&self, kwargs: &Kwargs) -> Option<usize> {
        if let Some(Val::Dag(d)) = get(kwargs, "dag") {
            return Some(*d);
        }
        if let Some(Val::Group(g)) = get(kwargs, "task_group").or_else(|| get(kwargs, "parent_group")) {
            return Some(self.groups[*g].dag);
        }
        self.group_stack.last().map(|g| self.groups[*g].dag).or(self.dag_stack.last().copied()).or(self.last_dag)
    }

    fn child_id(&self, group: Option<usize>, label: &str) -> String {
        match group {
            Some(g) if self.groups[g].prefix => format!("{}.{label}", self.groups[g].full_id),
            _ => label.to_string(),
        }
    }

    fn new_group(&mut self, group_id: Option<Val>, kwargs: &Kwargs, line: usize, suffix: bool) -> Val {
        let Some(Val::Str(local)) = group_id else {
            self.loss(
                line,
                "a `TaskGroup(...)`",
                "its group_id is not known at port time",
                "no group: its tasks stand alone",
            );
            return Val::Unknown("TaskGroup".into());
        };
        let Some(dag) = self.current_dag(kwargs) else {
            self.loss(line, format!("task group `{local}`"), "it belongs to no DAG", "nothing");
            return Val::Unknown("TaskGroup".into());
        };
        let parent = match get(kwargs, "parent_group") {
            Some(Val::Group(g)) => Some(*g),
            _ => self.group_stack.last().copied(),
        };
        let prefix = !matches!(get(kwargs, "prefix_group_id"), Some(Val::Bool(false)));
        let mut local = local;
        if suffix || matches!(get(kwargs, "add_suffix_on_collision"), Some(Val::Bool(true))) {
            let core = local.clone();
            let mut n = 0;
            while self.dags[dag].group_ids.contains(&self.child_id(parent, &local)) {
                n += 1;
                local = format!("{core}__{n}");
            }
        }
        let full_id = self.child_id(parent, &local);
        self.dags[dag].group_ids.insert(full_id.clone());
        let args = airflow::group_args(self, kwargs, &full_id, line);
        self.groups.push(GroupOut { dag, full_id, local_id: local, parent, prefix, args });
        Val::Group(self.groups.len() - 1)
    }

    /// Declares a task of a classic operator class.
    fn new_task(&mut self, class: OperatorClass, class_name: &str, kwargs: Kwargs, c: &'a ast::ExprCall) -> Val {
        let line = self.line_of(c);
        let Some(Val::Str(local)) = get(&kwargs, "task_id").cloned() else {
            let shown = self.short_text(c);
            self.loss(line, format!("`{shown}`"), "its task_id is not known at port time", "nothing for this task");
            return Val::Unknown(class_name.to_string());
        };
        let ported = airflow::operator_args(self, class, class_name, &kwargs, line, &local);
        let comment = ported.comment.then(|| format!("port: was {}", self.short_text(c)));
        let teardown = matches!(get(&kwargs, "is_teardown"), Some(Val::Bool(true)));
        let t = self.add_task(&local, &kwargs, ported.operator, ported.args, comment, line);
        if let Val::Task(t) = t {
            self.xcom_edges(&kwargs.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), t, line);
            if teardown {
                self.teardown(t, line);
            }
        }
        t
    }

    /// Records a task; `kwargs` give `dag`/`task_group` when the file names them.
    pub fn add_task(
        &mut self,
        local: &str,
        kwargs: &Kwargs,
        operator: String,
        args: Vec<(String, String)>,
        comment: Option<String>,
        line: usize,
    ) -> Val {
        let Some(dag) = self.current_dag(kwargs) else {
            self.loss(line, format!("task `{local}`"), "it belongs to no DAG", "nothing for this task");
            return Val::Unknown(local.to_string());
        };
        if self.tasks.len() >= MAX_TASKS {
            self.loss(
                line,
                format!("task `{local}`"),
                format!("a file may declare at most {MAX_TASKS} tasks"),
                "nothing",
            );
            return Val::Unknown(local.to_string());
        }
        let group = match get(kwargs, "task_group") {
            Some(Val::Group(g)) => Some(*g),
            _ => self.group_stack.last().copied().filter(|g| self.groups[*g].dag == dag),
        };
        let full_id = self.child_id(group, local);
        self.dags[dag].task_ids.insert(full_id.clone());
        self.tasks.push(TaskOut { dag, full_id, local_id: local.to_string(), group, operator, args, comment, line });
        Val::Task(self.tasks.len() - 1)
    }

    /// A TaskFlow call: one task whose callable is the function, moved to the tasks module.
    #[allow(clippy::too_many_arguments)]
    fn taskflow(
        &mut self,
        id: usize,
        flavor: &str,
        deco: Kwargs,
        args: Vec<Val>,
        kwargs: Kwargs,
        c: &'a ast::ExprCall,
        (setup, teardown): (bool, bool),
    ) -> Val {
        let line = self.line_of(c);
        let name = self.funcs[id].def.name.to_string();
        let core = match get(&deco, "task_id") {
            Some(Val::Str(s)) => s.clone(),
            _ => name.clone(),
        };
        let Some(dag) = self.current_dag(&deco) else {
            self.loss(line, format!("task `{core}`"), "it belongs to no DAG", "nothing for this task");
            return Val::Unknown(core);
        };
        let group = self.group_stack.last().copied().filter(|g| self.groups[*g].dag == dag);
        // Airflow's `get_unique_task_id`: a second call of the same function gets `name__1`, ...
        let mut local = core.clone();
        let mut n = 0;
        while self.dags[dag].task_ids.contains(&self.child_id(group, &local)) {
            n += 1;
            local = format!("{core}__{n}");
        }
        let ported = airflow::taskflow_args(self, id, flavor, &deco, &args, &kwargs, line, &local);
        let comment = ported.comment.then(|| format!("port: was @task.{flavor} {name}(...)"));
        let t = self.add_task(&local, &deco, ported.operator, ported.args, comment, line);
        let Val::Task(t) = t else { return t };
        let mut inputs = args.clone();
        inputs.extend(kwargs.iter().map(|(_, v)| v.clone()));
        self.xcom_edges(&inputs, t, line);
        if setup {
            self.loss(
                line,
                format!("setup task `{}`", self.tasks[t].full_id),
                "rhaiflow has no setup/teardown tasks",
                "an ordinary task with ordinary edges",
            );
        }
        if teardown {
            self.teardown(t, line);
        }
        Val::XCom { task: t, key: None }
    }

    fn teardown(&mut self, t: usize, line: usize) {
        let id = self.tasks[t].full_id.clone();
        let task = &mut self.tasks[t];
        if !task.args.iter().any(|(k, _)| k == "trigger_rule") {
            task.args.push(("trigger_rule".into(), "\"all_done\"".into()));
        }
        self.loss(
            line,
            format!("teardown task `{id}`"),
            "rhaiflow has no setup/teardown tasks",
            "an ordinary task with `trigger_rule: \"all_done\"` and ordinary edges",
        );
    }

    /// Edges from every task whose result appears in `values` (XComArgs make dependencies).
    fn xcom_edges(&mut self, values: &[Val], to: usize, line: usize) {
        let mut found = Vec::new();
        for v in values {
            collect_xcoms(v, &mut found);
        }
        for from in found {
            if from != to {
                self.edge(from, to, None, line);
            }
        }
    }

    /// A callable's name in the tasks module; marks the function to be moved.
    pub fn callable_ref(&mut self, v: &Val, task_local: &str) -> Option<String> {
        match v {
            Val::Func { id, .. } => {
                let name = self.moved_name(*id);
                Some(format!("{}:{name}", self.module))
            }
            // A function imported from a module beside the DAG files (the dags folder is on
            // `sys.path` in Airflow as in rhaiflow's runner): referenced where it is.
            Val::Symbol(path) if !path.starts_with("airflow") && !path.starts_with("builtins.") => {
                let (module, func) = path.rsplit_once('.')?;
                Some(format!("{module}:{func}"))
            }
            Val::Lambda(src) => {
                let mut name: String =
                    task_local.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                if name.starts_with(|c: char| c.is_ascii_digit()) {
                    name.insert(0, '_');
                }
                name.push_str("_callable");
                let base = name.clone();
                let mut n = 1;
                while self.lambdas.iter().any(|(l, _)| *l == name) || self.moved_names.values().any(|m| *m == name) {
                    n += 1;
                    name = format!("{base}_{n}");
                }
                self.lambdas.push((name.clone(), src.clone()));
                Some(format!("{}:{name}", self.module))
            }
            _ => None,
        }
    }

    pub fn moved_name(&mut self, id: usize) -> String {
        if let Some(name) = self.moved_names.get(&id) {
            return name.clone();
        }
        let base = self.funcs[id].def.name.to_string();
        let mut name = base.clone();
        let mut n = 1;
        while self.moved_names.values().any(|m| *m == name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.moved_names.insert(id, name.clone());
        self.moved.push(id);
        name
    }

    /// The id a task has in the DAG, for XCom markers.
    pub fn task_id(&self, t: usize) -> String {
        self.tasks[t].full_id.clone()
    }

    /// Plain data for a task argument.
    pub fn data(&self, v: &Val, form: XComForm) -> Result<String, String> {
        rhai_data(v, form, &|t| self.tasks[t].full_id.clone())
    }

    fn set_task_attr(&mut self, t: usize, attr: &str, v: Val, line: usize) {
        let key = if attr == "doc" { "doc_md" } else { attr };
        let kinds = crate::script::task_keys();
        match kinds.iter().find(|(k, _)| *k == key) {
            Some((_, kind)) if !matches!(key, "task_id" | "dag" | "task_group") => {
                match airflow::convert(self, *kind, &v) {
                    Ok(text) => {
                        let args = &mut self.tasks[t].args;
                        args.retain(|(k, _)| k != key);
                        args.push((key.to_string(), text));
                    }
                    Err(why) => {
                        let id = self.tasks[t].full_id.clone();
                        self.loss(line, format!("`{id}.{attr} = ...`"), why, "nothing");
                    }
                }
            }
            _ => {
                let id = self.tasks[t].full_id.clone();
                self.loss(line, format!("`{id}.{attr} = ...`"), format!("rhaiflow tasks have no `{attr}`"), "nothing");
            }
        }
    }

    fn set_dag_attr(&mut self, d: usize, attr: &str, v: Val, line: usize) {
        match (attr, &v) {
            ("doc_md" | "description", Val::Str(s)) => {
                let args = &mut self.dags[d].args;
                args.retain(|(k, _)| k != attr);
                args.push((attr.to_string(), super::value::rhai_str(s)));
            }
            _ => {
                let id = self.dags[d].dag_id.clone();
                self.loss(
                    line,
                    format!("`{id}.{attr} = ...`"),
                    "only `doc_md` and `description` are set this way",
                    "nothing",
                );
            }
        }
    }

    // --- edges ---------------------------------------------------------------------------------

    /// The tasks a value stands for in an edge: a group is its roots (downstream side) or leaves
    /// (upstream side) at the time the edge is added, as in Airflow.
    fn side(&self, v: &Val, upstream: bool) -> Vec<usize> {
        match v {
            Val::Task(t) => vec![*t],
            Val::XCom { task, .. } => vec![*task],
            Val::List(l) | Val::Tuple(l) => l.iter().flat_map(|x| self.side(x, upstream)).collect(),
            Val::Group(g) => self.group_ends(*g, upstream),
            _ => Vec::new(),
        }
    }

    fn in_group(&self, t: usize, g: usize) -> bool {
        let mut cur = self.tasks[t].group;
        while let Some(c) = cur {
            if c == g {
                return true;
            }
            cur = self.groups[c].parent;
        }
        false
    }

    fn group_ends(&self, g: usize, leaves: bool) -> Vec<usize> {
        let dag = &self.dags[self.groups[g].dag];
        let members: Vec<usize> = (0..self.tasks.len()).filter(|t| self.in_group(*t, g)).collect();
        members
            .iter()
            .copied()
            .filter(|t| {
                !dag.edges.iter().any(|(u, d)| {
                    if leaves { *u == *t && members.contains(d) } else { *d == *t && members.contains(u) }
                })
            })
            .collect()
    }

    fn edge(&mut self, up: usize, down: usize, label: Option<&str>, line: usize) {
        let (du, dd) = (self.tasks[up].dag, self.tasks[down].dag);
        if du != dd {
            let (a, b) = (self.tasks[up].full_id.clone(), self.tasks[down].full_id.clone());
            self.loss(line, format!("edge `{a}` >> `{b}`"), "the tasks belong to different DAGs", "no edge");
            return;
        }
        let dag = &mut self.dags[du];
        if dag.edge_set.insert((up, down)) {
            dag.edges.push((up, down));
        }
        if let Some(l) = label {
            dag.labels.insert((up, down), l.to_string());
        }
    }

    fn shift(&mut self, l: Val, r: Val, line: usize) -> Val {
        match (&l, &r) {
            (_, Val::Label(label)) => {
                Val::LabelEdge { label: label.clone(), ups: self.side(&l, true), downs: Vec::new() }
            }
            (Val::LabelEdge { label, ups, .. }, _) => {
                let downs = self.side(&r, false);
                let (label, ups) = (label.clone(), ups.clone());
                for u in &ups {
                    for d in &downs {
                        self.edge(*u, *d, Some(&label), line);
                    }
                }
                r
            }
            _ => {
                let ups = self.side(&l, true);
                let downs = self.side(&r, false);
                if ups.is_empty() || downs.is_empty() {
                    if !matches!(l, Val::List(_)) && !matches!(r, Val::List(_)) {
                        self.loss(
                            line,
                            format!("`>>` between {} and {}", l.kind(), r.kind()),
                            "one side is not a task known at port time",
                            "no edge",
                        );
                    }
                    return r;
                }
                for u in &ups {
                    for d in &downs {
                        self.edge(*u, *d, None, line);
                    }
                }
                r
            }
        }
    }

    /// `l << r`: edges from `r` to `l`; returns `r` as Python does.
    fn shift_left(&mut self, l: Val, r: Val, line: usize) -> Val {
        match (&l, &r) {
            (_, Val::Label(label)) => {
                Val::LabelEdge { label: label.clone(), ups: Vec::new(), downs: self.side(&l, false) }
            }
            (Val::LabelEdge { label, downs, .. }, _) => {
                let ups = self.side(&r, true);
                let (label, downs) = (label.clone(), downs.clone());
                for u in &ups {
                    for d in &downs {
                        self.edge(*u, *d, Some(&label), line);
                    }
                }
                r
            }
            _ => {
                self.shift(r.clone(), l, line);
                r
            }
        }
    }

    /// One step of `chain(...)`: two lists of the same length pair up by position.
    fn chain_pair(&mut self, a: &Val, b: &Val, line: usize) {
        match (a, b) {
            (Val::List(x) | Val::Tuple(x), Val::List(y) | Val::Tuple(y)) => {
                if x.len() != y.len() {
                    self.loss(
                        line,
                        "`chain` of two lists",
                        "lists of different lengths (Airflow refuses them)",
                        "no edges",
                    );
                    return;
                }
                for (u, d) in x.iter().zip(y) {
                    self.shift(u.clone(), d.clone(), line);
                }
            }
            _ => {
                self.shift(a.clone(), b.clone(), line);
            }
        }
    }
}

const BUILTINS: &[&str] = &[
    "range",
    "len",
    "str",
    "repr",
    "int",
    "float",
    "bool",
    "list",
    "tuple",
    "set",
    "dict",
    "enumerate",
    "zip",
    "sorted",
    "reversed",
    "min",
    "max",
    "sum",
    "abs",
    "print",
];

fn collect_xcoms(v: &Val, out: &mut Vec<usize>) {
    match v {
        Val::XCom { task, .. } => out.push(*task),
        Val::List(l) | Val::Tuple(l) => l.iter().for_each(|x| collect_xcoms(x, out)),
        Val::Dict(d) => d.iter().for_each(|(_, x)| collect_xcoms(x, out)),
        _ => {}
    }
}

fn constant(c: &Constant) -> Val {
    match c {
        Constant::None => Val::None,
        Constant::Bool(b) => Val::Bool(*b),
        Constant::Str(s) => Val::Str(s.clone()),
        Constant::Int(i) => i.to_string().parse().map(Val::Int).unwrap_or(Val::Unknown("a big integer".into())),
        Constant::Float(f) => Val::Float(*f),
        Constant::Tuple(t) => Val::Tuple(t.iter().map(constant).collect()),
        Constant::Bytes(_) | Constant::Complex { .. } | Constant::Ellipsis => Val::Unknown("a constant".into()),
    }
}

fn num(v: &Val) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        _ => None,
    }
}

fn index(len: usize, i: i64) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

/// Python's `l[lo:hi:step]` for a positive step.
fn slice(l: &[Val], lo: Option<i64>, hi: Option<i64>, step: Option<i64>) -> Option<Vec<Val>> {
    let len = l.len() as i64;
    let step = step.unwrap_or(1);
    if step <= 0 {
        return None;
    }
    let clamp = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    let (lo, hi) = (clamp(lo.unwrap_or(0)), clamp(hi.unwrap_or(len)));
    Some((lo..hi.max(lo)).step_by(step as usize).map(|i| l[i as usize].clone()).collect())
}

fn same(a: &Val, b: &Val) -> bool {
    compare(a, &ast::CmpOp::Eq, b) == Some(true)
}

fn dict_set(d: &mut Vec<(Val, Val)>, k: Val, v: Val) {
    match d.iter_mut().find(|(x, _)| same(x, &k)) {
        Some(slot) => slot.1 = v,
        None => d.push((k, v)),
    }
}

fn compare_order(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Duration(x), Val::Duration(y)) => Some(x.cmp(y)),
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

fn compare(a: &Val, op: &ast::CmpOp, b: &Val) -> Option<bool> {
    use ast::CmpOp as C;
    let eq = || -> Option<bool> {
        Some(match (a, b) {
            (Val::None, Val::None) => true,
            (Val::Unknown(_), _) | (_, Val::Unknown(_)) => return None,
            (Val::None, _) | (_, Val::None) => false,
            (Val::Str(x), Val::Str(y)) => x == y,
            (Val::Bool(x), Val::Bool(y)) => x == y,
            (Val::List(x), Val::List(y)) | (Val::Tuple(x), Val::Tuple(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
            }
            (Val::Duration(x), Val::Duration(y)) => x == y,
            (Val::Task(x), Val::Task(y)) => x == y,
            _ => {
                let (x, y) = (num(a)?, num(b)?);
                x == y
            }
        })
    };
    match op {
        C::Eq => eq(),
        C::NotEq => eq().map(|e| !e),
        C::Is => match (a, b) {
            (Val::Unknown(_), _) | (_, Val::Unknown(_)) => None,
            (Val::None, Val::None) => Some(true),
            (Val::None, _) | (_, Val::None) => Some(false),
            (Val::Bool(x), Val::Bool(y)) => Some(x == y),
            _ => None,
        },
        C::IsNot => compare(a, &C::Is, b).map(|x| !x),
        C::Lt => compare_order(a, b).map(|o| o.is_lt()),
        C::LtE => compare_order(a, b).map(|o| o.is_le()),
        C::Gt => compare_order(a, b).map(|o| o.is_gt()),
        C::GtE => compare_order(a, b).map(|o| o.is_ge()),
        C::In | C::NotIn => {
            let found = match b {
                Val::Str(s) => Some(s.contains(a.as_str()?)),
                Val::List(l) | Val::Tuple(l) => Some(l.iter().any(|x| same(x, a))),
                Val::Dict(d) => Some(d.iter().any(|(k, _)| same(k, a))),
                _ => None,
            }?;
            Some(if matches!(op, C::In) { found } else { !found })
        }
    }
}

fn duration(args: &[Val], kwargs: &Kwargs) -> Val {
    let mut secs = 0f64;
    let units = [
        ("weeks", 604_800.0),
        ("days", 86_400.0),
        ("hours", 3_600.0),
        ("minutes", 60.0),
        ("seconds", 1.0),
        ("milliseconds", 0.001),
        ("microseconds", 0.000_001),
    ];
    // timedelta's positional order: days, seconds, microseconds, milliseconds, minutes, hours, weeks.
    let positional = [86_400.0, 1.0, 0.000_001, 0.001, 60.0, 3_600.0, 604_800.0];
    for (i, a) in args.iter().enumerate() {
        let (Some(n), Some(unit)) = (num(a), positional.get(i)) else { return Val::Unknown("timedelta".into()) };
        secs += n * unit;
    }
    for (k, v) in kwargs {
        let Some((_, unit)) = units.iter().find(|(u, _)| u == k) else { return Val::Unknown("timedelta".into()) };
        let Some(n) = num(v) else { return Val::Unknown("timedelta".into()) };
        secs += n * unit;
    }
    if !secs.is_finite() || secs.abs() > 3.2e9 {
        return Val::Unknown("timedelta".into());
    }
    Val::Duration(secs.round() as i64)
}

fn tz_name(v: &Val) -> Option<String> {
    match v {
        Val::Str(s) => Some(s.clone()),
        Val::Symbol(s) if s.ends_with("utc") || s.ends_with("UTC") => Some("UTC".into()),
        _ => None,
    }
}

fn datetime(args: &[Val], kwargs: &Kwargs, tz: Option<Val>) -> Val {
    let names = ["year", "month", "day", "hour", "minute", "second"];
    let mut parts = [0i64, 1, 1, 0, 0, 0];
    for (i, name) in names.iter().enumerate() {
        let v = args.get(i).or_else(|| get(kwargs, name));
        match v {
            Some(Val::Int(n)) => parts[i] = *n,
            Some(_) => return Val::Unknown("datetime".into()),
            None if i < 3 => return Val::Unknown("datetime".into()),
            None => {}
        }
    }
    let date = chrono::NaiveDate::from_ymd_opt(parts[0] as i32, parts[1] as u32, parts[2] as u32);
    let at = date.and_then(|d| d.and_hms_opt(parts[3] as u32, parts[4] as u32, parts[5] as u32));
    match at {
        Some(at) => Val::DateTime(DateVal::Fixed { at, tz: tz.as_ref().and_then(tz_name) }),
        None => Val::Unknown("datetime".into()),
    }
}

fn parse_date(s: &str, tz: Option<Val>) -> Option<Val> {
    let s = s.trim();
    let at = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN))
        })?;
    Some(Val::DateTime(DateVal::Fixed { at, tz: tz.as_ref().and_then(tz_name) }))
}

fn shift_date(d: DateVal, secs: i64) -> Val {
    match d {
        DateVal::Fixed { at, tz } => match at.checked_add_signed(chrono::TimeDelta::seconds(secs)) {
            Some(at) => Val::DateTime(DateVal::Fixed { at, tz }),
            None => Val::Unknown("date arithmetic".into()),
        },
        DateVal::DaysAgo(n) if secs % 86_400 == 0 => Val::DateTime(DateVal::DaysAgo(n - secs / 86_400)),
        DateVal::DaysAgo(_) => Val::Unknown("days_ago(...) plus a part of a day".into()),
    }
}

fn strftime(at: &chrono::NaiveDateTime, fmt: &str) -> Option<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    write!(out, "{}", at.format(fmt)).ok()?;
    Some(out)
}

fn string_method(s: &str, m: &str, args: &[Val], kwargs: &Kwargs) -> Option<Val> {
    let arg_str = |i: usize| args.get(i).and_then(|a| a.as_str());
    Some(match m {
        "format" => Val::Str(brace_format(s, args, kwargs)?),
        "join" => {
            let items = match args.first()? {
                Val::List(l) | Val::Tuple(l) => l.clone(),
                _ => return None,
            };
            let parts: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_string)).collect();
            Val::Str(parts?.join(s))
        }
        "upper" => Val::Str(s.to_uppercase()),
        "lower" => Val::Str(s.to_lowercase()),
        "strip" => Val::Str(s.trim().to_string()),
        "lstrip" => Val::Str(s.trim_start().to_string()),
        "rstrip" => Val::Str(s.trim_end().to_string()),
        "title" | "capitalize" => {
            let mut c = s.chars();
            Val::Str(
                c.next()
                    .map(|f| format!("{}{}", f.to_uppercase().collect::<String>(), c.as_str().to_lowercase()))
                    .unwrap_or_default(),
            )
        }
        "replace" => Val::Str(s.replace(arg_str(0)?, arg_str(1)?)),
        "startswith" => Val::Bool(s.starts_with(arg_str(0)?)),
        "endswith" => Val::Bool(s.ends_with(arg_str(0)?)),
        "split" => match arg_str(0) {
            Some(sep) => Val::List(s.split(sep).map(|p| Val::Str(p.to_string())).collect()),
            None => Val::List(s.split_whitespace().map(|p| Val::Str(p.to_string())).collect()),
        },
        "zfill" => {
            let Val::Int(w) = args.first()? else { return None };
            Val::Str(format!("{s:0>width$}", width = (*w).clamp(0, 1000) as usize))
        }
        _ => return None,
    })
}

/// `str.format` with `{}`, `{0}`, `{name}` and simple specs.
fn brace_format(fmt: &str, args: &[Val], kwargs: &Kwargs) -> Option<String> {
    let mut out = String::new();
    let mut auto = 0;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut field = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    field.push(c);
                }
                let (name, spec) = field.split_once(':').unwrap_or((&field, ""));
                let v = if name.is_empty() {
                    auto += 1;
                    args.get(auto - 1)?
                } else if let Ok(i) = name.parse::<usize>() {
                    args.get(i)?
                } else {
                    get(kwargs, name)?
                };
                let text = py_str(v)?;
                out.push_str(&apply_spec(v, &text, spec)?);
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// A format spec: `[[fill]align][0][width][.precision][type]`.
fn apply_spec(v: &Val, text: &str, spec: &str) -> Option<String> {
    if spec.is_empty() {
        return Some(text.to_string());
    }
    let mut rest = spec;
    let mut fill = ' ';
    let mut align = None;
    let chars: Vec<char> = rest.chars().collect();
    if chars.len() >= 2 && matches!(chars[1], '<' | '>' | '^') {
        fill = chars[0];
        align = Some(chars[1]);
        rest = &rest[chars[0].len_utf8() + 1..];
    } else if matches!(chars.first(), Some('<' | '>' | '^')) {
        align = chars.first().copied();
        rest = &rest[1..];
    }
    if let Some(r) = rest.strip_prefix('0') {
        fill = '0';
        align = align.or(Some('>'));
        rest = r;
    }
    let width_len = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let width: usize = rest[..width_len].parse().unwrap_or(0).min(1000);
    rest = &rest[width_len..];
    let mut precision = None;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.chars().take_while(|c| c.is_ascii_digit()).count();
        precision = r[..n].parse::<usize>().ok();
        rest = &r[n..];
    }
    let body = match (rest, v) {
        ("f", Val::Float(f)) => format!("{f:.*}", precision.unwrap_or(6)),
        ("", Val::Float(f)) if precision.is_some() => format!("{f:.*}", precision.unwrap_or(6)),
        ("" | "s", _) => text.to_string(),
        ("d", Val::Int(i)) => i.to_string(),
        ("f", Val::Int(i)) => format!("{:.*}", precision.unwrap_or(6), *i as f64),
        _ => return None,
    };
    let len = body.chars().count();
    if len >= width {
        return Some(body);
    }
    let pad = width - len;
    let numeric = matches!(v, Val::Int(_) | Val::Float(_));
    let fill_s = |n: usize| fill.to_string().repeat(n);
    Some(match align.unwrap_or(if numeric { '>' } else { '<' }) {
        '<' => format!("{body}{}", fill_s(pad)),
        '^' => format!("{}{body}{}", fill_s(pad / 2), fill_s(pad - pad / 2)),
        _ => format!("{}{body}", fill_s(pad)),
    })
}

/// `"%s-%d" % args`.
fn percent_format(fmt: &str, args: &Val) -> Option<String> {
    let items: Vec<Val> = match args {
        Val::Tuple(t) => t.clone(),
        other => vec![other.clone()],
    };
    let mut out = String::new();
    let mut next = 0;
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&p) = chars.peek() {
            chars.next();
            if p.is_ascii_alphabetic() || p == '%' {
                spec.push(p);
                break;
            }
            spec.push(p);
        }
        let conv = spec.chars().last()?;
        if conv == '%' {
            out.push('%');
            continue;
        }
        if let Some(name) = spec.strip_prefix('(').and_then(|s| s.split_once(')')).map(|(n, _)| n.to_string()) {
            let Val::Dict(d) = args else { return None };
            let v = d.iter().find(|(k, _)| k.as_str() == Some(&name)).map(|(_, v)| v)?;
            out.push_str(&py_str(v)?);
            continue;
        }
        let v = items.get(next)?;
        next += 1;
        let flags = &spec[..spec.len() - 1];
        let text = match conv {
            's' => py_str(v)?,
            'r' => py_repr(v)?,
            'd' | 'i' => match v {
                Val::Int(i) => i.to_string(),
                Val::Float(f) => (*f as i64).to_string(),
                _ => return None,
            },
            'f' => format!("{:.*}", flags.split('.').nth(1).and_then(|p| p.parse().ok()).unwrap_or(6), num(v)?),
            _ => return None,
        };
        let width_text = flags.split('.').next().unwrap_or("");
        let zero = width_text.starts_with('0');
        let left = width_text.starts_with('-');
        let width: usize = width_text.trim_start_matches(['0', '-']).parse().unwrap_or(0).min(1000);
        let len = text.chars().count();
        if len < width {
            let pad = if zero { "0" } else { " " }.repeat(width - len);
            if left { out.push_str(&format!("{text}{pad}")) } else { out.push_str(&format!("{pad}{text}")) }
        } else {
            out.push_str(&text);
        }
    }
    Some(out)
}
