//! The warm start against a real sshd (#17 item 3): a host whose binary is
//! cached starts in one exec, with no SFTP session; one whose cache fails
//! the trust rule is never started from it; and the `--cconns` cap seen
//! from outside mgmt, in sshd's own log (#19 item 3).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::remote_run::{edit_lands_live, mgmt_children, one_noop_graph, remote_cmd, row, LIMIT};
use crate::util::hostile::{as_nobody, nobody};
use crate::util::sshd::{FleetOptions, SshdFleet};
use crate::util::{eventually, run, Dir, Proc};

/// A fleet whose sshd logs each connection's client port and each
/// session's start (`LogLevel VERBOSE`).
fn verbose_fleet(hosts: usize) -> SshdFleet {
    SshdFleet::start_with(
        hosts,
        FleetOptions {
            log_level: "VERBOSE",
            ..FleetOptions::default()
        },
    )
}

/// Runs the graph on the fleet; the exit code, mgmt's output, and what
/// sshd logged during the run, once it logged the end of every connection
/// the run opened (its log reaches the test through a pipe, later).
fn run_logged(fleet: &SshdFleet, g: &Path, extra: &[&str]) -> (i32, String, String) {
    let before = settled_len(fleet);
    let out = run(&mut remote_cmd(fleet, &[g], extra), LIMIT);
    let log = format!("{}\n{}", out.stdout, out.stderr);
    let sshd = logged_since(fleet, before, &log);
    (out.code, log, sshd)
}

/// What sshd logged from `before` on, once it logged the end of every
/// connection opened since; `log` (mgmt's) is shown if it never does.
fn logged_since(fleet: &SshdFleet, before: usize, log: &str) -> String {
    let ended = |s: &str| count(s, "Connection from ") > 0 && balanced(s);
    let done = eventually(Duration::from_secs(30), || ended(&fleet.log()[before..]));
    let sshd = fleet.log()[before..].to_owned();
    assert!(
        done,
        "sshd did not log the end of every connection:\n{sshd}\n{log}"
    );
    sshd
}

/// Whether sshd logged the end of every connection it logged in `s`.
fn balanced(s: &str) -> bool {
    let closed = count(s, "Disconnected from user ") + count(s, "Connection closed by ");
    closed == count(s, "Connection from ")
}

/// The length of sshd's log once it logged the end of every connection so
/// far: an offset that no earlier connection's lines straddle (the end of
/// a run's last connection can reach the log after the run returned).
fn settled_len(fleet: &SshdFleet) -> usize {
    let done = eventually(Duration::from_secs(30), || balanced(&fleet.log()));
    let log = fleet.log();
    assert!(
        done,
        "sshd did not log the end of an earlier connection:\n{log}"
    );
    log.len()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// A session started: an exec or SFTP alike (the fleet's sshd forces a
/// command that runs either in the host's home).
const SESSION: &str = "Starting session: ";

// See: #17 (a warm run: one exec per host, no SFTP session, nothing copied)
#[test]
fn a_cached_host_starts_in_one_exec_without_sftp() {
    let fleet = verbose_fleet(1);
    let d = Dir::new();
    // The child notes its umask: a warm start must leave the login's.
    // And its arguments: the graph comes on stdin, cold or warm.
    let umask = fleet.home(1).join("umask");
    let argv = fleet.home(1).join("argv");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  exec:\n  - name: note\n    cmd: umask > {}; tr '\\0' ' ' < /proc/$PPID/cmdline > {}\nremote: {}\n",
            umask.display(),
            argv.display(),
            fleet.url(1)
        ),
    );
    let host = fleet.ip(1);
    let once = ["--converged-timeout", "0"];
    let (code, log, sshd) = run_logged(&fleet, &g, &once);
    assert_eq!(code, 0, "{log}");
    assert_eq!(row(&log, host)[4], "miss", "{log}");
    let cold_umask = std::fs::read_to_string(&umask).expect("the cold child's umask");
    std::fs::remove_file(&umask).expect("rm");
    // The cold run: the warm check, SFTP, the unpacking, and the start:
    // the same warm command, now that the binary is there.
    assert_eq!(count(&sshd, SESSION), 4, "{sshd}");
    let args = std::fs::read_to_string(&argv).expect("the cold child's arguments");
    assert!(
        args.contains("--graph-stdin=") && !args.contains("--file"),
        "the copied binary was not started as a warm one: {args:?}"
    );
    let (code, log, sshd) = run_logged(&fleet, &g, &once);
    assert_eq!(code, 0, "{log}");
    let r = row(&log, host);
    assert_eq!(
        (r[2].as_str(), r[3].as_str(), r[4].as_str()),
        ("converged", "0 B", "hit"),
        "{log}"
    );
    // One session in all: no SFTP session, nothing but the child's start.
    assert_eq!(count(&sshd, SESSION), 1, "{sshd}");
    let warm_umask = std::fs::read_to_string(&umask).expect("the warm child's umask");
    assert_eq!(warm_umask, cold_umask);
    // The child kept its graph in memory: no run directory was made.
    let run_dir = fleet.home(1).join(".cache/mgmt/run");
    assert!(!run_dir.exists(), "left behind: {}", run_dir.display());
}

