//! The map of the source, kept true: layers only point down, and no file
//! uses a file that uses it back.
//!
//! The layer order is written once, in `src/lib.rs`'s Layout list
//! (`//! - layer N, [`room`]: …`, bottom layer first); this test reads it
//! from there. It then reads every `crate::` and `super::` path in `src/`
//! (`use` lines and paths in code alike; comments are skipped) and fails
//! when a room uses a room of its own layer or a higher one, or when the
//! files' use graph has a circle. A folder's `pub use child::X` re-exports
//! are its front door, not a use, and are not counted. See: #12.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `["ssh", "session"]` for `src/ssh/session.rs`.
type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `room -> layer` from lib.rs's Layout list.
fn layers() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read src/lib.rs");
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! - layer ") else {
            continue;
        };
        let (n, rest) = rest.split_once(", [`").expect("`- layer N, [`room`]: …`");
        let room = rest.split_once("`]").expect("closing `]").0;
        let n: u32 = n.parse().expect("a layer number");
        assert!(
            out.insert(room.to_owned(), n).is_none(),
            "{room} listed twice"
        );
    }
    out
}

/// Every `.rs` file under `src/` with its module path (`lib.rs` and
/// `main.rs`, the crate roots, are left out: they name every room).
fn source_files() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModPath, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let mut here = prefix.to_vec();
            if path.is_dir() {
                here.push(name);
                walk(&path, &here, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if name != "mod" {
                    here.push(name);
                }
                if !(prefix.is_empty() && (here == ["lib"] || here == ["main"])) {
                    out.insert(here, path);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src_dir(), &[], &mut out);
    out
}

/// The text of a file without comments (whole-line `//` comments, which
/// include every doc comment, and the rest of a line after ` // `).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_owned()];
    };
    let (head, inner) = (&path[..open], &path[open + 1..path.len() - 1]);
    let (mut items, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    items.push(cur);
    items
        .iter()
        .map(|i| i.trim())
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand(&format!("{head}{i}")))
        .collect()
}

/// Every path after `crate::`, `super::` or `self::` in `code`, braces
/// expanded, as (anchor, segments).
fn paths(code: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for anchor in ["crate", "super", "self"] {
        let pat = format!("{anchor}::");
        let mut at = 0;
        while let Some(i) = code[at..].find(&pat) {
            let start = at + i;
            at = start + pat.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = path_end(&code[at..]);
            for p in expand(&code[at..at + end].replace('\n', " ")) {
                let segs = p
                    .split("::")
                    .map(|s| s.split(" as ").next().unwrap_or(s).trim());
                out.push((anchor_name(anchor), segs.map(str::to_owned).collect()));
            }
        }
    }
    out
}

fn anchor_name(a: &str) -> &'static str {
    match a {
        "crate" => "crate",
        "super" => "super",
        _ => "self",
    }
}

/// Length of the path at the start of `s`: identifiers, `::` and a
/// balanced `{…}` group.
fn path_end(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => return i,
        }
    }
    s.len()
}

/// The file a path names: the longest prefix that is a file's module.
fn resolve(
    files: &BTreeMap<ModPath, PathBuf>,
    here: &ModPath,
    anchor: &str,
    segs: &[String],
) -> Option<ModPath> {
    // A folder's mod.rs has the folder's path, so `self` and `super` mean
    // the same for it as for a file.
    let mut full: ModPath = match anchor {
        "crate" => Vec::new(),
        "self" => here.clone(),
        _ => here[..here.len().saturating_sub(1)].to_vec(),
    };
    let mut segs = segs;
    while anchor == "super" && segs.first().is_some_and(|s| s == "super") {
        full.pop();
        segs = &segs[1..];
    }
    full.extend(segs.iter().filter(|s| *s != "self").cloned());
    (1..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|p| files.contains_key(p))
}

/// `file -> files it uses`.
fn use_graph(files: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut graph = BTreeMap::new();
    for (m, path) in files {
        let text = std::fs::read_to_string(path).expect("read source");
        let mut uses = BTreeSet::new();
        for (anchor, segs) in paths(&code_of(&text)) {
            if let Some(t) = resolve(files, m, anchor, &segs) {
                if &t != m {
                    uses.insert(t);
                }
            }
        }
        graph.insert(m.clone(), uses);
    }
    graph
}

