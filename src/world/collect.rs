//! What a list of `collect:` entries selects, as pure functions over keys:
//! which key ranges to read and watch ([`prefixes`]), which keys matter
//! ([`matches`]) and what they resolve to ([`resolve`]).
//!
//! Ranges are narrowed on the literal start of each hostname glob: `h0123?`
//! reads and watches `/_mgmt/exported/h0123`, a glob without wildcards one
//! host's subtree, no glob everything. A range is a superset of what the
//! glob selects (`web*` also covers `webserver`), so the glob is always
//! applied again by [`matches`]. No I/O here; [`super::follow`] does it.

use std::collections::BTreeMap;

use super::{decode, root_of, EXPORTED, VALUES};
use crate::graph::{glob_match, Collect, ResourceDecl};

/// The key prefix that holds every `kind` resource of the hosts `glob`
/// can match (`kv` values have a root of their own).
fn prefix_of(kind: &str, glob: Option<&str>) -> String {
    let root = root_of(kind);
    let Some(glob) = glob else {
        return root.to_owned();
    };
    match glob.find(['*', '?']) {
        Some(i) => format!("{root}{}", &glob[..i]),
        // One host exactly: its own subtree, not `web1` for `web10` too.
        None => format!("{root}{glob}/"),
    }
}

/// The prefixes to read and watch for `entries`, sorted, none covering
/// another: a prefix that starts with an earlier one is dropped, so no key
/// is read or watched twice. Empty when `entries` is.
pub(crate) fn prefixes(entries: &[Collect]) -> Vec<String> {
    let mut all: Vec<String> = entries
        .iter()
        .map(|c| prefix_of(c.kind, c.hostname.as_deref()))
        .collect();
    all.sort();
    let mut out: Vec<String> = Vec::new();
    // Sorted, the keys under a prefix follow it contiguously, so a covered
    // prefix is always covered by the last one kept.
    for p in all {
        if !out.last().is_some_and(|q| p.starts_with(q.as_str())) {
            out.push(p);
        }
    }
    out
}

/// What the store side of `entries` depends on: kinds and globs, not
/// patterns. Two lists with the same selection read the same keys.
pub(crate) fn selection(entries: &[Collect]) -> Vec<(String, Option<&str>)> {
    let mut s: Vec<_> = entries
        .iter()
        .map(|c| (c.kind.to_ascii_lowercase(), c.hostname.as_deref()))
        .collect();
    s.sort();
    s.dedup();
    s
}

/// Whether `key` is an exported resource that some entry collects.
pub(crate) fn matches(entries: &[Collect], key: &str) -> bool {
    let Some((host, kind, _)) = split_key(key) else {
        return false;
    };
    entries.iter().any(|c| selects(c, host, kind))
}

fn selects(c: &Collect, host: &str, kind: &str) -> bool {
    c.kind.eq_ignore_ascii_case(kind) && c.hostname.as_deref().is_none_or(|g| glob_match(g, host))
}

/// The resources `entries` collect from `kvs` (key → value, in key order),
/// patterns applied. The same kind and name exported by two hosts with
/// different fields: the first host in key order wins, with a warning
/// (none for `kv`, whose values differ by host by design and are read per
/// host; a file's clash is refused by the caller, see [`collision`]).
pub(crate) fn resolve(entries: &[Collect], kvs: &BTreeMap<String, Vec<u8>>) -> Vec<ResourceDecl> {
    let mut out: BTreeMap<(&'static str, String), (&str, ResourceDecl)> = BTreeMap::new();
    for (key, value) in kvs {
        let Some((host, kind, name)) = split_key(key) else {
            continue;
        };
        for c in entries.iter().filter(|c| selects(c, host, kind)) {
            let decl = match decode(kind, name, value, c.pattern.as_deref()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(
                        "cannot collect {kind}[{name}] exported by host {host:?} ({key}): {e}"
                    );
                    continue;
                }
            };
            match out.get(&(decl.kind, decl.name.clone())) {
                Some((other, prev)) if prev.params != decl.params && decl.kind != "kv" => {
                    tracing::warn!(
                        "{}: exported by both {other} and {host} with different fields; using {other}'s",
                        decl.id()
                    );
                }
                Some(_) => {}
                None => {
                    out.insert((decl.kind, decl.name.clone()), (host, decl));
                }
            }
        }
    }
    out.into_values().map(|(_, d)| d).collect()
}

/// Two hosts' collected files that would land on one path with different
/// fields (#15): an error, never a silent pick of one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("collect: host {first:?} and host {second:?} both export a file that lands on {path} ({first_key} and {second_key}), with different fields; refusing to pick one (hint: give each host its own path, e.g. path: \"/srv/conf-{{{{ host.name }}}}\", or collect from one host with hostname:)")]
pub struct Collision {
    /// The `collect:` entry that brought the second one in.
    pub pos: crate::graph::Pos,
    pub path: String,
    pub first: String,
    pub first_key: String,
    pub second: String,
    pub second_key: String,
}

