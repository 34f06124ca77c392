//! `mgmt facts` (#20 item 4): the inventory of real sshd hosts, gathered
//! by the shipped binary on each host, printed as a table or as JSON;
//! nothing of the graph is applied. Hosts behind gateways (at depth one
//! and two) are asked by their gateway; a gateway refused, or one that
//! reports a host outside its subtree, cannot stand in for those hosts.

use std::time::Duration;

use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, Dir, Proc};

/// How long any one `mgmt facts` of these tests may take.
const LIMIT: Duration = Duration::from_secs(180);

fn facts_cmd(fleet: &SshdFleet, graph: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut c = mgmt();
    c.env_remove("SSH_AUTH_SOCK")
        .arg("facts")
        .arg("--remote")
        .arg(graph)
        .arg("--identity")
        .arg(&fleet.client_key)
        .arg("--known-hosts")
        .arg(&fleet.known_hosts);
    if !extra.contains(&"--remote-binary") {
        c.args(crate::util::shipped_args());
    }
    c.args(extra);
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
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}\n{out}");
    }
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

/// The `facts` of one host row of a `mgmt facts --json` document are this
/// machine's (every sshd host here is this machine).
fn assert_local_facts(h: &serde_json::Value, doc: &serde_json::Value) {
    assert!(h["error"].is_null(), "{doc:#}");
    let f = &h["facts"];
    assert_eq!(f["arch"], std::env::consts::ARCH, "{doc:#}");
    assert_eq!(f["os"]["id"], crate::util::os_id().as_str(), "{doc:#}");
    assert!(f["memory_mb"].as_u64().unwrap() > 0, "{doc:#}");
}

// See: #20 (facts through gateways: the gateway gathers the facts of the
// hosts behind it; they appear in the JSON and the table with the direct
// hosts', and a host behind it that cannot be reached is an error row, exit 1)
#[test]
fn facts_of_hosts_behind_a_gateway_as_json_and_as_a_table() {
    let fleet = SshdFleet::start(4);
    let d = Dir::new();
    let marker = fleet.home(2).join("applied");
    let behind = d.write(
        "behind.yaml",
        &format!(
            "graph: behind\nresources:\n  file:\n  - name: m\n    path: {}\n    content: x\nremote: [{}, {}]\nvia: [{}]\n",
            marker.display(),
            fleet.url(2),
            fleet.url(3),
            fleet.url(1)
        ),
    );
    let direct = d.write(
        "direct.yaml",
        &format!(
            "graph: direct\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(4)
        ),
    );
    let mut c = facts_cmd(&fleet, &behind, &["--json", "--remote"]);
    c.arg(&direct);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(180));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}\n{out}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let hosts = doc["hosts"].as_array().expect("hosts");
    // Every host, in the order of the files and their remote: lists; the
    // gateway itself is a hop, not a host of the inventory.
    let names: Vec<&str> = hosts.iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(names, [fleet.ip(2), fleet.ip(3), fleet.ip(4)], "{doc:#}");
    for (h, i) in hosts.iter().zip([2, 3]) {
        assert_eq!(
            h["route"],
            format!("{}/{}", fleet.ip(1), fleet.ip(i)),
            "{doc:#}"
        );
        assert_local_facts(h, &doc);
    }
    assert_eq!(hosts[2]["route"], fleet.ip(4), "{doc:#}");
    assert_local_facts(&hosts[2], &doc);
    assert!(!marker.exists(), "mgmt facts applied nothing");
    // The gateway authenticated onward with the agent forwarded to it: no
    // key in its home; and its run directory is gone.
    assert!(!fleet.home(1).join(".ssh").exists());
    let runs = fleet.home(1).join(".cache/mgmt/run");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // The table, with a host behind the gateway that cannot be reached:
    // an error row, its reason after the table, exit 1.
    let g2 = d.write(
        "g2.yaml",
        &format!(
            "graph: g2\nresources:\n  noop:\n  - name: n\nremote: [{}, ssh://root@127.0.0.1:1]\nvia: [{}]\n",
            fleet.url(2),
            fleet.url(1)
        ),
    );
    let mut c = facts_cmd(&fleet, &g2, &["--connect-timeout", "5", "--remote"]);
    c.arg(&direct);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(180));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}\n{out}");
    if std::env::var_os("MGMT_TEST_LOG").is_some() {
        eprintln!("{log}\n{out}");
    }
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("host"), "{out}");
    for i in [2, 4] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{} ", fleet.ip(i))))
            .expect(&out);
        assert!(
            row.contains(&crate::util::os_id()) && row.contains(std::env::consts::ARCH),
            "{out}"
        );
    }
    let failed = lines
        .iter()
        .find(|l| l.starts_with("127.0.0.1 "))
        .expect(&out);
    assert_eq!(failed.split_whitespace().nth(1), Some("-"), "{out}");
    assert!(out.contains("2 of 3 host(s) answered"), "{out}");
    // The reason names the route: it was the gateway that could not connect.
    let why = format!("{}/127.0.0.1: ", fleet.ip(1));
    assert!(
        out.lines()
            .any(|l| l.starts_with(&why) && l.contains("refused")),
        "{out}"
    );
}

