//! Dependency checks over a graph's edges: cycles and topological order.
//!
//! Pure functions over vertex indices (a graph's `resources`, in declaration
//! order) and edge indices (its `edges`), so the parser can point an error at
//! an edge and the engine can schedule vertices without either knowing about
//! the other. Validation of what the edges refer to belongs to the parser;
//! here an edge naming no vertex is ignored.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::{Edge, ResourceDecl};

/// A directed graph of `len` vertices; every edge keeps its index in the
/// caller's edge list.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    /// `succ[v]`: `(w, edge)` for every edge `v -> w`.
    succ: Vec<Vec<(usize, usize)>>,
    /// `pred[w]`: `(v, edge)` for every edge `v -> w`.
    pred: Vec<Vec<(usize, usize)>>,
}

/// A dependency cycle: `edges[i]` goes from `vertices[i]` to
/// `vertices[i + 1]`, and the last edge back to `vertices[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub vertices: Vec<usize>,
    pub edges: Vec<usize>,
}

impl Dag {
    /// A graph of `len` vertices and `edges` as `(from, to)` pairs; a pair
    /// naming a vertex out of range is skipped.
    pub fn new(len: usize, edges: &[(usize, usize)]) -> Dag {
        let mut dag = Dag {
            succ: vec![Vec::new(); len],
            pred: vec![Vec::new(); len],
        };
        for (i, &(from, to)) in edges.iter().enumerate() {
            if from < len && to < len {
                dag.succ[from].push((to, i));
                dag.pred[to].push((from, i));
            }
        }
        dag
    }

