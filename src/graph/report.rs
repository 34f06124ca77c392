//! Error collection and the type checks every part of the parser shares.
//!
//! [`Errors`] gathers every problem of one file, so a user fixes them all in
//! one round; the readers here check one YAML node's type, record an error
//! when it is wrong and hand back what they could read. They never stop the
//! parse: the caller skips what it could not read and goes on. Messages
//! follow STYLE.md: lowercase, no trailing period, what is wrong and what is
//! expected; the position is added by [`GraphError`]'s Display.

use serde_yaml_ng::Value;

use super::pos::Node;
use super::{GraphError, GraphErrors, Pos};
use crate::resources::{kind_names, lookup, FieldType};

/// Every error found so far in one file.
pub(crate) struct Errors {
    file: String,
    list: Vec<GraphError>,
    /// `Some` once the file's templates were rendered (on the host), with
    /// each rendered value's original text; `None` when the text is only
    /// checked as written (the initiator), where a templated value's own
    /// checks wait for the host.
    pub rendered: Option<super::Originals>,
}

impl Errors {
    pub fn new(file: &str) -> Self {
        Errors {
            file: file.to_owned(),
            list: Vec::new(),
            rendered: None,
        }
    }

    /// Records an error at `pos` (where the offending key or value starts).
    pub fn at(&mut self, pos: Option<Pos>, message: impl Into<String>) {
        self.list.push(GraphError {
            file: self.file.clone(),
            pos,
            message: message.into(),
        });
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// `file:line:col`, for messages that point at a second place.
    pub fn locate(&self, pos: Option<Pos>) -> String {
        match pos {
            Some(p) => format!("{}:{}:{}", self.file, p.line, p.col),
            None => self.file.clone(),
        }
    }

    /// `value` if nothing went wrong, else every error in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, GraphErrors> {
        if self.list.is_empty() {
            return Ok(value);
        }
        // Stable: errors at one place keep the order they were found in.
        self.list.sort_by_key(|e| e.pos);
        Err(GraphErrors(self.list))
    }
}

/// Why `node` is not of type `ty`, or `None` when it is. Strings and numbers
/// are never converted: a YAML integer is not a string field's value even
/// though it could be, since `mode: 644` means something else than `"0644"`.
pub(crate) fn type_mismatch(node: Node<'_>, ty: FieldType) -> Option<String> {
    // A YAML integer too large for i64 is not an integer field's value.
    let fits = match ty {
        FieldType::Int => node.value.is_i64(),
        _ => ty.fits(node.value),
    };
    if fits {
        return None;
    }
    let mut msg = format!("expected {}, found {}", ty.describe(), node.describe());
    let raw = node.raw().unwrap_or_default();
    match (ty, node.value) {
        (FieldType::Str, Value::Number(_) | Value::Bool(_)) => {
            msg.push_str(&format!("; quote it: \"{raw}\""));
        }
        (FieldType::Int, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            msg.push_str("; remove the quotes");
        }
        (FieldType::Bool, Value::String(s)) if s == "true" || s == "false" => {
            msg.push_str("; remove the quotes");
        }
        _ => {}
    }
    Some(msg)
}

/// Checks `node` against `ty`, reporting `what: ...` at the value on error.
pub(crate) fn check_type(node: Node<'_>, ty: FieldType, what: &str, errs: &mut Errors) -> bool {
    match type_mismatch(node, ty) {
        None => true,
        Some(msg) => {
            errs.at(node.pos(), format!("{what}: {msg}"));
            false
        }
    }
}

/// A string value, or an error naming `what`.
pub(crate) fn read_str(node: Node<'_>, what: &str, errs: &mut Errors) -> Option<String> {
    if !check_type(node, FieldType::Str, what, errs) {
        return None;
    }
    node.value.as_str().map(str::to_owned)
}

/// A non-empty string value; `example` shows what a good one looks like.
pub(crate) fn read_name(
    node: Node<'_>,
    what: &str,
    example: &str,
    errs: &mut Errors,
) -> Option<String> {
    let s = read_str(node, what, errs)?;
    if s.trim().is_empty() {
        errs.at(
            node.pos(),
            format!("{what} must not be empty; expected e.g. {example}"),
        );
        return None;
    }
    Some(s)
}

pub(crate) fn read_bool(node: Node<'_>, what: &str, errs: &mut Errors) -> Option<bool> {
    if !check_type(node, FieldType::Bool, what, errs) {
        return None;
    }
    node.value.as_bool()
}

pub(crate) fn read_int(node: Node<'_>, what: &str, errs: &mut Errors) -> Option<i64> {
    if !check_type(node, FieldType::Int, what, errs) {
        return None;
    }
    node.value.as_i64()
}

/// The items of a list; an empty value (`edges:`) is an empty list, as
/// mgmt's Go parser reads it.
pub(crate) fn read_list<'a>(
    node: Node<'a>,
    what: &str,
    expected: &str,
    errs: &mut Errors,
) -> Option<Vec<Node<'a>>> {
    match node.value {
        Value::Null => Some(Vec::new()),
        Value::Sequence(_) => Some(node.items()),
        _ => {
            let found = node.describe();
            errs.at(
                node.pos(),
                format!("{what}: expected {expected}, found {found}"),
            );
            None
        }
    }
}

/// The entries of a mapping whose keys are all strings; an empty value is an
/// empty mapping. Non-string keys are reported and left out.
pub(crate) fn read_map<'a>(
    node: Node<'a>,
    what: &str,
    expected: &str,
    errs: &mut Errors,
) -> Option<Vec<Key<'a>>> {
    match node.value {
        Value::Null => return Some(Vec::new()),
        Value::Mapping(_) => {}
        _ => {
            let found = node.describe();
            errs.at(
                node.pos(),
                format!("{what}: expected {expected}, found {found}"),
            );
            return None;
        }
    }
    let mut keys = Vec::new();
    for (k, v) in node.entries() {
        match k.value.as_str() {
            Some(name) => keys.push(Key {
                name,
                pos: k.pos(),
                value: v,
            }),
            None => errs.at(
                k.pos(),
                format!("{what}: expected a key name, found {}", k.describe()),
            ),
        }
    }
    Some(keys)
}

/// One `name: value` entry of a mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    pub name: &'a str,
    /// Where the key is written.
    pub pos: Option<Pos>,
    pub value: Node<'a>,
}

/// Reports an unknown key of `what`, listing the `known` ones.
pub(crate) fn unknown_key(key: &Key<'_>, what: &str, known: &[&str], errs: &mut Errors) {
    errs.at(
        key.pos,
        format!(
            "{what}: unknown key {:?}; expected one of: {}",
            key.name,
            known.join(", ")
        ),
    );
}

/// A kind name, case-insensitively, as its canonical spelling.
pub(crate) fn read_kind(node: Node<'_>, what: &str, errs: &mut Errors) -> Option<&'static str> {
    let name = read_str(node, what, errs)?;
    match lookup(&name) {
        Some(spec) => Some(spec.kind),
        None => {
            errs.at(node.pos(), unknown_kind(&name));
            None
        }
    }
}

/// The message for a kind no [`crate::resources::KINDS`] entry has.
pub(crate) fn unknown_kind(name: &str) -> String {
    format!(
        "unknown resource kind {name:?}; expected one of: {}",
        kind_names().join(", ")
    )
}
