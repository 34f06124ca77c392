//! `pkg`'s rpm/dnf backend (issue #16) against the real dnf 5 and rpm 6,
//! which only Debian sid packages: the run is chrooted into the minimal
//! sid that `scripts/test-roots.sh` makes (`$MGMT_TEST_ROOTS/dnf5-root`),
//! in a mount namespace where that root looks like a Fedora host with
//! `dnf5` (no `dnf` link, as on a host where dnf 5 came in beside
//! nothing): a copy of its `/etc` whose `os-release` says `ID=fedora` and
//! whose one repository is local, and empty `/var/lib/rpm`, `/var/lib/dnf`,
//! `/usr/lib/sysimage`, `/var/cache`, `/var/log`, `/run`, `/root` and
//! `/srv` of its own, so the root itself is never changed. The packages
//! are the dnf 4 tests' tiny noarch rpms (`pkg_dnf.rs`).

use std::path::PathBuf;

use super::pkg_dnf::{graph, installed, publish};
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
    assert!(!root.join("usr/bin/dnf").exists(), "dnf5 alone, no dnf");
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
    let release = etc.join("os-release");
    let _ = std::fs::remove_file(&release);
    std::fs::write(
        &release,
        "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=42\n",
    )
    .unwrap();
    std::fs::create_dir_all(etc.join("dnf/vars")).unwrap();
    std::fs::write(etc.join("dnf/vars/releasever"), "42\n").unwrap();
    // Debian's dnf5 turns on the `local` plugin (a copy of every installed
    // rpm, indexed by createrepo_c), which Fedora ships apart and off.
    std::fs::write(
        etc.join("dnf/libdnf5-plugins/local.conf"),
        "[main]\nname = local\nenabled = 0\n",
    )
    .unwrap();
    let repos = etc.join("yum.repos.d");
    let _ = std::fs::remove_dir_all(&repos);
    std::fs::create_dir(&repos).unwrap();
    let repo = s.dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repos.join("mgmt-it.repo"),
        format!(
            "[mgmt-it]\nname=mgmt's tests\nbaseurl=file://{}\ngpgcheck=0\nenabled=1\n",
            repo.display()
        ),
    )
    .unwrap();
    s
}

/// dnf 5's history in the sandbox: each transaction's altered packages as
/// `action nevra` (from `dnf5 history info`), oldest first.
fn history(s: &Sandbox) -> Vec<Vec<String>> {
    let list = s.tool("/usr/bin/dnf5", &["-q", "history", "list"]);
    assert!(list.status.success(), "{list:?}");
    let mut ids: Vec<u32> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let info = s.tool("/usr/bin/dnf5", &["-q", "history", "info", &id.to_string()]);
            assert!(info.status.success(), "{info:?}");
            String::from_utf8_lossy(&info.stdout)
                .lines()
                .skip_while(|l| !l.starts_with("Packages altered:"))
                .skip(2)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect()
}

fn converged(out: &crate::util::Output, changed: usize) -> bool {
    out.stderr.contains(&format!(
        "converged: 3 resources, {changed} changed, 0 failed"
    ))
}

