//! Authentication with a default key: no `-i`, no agent, no
//! `--known-hosts`; mgmt finds `~/.ssh/id_ed25519` and `~/.ssh/known_hosts`
//! in the home it runs with. And with a URL password, against a real sshd
//! that checks it in its own `/etc/shadow` (a copy, in sshd's own mount
//! namespace).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::remote_run::LIMIT;
use crate::util::sshd::{FleetOptions, SshdFleet};
use crate::util::{eventually, mgmt, run, Dir, Output};

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
    let home = keyless_home(&d, &fleet);
    let ssh = home.join(".ssh");
    let marker = fleet.home(1).join("logged-in");
    let g = marker_graph(&d, &marker, &fleet.url(1));
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
        sshd_logged(&fleet, "Accepted publickey for root"),
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

/// A graph that writes "in" to `marker` on the host at `url`.
fn marker_graph(d: &Dir, marker: &Path, url: &str) -> std::path::PathBuf {
    d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  file:\n  - name: m\n    path: {}\n    content: \"in\\n\"\nremote: {url}\n",
            marker.display()
        ),
    )
}

/// Whether sshd's log says `what` (its lines reach the test through a
/// pipe, so possibly after the run returned).
fn sshd_logged(fleet: &SshdFleet, what: &str) -> bool {
    eventually(std::time::Duration::from_secs(10), || {
        fleet.log().contains(what)
    })
}

/// The marker graph ran, and sshd says it took a password.
fn logged_in_with_a_password(fleet: &SshdFleet, marker: &Path) {
    assert_eq!(
        std::fs::read_to_string(marker).ok().as_deref(),
        Some("in\n")
    );
    assert!(
        sshd_logged(fleet, "Accepted password for root"),
        "{}",
        fleet.log()
    );
}

/// One host whose root logs in with `password`, a home with no key, and
/// where a [`marker_graph`] writes on the host.
fn password_host(password: &str) -> (SshdFleet, Dir, std::path::PathBuf, std::path::PathBuf) {
    let fleet = SshdFleet::start_with(
        1,
        FleetOptions {
            root_password: Some(password.into()),
            ..Default::default()
        },
    );
    let d = Dir::new();
    let home = keyless_home(&d, &fleet);
    let marker = fleet.home(1).join("logged-in");
    (fleet, d, home, marker)
}

// See: #19 (README: "then the URL password"; a password is never shown)
#[test]
fn a_url_password_logs_in_and_is_never_shown() {
    const PASSWORD: &str = "s3cret/pa?ss#word";
    let (fleet, d, home, marker) = password_host(PASSWORD);
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
        marker_graph(&d, &marker, &url)
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
    logged_in_with_a_password(&fleet, &marker);
    for shown in [PASSWORD, "s3cret", "s3cret%2Fpa"] {
        assert!(!all.contains(shown), "{shown:?} shown: {all}");
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`, `ESC letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

// See: #19 (README: "then, only with `--allow-interactive`, a password
// prompt"), #18 (the prompt is not drawn over by the progress bars)
#[test]
fn allow_interactive_asks_for_the_password_on_a_terminal() {
    use std::io::{Read, Write};
    const PASSWORD: &str = "typed-at-the-prompt";
    let (fleet, d, home, marker) = password_host(PASSWORD);
    let g = marker_graph(&d, &marker, &fleet.url(1));
    // `script` gives mgmt a pseudo-terminal (its progress bars draw there,
    // and the prompt reads /dev/tty); what is written to its stdin is typed.
    let cmd = format!(
        "{} run --converged-timeout 0 --allow-interactive --remote {}",
        env!("CARGO_BIN_EXE_mgmt"),
        g.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"])
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RUST_LOG")
        .env("HOME", &home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let pid = child.id() as i32;
    let _guard = crate::util::KillOnDrop(pid);
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("password for root@") {
        let n = stdout.read(&mut buf).expect("read the terminal");
        assert!(n > 0, "no prompt:\n{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("type the password");
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read to the end");
    let status = child.wait().expect("wait");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(&rest)
    );
    assert!(status.success(), "{all}");
    logged_in_with_a_password(&fleet, &marker);
    // The terminal may echo what was typed before the prompt turned echo
    // off (the test types at once); nothing mgmt printed after holds it.
    let after = String::from_utf8_lossy(&rest);
    let after = after.split_once('\n').map_or("", |(_, r)| r);
    assert!(!after.contains(PASSWORD), "the password was shown: {all}");
    // The prompt starts its own line: no bar was drawn before it on it.
    let text = strip_ansi(&String::from_utf8_lossy(&seen));
    let at = text.find("password for root@").unwrap();
    let line_start = text[..at].rfind(['\r', '\n']).map_or(0, |i| i + 1);
    assert!(
        text[line_start..at].trim().is_empty(),
        "the prompt shares its line with {:?}",
        &text[line_start..at]
    );
}
