//! Rolling runs (#20): `--rolling N` against `mgmt emulate`, whose own
//! counters (leaf children running at once, the most ever, the order they
//! started in) are what is checked: they are seen from outside the
//! initiator. Flat and through emulated gateways, and `--max-fail`.

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest;

use crate::emulate::{seed_cache, Emu};
use crate::util::{eventually, Dir, Proc};

/// Host `i` is `h<i>` and writes one file; `fail` makes it fail (a file
/// in a directory that does not exist); `via` is a `via:` line or nothing.
fn graph(emu: &Emu, d: &Dir, i: usize, fail: bool, via: &str) -> PathBuf {
    let name = format!("h{i:03}");
    let path = match fail {
        true => "/no/such/dir/a",
        false => "/tmp/a",
    };
    d.write(
        &format!("{name}.yaml"),
        &format!(
            "graph: {name}\nhostname: {name}\nresources:\n  file:\n  - name: a\n    path: {path}\n    content: \"a of {name}\\n\"\nremote: {url}\n{via}",
            url = emu.url(i)
        ),
    )
}

fn seed_all(emu: &Emu, n: usize) {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..n {
        seed_cache(emu, i, &sha);
    }
}

/// The emulator's leaf counters once every child ended and `started`
/// children have been counted (the stats file is rewritten every second).
fn leaf_counters(emu: &Emu, started: usize) -> serde_json::Value {
    let settled = eventually(Duration::from_secs(20), || {
        let s = emu.stats();
        s["totals"]["children_running"].as_u64() == Some(0)
            && s["leaf_children"]["start_order"].as_array().map(Vec::len) == Some(started)
    });
    let s = emu.stats();
    assert!(settled, "the emulator's counters: {s:#}");
    s["leaf_children"].clone()
}

/// Checks that at most `cap` leaf children ran at once, and that they
/// started in `expected` order as far as a cap allows: the k-th to start
/// is among the first k + cap in that order (turns given together race to
/// their launches).
fn check_rollout(leaves: &serde_json::Value, expected: &[String], cap: usize) {
    eprintln!("leaf children: {leaves}");
    let max = leaves["max_running"].as_u64().unwrap() as usize;
    assert!(
        (1..=cap).contains(&max),
        "at most {cap} applying at once, the emulator saw {max}: {leaves:#}"
    );
    let started: Vec<&str> = leaves["start_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(started.len(), expected.len(), "{leaves:#}");
    for (k, host) in started.iter().enumerate() {
        let at = expected.iter().position(|e| e == host).unwrap();
        assert!(
            at < k + cap,
            "{host} started {k}th but is {at}th in the order: {started:?}"
        );
    }
}

/// The rolling run of `files` with `flags`; its exit code and log.
fn roll(emu: &Emu, files: &[PathBuf], flags: &[&str]) -> (i32, Vec<String>) {
    let mut c = emu.run(files, "key");
    c.arg("--converged-timeout=1").args(flags);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    (code, p.lines_so_far())
}

// See: #20 (tests: 20 emulated hosts with a cap of 3: never more than 3
// applying at once, seen by the emulator; all 20 converge, in the order of
// the --remote files)
#[test]
fn a_rolling_run_applies_at_most_three_hosts_at_once_in_order() {
    const N: usize = 20;
    let emu = Emu::start(N, false);
    let d = Dir::new();
    seed_all(&emu, N);
    // Given in reverse: the order of the files, not of the addresses.
    let files: Vec<PathBuf> = (0..N)
        .rev()
        .map(|i| graph(&emu, &d, i, false, ""))
        .collect();
    let (code, log) = roll(&emu, &files, &["--rolling", "3"]);
    assert_eq!(code, 0, "log:\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("{N} converged, 0 failed"))),
        "{}",
        log.join("\n")
    );
    assert!(log
        .iter()
        .any(|l| l.contains(&format!("rolling: {N} of {N} done, 0 applying, 0 failed"))));
    let expected: Vec<String> = (0..N).rev().map(|i| emu.addr(i)).collect();
    check_rollout(&leaf_counters(&emu, N), &expected, 3);
    for i in 0..N {
        let a = std::fs::read_to_string(emu.root(i).join("tmp/a")).unwrap();
        assert_eq!(a, format!("a of h{i:03}\n"));
    }
}

// See: #20 (the cap holds across gateways: counted at the initiator for the
// whole tree)
#[test]
fn a_rolling_run_keeps_its_cap_across_two_gateways() {
    const N: usize = 20;
    let emu = Emu::start(N + 2, true);
    let d = Dir::new();
    seed_all(&emu, N + 2);
    let files: Vec<PathBuf> = (0..N)
        .rev()
        .map(|i| {
            let gw = emu.url(N + i % 2);
            graph(&emu, &d, i, false, &format!("via: [{gw}]\n"))
        })
        .collect();
    let (code, log) = roll(&emu, &files, &["--rolling", "3"]);
    assert_eq!(code, 0, "log:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains(&format!(
            "{N} converged, 0 failed, 0 stopped ({N} hosts, 2 gateways)"
        ))),
        "{}",
        log.join("\n")
    );
    let expected: Vec<String> = (0..N).rev().map(|i| emu.addr(i)).collect();
    check_rollout(&leaf_counters(&emu, N), &expected, 3);
}

