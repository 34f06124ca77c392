//! Black-box tests of `mgmt run --file`: the local engine (issue #2).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{mgmt, run, Dir, Proc};

const LIMIT: Duration = Duration::from_secs(60);

fn files_graph(d: &Dir) -> String {
    format!(
        r#"graph: files
resources:
  noop:
  - name: start
  file:
  - name: a
    path: {a}
    content: "alpha\n"
    mode: "0640"
  - name: b
    path: {b}
    content: "beta\n"
  - name: dir
    path: {dir}/
edges:
- name: e1
  from: {{kind: noop, name: start}}
  to: {{kind: file, name: a}}
- name: e2
  from: {{kind: file, name: a}}
  to: {{kind: file, name: b}}
"#,
        a = d.p("a"),
        b = d.p("b"),
        dir = d.p("sub")
    )
}

// See: #2 (apply, idempotence)
#[test]
fn applies_then_second_run_changes_nothing() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let first = run(
        mgmt()
            .args(["run", "--converged-timeout", "1", "--file"])
            .arg(&g),
        LIMIT,
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(d.read("a").as_deref(), Some("alpha\n"));
    assert_eq!(d.read("b").as_deref(), Some("beta\n"));
    assert!(d.path().join("sub").is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.path().join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert!(
        first
            .stderr
            .contains("converged: 4 resources, 3 changed, 0 failed"),
        "{}",
        first.stderr
    );

    let second = run(
        mgmt()
            .args(["run", "--converged-timeout", "1", "--file"])
            .arg(&g),
        LIMIT,
    );
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("converged: 4 resources, 0 changed, 0 failed"),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("wrote"), "{}", second.stderr);
}

// See: #2 (outside edit and delete corrected)
#[test]
fn outside_edit_and_delete_are_corrected() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let mut p = Proc::spawn(
        mgmt()
            .args(["run", "--converged-timeout", "30", "--file"])
            .arg(&g),
    );
    p.wait_line(&format!("wrote 5 bytes to {}", d.p("b")), LIMIT);
    std::fs::write(d.path().join("a"), "tampered").unwrap();
    p.wait_line(&format!("wrote 6 bytes to {}", d.p("a")), LIMIT);
    assert_eq!(d.read("a").as_deref(), Some("alpha\n"));
    std::fs::remove_file(d.path().join("b")).unwrap();
    p.wait_line(&format!("wrote 5 bytes to {}", d.p("b")), LIMIT);
    assert_eq!(d.read("b").as_deref(), Some("beta\n"));
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0);
}

// See: #2 (notify → exec refresh, exactly once per change)
#[test]
fn notify_reruns_exec_once_per_change() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: notify
resources:
  file:
  - name: conf
    path: {conf}
    content: "v1\n"
  exec:
  - name: reload
    cmd: "echo reload >> {log}"
    ifcmd: "test -f {conf}"
edges:
- name: e
  from: {{kind: file, name: conf}}
  to: {{kind: exec, name: reload}}
  notify: true
"#,
            conf = d.p("conf"),
            log = d.p("log")
        ),
    );
    // Exits 5 s after the last activity: every run of the command is in the
    // log by then, so "exactly once per change" can be counted.
    let mut p = Proc::spawn(
        mgmt()
            .args(["run", "--converged-timeout", "5", "--file"])
            .arg(&g),
    );
    p.wait_line("exec[reload]: running", LIMIT);
    for round in 1..=2 {
        std::fs::write(d.path().join("conf"), format!("edit {round}")).unwrap();
        p.wait_line("file[conf]: wrote 3 bytes", LIMIT);
        p.wait_line("exec[reload]: running", LIMIT);
    }
    assert_eq!(p.wait(LIMIT), 0);
    assert_eq!(
        d.read("log").unwrap_or_default().lines().count(),
        3,
        "one run at start and one per change"
    );
    assert_eq!(d.read("conf").as_deref(), Some("v1\n"));
}

// See: #2 (Send/Recv)
#[test]
fn password_is_sent_into_a_file() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: pw
resources:
  password:
  - name: pw
    length: 24
  file:
  - name: secret
    path: {s}
    mode: "0600"
edges:
- name: e
  from: {{kind: password, name: pw}}
  to: {{kind: file, name: secret}}
  send: password
  recv: content
"#,
            s = d.p("secret")
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let secret = d.read("secret").unwrap();
    assert_eq!(secret.len(), 24);
    assert!(
        !out.stderr.contains(&secret),
        "the secret must not be logged"
    );
}

