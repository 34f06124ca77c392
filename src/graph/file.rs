//! A graph file as read from disk: its path, its text and the graph parsed
//! from it. Live reload compares an edit with the text kept here.

use std::path::{Path, PathBuf};

use super::{parse_str, Graph, GraphError, GraphErrors};

/// A graph file as it was read and validated.
#[derive(Debug, Clone)]
pub struct GraphFile {
    /// As the user gave it.
    pub path: PathBuf,
    /// The text that was parsed (live reload compares edits with it).
    pub text: String,
    pub graph: Graph,
}

impl GraphFile {
    pub fn load(path: &Path) -> Result<GraphFile, GraphErrors> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            GraphErrors(vec![GraphError {
                file: label.clone(),
                pos: None,
                message: format!("cannot read the graph file: {e}"),
            }])
        })?;
        let graph = parse_str(&text, &label)?;
        Ok(GraphFile {
            path: path.to_path_buf(),
            text,
            graph,
        })
    }
}
