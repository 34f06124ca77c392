//! Hierarchical fan-out through gateways, end to end against a real OpenSSH
//! sshd (issue #5): gateways and hosts are loopback addresses of one fleet,
//! each with its own home directory; no key file is in any home, so a
//! gateway can only authenticate onward through the agent forwarded to it.

use std::path::PathBuf;
use std::time::Duration;

use crate::remote_run::{
    mgmt_children, parent_pid, procs_with, read, remote_cmd, row, run_dirs, LIMIT,
};
use crate::util::eventually;
use crate::util::sshd::{keygen, Agent, SshdFleet};
use crate::util::{Dir, Proc};

/// Host `i`'s graph: a file of its own, one exported file `from-i`, and a
/// collect of every exported file into its home; reached through `via`.
fn leaf(d: &Dir, fleet: &SshdFleet, i: usize, via: &[String]) -> PathBuf {
    let home = fleet.home(i).display().to_string();
    let via: String = via.iter().map(|u| format!("- {u}\n")).collect();
    d.write(
        &format!("leaf{i}.yaml"),
        &format!(
            "graph: leaf{i}\nremote: {url}\nvia:\n{via}resources:\n  file:\n  \
             - name: mine\n    path: {home}/mine\n    content: \"i am {i}\\n\"\n  \
             - name: \"@@from-{i}\"\n    path: {home}/from-{i}\n    content: \"from {i}\\n\"\n\
             collect:\n- kind: file\n  pattern: {home}/\n",
            url = fleet.url(i)
        ),
    )
}

/// The exact byte counts of the summary's "binary sent:" line, per hop.
fn bytes_per_hop(log: &str) -> Vec<u64> {
    let line = log
        .lines()
        .find(|l| l.starts_with("binary sent: "))
        .unwrap_or_else(|| panic!("no hop line:\n{log}"));
    line.split('(')
        .skip(1)
        .map(|p| p.split(" B)").next().unwrap().parse().unwrap())
        .collect()
}

/// `mgmt run --remote` of `files` with `--converged-timeout 2`, to its end:
/// the exit code and the log.
fn run_to_the_end(fleet: &SshdFleet, files: &[PathBuf]) -> (i32, String) {
    let refs: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
    let mut p = Proc::spawn(&mut remote_cmd(fleet, &refs, &["--converged-timeout", "2"]));
    let code = p.wait(LIMIT);
    (code, p.lines_so_far().join("\n"))
}

fn no_keys_in_home(fleet: &SshdFleet, i: usize) {
    let ssh = fleet.home(i).join(".ssh");
    assert!(!ssh.exists(), "host {i} has {}", ssh.display());
}

fn binary_size() -> u64 {
    std::fs::metadata(crate::util::shipped()).unwrap().len()
}

/// The size of the compressed binary that arrived on host `i`.
fn packed_size(fleet: &SshdFleet, i: usize) -> u64 {
    let bin = fleet.home(i).join(".cache/mgmt/bin");
    let dir = std::fs::read_dir(&bin)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::metadata(dir.join(crate::ship::packed_name(&dir)))
        .unwrap()
        .len()
}