// See: #17 (a warm start compares the install stamp instead of hashing
// the binary again; any write to the binary sends it back to the hash)
#[test]
fn a_warm_start_trusts_the_install_stamp_until_the_binary_is_written() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1)]);
    let host = fleet.ip(1);
    let once = ["--converged-timeout", "0"];
    let out = run(&mut remote_cmd(&fleet, &[&g], &once), LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bin = std::fs::read_dir(fleet.home(1).join(".cache/mgmt/bin"))
        .expect("ls")
        .flatten()
        .map(|e| e.path().join("mgmt"))
        .next()
        .expect("a cached binary");
    assert!(bin.with_file_name("mgmt.ok").exists(), "the install stamp");
    // Hash tools that note each call and fail, first on the host's PATH.
    let tools = fleet.home(1).join(".path");
    let called = d.path().join("hashed");
    std::fs::create_dir_all(&tools).expect("mkdir");
    for tool in ["openssl", "sha256sum"] {
        let p = tools.join(tool);
        let script = format!("#!/bin/sh\necho {tool} >> {}\nexit 1\n", called.display());
        std::fs::write(&p, script).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let out = run(&mut remote_cmd(&fleet, &[&g], &once), LIMIT);
    let log = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{log}");
    assert_eq!(row(&log, host)[4], "hit", "{log}");
    assert!(
        !called.exists(),
        "a warm start with its stamp hashed:\n{log}"
    );
    // One byte changed, size and modification time as they were: the
    // stamp no longer matches, the hash is asked for, and with no tool to
    // vouch for the binary nothing runs it.
    crate::util::flip_a_byte_keeping_size_and_mtime(&bin);
    let audit = fleet.home(1).join(".cache/mgmt/audit.log");
    let _ = std::fs::remove_file(&audit);
    let out = run(&mut remote_cmd(&fleet, &[&g], &once), LIMIT);
    let log = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{log}");
    assert!(called.exists(), "the changed binary was not hashed:\n{log}");
    assert!(!audit.exists(), "the changed binary ran:\n{log}");
}

// See: #17, #13 (a genuine binary in a directory nobody owns is never started warm)
#[test]
fn a_genuine_binary_in_a_directory_nobody_owns_is_not_started() {
    let fleet = verbose_fleet(1);
    let d = Dir::new();
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1)]);
    let once = ["--converged-timeout", "0"];
    let (code, log, _) = run_logged(&fleet, &g, &once);
    assert_eq!(code, 0, "{log}");
    // nobody's own directory in place of the hash directory, holding a
    // byte-identical copy of the binary: its hash passes, so only the
    // directory check stands between it and a swap after the hash check.
    // (nobody cannot reach the fleet's homes; root builds it and hands
    // it over, as if nobody had made it.)
    let cache = fleet.home(1).join(".cache/mgmt");
    let bin = cache.join("bin");
    let sha_dir = std::fs::read_dir(&bin)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a cached binary");
    let genuine = sha_dir.with_extension("orig");
    std::fs::rename(&sha_dir, &genuine).expect("mv");
    std::fs::create_dir(&sha_dir).expect("mkdir");
    std::fs::copy(genuine.join("mgmt"), sha_dir.join("mgmt")).expect("copy");
    let (uid, gid) = nobody();
    let stamp = sha_dir.join("mgmt.ok");
    for p in [sha_dir.clone(), sha_dir.join("mgmt")] {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
    }
    // And an install stamp that matches the copy as it is now (#17: a
    // matching stamp stands in for the hash), so the directory check is
    // all that is left.
    let sha = sha_dir.file_name().unwrap().to_string_lossy().into_owned();
    let out = std::process::Command::new("stat")
        .args(["-c", "%d %i %s %.9Y %.9Z"])
        .arg(sha_dir.join("mgmt"))
        .output()
        .expect("stat");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::write(&stamp, format!("{sha} {line}\n")).expect("stamp");
    std::os::unix::fs::chown(&stamp, Some(uid), Some(gid)).expect("chown");
    let audit = cache.join("audit.log");
    let _ = std::fs::remove_file(&audit);
    let (code, log, sshd) = run_logged(&fleet, &g, &once);
    assert_eq!(code, 1, "{log}");
    assert!(row(&log, fleet.ip(1))[2].starts_with("failed"), "{log}");
    let named = format!("{} is owned by uid {uid}", sha_dir.display());
    assert!(log.contains(&named), "{log}");
    // The binary never started: it writes an audit record first thing.
    assert!(!audit.exists(), "the binary ran:\n{log}\n{sshd}");
}

