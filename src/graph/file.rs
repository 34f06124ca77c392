//! A graph file as read from disk: its path, its text and the graph parsed
//! from it. Live reload compares an edit with the text kept here.

use std::path::{Path, PathBuf};

use super::{parse_str, Graph, GraphError, GraphErrors};

/// A graph file as it was read and validated.
#[derive(Debug, Clone)]
pub struct GraphFile {
    /// As the user gave it; `-` for a graph that came on stdin.
    pub path: PathBuf,
    /// How errors name the file: its path, or on a host the name the
    /// initiator knows it by (`--graph-label`), so a template error there
    /// points into the file the user edits.
    pub label: String,
    /// The text that was parsed (live reload compares edits with it).
    pub text: String,
    pub graph: Graph,
}

impl GraphFile {
    pub fn load(path: &Path) -> Result<GraphFile, GraphErrors> {
        GraphFile::load_as(path, &path.display().to_string())
    }

    /// [`GraphFile::load`], naming the file `label` in errors.
    pub fn load_as(path: &Path, label: &str) -> Result<GraphFile, GraphErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            GraphErrors(vec![GraphError {
                file: label.to_owned(),
                pos: None,
                message: format!("cannot read the graph file: {e}"),
            }])
        })?;
        GraphFile::from_text(path, label, text)
    }

    /// A graph whose text came another way than from `path` (a warm
    /// start's stdin: `path` is then `-`), named `label` in errors.
    pub fn from_text(path: &Path, label: &str, text: String) -> Result<GraphFile, GraphErrors> {
        let graph = parse_str(&text, label)?;
        Ok(GraphFile {
            path: path.to_path_buf(),
            label: label.to_owned(),
            text,
            graph,
        })
    }
}