// See: #5 (two gateways x 10 hosts: all converge, exported data crosses
// groups, the binary crosses the primary link once per gateway)
#[test]
fn two_gateways_of_ten_hosts_converge_and_exchange() {
    let fleet = SshdFleet::start(22);
    let d = Dir::new();
    let (gw1, gw2) = (fleet.url(1), fleet.url(2));
    let files: Vec<PathBuf> = (3..=22)
        .map(|i| leaf(&d, &fleet, i, &[if i <= 12 { &gw1 } else { &gw2 }.clone()]))
        .collect();
    let refs: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
    let run = |extra: &[&str]| {
        let mut args = vec!["--converged-timeout", "2"];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(&mut remote_cmd(&fleet, &refs, &args));
        let code = p.wait(LIMIT * 2);
        (code, p.lines_so_far().join("\n"))
    };
    let (code, log) = run(&["--trace"]);
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(code, 0, "{log}");
    for i in 3..=22 {
        let home = fleet.home(i);
        assert_eq!(
            read(&home.join("mine")).as_deref(),
            Some(format!("i am {i}\n").as_str())
        );
        // From its own group and from the other one.
        for k in [3, 12, 13, 22] {
            assert_eq!(
                read(&home.join(format!("from-{k}"))).as_deref(),
                Some(format!("from {k}\n").as_str()),
                "host {i} lacks from-{k}\n{log}"
            );
        }
        let gw = if i <= 12 { fleet.ip(1) } else { fleet.ip(2) };
        let r = row(&log, &format!("{gw}/{}", fleet.ip(i)));
        assert_eq!(r[2], "converged", "{log}");
        assert_eq!(r[4], "miss", "{log}");
    }
    for g in [1, 2] {
        no_keys_in_home(&fleet, g);
        assert_eq!(row(&log, fleet.ip(g))[2], "gateway", "{log}");
    }
    // Bytes per hop: one compressed binary per gateway from here, and the
    // same form, which each gateway received and kept, from the gateways
    // to each host (exact, in bytes, from the hop line); the gateways made
    // no form of their own (#17).
    let xz = packed_size(&fleet, 1);
    assert!(xz * 10 <= binary_size() * 4, "{xz} B");
    for i in [2, 3, 22] {
        assert_eq!(packed_size(&fleet, i), xz, "host {i}");
    }
    assert_eq!(bytes_per_hop(&log), [2 * xz, 20 * xz], "{log}");
    for g in [1, 2] {
        let ship = fleet.home(g).join(".cache/mgmt/ship");
        assert!(!ship.exists(), "gateway {g} compressed the binary itself");
    }
    assert!(log.contains("binary sent: 2 copies, "), "{log}");
    assert!(log.contains("trace (per hop"), "{log}");
    // --trace: one line per hop, gateways and the hosts behind them, each
    // with its connect, copy and start times.
    let traced: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.starts_with("trace (per hop"))
        .skip(1)
        .filter(|l| l.contains("  connect ") && l.contains("  copy ") && l.contains("  start "))
        .collect();
    for i in 1..=22 {
        let hop = match i {
            1 | 2 => fleet.ip(i).to_owned(),
            _ => {
                let gw = if i <= 12 { fleet.ip(1) } else { fleet.ip(2) };
                format!("{gw}/{}", fleet.ip(i))
            }
        };
        assert!(
            traced
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{hop}  connect "))),
            "no trace line for {hop}:\n{log}"
        );
    }
    assert_eq!(traced.len(), 22, "{log}");
    assert!(
        log.contains("20 converged, 0 failed, 0 stopped (20 hosts, 2 gateways)"),
        "{log}"
    );
    // Warm: nothing crosses any hop.
    let (code, log) = run(&[]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(bytes_per_hop(&log), [0, 0], "{log}");
}

// See: #5 (depth 3: bastion -> gateway -> hosts; the user's own agent)
#[test]
fn depth_three_through_a_bastion_with_the_users_agent() {
    let fleet = SshdFleet::start(4);
    let d = Dir::new();
    let via = [fleet.url(1), fleet.url(2)];
    let files = [leaf(&d, &fleet, 3, &via), leaf(&d, &fleet, 4, &via)];
    let agent = Agent::start(d.path(), &fleet.client_key);
    let mut cmd = crate::util::mgmt();
    cmd.env("SSH_AUTH_SOCK", &agent.socket)
        .args(["run", "--converged-timeout", "2", "--known-hosts"])
        .arg(&fleet.known_hosts);
    for f in &files {
        cmd.arg("--remote").arg(f);
    }
    cmd.args(crate::util::shipped_args());
    let mut p = Proc::spawn(&mut cmd);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    for i in [3, 4] {
        let route = format!("{}/{}/{}", fleet.ip(1), fleet.ip(2), fleet.ip(i));
        assert_eq!(row(&log, &route)[2], "converged", "{log}");
        for k in [3, 4] {
            assert!(fleet.home(i).join(format!("from-{k}")).exists(), "{log}");
        }
    }
    assert_eq!(
        row(&log, &format!("{}/{}", fleet.ip(1), fleet.ip(2)))[2],
        "gateway"
    );
    for g in [1, 2] {
        no_keys_in_home(&fleet, g);
    }
}

