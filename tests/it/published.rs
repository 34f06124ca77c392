//! Facts in the store (#20 item 2): every host publishes its facts and
//! graph name under its own key, and templates find other hosts by what
//! they are with `hosts(WHERE)`. Three `mgmt emulate` hosts, each with its
//! own file root: the one whose graph is `db-master` is found by the other
//! two, and its name and address reach their files; the same on three
//! hosts in network namespaces of their own, where each address differs;
//! and a db-master whose process dies is dropped from the others' files
//! once its lease expires.

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest;

use crate::emulate::{seed_cache, Emu};
use crate::util::netns::NsLan;
use crate::util::{Dir, Proc};

const DB: &str = r#"graph: db-master
hostname: h0
resources:
  file:
  - name: me
    path: /tmp/me
    content: "{{ facts.default_ipv4 }}"
remote: URL
"#;

const WEB: &str = r#"graph: web
hostname: NAME
resources:
  file:
  - name: db
    path: /tmp/db
    content: "{{ hosts('graph == \"db-master\"') | map(attribute='name') | join(',') }} at {{ hosts('graph == \"db-master\"') | map(attribute='facts') | map(attribute='default_ipv4') | join(',') }}"
remote: URL
"#;

// See: #20 (tests: hosts(where) finds the one host of a role among three
// isolated hosts and its address reaches the others' files)
#[test]
fn hosts_where_finds_the_db_master_and_its_address_reaches_the_others() {
    let emu = Emu::start(3, false);
    let d = Dir::new();
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..3 {
        seed_cache(&emu, i, &sha);
    }
    let mut files: Vec<PathBuf> = vec![d.write("db.yaml", &DB.replace("URL", &emu.url(0)))];
    for i in 1..3 {
        let text = WEB
            .replace("NAME", &format!("h{i}"))
            .replace("URL", &emu.url(i));
        files.push(d.write(&format!("web{i}.yaml"), &text));
    }
    let mut c = emu.run(&files, "key");
    c.arg("--converged-timeout=2");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    let me = std::fs::read_to_string(emu.root(0).join("tmp/me")).unwrap();
    for i in 1..3 {
        let got = std::fs::read_to_string(emu.root(i).join("tmp/db")).unwrap();
        assert_eq!(got, format!("h0 at {me}"), "host h{i}: {log}");
    }
    assert!(!emu.root(0).join("tmp/db").exists());
}