// See: #2 (--noop)
#[test]
fn noop_changes_nothing_and_says_what_it_would_do() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let out = run(
        mgmt().args(["run", "--noop", "-t", "1", "--file"]).arg(&g),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!d.path().join("a").exists());
    assert!(!d.path().join("sub").exists());
    assert!(
        out.stderr
            .contains(&format!("would write 6 bytes to {}", d.p("a"))),
        "{}",
        out.stderr
    );
}

// See: #2 (failure holds back dependents, not independent branches; retry)
#[test]
fn failure_holds_back_dependents_and_exits_1() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: fail
resources:
  exec:
  - name: bad
    cmd: "echo attempt >> {count}; exit 7"
    meta: {{retry: 2, delay: 10}}
  file:
  - name: after
    path: {after}
    content: x
  - name: other
    path: {other}
    content: y
edges:
- name: e
  from: {{kind: exec, name: bad}}
  to: {{kind: file, name: after}}
"#,
            count = d.p("count"),
            after = d.p("after"),
            other = d.p("other")
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        d.read("count").unwrap().lines().count(),
        3,
        "one try and two retries"
    );
    assert!(!d.path().join("after").exists());
    assert_eq!(d.read("other").as_deref(), Some("y"));
    assert!(
        out.stderr.contains("exec[bad]: command exited with code 7"),
        "{}",
        out.stderr
    );
}

// See: #2 (converged exit: not before the timeout, promptly after)
#[test]
fn exits_when_converged_for_the_timeout() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let start = Instant::now();
    let out = run(mgmt().args(["run", "-t", "2", "--file"]).arg(&g), LIMIT);
    let took = start.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before the timeout"
    );
    // A generous bound: this only catches "never exits" or "waits twice".
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

