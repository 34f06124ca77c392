//! The showcase (#15): `examples/etcd-cluster.yaml`, as shipped, bootstraps
//! a real three-member etcd cluster on three hosts that are separate
//! machines as far as the graph can tell: each in network and mount
//! namespaces of its own, with its own address, `/etc`, `/var/lib` and
//! `/tmp`, reached over a real sshd ([`NsLan`]).

use std::path::Path;
use std::process::Command;

use super::finish;
use crate::util::netns::NsLan;
use crate::util::{mgmt, shipped_args, Dir, Proc};

/// The example with its `remote:` list pointing at `urls`.
fn example(d: &Dir, urls: &[String]) -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/etcd-cluster.yaml");
    let mut text = std::fs::read_to_string(path).expect("read the example");
    let listed = "- ssh://root@10.0.0.11\n- ssh://root@10.0.0.12\n- ssh://root@10.0.0.13\n";
    assert!(text.contains(listed), "the example's remote: list changed");
    let ours: String = urls.iter().map(|u| format!("- {u}\n")).collect();
    text = text.replace(listed, &ours);
    d.write("etcd-cluster.yaml", &text)
}

/// `mgmt run --remote <graph>` plus `extra`, from the LAN's laptop.
fn run(lan: &NsLan, graph: &Path, extra: &[&str]) -> (i32, String) {
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK")
        .arg("run")
        .arg("--remote")
        .arg(graph)
        .arg("--identity")
        .arg(&lan.client_key)
        .arg("--known-hosts")
        .arg(&lan.known_hosts)
        .args(extra)
        .args(shipped_args());
    let mut p = Proc::spawn(&mut lan.in_laptop(&c));
    finish(&mut p)
}

/// `etcdctl --endpoints http://<ip>:2379 ARGS` from the laptop: (ok, output).
fn etcdctl(lan: &NsLan, ip: &str, args: &[&str]) -> (bool, String) {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "5s", "--endpoints"])
        .arg(format!("http://{ip}:2379"))
        .args(args);
    let out = lan.in_laptop(&c).output().expect("run etcdctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// See: #15 (the showcase: one command, three hosts, one working etcd cluster)
#[test]
fn the_etcd_cluster_example_bootstraps_three_members_from_one_command() {
    let mut lan = NsLan::start(3);
    let d = Dir::new();
    let urls: Vec<String> = (1..=3).map(|i| lan.url(i)).collect();
    let g = example(&d, &urls);
    let (code, log) = run(&lan, &g, &["--converged-timeout", "2"]);
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(code, 0, "{log}");
    for i in 1..=3 {
        assert!(
            log.lines()
                .any(|l| l.contains(lan.ip(i)) && l.contains("converged")),
            "no converged row for {}: {log}",
            lan.ip(i)
        );
    }

    // The run is over; the cluster it made is not.
    let (ok, health) = etcdctl(&lan, lan.ip(1), &["endpoint", "health", "--cluster"]);
    assert!(ok, "{health}");
    for i in 1..=3 {
        assert!(
            health.contains(&format!("http://{}:2379 is healthy", lan.ip(i))),
            "{health}"
        );
    }
    let (ok, members) = etcdctl(&lan, lan.ip(2), &["member", "list"]);
    assert!(ok, "{members}");
    assert_eq!(
        members.lines().filter(|l| l.contains("started")).count(),
        3,
        "{members}"
    );
    let (ok, out) = etcdctl(&lan, lan.ip(1), &["put", "bootstrapped-by", "mgmt"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(
        &lan,
        lan.ip(3),
        &["get", "bootstrapped-by", "--print-value-only"],
    );
    assert!(ok && out.trim() == "mgmt", "{out}");

    // Each host wrote its own configuration, naming all three peers.
    for i in 1..=3 {
        let etcd: Vec<String> = lan
            .processes(i)
            .into_iter()
            .filter(|c| c.starts_with("/usr/bin/etcd"))
            .collect();
        assert_eq!(etcd.len(), 1, "host {i}: {:?}", lan.processes(i));
    }

    // Everything the run started is stopped: one etcd per host and nothing
    // else (no mgmt, no keeper, no tunnel) outlived it.
    let killed = lan.stop();
    for (i, names) in killed.iter().enumerate() {
        assert!(
            names.len() == 1 && names[0].starts_with("/usr/bin/etcd"),
            "host {}: {names:?}",
            i + 1
        );
    }
}

// See: #15 (a member that never comes up: no success, and what waited)
#[test]
fn the_etcd_cluster_example_without_its_third_member_waits_and_says_so() {
    let mut lan = NsLan::start(2);
    let d = Dir::new();
    let missing = format!("ssh://root@{}.99", lan.ip(1).rsplit_once('.').unwrap().0);
    let g = example(&d, &[lan.url(1), lan.url(2), missing]);
    let (code, log) = run(
        &lan,
        &g,
        &["--converged-timeout", "2", "--max-runtime", "20"],
    );
    assert_eq!(code, 1, "{log}");
    let tail: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("--max-runtime reached"))
        .collect();
    for i in 1..=2 {
        assert!(
            tail.iter().any(|l| l.contains(lan.ip(i))
                && l.contains("still waiting")
                && l.contains("when {{ values('peer') | length == host.count }}")),
            "host {i}: {log}"
        );
    }
    let killed = lan.stop();
    assert!(killed.iter().all(|k| k.is_empty()), "{killed:?}");
}
