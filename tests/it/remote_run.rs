//! `mgmt run --remote` end to end against a real OpenSSH sshd (issue #4):
//! each emulated host is a loopback address with its own home directory.

use std::path::Path;
use std::time::Duration;

use crate::util::sshd::SshdFleet;
use crate::util::{eventually, mgmt, Dir, Proc};

pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// mgmt's remote2a/remote2b with the files in the host's own home.
fn example(d: &Dir, fleet: &SshdFleet, i: usize, x: &str) -> std::path::PathBuf {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/remote2a.yaml"
    ))
    .unwrap();
    let home = fleet.home(i).display().to_string();
    let g = src
        .replace("/tmp/", &format!("{home}/"))
        .replace("file1a", &format!("file1{x}"))
        .replace("file2a", &format!("file2{x}"))
        .replace("host a", &format!("host {x}"))
        .replace("ssh://root:vagrant@192.168.121.201:22", &fleet.url(i));
    d.write(&format!("remote2{x}.yaml"), &g)
}

/// `mgmt run --remote ...` with the fleet's key and known_hosts, no agent,
/// shipping [`crate::util::shipped`] unless `extra` names another binary.
pub(crate) fn remote_cmd(
    fleet: &SshdFleet,
    files: &[&Path],
    extra: &[&str],
) -> std::process::Command {
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK").arg("run");
    for f in files {
        c.arg("--remote").arg(f);
    }
    c.arg("--identity")
        .arg(&fleet.client_key)
        .arg("--known-hosts")
        .arg(&fleet.known_hosts)
        .args(extra);
    if !extra.contains(&"--remote-binary") {
        c.args(crate::util::shipped_args());
    }
    c
}

pub(crate) fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

// See: #4 (mgmt's two-host example, for real)
#[test]
fn remote2a_remote2b_exchange_then_converge() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (a, b) = (example(&d, &fleet, 1, "a"), example(&d, &fleet, 2, "b"));
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&a, &b],
        &["--converged-timeout", "2"],
    ));
    let (code, log) = finish(&mut p, LIMIT);
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(code, 0, "{log}\n--- sshd:\n{}", fleet.log());
    for (i, x) in [(1, "a"), (2, "b")] {
        let home = fleet.home(i);
        assert_eq!(
            read(&home.join(format!("file1{x}"))).as_deref(),
            Some(format!("i am file1{x}\n").as_str()),
            "{log}"
        );
        for from in ["a", "b"] {
            assert_eq!(
                read(&home.join(format!("file2{from}"))).as_deref(),
                Some(format!("i am file2{from}, exported from host {from}\n").as_str()),
                "host {x} lacks file2{from}\n{log}"
            );
        }
    }
    // Output came back live, prefixed with the host.
    assert!(log.contains(&format!("[{}]", fleet.ip(1))), "{log}");
    // The per-run files are gone; the cached binary stays.
    for i in [1, 2] {
        let cache = fleet.home(i).join(".cache/mgmt");
        assert!(cache.join("bin").is_dir(), "no binary cache on host {i}");
        assert!(
            !cache.join("run").exists(),
            "per-run files left on host {i}"
        );
    }
}

/// The summary row whose route is `host` (a direct host's route is its
/// name; `gw/web3` behind a gateway): [host, route, result, sent, cache, time]
/// (sent is two words in the table, "0 B" or "91.7 MiB").
pub(crate) fn row(log: &str, host: &str) -> Vec<String> {
    let w: Vec<&str> = log
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() >= 7 && w[1] == host)
        .unwrap_or_else(|| panic!("no summary row for {host} in:\n{log}"));
    let n = w.len();
    vec![
        w[0].into(),
        w[1].into(),
        w[2].into(),
        w[n - 4..n - 2].join(" "),
        w[n - 2].into(),
        w[n - 1].into(),
    ]
}

/// Pids of processes whose command line contains `needle`.
pub(crate) fn procs_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && pid != std::process::id() as i32 {
            out.push(pid);
        }
    }
    out
}

