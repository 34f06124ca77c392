//! Authentication with a default key: no `-i`, no agent, no
//! `--known-hosts`; mgmt finds `~/.ssh/id_ed25519` and `~/.ssh/known_hosts`
//! in the home it runs with. And with a URL password, against a real sshd
//! that checks it in its own `/etc/shadow` (a copy, in sshd's own mount
//! namespace).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::remote_run::LIMIT;
use crate::util::sshd::{FleetOptions, SshdFleet};
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

/// A home with the fleet's `known_hosts` and no key.
fn keyless_home(d: &Dir, fleet: &SshdFleet) -> std::path::PathBuf {
    let home = d.path().join("home");
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&fleet.known_hosts, ssh.join("known_hosts")).unwrap();
    home
}

// See: #19 (README: "then the URL password"; a password is never shown)
#[test]
fn a_url_password_logs_in_and_is_never_shown() {
    const PASSWORD: &str = "s3cret/pa?ss#word";
    let fleet = SshdFleet::start_with(
        1,
        FleetOptions {
            root_password: Some(PASSWORD.into()),
            ..Default::default()
        },
    );
    let d = Dir::new();
    let home = keyless_home(&d, &fleet);
    let marker = fleet.home(1).join("logged-in");
    let graph = |password: &str| {
        // The URL form percent-encodes what a URL cannot hold.
        let enc = password
            .replace('%', "%25")
            .replace('/', "%2F")
            .replace('?', "%3F")
            .replace('#', "%23");
        let url = fleet
            .url(1)
            .replacen("ssh://root@", &format!("ssh://root:{enc}@"), 1);
        d.write(
            "g.yaml",
            &format!(
                "graph: g\nresources:\n  file:\n  - name: m\n    path: {}\n    content: \"in\\n\"\nremote: {url}\n",
                marker.display()
            ),
        )
    };
    // A wrong password: refused, and neither password is shown.
    let out = run_home(&home, &graph("wrong-one"));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("failed"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-one"), "{}", out.stderr);
    assert!(!marker.exists());
    // The right one logs in; sshd says it took a password.
    let out = run_home(&home, &graph(PASSWORD));
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{all}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("in\n")
    );
    assert!(
        fleet.log().contains("Accepted password for root"),
        "{}",
        fleet.log()
    );
    for shown in [PASSWORD, "s3cret", "s3cret%2Fpa"] {
        assert!(!all.contains(shown), "{shown:?} shown: {all}");
    }
}
