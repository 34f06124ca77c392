//! Targeting by metadata (#20 item 3): `--where EXPR` and a graph's
//! `when:` restrict a run to the hosts whose facts and place match; the
//! others apply nothing and are reported as skipped. Against `mgmt
//! emulate`: every emulated host has this machine's facts, so the
//! expressions combine a fact with the host's name or index.

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest;

use crate::emulate::{seed_cache, Emu};
use crate::util::{Dir, Proc};

fn seed_all(emu: &Emu, n: usize) {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..n {
        seed_cache(emu, i, &sha);
    }
}

/// A graph writing `/tmp/a` on `remote`, with `extra` top-level lines.
fn graph(d: &Dir, name: &str, remote: &str, extra: &str) -> PathBuf {
    d.write(
        &format!("{name}.yaml"),
        &format!(
            "graph: {name}\n{extra}resources:\n  file:\n  - name: a\n    path: /tmp/a\n    content: \"a of {{{{ host.name }}}}\\n\"\nremote: {remote}\n"
        ),
    )
}

fn run(emu: &Emu, files: &[PathBuf], flags: &[&str]) -> (i32, String) {
    let mut c = emu.run(files, "key");
    c.arg("--converged-timeout=1").args(flags);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    (code, p.lines_so_far().join("\n"))
}

// See: #20 (tests: --where skips the hosts that do not match; a graph's
// when: does the same inside a file)
#[test]
fn where_and_when_skip_the_hosts_that_do_not_match() {
    let emu = Emu::start(6, false);
    let d = Dir::new();
    seed_all(&emu, 6);
    let files: Vec<PathBuf> = (0..4)
        .map(|i| {
            let extra = format!("hostname: h{i}\n");
            graph(&d, &format!("h{i}"), &emu.url(i), &extra)
        })
        .collect();
    let expr = format!(
        "facts.os.id == \"{}\" and facts.memory_mb >= 1 and host.name in [\"h0\", \"h2\"]",
        crate::util::os_id()
    );
    let (code, log) = run(&emu, &files, &["--where", &expr]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("2 converged, 0 failed, 0 stopped, 2 skipped (4 hosts)"),
        "{log}"
    );
    for i in 0..4 {
        let a = emu.root(i).join("tmp/a");
        assert_eq!(a.exists(), i % 2 == 0, "host {i}: {log}");
    }
    // when: in one file for two hosts: only index 0 applies.
    let g = graph(
        &d,
        "pair",
        &format!("[{}, {}]", emu.url(4), emu.url(5)),
        &format!(
            "when: host.index == 0 and facts.os.id == \"{}\"\n",
            crate::util::os_id()
        ),
    );
    let (code, log) = run(&emu, &[g], &[]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("1 converged, 0 failed, 0 stopped, 1 skipped (2 hosts)"),
        "{log}"
    );
    assert!(emu.root(4).join("tmp/a").exists(), "{log}");
    assert!(!emu.root(5).join("tmp/a").exists(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(&emu.addr(5)) && l.contains("skipped")),
        "{log}"
    );
}

// See: #20 (a bad --where or when: is bad input: exit 2, nothing applied)
#[test]
fn a_bad_condition_is_refused_with_exit_2() {
    let d = Dir::new();
    let g = graph(&d, "g", "ssh://root@127.0.0.1:1", "");
    let out = crate::util::run(
        crate::util::mgmt()
            .arg("run")
            .arg("--remote")
            .arg(&g)
            .args(["--where", "facts.os.id =="]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--where"), "{}", out.stderr);
    let g = graph(
        &d,
        "w",
        "ssh://root@127.0.0.1:1",
        "when: \"host.index ==\"\n",
    );
    let out = crate::util::run(
        crate::util::mgmt().arg("run").arg("--remote").arg(&g),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("w.yaml:2:7: when: "), "{}", out.stderr);
}

// See: #20 (--where is passed on through a gateway: the hosts behind it
// are skipped or applied as they match)
#[test]
fn where_reaches_the_hosts_behind_a_gateway() {
    let emu = Emu::start(5, true);
    let d = Dir::new();
    seed_all(&emu, 5);
    let gw = emu.url(4);
    let files: Vec<PathBuf> = (0..4)
        .map(|i| {
            let extra = format!("hostname: h{i}\nvia: [{gw}]\n");
            graph(&d, &format!("h{i}"), &emu.url(i), &extra)
        })
        .collect();
    let (code, log) = run(
        &emu,
        &files,
        &[
            "--where",
            "host.index == 0 and host.name != \"h3\" and host.name != \"h1\"",
        ],
    );
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("2 converged, 0 failed, 0 stopped, 2 skipped (4 hosts, 1 gateway)"),
        "{log}"
    );
    for i in 0..4 {
        let a = emu.root(i).join("tmp/a");
        assert_eq!(a.exists(), i % 2 == 0, "host {i}: {log}");
    }
}
