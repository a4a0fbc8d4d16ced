//! A layered left-to-right drawing of a DAG: ranks and orders from `rust-sugiyama` (network
//! simplex ranking, weighted-median crossing reduction, Brandes–Köpf placement), turned on its
//! side; a longest-path layering if the crate fails on a graph.

use std::collections::BTreeMap;

pub const NODE_W: f64 = 180.0;
pub const NODE_H: f64 = 46.0;
const GAP_X: f64 = 90.0;
const GAP_Y: f64 = 26.0;
const MARGIN: f64 = 24.0;

/// Node centres, left to right by layer, and the drawing's size.
pub struct Placement {
    pub centers: Vec<(f64, f64)>,
    pub width: f64,
    pub height: f64,
}

/// Past this many edges the crossing reduction costs seconds a request (80,000 edges took 24 s):
/// such a graph gets the longest-path layering, linear in its size.
const SUGIYAMA_MAX_EDGES: usize = 3_000;

/// Places `n` nodes joined by `edges` (upstream, downstream).
pub fn place(n: usize, edges: &[(usize, usize)]) -> Placement {
    if n == 0 {
        return Placement { centers: Vec::new(), width: 2.0 * MARGIN, height: 2.0 * MARGIN };
    }
    let sugiyama = if edges.len() > SUGIYAMA_MAX_EDGES {
        Ok(None)
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::model::caught::caught(|| sugiyama_ranks(n, edges))
        }))
    };
    let (rank, order) = match sugiyama {
        Ok(Some(found)) => found,
        _ => longest_path(n, edges),
    };
    let mut centers = vec![(0.0, 0.0); n];
    let mut height: f64 = 0.0;
    let mut layers = 0usize;
    for (i, c) in centers.iter_mut().enumerate() {
        let x = MARGIN + rank[i] as f64 * (NODE_W + GAP_X) + NODE_W / 2.0;
        let y = MARGIN + order[i] * (NODE_H + GAP_Y) + NODE_H / 2.0;
        *c = (x, y);
        height = height.max(y + NODE_H / 2.0 + MARGIN);
        layers = layers.max(rank[i] + 1);
    }
    let width = 2.0 * MARGIN + layers as f64 * NODE_W + layers.saturating_sub(1) as f64 * GAP_X;
    Placement { centers, width, height }
}

/// Each node's layer and its position in the layer (in node slots, fractional when the crate
/// centres a node between others), from the crate's top-down layout. Disjoint parts are stacked.
fn sugiyama_ranks(n: usize, edges: &[(usize, usize)]) -> Option<(Vec<usize>, Vec<f64>)> {
    let vertices: Vec<(u32, (f64, f64))> = (0..n).map(|i| (i as u32, (NODE_H, NODE_W))).collect();
    let edges32: Vec<(u32, u32)> = edges.iter().map(|&(a, b)| (a as u32, b as u32)).collect();
    let config = rust_sugiyama::configure::Config { vertex_spacing: GAP_Y, ..Default::default() };
    let parts = rust_sugiyama::from_vertices_and_edges(&vertices, &edges32, &config);
    let mut rank = vec![usize::MAX; n];
    let mut order = vec![0.0; n];
    let mut offset = 0.0;
    for (layout, _, _) in parts {
        // Layers are the distinct vertical coordinates of the top-down drawing.
        let mut ys: Vec<i64> = layout.iter().map(|(_, (_, y))| y.round() as i64).collect();
        ys.sort_unstable();
        ys.dedup();
        let min_x = layout.iter().map(|(_, (x, _))| *x).fold(f64::INFINITY, f64::min);
        let mut max_slot: f64 = 0.0;
        for (v, (x, y)) in &layout {
            if *v >= n {
                continue;
            }
            rank[*v] = ys.binary_search(&(y.round() as i64)).ok()?;
            let slot = (x - min_x) / (NODE_H + GAP_Y);
            order[*v] = offset + slot;
            max_slot = max_slot.max(slot);
        }
        offset += max_slot.ceil() + 1.0;
    }
    if rank.contains(&usize::MAX) {
        return None;
    }
    Some((rank, order))
}

/// The fallback: a node's layer is its longest path from a root; order by first appearance.
fn longest_path(n: usize, edges: &[(usize, usize)]) -> (Vec<usize>, Vec<f64>) {
    let mut rank = vec![0usize; n];
    // Relax n times (a DAG settles in at most n rounds; a cycle, which validation forbids, stops).
    for _ in 0..n {
        let mut changed = false;
        for &(a, b) in edges {
            if a < n && b < n && rank[b] < rank[a] + 1 {
                rank[b] = rank[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut next: BTreeMap<usize, f64> = BTreeMap::new();
    let order = rank
        .iter()
        .map(|r| {
            let slot = next.entry(*r).or_insert(0.0);
            let at = *slot;
            *slot += 1.0;
            at
        })
        .collect();
    (rank, order)
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn a_chain_goes_left_to_right_and_a_fan_spreads_down() {
        let p = place(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        let c = &p.centers;
        assert!(c[0].0 < c[1].0 && c[1].0 < c[3].0, "{:?}", c);
        assert_eq!(c[1].0, c[2].0, "siblings share a layer: {c:?}");
        assert_ne!(c[1].1, c[2].1, "siblings do not overlap: {c:?}");
        assert!(p.width > 0.0 && p.height > 0.0);
    }

    #[test]
    fn lone_nodes_and_disjoint_parts_do_not_overlap() {
        let p = place(3, &[(0, 1)]);
        let c = &p.centers;
        assert!(c[2] != c[0] && c[2] != c[1], "{c:?}");
    }

    /// A dense DAG (600 tasks, 6 layers of 100, every task after every task of the layer
    /// before: 50,000 edges) is laid out by layers too, every edge going left to right, no two
    /// tasks at one place.
    #[test]
    fn a_dense_dag_gets_layers_without_the_crossing_reduction() {
        let mut edges = Vec::new();
        for layer in 0..5 {
            for a in 0..100 {
                for b in 0..100 {
                    edges.push((layer * 100 + a, (layer + 1) * 100 + b));
                }
            }
        }
        assert!(edges.len() > super::SUGIYAMA_MAX_EDGES);
        let p = place(600, &edges);
        let c = &p.centers;
        assert!(edges.iter().all(|&(a, b)| c[a].0 < c[b].0));
        let mut seen: Vec<(i64, i64)> = c.iter().map(|(x, y)| (*x as i64, *y as i64)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 600);
    }
}
