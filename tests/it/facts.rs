//! `mgmt facts` (#20 item 4): the inventory of real sshd hosts, gathered
//! by the shipped binary on each host, printed as a table or as JSON;
//! nothing of the graph is applied.

use std::time::Duration;

use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, Dir, Proc};

fn facts_cmd(fleet: &SshdFleet, graph: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK")
        .arg("facts")
        .arg("--remote")
        .arg(graph)
        .arg("--identity")
        .arg(&fleet.client_key)
        .arg("--known-hosts")
        .arg(&fleet.known_hosts)
        .args(crate::util::shipped_args())
        .args(extra);
    c
}

// See: #20 (tests: `mgmt facts` on real sshd hosts prints each host's
// facts; its JSON parses; nothing is applied)
#[test]
fn facts_of_real_sshd_hosts_as_json_and_as_a_table() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let marker = fleet.home(1).join("applied");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  file:\n  - name: m\n    path: {}\n    content: x\nremote: [{}, {}]\n",
            marker.display(),
            fleet.url(1),
            fleet.url(2)
        ),
    );
    let mut p = Proc::spawn(&mut facts_cmd(&fleet, &g, &["--json"]));
    let code = p.wait(Duration::from_secs(120));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}\n{out}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{doc:#}");
    for (h, i) in hosts.iter().zip([1, 2]) {
        assert_eq!(h["host"], fleet.ip(i), "{doc:#}");
        assert!(h["error"].is_null(), "{doc:#}");
        let f = &h["facts"];
        assert_eq!(f["arch"], std::env::consts::ARCH, "{doc:#}");
        assert_eq!(f["os"]["id"], crate::util::os_id().as_str(), "{doc:#}");
        assert!(f["memory_mb"].as_u64().unwrap() > 0, "{doc:#}");
        assert!(f["cpus"].as_u64().unwrap() > 0, "{doc:#}");
    }
    assert!(!marker.exists(), "mgmt facts applied nothing");

    // The table, with a host that cannot be reached: its reason, exit 1.
    let g2 = d.write(
        "g2.yaml",
        &format!(
            "graph: g2\nresources:\n  noop:\n  - name: n\nremote: [{}, ssh://root@127.0.0.1:1]\n",
            fleet.url(1)
        ),
    );
    let mut p = Proc::spawn(&mut facts_cmd(&fleet, &g2, &["--connect-timeout", "5"]));
    let code = p.wait(Duration::from_secs(120));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}\n{out}");
    eprintln!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("host") && lines[0].contains("kernel"),
        "{out}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(fleet.ip(1)))
        .expect(&out);
    assert!(
        row.contains(&crate::util::os_id()) && row.contains(std::env::consts::ARCH),
        "{out}"
    );
    assert!(out.contains("1 of 2 host(s) answered"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("127.0.0.1: ")), "{out}");
}

// See: #20 (not yet through gateways: refused before connecting, exit 2)
#[test]
fn facts_behind_a_gateway_are_refused_with_exit_2() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        "graph: g\nresources:\n  noop:\n  - name: n\nremote: ssh://root@10.9.9.9\nvia: [ssh://root@127.0.0.1:1]\n",
    );
    let out = crate::util::run(
        mgmt().arg("facts").arg("--remote").arg(&g),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("behind gateways"), "{}", out.stderr);
}
