//! `pkg` (issue #16) against the real dpkg and apt, in a mount namespace
//! with copies of `/etc` and `/var/lib/dpkg` and empty apt lists, cache,
//! logs and `/srv`. The packages are tiny `.deb`s the test builds with
//! `dpkg-deb --build` into a local repository (`file:`, no network) that
//! the sandbox's `/etc/apt/sources.list` names alone; they install their
//! one file under `/srv`, which is the sandbox's too.

use std::path::Path;
use std::process::Command;

use super::{refused, Sandbox};
use crate::util::Dir;

fn sandbox() -> Sandbox {
    let mut s = Sandbox::new();
    let etc = s.copy("/etc");
    s.copy("/var/lib/dpkg");
    let apt = s.empty("/var/lib/apt");
    std::fs::create_dir_all(apt.join("lists/partial")).unwrap();
    let cache = s.empty("/var/cache/apt");
    std::fs::create_dir_all(cache.join("archives/partial")).unwrap();
    let log = s.empty("/var/log");
    std::fs::create_dir_all(log.join("apt")).unwrap();
    s.empty("/srv");
    let sources = etc.join("apt/sources.list.d");
    if sources.is_dir() {
        std::fs::remove_dir_all(&sources).unwrap();
        std::fs::create_dir(&sources).unwrap();
    }
    let repo = s.dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        etc.join("apt/sources.list"),
        format!("deb [trusted=yes] file:{} ./\n", repo.display()),
    )
    .unwrap();
    // The test's repository lives in a private temp dir that apt's
    // download user (_apt) cannot read; the sandbox's apt downloads as root.
    std::fs::write(
        etc.join("apt/apt.conf.d/99mgmt-it"),
        "APT::Sandbox::User \"root\";\n",
    )
    .unwrap();
    s
}

/// Builds `name` at `version` into the sandbox's repository and indexes it.
fn publish(s: &Sandbox, name: &str, version: &str) {
    let build = s.dir.path().join(format!("build-{name}-{version}"));
    std::fs::create_dir_all(build.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(build.join("srv/mgmt-it")).unwrap();
    std::fs::write(
        build.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: mgmt tests <root@localhost>\nDescription: a package for mgmt's tests\n"
        ),
    )
    .unwrap();
    std::fs::write(build.join("srv/mgmt-it").join(name), format!("{version}\n")).unwrap();
    let repo = s.dir.path().join("repo");
    let deb = repo.join(format!("{name}_{version}_all.deb"));
    let ok = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&build)
        .arg(&deb)
        .output()
        .expect("run dpkg-deb");
    assert!(ok.status.success(), "{ok:?}");
    let index = Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&repo)
        .output()
        .expect("run dpkg-scanpackages");
    assert!(index.status.success(), "{index:?}");
    std::fs::write(repo.join("Packages"), index.stdout).unwrap();
}

/// The installed version of `name` in the sandbox's dpkg database.
fn installed(s: &Sandbox, name: &str) -> Option<String> {
    let status = s.read("/var/lib/dpkg/status");
    let block = status
        .split("\n\n")
        .find(|b| b.lines().any(|l| l == format!("Package: {name}")))?;
    if !block.contains("Status: install ok installed") {
        return None;
    }
    block
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::to_owned)
}

/// apt's history, one entry per apt-get call that changed something.
fn history(s: &Sandbox) -> Vec<String> {
    s.read("/var/log/apt/history.log")
        .split("\n\n")
        .filter(|e| e.contains("Commandline:"))
        .map(str::to_owned)
        .collect()
}

fn graph(s: &Sandbox, body: &str) -> std::path::PathBuf {
    s.dir
        .write("g.yaml", &format!("graph: pkgs\nresources:\n{body}"))
}

