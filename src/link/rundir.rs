//! A child's per-run directory on its host (`<prefix>/run/<run-id>/`): made
//! by the parent over SFTP when it launches a child with its graph in a
//! file (`--no-caching`, a rolling run, a gateway), and removed by the
//! child when its run ends, so that a child whose link was cut leaves
//! nothing behind. A warm start (`--graph-stdin`, #17) keeps its graph in
//! memory and makes no run directory: its `--run-dir` only names the run
//! and the cache it belongs to.

use std::fs;
use std::path::Path;

/// The name of the graph in the run directory.
pub const GRAPH_NAME: &str = "graph.yaml";

/// Removes the run directory: its files (no subdirectories are made
/// there), the directory, and `run/` above it if that is now empty.
/// Whatever fails is left for the parent's own cleanup, which tolerates a
/// directory already gone.
pub fn remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if fs::remove_dir(dir).is_ok() {
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_and_an_empty_run_go() {
        let top = tempfile::tempdir().expect("tmp");
        let dir = top.path().join("run").join("r1");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(GRAPH_NAME), "resources: []\n").expect("write");
        remove(&dir);
        assert!(!top.path().join("run").exists());
        // Another run's directory keeps `run/`.
        let (a, b) = (top.path().join("run/a"), top.path().join("run/b"));
        fs::create_dir_all(&a).expect("mkdir");
        fs::create_dir_all(&b).expect("mkdir");
        remove(&a);
        assert!(!a.exists() && b.exists());
    }
}