// See: #5 (a gateway with a wrong host key fails its group; the other
// group converges; exit 1)
#[test]
fn a_gateway_with_a_wrong_host_key_fails_its_group_only() {
    let fleet = SshdFleet::start(6);
    let d = Dir::new();
    let (gw1, gw2) = (fleet.url(1), fleet.url(2));
    let files = [
        leaf(&d, &fleet, 3, std::slice::from_ref(&gw1)),
        leaf(&d, &fleet, 4, std::slice::from_ref(&gw1)),
        leaf(&d, &fleet, 5, std::slice::from_ref(&gw2)),
        leaf(&d, &fleet, 6, std::slice::from_ref(&gw2)),
    ];
    // gw2's known_hosts line names another key.
    keygen(&d.path().join("other"));
    let other = std::fs::read_to_string(d.path().join("other.pub")).unwrap();
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    let known = std::fs::read_to_string(&fleet.known_hosts).unwrap();
    let gw2_line = format!("[{}]:{} ", fleet.ip(2), fleet.port());
    let known: String = known
        .lines()
        .map(|l| match l.starts_with(&gw2_line) {
            true => format!("{gw2_line}{}\n", other.join(" ")),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&fleet.known_hosts, known).unwrap();
    let (code, log) = run_to_the_end(&fleet, &files);
    assert_eq!(code, 1, "{log}");
    for i in [3, 4] {
        assert_eq!(
            row(&log, &format!("{}/{}", fleet.ip(1), fleet.ip(i)))[2],
            "converged",
            "{log}"
        );
    }
    for i in [5, 6] {
        let route = format!("{}/{}", fleet.ip(2), fleet.ip(i));
        assert_eq!(row(&log, &route)[2], "failed:", "{log}");
        let full = log
            .lines()
            .find(|l| l.starts_with(&format!("{route}: ")))
            .unwrap_or_else(|| panic!("no reason for {route}:\n{log}"));
        assert!(full.contains(&format!("via {}: ", fleet.ip(2))), "{full}");
        assert!(full.contains("host key does not match"), "{full}");
        assert!(!fleet.home(i).join("mine").exists());
    }
}

/// A run through gateway 1 to `hosts`, once mgmt runs on all of them; the
/// dir holds the graphs.
fn waiting_for_the_tree(fleet: &SshdFleet, hosts: &[usize]) -> (Proc, Dir) {
    let d = Dir::new();
    let gw = fleet.url(1);
    let files: Vec<PathBuf> = hosts
        .iter()
        .map(|i| leaf(&d, fleet, *i, std::slice::from_ref(&gw)))
        .collect();
    let refs: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
    let mut p = Proc::spawn(&mut remote_cmd(fleet, &refs, &[]));
    for i in [1].iter().chain(hosts) {
        assert!(
            eventually(LIMIT, || !mgmt_children(fleet.ip(*i)).is_empty()),
            "mgmt never ran on host {i}\n{}",
            p.lines_so_far().join("\n")
        );
    }
    // What a stop has to clean up: the gateway was launched with its
    // graph in a run directory; the hosts behind it started warm, with
    // theirs in memory and none.
    assert_eq!(run_dirs(&fleet.home(1)), 1, "the gateway's run directory");
    for i in hosts {
        assert_eq!(run_dirs(&fleet.home(*i)), 0, "host {i} started warm");
    }
    (p, d)
}

/// No mgmt process on the gateway (host 1) or `hosts`, and no per-run
/// files on the gateway (the only host that had any).
fn nothing_left(fleet: &SshdFleet, hosts: &[usize]) {
    for i in [1].iter().chain(hosts) {
        let needle = format!("--hostname {}", fleet.ip(*i));
        assert!(
            eventually(Duration::from_secs(60), || procs_with(&needle).is_empty()),
            "a process survived on host {i}: {:?}",
            procs_with(&needle)
        );
    }
    assert!(
        crate::remote_run::run_files_go(&fleet.home(1)),
        "per-run files left on the gateway"
    );
}

// See: #5 (^C propagates down the tree and leaves no process anywhere);
// #19 (keys never leave the laptop, checked during the run in every file
// of every host, per-run directories included; the hosts behind the
// gateway are stopped by the stop, not by a dropped link)
#[test]
fn interrupt_through_a_gateway_leaves_nothing_behind() {
    let fleet = SshdFleet::start(3);
    let (mut p, _d) = waiting_for_the_tree(&fleet, &[2, 3]);
    let key = std::fs::read_to_string(&fleet.client_key).unwrap();
    // A line of the key's body: the secret part, whatever wraps it.
    let body = key.lines().nth(2).expect("a key body line");
    for i in 1..=3 {
        let found = crate::util::hostile::any_file_contains(&fleet.home(i), body.as_bytes());
        assert!(
            found.is_none(),
            "host {i} holds the private key in {found:?}"
        );
    }
    p.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(p.wait(LIMIT), 0, "{}", p.lines_so_far().join("\n"));
    let log = p.lines_so_far().join("\n");
    for i in [2, 3] {
        let route = format!("{}/{}", fleet.ip(1), fleet.ip(i));
        assert_eq!(row(&log, &route)[2], "stopped", "{log}");
    }
    nothing_left(&fleet, &[2, 3]);
}

// See: #5 (killing a gateway's connection mid-run: its subtree stops,
// its hosts fail "via gw", nothing is left running)
#[test]
fn a_killed_gateway_connection_stops_its_subtree() {
    let fleet = SshdFleet::start(3);
    let (mut p, _d) = waiting_for_the_tree(&fleet, &[2, 3]);
    // The sshd process serving the gateway's session: its parent.
    let gw = mgmt_children(fleet.ip(1));
    let session = parent_pid(gw[0]);
    assert!(session > 1, "no parent for the gateway's mgmt");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(session),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}");
    for i in [2, 3] {
        let route = format!("{}/{}", fleet.ip(1), fleet.ip(i));
        assert_eq!(row(&log, &route)[2], "failed:", "{log}");
    }
    // The gateway removes its own per-run files: its parent cannot.
    nothing_left(&fleet, &[2, 3]);
}

