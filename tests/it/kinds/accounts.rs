//! `user` and `group` (issue #16) against the real shadow tools, in a mount
//! namespace with its own copy of `/etc` (passwd, group, shadow, gshadow,
//! login.defs, skel), `/home`, `/var/mail` and `/var/log`.

use super::{refused, Sandbox};
use crate::util::Dir;

fn sandbox() -> Sandbox {
    let mut s = Sandbox::new();
    s.copy("/etc");
    s.empty("/home");
    s.empty("/var/mail");
    s.copy("/var/log");
    s
}

const GRAPH: &str = r#"graph: accounts
resources:
  group:
  - name: mgmtit-web
    gid: 23450
  - name: mgmtit-ops
    system: true
  user:
  - name: mgmtit-app
    uid: 23450
    home: /home/mgmtit-app
    shell: /bin/sh
    groups: [mgmtit-ops]
  - name: mgmtit-daemon
    system: true
    shell: /usr/sbin/nologin
  - name: mgmtit-old
    state: absent
edges:
- name: web-gid
  from: {kind: group, name: mgmtit-web}
  to: {kind: user, name: mgmtit-app}
  send: gid
  recv: gid
- name: ops-first
  from: {kind: group, name: mgmtit-ops}
  to: {kind: user, name: mgmtit-app}
"#;

/// The `/etc/passwd` line of `name` in the sandbox.
fn passwd_line(s: &Sandbox, name: &str) -> Option<String> {
    s.read("/etc/passwd")
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(str::to_owned)
}

fn group_line(s: &Sandbox, name: &str) -> Option<String> {
    s.read("/etc/group")
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(str::to_owned)
}

// See: #16 (user and group: create, change, remove; idempotent; Send/Recv)
#[test]
fn accounts_are_made_then_left_alone_and_corrected() {
    let s = sandbox();
    let made = s.tool("useradd", &["--no-create-home", "mgmtit-old"]);
    assert!(made.status.success(), "{made:?}");
    let g = s.dir.write("g.yaml", GRAPH);

    let first = s.run(&g, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let app = passwd_line(&s, "mgmtit-app").expect("mgmtit-app made");
    assert_eq!(app, "mgmtit-app:x:23450:23450::/home/mgmtit-app:/bin/sh");
    assert!(s.path("/home/mgmtit-app").is_dir(), "home made");
    assert!(
        group_line(&s, "mgmtit-web").is_some_and(|l| l.starts_with("mgmtit-web:x:23450:")),
        "{:?}",
        group_line(&s, "mgmtit-web")
    );
    let ops = group_line(&s, "mgmtit-ops").expect("mgmtit-ops made");
    assert!(ops.ends_with(":mgmtit-app"), "{ops}");
    let ops_gid: u32 = ops.split(':').nth(2).unwrap().parse().unwrap();
    assert!(ops_gid < 1000, "a system group: {ops}");
    let daemon = passwd_line(&s, "mgmtit-daemon").expect("mgmtit-daemon made");
    let daemon_uid: u32 = daemon.split(':').nth(2).unwrap().parse().unwrap();
    assert!(daemon_uid < 1000, "a system account: {daemon}");
    assert!(!s.path("/home/mgmtit-daemon").exists());
    assert_eq!(passwd_line(&s, "mgmtit-old"), None, "removed");
    assert!(
        first
            .stderr
            .contains("user[mgmtit-old]: remove user mgmtit-old"),
        "{}",
        first.stderr
    );
    // Every account in shadow too: the tools kept the databases in step.
    assert!(s.read("/etc/shadow").contains("mgmtit-app:"));

    let second = s.run(&g, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("converged: 5 resources, 0 changed, 0 failed"),
        "{}",
        second.stderr
    );

    // A hand-made change is put back, and only that.
    let changed = s.tool(
        "usermod",
        &["--shell", "/bin/bash", "--groups", "", "mgmtit-app"],
    );
    assert!(changed.status.success(), "{changed:?}");
    let third = s.run(&g, &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.stderr.contains(
            "user[mgmtit-app]: change user mgmtit-app: shell /bin/bash -> /bin/sh, groups [] -> [mgmtit-ops]"
        ),
        "{}",
        third.stderr
    );
    assert!(third.stderr.contains("1 changed"), "{}", third.stderr);
    assert_eq!(
        passwd_line(&s, "mgmtit-app").as_deref(),
        Some("mgmtit-app:x:23450:23450::/home/mgmtit-app:/bin/sh")
    );
}

// See: #16 (--noop says what it would do and changes nothing)
#[test]
fn noop_says_what_it_would_do_and_changes_nothing() {
    let s = sandbox();
    let made = s.tool("useradd", &["--no-create-home", "mgmtit-old"]);
    assert!(made.status.success(), "{made:?}");
    let before = (
        s.read("/etc/passwd"),
        s.read("/etc/group"),
        s.read("/etc/shadow"),
    );
    let g = s.dir.write("g.yaml", GRAPH);
    let out = s.run(&g, &["--noop"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "group[mgmtit-web]: would create group mgmtit-web with gid 23450",
        "group[mgmtit-ops]: would create group mgmtit-ops",
        "user[mgmtit-app]: would create user mgmtit-app",
        "user[mgmtit-daemon]: would create user mgmtit-daemon",
        "user[mgmtit-old]: would remove user mgmtit-old",
    ] {
        assert!(out.stderr.contains(line), "no {line:?} in:\n{}", out.stderr);
    }
    let after = (
        s.read("/etc/passwd"),
        s.read("/etc/group"),
        s.read("/etc/shadow"),
    );
    assert!(before == after, "the databases changed under --noop");
    assert!(!s.path("/home/mgmtit-app").exists());
}

// See: #16 (a failing tool's own words in the error; meta.retry)
#[test]
fn a_missing_group_fails_with_the_tools_words_after_retries() {
    let s = sandbox();
    let g = s.dir.write(
        "g.yaml",
        r#"graph: bad
resources:
  user:
  - name: mgmtit-lost
    groups: [mgmtit-nosuch]
    meta: {retry: 1, delay: 10}
"#,
    );
    let out = s.run(&g, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("retry 1 in 10 ms"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot create user mgmtit-lost: useradd exited with code 6"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mgmtit-nosuch"), "{}", out.stderr);
    assert_eq!(passwd_line(&s, "mgmtit-lost"), None);
}

// See: #16 (bad input refused with file:line:col before anything runs)
#[test]
fn bad_account_fields_are_refused_with_positions() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        r#"graph: bad
resources:
  user:
  - name: "x;touch /tmp/owned"
  - name: good
    uid: -1
  - name: good2
    groups: wheel
  - name: good3
    shell: bin/sh
  group:
  - name: g1
    state: gone
"#,
    );
    let f = g.display().to_string();
    refused(
        &g,
        &[
            &format!("{f}:4:11: user[x;touch /tmp/owned]: user name"),
            &format!("{f}:6:10: user[good]: uid must be between 0 and 4294967295, not -1"),
            &format!("{f}:8:13: user[good2]: groups: expected a list of strings, found"),
            &format!("{f}:10:12: user[good3]: shell must be an absolute path"),
            &format!("{f}:13:12: group[g1]: state must be exists or absent, not \"gone\""),
        ],
    );
}