/// `cat PATH` on host `i` of the LAN (its own mount namespace).
fn read_on(lan: &NsLan, i: usize, path: &str) -> Option<String> {
    let mut c = std::process::Command::new("cat");
    c.arg(path);
    let out = lan.in_host(i, &c).output().expect("run cat");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// See: #20 (tests: hosts(where) finds the one host of a role among three
// isolated hosts and its address reaches the others' files): the same on
// hosts that are separate machines as far as the graph can tell, each in
// network and mount namespaces of its own with its own address, so the
// address that arrives can only be the db-master's.
#[test]
fn hosts_where_on_three_isolated_hosts_carries_the_db_masters_own_address() {
    let mut lan = NsLan::start(3);
    let d = Dir::new();
    let db = d.write(
        "db.yaml",
        &DB.replace("hostname: h0\n", "").replace("URL", &lan.url(1)),
    );
    let web = d.write(
        "web.yaml",
        &WEB.replace("hostname: NAME\n", "").replace(
            "remote: URL",
            &format!("remote: [{}, {}]", lan.url(2), lan.url(3)),
        ),
    );
    let mut c = crate::util::mgmt();
    c.env_remove("SSH_AUTH_SOCK")
        .args(["run", "--converged-timeout", "2", "--remote"])
        .arg(&db)
        .arg("--remote")
        .arg(&web)
        .arg("--identity")
        .arg(&lan.client_key)
        .arg("--known-hosts")
        .arg(&lan.known_hosts)
        .args(crate::util::shipped_args());
    let mut p = Proc::spawn(&mut lan.in_laptop(&c));
    let code = p.wait(Duration::from_secs(300));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    let master = lan.ip(1).to_owned();
    assert_eq!(
        read_on(&lan, 1, "/tmp/me").as_deref(),
        Some(master.as_str())
    );
    for i in 2..=3 {
        assert_eq!(
            read_on(&lan, i, "/tmp/db"),
            Some(format!("{master} at {master}")),
            "host {}: {log}",
            lan.ip(i)
        );
        assert_eq!(read_on(&lan, i, "/tmp/me"), None, "host {}", lan.ip(i));
    }
    assert_eq!(read_on(&lan, 1, "/tmp/db"), None);
    let left = lan.stop();
    assert!(left.iter().all(|l| l.is_empty()), "{left:?}");
}

/// The graphs of a db-master (`dbhost`, on host 1) and a web host
/// (`webhost`, on host 2) whose file `seen` lists the db-masters' names.
fn master_and_web(fleet: &crate::util::sshd::SshdFleet, d: &Dir, seen: &str) -> (PathBuf, PathBuf) {
    let db = d.write(
        "db.yaml",
        &format!(
            "graph: db-master\nhostname: dbhost\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let web = d.write(
        "web.yaml",
        &format!(
            "graph: web\nhostname: webhost\nresources:\n  file:\n  - name: {seen}\n    content: \"[{{{{ hosts('graph == \\\"db-master\\\"') | map(attribute='name') | join(',') }}}}]\"\nremote: {}\n",
            fleet.url(2)
        ),
    );
    (db, web)
}

/// A run of [`master_and_web`] with `extra` that stops only when told,
/// once the web host's file names the db-master.
fn master_seen_by_web(
    fleet: &crate::util::sshd::SshdFleet,
    d: &Dir,
    seen: &str,
    extra: &[&str],
) -> Proc {
    let (db, web) = master_and_web(fleet, d, seen);
    let args = [&["--converged-timeout", "-1"][..], extra].concat();
    let mut p = Proc::spawn(&mut crate::remote_run::remote_cmd(
        fleet,
        &[&db, &web],
        &args,
    ));
    let read = || std::fs::read_to_string(seen).unwrap_or_default();
    assert!(
        crate::util::eventually(Duration::from_secs(120), || read() == "[dbhost]"),
        "{:?}: {}",
        read(),
        p.lines_so_far().join("\n")
    );
    p
}

// See: #20 (item 2: the graph re-renders when a matching host appears or
// goes): the db-master's child is killed on its host; its record hangs on
// a lease only that process kept alive, so it goes when the lease expires,
// and the web host's file loses the name.
#[test]
fn a_db_master_that_goes_is_dropped_from_the_others_files() {
    use crate::util::sshd::SshdFleet;
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let seen = d.p("seen");
    let mut p = master_seen_by_web(&fleet, &d, &seen, &[]);
    let read = || std::fs::read_to_string(&seen).unwrap_or_default();
    let mut victim = None;
    assert!(
        crate::util::eventually(Duration::from_secs(60), || {
            // The child runs as its host's identity, `hostname:`.
            victim = crate::remote_run::mgmt_children("dbhost").first().copied();
            victim.is_some()
        }),
        "no child on the db-master's host"
    );
    let victim = victim.unwrap_or_default();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the db-master's child");
    // The lease's TTL (30 s) bounds how long the record outlives it.
    assert!(
        crate::util::eventually(Duration::from_secs(120), || read() == "[]"),
        "{:?}: {}",
        read(),
        p.lines_so_far().join("\n")
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    let code = p.wait(Duration::from_secs(120));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "the db-master's host failed: {log}");
}

// See: #20 (the graph re-renders when a matching host goes; not when it
// stops with the whole run, which would rewrite the others' files during
// the stop): the web host's child is frozen while ^C stops the db-master.
// The db-master's record stays in the store (left to lapse with its
// lease, not revoked), and once the web host resumes and stops, its file
// still names the db-master.
#[test]
fn a_db_master_stopping_with_the_run_stays_in_the_others_files() {
    use crate::remote_run::mgmt_children;
    use nix::sys::signal::Signal;
    let fleet = crate::util::sshd::SshdFleet::start(2);
    let d = Dir::new();
    let seen = d.p("seen");
    let listener = crate::util::listener_args();
    let listener: Vec<&str> = listener.iter().map(String::as_str).collect();
    let mut p = master_seen_by_web(&fleet, &d, &seen, &listener);
    let url = p.store_url(Duration::from_secs(60));
    let read = || std::fs::read_to_string(&seen).unwrap_or_default();
    let child = |host: &str| mgmt_children(host).first().copied().expect("a child");
    let (master, webhost) = (child("dbhost"), child("webhost"));
    let frozen = crate::util::Frozen::new(webhost);
    p.signal(Signal::SIGINT);
    assert!(
        crate::util::eventually(Duration::from_secs(60), || crate::util::gone(master)),
        "the db-master's child did not stop"
    );
    let facts: Vec<String> = crate::util::store_kvs(&url, "/_mgmt/facts/")
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    drop(frozen); // the web host's child resumes
    assert!(
        facts.contains(&"/_mgmt/facts/dbhost".to_owned()),
        "the db-master's record went with its stop: {facts:?}\n{}",
        p.lines_so_far().join("\n")
    );
    let code = p.wait(Duration::from_secs(120));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    assert_eq!(read(), "[dbhost]", "{log}");
}

// See: #20 (hosts(where) behind gateways): the db-master and one web host
// sit behind a gateway, the other web host is reached directly; the
// db-master's record, written through the gateway's tunnel, is found by
// both, and the web host behind the gateway reads it through that tunnel.
#[test]
fn hosts_where_finds_a_db_master_behind_a_gateway() {
    let emu = Emu::start(4, true);
    let d = Dir::new();
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..4 {
        seed_cache(&emu, i, &sha);
    }
    let via = format!("via: [{}]\n", emu.url(3));
    let db = DB.replace("URL", &emu.url(0)) + &via;
    let mut files: Vec<PathBuf> = vec![d.write("db.yaml", &db)];
    for i in 1..3 {
        let mut text = WEB
            .replace("NAME", &format!("h{i}"))
            .replace("URL", &emu.url(i));
        if i == 1 {
            text.push_str(&via);
        }
        files.push(d.write(&format!("web{i}.yaml"), &text));
    }
    let mut c = emu.run(&files, "key");
    c.arg("--converged-timeout=2");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("3 converged, 0 failed, 0 stopped (3 hosts, 1 gateway)"),
        "{log}"
    );
    let me = std::fs::read_to_string(emu.root(0).join("tmp/me")).unwrap();
    assert!(!me.is_empty(), "{log}");
    for i in 1..3 {
        let got = std::fs::read_to_string(emu.root(i).join("tmp/db")).unwrap();
        assert_eq!(got, format!("h0 at {me}"), "host h{i}: {log}");
    }
    assert!(!emu.root(0).join("tmp/db").exists());
    assert!(!emu.root(3).join("tmp/db").exists());
}
