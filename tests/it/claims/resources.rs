//! Resource fields of the README's table that no test exercised: `exec`'s
//! `timeout` and `shell`, `file`'s `owner` and `group`. A `--file` run on
//! this machine; outcomes read from `/proc` and `stat`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::util::{eventually, mgmt, run, Dir, Proc};

const LIMIT: Duration = Duration::from_secs(60);

// See: #19 (README: "exec ... `timeout` (seconds)"; "A failed resource ... holds back its dependents")
#[test]
fn exec_timeout_kills_the_command_and_fails_the_resource() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: t
resources:
  exec:
  - name: slow
    cmd: "echo $$ > {pid}; echo started; exec sleep 600"
    timeout: 1
  file:
  - name: after
    path: {after}
    content: "after\n"
edges:
- name: e
  from: {{kind: exec, name: slow}}
  to: {{kind: file, name: after}}
"#,
            pid = d.p("pid"),
            after = d.p("after")
        ),
    );
    // -t -1: the run stays up, so what ends the command is the timeout.
    let mut p = Proc::spawn(mgmt().args(["run", "--file"]).arg(&g));
    p.wait_line("exec[slow]: started", LIMIT);
    let pid: i32 = d.read("pid").unwrap().trim().parse().unwrap();
    let failed = p.wait_line("timed out after 1s", LIMIT);
    assert!(failed.contains("exec[slow]"), "{failed}");
    p.wait_line("settled: 2 resources checked", LIMIT);
    assert!(
        eventually(Duration::from_secs(10), || crate::util::gone(pid)),
        "the timed-out command {pid} still runs"
    );
    assert!(
        !d.path().join("after").exists(),
        "the dependent was applied"
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    // Stopped by a signal with a failed resource: 1.
    assert_eq!(p.wait(LIMIT), 1, "{}", p.lines_so_far().join("\n"));
}

// See: #19 (README: "exec ... `shell` (default `/bin/sh`)")
#[test]
fn exec_runs_cmd_with_its_shell() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: s
resources:
  exec:
  - name: default
    cmd: "readlink /proc/$$/exe > {a}"
  - name: bash
    shell: /bin/bash
    cmd: "readlink /proc/$$/exe > {b}; echo \"${{BASH_VERSINFO[0]}}\" >> {b}"
"#,
            a = d.p("default"),
            b = d.p("bash")
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let real = |p: &str| std::fs::canonicalize(p).unwrap().display().to_string();
    let default = d.read("default").expect("the default exec ran");
    assert_eq!(default.trim(), real("/bin/sh"), "{}", out.stderr);
    let bash = d.read("bash").expect("the bash exec ran");
    let lines: Vec<&str> = bash.lines().collect();
    assert_eq!(lines.first().copied(), Some(real("/bin/bash").as_str()));
    // An array subscript: only bash could have run it.
    assert!(
        lines.get(1).is_some_and(|v| v.parse::<u32>().is_ok()),
        "{bash:?}"
    );
}

// See: #19 (README: "file ... `owner`, `group` (names or ids, resolved on the host)")
#[test]
fn file_owner_and_group_by_name_and_by_id() {
    let d = Dir::new();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let daemon = nix::unistd::User::from_name("daemon")
        .unwrap()
        .expect("user daemon");
    let daemon_group = nix::unistd::Group::from_gid(daemon.gid)
        .unwrap()
        .expect("daemon's group");
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: o
resources:
  file:
  - name: names
    path: {a}
    content: "a\n"
    owner: nobody
    group: {dgroup}
  - name: ids
    path: {b}
    content: "b\n"
    owner: "{duid}"
    group: "{ngid}"
"#,
            a = d.p("names"),
            b = d.p("ids"),
            dgroup = daemon_group.name,
            duid = daemon.uid,
            ngid = nobody.gid
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let owner = |name: &str| {
        let md = std::fs::metadata(d.path().join(name)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(owner("names"), (nobody.uid.as_raw(), daemon.gid.as_raw()));
    assert_eq!(owner("ids"), (daemon.uid.as_raw(), nobody.gid.as_raw()));
    // An outside chown is put back by the next run.
    std::os::unix::fs::chown(d.path().join("names"), Some(0), Some(0)).unwrap();
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(owner("names"), (nobody.uid.as_raw(), daemon.gid.as_raw()));
    assert_eq!(owner("ids"), (daemon.uid.as_raw(), nobody.gid.as_raw()));
}
