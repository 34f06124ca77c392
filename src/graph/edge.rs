//! The `edges:` section: what each edge joins, Send/Recv, and cycles.
//!
//! Runs after `resources:` is read, so an edge can be checked against the
//! declared resources wherever it appears in the file. An edge may only join
//! local resources (exported `@@` ones are applied elsewhere); `send` and
//! `recv` must name fields the two kinds really send and receive (for
//! `recv`, the kind's `receives` list, which is what its `set_field`
//! accepts at run time), of the same type. Cycles are found by
//! [`super::dag`] once every edge is read, and each is reported at the edge
//! that closes it.

use std::collections::HashMap;

use super::dag::Dag;
use super::pos::Node;
use super::report::{
    read_bool, read_kind, read_list, read_map, read_name, unknown_key, Errors, Key,
};
use super::{Edge, Located, Pos, ResourceDecl, VertexRef};
use crate::resources::lookup;

const EDGE_KEYS: &[&str] = &["name", "from", "to", "notify", "send", "recv"];
const END_KEYS: &[&str] = &["kind", "name"];
const END_EXAMPLE: &str = "{kind: KIND, name: NAME}";

/// Reads every edge and reports cycles among them.
pub(super) fn read_edges(
    node: Node<'_>,
    resources: &[ResourceDecl],
    errs: &mut Errors,
) -> Vec<Edge> {
    let expected = "a list of edges (- name: e1, from: ..., to: ...)";
    let items = read_list(node, "edges", expected, errs).unwrap_or_default();
    let mut edges = Vec::new();
    // Which edge feeds each received field, and where its `recv:` is.
    let mut receivers: HashMap<(VertexRef, String), (String, Option<Pos>)> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let Some(Read {
            edge,
            label,
            recv_pos,
        }) = read_edge(*item, i, resources, errs)
        else {
            continue;
        };
        if let (Some(_), Some(field)) = (&edge.send, &edge.recv) {
            let slot = (edge.to.clone(), field.clone());
            match receivers.get(&slot) {
                Some((other, at)) => {
                    let msg = format!(
                        "{label}: recv: {}.{field} already receives from {other} at {}; a field can receive from one edge only",
                        edge.to,
                        errs.locate(*at)
                    );
                    errs.at(recv_pos, msg);
                }
                None => {
                    receivers.insert(slot, (label, recv_pos));
                }
            }
        }
        edges.push(edge);
    }
    report_cycles(resources, &edges, errs);
    edges
}

/// What one edge mapping says, as it is read.
#[derive(Default)]
struct Parts {
    from: Option<VertexRef>,
    to: Option<VertexRef>,
    notify: bool,
    send: Option<Located<String>>,
    recv: Option<Located<String>>,
}

impl Parts {
    fn read(&mut self, key: &Key<'_>, label: &str, resources: &[ResourceDecl], errs: &mut Errors) {
        let what = format!("{label}: {}", key.name);
        let located = |v: Option<String>| {
            v.map(|value| Located {
                value,
                pos: key.value.pos().unwrap_or_default(),
            })
        };
        match key.name {
            "name" => {}
            "from" => self.from = read_end(key.value, &what, resources, errs),
            "to" => self.to = read_end(key.value, &what, resources, errs),
            "notify" => self.notify = read_bool(key.value, &what, errs).unwrap_or(false),
            "send" => self.send = located(read_name(key.value, &what, "send: password", errs)),
            "recv" => self.recv = located(read_name(key.value, &what, "recv: content", errs)),
            _ => unknown_key(key, label, EDGE_KEYS, errs),
        }
    }
}

/// An edge as read, with what later checks need to report on it.
struct Read {
    edge: Edge,
    /// `edge "NAME"`, or `edge #N` for an unnamed one.
    label: String,
    recv_pos: Option<Pos>,
}

/// One edge; `None` when its ends cannot be read (already reported).
fn read_edge(
    item: Node<'_>,
    index: usize,
    resources: &[ResourceDecl],
    errs: &mut Errors,
) -> Option<Read> {
    let expected = "an edge like {name: e1, from: {...}, to: {...}}";
    let keys = read_map(item, "edges", expected, errs)?;
    let name_key = keys.iter().find(|k| k.name == "name");
    let name = name_key.and_then(|k| read_name(k.value, "edge: name", "name: e1", errs));
    let label = match &name {
        Some(n) => format!("edge {n:?}"),
        None => format!("edge #{}", index + 1),
    };
    let mut parts = Parts::default();
    for key in &keys {
        parts.read(key, &label, resources, errs);
    }
    for side in ["from", "to"] {
        if !keys.iter().any(|k| k.name == side) {
            let msg = format!("{label}: missing {side}; expected {side}: {END_EXAMPLE}");
            errs.at(item.pos(), msg);
        }
    }
    check_pairing(&parts, &label, errs);
    let (from, to) = (parts.from?, parts.to?);
    if let (Some(send), Some(recv)) = (&parts.send, &parts.recv) {
        check_send_recv(&from, &to, send, recv, &label, errs);
    }
    let recv_pos = parts.recv.as_ref().and_then(|r| known(r.pos));
    let edge = Edge {
        name: name.unwrap_or_else(|| format!("{from} -> {to}")),
        from,
        to,
        notify: parts.notify,
        send: parts.send.map(|s| s.value),
        recv: parts.recv.map(|r| r.value),
        pos: item.pos().unwrap_or_default(),
    };
    Some(Read {
        edge,
        label,
        recv_pos,
    })
}

