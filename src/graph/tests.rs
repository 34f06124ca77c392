//! Parser tests: valid graphs, and every kind of bad input with its exact
//! `file:line:col` and message.

use super::{parse_file, parse_str, Graph, Pos, VertexRef};

/// Joins lines, so a test's line numbers are its indexes plus one.
fn y(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn ok(src: &str) -> Graph {
    parse_str(src, "g.yaml").unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

fn errors(src: &str) -> Vec<String> {
    match parse_str(src, "g.yaml") {
        Ok(g) => panic!("expected errors, parsed {g:#?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(src: &str) -> String {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

fn pos(line: usize, col: usize) -> Pos {
    Pos { line, col }
}

const REMOTE2A: &str = "---
graph: mygraph
comment: remote noop example
resources:
  file:
  - name: file1a
    path: \"/tmp/file1a\"
    content: |
      i am file1a
    state: exists
  - name: \"@@file2a\"
    path: \"/tmp/file2a\"
    content: |
      i am file2a, exported from host a
    state: exists
collect:
- kind: file
  pattern: \"/tmp/\"
edges: []
remote: ssh://root:vagrant@192.168.121.201:22
";

#[test]
fn valid_remote2a_example() {
    let g = ok(REMOTE2A);
    assert_eq!(g.name, "mygraph");
    assert_eq!(g.comment.as_deref(), Some("remote noop example"));
    assert_eq!(g.hostname, None);
    assert_eq!(g.resources.len(), 2);
    let (a, b) = (&g.resources[0], &g.resources[1]);
    assert_eq!(
        (a.kind, a.name.as_str(), a.exported),
        ("file", "file1a", false)
    );
    assert_eq!(a.pos, pos(6, 5));
    assert_eq!(
        a.params.get("content").and_then(|v| v.as_str()),
        Some("i am file1a\n")
    );
    assert_eq!((b.name.as_str(), b.exported), ("file2a", true));
    assert_eq!(b.id(), "file[file2a]");
    assert_eq!(g.collect.len(), 1);
    assert_eq!(g.collect[0].kind, "file");
    assert_eq!(g.collect[0].pattern.as_deref(), Some("/tmp/"));
    assert_eq!(g.collect[0].hostname, None);
    assert!(g.edges.is_empty());
    assert_eq!(g.remote.len(), 1);
    assert_eq!(g.remote[0].value, "ssh://root:vagrant@192.168.121.201:22");
    assert_eq!(g.remote[0].pos, pos(20, 9));
    assert!(g.via.is_empty());
}

#[test]
fn valid_graph_with_edges_notify_and_send_recv() {
    let g = ok(&y(&[
        "graph: secrets",
        "hostname: web-1",
        "via: ssh://admin@gw.dc1",
        "resources:",
        "  password:",
        "  - name: db",
        "    length: 32",
        "  file:",
        "  - name: /etc/db.secret",
        "    mode: \"0600\"",
        "    meta: {noop: true, retry: -1, delay: 500}",
        "  noop: [{name: start}]",
        "  exec:",
        "  - name: reload",
        "    cmd: systemctl reload db",
        "edges:",
        "- name: secret",
        "  from: {kind: password, name: db}",
        "  to: {kind: file, name: /etc/db.secret}",
        "  send: password",
        "  recv: content",
        "- name: e2",
        "  from: {kind: file, name: /etc/db.secret}",
        "  to: {kind: exec, name: reload}",
        "  notify: true",
        "- from: {kind: noop, name: start}",
        "  to: {kind: password, name: db}",
    ]));
    assert_eq!(g.hostname.as_deref(), Some("web-1"));
    assert_eq!(g.via.len(), 1);
    assert_eq!(g.via[0].pos, pos(3, 6));
    let file = &g.resources[1];
    assert!(file.meta.noop);
    assert_eq!((file.meta.retry, file.meta.delay_ms), (-1, 500));
    assert_eq!(g.resources[0].meta, super::Meta::default());
    assert_eq!(g.edges.len(), 3);
    let e = &g.edges[0];
    assert_eq!(e.name, "secret");
    assert_eq!(
        e.from,
        VertexRef {
            kind: "password",
            name: "db".into()
        }
    );
    assert_eq!(e.send.as_deref(), Some("password"));
    assert_eq!(e.recv.as_deref(), Some("content"));
    assert!(!e.notify);
    assert!(g.edges[1].notify);
    assert_eq!(g.edges[1].pos, pos(22, 3));
    assert_eq!(g.edges[2].name, "noop[start] -> password[db]");
    let order = super::dag::Dag::from_graph(&g.resources, &g.edges).topo_order();
    assert_eq!(order, Ok(vec![2, 0, 1, 3]));
}

#[test]
fn kind_names_are_case_insensitive() {
    let g = ok(&y(&[
        "graph: g",
        "resources:",
        "  File: [{name: /tmp/a}]",
        "  EXEC: [{name: e, cmd: 'true'}]",
        "collect: [{kind: FiLe}]",
        "edges:",
        "- {name: e1, from: {kind: FILE, name: /tmp/a}, to: {kind: Exec, name: e}}",
    ]));
    assert_eq!(g.resources[0].kind, "file");
    assert_eq!(g.resources[1].kind, "exec");
    assert_eq!(g.collect[0].kind, "file");
    assert_eq!(g.edges[0].from.kind, "file");
    assert_eq!(g.edges[0].to.kind, "exec");
}

#[test]
fn remote_as_string_and_as_list() {
    let g = ok("graph: g\nremote: ssh://a\n");
    assert_eq!(g.remote.len(), 1);
    let g = ok(&y(&[
        "graph: g",
        "remote:",
        "- ssh://root@10.0.0.1",
        "- ssh://root@10.0.0.2:2222",
        "via: [ssh://gw1, ssh://gw2]",
    ]));
    let urls: Vec<&str> = g.remote.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(urls, ["ssh://root@10.0.0.1", "ssh://root@10.0.0.2:2222"]);
    assert_eq!(g.remote[1].pos, pos(4, 3));
    assert_eq!(g.via[1].pos, pos(5, 18));
    assert_eq!(
        one_error("graph: g\nremote: {host: a}\n"),
        "g.yaml:2:9: remote: expected a URL like ssh://root@192.168.121.201:22 or a list of them, found a mapping"
    );
    assert_eq!(
        one_error("graph: g\nremote: [ssh://a, 22]\n"),
        "g.yaml:2:19: remote: expected a string, found the integer 22; quote it: \"22\""
    );
}

#[test]
fn exported_resources_strip_the_prefix() {
    let g = ok(&y(&[
        "graph: g",
        "resources:",
        "  noop:",
        "  - name: \"@@shared\"",
        "  - name: local",
    ]));
    assert!(g.resources[0].exported);
    assert_eq!(g.resources[0].name, "shared");
    assert!(!g.resources[1].exported);
    assert_eq!(
        one_error("graph: g\nresources:\n  noop: [{name: \"@@\"}]\n"),
        "g.yaml:3:17: noop resource: name: \"@@\" has nothing after @@; expected e.g. @@NAME"
    );
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        one_error("graph: g\nresources:\n  file: [{name: a}\n  exec: []\n"),
        "g.yaml:4:3: invalid YAML: did not find expected ',' or ']', while parsing a flow sequence at 3:9"
    );
    assert_eq!(
        one_error("---\ngraph: a\n---\ngraph: b\n"),
        "g.yaml:3:1: invalid YAML: the file holds more than one document (a second ---); expected one graph per file"
    );
    assert_eq!(
        one_error("graph: g\nresources:\n  noop:\n  - name: a\n    name: b\n"),
        "g.yaml:5:5: invalid YAML: resources.noop[0]: duplicate entry with key \"name\" (the first is at 4:5); a key may appear once per mapping"
    );
}

#[test]
fn top_level_not_a_mapping() {
    assert_eq!(
        one_error("- graph: g\n"),
        "g.yaml:1:1: expected a mapping with graph:, resources:, edges: ... at the top level, found a list"
    );
    assert_eq!(
        one_error(""),
        "g.yaml:1:1: expected a mapping with graph:, resources:, edges: ... at the top level, found an empty file"
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        one_error("graph: g\nresource: {}\n"),
        "g.yaml:2:1: top level: unknown key \"resource\"; expected one of: graph, comment, hostname, remote, via, when, resources, collect, edges"
    );
}

#[test]
fn missing_or_empty_graph() {
    assert_eq!(
        one_error("comment: hi\n"),
        "g.yaml:1:1: missing graph: every graph file needs a name, e.g. graph: mygraph"
    );
    assert_eq!(
        one_error("comment: hi\ngraph: \"  \"\n"),
        "g.yaml:2:8: graph must not be empty; expected e.g. graph: mygraph"
    );
    assert_eq!(
        one_error("graph:\n"),
        "g.yaml:1:1: graph: expected a string, found nothing (null)"
    );
}

#[test]
fn unknown_kind_lists_the_known_ones() {
    assert_eq!(
        one_error("graph: g\nresources:\n  fiel: []\n"),
        "g.yaml:3:3: unknown resource kind \"fiel\"; expected one of: file, exec, noop, msg, timer, password, kv, pkg, svc, user, group"
    );
}

#[test]
fn kind_value_not_a_list() {
    assert_eq!(
        one_error("graph: g\nresources:\n  noop:\n    name: a\n"),
        "g.yaml:4:5: resources: noop: expected a list of resources (- name: NAME ...), found a mapping"
    );
}

#[test]
fn unknown_field_lists_the_kind_fields() {
    assert_eq!(
        one_error("graph: g\nresources:\n  file:\n  - name: /a\n    contnet: x\n"),
        "g.yaml:5:5: file[/a]: unknown field \"contnet\"; file takes: name, meta, path, content, state, mode, owner, group, parents"
    );
}

#[test]
fn meta_fields() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  noop:",
        "  - name: a",
        "    meta: {noop: yes, retries: 3, retry: -2, delay: -1}",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:5:18: noop[a]: meta: noop: expected a boolean (true or false), found the string \"yes\"",
            "g.yaml:5:23: noop[a]: unknown meta field \"retries\"; expected one of: noop, retry, delay, when",
            "g.yaml:5:42: noop[a]: meta: retry must be -1 (retry forever) or a count of 0 or more, not -2",
            "g.yaml:5:53: noop[a]: meta: delay must be a number of milliseconds, 0 or more",
        ]
    );
}

#[test]
fn missing_required_field() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  exec:",
        "  - name: e",
        "    shell: /bin/bash",
        "  timer: [{name: t}]",
        "  noop: [{comment: x}]",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:4:5: exec[e]: missing required field cmd (the command, run with the shell)",
            "g.yaml:6:11: timer[t]: missing required field interval (seconds between events (at least 1))",
            "g.yaml:7:10: noop resource: missing name; expected name: NAME",
        ]
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  file:",
        "  - name: /a",
        "    mode: 644",
        "    content: [a]",
        "  timer:",
        "  - name: t",
        "    interval: \"10\"",
        "  password:",
        "  - {name: p, length: 1.5}",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:5:11: file[/a]: mode: expected a string, found the integer 644; quote it: \"644\"",
            "g.yaml:6:14: file[/a]: content: expected a string, found a list",
            "g.yaml:9:15: timer[t]: interval: expected an integer, found the string \"10\"; remove the quotes",
            "g.yaml:11:23: password[p]: length: expected an integer, found the number 1.5",
        ]
    );
}

