//! Dependency checks over a graph's edges: cycles and topological order.