// See: #20 (facts through gateways at depth two, and through a gateway
// whose host key does not match: refused, each host behind it an error
// row naming it, exit 1)
#[test]
fn facts_through_two_gateways_and_past_a_gateway_with_a_wrong_key() {
    let fleet = SshdFleet::start(5);
    let d = Dir::new();
    let deep = d.write(
        "deep.yaml",
        &format!(
            "graph: deep\nresources:\n  noop:\n  - name: n\nremote: {}\nvia: [{}, {}]\n",
            fleet.url(3),
            fleet.url(1),
            fleet.url(2)
        ),
    );
    let past = d.write(
        "past.yaml",
        &format!(
            "graph: past\nresources:\n  noop:\n  - name: n\nremote: {}\nvia: [{}]\n",
            fleet.url(5),
            fleet.url(4)
        ),
    );
    // Gateway 4's known_hosts line names another key.
    crate::util::sshd::keygen(&d.path().join("other"));
    let other = std::fs::read_to_string(d.path().join("other.pub")).unwrap();
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    let gw4 = format!("[{}]:{} ", fleet.ip(4), fleet.port());
    let known: String = std::fs::read_to_string(&fleet.known_hosts)
        .unwrap()
        .lines()
        .map(|l| match l.starts_with(&gw4) {
            true => format!("{gw4}{}\n", other.join(" ")),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&fleet.known_hosts, known).unwrap();
    let mut c = facts_cmd(&fleet, &deep, &["--json", "--remote"]);
    c.arg(&past);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(180));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}\n{out}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{doc:#}");
    assert_eq!(hosts[0]["host"], fleet.ip(3), "{doc:#}");
    assert_eq!(
        hosts[0]["route"],
        format!("{}/{}/{}", fleet.ip(1), fleet.ip(2), fleet.ip(3)),
        "{doc:#}"
    );
    assert_local_facts(&hosts[0], &doc);
    assert_eq!(hosts[1]["host"], fleet.ip(5), "{doc:#}");
    assert!(hosts[1]["facts"].is_null(), "{doc:#}");
    let why = hosts[1]["error"].as_str().expect("a reason");
    assert!(why.starts_with(&format!("via {}: ", fleet.ip(4))), "{why}");
    assert!(why.contains("host key does not match"), "{why}");
    for g in [1, 2, 4] {
        assert!(!fleet.home(g).join(".ssh").exists(), "gateway {g}");
    }
    // Nothing ran past the refused gateway: no binary reached host 5.
    assert!(!fleet.home(5).join(".cache/mgmt/bin").exists());
}

