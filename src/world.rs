//! Exported and collected resources and converged keys on top of an etcd client.
