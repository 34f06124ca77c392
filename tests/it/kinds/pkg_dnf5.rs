//! `pkg`'s rpm/dnf backend (issue #16) against the real dnf 5 and rpm 6,
//! which only Debian sid packages: the run is chrooted into the minimal
//! sid that `scripts/test-roots.sh` makes (`$MGMT_TEST_ROOTS/dnf5-root`),
//! in a mount namespace where that root looks like a Fedora 41 (or newer)
//! host, whose `dnf` is a link to `dnf5`: a copy of its `/etc` whose
//! `os-release` says `ID=fedora` and whose one repository is local, and
//! empty `/var/lib/rpm`, `/var/lib/dnf`, `/usr/lib/sysimage`, `/var/cache`,
//! `/var/log`, `/run`, `/root` and `/srv` of its own, so the root itself is
//! never changed. The packages are the dnf 4 tests' tiny noarch rpms
//! (`pkg_dnf.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::pkg_dnf::{
    a_missing_package_is_named, fedora_etc, graph, installed, noop_changes_nothing,
    one_transaction_each_time, publish, Flavour,
};
use super::Sandbox;

/// The root `scripts/test-roots.sh` made.
fn dnf5_root() -> PathBuf {
    let roots = std::env::var_os("MGMT_TEST_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mgmt-tests"));
    let root = roots.join("dnf5-root");
    assert!(
        root.join(".mgmt-test-root").is_file(),
        "{} is missing: run scripts/test-roots.sh (scripts/test.sh does)",
        root.display()
    );
    root
}

fn sandbox() -> Sandbox {
    let root = dnf5_root();
    let dnf = std::fs::read_link(root.join("usr/bin/dnf")).ok();
    assert_eq!(dnf, Some(PathBuf::from("dnf5")), "dnf a link to dnf5");
    let mut s = Sandbox::chrooted(root);
    let etc = s.copy("/etc");
    for dir in [
        "/var/lib/rpm",
        "/var/lib/dnf",
        "/usr/lib/sysimage",
        "/var/cache",
        "/var/log",
        "/run",
        "/root",
        "/srv",
    ] {
        s.empty(dir);
    }
    fedora_etc(&s, &etc, "42");
    // Debian's dnf5 turns on the `local` plugin (a copy of every installed
    // rpm, indexed by createrepo_c), which Fedora ships apart and off.
    std::fs::write(
        etc.join("dnf/libdnf5-plugins/local.conf"),
        "[main]\nname = local\nenabled = 0\n",
    )
    .unwrap();
    s
}

const DNF5: Flavour = Flavour {
    tool: "/usr/bin/dnf5",
    name: "dnf5",
    altered: ("Packages altered:", 1),
    removed: "Remove",
    epoch: "0:",
};

// See: #16 (dnf 5: three packages in one `dnf5 do` transaction; a second
// run changes nothing; removal, upgrade and a pin's move in one more)
#[test]
fn packages_go_to_dnf5_in_one_transaction_and_a_second_run_changes_nothing() {
    let s = sandbox();
    let first = one_transaction_each_time(&s, &DNF5);
    let needle = "dnf5 do: install mgmtit-a; install mgmtit-b; install mgmtit-c-1.0-1";
    assert!(first.contains(needle), "{needle} in {first}");
}

// See: #16 (dnf 5: --noop says what it would do and changes nothing)
#[test]
fn dnf5_noop_says_what_it_would_change_and_changes_nothing() {
    noop_changes_nothing(&sandbox(), &DNF5);
}

// See: #16 (dnf 5: a package no repository offers, or not at the pinned
// version, is named and nothing changes)
#[test]
fn a_package_dnf5_cannot_find_is_named_and_nothing_changes() {
    a_missing_package_is_named(&sandbox(), &DNF5);
}

// See: #16 (dnf 5 waits for its lock for as long as it is held: a held
// dnf 5 or rpm lock is an error naming the packages and the holder)
#[test]
fn a_held_dnf5_or_rpm_lock_is_an_error_naming_the_packages_and_the_holder() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0");
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n");
    let me = std::process::id();
    for lock in ["/var/lib/dnf/system-repo.lock", "/var/lib/rpm/.rpm.lock"] {
        let held = super::hold_record_lock(&s.path(lock));
        let out = s.run(&g, &[]);
        drop(held);
        assert_eq!(out.code, 1, "{}", out.stderr);
        let needle = format!("packages mgmtit-a: {lock} is locked by process {me}");
        for needle in [needle.as_str(), "holds the lock"] {
            assert!(out.stderr.contains(needle), "{needle} in {}", out.stderr);
        }
        assert_eq!(installed(&s, "mgmtit-a"), None);
    }
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 0, "once the locks are free: {}", out.stderr);
    assert_eq!(installed(&s, "mgmtit-a").as_deref(), Some("1.0-1"));
}

/// A process of nobody's holding a read lock on `file` (opened by root and
/// handed down as its stdin, as a world-readable lock file lets anyone
/// open it) until dropped.
struct NobodysLock(std::process::Child);

impl NobodysLock {
    fn hold(file: &std::path::Path) -> NobodysLock {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let (uid, gid) = crate::util::hostile::nobody();
        let lock = std::fs::File::open(file).expect("open the lock file");
        let script = "import fcntl,signal\nfcntl.lockf(0,fcntl.LOCK_SH)\nprint('held',flush=True)\nsignal.pause()";
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .current_dir("/")
            .uid(uid)
            .gid(gid)
            .stdin(lock)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 as nobody");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        let held = NobodysLock(child);
        assert_eq!(line.trim(), "held", "nobody's lock");
        held
    }
}

impl Drop for NobodysLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// See: #16 (a held lock is an error naming the packages), #13 (a local
// user): dnf 5's lock file is world-readable on Fedora, so any user can
// hold a read lock on it, and dnf 5 would wait for as long as they do.
// A run while nobody holds one ends at once, naming nobody's process, and
// installs once it is let go.
#[test]
fn a_read_lock_nobody_holds_on_dnf5s_lock_ends_the_run_naming_it() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0");
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n");
    let file = s.path("/var/lib/dnf/system-repo.lock");
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let held = NobodysLock::hold(&file);
    let out = s.run(&g, &[]);
    let needle = format!(
        "packages mgmtit-a: /var/lib/dnf/system-repo.lock is locked by process {}",
        held.0.id()
    );
    drop(held);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains(&needle), "{needle} in {}", out.stderr);
    assert_eq!(installed(&s, "mgmtit-a"), None);
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 0, "once nobody lets go: {}", out.stderr);
    assert_eq!(installed(&s, "mgmtit-a").as_deref(), Some("1.0-1"));
}
