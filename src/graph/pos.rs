//! Source positions for a YAML document, alongside serde_yaml_ng's values.
//!
//! serde_yaml_ng parses the document into a [`Value`] (it decides what is a
//! string, an integer or a boolean, and reports syntax errors), but a `Value`
//! forgets where it came from. yaml-rust2's event parser gives a line and
//! column for every event, so we replay its events into a [`PosNode`] tree of
//! the same shape and walk both together through [`Node`]. Both parsers read
//! the same text, so mappings and sequences line up entry by entry (mapping
//! order is kept by serde_yaml_ng, and duplicate keys are a syntax error
//! there). When the two ever disagree the position is simply missing: errors
//! still name the file, and nothing here decides validity.

use std::collections::HashMap;

use serde_yaml_ng::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::Pos;

/// The position skeleton of one YAML node.
#[derive(Debug, Clone)]
pub(crate) enum PosNode {
    /// A scalar with its source text (after unquoting), for messages.
    Scalar {
        pos: Pos,
        raw: String,
    },
    Seq {
        pos: Pos,
        items: Vec<PosNode>,
    },
    Map {
        pos: Pos,
        entries: Vec<(PosNode, PosNode)>,
    },
}

impl PosNode {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            PosNode::Scalar { pos, .. } | PosNode::Seq { pos, .. } | PosNode::Map { pos, .. } => {
                *pos
            }
        }
    }
}

/// Builds the position tree of the first document in `src`, or `None` when
/// yaml-rust2 cannot read it (serde_yaml_ng's verdict on syntax is the one
/// reported; this only loses positions).
pub(crate) fn positions(src: &str) -> Option<PosNode> {
    let mut builder = Builder::default();
    Parser::new_from_str(src).load(&mut builder, false).ok()?;
    builder.root
}

/// The top-level keys of a block mapping with the line and column each
/// starts at, in source order; `None` when the document is not a mapping.
pub fn top_level_keys(src: &str) -> Option<Vec<(String, Pos)>> {
    match positions(src)? {
        PosNode::Map { entries, .. } => Some(
            entries
                .iter()
                .filter_map(|(k, _)| match k {
                    PosNode::Scalar { pos, raw } => Some((raw.clone(), *pos)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Where a second document starts, for "one graph per file".
pub(crate) fn second_document(src: &str) -> Option<Pos> {
    #[derive(Default)]
    struct Starts(Vec<Pos>);
    impl MarkedEventReceiver for Starts {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if ev == Event::DocumentStart {
                self.0.push(Pos {
                    line: mark.line(),
                    col: mark.col() + 1,
                });
            }
        }
    }
    let mut starts = Starts::default();
    // A later syntax error still leaves the starts seen before it.
    let _ = Parser::new_from_str(src).load(&mut starts, true);
    starts.0.get(1).copied()
}

/// The first key written twice in one mapping: `(key, second, first)`
/// positions. serde_yaml_ng rejects such a file but points at the mapping.
pub(crate) fn duplicate_key(node: &PosNode) -> Option<(&str, Pos, Pos)> {
    match node {
        PosNode::Scalar { .. } => None,
        PosNode::Seq { items, .. } => items.iter().find_map(duplicate_key),
        PosNode::Map { entries, .. } => {
            let mut seen: HashMap<&str, Pos> = HashMap::new();
            for (k, _) in entries {
                if let PosNode::Scalar { raw, pos } = k {
                    if let Some(first) = seen.insert(raw, *pos) {
                        return Some((raw, *pos, first));
                    }
                }
            }
            entries.iter().find_map(|(_, v)| duplicate_key(v))
        }
    }
}

/// A collection being filled while its events arrive.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<PosNode>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(PosNode, PosNode)>,
        key: Option<PosNode>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchored nodes by yaml-rust2's anchor id, so aliases get a copy.
    anchors: HashMap<usize, PosNode>,
    root: Option<PosNode>,
}

impl Builder {
    fn push(&mut self, node: PosNode) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn anchored(&mut self, anchor: usize, node: PosNode) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push(node);
    }

    fn close(&mut self) {
        match self.stack.pop() {
            Some(Frame::Seq { pos, anchor, items }) => {
                self.anchored(anchor, PosNode::Seq { pos, items });
            }
            Some(Frame::Map {
                pos,
                anchor,
                entries,
                ..
            }) => {
                // A block mapping's start event is marked after its first
                // key; a flow mapping's at its `{`. The earlier one is right.
                let pos = entries.first().map_or(pos, |(k, _)| k.pos().min(pos));
                self.anchored(anchor, PosNode::Map { pos, entries })
            }
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 counts lines from 1 and columns from 0.
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(raw, style, anchor, _) => {
                // An empty value (`graph:`) is marked where the next token
                // starts, often the next line: point at its key instead.
                let pos = match self.stack.last() {
                    Some(Frame::Map { key: Some(k), .. })
                        if raw.is_empty() && style == TScalarStyle::Plain =>
                    {
                        k.pos()
                    }
                    _ => pos,
                };
                self.anchored(anchor, PosNode::Scalar { pos, raw })
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                pos,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned();
                // An unknown alias is a syntax error serde_yaml_ng reports.
                self.push(node.unwrap_or(PosNode::Scalar {
                    pos,
                    raw: String::new(),
                }));
            }
            _ => {}
        }
    }
}

/// A YAML value together with where it was written, when known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub value: &'a Value,
    at: Option<&'a PosNode>,
}

impl<'a> Node<'a> {
    pub fn new(value: &'a Value, at: Option<&'a PosNode>) -> Self {
        Node { value, at }
    }

    /// Where the node starts (for a block mapping: its first key).
    pub fn pos(&self) -> Option<Pos> {
        self.at.map(PosNode::pos)
    }

    /// The scalar as written in the source, quotes removed.
    pub fn raw(&self) -> Option<&'a str> {
        match self.at {
            Some(PosNode::Scalar { raw, .. }) => Some(raw),
            _ => None,
        }
    }

    /// The key/value pairs of a mapping, in source order (empty otherwise).
    pub fn entries(&self) -> Vec<(Node<'a>, Node<'a>)> {
        let Some(map) = self.value.as_mapping() else {
            return Vec::new();
        };
        let positions = match self.at {
            Some(PosNode::Map { entries, .. }) if entries.len() == map.len() => Some(entries),
            _ => None,
        };
        map.iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let at = positions.map(|p| &p[i]);
                (
                    Node::new(k, at.map(|a| &a.0)),
                    Node::new(v, at.map(|a| &a.1)),
                )
            })
            .collect()
    }

    /// The items of a sequence, in order (empty otherwise).
    pub fn items(&self) -> Vec<Node<'a>> {
        let Some(seq) = self.value.as_sequence() else {
            return Vec::new();
        };
        let positions = match self.at {
            Some(PosNode::Seq { items, .. }) if items.len() == seq.len() => Some(items),
            _ => None,
        };
        seq.iter()
            .enumerate()
            .map(|(i, v)| Node::new(v, positions.map(|p| &p[i])))
            .collect()
    }

    /// How the value reads in a "found ..." message.
    pub fn describe(&self) -> String {
        let raw = self.raw().unwrap_or_default();
        match self.value {
            Value::Null => "nothing (null)".into(),
            Value::Bool(_) => format!("the boolean {raw}"),
            Value::Number(n) if n.is_f64() => format!("the number {raw}"),
            Value::Number(_) => format!("the integer {raw}"),
            Value::String(s) => format!("the string {}", shorten(s)),
            Value::Sequence(_) => "a list".into(),
            Value::Mapping(_) => "a mapping".into(),
            Value::Tagged(t) => format!("a value tagged {}", t.tag),
        }
    }
}