/// Pids of the mgmt children themselves (the binary, after the launch
/// shell's `exec`) running for host `ip`.
pub(crate) fn mgmt_children(ip: &str) -> Vec<i32> {
    procs_with(&hostname_arg(ip))
        .into_iter()
        .filter(|pid| cmdline(*pid).starts_with("./mgmt run "))
        .collect()
}

/// A process's command line, words separated by spaces ("" once gone).
pub(crate) fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// The tunnel port in a child's command line (`--seeds http://127.0.0.1:P`).
fn tunnel_port(cmd: &str) -> Option<u16> {
    cmd.split("http://127.0.0.1:")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every maximal run of exactly `len` hex digits in `text`.
fn hex_runs(text: &str, len: usize) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == len)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn one_noop_graph(d: &Dir, name: &str, urls: &[String]) -> std::path::PathBuf {
    let list: String = urls.iter().map(|u| format!("- {u}\n")).collect();
    d.write(
        name,
        &format!("graph: {name}\nresources:\n  noop:\n  - name: n\nremote:\n{list}"),
    )
}

/// A fleet of `hosts` hosts and `mgmt run --remote` of one noop graph on all
/// of them, with `extra` arguments; the dir holds the graph, so keep it.
pub(crate) fn noop_run(hosts: usize, extra: &[&str]) -> (SshdFleet, Dir, Proc) {
    let fleet = SshdFleet::start(hosts);
    let d = Dir::new();
    let urls: Vec<String> = (1..=hosts).map(|i| fleet.url(i)).collect();
    let g = one_noop_graph(&d, "g.yaml", &urls);
    let p = Proc::spawn(&mut remote_cmd(&fleet, &[&g], extra));
    (fleet, d, p)
}

/// Waits for the run to exit: its exit code and its log.
fn finish(p: &mut Proc, limit: Duration) -> (i32, String) {
    let code = p.wait(limit);
    (code, p.lines_so_far().join("\n"))
}

/// Stops the run with ^C and checks that it exits 0.
pub(crate) fn interrupt(p: &mut Proc) {
    p.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0, "{}", p.lines_so_far().join("\n"));
}

/// The argument in the command line of the children for host `ip`.
fn hostname_arg(ip: &str) -> String {
    format!("--hostname {ip}")
}

/// Whether an mgmt child runs for host `ip` within [`LIMIT`].
fn child_runs(ip: &str) -> bool {
    eventually(LIMIT, || !mgmt_children(ip).is_empty())
}

/// Whether every process for host `ip` is gone within 30 s.
fn children_gone(ip: &str) -> bool {
    let needle = hostname_arg(ip);
    eventually(Duration::from_secs(30), || procs_with(&needle).is_empty())
}

// See: #4 (cache: the second run sends no binary bytes; a corrupt cached binary is replaced, never run)
#[test]
fn second_run_hits_the_cache_and_a_corrupt_binary_is_replaced() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1)]);
    let host = fleet.ip(1).to_owned();
    let run = || {
        let mut p = Proc::spawn(&mut remote_cmd(
            &fleet,
            &[&g],
            &["--converged-timeout", "0"],
        ));
        finish(&mut p, LIMIT)
    };
    let (code, log) = run();
    assert_eq!(code, 0, "{log}");
    assert_eq!(row(&log, &host)[4], "miss", "{log}");
    let (code, log) = run();
    assert_eq!(code, 0, "{log}");
    let r = row(&log, &host);
    assert_eq!(
        (r[3].as_str(), r[4].as_str()),
        ("0 B", "hit"),
        "second run must send nothing:\n{log}"
    );
    // Corrupt the cached binary (same size): it must be replaced, not run.
    let bin_dir = fleet.home(1).join(".cache/mgmt/bin");
    let cached = std::fs::read_dir(&bin_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("mgmt");
    // Same size and, put back, the same modification time: only the
    // change time, which no one can set back, tells the install stamp.
    let (mid, bytes) = crate::util::flip_a_byte_keeping_size_and_mtime(&cached);
    assert!(
        cached.with_file_name("mgmt.ok").exists(),
        "the install stamp"
    );
    let (code, log) = run();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("failed its hash check; replacing it"), "{log}");
    // The summary counts the replacement as a copy.
    let r = row(&log, &host);
    assert_eq!(r[4], "miss", "a replaced binary is no cache hit:\n{log}");
    assert_ne!(r[3], "0 B", "the replacement's bytes are counted:\n{log}");
    let fixed = std::fs::read(&cached).unwrap();
    assert_ne!(fixed[mid], bytes[mid], "the cached binary was not replaced");
}