/// `from:` or `to:`: a `{kind, name}` naming a local resource. An unknown
/// or exported resource is reported but still returned, so the Send/Recv
/// checks, which only need the kind, still run.
fn read_end(
    node: Node<'_>,
    what: &str,
    resources: &[ResourceDecl],
    errs: &mut Errors,
) -> Option<VertexRef> {
    let keys = read_map(node, what, &format!("a mapping like {END_EXAMPLE}"), errs)?;
    let (mut kind, mut name, mut name_pos) = (None, None, None);
    for key in &keys {
        match key.name {
            "kind" => kind = read_kind(key.value, &format!("{what}: kind"), errs),
            "name" => {
                name = read_name(key.value, &format!("{what}: name"), "name: NAME", errs);
                name_pos = key.value.pos();
            }
            _ => unknown_key(key, what, END_KEYS, errs),
        }
    }
    for side in END_KEYS {
        if !keys.iter().any(|k| k.name == *side) {
            let msg = format!("{what}: missing {side}; expected {END_EXAMPLE}");
            errs.at(node.pos(), msg);
        }
    }
    let name = name?;
    let vref = VertexRef {
        kind: kind?,
        name: name.strip_prefix("@@").unwrap_or(&name).to_owned(),
    };
    match resources
        .iter()
        .find(|r| r.kind == vref.kind && r.name == vref.name)
    {
        None => errs.at(
            name_pos,
            format!("{what}: unknown resource {vref}; {}", declared(resources, vref.kind)),
        ),
        Some(r) if r.exported => errs.at(
            name_pos,
            format!("{what}: {vref} is exported (@@) and not applied on this host; an edge can only join local resources"),
        ),
        Some(_) => {}
    }
    Some(vref)
}

/// Which resources of `kind` exist, for an "unknown resource" hint.
fn declared(resources: &[ResourceDecl], kind: &str) -> String {
    let names: Vec<&str> = resources
        .iter()
        .filter(|r| r.kind == kind && !r.exported)
        .map(|r| r.name.as_str())
        .collect();
    match names.len() {
        0 => format!("no local {kind} resource is declared"),
        1..=10 => format!("expected one of the {kind} resources: {}", names.join(", ")),
        n => format!("{n} {kind} resources are declared, this is not one of them"),
    }
}

/// `send` and `recv` go together.
fn check_pairing(parts: &Parts, label: &str, errs: &mut Errors) {
    match (&parts.send, &parts.recv) {
        (Some(s), None) => errs.at(
            known(s.pos),
            format!(
                "{label}: send without recv; expected both, e.g. send: password and recv: content"
            ),
        ),
        (None, Some(r)) => errs.at(
            known(r.pos),
            format!(
                "{label}: recv without send; expected both, e.g. send: password and recv: content"
            ),
        ),
        _ => {}
    }
}

/// The sender must send `send`, the receiver receive `recv`, same type.
fn check_send_recv(
    from: &VertexRef,
    to: &VertexRef,
    send: &Located<String>,
    recv: &Located<String>,
    label: &str,
    errs: &mut Errors,
) {
    let (Some(sender), Some(receiver)) = (lookup(from.kind), lookup(to.kind)) else {
        return;
    };
    let sent = sender.send_field(&send.value);
    if sent.is_none() {
        let can: Vec<&str> = sender
            .fields
            .iter()
            .chain(sender.sends)
            .map(|f| f.name)
            .collect();
        let msg = format!(
            "{label}: send: {} has no field {:?} to send; it can send: {}",
            from.kind,
            send.value,
            list_or_nothing(&can)
        );
        errs.at(known(send.pos), msg);
    }
    let received = receiver.recv_field(&recv.value);
    if received.is_none() {
        let (kind, field) = (to.kind, &recv.value);
        let what = match receiver.fields.iter().any(|f| f.name == *field) {
            true => format!("{kind} field {field:?} cannot be received along an edge"),
            false => format!("{kind} has no field {field:?} to receive"),
        };
        let msg = format!(
            "{label}: recv: {what}; it can receive: {}",
            list_or_nothing(receiver.receives)
        );
        errs.at(known(recv.pos), msg);
    }
    if let (Some(s), Some(r)) = (sent, received) {
        if s.ty != r.ty {
            let msg = format!(
                "{label}: {from}.{} is {} but {to}.{} is {}; send and recv must have the same type",
                s.name,
                s.ty.describe(),
                r.name,
                r.ty.describe()
            );
            errs.at(known(recv.pos), msg);
        }
    }
}

fn list_or_nothing(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// One error per dependency cycle, at the edge that closes it.
fn report_cycles(resources: &[ResourceDecl], edges: &[Edge], errs: &mut Errors) {
    for cycle in Dag::from_graph(resources, edges).cycles() {
        let mut path: Vec<String> = cycle.vertices.iter().map(|&v| resources[v].id()).collect();
        if let Some(first) = path.first().cloned() {
            path.push(first);
        }
        let names: Vec<String> = cycle
            .edges
            .iter()
            .map(|&e| format!("{:?}", edges[e].name))
            .collect();
        let closing = cycle.edges.last().map(|&e| edges[e].pos);
        let msg = format!(
            "dependency cycle: {}; remove or reverse one of its edges ({})",
            path.join(" -> "),
            names.join(", ")
        );
        errs.at(closing.and_then(known), msg);
    }
}

/// A stored position, or `None` for the default one used when the position
/// was not known.
fn known(pos: Pos) -> Option<Pos> {
    (pos != Pos::default()).then_some(pos)
}
