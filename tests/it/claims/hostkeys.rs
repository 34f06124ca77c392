//! `--host-key-check` from the command line of a remote run: what each
//! policy writes to the known_hosts file and what it logs.

use std::path::Path;

use crate::remote_run::LIMIT;
use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, run, Dir, Output};

/// A one-host noop run with the fleet's key, `known` as known_hosts and
/// `policy`, to its converged end.
fn run_with(fleet: &SshdFleet, d: &Dir, known: &Path, policy: &str) -> Output {
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    run(
        mgmt()
            .env_remove("SSH_AUTH_SOCK")
            .args(["run", "--converged-timeout", "0", "--remote"])
            .arg(&g)
            .arg("-i")
            .arg(&fleet.client_key)
            .arg("--known-hosts")
            .arg(known)
            .args(["--host-key-check", policy]),
        LIMIT,
    )
}

// See: #19 (README: "`accept-new` records an unknown key and refuses a changed one")
#[test]
fn accept_new_appends_an_unknown_key_once() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let other = "[127.0.0.1]:2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n";
    let known = d.write("known_hosts", other);
    let entry = format!("[{}]:{}", fleet.ip(1), fleet.port());

    let out = run_with(&fleet, &d, &known, "accept-new");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&known).unwrap();
    assert!(text.starts_with(other), "the old line was changed:\n{text}");
    let added: Vec<&str> = text[other.len()..].lines().collect();
    assert_eq!(added.len(), 1, "{text}");
    // The line names the host and holds the key sshd offers.
    let w: Vec<&str> = added[0].split_whitespace().collect();
    assert_eq!(w.len(), 3, "{text}");
    assert!(
        w[0] == entry || w[0].starts_with("|1|"),
        "{} names another host:\n{text}",
        w[0]
    );
    assert_eq!(format!("{} {}", w[1], w[2]), fleet.host_pub, "{text}");
    assert!(
        out.stderr.contains("recorded new host key"),
        "{}",
        out.stderr
    );

    // Known now: a second run adds nothing and logs no recording.
    let out = run_with(&fleet, &d, &known, "accept-new");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);
    assert!(
        !out.stderr.contains("recorded new host key"),
        "{}",
        out.stderr
    );
    // And strict accepts what was learned.
    let out = run_with(&fleet, &d, &known, "strict");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

// See: #19 (README: "`accept-new` records an unknown key and refuses a changed one")
#[test]
fn accept_new_refuses_a_changed_key_and_keeps_the_file() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let other = d.path().join("other_host_key");
    crate::util::sshd::keygen(&other);
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let line = format!(
        "[{}]:{} {}\n",
        fleet.ip(1),
        fleet.port(),
        other_pub.join(" ")
    );
    let known = d.write("known_hosts", &line);
    let out = run_with(&fleet, &d, &known, "accept-new");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("recorded new host key"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), line);
    // Nothing ran on the host.
    assert!(!fleet.home(1).join(".cache").exists());
}

// See: #19 (README: "`off` checks nothing but revocations")
#[test]
fn off_accepts_an_unknown_key_writes_nothing_and_warns() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let known = d.write("known_hosts", "");
    let out = run_with(&fleet, &d, &known, "off");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read(&known).unwrap(),
        b"",
        "off wrote to known_hosts"
    );
    assert!(
        out.stderr.contains("host key checking is off"),
        "{}",
        out.stderr
    );
    // The same unknown key under the default policy fails the host: the
    // run above connected only because checking was off.
    let out = run_with(&fleet, &d, &known, "strict");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(std::fs::read(&known).unwrap(), b"");
}
