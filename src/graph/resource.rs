//! The `resources:` section: kinds, resource declarations and their meta.
//!
//! Each resource mapping is checked against its kind's
//! [`FieldSpec`](crate::resources::FieldSpec)s (known fields, required ones,
//! types); only when all of that passes is the kind's constructor run to
//! check the values, so its errors never hide a type error. `@@` names are
//! exported resources: the prefix is stripped here and duplicates count them
//! by the stripped name. Edges and what they may refer to are checked in
//! [`super::edge`].

use std::collections::HashMap;

use serde_yaml_ng::{Mapping, Value};

use super::pos::Node;
use super::report::{
    check_type, read_bool, read_int, read_list, read_map, read_name, read_str, unknown_kind,
    Errors, Key,
};
use super::template::is_template;
use super::{Meta, Pos, ResourceDecl, When};
use crate::resources::{lookup, KindSpec};

const META_KEYS: &[&str] = &["noop", "retry", "delay", "when"];

/// Reads every resource of every kind; duplicates are reported and dropped.
pub(super) fn read_resources(node: Node<'_>, errs: &mut Errors) -> Vec<ResourceDecl> {
    let expected = "a mapping of kind to a list of resources, e.g. file: [{name: ...}]";
    let Some(kinds) = read_map(node, "resources", expected, errs) else {
        return Vec::new();
    };
    let mut decls = Vec::new();
    // Where each kind[name] was first declared (its `name:` value).
    let mut seen: HashMap<(&'static str, String), Option<Pos>> = HashMap::new();
    for key in &kinds {
        let Some(spec) = lookup(key.name) else {
            errs.at(key.pos, unknown_kind(key.name));
            continue;
        };
        let what = format!("resources: {}", key.name);
        let expected = "a list of resources (- name: NAME ...)";
        let Some(items) = read_list(key.value, &what, expected, errs) else {
            continue;
        };
        for item in items {
            let Some((decl, name_pos)) = read_resource(spec, item, errs) else {
                continue;
            };
            let id = (decl.kind, decl.name.clone());
            if let Some(first) = seen.get(&id) {
                let first = errs.locate(*first);
                let msg = format!(
                    "duplicate resource {}; the first one is at {first} (names are unique per kind, a leading @@ does not count)",
                    decl.id()
                );
                errs.at(name_pos, msg);
                continue;
            }
            seen.insert(id, name_pos);
            decls.push(decl);
        }
    }
    decls
}

/// One resource mapping; `None` when it has no usable name. Also gives the
/// position of the `name:` value.
fn read_resource(
    spec: &'static KindSpec,
    item: Node<'_>,
    errs: &mut Errors,
) -> Option<(ResourceDecl, Option<Pos>)> {
    let what = format!("resources: {}", spec.kind);
    let keys = read_map(
        item,
        &what,
        "a resource mapping like {name: NAME, ...}",
        errs,
    )?;
    let before = errs.count();
    let name_key = keys.iter().find(|k| k.name == "name");
    let name = match name_key {
        Some(key) => read_resource_name(key.value, spec.kind, errs),
        None => {
            let msg = format!("{} resource: missing name; expected name: NAME", spec.kind);
            errs.at(item.pos(), msg);
            None
        }
    };
    let label = match &name {
        Some((n, _)) => format!("{}[{n}]", spec.kind),
        None => format!("{} resource", spec.kind),
    };
    let mut fields = Fields::default();
    for key in &keys {
        match key.name {
            "name" => {}
            "meta" => fields.meta = read_meta(key.value, &label, errs),
            _ => fields.read(spec, key, &label, errs),
        }
    }
    for f in spec.fields.iter().filter(|f| f.required) {
        if !fields.pos.contains_key(f.name) {
            let msg = format!("{label}: missing required field {} ({})", f.name, f.doc);
            errs.at(item.pos(), msg);
        }
    }
    let name = name?;
    let name_pos = name_key.and_then(|k| k.value.pos());
    // Values still to be rendered are checked on the host, once they are.
    let templated = errs.rendered.is_none()
        && (is_template(&name.0)
            || fields
                .params
                .values()
                .any(|v| v.as_str().is_some_and(is_template)));
    if errs.count() == before && !templated {
        build(spec, &name.0, &fields, name_pos, item.pos(), errs);
    }
    let (name, exported) = name;
    let decl = ResourceDecl {
        kind: spec.kind,
        name,
        exported,
        params: fields.params,
        meta: fields.meta,
        pos: item.pos().unwrap_or_default(),
    };
    Some((decl, name_pos))
}

/// The name without `@@`, and whether it had one.
fn read_resource_name(node: Node<'_>, kind: &str, errs: &mut Errors) -> Option<(String, bool)> {
    let what = format!("{kind} resource: name");
    let name = read_name(node, &what, "name: NAME", errs)?;
    match name.strip_prefix("@@") {
        None => Some((name, false)),
        Some(rest) if rest.trim().is_empty() => {
            let msg = format!("{what}: {name:?} has nothing after @@; expected e.g. @@NAME");
            errs.at(node.pos(), msg);
            None
        }
        Some(rest) => Some((rest.to_owned(), true)),
    }
}

/// The kind's own fields of one resource, as they are read.
#[derive(Default)]
struct Fields {
    /// Type-checked values, for [`ResourceDecl::params`].
    params: Mapping,
    /// Where each present field's value is, well-typed or not.
    pos: HashMap<&'static str, Option<Pos>>,
    meta: Meta,
}

impl Fields {
    fn read(&mut self, spec: &KindSpec, key: &Key<'_>, label: &str, errs: &mut Errors) {
        let Some(field) = spec.fields.iter().find(|f| f.name == key.name) else {
            let known: Vec<&str> = ["name", "meta"]
                .into_iter()
                .chain(spec.fields.iter().map(|f| f.name))
                .collect();
            let msg = format!(
                "{label}: unknown field {:?}; {} takes: {}",
                key.name,
                spec.kind,
                known.join(", ")
            );
            errs.at(key.pos, msg);
            return;
        };
        self.pos.insert(field.name, key.value.pos());
        let what = format!("{label}: {}", field.name);
        if check_type(key.value, field.ty, &what, errs) {
            let value = key.value.value.clone();
            self.params.insert(Value::String(field.name.into()), value);
        }
    }
}

/// Runs the kind's constructor to check the values, and points its error at
/// the field it names.
fn build(
    spec: &KindSpec,
    name: &str,
    fields: &Fields,
    name_pos: Option<Pos>,
    item_pos: Option<Pos>,
    errs: &mut Errors,
) {
    let Err(e) = (spec.build)(name, &fields.params) else {
        return;
    };
    let pos = match e.field {
        Some("name") => name_pos,
        Some(f) => fields.pos.get(f).copied().flatten().or(item_pos),
        None => item_pos,
    };
    errs.at(pos, format!("{}[{name}]: {}", spec.kind, e.message));
}

/// `meta.when`: a string that renders to `true` or `false`. Checked as
/// written (not rendered yet) a template is taken as it is, not ready.
fn read_when(node: Node<'_>, field: &str, errs: &mut Errors) -> Option<When> {
    let text = read_str(node, field, errs)?;
    let expr = node
        .pos()
        .and_then(|p| errs.rendered.as_ref()?.get(&p).cloned())
        .unwrap_or_else(|| text.clone());
    if errs.rendered.is_none() && is_template(&text) {
        return Some(When { expr, ready: false });
    }
    match text.trim() {
        "true" | "True" => Some(When { expr, ready: true }),
        "false" | "False" => Some(When { expr, ready: false }),
        other => {
            let msg = format!(
                "{field}: {expr:?} rendered to {other:?}; expected true or false, e.g. when: \"{{{{ values('peer') | length == host.count }}}}\""
            );
            errs.at(node.pos(), msg);
            None
        }
    }
}

/// `meta: {noop, retry, delay, when}`; what is wrong is reported and left default.
fn read_meta(node: Node<'_>, label: &str, errs: &mut Errors) -> Meta {
    let what = format!("{label}: meta");
    let expected = "a mapping like {noop: true, retry: 3, delay: 1000}";
    let mut meta = Meta::default();
    let Some(keys) = read_map(node, &what, expected, errs) else {
        return meta;
    };
    for key in &keys {
        let field = format!("{what}: {}", key.name);
        match key.name {
            "noop" => meta.noop = read_bool(key.value, &field, errs).unwrap_or(meta.noop),
            "retry" => match read_int(key.value, &field, errs) {
                Some(n) if n >= -1 => meta.retry = n,
                Some(n) => errs.at(
                    key.value.pos(),
                    format!("{field} must be -1 (retry forever) or a count of 0 or more, not {n}"),
                ),
                None => {}
            },
            "delay" => match read_int(key.value, &field, errs).map(u64::try_from) {
                Some(Ok(ms)) => meta.delay_ms = ms,
                Some(Err(_)) => errs.at(
                    key.value.pos(),
                    format!("{field} must be a number of milliseconds, 0 or more"),
                ),
                None => {}
            },
            "when" => meta.when = read_when(key.value, &field, errs),
            _ => {
                let msg = format!(
                    "{label}: unknown meta field {:?}; expected one of: {}",
                    key.name,
                    META_KEYS.join(", ")
                );
                errs.at(key.pos, msg);
            }
        }
    }
    meta
}
