//! Command-line behaviour: help, version, bad input (exit 2, positions).

use std::time::Duration;

use crate::util::{mgmt, run, Dir};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn version_and_help() {
    let out = run(mgmt().arg("--version"), LIMIT);
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("mgmt "), "{}", out.stdout);
    let out = run(mgmt().args(["run", "--help"]), LIMIT);
    assert_eq!(out.code, 0);
    for flag in [
        "--file",
        "--converged-timeout",
        "--noop",
        "--no-watch",
        "--hostname",
        "--max-runtime",
        "--seeds",
        "--no-server",
        "--client-urls",
    ] {
        assert!(out.stdout.contains(flag), "--help lacks {flag}");
    }
}

// See: #2 (every error of a file, with its position, exit 2, nothing applied)
#[test]
fn bad_graph_reports_every_error_with_position() {
    let d = Dir::new();
    let g = d.write(
        "bad.yaml",
        &format!(
            "graph: bad\nresources:\n  file:\n  - name: ok\n    path: {p}\n    content: x\n  - name: f2\n    path: {p2}\n    colour: red\n  potato:\n  - name: x\nedges:\n- name: e\n  from: {{kind: file, name: ok}}\n  to: {{kind: exec, name: nope}}\n",
            p = d.p("ok"),
            p2 = d.p("f2")
        ),
    );
    let out = run(mgmt().args(["run", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let label = g.display().to_string();
    assert!(
        out.stderr.contains(&format!("{label}:9:5:")),
        "unknown field position: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{label}:10:3:")),
        "unknown kind position: {}",
        out.stderr
    );
    assert!(out.stderr.contains("colour"), "{}", out.stderr);
    assert!(out.stderr.contains("potato"), "{}", out.stderr);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
    assert!(!d.path().join("ok").exists(), "nothing may be applied");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let d = Dir::new();
    let g = d.write("bad.yaml", "graph: x\nresources:\n  file: [\n");
    let out = run(mgmt().args(["run", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{}:", g.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_file_and_bad_flags_exit_2() {
    let out = run(mgmt().args(["run", "--file", "/nonexistent/g.yaml"]), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent/g.yaml"), "{}", out.stderr);
    let d = Dir::new();
    let g = d.write("g.yaml", "graph: x\n");
    let out = run(mgmt().args(["run", "--no-server", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--seeds"), "{}", out.stderr);
}

// See: #4 (bad remote input: exit 2 before any connection)
#[test]
fn bad_remote_input_exits_2_before_connecting() {
    let d = Dir::new();
    let none = d.write("none.yaml", "graph: none\n");
    let dup = d.write(
        "dup.yaml",
        "graph: dup\nremote:\n- ssh://root@127.0.0.1:1\n- ssh://root@127.0.0.1:2\n- ftp://nope\n",
    );
    let out = run(
        mgmt()
            .args(["run", "--known-hosts", "/dev/null", "--remote"])
            .arg(&none)
            .arg("--remote")
            .arg(&dup),
        LIMIT,
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}: no remote: key", none.display())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "{}:4:3: host \"127.0.0.1\" is already a target",
            dup.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{}:5:3:", dup.display())),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("connecting"), "{}", out.stderr);
}

/// Lines of `out.stderr` that start with `mgmt: {graph}:`, i.e. the graph
/// errors with their positions, in order.
fn positioned(stderr: &str, graph: &std::path::Path) -> Vec<String> {
    let prefix = format!("mgmt: {}:", graph.display());
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

// See: #2 (validation: missing required field, wrong type, duplicate
// resource, Send/Recv field and type mismatch, a cycle naming its
// resources; one file reports all of them, exit 2, nothing applied)
#[test]
fn every_kind_of_bad_input_in_one_file_is_reported() {
    let d = Dir::new();
    let lines = [
        "graph: bad",
        "resources:",
        "  exec:",
        "  - name: nocmd",
        "    shell: /bin/sh",
        "  timer:",
        "  - name: t",
        "    interval: soon",
        "  noop:",
        "  - name: dup",
        "  - name: dup",
        "  - name: c1",
        "  - name: c2",
        "  password:",
        "  - name: pw",
        "  file:",
        "  - name: f",
        &format!("    path: {}", d.p("f")),
        "    content: x",
        "edges:",
        "- name: badfield",
        "  from: {kind: password, name: pw}",
        "  to: {kind: file, name: f}",
        "  send: secret",
        "  recv: contents",
        "- name: badtype",
        "  from: {kind: password, name: pw}",
        "  to: {kind: file, name: f}",
        "  send: length",
        "  recv: content",
        "- {name: there, from: {kind: noop, name: c1}, to: {kind: noop, name: c2}}",
        "- {name: back, from: {kind: noop, name: c2}, to: {kind: noop, name: c1}}",
    ];
    let g = d.write("bad.yaml", &(lines.join("\n") + "\n"));
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let errs = positioned(&out.stderr, &g);
    let expected = [
        "4:5: exec[nocmd]: missing required field cmd",
        "8:15: timer[t]: interval: expected an integer",
        "11:11: duplicate resource noop[dup]; the first one is at",
        "24:9: edge \"badfield\": send: password has no field \"secret\" to send; it can send: length, password",
        "25:9: edge \"badfield\": recv: file has no field \"contents\" to receive; it can receive: content,",
        "30:9: edge \"badtype\": password[pw].length is an integer but file[f].content is a string",
        "32:3: dependency cycle: noop[c1] -> noop[c2] -> noop[c1]",
    ];
    for want in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "no error starting with {want:?} in:\n{}",
            out.stderr
        );
    }
    assert_eq!(errs.len(), expected.len(), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{} error(s) in the graph; nothing was applied",
            expected.len()
        )),
        "{}",
        out.stderr
    );
    assert!(!d.path().join("f").exists(), "nothing may be applied");
}