// See: #2 (live reload: one edited, one added, one removed; invalid edit kept out)
#[test]
fn live_reload_swaps_the_graph() {
    let d = Dir::new();
    let graph = |a: &str, third: &str| {
        format!(
            "graph: live\nresources:\n  file:\n  - name: a\n    path: {}\n    content: \"{a}\"\n  - name: keep\n    path: {}\n    content: k\n{third}",
            d.p("a"),
            d.p("keep")
        )
    };
    let g = d.write(
        "g.yaml",
        &graph(
            "one",
            &format!(
                "  - name: gone\n    path: {}\n    content: g\n",
                d.p("gone")
            ),
        ),
    );
    let mut p = Proc::spawn(mgmt().args(["run", "-t", "5", "--file"]).arg(&g));
    p.wait_all(
        &[
            &format!("to {}", d.p("a")),
            &format!("to {}", d.p("keep")),
            &format!("to {}", d.p("gone")),
        ],
        LIMIT,
    );
    // An invalid edit is reported and ignored.
    std::fs::write(&g, "graph: live\nresources:\n  nosuchkind: []\n").unwrap();
    p.wait_line("invalid edit ignored", LIMIT);
    let keep_mtime = std::fs::metadata(d.path().join("keep"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(
        &g,
        graph(
            "two",
            &format!(
                "  - name: added\n    path: {}\n    content: n\n",
                d.p("added")
            ),
        ),
    )
    .unwrap();
    p.wait_line("graph changed", LIMIT);
    p.wait_all(
        &[
            "file[gone]: removed from the graph",
            &format!("wrote 3 bytes to {}", d.p("a")),
            &format!("wrote 1 bytes to {}", d.p("added")),
        ],
        LIMIT,
    );
    assert_eq!(p.wait(LIMIT), 0, "exits by convergence");
    assert_eq!(d.read("a").as_deref(), Some("two"));
    assert_eq!(d.read("added").as_deref(), Some("n"));
    assert_eq!(
        d.read("gone").as_deref(),
        Some("g"),
        "a removed resource's effects stay"
    );
    assert_eq!(
        std::fs::metadata(d.path().join("keep"))
            .unwrap()
            .modified()
            .unwrap(),
        keep_mtime,
        "unchanged resource not re-applied"
    );
    let log = p.lines_so_far().join("\n");
    assert_eq!(
        log.matches(&format!("to {}", d.p("keep"))).count(),
        1,
        "{log}"
    );
}

// See: #2 (live reload of a Send/Recv receiver: the same password lands
// in the file at its new path, not an empty file)
#[test]
fn live_reload_redelivers_the_password() {
    let d = Dir::new();
    let graph = |path: &str| {
        format!(
            "graph: pw\nresources:\n  password:\n  - name: pw\n    length: 24\n  file:\n  - name: secret\n    path: {}\nedges:\n- name: e\n  from: {{kind: password, name: pw}}\n  to: {{kind: file, name: secret}}\n  send: password\n  recv: content\n",
            d.p(path)
        )
    };
    let g = d.write("g.yaml", &graph("one"));
    let mut p = Proc::spawn(mgmt().args(["run", "-t", "2", "--file"]).arg(&g));
    p.wait_line(&format!("wrote 24 bytes to {}", d.p("one")), LIMIT);
    std::fs::write(&g, graph("two")).unwrap();
    p.wait_line("graph changed", LIMIT);
    p.wait_line(&format!("wrote 24 bytes to {}", d.p("two")), LIMIT);
    assert_eq!(p.wait(LIMIT), 0, "exits by convergence");
    let one = d.read("one").unwrap();
    assert_eq!(
        d.read("two").as_deref(),
        Some(one.as_str()),
        "same password"
    );
    let log = p.lines_so_far().join("\n");
    assert_eq!(log.matches("generated a password").count(), 1, "{log}");
}

// See: #2 (SIGINT mid-run stops running commands, exit 0)
#[test]
fn sigint_stops_a_running_command_cleanly() {
    signal_stops_a_running_command(Signal::SIGINT, "interrupted");
}

/// Runs a long command, sends `sig`, and checks for a clean stop: exit 0,
/// `said` in the log, the command's shell gone.
fn signal_stops_a_running_command(sig: Signal, said: &str) {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!("graph: long\nresources:\n  exec:\n  - name: long\n    cmd: \"echo $$ > {pid}; echo started; sleep 300\"\n", pid = d.p("pid")),
    );
    let mut p = Proc::spawn(mgmt().args(["run", "--file"]).arg(&g));
    p.wait_line("exec[long]: started", LIMIT);
    let pid: i32 = d.read("pid").unwrap().trim().parse().unwrap();
    p.signal(sig);
    assert_eq!(p.wait(LIMIT), 0);
    let log = p.lines_so_far().join("\n");
    assert!(log.contains(said), "{log}");
    // Killed, it may linger a moment as a zombie until init reaps it.
    let dead = || crate::util::gone(pid);
    assert!(
        crate::util::eventually(Duration::from_secs(10), dead),
        "the command's shell {pid} survived"
    );
}

// See: #2 (file state: absent removes the file and keeps it away)
#[test]
fn state_absent_removes_a_file_and_keeps_it_away() {
    let d = Dir::new();
    d.write("gone", "old");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: absent\nresources:\n  file:\n  - name: gone\n    path: {}\n    state: absent\n",
            d.p("gone")
        ),
    );
    let mut p = Proc::spawn(mgmt().args(["run", "-t", "30", "--file"]).arg(&g));
    let removed = format!("file[gone]: removed {}", d.p("gone"));
    p.wait_line(&removed, LIMIT);
    assert!(!d.path().join("gone").exists());
    // Created again from outside: the watcher sees it and it goes again.
    d.write("gone", "back");
    p.wait_line(&removed, LIMIT);
    assert!(!d.path().join("gone").exists());
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0);
}

// See: #2 (msg logs its body when applied and says so on a refresh)
#[test]
fn msg_logs_its_body_and_refreshes() {
    let d = Dir::new();
    // Already right: the first apply changes nothing, so no refresh at start.
    d.write("conf", "v1\n");
    let g = d.write(
        "g.yaml",
        &format!(
            r#"graph: msg
resources:
  file:
  - name: conf
    path: {conf}
    content: "v1\n"
  msg:
  - name: hello
    body: "hello from the graph"
edges:
- name: e
  from: {{kind: file, name: conf}}
  to: {{kind: msg, name: hello}}
  notify: true
"#,
            conf = d.p("conf")
        ),
    );
    let mut p = Proc::spawn(mgmt().args(["run", "-t", "30", "--file"]).arg(&g));
    p.wait_line("msg[hello]: hello from the graph", LIMIT);
    p.wait_line("settled:", LIMIT);
    std::fs::write(d.path().join("conf"), "edited").unwrap();
    p.wait_line("file[conf]: wrote 3 bytes", LIMIT);
    p.wait_line("msg[hello]: received a refresh", LIMIT);
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0);
    let log = p.lines_so_far().join("\n");
    assert_eq!(log.matches("received a refresh").count(), 1, "{log}");
    assert_eq!(log.matches("file[conf]: wrote").count(), 1, "{log}");
}