// See: #5 (an edit of a graph on the initiator reaches the hosts behind
// the gateway, without restarting anything)
#[test]
fn an_edit_reaches_hosts_behind_a_gateway() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let target = fleet.home(2).join("edited");
    let graph = |content: &str| {
        format!(
            "graph: live\nremote: {}\nvia: [{}]\nresources:\n  file:\n  - name: f\n    path: {}\n    content: {content:?}\n",
            fleet.url(2),
            fleet.url(1),
            target.display()
        )
    };
    let g = d.write("g.yaml", &graph("one"));
    let mut p = Proc::spawn(&mut remote_cmd(&fleet, &[&g], &[]));
    p.wait_line(&format!("wrote 3 bytes to {}", target.display()), LIMIT);
    crate::remote_run::edit_lands_live(
        &mut p,
        &g,
        &graph("two!"),
        &target,
        &[fleet.ip(1), fleet.ip(2)],
    );
}

// See: #5 (a host failing behind a working gateway fails alone, with the
// gateway's own reason; the gateway's row still says gateway)
#[test]
fn a_host_failing_behind_a_gateway_fails_alone() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    let gw = fleet.url(1);
    let files = [
        leaf(&d, &fleet, 2, std::slice::from_ref(&gw)),
        leaf(&d, &fleet, 3, std::slice::from_ref(&gw)),
    ];
    // Host 3 is unknown: the gateway gets no known_hosts line for it.
    let tag = format!("[{}]:{} ", fleet.ip(3), fleet.port());
    let known: String = std::fs::read_to_string(&fleet.known_hosts)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(&tag))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&fleet.known_hosts, known).unwrap();
    let (code, log) = run_to_the_end(&fleet, &files);
    assert_eq!(code, 1, "{log}");
    let (two, three) = (
        format!("{}/{}", fleet.ip(1), fleet.ip(2)),
        format!("{}/{}", fleet.ip(1), fleet.ip(3)),
    );
    assert_eq!(row(&log, &two)[2], "converged", "{log}");
    assert_eq!(row(&log, &three)[2], "failed:", "{log}");
    assert_eq!(row(&log, fleet.ip(1))[2], "gateway", "{log}");
    let full = log
        .lines()
        .find(|l| l.starts_with(&format!("{three}: ")))
        .unwrap_or_else(|| panic!("no reason for {three}:\n{log}"));
    assert!(
        full.contains("is not in") && full.contains("known_hosts"),
        "{full}"
    );
}

// See: #13 (keys learned under accept-new behind a gateway were forgotten
// at the end of the run)
#[test]
fn a_key_learned_behind_a_gateway_reaches_the_initiators_known_hosts() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    // The leaf's key is unknown here; the gateway's is known.
    let leaf_line = fleet.forget_host_key(2);
    let without = std::fs::read_to_string(&fleet.known_hosts).unwrap();
    let g = leaf(&d, &fleet, 2, &[fleet.url(1)]);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "2", "--host-key-check", "accept-new"],
    ));
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("recorded the host key of"), "{log}");
    fleet.assert_learned_again(2, &leaf_line, &without);
}