// See: #4 (--no-caching leaves nothing behind)
#[test]
fn no_caching_leaves_nothing_on_the_host() {
    let (fleet, _d, mut p) = noop_run(1, &["--converged-timeout", "0", "--no-caching"]);
    assert_eq!(p.wait(LIMIT), 0, "{}", p.lines_so_far().join("\n"));
    // All that stays is the host's audit record (this machine has no
    // /dev/log, so it is the file beside the cache): #13.
    let cache = fleet.home(1).join(".cache/mgmt");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let expected: &[&str] = match std::path::Path::new("/dev/log").exists() {
        true => &[],
        false => &["audit.log"],
    };
    assert_eq!(left, expected, "left behind in {}", cache.display());
}

// See: #4 (50 hosts from one graph, --cconns 8: never more than 8 in set-up)
#[test]
fn fifty_hosts_with_a_set_up_cap_of_eight() {
    let extra = ["-v", "--cconns", "8", "--converged-timeout", "1"];
    let (fleet, _d, mut p) = noop_run(50, &extra);
    let (code, log) = finish(&mut p, Duration::from_secs(300));
    assert_eq!(code, 0, "{log}");
    // "connecting" is printed after the slot is taken, "set-up slot
    // freed" when it is given back: the overlap of those is the cap.
    let (mut now, mut max) = (0i32, 0i32);
    for l in log.lines() {
        if l.starts_with('[') && l.ends_with("] connecting") {
            now += 1;
            max = max.max(now);
        } else if l.ends_with(": set-up slot freed") {
            now -= 1;
        }
    }
    assert_eq!(now, 0, "unbalanced set-up lines:\n{log}");
    assert!(max <= 8, "{max} hosts were in set-up at once");
    // A copied host gives its slot back at the copy's last byte, before
    // its child starts: the freed line comes before its "set-up done".
    let at = |host: &str, what: &str| {
        let end = format!(" {host}: {what}");
        log.lines().position(|l| l.ends_with(&end))
    };
    let early = (1..=50)
        .map(|i| fleet.ip(i))
        .filter(|h| matches!((at(h, "set-up slot freed"), at(h, "set-up done")), (Some(f), Some(d)) if f < d))
        .count();
    assert_eq!(
        early, 50,
        "hosts that kept their slot until started:\n{log}"
    );
    // More hosts than slots: the first wave's copies after the first wait,
    // spread out (fleet::stagger); later ones do not.
    let waits = log.lines().filter(|l| l.ends_with("(first wave)")).count();
    assert_eq!(waits, 7, "{log}");
    // And the operator sees them wait, not "starting".
    let shown = log.lines().filter(|l| l.ends_with("] waiting")).count();
    assert_eq!(shown, 7, "{log}");
    assert!(
        max >= 2,
        "the set-up phase never overlapped ({max}); the fan-out is serial"
    );
    assert!(log.contains("50 converged, 0 failed"), "{log}");
}