/// The most hosts between their connection and their child's start, by
/// sshd's log in order: a connection opens at "Connection from ... port P"
/// and its set-up ends at the first session started for port P.
fn most_at_once(sshd: &str) -> (usize, usize) {
    let port_after = |l: &str, key: &str| -> Option<String> {
        let rest = &l[l.find(key)? + key.len()..];
        Some(rest.split_whitespace().next()?.to_owned())
    };
    let (mut open, mut done) = (HashSet::new(), HashSet::new());
    let (mut most, mut connections) = (0, 0);
    for l in sshd.lines() {
        if l.contains("Connection from ") {
            if let Some(p) = port_after(l, " port ") {
                open.insert(p);
                connections += 1;
                most = most.max(open.len());
            }
        } else if l.contains(SESSION) {
            if let Some(p) = port_after(l, " port ") {
                if !done.contains(&p) && open.remove(&p) {
                    done.insert(p);
                }
            }
        }
    }
    (most, connections)
}

// See: #19 (the --cconns cap observed from outside mgmt: sshd's log)
#[test]
fn the_set_up_cap_holds_in_sshds_own_log() {
    // 16 hosts: one sshd, so its log is one stream in the order of events.
    let hosts = 16;
    let fleet = verbose_fleet(hosts);
    let d = Dir::new();
    let urls: Vec<String> = (1..=hosts).map(|i| fleet.url(i)).collect();
    let g = one_noop_graph(&d, "g.yaml", &urls);
    let (code, log, _) = run_logged(&fleet, &g, &["--converged-timeout", "0"]);
    assert_eq!(code, 0, "{log}");
    // Warm: a host's permit is held from before it connects until its
    // child has started, and sshd logs the session's start before that.
    let cap = ["--cconns", "3", "--converged-timeout", "0"];
    let (code, log, sshd) = run_logged(&fleet, &g, &cap);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains(&format!("{hosts} converged, 0 failed")),
        "{log}"
    );
    let (most, connections) = most_at_once(&sshd);
    assert_eq!(connections, hosts, "{sshd}");
    assert!(most <= 3, "{most} hosts were in set-up at once:\n{sshd}");
    assert!(most >= 2, "set-up never overlapped ({most}):\n{sshd}");
}