/// The first pair of files from different hosts that `entries` would place
/// on the same path with different fields, in key order.
pub(crate) fn collision(entries: &[Collect], kvs: &BTreeMap<String, Vec<u8>>) -> Option<Collision> {
    let mut landed: BTreeMap<String, (&str, &str, ResourceDecl)> = BTreeMap::new();
    for (key, value) in kvs {
        let Some((host, kind, name)) = split_key(key) else {
            continue;
        };
        for c in entries
            .iter()
            .filter(|c| c.kind == "file" && selects(c, host, kind))
        {
            let Ok(decl) = decode(kind, name, value, c.pattern.as_deref()) else {
                continue;
            };
            let path = decl
                .params
                .get("path")
                .and_then(|v| v.as_str())
                .unwrap_or(&decl.name)
                .to_owned();
            match landed.get(&path) {
                Some((other, other_key, prev)) if *other != host && prev.params != decl.params => {
                    return Some(Collision {
                        pos: c.pos,
                        path,
                        first: (*other).to_owned(),
                        first_key: (*other_key).to_owned(),
                        second: host.to_owned(),
                        second_key: key.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    landed.insert(path, (host, key, decl));
                }
            }
        }
    }
    None
}

/// `<host>/resources/<kind>/<name>` after the root; a key under the root
/// that is not its kind's (a `kv` under the exports, say) is none.
pub(crate) fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let (root, rest) = [EXPORTED, VALUES]
        .into_iter()
        .find_map(|r| Some((r, key.strip_prefix(r)?)))?;
    let mut parts = rest.splitn(4, '/');
    let host = parts.next()?;
    (parts.next()? == "resources").then_some(())?;
    let kind = parts.next()?;
    let name = parts.next()?;
    (root_of(kind) == root).then_some((host, kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &'static str, hostname: Option<&str>) -> Collect {
        Collect {
            kind,
            pattern: None,
            hostname: hostname.map(str::to_owned),
            pos: Default::default(),
        }
    }

    fn key(host: &str, name: &str) -> String {
        format!("{EXPORTED}{host}/resources/file/{name}")
    }

    #[test]
    fn keys_split_into_host_kind_name() {
        assert_eq!(
            split_key("/_mgmt/exported/h1/resources/file/a/b"),
            Some(("h1", "file", "a/b"))
        );
        assert_eq!(split_key("/_mgmt/exported/h1/other/file/a"), None);
    }

    #[test]
    fn prefixes_stop_at_the_first_wildcard() {
        let p = |g: Option<&str>| prefixes(&[entry("file", g)]);
        assert_eq!(p(Some("h0123?")), ["/_mgmt/exported/h0123"]);
        assert_eq!(p(Some("web*-a")), ["/_mgmt/exported/web"]);
        assert_eq!(p(Some("*")), ["/_mgmt/exported/"]);
        assert_eq!(p(Some("web1")), ["/_mgmt/exported/web1/"]);
        assert_eq!(p(None), ["/_mgmt/exported/"]);
        assert!(prefixes(&[]).is_empty());
    }

    #[test]
    fn covered_prefixes_are_merged() {
        let got = prefixes(&[
            entry("file", Some("web1?")),
            entry("file", Some("db?")),
            entry("exec", Some("web*")),
            entry("file", Some("web1")),
            entry("file", Some("db?")),
            entry("file", Some("dc1")),
        ]);
        assert_eq!(
            got,
            [
                "/_mgmt/exported/db",
                "/_mgmt/exported/dc1/",
                "/_mgmt/exported/web"
            ]
        );
        let all = prefixes(&[entry("file", Some("h1*")), entry("file", None)]);
        assert_eq!(all, ["/_mgmt/exported/"]);
    }

    #[test]
    fn the_glob_still_applies_inside_the_prefix() {
        let e = [entry("file", Some("web*")), entry("exec", Some("db?"))];
        assert!(matches(&e, &key("web1", "a")));
        assert!(matches(&e, &key("webserver", "a")));
        let e = [entry("file", Some("web?"))];
        assert!(matches(&e, &key("web1", "a")));
        assert!(!matches(&e, &key("webserver", "a")));
        assert!(!matches(&e, &key("db1", "a")));
        assert!(!matches(&e, "/_mgmt/exported/web1/other/file/a"));
        let exec = format!("{EXPORTED}web1/resources/exec/a");
        assert!(!matches(&e, &exec));
    }

    #[test]
    fn selection_ignores_patterns_and_order() {
        let mut a = entry("file", Some("web?"));
        a.pattern = Some("/srv/".into());
        let b = entry("exec", None);
        assert_eq!(
            selection(&[a.clone(), b.clone()]),
            selection(&[b.clone(), entry("file", Some("web?")), b])
        );
        assert_ne!(selection(&[a]), selection(&[entry("file", Some("web*"))]));
    }

    #[test]
    fn first_host_wins_a_conflict() {
        let value = |content: &str| format!("path: /srv/x\ncontent: {content}\n").into_bytes();
        let kvs: BTreeMap<String, Vec<u8>> = [
            (key("b", "x"), value("from b")),
            (key("a", "x"), value("from a")),
            (key("c", "y"), value("only c")),
        ]
        .into_iter()
        .collect();
        let got = resolve(&[entry("file", None)], &kvs);
        let content: Vec<_> = got
            .iter()
            .map(|d| d.params.get("content").and_then(|v| v.as_str()))
            .collect();
        assert_eq!(content, [Some("from a"), Some("only c")]);
    }
}
