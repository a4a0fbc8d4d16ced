//! The task graph of one DAG (petgraph): validation with whole cycle paths, topological order,
//! the ready set under trigger rules, and effective priority weights (`weight_rule`).

use crate::model::{DagSpec, TaskState, TriggerRule, WeightRule};
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

/// Why a DAG's graph is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("DAG `{dag_id}` has a cycle: {}", path.join(" -> "))]
    Cycle { dag_id: String, path: Vec<String> },
    #[error("task `{task_id}` depends on unknown task `{upstream}`")]
    UnknownUpstream { task_id: String, upstream: String },
}

/// A DAG's tasks as a graph; edges point downstream.
pub struct TaskGraph {
    graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
}

impl TaskGraph {
    pub fn build(spec: &DagSpec) -> Result<TaskGraph, GraphError> {
        let mut graph = DiGraph::with_capacity(spec.tasks.len(), spec.tasks.len());
        let mut index = HashMap::with_capacity(spec.tasks.len());
        for t in &spec.tasks {
            index.insert(t.task_id.clone(), graph.add_node(t.task_id.clone()));
        }
        for t in &spec.tasks {
            for up in &t.upstream {
                let from = *index
                    .get(up)
                    .ok_or_else(|| GraphError::UnknownUpstream { task_id: t.task_id.clone(), upstream: up.clone() })?;
                graph.add_edge(from, index[&t.task_id], ());
            }
        }
        let g = TaskGraph { graph, index };
        g.check_acyclic(&spec.dag_id)?;
        Ok(g)
    }

    /// Task ids upstream first; among tasks that are ready together, declaration order (Kahn's algorithm).
    pub fn topological_order(&self) -> Vec<&str> {
        use std::cmp::Reverse;
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| self.graph.neighbors_directed(n, petgraph::Direction::Incoming).count())
            .collect();
        let mut ready: std::collections::BinaryHeap<Reverse<usize>> =
            indegree.iter().enumerate().filter(|(_, d)| **d == 0).map(|(i, _)| Reverse(i)).collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(Reverse(i)) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(self.graph[n].as_str());
            for m in self.graph.neighbors(n) {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.push(Reverse(m.index()));
                }
            }
        }
        order
    }

    /// Every task reachable downstream of `task_id` (not including it).
    pub fn downstream_of(&self, task_id: &str) -> Vec<&str> {
        let Some(&start) = self.index.get(task_id) else { return Vec::new() };
        let mut dfs = petgraph::visit::Dfs::new(&self.graph, start);
        let mut out = Vec::new();
        while let Some(n) = dfs.next(&self.graph) {
            if n != start {
                out.push(self.graph[n].as_str());
            }
        }
        out
    }

    fn check_acyclic(&self, dag_id: &str) -> Result<(), GraphError> {
        if toposort(&self.graph, None).is_ok() {
            return Ok(());
        }
        // petgraph reports only one node of a cycle: find its strongly connected component,
        // then walk inside it back to the start for the whole path.
        for scc in tarjan_scc(&self.graph) {
            if scc.len() < 2 {
                continue;
            }
            let mut members: Vec<NodeIndex> = scc.clone();
            members.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            let start = members[0];
            let path = self.cycle_from(start, &scc);
            return Err(GraphError::Cycle { dag_id: dag_id.to_string(), path });
        }
        Ok(())
    }

    /// A shortest path `start -> ... -> start` within one component (breadth-first).
    fn cycle_from(&self, start: NodeIndex, component: &[NodeIndex]) -> Vec<String> {
        let inside: std::collections::HashSet<NodeIndex> = component.iter().copied().collect();
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self.graph.neighbors(n).filter(|m| inside.contains(m)).collect();
            next.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            for m in next {
                if m == start {
                    let mut path = vec![self.graph[start].clone()];
                    let mut cur = n;
                    let mut back = vec![];
                    while cur != start {
                        back.push(self.graph[cur].clone());
                        cur = parent[&cur];
                    }
                    back.reverse();
                    path.extend(back);
                    path.push(self.graph[start].clone());
                    return path;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(m) {
                    e.insert(n);
                    queue.push_back(m);
                }
            }
        }
        vec![self.graph[start].clone()]
    }
}

/// Counts of a task's direct upstreams by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    pub total: usize,
    pub success: usize,
    pub skipped: usize,
    pub failed: usize,
    pub upstream_failed: usize,
    /// Finished in any way (success, skipped, failed, upstream_failed, removed).
    pub done: usize,
}

impl UpstreamCounts {
    pub fn add(&mut self, state: TaskState) {
        self.total += 1;
        match state {
            TaskState::Success => self.success += 1,
            TaskState::Skipped => self.skipped += 1,
            TaskState::Failed => self.failed += 1,
            TaskState::UpstreamFailed => self.upstream_failed += 1,
            _ => {}
        }
        if state.is_finished() {
            self.done += 1;
        }
    }
}

