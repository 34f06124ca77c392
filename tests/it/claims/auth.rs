//! Authentication with a default key: no `-i`, no agent, no
//! `--known-hosts`; mgmt finds `~/.ssh/id_ed25519` and `~/.ssh/known_hosts`
//! in the home it runs with.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::remote_run::LIMIT;
use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, run, Dir, Output};

/// A run of `g` with `HOME=home` and nothing else to authenticate with.
fn run_home(home: &Path, g: &Path) -> Output {
    run(
        mgmt()
            .env_remove("SSH_AUTH_SOCK")
            .env("HOME", home)
            .args(["run", "--converged-timeout", "0", "--remote"])
            .arg(g),
        LIMIT,
    )
}

// See: #19 (README: "authenticates with ssh-agent, then key files (`-i`, or `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`)")
#[test]
fn the_default_ed25519_key_in_the_home_logs_in() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let home = d.path().join("home");
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&fleet.known_hosts, ssh.join("known_hosts")).unwrap();
    let marker = fleet.home(1).join("logged-in");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  file:\n  - name: m\n    path: {}\n    content: \"in\\n\"\nremote: {}\n",
            marker.display(),
            fleet.url(1)
        ),
    );
    // Without a key in the home, nothing logs in: the key below is what
    // makes the difference.
    let out = run_home(&home, &g);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("authentication as \"root\" failed"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists());

    let key = ssh.join("id_ed25519");
    std::fs::copy(&fleet.client_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_home(&home, &g);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("in\n"),
        "{}",
        out.stderr
    );
    // sshd itself saw the public key log in.
    assert!(
        fleet.log().contains("Accepted publickey for root"),
        "{}",
        fleet.log()
    );
}