    /// The graph over `resources` (by kind and name) and `edges`, edge
    /// indices being positions in `edges`.
    pub fn from_graph(resources: &[ResourceDecl], edges: &[Edge]) -> Dag {
        let index: HashMap<(&str, &str), usize> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.kind, r.name.as_str()), i))
            .collect();
        let find = |v: &super::VertexRef| index.get(&(v.kind, v.name.as_str())).copied();
        let pairs: Vec<(usize, usize)> = edges
            .iter()
            .map(|e| match (find(&e.from), find(&e.to)) {
                (Some(f), Some(t)) => (f, t),
                _ => (usize::MAX, usize::MAX),
            })
            .collect();
        Dag::new(resources.len(), &pairs)
    }

    pub fn len(&self) -> usize {
        self.succ.len()
    }

    pub fn is_empty(&self) -> bool {
        self.succ.is_empty()
    }

    /// The vertices `to` depends on directly (the `from` of its edges).
    pub fn dependencies(&self, to: usize) -> impl Iterator<Item = usize> + '_ {
        self.pred.get(to).into_iter().flatten().map(|&(v, _)| v)
    }

    /// The vertices that depend directly on `from`.
    pub fn dependents(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        self.succ.get(from).into_iter().flatten().map(|&(w, _)| w)
    }

    /// Every vertex after all it depends on; among the vertices ready at the
    /// same time, declaration order. A cyclic graph gives its first cycle.
    pub fn topo_order(&self) -> Result<Vec<usize>, Cycle> {
        let (order, _) = self.kahn();
        if order.len() == self.len() {
            return Ok(order);
        }
        match self.cycles().into_iter().next() {
            Some(c) => Err(c),
            // Unreachable: Kahn leaves vertices out only when there is a cycle.
            None => Ok(order),
        }
    }

    /// One cycle per strongly connected component that has one (the
    /// shortest through its first vertex), in declaration order.
    pub fn cycles(&self) -> Vec<Cycle> {
        let (_, left) = self.kahn();
        let mut covered = vec![false; self.len()];
        let mut found = Vec::new();
        for v in (0..self.len()).filter(|&v| left[v]) {
            if covered[v] {
                continue;
            }
            let fwd = reach(v, &self.succ);
            let bwd = reach(v, &self.pred);
            for w in 0..self.len() {
                covered[w] |= fwd[w] && bwd[w];
            }
            found.extend(self.shortest_cycle(v));
        }
        found
    }

    /// Kahn's algorithm: the order it reaches, and which vertices it could
    /// not (those on a cycle or after one).
    fn kahn(&self) -> (Vec<usize>, Vec<bool>) {
        let mut indegree: Vec<usize> = self.pred.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = (0..self.len())
            .filter(|&v| indegree[v] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.len());
        let mut left = vec![true; self.len()];
        while let Some(Reverse(v)) = ready.pop() {
            order.push(v);
            left[v] = false;
            for &(w, _) in &self.succ[v] {
                indegree[w] -= 1;
                if indegree[w] == 0 {
                    ready.push(Reverse(w));
                }
            }
        }
        (order, left)
    }

    /// Breadth-first from `start` back to itself.
    fn shortest_cycle(&self, start: usize) -> Option<Cycle> {
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; self.len()];
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &(w, edge) in &self.succ[v] {
                if w == start {
                    return Some(unwind(start, v, edge, &parent));
                }
                if parent[w].is_none() {
                    parent[w] = Some((v, edge));
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

/// Rebuilds the path `start -> ... -> last` from BFS parents, then closes it.
fn unwind(start: usize, last: usize, closing: usize, parent: &[Option<(usize, usize)>]) -> Cycle {
    let mut vertices = vec![last];
    let mut edges = vec![closing];
    let mut v = last;
    while v != start {
        let Some((p, e)) = parent[v] else { break };
        vertices.push(p);
        edges.push(e);
        v = p;
    }
    // Collected backwards: reversed, edges[i] leaves vertices[i] and the
    // closing edge comes last.
    vertices.reverse();
    edges.reverse();
    Cycle { vertices, edges }
}

/// Which vertices `adj` reaches from `start` (itself included).
fn reach(start: usize, adj: &[Vec<(usize, usize)>]) -> Vec<bool> {
    let mut seen = vec![false; adj.len()];
    seen[start] = true;
    let mut stack = vec![start];
    while let Some(v) = stack.pop() {
        for &(w, _) in &adj[v] {
            if !seen[w] {
                seen[w] = true;
                stack.push(w);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topo_order_respects_edges_and_declaration_order() {
        let dag = Dag::new(4, &[(2, 0), (3, 1)]);
        assert_eq!(dag.topo_order(), Ok(vec![2, 0, 3, 1]));
        let dag = Dag::new(3, &[]);
        assert_eq!(dag.topo_order(), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn topo_order_of_a_diamond() {
        let dag = Dag::new(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(dag.topo_order(), Ok(vec![0, 1, 2, 3]));
        assert!(dag.cycles().is_empty());
        assert_eq!(dag.dependencies(3).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(dag.dependents(0).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_cycle_gives_its_path_and_edges() {
        // 0 -> 1 -> 2 -> 0, and 2 -> 3 outside the cycle.
        let dag = Dag::new(4, &[(0, 1), (1, 2), (2, 3), (2, 0)]);
        let cycle = Cycle {
            vertices: vec![0, 1, 2],
            edges: vec![0, 1, 3],
        };
        assert_eq!(dag.cycles(), std::slice::from_ref(&cycle));
        assert_eq!(dag.topo_order(), Err(cycle));
    }

    #[test]
    fn a_self_loop_is_a_cycle() {
        let dag = Dag::new(2, &[(0, 1), (1, 1)]);
        assert_eq!(
            dag.cycles(),
            [Cycle {
                vertices: vec![1],
                edges: vec![1],
            }]
        );
    }

    #[test]
    fn one_cycle_per_component() {
        // Two separate cycles, the first with a chord.
        let edges = [(0, 1), (1, 2), (2, 0), (1, 0), (3, 4), (4, 3)];
        let cycles = Dag::new(5, &edges).cycles();
        let paths: Vec<_> = cycles.iter().map(|c| c.vertices.clone()).collect();
        assert_eq!(paths, [vec![0, 1], vec![3, 4]]);
        assert_eq!(cycles[0].edges, [0, 3]);
    }

    #[test]
    fn vertices_after_a_cycle_are_not_reported() {
        let dag = Dag::new(3, &[(0, 1), (1, 0), (1, 2)]);
        assert_eq!(dag.cycles().len(), 1);
    }

    #[test]
    fn out_of_range_edges_are_ignored() {
        let dag = Dag::new(2, &[(0, 5), (1, 0)]);
        assert_eq!(dag.topo_order(), Ok(vec![1, 0]));
    }
}