/// Quotes a string for a message, cut to a readable length.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((i, _)) => format!("{:?}...", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(src: &str) -> (Value, Option<PosNode>) {
        (serde_yaml_ng::from_str(src).unwrap(), positions(src))
    }

    fn p(line: usize, col: usize) -> Option<Pos> {
        Some(Pos { line, col })
    }

    #[test]
    fn block_mapping_positions() {
        let (v, t) = tree("a: 1\nbb:\n  - x\n  - {k: v}\n  - name: q\n");
        let root = Node::new(&v, t.as_ref());
        assert_eq!(root.pos(), p(1, 1));
        let e = root.entries();
        assert_eq!(e[0].0.pos(), p(1, 1));
        assert_eq!(e[0].1.pos(), p(1, 4));
        assert_eq!(e[0].1.raw(), Some("1"));
        assert_eq!(e[1].0.pos(), p(2, 1));
        let items = e[1].1.items();
        assert_eq!(items[0].pos(), p(3, 5));
        assert_eq!(items[1].pos(), p(4, 5));
        assert_eq!(items[2].pos(), p(5, 5));
        let inner = items[1].entries();
        assert_eq!(inner[0].0.pos(), p(4, 6));
        assert_eq!(inner[0].1.pos(), p(4, 9));
    }

    #[test]
    fn quoted_and_document_start() {
        let (v, t) = tree("---\nmode: \"0644\"\nn: 644\n");
        let e = Node::new(&v, t.as_ref()).entries();
        assert_eq!(e[0].1.pos(), p(2, 7));
        assert_eq!(e[0].1.raw(), Some("0644"));
        assert!(e[0].1.value.is_string());
        assert_eq!(e[1].1.raw(), Some("644"));
        assert!(e[1].1.value.is_i64());
    }

    #[test]
    fn aliases_copy_the_anchored_positions() {
        let (v, t) = tree("a: &x {k: 1}\nb: *x\n");
        let e = Node::new(&v, t.as_ref()).entries();
        assert_eq!(e[1].1.entries()[0].0.pos(), p(1, 8));
    }

    #[test]
    fn describe_values() {
        let (v, t) = tree("[644, true, 1.5, hi, ~, [], {}]");
        let d: Vec<String> = Node::new(&v, t.as_ref())
            .items()
            .iter()
            .map(Node::describe)
            .collect();
        assert_eq!(
            d,
            [
                "the integer 644",
                "the boolean true",
                "the number 1.5",
                "the string \"hi\"",
                "nothing (null)",
                "a list",
                "a mapping"
            ]
        );
    }
}
