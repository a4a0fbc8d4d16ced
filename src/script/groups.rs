//! `TaskGroup` and `Label`: Airflow's structures for drawing a DAG, as the DAG language holds them.
//!
//! A group is declared with `let g = TaskGroup("extract", #{ ... })` and a task joins it with
//! `task_group: g` (Rhai has no `with` blocks). Its tasks' ids are prefixed with the group's id
//! (`extract.load`) unless `prefix_group_id: false`; its `default_args` apply over the DAG's (the
//! innermost group's first); `parent_group: outer` nests it. In `>>`, `<<`, `set_upstream`,
//! `set_downstream` and `chain` a group stands for its roots (as a downstream side) or its leaves
//! (as an upstream side), computed when the edge is added, as in Airflow. `a >> Label("why") >> b`
//! labels the edges it adds. Both are kept in the spec (`DagSpec::task_groups`, `edge_labels`).

use super::args::{Args, GroupHandle, KeySpec, Kind, TaskHandle, Value};
use super::error::{ScriptError, ScriptResult};
use super::state::FileState;
use crate::model::{EdgeLabel, SourcePos, TaskGroupSpec};
use std::collections::HashSet;

/// The keys `TaskGroup(...)` takes.
pub const GROUP_KEYS: &[KeySpec] = &[
    ("group_id", Kind::Str),
    ("dag", Kind::Dag),
    ("parent_group", Kind::Group),
    ("prefix_group_id", Kind::Bool),
    ("tooltip", Kind::Str),
    ("default_args", Kind::Map),
];

/// One declared group.
#[derive(Debug, Clone)]
pub struct GroupDecl {
    /// The id with its parents' prefixes (`etl.extract`), unique in the DAG.
    pub full_id: String,
    pub parent: Option<usize>,
    pub prefix: bool,
    pub tooltip: Option<String>,
    pub default_args: Args,
    pub pos: Option<SourcePos>,
    /// Tasks declared directly in it.
    pub tasks: Vec<usize>,
    /// Groups declared directly in it.
    pub children: Vec<usize>,
}

impl GroupDecl {
    /// Airflow's `child_id`: a member's id with this group's prefix, when it prefixes.
    pub fn child_id(&self, label: &str) -> String {
        if self.prefix { format!("{}.{label}", self.full_id) } else { label.to_string() }
    }
}

/// `Label("on error")`, or one side of `a >> Label(...)` waiting for the other.
#[derive(Debug, Clone)]
pub struct LabelValue {
    pub label: String,
    /// `a >> Label(..)`: the upstream side, waiting for `>> b`.
    pub ups: Option<Vec<TaskHandle>>,
    /// `b << Label(..)`: the downstream side, waiting for `<< a`.
    pub downs: Option<Vec<TaskHandle>>,
}

/// Group ids hold letters, digits, `_` and `-` (a `.` would make prefixes ambiguous), as in Airflow.
fn check_group_id(id: &str) -> ScriptResult<()> {
    if id.is_empty() || id.len() > 200 {
        return Err(ScriptError::new("a TaskGroup's `group_id` must be 1 to 200 characters long"));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))) {
        return Err(ScriptError::new(format!(
            "group_id `{id}` contains `{bad}`; use only letters, digits, `_` and `-`"
        ))
        .with_help("nest groups with `parent_group: outer` instead of writing `outer.inner`"));
    }
    Ok(())
}