// See: #20, #13 (a gateway's inventory could report facts for hosts
// outside its subtree): a compromised gateway reports forged facts for a
// direct host of the run; they are refused, and that host's row is its own
#[test]
fn a_gateway_cannot_report_facts_for_hosts_outside_its_subtree() {
    use crate::hostile_store::{direct_and_behind, plant_command};
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let victim = fleet.ip(2).to_string();
    let row = |host: &str, id: &str| {
        format!(
            r#"{{"v":1,"hosts":[{{"host":"{host}","route":"{host}","facts":{{"os":{{"id":"{id}"}}}},"error":null}}]}}"#
        )
    };
    // What the gateway runs instead of mgmt facts: a forged row for the
    // victim, and one for its own host.
    plant_command(
        &fleet,
        1,
        "facts",
        &format!(
            "printf '%s\\n' '{}' '{}'\n",
            row(&victim, "forged"),
            row("leaf", "planted")
        ),
    );
    plant_command(
        &fleet,
        2,
        "facts",
        "printf '%s\\n' '{\"os\":{\"id\":\"real\"}}'\n",
    );
    let (direct, behind) = direct_and_behind(&d, &fleet);
    let mut c = facts_cmd(
        &fleet,
        &direct,
        &["--json", "--remote-binary", "/bin/sh", "--remote"],
    );
    c.arg(&behind);
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(120));
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}\n{out}");
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{victim:?}, which is not behind it; refused"))),
        "{log}"
    );
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{doc:#}");
    assert_eq!(hosts[0]["host"], victim.as_str(), "{doc:#}");
    assert_eq!(hosts[0]["facts"]["os"]["id"], "real", "{doc:#}");
    assert_eq!(hosts[1]["host"], "leaf", "{doc:#}");
    assert_eq!(hosts[1]["facts"]["os"]["id"], "planted", "{doc:#}");
}

// See: #20 (an interrupted `mgmt facts` stops the gateway's part too and
// leaves nothing behind): a host behind the gateway accepts TCP and never
// speaks SSH; ^C while the gateway waits on it
#[test]
fn an_interrupt_stops_the_gateways_inventory_and_leaves_nothing() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stuck.local_addr().unwrap().port();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: [{}, ssh://root@127.0.0.1:{port}]\nvia: [{}]\n",
            fleet.url(2),
            fleet.url(1)
        ),
    );
    let mut p = Proc::spawn(&mut facts_cmd(
        &fleet,
        &g,
        &["--json", "--connect-timeout", "600"],
    ));
    p.wait_line(&format!("[{}/{}] done", fleet.ip(1), fleet.ip(2)), LIMIT);
    // The gateway has connected to the stuck host: it waits on it.
    let (_held, _) = stuck.accept().expect("the gateway connects");
    let home = fleet.home(1).display().to_string();
    let left = || {
        crate::remote_run::procs_with("facts --json --depth 1")
            .into_iter()
            .filter(|pid| crate::remote_run::cmdline(*pid).contains(&home))
            .collect::<Vec<_>>()
    };
    assert_eq!(left().len(), 1, "the gateway's mgmt facts runs");
    let runs = crate::remote_run::run_dirs(&fleet.home(1));
    assert_eq!(runs, 1, "the gateway's run directory");
    p.signal(nix::sys::signal::Signal::SIGINT);
    let code = p.wait(LIMIT);
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}\n{out}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let hosts = doc["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{doc:#}");
    assert_local_facts(&hosts[0], &doc);
    assert_eq!(hosts[1]["host"], "127.0.0.1", "{doc:#}");
    assert!(hosts[1]["error"].as_str().is_some(), "{doc:#}");
    // Nothing left on the gateway: no process, no per-run files.
    assert!(
        crate::util::eventually(Duration::from_secs(30), || left().is_empty()),
        "{:?}",
        left()
    );
    assert!(crate::remote_run::run_files_go(&fleet.home(1)));
}

// See: #20, #13 (keys learned behind gateways kept): under accept-new, the
// key of a host behind the gateway, unknown here, is learned by the
// gateway and recorded in this machine's known_hosts, as a run does
#[test]
fn a_key_learned_behind_a_gateway_by_facts_reaches_the_initiators_known_hosts() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let leaf_line = fleet.forget_host_key(2);
    let without = std::fs::read_to_string(&fleet.known_hosts).unwrap();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\nvia: [{}]\n",
            fleet.url(2),
            fleet.url(1)
        ),
    );
    let mut p = Proc::spawn(&mut facts_cmd(
        &fleet,
        &g,
        &["--json", "--host-key-check", "accept-new"],
    ));
    let code = p.wait(LIMIT);
    let out = p.stdout_rest();
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}\n{out}");
    assert!(log.contains("recorded the host key of"), "{log}");
    fleet.assert_learned_again(2, &leaf_line, &without);
}

