//! YAML → [`Graph`], with every error positioned as `file:line:col`.
//!
//! serde_yaml_ng reads the text (syntax errors stop here, with its position);
//! [`super::pos`] adds a position to every node. The document is then checked
//! top-down, collecting every error instead of stopping at the first: the
//! top-level keys and `collect:` here, `resources:` in [`super::resource`],
//! `edges:` and cycles in [`super::edge`]. Nothing is applied and no URL is
//! parsed here (`remote:` and `via:` stay strings with positions for the
//! fleet's plan to check).

use std::path::Path;

use serde_yaml_ng::Value;

use super::pos::{self, Node, PosNode};
use super::report::{
    read_kind, read_list, read_map, read_name, read_str, unknown_key, Errors, Key,
};
use super::template::{self, Context};
use super::{edge, resource, Collect, Graph, GraphError, GraphErrors, Located, Pos};

/// The top-level keys, in the order the docs present them.
const TOP_KEYS: &[&str] = &[
    "graph",
    "comment",
    "hostname",
    "remote",
    "via",
    "when",
    "resources",
    "collect",
    "edges",
];

const COLLECT_KEYS: &[&str] = &["kind", "pattern", "hostname"];

/// Reads and validates a graph file.
pub fn parse_file(path: &Path) -> Result<Graph, GraphErrors> {
    let label = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => parse_str(&src, &label),
        Err(e) => Err(GraphErrors(vec![GraphError {
            file: label,
            pos: None,
            message: format!("cannot read the graph file: {e}"),
        }])),
    }
}

/// Parses and validates graph source text as written; `file` labels the
/// errors. Templated values are kept as text and only checked once
/// rendered ([`parse_rendered`], on the host).
pub fn parse_str(src: &str, file: &str) -> Result<Graph, GraphErrors> {
    parse_with(src, file, None)
}

/// Renders the templates of graph source text with `ctx`
/// ([`super::template`]), then parses and validates the result. A template
/// error stops here, before anything else is checked.
pub fn parse_rendered(src: &str, file: &str, ctx: &Context) -> Result<Graph, GraphErrors> {
    parse_with(src, file, Some(ctx))
}

fn parse_with(src: &str, file: &str, ctx: Option<&Context>) -> Result<Graph, GraphErrors> {
    let parsed: Result<Value, _> = serde_yaml_ng::from_str(src);
    let tree = pos::positions(src);
    let mut value = match parsed {
        Ok(v) => v,
        Err(e) => return Err(syntax_error(file, src, &e, tree.as_ref())),
    };
    let mut errs = Errors::new(file);
    if let Some(ctx) = ctx {
        let originals = template::render_tree(&mut value, tree.as_ref(), ctx, &mut errs);
        if errs.count() > 0 {
            // Nothing else is checked on a text that did not render.
            return errs.finish(()).map(|()| empty_graph());
        }
        errs.rendered = Some(originals);
    }
    let graph = read_graph(Node::new(&value, tree.as_ref()), &mut errs);
    errs.finish(graph)
}

fn empty_graph() -> Graph {
    Graph {
        name: String::new(),
        comment: None,
        hostname: None,
        remote: Vec::new(),
        via: Vec::new(),
        when: None,
        resources: Vec::new(),
        collect: Vec::new(),
        edges: Vec::new(),
    }
}

/// A YAML syntax error: serde_yaml_ng's message without its own "at line N
/// column M" (the position goes in front, like every other error).
fn syntax_error(
    file: &str,
    src: &str,
    e: &serde_yaml_ng::Error,
    tree: Option<&PosNode>,
) -> GraphErrors {
    let mut pos = e.location().map(|l| Pos {
        line: l.line(),
        col: l.column(),
    });
    let mut message = format!("invalid YAML: {}", strip_marks(&e.to_string()));
    if message.contains("more than one document") {
        pos = pos::second_document(src);
        message = "invalid YAML: the file holds more than one document (a second ---); expected one graph per file".into();
    }
    // serde_yaml_ng places a duplicate key at its mapping; find the key.
    if message.contains("duplicate entry") {
        if let Some((_, second, first)) = tree.and_then(pos::duplicate_key) {
            pos = Some(second);
            message.push_str(&format!(
                " (the first is at {}:{}); a key may appear once per mapping",
                first.line, first.col
            ));
        }
    }
    GraphErrors(vec![GraphError {
        file: file.to_owned(),
        pos,
        message,
    }])
}

