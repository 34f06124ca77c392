//! `mgmt run --remote` end to end against a real OpenSSH sshd (issue #4):
//! each emulated host is a loopback address with its own home directory.

use std::path::Path;
use std::time::Duration;

use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, Dir, Proc};

const LIMIT: Duration = Duration::from_secs(120);

/// mgmt's remote2a/remote2b with the files in the host's own home.
fn example(d: &Dir, fleet: &SshdFleet, i: usize, x: &str) -> std::path::PathBuf {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/remote2a.yaml"
    ))
    .unwrap();
    let home = fleet.home(i).display().to_string();
    let g = src
        .replace("/tmp/", &format!("{home}/"))
        .replace("file1a", &format!("file1{x}"))
        .replace("file2a", &format!("file2{x}"))
        .replace("host a", &format!("host {x}"))
        .replace("ssh://root:vagrant@192.168.121.201:22", &fleet.url(i));
    d.write(&format!("remote2{x}.yaml"), &g)
}

/// `mgmt run --remote ...` with the fleet's key and known_hosts, no agent.
fn remote_cmd(fleet: &SshdFleet, files: &[&Path], extra: &[&str]) -> std::process::Command {
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK").arg("run");
    for f in files {
        c.arg("--remote").arg(f);
    }
    c.arg("--identity")
        .arg(&fleet.client_key)
        .arg("--known-hosts")
        .arg(&fleet.known_hosts)
        .args(extra);
    c
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

// See: #4 (mgmt's two-host example, for real)
#[test]
fn remote2a_remote2b_exchange_then_converge() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (a, b) = (example(&d, &fleet, 1, "a"), example(&d, &fleet, 2, "b"));
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&a, &b],
        &["--converged-timeout", "2"],
    ));
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(code, 0, "{log}\n--- sshd:\n{}", fleet.log());
    for (i, x) in [(1, "a"), (2, "b")] {
        let home = fleet.home(i);
        assert_eq!(
            read(&home.join(format!("file1{x}"))).as_deref(),
            Some(format!("i am file1{x}\n").as_str()),
            "{log}"
        );
        for from in ["a", "b"] {
            assert_eq!(
                read(&home.join(format!("file2{from}"))).as_deref(),
                Some(format!("i am file2{from}, exported from host {from}\n").as_str()),
                "host {x} lacks file2{from}\n{log}"
            );
        }
    }
    // Output came back live, prefixed with the host.
    assert!(log.contains(&format!("[{}]", fleet.ip(1))), "{log}");
    // The per-run files are gone; the cached binary stays.
    for i in [1, 2] {
        let cache = fleet.home(i).join(".cache/mgmt");
        assert!(cache.join("bin").is_dir(), "no binary cache on host {i}");
        assert!(
            !cache.join("run").exists(),
            "per-run files left on host {i}"
        );
    }
}
