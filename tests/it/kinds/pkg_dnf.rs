//! `pkg`'s rpm/dnf backend (issue #16) against the real rpm and dnf 4, in
//! a mount namespace where the host looks like Fedora: a copy of `/etc`
//! whose `os-release` says `ID=fedora`, whose rpm macros put the database
//! in `/var/lib/rpm` and whose one repository is local; and empty
//! `/var/lib/rpm`, `/var/lib/dnf`, `/var/cache/dnf`, `/var/log` and `/srv`
//! of its own. The packages are tiny noarch rpms the test builds with
//! `rpmbuild -bb` and indexes with `createrepo_c` (no network); they
//! install their one file under `/srv`. The machine's own rpm database is
//! checked unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Sandbox;

fn sandbox() -> Sandbox {
    let mut s = Sandbox::new();
    let etc = s.copy("/etc");
    for dir in [
        "/var/lib/rpm",
        "/var/lib/dnf",
        "/var/cache/dnf",
        "/var/log",
        "/srv",
    ] {
        s.empty(dir);
    }
    fedora_etc(&s, &etc, "40");
    // Debian's rpm keeps its database in ~/.rpmdb; Fedora's is system-wide.
    std::fs::create_dir_all(etc.join("rpm")).unwrap();
    std::fs::write(etc.join("rpm/macros"), "%_dbpath /var/lib/rpm\n").unwrap();
    s
}

/// Makes the sandbox's copy of `/etc` (at `etc`) say Fedora `version`,
/// with one repository, local and empty until [`publish`] fills it.
pub(super) fn fedora_etc(s: &Sandbox, etc: &Path, version: &str) {
    let release = etc.join("os-release");
    // Debian's is a symlink into /usr/lib; the sandbox's is its own file.
    let _ = std::fs::remove_file(&release);
    std::fs::write(
        &release,
        format!("NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID={version}\n"),
    )
    .unwrap();
    // No fedora-release package to read the release from.
    std::fs::create_dir_all(etc.join("dnf/vars")).unwrap();
    std::fs::write(etc.join("dnf/vars/releasever"), format!("{version}\n")).unwrap();
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
}

/// Builds `name` at `version` (release 1) into the repository, re-indexed.
pub(super) fn publish(s: &Sandbox, name: &str, version: &str) {
    let top = s.dir.path().join("rpmbuild");
    let spec = s.dir.write(
        &format!("{name}-{version}.spec"),
        &format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: a package for mgmt's tests\n\
             License: MIT\nBuildArch: noarch\n%description\nA package for mgmt's tests.\n\
             %install\nmkdir -p %{{buildroot}}/srv/mgmt-it\n\
             echo {version} > %{{buildroot}}/srv/mgmt-it/{name}\n\
             %files\n/srv/mgmt-it/{name}\n"
        ),
    );
    let repo = s.dir.path().join("repo");
    let built = Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!("_rpmdir {}", repo.display()))
        .arg(&spec)
        .output()
        .expect("run rpmbuild");
    assert!(built.status.success(), "{built:?}");
    let index = Command::new("createrepo_c")
        .arg("-q")
        .arg(&repo)
        .output()
        .expect("run createrepo_c");
    assert!(index.status.success(), "{index:?}");
}

