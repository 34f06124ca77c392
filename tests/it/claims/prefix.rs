//! `--remote-prefix DIR`: the cached binary and the per-run files live
//! under DIR on the host, not under `~/.cache/mgmt`.

use std::path::Path;

use crate::claims::child_death::child_of;
use crate::remote_run::{interrupt, mgmt_children, remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// The one entry of directory `dir` (panics unless there is exactly one).
fn only_entry(dir: &Path) -> std::path::PathBuf {
    let v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(v.len(), 1, "{}: {v:?}", dir.display());
    v[0].clone()
}

/// Starts a noop graph on host 1 with `args` and waits until it runs.
fn running(fleet: &SshdFleet, d: &Dir, args: &[&str]) -> Proc {
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let mut p = Proc::spawn(&mut remote_cmd(fleet, &[&g], args));
    p.wait_line(&format!("[{}] running", fleet.ip(1)), LIMIT);
    p
}

/// Runs a noop graph on host 1 with `--remote-prefix prefix_arg` and checks,
/// while it runs and after ^C, that everything is under `prefix` (the
/// directory the argument names on the host).
fn runs_under(fleet: &SshdFleet, d: &Dir, prefix_arg: &str, prefix: &Path) {
    let ip = fleet.ip(1).to_owned();
    let mut p = running(fleet, d, &["--remote-prefix", prefix_arg]);
    // The child runs from <prefix>/bin/<sha256>/; its run is named
    // <prefix>/run/<id>, and its graph, read on its stdin, stays in its
    // memory: no run directory is made.
    let pid = child_of(&ip);
    let bin_dir = only_entry(&prefix.join("bin"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, bin_dir);
    let cmd = crate::remote_run::cmdline(pid);
    assert!(
        cmd.contains(&format!("--run-dir {}/run/", prefix.display())),
        "{cmd}"
    );
    assert!(
        !prefix.join("run").exists(),
        "a run directory under {}",
        prefix.display()
    );
    interrupt(&mut p);
    // The binary is the one this test built, cached under the prefix.
    let cached = std::fs::read(bin_dir.join("mgmt")).unwrap();
    let built = std::fs::read(crate::util::shipped()).unwrap();
    assert!(
        cached == built,
        "the cached binary differs from the built one"
    );
    let left: Vec<_> = std::fs::read_dir(prefix.join("run"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "per-run files left: {left:?}");
    assert!(
        !fleet.home(1).join(".cache").exists(),
        "something was put under ~/.cache"
    );
}

/// [`runs_under`] for a child launched with its graph in a run directory
/// (`--no-caching`): that directory is `<prefix>/run/<id>/` while it runs,
/// and after ^C neither it nor the binary is left.
fn launched_under(fleet: &SshdFleet, d: &Dir, prefix_arg: &str, prefix: &Path) {
    let ip = fleet.ip(1).to_owned();
    let mut p = running(fleet, d, &["--remote-prefix", prefix_arg, "--no-caching"]);
    let run_dir = only_entry(&prefix.join("run"));
    assert!(
        run_dir.join("graph.yaml").is_file(),
        "{}",
        run_dir.display()
    );
    let cmd = crate::remote_run::cmdline(child_of(&ip));
    assert!(
        cmd.contains(&format!("--run-dir {}", run_dir.display())),
        "{cmd}"
    );
    interrupt(&mut p);
    for gone in ["run", "bin"] {
        let left: Vec<_> = std::fs::read_dir(prefix.join(gone))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left under {gone}/: {left:?}");
    }
}

// See: #19 (README: "`~/.cache/mgmt/bin/<sha256>/mgmt` ... `--remote-prefix` overrides"; "may be absolute, `~/...` or relative to the home")
#[test]
fn the_cache_and_run_files_go_under_the_prefix() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let abs = fleet.home(1).join("opt-mgmt");
    runs_under(&fleet, &d, &abs.display().to_string(), &abs);
    let tilde = fleet.home(1).join("state/mgmt");
    runs_under(&fleet, &d, "~/state/mgmt", &tilde);
    let launched = fleet.home(1).join("launched/mgmt");
    launched_under(&fleet, &d, "~/launched/mgmt", &launched);
}

// See: #19 (README: "`--remote-prefix` ... may not contain `..`")
#[test]
fn a_prefix_with_dot_dot_is_refused() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let out = crate::util::run(
        &mut remote_cmd(
            &fleet,
            &[&g],
            &["--converged-timeout", "0", "--remote-prefix", "~/a/../b"],
        ),
        LIMIT,
    );
    // `~` is resolved on the host, so the check is the host's: it fails,
    // naming the prefix, and the run exits 1.
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid cache prefix") && out.stderr.contains("a/../b"),
        "{}",
        out.stderr
    );
    // Nothing was made or run on the host under any reading of the path.
    let home: Vec<_> = std::fs::read_dir(fleet.home(1))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(home.is_empty(), "{home:?}\n{}", out.stderr);
    assert!(mgmt_children(fleet.ip(1)).is_empty());
}