// See: #16 (three packages reach apt in one call; second run changes nothing)
#[test]
fn packages_go_to_apt_in_one_call_and_a_second_run_changes_nothing() {
    let s = sandbox();
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        publish(&s, p, "1.0-1");
    }
    let marker = s.dir.p("after-b");
    let g = graph(
        &s,
        &format!(
            r#"  pkg:
  - name: mgmtit-a
  - name: mgmtit-b
    state: newest
  - name: mgmtit-c
    version: "1.0-1"
  file:
  - name: {marker}
    content: "b is in\n"
edges:
- name: b-first
  from: {{kind: pkg, name: mgmtit-b}}
  to: {{kind: file, name: {marker}}}
"#
        ),
    );
    let first = s.run(&g, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        assert_eq!(installed(&s, p).as_deref(), Some("1.0-1"), "{p}");
        assert!(s.path("/srv/mgmt-it").join(p).is_file(), "{p}'s file");
    }
    assert!(Path::new(&marker).is_file(), "the file after the group");
    let h = history(&s);
    assert_eq!(h.len(), 1, "one apt-get call: {h:?}");
    for p in ["mgmtit-a", "mgmtit-b", "mgmtit-c"] {
        assert!(h[0].contains(&format!("{p}:")), "{p} in {}", h[0]);
    }
    assert!(
        first
            .stderr
            .contains("pkg[mgmtit-a,mgmtit-b,mgmtit-c]: install mgmtit-b 1.0-1"),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("converged: 4 resources, 2 changed, 0 failed"),
        "{}",
        first.stderr
    );
    assert!(
        !Path::new("/srv/mgmt-it").exists(),
        "the real /srv untouched"
    );

    let second = s.run(&g, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("converged: 4 resources, 0 changed, 0 failed"),
        "{}",
        second.stderr
    );
    assert_eq!(history(&s).len(), 1, "no apt-get call the second time");

    // A newer b, a removed, c pinned: again one call for all of it.
    publish(&s, "mgmtit-b", "2.0-1");
    let g = graph(
        &s,
        r#"  pkg:
  - name: mgmtit-a
    state: absent
  - name: mgmtit-b
    state: newest
  - name: mgmtit-c
    version: "1.0-1"
"#,
    );
    let third = s.run(&g, &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(installed(&s, "mgmtit-a"), None);
    assert_eq!(installed(&s, "mgmtit-b").as_deref(), Some("2.0-1"));
    let h = history(&s);
    assert_eq!(h.len(), 2, "one more apt-get call: {h:?}");
    assert!(
        h[1].contains("Upgrade: mgmtit-b") && h[1].contains("Remove: mgmtit-a"),
        "{}",
        h[1]
    );
}

// See: #16 (--noop says what it would do and changes nothing)
#[test]
fn noop_says_what_it_would_install_and_changes_nothing() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0-1");
    // apt's lists are read once by hand: noop does not read them itself.
    let upd = s.tool("apt-get", &["update", "-q"]);
    assert!(upd.status.success(), "{upd:?}");
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n");
    let out = s.run(&g, &["--noop"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pkg[mgmtit-a]: would install mgmtit-a 1.0-1"),
        "{}",
        out.stderr
    );
    assert_eq!(installed(&s, "mgmtit-a"), None);
    assert!(history(&s).is_empty());
}

// See: #16 (a package apt does not know: an error naming it)
#[test]
fn a_missing_package_is_named() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0-1");
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n  - name: mgmtit-nosuch\n");
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("package mgmtit-nosuch not found"),
        "{}",
        out.stderr
    );
    assert_eq!(installed(&s, "mgmtit-a"), None, "nothing half-done");
}

// See: #16 (a held lock: an error naming the packages, with the holder)
#[test]
fn a_held_lock_is_an_error_naming_the_packages() {
    let s = sandbox();
    publish(&s, "mgmtit-a", "1.0-1");
    let lock = super::hold_record_lock(&s.path("/var/lib/dpkg/lock-frontend"));
    let g = graph(&s, "  pkg:\n  - name: mgmtit-a\n");
    let out = s.run(&g, &[]);
    drop(lock);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot apply packages mgmtit-a: apt-get install exited"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Could not get lock"), "{}", out.stderr);
    assert!(out.stderr.contains("holds the lock"), "{}", out.stderr);
}

// See: #16 (bad input refused with file:line:col)
#[test]
fn bad_pkg_fields_are_refused_with_positions() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        r#"graph: bad
resources:
  pkg:
  - name: "-oAPT::x"
  - name: nginx
    state: latest
  - name: curl
    state: newest
    version: "1.0"
"#,
    );
    let f = g.display().to_string();
    refused(
        &g,
        &[
            &format!("{f}:4:11: pkg[-oAPT::x]: \"-oAPT::x\" is not a package name"),
            &format!("{f}:6:12: pkg[nginx]: state must be installed, absent or newest"),
            &format!("{f}:9:14: pkg[curl]: version goes with state: installed only"),
        ],
    );
}