#[test]
fn a_plain_leading_zero_mode_is_a_string() {
    let g = ok("graph: g\nresources:\n  file: [{name: /a, mode: 0644}]\n");
    let mode = g.resources[0].params.get("mode").and_then(|v| v.as_str());
    assert_eq!(mode, Some("0644"));
}

#[test]
fn value_errors_from_the_kind_point_at_the_field() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  file:",
        "  - name: relative",
        "  - name: x",
        "    path: also/relative",
        "  - name: /m",
        "    mode: \"rwx\"",
        "  timer: [{name: t, interval: 0}]",
        "  exec: [{name: e, cmd: ''}]",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:4:11: file[relative]: file path \"relative\" must be absolute (start with /)",
            "g.yaml:6:11: file[x]: file path \"also/relative\" must be absolute (start with /)",
            "g.yaml:8:11: file[/m]: mode \"rwx\" is not an octal mode like \"0644\"",
            "g.yaml:9:31: timer[t]: interval must be at least 1 second, not 0",
            "g.yaml:10:25: exec[e]: cmd must not be empty",
        ]
    );
}

#[test]
fn duplicate_resource_says_where_the_first_is() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  noop:",
        "  - name: a",
        "  - name: \"@@a\"",
        "  NOOP: [{name: a}]",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:5:11: duplicate resource noop[a]; the first one is at g.yaml:4:11 (names are unique per kind, a leading @@ does not count)",
            "g.yaml:6:17: duplicate resource noop[a]; the first one is at g.yaml:4:11 (names are unique per kind, a leading @@ does not count)",
        ]
    );
    ok("graph: g\nresources:\n  noop: [{name: a}]\n  msg: [{name: a}]\n");
}