/// A graph that writes `content` to `target` on host 1.
fn live_graph(fleet: &SshdFleet, target: &Path, content: &str) -> String {
    format!(
        "graph: live\nresources:\n  file:\n  - name: live\n    path: {}\n    content: \"{content}\"\nremote: {}\n",
        target.display(),
        fleet.url(1)
    )
}

/// Caches the binary on host 1 with a run of `live_graph("one")`, then
/// writes `live_graph("two")` to the graph file: the file and the target.
fn cache_live(fleet: &SshdFleet, d: &Dir) -> (PathBuf, PathBuf) {
    let target = fleet.home(1).join("live");
    let g = d.write("g.yaml", &live_graph(fleet, &target, "one"));
    let out = run(
        &mut remote_cmd(fleet, &[&g], &["--converged-timeout", "0"]),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::write(&g, live_graph(fleet, &target, "two")).expect("write");
    (g, target)
}

/// Starts the warm run of `g` (`-vv`) and waits until its child wrote
/// "two" to `target`.
fn start_live(fleet: &SshdFleet, g: &Path, target: &Path) -> Proc {
    let mut p = Proc::spawn(&mut remote_cmd(fleet, &[g], &["-vv"]));
    p.wait_line("set-up done (started warm)", LIMIT);
    p.wait_line(&format!("wrote 3 bytes to {}", target.display()), LIMIT);
    p
}

// See: #17, #4 (an edit reaches a host whose child started warm: on the
// child's stdin, with no SFTP session and no graph on the host's disk)
#[test]
fn an_edit_reaches_a_host_started_warm() {
    let fleet = verbose_fleet(1);
    let d = Dir::new();
    let (g, target) = cache_live(&fleet, &d);
    let before = settled_len(&fleet);
    let mut p = start_live(&fleet, &g, &target);
    // The running child holds its graph in memory, not on the disk.
    let run_dir = fleet.home(1).join(".cache/mgmt/run");
    assert!(!run_dir.exists(), "a run directory: {}", run_dir.display());
    let two = live_graph(&fleet, &target, "two!");
    edit_lands_live(&mut p, &g, &two, &target, &[fleet.ip(1)]);
    let log = p.lines_so_far().join("\n");
    assert!(log.contains("graph.yaml updated"), "{log}");
    // The child's exec was the run's only session: the edit took none.
    let sshd = logged_since(&fleet, before, &log);
    assert_eq!(count(&sshd, SESSION), 1, "{sshd}\n{log}");
}

// See: #17, #13 (a warm child takes its live edits on its stdin: nobody,
// on the same host, cannot put a graph there)
#[test]
fn nobody_cannot_send_a_graph_to_a_warm_child() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let (g, target) = cache_live(&fleet, &d);
    let mut p = start_live(&fleet, &g, &target);
    let pids = mgmt_children(fleet.ip(1));
    assert_eq!(pids.len(), 1, "one child: {pids:?}");
    // nobody's frame would make the child write "pwned" to the target.
    let forged = live_graph(&fleet, &target, "pwned");
    let forged = forged.split("remote:").next().expect("text");
    let frame = format!("graph {}\n{forged}", forged.len());
    let frame_file = d.write("frame", &frame);
    std::fs::set_permissions(
        &frame_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let dir_mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(d.path(), dir_mode).expect("chmod");
    as_nobody(&format!(
        "cat {} > /dev/null || exit 2; [ -d /proc/{} ] || exit 3; \
         if cat {} > /proc/{}/fd/0 2>/dev/null; then echo 'nobody wrote to the child' >&2; exit 1; fi",
        frame_file.display(),
        pids[0],
        frame_file.display(),
        pids[0]
    ));
    // An edit sent after nobody's try lands, and nothing came before it:
    // frames are read in order, so a forged one would have been first.
    let two = live_graph(&fleet, &target, "two!");
    edit_lands_live(&mut p, &g, &two, &target, &[fleet.ip(1)]);
    let log = p.lines_so_far().join("\n");
    let forged_write = format!("wrote 5 bytes to {}", target.display());
    assert!(
        !log.contains(&forged_write) && !log.contains("pwned"),
        "{log}"
    );
}
