//! The graph file format (DESIGN.md section 2, compatible with mgmt's yamlgraph).
//!
//! This module owns the in-memory form of a graph file: what the parser
//! produces and the engine consumes. Parsing and validation live in
//! [`parse`] (YAML → [`Graph`], every error with `file:line:col`) and the
//! dependency checks (cycles, topological order) in [`dag`]. It does not apply
//! anything and knows nothing of SSH or the store.

pub mod dag;
mod edge;
mod file;
mod glob;
pub mod parse;
mod pos;
mod report;
mod resource;
pub mod template;
#[cfg(test)]
mod tests;

use std::fmt;

pub use file::GraphFile;
pub use glob::glob_match;
pub use parse::{parse_file, parse_rendered, parse_str};
pub use pos::top_level_keys;

/// A position in a YAML file, both numbers 1-based as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A validated graph file.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The `graph:` name (required, non-empty).
    pub name: String,
    pub comment: Option<String>,
    /// An optional `hostname:` that overrides the host's identity in the store.
    pub hostname: Option<String>,
    /// `remote:` URLs, one or a list; only read by the initiator.
    pub remote: Vec<Located<String>>,
    /// `via:` gateway URLs, outermost first.
    pub via: Vec<Located<String>>,
    /// `when:`, an expression over `facts` and `host`: a host where it is
    /// false applies nothing and is reported as skipped (#20).
    pub when: Option<Located<String>>,
    /// Every resource declared, exported (`@@`) ones included.
    pub resources: Vec<ResourceDecl>,
    pub collect: Vec<Collect>,
    pub edges: Vec<Edge>,
}

/// The original text of every value a template rendered, by position: a
/// pending `meta.when` is reported as written, not as the `false` it
/// rendered to.
pub(crate) type Originals = std::collections::BTreeMap<Pos, String>;

/// A value with the position it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Located<T> {
    /// The position, unless the value came from elsewhere (a flag).
    pub fn placed(&self) -> Option<Pos> {
        (self.pos.line > 0).then_some(self.pos)
    }
}

impl Located<String> {
    /// Values from the command line, which have no position.
    pub fn unplaced(values: &[String]) -> Vec<Self> {
        values
            .iter()
            .map(|v| Located {
                value: v.clone(),
                pos: Pos::default(),
            })
            .collect()
    }
}

/// One resource as declared in the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDecl {
    /// Canonical (lowercase) kind, as in [`crate::resources::KindSpec::kind`].
    pub kind: &'static str,
    /// The name without a leading `@@`.
    pub name: String,
    /// Declared with a leading `@@`: exported to the store, not applied locally.
    pub exported: bool,
    /// The kind's own fields (everything but `name` and `meta`), type-checked
    /// against the kind's [`crate::resources::FieldSpec`]s.
    pub params: serde_yaml_ng::Mapping,
    pub meta: Meta,
    pub pos: Pos,
}

impl ResourceDecl {
    /// `kind[name]`, the way logs and errors name a resource.
    pub fn id(&self) -> String {
        format!("{}[{}]", self.kind, self.name)
    }
}

/// Meta parameters every resource accepts (defaults: all zero/false).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Check only, never change anything.
    pub noop: bool,
    /// How many times a failed check/apply is retried; -1 retries forever.
    pub retry: i64,
    /// Milliseconds between retries.
    pub delay_ms: u64,
    /// `when:`: the resource, and what depends on it, waits until this
    /// renders to `true` ([`template`]).
    pub when: Option<When>,
}

/// A `meta.when` condition, as rendered on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// The condition as written, for "waiting for ..." messages.
    pub expr: String,
    /// It rendered to `true`.
    pub ready: bool,
}

impl Meta {
    /// Held back by a `when:` that is not true (yet).
    pub fn waiting(&self) -> bool {
        self.when.as_ref().is_some_and(|w| !w.ready)
    }
}

/// A `collect:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Collect {
    pub kind: &'static str,
    /// For `file`: the directory collected files are placed in.
    pub pattern: Option<String>,
    /// Only collect from hosts whose name matches this glob (`*`, `?`).
    pub hostname: Option<String>,
    pub pos: Pos,
}

/// A reference to a resource by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VertexRef {
    pub kind: &'static str,
    pub name: String,
}

impl fmt::Display for VertexRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.kind, self.name)
    }
}

/// An edge: `to` depends on `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub name: String,
    pub from: VertexRef,
    pub to: VertexRef,
    /// Send a refresh to `to` whenever `from` changed something.
    pub notify: bool,
    /// Send/Recv: copy `from`'s field `send` into `to`'s field `recv`.
    pub send: Option<String>,
    pub recv: Option<String>,
    pub pos: Pos,
}

/// One problem found in a graph file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// The file as the user named it.
    pub file: String,
    /// Where YAML gives a position.
    pub pos: Option<Pos>,
    /// Lowercase, no trailing period: what is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GraphErrors(pub Vec<GraphError>);

impl fmt::Display for GraphErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