const TWO_NOOPS: &str =
    "graph: g\nresources:\n  noop: [{name: a}, {name: \"@@x\"}]\n  msg: [{name: m}]\nedges:\n";

#[test]
fn edge_to_unknown_or_exported_resource() {
    let errs = errors(&format!(
        "{TWO_NOOPS}{}",
        y(&[
            "- name: e1",
            "  from: {kind: noop, name: b}",
            "  to: {kind: noop, name: \"@@x\"}",
            "- {name: e2, from: {kind: msg, name: m}, to: {kind: exec, name: b}}",
            "- {name: e3, from: {kind: mgs, name: m}, to: {kind: msg, name: m}}",
        ])
    ));
    assert_eq!(
        errs,
        [
            "g.yaml:7:28: edge \"e1\": from: unknown resource noop[b]; expected one of the noop resources: a",
            "g.yaml:8:26: edge \"e1\": to: noop[x] is exported (@@) and not applied on this host; an edge can only join local resources",
            "g.yaml:9:65: edge \"e2\": to: unknown resource exec[b]; no local exec resource is declared",
            "g.yaml:10:27: unknown resource kind \"mgs\"; expected one of: file, exec, noop, msg, timer, password, kv, pkg, svc, user, group",
        ]
    );
}

#[test]
fn edge_shape_errors() {
    let errs = errors(&format!(
        "{TWO_NOOPS}{}",
        y(&[
            "- name: e1",
            "  to: {kind: noop, name: a}",
            "  notfy: true",
            "- name: e2",
            "  from: {kind: noop, nam: a}",
            "  to: {kind: msg, name: m}",
            "  send: body",
        ])
    ));
    assert_eq!(
        errs,
        [
            "g.yaml:6:3: edge \"e1\": missing from; expected from: {kind: KIND, name: NAME}",
            "g.yaml:8:3: edge \"e1\": unknown key \"notfy\"; expected one of: name, from, to, notify, send, recv",
            "g.yaml:10:9: edge \"e2\": from: missing name; expected {kind: KIND, name: NAME}",
            "g.yaml:10:22: edge \"e2\": from: unknown key \"nam\"; expected one of: kind, name",
            "g.yaml:12:9: edge \"e2\": send without recv; expected both, e.g. send: password and recv: content",
        ]
    );
}