// See: #4 (a changed key, an unknown host, a wrong key, an unreachable address: that host fails, the rest converge, exit 1)
#[test]
fn failing_hosts_fail_alone_with_their_reason() {
    let fleet = SshdFleet::start(5);
    let d = Dir::new();
    // known_hosts: host 3 unknown, host 4's key changed.
    let other = d.path().join("other_host_key");
    crate::util::sshd::keygen(&other);
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let kh = std::fs::read_to_string(&fleet.known_hosts).unwrap();
    let tag = |i: usize| format!("[{}]:{}", fleet.ip(i), fleet.port());
    let kh: String = kh
        .lines()
        .filter(|l| !l.starts_with(&tag(3)))
        .map(|l| {
            if l.starts_with(&tag(4)) {
                format!("{} {}\n", tag(4), other_pub.join(" "))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let known = d.write("known_hosts", &kh);
    // Host 5 is told to use a key sshd does not accept; the others get the
    // right one the same way (an `-i` key would be tried on host 5 too).
    let wrong = d.path().join("wrong_key");
    crate::util::sshd::keygen(&wrong);
    let others: Vec<&str> = (1..=4).map(|i| fleet.ip(i)).collect();
    let ssh_config = d.write(
        "ssh_config",
        &format!(
            "Host {}\n  IdentityFile {}\nHost {}\n  IdentityFile {}\n",
            fleet.ip(5),
            wrong.display(),
            others.join(" "),
            fleet.client_key.display()
        ),
    );
    // Host 6: nothing listens there.
    let unreachable = format!("ssh://root@127.{}.{}.250:{}", 200, 201, fleet.port());
    let mut urls: Vec<String> = (1..=5).map(|i| fleet.url(i)).collect();
    urls.push(unreachable);
    let g = one_noop_graph(&d, "g.yaml", &urls);
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK")
        .args([
            "run",
            "--converged-timeout",
            "1",
            "--connect-timeout",
            "5",
            "--remote",
        ])
        .arg(&g);
    c.arg("--known-hosts")
        .arg(&known)
        .arg("--ssh-config")
        .arg(&ssh_config);
    let (code, log) = finish(&mut Proc::spawn(&mut c), LIMIT);
    assert_eq!(code, 1, "{log}");
    assert_eq!(row(&log, fleet.ip(1))[2], "converged", "{log}");
    assert_eq!(row(&log, fleet.ip(2))[2], "converged", "{log}");
    let reason = |i: &str| {
        log.lines()
            .find(|l| l.starts_with(&format!("{i}: ")))
            .unwrap_or_else(|| panic!("no reason for {i}:\n{log}"))
            .to_owned()
    };
    let r3 = reason(fleet.ip(3));
    assert!(r3.contains("is not in") && r3.contains("SHA256:"), "{r3}");
    let r4 = reason(fleet.ip(4));
    assert!(
        r4.contains("does not match") && r4.contains(&format!("{}:", known.display())),
        "{r4}"
    );
    let r5 = reason(fleet.ip(5));
    assert!(r5.contains("authentication as \"root\" failed"), "{r5}");
    let r6 = reason("127.200.201.250");
    assert!(r6.contains("cannot connect"), "{r6}");
    assert!(log.contains("2 converged, 4 failed"), "{log}");
}

// See: #4 (live update: an edit on the initiator shows on the host while the run goes on)
#[test]
fn an_edit_of_the_remote_graph_is_applied_on_the_host() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let target = fleet.home(1).join("live");
    let graph = |content: &str| {
        format!("graph: live\nresources:\n  file:\n  - name: live\n    path: {}\n    content: \"{content}\"\nremote: {}\n", target.display(), fleet.url(1))
    };
    let g = d.write("g.yaml", &graph("one"));
    let mut p = Proc::spawn(&mut remote_cmd(&fleet, &[&g], &[]));
    p.wait_line(&format!("wrote 3 bytes to {}", target.display()), LIMIT);
    // An invalid edit is not sent.
    std::fs::write(&g, "graph: live\nresources:\n  potato: []\n").unwrap();
    p.wait_line("invalid edit not sent", LIMIT);
    edit_lands_live(&mut p, &g, &graph("two!"), &target, &[fleet.ip(1)]);
}

/// The pids of the mgmt children on the hosts at `ips`, sorted.
fn children_on(ips: &[&str]) -> Vec<i32> {
    let mut pids: Vec<i32> = ips.iter().flat_map(|ip| mgmt_children(ip)).collect();
    pids.sort_unstable();
    pids
}

/// Writes `text` (a graph whose file resource at `target` now holds
/// "two!") to `g`, waits for the host to apply it, checks that no child on
/// the hosts at `ips` was restarted (the same pids before and after), then
/// stops the run with ^C (exit 0).
pub(crate) fn edit_lands_live(p: &mut Proc, g: &Path, text: &str, target: &Path, ips: &[&str]) {
    let before = children_on(ips);
    assert_eq!(before.len(), ips.len(), "one child per host: {before:?}");
    std::fs::write(g, text).unwrap();
    p.wait_line(&format!("wrote 4 bytes to {}", target.display()), LIMIT);
    assert_eq!(read(target).as_deref(), Some("two!"));
    let log = p.lines_so_far().join("\n");
    assert_eq!(children_on(ips), before, "a child was restarted:\n{log}");
    p.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0, "{log}");
}

// See: #4 (the tunnel refuses a connection that does not present the secret)
#[test]
fn the_tunnel_refuses_connections_without_the_secret() {
    let (fleet, _d, mut p) = noop_run(1, &[]);
    p.wait_line("] running", LIMIT);
    // The child's command line holds the tunnel port (never the secret).
    // Read it from /proc, which shows an empty command line for an instant
    // while the launch shell execs the binary: look until it is there.
    let needle = hostname_arg(fleet.ip(1));
    let mut port = None;
    let found = eventually(LIMIT, || {
        port = procs_with(&needle)
            .into_iter()
            .find_map(|pid| tunnel_port(&cmdline(pid)));
        port.is_some()
    });
    assert!(found, "no child with {needle:?} and a tunnel port");
    let port = port.unwrap();
    // The secret (64 hex digits) is in no child's argv or environment: the
    // only such word there is the cached binary's own hash.
    let sha = std::fs::read_dir(fleet.home(1).join(".cache/mgmt/bin"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 64)
        .expect("a cached binary");
    for pid in procs_with(&needle) {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let text = format!("{} {}", cmdline(pid), String::from_utf8_lossy(&env));
        for word in hex_runs(&text, 64) {
            assert_eq!(
                word, sha,
                "a 64-hex word in pid {pid}'s argv or environment"
            );
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let connect = etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None);
        match tokio::time::timeout(Duration::from_secs(30), connect).await {
            Ok(Ok(mut c)) => c.get("/_mgmt/", None).await.is_err(),
            _ => true,
        }
    });
    assert!(refused, "a client without the secret reached the store");
    p.wait_line("tunnel connection from", LIMIT);
    interrupt(&mut p);
}

// See: #4 (^C during the run: no mgmt process left on any host, per-run files removed)
#[test]
fn interrupt_during_the_run_leaves_nothing_behind() {
    let (fleet, _d, mut p) = noop_run(2, &[]);
    p.wait_all(
        &[
            &format!("[{}] running", fleet.ip(1)),
            &format!("[{}] running", fleet.ip(2)),
        ],
        LIMIT,
    );
    for i in [1, 2] {
        assert!(child_runs(fleet.ip(i)), "mgmt never ran on host {i}");
    }
    interrupt(&mut p);
    for i in [1, 2] {
        assert!(
            procs_with(&hostname_arg(fleet.ip(i))).is_empty(),
            "a child survived on host {i}"
        );
        assert!(
            !fleet.home(i).join(".cache/mgmt/run").exists(),
            "per-run files left on host {i}"
        );
    }
}

// See: #4 (^C during the copy: the upload stops, nothing half-written is left, exit 0)
#[test]
fn interrupt_during_the_copy_leaves_nothing_behind() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    // A big "binary" so the copy lasts: ELF magic, then 256 MiB of random
    // bytes, which no codec shrinks (#17: a hole would compress to 16 KB).
    // --no-caching: its compressed form is not kept on this machine either.
    let big = d.path().join("big");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    std::io::Write::write_all(&mut f, b"\x7fELF").unwrap();
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..256 {
        rand::fill(&mut block[..]);
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    drop(f);
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1)]);
    let big_arg = big.display().to_string();
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--remote-binary", &big_arg, "--no-caching"],
    ));
    p.wait_line("copying", LIMIT);
    interrupt(&mut p);
    let bin = fleet.home(1).join(".cache/mgmt/bin");
    let left: Vec<_> = walk(&bin)
        .into_iter()
        .filter(|f| f.metadata().map(|m| m.is_file()).unwrap_or(false))
        .collect();
    assert!(left.is_empty(), "partial upload left: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

// See: #4 (killing the SSH connection makes the child exit by itself)
#[test]
fn a_dropped_link_stops_the_child() {
    // Started warm (its graph in memory), and launched with its graph in
    // a run directory (`--no-caching`), which it must remove itself.
    for extra in [&[][..], &["--no-caching"][..]] {
        let (fleet, _d, mut p) = noop_run(1, extra);
        p.wait_line("] running", LIMIT);
        assert!(child_runs(fleet.ip(1)), "mgmt never ran on the host");
        let runs = run_dirs(&fleet.home(1));
        assert_eq!(runs, usize::from(!extra.is_empty()), "{extra:?}");
        // SIGKILL: no clean stop, the connections just drop.
        p.signal(nix::sys::signal::Signal::SIGKILL);
        p.wait(LIMIT);
        assert!(
            children_gone(fleet.ip(1)),
            "the child outlived its link: {:?}",
            procs_with(&hostname_arg(fleet.ip(1)))
        );
        // The child removed its own per-run files: nobody else could.
        assert!(
            run_files_go(&fleet.home(1)),
            "per-run files left after the link dropped ({extra:?})"
        );
    }
}

/// How many per-run directories `home` has now (0 when it has none).
pub(crate) fn run_dirs(home: &Path) -> usize {
    std::fs::read_dir(home.join(".cache/mgmt/run")).map_or(0, |d| d.count())
}

/// Whether `home`'s per-run directories are gone (or empty) within 30 s.
pub(crate) fn run_files_go(home: &Path) -> bool {
    eventually(Duration::from_secs(30), || run_dirs(home) == 0)
}

// See: #4 (a second ^C exits at once; the children stop by themselves
// when their link goes)
#[test]
fn a_second_interrupt_exits_at_once() {
    let (fleet, _d, mut p) = noop_run(1, &[]);
    assert!(child_runs(fleet.ip(1)));
    // The child frozen, so that the first ^C's orderly stop cannot end
    // before the second ^C (a noop child stops within milliseconds).
    let child = mgmt_children(fleet.ip(1))
        .first()
        .copied()
        .expect("a child");
    let frozen = crate::util::Frozen::new(child);
    p.signal(nix::sys::signal::Signal::SIGINT);
    p.wait_line("] stopping", LIMIT);
    p.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 130, "{}", p.lines_so_far().join("\n"));
    drop(frozen);
    assert!(children_gone(fleet.ip(1)), "the child outlived its link");
}

