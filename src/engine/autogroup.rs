//! Autogroup: resources of a kind that can be applied together (a kind
//! with a [`crate::resources::KindSpec::group`]) become one vertex, so that
//! the twenty `pkg` resources of a graph take the package manager's lock
//! once instead of twenty times (as mgmt's autogroup does).
//!
//! Two resources join only when the graph stays acyclic with them merged
//! (a `pkg` that depends, through a `file`, on another `pkg` stays apart),
//! when their `meta` is the same (a group is retried and noop'd as one),
//! and when neither sends or receives a value along an edge (a value is
//! one resource's, not a group's). Edges to and from members are moved to
//! the group; an edge between two members is dropped. The plan is made
//! afresh for every graph; what runs it is the engine loop's business.

use std::collections::{HashMap, HashSet};

use crate::graph::{Edge, ResourceDecl, VertexRef};
use crate::resources;

/// The graph as the engine runs it: one entry per vertex.
pub(super) struct Plan {
    /// Each vertex's resources, its leader (whose ref names the vertex)
    /// first; most hold one resource.
    pub vertices: Vec<Vec<ResourceDecl>>,
    /// The edges between vertices, named by their leaders.
    pub edges: Vec<Edge>,
}

fn vref(d: &ResourceDecl) -> VertexRef {
    VertexRef {
        kind: d.kind,
        name: d.name.clone(),
    }
}

/// Merges what can be merged; the order of resources is kept.
pub(super) fn plan(resources: Vec<ResourceDecl>, edges: Vec<Edge>) -> Plan {
    let valued: HashSet<&VertexRef> = edges
        .iter()
        .filter(|e| e.send.is_some() || e.recv.is_some())
        .flat_map(|e| [&e.from, &e.to])
        .collect();
    let groupable = |d: &ResourceDecl| {
        resources::lookup(d.kind).is_some_and(|k| k.group.is_some()) && !valued.contains(&vref(d))
    };
    // member -> leader; every resource starts as its own leader.
    let mut leader: HashMap<VertexRef, VertexRef> =
        resources.iter().map(|d| (vref(d), vref(d))).collect();
    let mut leaders: Vec<usize> = Vec::new();
    for (i, d) in resources.iter().enumerate() {
        if !groupable(d) {
            continue;
        }
        let me = vref(d);
        let joined = leaders.iter().any(|&l| {
            let lead = &resources[l];
            if lead.kind != d.kind || lead.meta != d.meta {
                return false;
            }
            leader.insert(me.clone(), vref(lead));
            if acyclic(&edges, &leader) {
                return true;
            }
            leader.insert(me.clone(), me.clone());
            false
        });
        if !joined {
            leaders.push(i);
        }
    }
    let mut vertices: Vec<Vec<ResourceDecl>> = Vec::new();
    let mut slot: HashMap<VertexRef, usize> = HashMap::new();
    for d in resources {
        let lead = leader[&vref(&d)].clone();
        match slot.get(&lead) {
            Some(&i) => vertices[i].push(d),
            None => {
                slot.insert(lead, vertices.len());
                vertices.push(vec![d]);
            }
        }
    }
    let edges = edges
        .into_iter()
        .filter_map(|mut e| {
            e.from = leader.get(&e.from).cloned().unwrap_or(e.from);
            e.to = leader.get(&e.to).cloned().unwrap_or(e.to);
            (e.from != e.to).then_some(e)
        })
        .collect();
    Plan { vertices, edges }
}

/// Whether the edges, with each end replaced by its leader, form no cycle.
fn acyclic(edges: &[Edge], leader: &HashMap<VertexRef, VertexRef>) -> bool {
    let at = |r: &VertexRef| leader.get(r).cloned().unwrap_or_else(|| r.clone());
    let mut next: HashMap<VertexRef, Vec<VertexRef>> = HashMap::new();
    for e in edges {
        let (from, to) = (at(&e.from), at(&e.to));
        if from != to {
            next.entry(from).or_default().push(to);
        }
    }
    // Iterative depth-first search: 1 = on the path, 2 = done.
    let mut mark: HashMap<VertexRef, u8> = HashMap::new();
    for start in next.keys() {
        if mark.contains_key(start) {
            continue;
        }
        let mut stack = vec![(start.clone(), 0usize)];
        mark.insert(start.clone(), 1);
        while let Some((v, i)) = stack.pop() {
            let outs = next.get(&v).map(Vec::as_slice).unwrap_or_default();
            if let Some(w) = outs.get(i) {
                stack.push((v, i + 1));
                match mark.get(w) {
                    Some(1) => return false,
                    Some(_) => {}
                    None => {
                        mark.insert(w.clone(), 1);
                        stack.push((w.clone(), 0));
                    }
                }
            } else {
                mark.insert(v, 2);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::edge;
    use crate::graph::{Meta, Pos};

    fn decl(kind: &'static str, name: &str) -> ResourceDecl {
        ResourceDecl {
            kind,
            name: name.into(),
            exported: false,
            params: Default::default(),
            meta: Meta::default(),
            pos: Pos::default(),
        }
    }

    fn names(p: &Plan) -> Vec<Vec<String>> {
        p.vertices
            .iter()
            .map(|v| v.iter().map(|d| d.id()).collect())
            .collect()
    }

    #[test]
    fn packages_merge_and_their_edges_move_to_the_group() {
        let p = plan(
            vec![decl("pkg", "a"), decl("file", "f"), decl("pkg", "b")],
            vec![edge(("pkg", "b"), ("file", "f"))],
        );
        assert_eq!(
            names(&p),
            vec![vec!["pkg[a]", "pkg[b]"], vec!["file[f]"]],
            "b joins a"
        );
        assert_eq!(p.edges[0].from.name, "a");
    }

    #[test]
    fn a_merge_that_would_make_a_cycle_is_not_made() {
        let p = plan(
            vec![decl("pkg", "a"), decl("file", "f"), decl("pkg", "b")],
            vec![
                edge(("pkg", "a"), ("file", "f")),
                edge(("file", "f"), ("pkg", "b")),
            ],
        );
        assert_eq!(p.vertices.len(), 3);
    }

    #[test]
    fn other_kinds_and_other_meta_stay_apart() {
        let mut b = decl("pkg", "b");
        b.meta.noop = true;
        let p = plan(
            vec![decl("pkg", "a"), b, decl("file", "x"), decl("file", "y")],
            vec![],
        );
        assert_eq!(p.vertices.len(), 4);
    }
}