/// Drops libyaml's first " at line N column M" (the error's own position,
/// now in front) and shortens later ones ("while parsing a block mapping at
/// line 1 column 1") to `at 1:1`.
fn strip_marks(msg: &str) -> String {
    const MARK: &str = " at line ";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    let mut first = true;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        let tail = &rest[i + MARK.len()..];
        let words: Vec<&str> = tail.splitn(4, ' ').collect();
        let nums = match words.as_slice() {
            [line, "column", col, ..] => {
                let col = col.trim_end_matches(|c: char| !c.is_ascii_digit());
                line.parse::<usize>().ok().zip(col.parse::<usize>().ok())
            }
            _ => None,
        };
        match nums {
            Some((line, col)) => {
                if !first {
                    out.push_str(&format!(" at {line}:{col}"));
                }
                first = false;
                let skip = format!("{line} column {col}");
                rest = &tail[skip.len().min(tail.len())..];
            }
            None => {
                out.push_str(MARK);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The top-level sections, read before any is checked: `edges:` may come
/// before the `resources:` it refers to.
#[derive(Default)]
struct Sections<'a> {
    name: Option<String>,
    resources: Option<Node<'a>>,
    collect: Option<Node<'a>>,
    edges: Option<Node<'a>>,
}

fn read_graph(root: Node<'_>, errs: &mut Errors) -> Graph {
    let mut graph = empty_graph();
    let root_pos = root.pos().or(Some(Pos { line: 1, col: 1 }));
    if !root.value.is_mapping() {
        let found = match root.value {
            Value::Null => "an empty file".to_owned(),
            _ => root.describe(),
        };
        errs.at(
            root_pos,
            format!("expected a mapping with graph:, resources:, edges: ... at the top level, found {found}"),
        );
        return graph;
    }
    let keys = read_map(root, "top level", "a mapping", errs).unwrap_or_default();
    let mut sections = Sections::default();
    for key in &keys {
        read_top_key(key, &mut graph, &mut sections, errs);
    }
    match sections.name {
        Some(name) => graph.name = name,
        None if !keys.iter().any(|k| k.name == "graph") => errs.at(
            root_pos,
            "missing graph: every graph file needs a name, e.g. graph: mygraph",
        ),
        None => {}
    }
    if let Some(node) = sections.resources {
        graph.resources = resource::read_resources(node, errs);
    }
    if let Some(node) = sections.collect {
        graph.collect = read_collects(node, errs);
    }
    if let Some(node) = sections.edges {
        graph.edges = edge::read_edges(node, &graph.resources, errs);
    }
    graph
}

fn read_top_key<'a>(
    key: &Key<'a>,
    graph: &mut Graph,
    sections: &mut Sections<'a>,
    errs: &mut Errors,
) {
    let node = key.value;
    match key.name {
        "graph" => sections.name = read_name(node, "graph", "graph: mygraph", errs),
        "comment" => graph.comment = read_str(node, "comment", errs),
        "hostname" => graph.hostname = read_name(node, "hostname", "hostname: web-1", errs),
        "remote" => graph.remote = read_urls(node, "remote", errs),
        "via" => graph.via = read_urls(node, "via", errs),
        "when" => graph.when = read_when(node, errs),
        "resources" => sections.resources = Some(node),
        "collect" => sections.collect = Some(node),
        "edges" => sections.edges = Some(node),
        _ => unknown_key(key, "top level", TOP_KEYS, errs),
    }
}

/// `when:`: an expression, checked for syntax here (it is evaluated on
/// each host, with its facts).
fn read_when(node: Node<'_>, errs: &mut Errors) -> Option<Located<String>> {
    let value = read_name(node, "when", "when: facts.os.id == \"debian\"", errs)?;
    if let Err(e) = template::check_condition(&value) {
        errs.at(node.pos(), format!("when: {e}"));
        return None;
    }
    Some(Located {
        value,
        pos: node.pos().unwrap_or_default(),
    })
}

/// `remote:` or `via:`: one URL or a list of them, kept as positioned strings.
fn read_urls(node: Node<'_>, what: &str, errs: &mut Errors) -> Vec<Located<String>> {
    let example = "ssh://root@192.168.121.201:22";
    let items = match node.value {
        Value::Sequence(_) => node.items(),
        Value::String(_) => vec![node],
        _ => {
            let found = node.describe();
            errs.at(
                node.pos(),
                format!("{what}: expected a URL like {example} or a list of them, found {found}"),
            );
            return Vec::new();
        }
    };
    items
        .into_iter()
        .filter_map(|item| {
            let value = read_name(item, what, example, errs)?;
            Some(Located {
                value,
                pos: item.pos().unwrap_or_default(),
            })
        })
        .collect()
}

/// `collect:`: a list of `{kind, pattern, hostname}`.
fn read_collects(node: Node<'_>, errs: &mut Errors) -> Vec<Collect> {
    let expected = "a list of {kind: KIND, pattern: ...}";
    let items = read_list(node, "collect", expected, errs).unwrap_or_default();
    items
        .into_iter()
        .filter_map(|item| read_collect(item, errs))
        .collect()
}

fn read_collect(item: Node<'_>, errs: &mut Errors) -> Option<Collect> {
    let expected = "a mapping like {kind: file, pattern: /tmp/}";
    let keys = read_map(item, "collect", expected, errs)?;
    let mut kind = None;
    let mut pattern = None;
    let mut hostname = None;
    let mut saw_kind = false;
    for key in &keys {
        match key.name {
            "kind" => {
                kind = read_kind(key.value, "collect: kind", errs);
                saw_kind = true;
            }
            "pattern" => pattern = read_str(key.value, "collect: pattern", errs),
            "hostname" => {
                hostname = read_name(key.value, "collect: hostname", "hostname: web-*", errs)
            }
            _ => unknown_key(key, "collect", COLLECT_KEYS, errs),
        }
    }
    if !saw_kind {
        errs.at(
            item.pos(),
            "collect: missing kind; expected e.g. kind: file",
        );
    }
    Some(Collect {
        kind: kind?,
        pattern,
        hostname,
        pos: item.pos().unwrap_or_default(),
    })
}