// See: #16 (dnf 5: three packages in one `dnf5 do` transaction; a second
// run changes nothing; removal, upgrade and a pin's move in one more)
#[test]
fn packages_go_to_dnf5_in_one_transaction_and_a_second_run_changes_nothing() {
    let s = sandbox();
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        publish(&s, p, "1.0");
    }
    let g = graph(
        &s,
        "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-b\n    state: newest\n  - name: mgmtit-c\n    version: \"1.0-1\"\n",
    );
    let first = s.run(&g, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        assert_eq!(installed(&s, p).as_deref(), Some("1.0-1"), "{p}");
        assert!(s.path("/srv/mgmt-it").join(p).is_file(), "{p}'s file");
    }
    let h = history(&s);
    assert_eq!(h.len(), 1, "one dnf5 transaction: {h:?}");
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        let line = format!("Install {p}-0:1.0-1.noarch");
        assert!(h[0].contains(&line), "{line} in {:?}", h[0]);
    }
    for needle in [
        "dnf5 do: install mgmtit-a; install mgmtit-b; install mgmtit-c-1.0-1",
        "pkg[mgmtit-a,mgmtit-b,mgmtit-c]: install mgmtit-b 1.0-1",
    ] {
        assert!(
            first.stderr.contains(needle),
            "{needle} in {}",
            first.stderr
        );
    }
    assert!(converged(&first, 1), "{}", first.stderr);

    let second = s.run(&g, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(converged(&second, 0), "{}", second.stderr);
    assert_eq!(history(&s).len(), 1, "no transaction the second time");

    publish(&s, "mgmtit-b", "2.0");
    publish(&s, "mgmtit-c", "2.0");
    let pinned = |c: &str| {
        graph(
            &s,
            &format!(
                "  pkg:\n  - name: mgmtit-a\n    state: absent\n  - name: mgmtit-b\n    state: newest\n  - name: mgmtit-c\n    version: \"{c}\"\n"
            ),
        )
    };
    let third = s.run(&pinned("2.0"), &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(installed(&s, "mgmtit-a"), None);
    assert_eq!(installed(&s, "mgmtit-b").as_deref(), Some("2.0-1"));
    assert_eq!(installed(&s, "mgmtit-c").as_deref(), Some("2.0-1"));
    for needle in [
        "remove mgmtit-a 1.0-1",
        "change mgmtit-b from 1.0-1 to 2.0-1",
        "change mgmtit-c from 1.0-1 to 2.0-1",
    ] {
        assert!(
            third.stderr.contains(needle),
            "{needle} in {}",
            third.stderr
        );
    }
    let h = history(&s);
    assert_eq!(h.len(), 2, "one more transaction: {h:?}");
    for line in [
        "Remove mgmtit-a-0:1.0-1.noarch",
        "Upgrade mgmtit-b-0:2.0-1.noarch",
        "Upgrade mgmtit-c-0:2.0-1.noarch",
    ] {
        assert!(h[1].iter().any(|l| l == line), "{line} in {:?}", h[1]);
    }

    // c pinned back to 1.0 (any release): a downgrade, then nothing.
    let fourth = s.run(&pinned("1.0"), &[]);
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(installed(&s, "mgmtit-c").as_deref(), Some("1.0-1"));
    let h = history(&s);
    assert_eq!(h.len(), 3, "one more transaction: {h:?}");
    assert!(
        h[2].iter()
            .any(|l| l == "Downgrade mgmtit-c-0:1.0-1.noarch"),
        "{:?}",
        h[2]
    );
    let fifth = s.run(&pinned("1.0"), &[]);
    assert!(converged(&fifth, 0), "{}", fifth.stderr);
    assert_eq!(history(&s).len(), 3);
}

// See: #16 (dnf 5: --noop says what it would do and changes nothing; a
// package no repository offers is named and nothing changes)
#[test]
fn dnf5_noop_and_a_missing_package_change_nothing() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0");
    publish(&s, "mgmtit-b", "1.0");
    let first = s.run(&graph(&s, "  pkg:\n  - name: mgmtit-b\n"), &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let g = graph(
        &s,
        "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-b\n    state: absent\n",
    );
    let out = s.run(&g, &["--noop"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for needle in [
        "pkg[mgmtit-a,mgmtit-b]: would install mgmtit-a 1.0-1",
        "pkg[mgmtit-a,mgmtit-b]: would remove mgmtit-b 1.0-1",
    ] {
        assert!(out.stderr.contains(needle), "{needle} in {}", out.stderr);
    }
    assert_eq!(installed(&s, "mgmtit-a"), None);
    assert_eq!(installed(&s, "mgmtit-b").as_deref(), Some("1.0-1"));

    let g = graph(
        &s,
        "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-nosuch\n  - name: mgmtit-b\n    version: \"9.9\"\n",
    );
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "package mgmtit-nosuch, mgmtit-b-9.9 not found: dnf5 knows no installable version"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(installed(&s, "mgmtit-a"), None, "nothing half-done");
    assert_eq!(history(&s).len(), 1, "only the first run's transaction");
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