#[test]
fn send_recv_fields_must_exist_and_match() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  password: [{name: p}]",
        "  file: [{name: /f}]",
        "  timer: [{name: t, interval: 5}]",
        "  exec: [{name: x, cmd: 'true'}]",
        "edges:",
        "- {name: a, from: {kind: password, name: p}, to: {kind: file, name: /f}, send: pass, recv: contents}",
        "- {name: b, from: {kind: password, name: p}, to: {kind: exec, name: x}, send: password, recv: timeout}",
        "- {from: {kind: file, name: /f}, to: {kind: timer, name: t}, recv: interval}",
        "- {name: c, from: {kind: password, name: p}, to: {kind: file, name: /f}, send: password, recv: path}",
        "- {name: d, from: {kind: password, name: p}, to: {kind: timer, name: t}, send: length, recv: interval}",
        "- {name: e, from: {kind: password, name: p}, to: {kind: exec, name: x}, send: password, recv: watchcmd}",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:8:80: edge \"a\": send: password has no field \"pass\" to send; it can send: length, password",
            "g.yaml:8:92: edge \"a\": recv: file has no field \"contents\" to receive; it can receive: content, state, mode, owner, group",
            "g.yaml:9:95: edge \"b\": password[p].password is a string but exec[x].timeout is an integer; send and recv must have the same type",
            "g.yaml:10:68: edge #3: recv without send; expected both, e.g. send: password and recv: content",
            "g.yaml:11:96: edge \"c\": recv: file field \"path\" cannot be received along an edge; it can receive: content, state, mode, owner, group",
            "g.yaml:12:94: edge \"d\": recv: timer field \"interval\" cannot be received along an edge; it can receive: nothing",
            "g.yaml:13:95: edge \"e\": recv: exec field \"watchcmd\" cannot be received along an edge; it can receive: cmd, shell, ifcmd, timeout",
        ]
    );
}

#[test]
fn a_field_receives_from_one_edge_only() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  password: [{name: p}, {name: q}]",
        "  file: [{name: /f}]",
        "edges:",
        "- {name: a, from: {kind: password, name: p}, to: {kind: file, name: /f}, send: password, recv: content}",
        "- {name: b, from: {kind: password, name: q}, to: {kind: file, name: /f}, send: password, recv: content}",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:7:96: edge \"b\": recv: file[/f].content already receives from edge \"a\" at g.yaml:6:96; a field can receive from one edge only",
        ]
    );
}

