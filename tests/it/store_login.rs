//! `--store-password-file` (#13): the embedded store of a `--file` run with
//! it requires etcd authentication on its listener; another mgmt process
//! joins with `--seeds` and the same file, and without it is refused with
//! etcd's error; a file others can read is refused before anything starts.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::util::{mgmt, run, Dir, Proc, STORE_PASSWORD};

const LIMIT: Duration = Duration::from_secs(60);

fn idle_graph(d: &Dir, name: &str) -> std::path::PathBuf {
    d.write(
        &format!("{name}.yaml"),
        &format!("graph: {name}\nresources:\n  noop:\n  - name: n\n"),
    )
}

fn password_file(d: &Dir, mode: u32) -> std::path::PathBuf {
    let f = d.write("password", &format!("{STORE_PASSWORD}\n"));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

// See: #13 (a listener with credentials; --seeds clients log in)
#[test]
fn a_client_joins_a_password_protected_store_only_with_the_password() {
    let d = Dir::new();
    let pw = password_file(&d, 0o600);
    let mut server = Proc::spawn(
        mgmt()
            .args(["run", "--hostname", "first", "--converged-timeout", "-1"])
            .arg("--file")
            .arg(idle_graph(&d, "a"))
            .arg("--store-password-file")
            .arg(&pw),
    );
    server.wait_line("store: the listener requires etcd authentication", LIMIT);
    let url = server.store_url(LIMIT);
    let join = |with_password: bool| {
        let mut c = mgmt();
        c.args([
            "run",
            "--no-server",
            "--seeds",
            &url,
            "--hostname",
            "second",
        ])
        .args(["--converged-timeout", "0"])
        .arg("--file")
        .arg(idle_graph(&d, "b"));
        if with_password {
            c.arg("--store-password-file").arg(&pw);
        }
        run(&mut c, LIMIT)
    };
    let refused = join(false);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("user name is empty"),
        "{}",
        refused.stderr
    );
    let joined = join(true);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    // The second host wrote its converged key as itself.
    let keys = crate::util::store_kvs(&url, "/_mgmt/converged/");
    assert!(
        keys.iter().any(|(k, _, _)| k == "/_mgmt/converged/first"),
        "{keys:?}"
    );
    server.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(server.wait(LIMIT), 0);
}

// See: #13 (a password file others can read is refused, as OpenSSH refuses
// such a key)
#[test]
fn a_password_file_others_can_read_is_refused() {
    let d = Dir::new();
    let pw = password_file(&d, 0o644);
    let out = run(
        mgmt()
            .args(["run", "--converged-timeout", "0", "--file"])
            .arg(idle_graph(&d, "a"))
            .arg("--store-password-file")
            .arg(&pw),
        LIMIT,
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--store-password-file")
            && out.stderr.contains("mode 0644")
            && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(STORE_PASSWORD), "{}", out.stderr);
}