/// The installed `version-release` of `name` in the sandbox's database.
pub(super) fn installed(s: &Sandbox, name: &str) -> Option<String> {
    let out = s.tool(
        "/usr/bin/rpm",
        &["-q", "--qf", "%{VERSION}-%{RELEASE}", name],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the tests read one dnf back.
pub(super) struct Flavour {
    /// The dnf binary in the sandbox, and its name in mgmt's messages.
    pub tool: &'static str,
    pub name: &'static str,
    /// `history info`'s line before the altered packages, and how many
    /// lines follow it before them (dnf 5 has a header row).
    pub altered: (&'static str, usize),
    /// What the history calls a removal.
    pub removed: &'static str,
    /// The epoch the history writes in a version (dnf 5: `0:`).
    pub epoch: &'static str,
}

pub(super) const DNF4: Flavour = Flavour {
    tool: "/usr/bin/dnf",
    name: "dnf",
    altered: ("Packages Altered:", 0),
    removed: "Removed",
    epoch: "",
};

impl Flavour {
    /// The history's line for `action` of the test package `name` at `vr`.
    pub fn line(&self, action: &str, name: &str, vr: &str) -> String {
        format!("{action} {name}-{}{vr}.noarch", self.epoch)
    }
}

/// dnf's history in the sandbox: each transaction's altered packages as
/// `action nevra` (from `history info`), oldest first.
pub(super) fn history(s: &Sandbox, f: &Flavour) -> Vec<Vec<String>> {
    let list = s.tool(f.tool, &["-q", "history", "list"]);
    assert!(list.status.success(), "{list:?}");
    // dnf 4 puts `|` between the columns, dnf 5 spaces.
    let mut ids: Vec<u32> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| {
            l.split(|c: char| c == '|' || c.is_whitespace())
                .find(|t| !t.is_empty())?
                .parse()
                .ok()
        })
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let info = s.tool(f.tool, &["-q", "history", "info", &id.to_string()]);
            assert!(info.status.success(), "{info:?}");
            String::from_utf8_lossy(&info.stdout)
                .lines()
                .skip_while(|l| !l.starts_with(f.altered.0))
                .skip(1 + f.altered.1)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect()
}

/// The machine's own rpm state: `rpm -qa` and what `/var/lib/rpm` holds.
fn host_rpm() -> (String, Vec<PathBuf>) {
    let qa = Command::new("rpm")
        .arg("-qa")
        .output()
        .expect("run rpm -qa");
    assert!(qa.status.success(), "{qa:?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir("/var/lib/rpm")
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.sort();
    (String::from_utf8_lossy(&qa.stdout).into_owned(), files)
}

pub(super) fn graph(s: &Sandbox, body: &str) -> PathBuf {
    s.dir
        .write("g.yaml", &format!("graph: pkgs\nresources:\n{body}"))
}

/// Three packages in one transaction and nothing the second time; then a
/// removal and two upgrades (one a pin's) in one more; then a pin back, a
/// downgrade, and nothing again. Returns the first run's log.
pub(super) fn one_transaction_each_time(s: &Sandbox, f: &Flavour) -> String {
    let converged = |out: &crate::util::Output, changed: usize| {
        let want = format!("converged: 3 resources, {changed} changed, 0 failed");
        assert!(out.stderr.contains(&want), "{want} in {}", out.stderr);
    };
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        publish(s, p, "1.0");
    }
    let g = graph(
        s,
        "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-b\n    state: newest\n  - name: mgmtit-c\n    version: \"1.0-1\"\n",
    );
    let first = s.run(&g, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        assert_eq!(installed(s, p).as_deref(), Some("1.0-1"), "{p}");
        assert!(s.path("/srv/mgmt-it").join(p).is_file(), "{p}'s file");
    }
    let h = history(s, f);
    assert_eq!(h.len(), 1, "one transaction: {h:?}");
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        let line = f.line("Install", p, "1.0-1");
        assert!(h[0].contains(&line), "{line} in {:?}", h[0]);
    }
    let needle = "pkg[mgmtit-a,mgmtit-b,mgmtit-c]: install mgmtit-b 1.0-1";
    assert!(first.stderr.contains(needle), "{}", first.stderr);
    converged(&first, 1);

    let second = s.run(&g, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    converged(&second, 0);
    assert_eq!(history(s, f).len(), 1, "no transaction the second time");

    // A newer b and c, a removed, c pinned to the newer: again one
    // transaction for the removal and both upgrades.
    publish(s, "mgmtit-b", "2.0");
    publish(s, "mgmtit-c", "2.0");
    let pinned = |c: &str| {
        graph(
            s,
            &format!(
                "  pkg:\n  - name: mgmtit-a\n    state: absent\n  - name: mgmtit-b\n    state: newest\n  - name: mgmtit-c\n    version: \"{c}\"\n"
            ),
        )
    };
    let third = s.run(&pinned("2.0"), &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(installed(s, "mgmtit-a"), None);
    assert_eq!(installed(s, "mgmtit-b").as_deref(), Some("2.0-1"));
    assert_eq!(installed(s, "mgmtit-c").as_deref(), Some("2.0-1"));
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
    let h = history(s, f);
    assert_eq!(h.len(), 2, "one more transaction: {h:?}");
    for line in [
        f.line(f.removed, "mgmtit-a", "1.0-1"),
        f.line("Upgrade", "mgmtit-b", "2.0-1"),
        f.line("Upgrade", "mgmtit-c", "2.0-1"),
    ] {
        assert!(h[1].contains(&line), "{line} in {:?}", h[1]);
    }

    // c pinned back to 1.0 (no release: any release of it): a downgrade.
    let fourth = s.run(&pinned("1.0"), &[]);
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(installed(s, "mgmtit-c").as_deref(), Some("1.0-1"));
    let h = history(s, f);
    assert_eq!(h.len(), 3, "one more transaction: {h:?}");
    let line = f.line("Downgrade", "mgmtit-c", "1.0-1");
    assert!(h[2].contains(&line), "{line} in {:?}", h[2]);
    let fifth = s.run(&pinned("1.0"), &[]);
    converged(&fifth, 0);
    assert_eq!(history(s, f).len(), 3);
    first.stderr
}

// See: #16 (three packages reach dnf in one transaction; second run changes nothing)
#[test]
fn packages_go_to_dnf_in_one_transaction_and_a_second_run_changes_nothing() {
    let host = host_rpm();
    let s = sandbox();
    one_transaction_each_time(&s, &DNF4);
    assert!(s.read("/var/log/dnf.rpm.log").contains("mgmtit-c"));
    assert!(
        !Path::new("/srv/mgmt-it").exists(),
        "the real /srv untouched"
    );
    assert_eq!(host_rpm(), host, "the machine's rpm database untouched");
}

/// `--noop` says what it would install and remove, and changes nothing.
pub(super) fn noop_changes_nothing(s: &Sandbox, f: &Flavour) {
    publish(s, "mgmtit-a", "1.0");
    publish(s, "mgmtit-b", "1.0");
    let g = graph(s, "  pkg:\n  - name: mgmtit-b\n");
    let first = s.run(&g, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    publish(s, "mgmtit-b", "2.0");
    let g = graph(
        s,
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
    assert_eq!(installed(s, "mgmtit-a"), None);
    assert_eq!(installed(s, "mgmtit-b").as_deref(), Some("1.0-1"));
    let h = history(s, f);
    assert_eq!(h.len(), 1, "only the first run's transaction: {h:?}");
}

/// Packages no repository offers, or not at the pinned version, are named,
/// and nothing changes, not even the one that could be installed.
pub(super) fn a_missing_package_is_named(s: &Sandbox, f: &Flavour) {
    publish(s, "mgmtit-a", "1.0");
    let g = graph(
        s,
        "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-nosuch\n  - name: mgmtit-c\n    version: \"9.9\"\n",
    );
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let needle = format!(
        "package mgmtit-nosuch, mgmtit-c-9.9 not found: {} knows no installable version",
        f.name
    );
    assert!(out.stderr.contains(&needle), "{needle} in {}", out.stderr);
    assert_eq!(installed(s, "mgmtit-a"), None, "nothing half-done");
    assert!(history(s, f).is_empty());
}

// See: #16 (--noop says what dnf would do and changes nothing)
#[test]
fn dnf_noop_says_what_it_would_change_and_changes_nothing() {
    noop_changes_nothing(&sandbox(), &DNF4);
}

// See: #16 (a package no repository offers, or not at the pinned version: named)
#[test]
fn a_package_dnf_cannot_find_is_named_and_nothing_changes() {
    a_missing_package_is_named(&sandbox(), &DNF4);
}

// See: #16 (dnf's lock or rpm's transaction lock held: an error naming the packages)
#[test]
fn a_held_dnf_or_rpm_lock_is_an_error_naming_the_packages() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0");
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n");

    // dnf's lock: a pid file naming a live process (this test).
    let dnf_lock = s.path("/var/lib/dnf/rpmdb_lock.pid");
    std::fs::write(&dnf_lock, std::process::id().to_string()).unwrap();
    let out = s.run(&g, &[]);
    std::fs::remove_file(&dnf_lock).unwrap();
    assert_eq!(out.code, 1, "{}", out.stderr);
    for needle in [
        "cannot apply packages mgmtit-a: dnf shell",
        "already locked",
        "holds the lock",
    ] {
        assert!(out.stderr.contains(needle), "{needle} in {}", out.stderr);
    }

    // rpm's transaction lock: a POSIX record lock on the whole file, held
    // by this test process until `lock` is dropped.
    let lock = super::hold_record_lock(&s.path("/var/lib/rpm/.rpm.lock"));
    let out = s.run(&g, &[]);
    drop(lock);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for needle in [
        "cannot apply packages mgmtit-a: dnf shell",
        "transaction lock",
        "holds the lock",
    ] {
        assert!(out.stderr.contains(needle), "{needle} in {}", out.stderr);
    }
    assert_eq!(installed(&s, "mgmtit-a"), None);

    let out = s.run(&g, &[]);
    assert_eq!(out.code, 0, "once the locks are free: {}", out.stderr);
    assert_eq!(installed(&s, "mgmtit-a").as_deref(), Some("1.0-1"));
}

// See: #16 (an Alpine host: apk refused, clearly)
#[test]
fn an_apk_host_is_refused_as_not_supported_yet() {
    let mut s = Sandbox::new();
    let etc = s.copy("/etc");
    let _ = std::fs::remove_file(etc.join("os-release"));
    std::fs::write(etc.join("os-release"), "NAME=\"Alpine Linux\"\nID=alpine\n").unwrap();
    let g = s.dir.write(
        "g.yaml",
        "graph: pkgs\nresources:\n  pkg:\n  - name: curl\n",
    );
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pkg[curl]: this host (alpine) uses apk, which pkg does not support yet"),
        "{}",
        out.stderr
    );
}