#[test]
fn dependency_cycle_names_its_resources_in_order() {
    let errs = errors(&y(&[
        "graph: g",
        "resources:",
        "  file: [{name: /a}]",
        "  exec: [{name: b, cmd: x}]",
        "  noop: [{name: c}]",
        "edges:",
        "- {name: e1, from: {kind: file, name: /a}, to: {kind: exec, name: b}}",
        "- {name: e2, from: {kind: exec, name: b}, to: {kind: noop, name: c}}",
        "- {name: e3, from: {kind: noop, name: c}, to: {kind: file, name: /a}}",
        "- {name: self, from: {kind: noop, name: c}, to: {kind: noop, name: c}}",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:9:3: dependency cycle: file[/a] -> exec[b] -> noop[c] -> file[/a]; remove or reverse one of its edges (\"e1\", \"e2\", \"e3\")",
        ]
    );
    let e = one_error(&y(&[
        "graph: g",
        "resources: {noop: [{name: c}]}",
        "edges: [{name: self, from: {kind: noop, name: c}, to: {kind: noop, name: c}}]",
    ]));
    assert_eq!(
        e,
        "g.yaml:3:9: dependency cycle: noop[c] -> noop[c]; remove or reverse one of its edges (\"self\")"
    );
}

#[test]
fn collect_entries() {
    let errs = errors(&y(&[
        "graph: g",
        "collect:",
        "- kind: fil",
        "- pattern: /tmp/",
        "- {kind: file, hostname: \"web-*\", patern: /x/}",
        "- file",
    ]));
    assert_eq!(
        errs,
        [
            "g.yaml:3:9: unknown resource kind \"fil\"; expected one of: file, exec, noop, msg, timer, password, kv, pkg, svc, user, group",
            "g.yaml:4:3: collect: missing kind; expected e.g. kind: file",
            "g.yaml:5:35: collect: unknown key \"patern\"; expected one of: kind, pattern, hostname",
            "g.yaml:6:3: collect: expected a mapping like {kind: file, pattern: /tmp/}, found the string \"file\"",
        ]
    );
    let g = ok("graph: g\ncollect: [{kind: file, hostname: \"web-*\"}]\n");
    assert_eq!(g.collect[0].hostname.as_deref(), Some("web-*"));
}

#[test]
fn three_different_errors_are_all_reported() {
    let src = y(&[
        "graph: g",
        "colour: blue",
        "resources:",
        "  timer: [{name: t, interval: soon}]",
        "edges:",
        "- {name: e, from: {kind: timer, name: t}, to: {kind: noop, name: n}}",
    ]);
    let err = parse_str(&src, "g.yaml").err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "g.yaml:2:1: top level: unknown key \"colour\"; expected one of: graph, comment, hostname, remote, via, when, resources, collect, edges\n\
             g.yaml:4:31: timer[t]: interval: expected an integer, found the string \"soon\"\n\
             g.yaml:6:66: edge \"e\": to: unknown resource noop[n]; no local noop resource is declared"
        )
    );
}

#[test]
fn anchors_and_aliases_are_followed() {
    let g = ok(&y(&[
        "graph: g",
        "resources:",
        "  exec:",
        "  - &base {name: a, cmd: make}",
        "  - {name: b, cmd: make}",
    ]));
    assert_eq!(g.resources.len(), 2);
}

#[test]
fn parse_file_labels_errors_with_the_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, "graph: g\nbad: 1\n").unwrap_or_else(|e| panic!("{e}"));
    let err = parse_file(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!("{}:2:1: ", path.display())),
        "{err}"
    );
    let missing = dir.path().join("none.yaml");
    let err = parse_file(&missing)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("none.yaml: cannot read the graph file: "),
        "{err}"
    );
}

// See: #16 (the web example: pkg, file, svc reloaded on change, user)
#[test]
fn the_web_example_is_valid() {
    let text = include_str!("../../examples/web.yaml");
    let g = ok(text);
    let kinds: Vec<&str> = g.resources.iter().map(|r| r.kind).collect();
    for k in ["pkg", "svc", "user", "group", "file"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert!(g.edges.iter().any(|e| e.notify && e.to.kind == "svc"));
}