// See: #2 (meta.noop on one resource: it reports and changes nothing, the
// others apply)
#[test]
fn meta_noop_leaves_that_resource_alone() {
    let d = Dir::new();
    d.write("kept", "old");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: metanoop\nresources:\n  file:\n  - name: kept\n    path: {}\n    content: new\n    meta: {{noop: true}}\n  - name: made\n    path: {}\n    content: made\n",
            d.p("kept"),
            d.p("made")
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(d.read("kept").as_deref(), Some("old"), "{}", out.stderr);
    assert_eq!(d.read("made").as_deref(), Some("made"));
    assert!(
        out.stderr.contains(&format!(
            "file[kept]: would write 3 bytes to {}",
            d.p("kept")
        )),
        "{}",
        out.stderr
    );
}

// See: #2 (SIGTERM stops cleanly: running commands killed, exit 0)
#[test]
fn sigterm_stops_cleanly() {
    signal_stops_a_running_command(Signal::SIGTERM, "terminated; stopping");
}

// See: #2 (--max-runtime stops a run that would never exit by itself)
#[test]
fn max_runtime_stops_the_run() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let start = Instant::now();
    let out = run(
        mgmt().args(["run", "--max-runtime", "2", "--file"]).arg(&g),
        LIMIT,
    );
    let took = start.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("--max-runtime reached; stopping"),
        "{}",
        out.stderr
    );
    assert!(took >= Duration::from_secs(2), "exited after {took:?}");
    assert_eq!(d.read("a").as_deref(), Some("alpha\n"));
}

// See: #2 (--no-watch: an edit of the graph file is not applied)
#[test]
fn no_watch_ignores_an_edit() {
    let d = Dir::new();
    let graph = |content: &str| {
        format!(
            "graph: nowatch\nresources:\n  file:\n  - name: a\n    path: {}\n    content: {content}\n",
            d.p("a")
        )
    };
    let g = d.write("g.yaml", &graph("one"));
    let mut p = Proc::spawn(
        mgmt()
            .args(["run", "--no-watch", "-t", "3", "--file"])
            .arg(&g),
    );
    p.wait_line(&format!("wrote 3 bytes to {}", d.p("a")), LIMIT);
    // Written well before the run converges (3 s after its last change);
    // with watching on, "graph changed" follows within milliseconds.
    std::fs::write(&g, graph("two")).unwrap();
    assert_eq!(p.wait(LIMIT), 0);
    let log = p.lines_so_far().join("\n");
    assert!(!log.contains("graph changed"), "{log}");
    assert_eq!(d.read("a").as_deref(), Some("one"));
}

// See: #2 (with -t -1 the run says when it has settled and stays up until
// a signal: what bench/engine.py measures idle CPU on)
#[test]
fn never_exiting_run_logs_settled_and_stays_up() {
    let d = Dir::new();
    let g = d.write("g.yaml", &files_graph(&d));
    let mut p = Proc::spawn(mgmt().args(["run", "-t", "-1", "--file"]).arg(&g));
    p.wait_line(
        "settled: 4 resources checked, 3 changes so far, 0 failed",
        LIMIT,
    );
    assert_eq!(d.read("b").as_deref(), Some("beta\n"));
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0);
    let log = p.lines_so_far().join("\n");
    assert!(
        log.contains("interrupted; stopping"),
        "alive until the signal: {log}"
    );
    assert!(!log.contains("converged:"), "{log}");
}

// See: #4 (host CPU): mgmt runs without transparent huge pages, the
// commands it starts get them back.
#[test]
fn huge_pages_are_off_for_mgmt_and_back_for_commands() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !own.contains("THP_enabled:") {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    }
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: thp\nresources:\n  exec:\n  - name: probe\n    cmd: \"grep THP_enabled /proc/$PPID/status > {parent}; grep THP_enabled /proc/self/status > {cmd}\"\n",
            parent = d.p("parent"),
            cmd = d.p("cmd"),
        ),
    );
    let out = run(mgmt().args(["run", "-t", "1", "--file"]).arg(&g), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let read = |n: &str| std::fs::read_to_string(d.path().join(n)).expect(n);
    assert_eq!(
        read("parent").split_whitespace().last(),
        Some("0"),
        "mgmt itself"
    );
    assert_eq!(
        read("cmd").split_whitespace().last(),
        Some("1"),
        "its command"
    );
}