/// A host whose only nameserver takes every query and never answers: a
/// socket on a loopback address of its own, named by a resolv.conf whose
/// own timeout (a minute, no retry) is well past the tests' waits.
struct DeafResolver {
    socket: std::net::UdpSocket,
    conf: std::path::PathBuf,
    /// A host name that no /etc/hosts knows.
    name: String,
}

impl DeafResolver {
    fn new(d: &Dir) -> DeafResolver {
        let ip = format!("127.{}.{}.53", rand::random::<u8>(), rand::random::<u8>());
        let socket = std::net::UdpSocket::bind((ip.as_str(), 53)).expect("bind port 53");
        let conf = d.write(
            "resolv.conf",
            &format!("nameserver {ip}\noptions timeout:60 attempts:1\n"),
        );
        let name = format!("nodns-{:08x}", rand::random::<u32>());
        DeafResolver { socket, conf, name }
    }

    /// Runs `bin args` in mount and UTS namespaces of its own, with this
    /// host name and this resolv.conf.
    fn run(&self, bin: &std::path::Path, args: &str) -> crate::util::Output {
        let script = format!(
            "hostname {name} && mount --bind {conf} /etc/resolv.conf && exec {bin} {args}",
            name = self.name,
            conf = self.conf.display(),
            bin = bin.display()
        );
        crate::util::run(
            std::process::Command::new("unshare")
                .args(["--mount", "--uts", "sh", "-c", &script])
                .env_remove("RUST_LOG"),
            Duration::from_secs(30),
        )
    }

    /// Whether a query reached the resolver (and so was left unanswered).
    fn was_asked(&self) -> bool {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 512];
        let query = self.socket.recv_from(&mut buf).map(|(n, _)| n);
        query.is_ok_and(|n| n > 12)
    }
}

const DEAF_WARNING: &str = "the resolver did not give the canonical name";

// See: #15 (facts are read locally; a fact that cannot be read is left
// empty, never an error): on a host whose resolver takes every query and
// never answers, the facts come without waiting for the resolver's own
// timeout, `fqdn` is the host name, and a warning says why.
#[test]
fn a_resolver_that_never_answers_does_not_hold_the_facts() {
    let d = Dir::new();
    let deaf = DeafResolver::new(&d);
    let out = deaf.run(&crate::util::shipped(), "facts --json");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let facts: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(facts["hostname"], deaf.name.as_str(), "{facts:#}");
    assert_eq!(facts["fqdn"], deaf.name.as_str(), "{facts:#}");
    assert!(
        out.stderr.contains(DEAF_WARNING) && out.stderr.contains("facts.fqdn is the host name"),
        "{}",
        out.stderr
    );
    assert!(deaf.was_asked(), "no query reached the resolver");
}

// See: #15 (facts gathered once when the child starts): a graph with
// `when:` run under `--where` reads its facts three times (the two
// conditions and the template) from one gathering, so a host whose
// resolver never answers waits for it once and is warned once.
#[test]
fn when_where_and_templates_share_one_gathering_of_the_facts() {
    let d = Dir::new();
    let deaf = DeafResolver::new(&d);
    let out_file = d.p("fqdn.txt");
    let graph = d.write(
        "g.yaml",
        &format!(
            "graph: g\nwhen: facts.fqdn == facts.hostname\nresources:\n  file:\n  - name: {out_file}\n    content: \"{{{{ facts.fqdn }}}}\"\n"
        ),
    );
    let args = format!(
        "run --file {} --hostname h --converged-timeout 1 --where 'facts.cpus > 0'",
        graph.display()
    );
    let out = deaf.run(std::path::Path::new(env!("CARGO_BIN_EXE_mgmt")), &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap_or_default(),
        deaf.name,
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches(DEAF_WARNING).count(),
        1,
        "one gathering, one warning:\n{}",
        out.stderr
    );
    assert!(deaf.was_asked(), "no query reached the resolver");
}
