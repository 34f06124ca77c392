//! Applies a graph: one worker per resource, events, convergence, live reload.