impl FileState {
    /// `TaskGroup("extract", #{ ... })`.
    pub fn declare_group(
        &mut self,
        group_id: Option<String>,
        mut args: Args,
        default_args: Args,
        pos: Option<SourcePos>,
    ) -> ScriptResult<GroupHandle> {
        let raw_id = match (group_id, args.str("group_id")) {
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(ScriptError::new("`TaskGroup` needs a group_id: `TaskGroup(\"extract\", #{ ... })`"));
            }
        };
        check_group_id(&raw_id)?;
        self.check_deadline()?;
        let parent = match args.take("parent_group") {
            Some(Value::Group(g)) => Some(g),
            _ => None,
        };
        let dag = match (args.get("dag"), parent) {
            (Some(Value::Dag(d)), Some(p)) if *d != p.dag => {
                return Err(ScriptError::new(format!(
                    "TaskGroup `{raw_id}` is given DAG `{}` but its parent_group belongs to DAG `{}`",
                    self.dags[*d].dag_id, self.dags[p.dag].dag_id
                ))
                .at_key("parent_group"));
            }
            (Some(Value::Dag(d)), _) => *d,
            (_, Some(p)) => p.dag,
            _ => self.dags.len().checked_sub(1).ok_or_else(|| {
                ScriptError::new(format!("TaskGroup `{raw_id}` has no DAG"))
                    .with_help("declare `let dag = DAG(\"my_dag\", #{ ... });` before the group, or pass `dag: dag`")
            })?,
        };
        let full_id = match parent {
            Some(p) => self.dags[dag].groups[p.group].child_id(&raw_id),
            None => raw_id.clone(),
        };
        let decl = &self.dags[dag];
        if let Some(other) = decl.groups.iter().find(|g| g.full_id == full_id) {
            return Err(ScriptError::new(format!(
                "duplicate group_id `{full_id}` in DAG `{}`; first declared at {}",
                decl.dag_id,
                self.location(other.pos)
            )));
        }
        if let Some(&t) = decl.task_index.get(&full_id) {
            return Err(ScriptError::new(format!(
                "group_id `{full_id}` is the id of a task of DAG `{}`, declared at {}",
                decl.dag_id,
                self.location(decl.tasks[t].pos)
            )));
        }
        self.spend(256 + args.approx_bytes() + default_args.approx_bytes())?;
        let group = GroupDecl {
            full_id,
            parent: parent.map(|p| p.group),
            prefix: args.bool("prefix_group_id").unwrap_or(true),
            tooltip: args.str("tooltip"),
            default_args,
            pos,
            tasks: Vec::new(),
            children: Vec::new(),
        };
        let decl = &mut self.dags[dag];
        let idx = decl.groups.len();
        decl.groups.push(group);
        if let Some(p) = parent {
            decl.groups[p.group].children.push(idx);
        }
        Ok(GroupHandle { dag, group: idx })
    }

    /// For a task declared with `task_group: g`: its id with the group's prefix, and the groups'
    /// `default_args` (innermost first) filled into `args`. Checks the group belongs to `dag`.
    pub fn apply_group(
        &self,
        group: GroupHandle,
        dag: usize,
        task_id: &str,
        args: &mut Args,
        allowed: &[KeySpec],
    ) -> ScriptResult<String> {
        if group.dag != dag {
            return Err(ScriptError::new(format!(
                "task `{task_id}` is in DAG `{}` but its task_group `{}` belongs to DAG `{}`",
                self.dags[dag].dag_id, self.dags[group.dag].groups[group.group].full_id, self.dags[group.dag].dag_id
            ))
            .at_key("task_group"));
        }
        let groups = &self.dags[dag].groups;
        let mut at = Some(group.group);
        while let Some(g) = at {
            args.fill_from(&groups[g].default_args, allowed);
            at = groups[g].parent;
        }
        Ok(groups[group.group].child_id(task_id))
    }

    /// Every task of a group and of the groups nested in it.
    fn group_members(&self, g: GroupHandle) -> Vec<usize> {
        let groups = &self.dags[g.dag].groups;
        let mut out = Vec::new();
        let mut stack = vec![g.group];
        while let Some(i) = stack.pop() {
            out.extend(&groups[i].tasks);
            stack.extend(&groups[i].children);
        }
        out.sort_unstable();
        out
    }

    /// The tasks a group stands for in an edge: its roots (no upstream inside the group) when it
    /// is the downstream side, its leaves (no downstream inside) when it is the upstream side.
    pub fn group_ends(&self, g: GroupHandle, upstream_side: bool) -> ScriptResult<Vec<TaskHandle>> {
        let members = self.group_members(g);
        let decl = &self.dags[g.dag];
        if members.is_empty() {
            return Err(ScriptError::new(format!(
                "TaskGroup `{}` has no tasks yet, so it cannot be joined with other tasks",
                decl.groups[g.group].full_id
            ))
            .with_help("declare the group's tasks (with `task_group: g`) before `>>`, `<<` or `chain` use the group"));
        }
        let inside: HashSet<usize> = members.iter().copied().collect();
        let mut linked_inside = HashSet::new();
        for &(up, down, _) in &decl.edges {
            if inside.contains(&up) && inside.contains(&down) {
                linked_inside.insert(if upstream_side { up } else { down });
            }
        }
        Ok(members
            .into_iter()
            .filter(|t| !linked_inside.contains(t))
            .map(|task| TaskHandle { dag: g.dag, task })
            .collect())
    }

    /// Records that a task was declared in a group.
    pub fn join_group(&mut self, group: GroupHandle, task: usize) {
        self.dags[group.dag].groups[group.group].tasks.push(task);
    }

    /// Labels the edge `up >> down` (the edge is added first).
    pub fn label_edge(
        &mut self,
        up: TaskHandle,
        down: TaskHandle,
        label: &str,
        pos: Option<SourcePos>,
    ) -> ScriptResult<()> {
        self.add_edge(up, down, pos)?;
        self.spend(label.len())?;
        self.dags[up.dag].labels.insert((up.task, down.task), label.to_string());
        Ok(())
    }

    pub fn group_id(&self, g: GroupHandle) -> String {
        self.dags[g.dag].groups[g.group].full_id.clone()
    }

    /// The groups and labels of a DAG as the spec keeps them.
    pub fn group_specs(&self, decl: &super::state::DagDecl) -> (Vec<TaskGroupSpec>, Vec<EdgeLabel>) {
        let groups = decl
            .groups
            .iter()
            .map(|g| TaskGroupSpec {
                group_id: g.full_id.clone(),
                parent_group: g.parent.map(|p| decl.groups[p].full_id.clone()),
                tooltip: g.tooltip.clone(),
                prefix_group_id: g.prefix,
            })
            .collect();
        let mut labels: Vec<EdgeLabel> = decl
            .labels
            .iter()
            .map(|((up, down), label)| EdgeLabel {
                upstream: decl.tasks[*up].spec.task_id.clone(),
                downstream: decl.tasks[*down].spec.task_id.clone(),
                label: label.clone(),
            })
            .collect();
        labels.sort_by(|a, b| (&a.upstream, &a.downstream).cmp(&(&b.upstream, &b.downstream)));
        (groups, labels)
    }
}