// See: #4 (the initiator's own --file graph counts in the converged rule)
#[test]
fn a_local_graph_and_remote_hosts_converge_together() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1)]);
    let here = d.p("here");
    let local = d.write(
        "local.yaml",
        &format!("graph: local\nresources:\n  file:\n  - name: here\n    path: {here}\n    content: \"local\\n\"\n"),
    );
    let mut cmd = remote_cmd(&fleet, &[&g], &["--converged-timeout", "1"]);
    cmd.arg("--file").arg(&local);
    let (code, log) = finish(&mut Proc::spawn(&mut cmd), LIMIT);
    assert_eq!(code, 0, "{log}");
    assert_eq!(read(Path::new(&here)).as_deref(), Some("local\n"));
    assert_eq!(row(&log, fleet.ip(1))[2], "converged", "{log}");
}

// See: #4 (one host's link dropping fails that host only; the others run on)
#[test]
fn a_dropped_link_fails_that_host_and_the_rest_go_on() {
    let (fleet, _d, mut p) = noop_run(2, &[]);
    for i in [1, 2] {
        assert!(child_runs(fleet.ip(i)));
    }
    // Kill the sshd process serving host 1's session: that link drops.
    let child = mgmt_children(fleet.ip(1))[0];
    let session = parent_pid(child);
    assert!(session > 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(session),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    p.wait_line(&format!("[{}] failed", fleet.ip(1)), LIMIT);
    assert!(
        !mgmt_children(fleet.ip(2)).is_empty(),
        "host 2 was stopped too"
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    let (code, log) = finish(&mut p, LIMIT);
    assert_eq!(code, 1, "{log}");
    assert_eq!(row(&log, fleet.ip(1))[2], "failed:", "{log}");
    assert_eq!(row(&log, fleet.ip(2))[2], "stopped", "{log}");
    assert!(children_gone(fleet.ip(1)));
}

/// The parent pid of `pid` (0 when it is gone).
pub(crate) fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