/// What a trigger rule decides for a task whose upstreams are in `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not yet decidable: wait for more upstreams.
    Wait,
    Run,
    Skip,
    UpstreamFailed,
}

/// Airflow's trigger rule semantics (`TriggerRuleDep`), including when a rule can no longer be met.
pub fn readiness(rule: TriggerRule, c: UpstreamCounts) -> Readiness {
    use Readiness::*;
    if c.total == 0 {
        return Run;
    }
    let all_done = c.done == c.total;
    let failed = c.failed + c.upstream_failed;
    match rule {
        TriggerRule::Always => Run,
        TriggerRule::AllSuccess => {
            if failed > 0 {
                UpstreamFailed
            } else if c.skipped > 0 {
                Skip
            } else if c.success == c.total {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllFailed => {
            if c.success > 0 || c.skipped > 0 {
                Skip
            } else if failed == c.total {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllDone => {
            if all_done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllSkipped => {
            if c.success > 0 || failed > 0 {
                Skip
            } else if c.skipped == c.total {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::OneSuccess => {
            if c.success > 0 {
                Run
            } else if all_done {
                if failed > 0 { UpstreamFailed } else { Skip }
            } else {
                Wait
            }
        }
        TriggerRule::OneFailed => {
            if failed > 0 {
                Run
            } else if all_done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::OneDone => {
            if c.success > 0 || failed > 0 {
                Run
            } else if all_done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailed => {
            if failed > 0 {
                UpstreamFailed
            } else if all_done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => {
            if failed > 0 {
                UpstreamFailed
            } else if !all_done {
                Wait
            } else if c.success > 0 {
                Run
            } else {
                Skip
            }
        }
        TriggerRule::NoneSkipped => {
            if c.skipped > 0 {
                Skip
            } else if all_done {
                Run
            } else {
                Wait
            }
        }
    }
}

/// Each task's effective priority (Airflow's `priority_weight_total`), by index in `spec.tasks`:
/// its own `priority_weight` plus, under `weight_rule: "downstream"` (the default), the weights of
/// every task downstream of it (each counted once), under `"upstream"` those of every task
/// upstream of it, under `"absolute"` nothing more. Clamped to 32 bits, as Airflow stores it.
///
/// The sets of relatives are bitsets built in topological order, 1,024 tasks (columns) at a
/// time: O(edges × tasks / 64) words and 128 bytes per task held at once, so a 20,000-task DAG
/// costs milliseconds and 2.5 MiB, not the tasks × edges of a walk per task.
pub fn priority_weights(spec: &DagSpec) -> Vec<i64> {
    let n = spec.tasks.len();
    let own: Vec<i64> = spec.tasks.iter().map(|t| t.priority_weight).collect();
    let mut totals = own.clone();
    let index: HashMap<&str, usize> = spec.tasks.iter().enumerate().map(|(i, t)| (t.task_id.as_str(), i)).collect();
    let mut ups: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut downs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, t) in spec.tasks.iter().enumerate() {
        for u in t.upstream.iter().filter_map(|u| index.get(u.as_str())) {
            ups[i].push(*u);
            downs[*u].push(i);
        }
    }
    if downs.iter().all(Vec::is_empty) {
        return totals.into_iter().map(|w| w.clamp(i64::from(i32::MIN), i64::from(i32::MAX))).collect();
    }
    let order = kahn(&ups, &downs);
    for rule in [WeightRule::Downstream, WeightRule::Upstream] {
        let wanted: Vec<bool> = spec.tasks.iter().map(|t| t.weight_rule == rule).collect();
        if !wanted.contains(&true) {
            continue;
        }
        // Relatives in the rule's direction, visited so each task's are known before it is.
        let (next, visit): (&[Vec<usize>], Vec<usize>) = match rule {
            WeightRule::Downstream => (&downs, order.iter().rev().copied().collect()),
            _ => (&ups, order.clone()),
        };
        add_relatives(&own, next, &visit, &wanted, &mut totals);
    }
    totals.into_iter().map(|w| w.clamp(i64::from(i32::MIN), i64::from(i32::MAX))).collect()
}

/// A topological order of indices (upstream first); tasks on a cycle (never in a valid DAG) are left out.
fn kahn(ups: &[Vec<usize>], downs: &[Vec<usize>]) -> Vec<usize> {
    let mut indegree: Vec<usize> = ups.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..ups.len()).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(ups.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &downs[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(d);
            }
        }
    }
    order
}

/// Adds to `totals[i]` (for each `wanted` task) the weights of every task reachable from it through
/// `next`; `visit` lists tasks so that each comes after all of its `next` ones.
fn add_relatives(own: &[i64], next: &[Vec<usize>], visit: &[usize], wanted: &[bool], totals: &mut [i64]) {
    const BLOCK: usize = 1024;
    const DISTINCT: usize = 16;
    let n = own.len();
    for lo in (0..n).step_by(BLOCK) {
        let hi = (lo + BLOCK).min(n);
        let words = (hi - lo).div_ceil(64);
        // Weights repeat (usually all 1): with few distinct ones, a sum is a popcount per weight.
        let mut masks: Vec<(i64, Vec<u64>)> = Vec::new();
        for (c, w) in own[lo..hi].iter().enumerate() {
            let at = match masks.iter().position(|(v, _)| v == w) {
                Some(at) => at,
                None if masks.len() < DISTINCT => {
                    masks.push((*w, vec![0u64; words]));
                    masks.len() - 1
                }
                None => {
                    masks.clear();
                    break;
                }
            };
            masks[at].1[c / 64] |= 1 << (c % 64);
        }
        let mut sets = vec![0u64; n * words];
        let mut mine = vec![0u64; words];
        for &i in visit {
            mine.fill(0);
            for &r in &next[i] {
                if (lo..hi).contains(&r) {
                    mine[(r - lo) / 64] |= 1 << ((r - lo) % 64);
                }
                // `r` was visited before `i`: its set is complete.
                for (m, t) in mine.iter_mut().zip(&sets[r * words..(r + 1) * words]) {
                    *m |= *t;
                }
            }
            sets[i * words..(i + 1) * words].copy_from_slice(&mine);
            if !wanted[i] {
                continue;
            }
            let set = &sets[i * words..(i + 1) * words];
            let sum: i64 = if !masks.is_empty() {
                masks
                    .iter()
                    .map(|(w, mask)| {
                        let count: u32 = set.iter().zip(mask).map(|(s, m)| (s & m).count_ones()).sum();
                        w.saturating_mul(i64::from(count))
                    })
                    .fold(0i64, i64::saturating_add)
            } else {
                let mut sum = 0i64;
                for (w, word) in set.iter().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let b = bits.trailing_zeros() as usize;
                        sum = sum.saturating_add(own[lo + w * 64 + b]);
                        bits &= bits - 1;
                    }
                }
                sum
            };
            totals[i] = totals[i].saturating_add(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState as S;

    fn counts(states: &[TaskState]) -> UpstreamCounts {
        let mut c = UpstreamCounts::default();
        for s in states {
            c.add(*s);
        }
        c
    }

    #[test]
    fn trigger_rules_follow_airflow() {
        use Readiness::*;
        use TriggerRule as R;
        let cases: &[(R, &[TaskState], Readiness)] = &[
            (R::AllSuccess, &[S::Success, S::Success], Run),
            (R::AllSuccess, &[S::Success, S::Running], Wait),
            (R::AllSuccess, &[S::Failed, S::Running], UpstreamFailed),
            (R::AllSuccess, &[S::Skipped, S::Success], Skip),
            (R::AllFailed, &[S::Failed, S::UpstreamFailed], Run),
            (R::AllFailed, &[S::Failed, S::Success], Skip),
            (R::AllDone, &[S::Failed, S::Skipped, S::Success], Run),
            (R::AllDone, &[S::Failed, S::Queued], Wait),
            (R::AllSkipped, &[S::Skipped, S::Skipped], Run),
            (R::AllSkipped, &[S::Skipped, S::Success], Skip),
            (R::OneSuccess, &[S::Success, S::Running], Run),
            (R::OneSuccess, &[S::Failed, S::Skipped], UpstreamFailed),
            (R::OneSuccess, &[S::Skipped, S::Skipped], Skip),
            (R::OneFailed, &[S::Failed, S::Running], Run),
            (R::OneFailed, &[S::Success, S::Success], Skip),
            (R::OneDone, &[S::Failed, S::Running], Run),
            (R::OneDone, &[S::Skipped], Skip),
            (R::NoneFailed, &[S::Success, S::Skipped], Run),
            (R::NoneFailed, &[S::UpstreamFailed, S::Running], UpstreamFailed),
            (R::NoneFailedMinOneSuccess, &[S::Skipped, S::Success], Run),
            (R::NoneFailedMinOneSuccess, &[S::Skipped, S::Skipped], Skip),
            (R::NoneFailedMinOneSuccess, &[S::Skipped, S::Running], Wait),
            (R::NoneSkipped, &[S::Success, S::Failed], Run),
            (R::NoneSkipped, &[S::Skipped, S::Running], Skip),
            (R::Always, &[S::Running], Run),
            (R::AllSuccess, &[], Run),
        ];
        for (rule, states, expected) in cases {
            assert_eq!(readiness(*rule, counts(states)), *expected, "{rule:?} with {states:?}");
        }
    }
}