/// The circles of `graph`: each strongly connected set of two or more files.
fn circles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // A file is on a circle with every file it reaches that reaches it back.
    let reach = |from: &ModPath| {
        let (mut seen, mut stack) = (BTreeSet::new(), vec![from.clone()]);
        while let Some(f) = stack.pop() {
            for t in graph.get(&f).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<_, _> = graph.keys().map(|f| (f.clone(), reach(f))).collect();
    let mut out: Vec<Vec<ModPath>> = Vec::new();
    for (f, r) in &reaches {
        if !r.contains(f) || out.iter().any(|c| c.contains(f)) {
            continue;
        }
        out.push(
            r.iter()
                .filter(|t| reaches[*t].contains(f))
                .cloned()
                .collect(),
        );
    }
    out
}

fn show(m: &ModPath) -> String {
    m.join("/")
}

#[test]
fn every_room_is_listed_in_the_layout() {
    let layers = layers();
    assert!(layers.len() >= 10, "lib.rs lists too few rooms: {layers:?}");
    let rooms: BTreeSet<String> = source_files().keys().map(|m| m[0].clone()).collect();
    let unlisted: Vec<_> = rooms.iter().filter(|r| !layers.contains_key(*r)).collect();
    assert!(
        unlisted.is_empty(),
        "rooms missing from lib.rs's Layout list: {unlisted:?}"
    );
    let gone: Vec<_> = layers.keys().filter(|r| !rooms.contains(*r)).collect();
    assert!(
        gone.is_empty(),
        "lib.rs lists rooms that do not exist: {gone:?}"
    );
}

#[test]
fn layers_only_point_down() {
    let layers = layers();
    let graph = use_graph(&source_files());
    let mut wrong = Vec::new();
    for (file, uses) in &graph {
        let (room, lr) = (&file[0], layers[&file[0]]);
        for t in uses.iter().filter(|t| &t[0] != room) {
            if layers[&t[0]] >= lr {
                wrong.push(format!(
                    "{} (layer {lr}) uses {} (layer {})",
                    show(file),
                    show(t),
                    layers[&t[0]]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a room uses one of its own layer or above:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_uses_a_file_that_uses_it_back() {
    let found = circles(&use_graph(&source_files()));
    let shown: Vec<String> = found
        .iter()
        .map(|c| c.iter().map(show).collect::<Vec<_>>().join(" <-> "))
        .collect();
    assert!(shown.is_empty(), "use circles:\n{}", shown.join("\n"));
}

/// The checks above would pass on a tree they cannot read: make sure they
/// see the uses that are there, and catch a circle and an upward use.
#[test]
fn the_checker_sees_uses_circles_and_upward_edges() {
    let graph = use_graph(&source_files());
    let uses = |a: &str, b: &str| {
        let key: ModPath = a.split('/').map(str::to_owned).collect();
        let to: ModPath = b.split('/').map(str::to_owned).collect();
        graph.get(&key).is_some_and(|u| u.contains(&to))
    };
    assert!(uses("ssh/tunnel", "ssh/session"), "super:: path");
    assert!(uses("fleet/supervise", "ssh/launch"), "crate:: path");
    assert!(
        uses("graph/parse", "graph/edge"),
        "brace group in super::{{…}}"
    );
    let m = |s: &str| -> ModPath { s.split('/').map(str::to_owned).collect() };
    let toy = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
        (m("d"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(circles(&toy), vec![vec![m("a"), m("b"), m("c")]]);
    assert_eq!(
        expand("a::{b, c::{d, e as f}}"),
        ["a::b", "a::c::d", "a::c::e as f"]
    );
    let layers = layers();
    assert!(layers["ssh"] < layers["fleet"] && layers["ui"] < layers["fleet"]);
    assert!(layers["store"] < layers["world"] && layers["fleet"] < layers["config"]);
}
