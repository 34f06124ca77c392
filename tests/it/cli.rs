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