// See: #20 (a rollout with failing hosts stops at --max-fail; the summary
// names the hosts that never started, and nothing started there)
#[test]
fn a_rollout_stops_at_max_fail_and_names_the_hosts_never_started() {
    const N: usize = 8;
    let emu = Emu::start(N, false);
    let d = Dir::new();
    seed_all(&emu, N);
    let files: Vec<PathBuf> = (0..N)
        .map(|i| graph(&emu, &d, i, i == 1 || i == 2, ""))
        .collect();
    let (code, log) = roll(&emu, &files, &["--rolling", "1", "--max-fail", "1"]);
    let text = log.join("\n");
    assert_eq!(code, 1, "log:\n{text}");
    assert!(
        text.contains("1 converged, 2 failed, 0 stopped, 5 not started (8 hosts)"),
        "{text}"
    );
    let never = log
        .iter()
        .find(|l| l.contains("never started"))
        .unwrap_or_else(|| panic!("no never-started line:\n{text}"));
    for i in 3..N {
        assert!(never.contains(&format!("h{i:03}")), "{never}");
    }
    assert!(
        !never.contains("h000") && !never.contains("h002"),
        "{never}"
    );
    // With a cap of 1 the order is exact: h0, then the two failures.
    let leaves = leaf_counters(&emu, 3);
    let expected: Vec<String> = (0..3).map(|i| emu.addr(i)).collect();
    check_rollout(&leaves, &expected, 1);
    let s = emu.stats();
    for i in 3..N {
        let started = &s["per_host"][emu.addr(i)]["children_started"];
        assert_eq!(started.as_u64(), Some(0), "h{i:03} never started a child");
        assert!(!emu.root(i).join("tmp/a").exists());
    }
}

// See: #20 (bad input: --rolling 0, --max-fail 120%, --rolling without
// --converged-timeout are refused with exit 2)
#[test]
fn bad_rolling_flags_exit_2() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        "graph: g\nresources:\n  noop:\n  - name: n\nremote: ssh://root@127.0.0.1:1\n",
    );
    for (flags, says) in [
        (vec!["--rolling", "0", "-t", "1"], "--rolling"),
        (
            vec!["--rolling", "2", "--max-fail", "120%", "-t", "1"],
            "--max-fail",
        ),
        (vec!["--rolling", "2"], "--converged-timeout"),
        (vec!["--max-fail", "1", "-t", "1"], "--rolling"),
    ] {
        let out = crate::util::run(
            crate::util::mgmt()
                .arg("run")
                .arg("--remote")
                .arg(&g)
                .args(&flags),
            Duration::from_secs(30),
        );
        let err = &out.stderr;
        assert_eq!(out.code, 2, "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

// See: #20 (an interrupted rollout: the host applying is stopped, the
// hosts whose turn never came are reported as never started)
#[test]
fn an_interrupted_rollout_names_the_hosts_never_started() {
    const N: usize = 4;
    let emu = Emu::start(N, false);
    let d = Dir::new();
    seed_all(&emu, N);
    let files: Vec<PathBuf> = (0..N).map(|i| graph(&emu, &d, i, false, "")).collect();
    let mut c = emu.run(&files, "key");
    // Never converges within the test: the first turn lasts until ^C.
    c.args(["--converged-timeout=600", "--rolling", "1"]);
    let mut p = Proc::spawn(&mut c);
    let first = eventually(Duration::from_secs(60), || {
        emu.stats()["leaf_children"]["running"].as_u64() == Some(1)
    });
    assert!(first, "{}", p.lines_so_far().join("\n"));
    p.signal(nix::sys::signal::Signal::SIGINT);
    let code = p.wait(Duration::from_secs(120));
    let text = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("0 converged, 0 failed, 1 stopped, 3 not started (4 hosts)"),
        "{text}"
    );
    assert!(
        text.contains("never started (the rollout stopped first): h001, h002, h003"),
        "{text}"
    );
    let leaves = leaf_counters(&emu, 1);
    assert_eq!(leaves["start_order"][0], emu.addr(0).as_str(), "{leaves:#}");
}
