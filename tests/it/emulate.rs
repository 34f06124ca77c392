//! `mgmt emulate` driven by the real initiator: hosts served in one process
//! converge through real SSH and the real tunnel, their files land under
//! each host's root, and the emulator's counters agree with the
//! initiator's summary. The emulator also refuses what it must: unknown
//! keys and any command `mgmt` does not send (checked with OpenSSH's own
//! client), and with `--shared-listener` any connection from another
//! machine (one on a LAN of namespaces, even dialling a host's address).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use sha2::Digest;

use crate::util::netns::NsLan;
use crate::util::{eventually, mgmt, Dir, Proc};

/// One emulator process, killed by pid when dropped.
pub(crate) struct Emu {
    pub(crate) proc: Proc,
    d: Dir,
    first: [u8; 3],
    port: u16,
}

impl Emu {
    /// `n` hosts on a random block of 127.0.0.0/8 and a random port.
    pub(crate) fn start(n: usize, shared_listener: bool) -> Emu {
        Self::start_in(n, shared_listener, |c| c)
    }

    /// The same, its command passed through `wrap` first (to run it in a
    /// namespace).
    fn start_in(n: usize, shared_listener: bool, wrap: impl Fn(Command) -> Command) -> Emu {
        let d = Dir::new();
        keygen(&d.path().join("key"));
        keygen(&d.path().join("stranger"));
        for _ in 0..5 {
            let mut rng = rand::rng();
            let first = [
                rng.random_range(100..=250u8),
                rng.random_range(0..=255u8),
                0,
            ];
            let port: u16 = rng.random_range(20000..=60999);
            let mut c = mgmt();
            c.arg("emulate")
                .arg(format!("--hosts={n}"))
                .arg(format!("--first-address=127.{}.{}.1", first[0], first[1]))
                .arg(format!("--port={port}"))
                .arg("--root")
                .arg(d.path().join("root"))
                .arg("--authorized-keys")
                .arg(d.path().join("key.pub"))
                .arg("--known-hosts-out")
                .arg(d.path().join("known_hosts"))
                .arg("--hosts-out")
                .arg(d.path().join("hosts"))
                .arg("--stats")
                .arg(d.path().join("stats.json"));
            if shared_listener {
                c.arg("--shared-listener");
            }
            let mut proc = Proc::spawn(&mut wrap(c));
            let ready = eventually(Duration::from_secs(60), || {
                d.path().join("known_hosts").exists()
                    || proc
                        .lines_so_far()
                        .iter()
                        .any(|l| l.contains("cannot listen"))
            });
            if ready && d.path().join("known_hosts").exists() {
                return Emu {
                    proc,
                    d,
                    first,
                    port,
                };
            }
            let _ = proc.wait(Duration::from_secs(10));
        }
        panic!("the emulator could not listen on 5 random address blocks");
    }

    pub(crate) fn addr(&self, i: usize) -> String {
        // Host i is the (i+1)th address from .1 on.
        let n = i + 1;
        format!(
            "127.{}.{}.{}",
            self.first[0],
            self.first[1] as usize + n / 256,
            n % 256
        )
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("ssh://root@{}:{}", self.addr(i), self.port)
    }

    pub(crate) fn home(&self, i: usize) -> PathBuf {
        self.root(i).join("home")
    }

    pub(crate) fn root(&self, i: usize) -> PathBuf {
        self.d.path().join("root").join(self.addr(i))
    }

    pub(crate) fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.d.path().join("stats.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    pub(crate) fn run(&self, files: &[PathBuf], key: &str) -> Command {
        let mut c = mgmt();
        c.env_remove("SSH_AUTH_SOCK").arg("run");
        for f in files {
            c.arg("--remote").arg(f);
        }
        c.arg("--identity")
            .arg(self.d.path().join(key))
            .arg("--known-hosts")
            .arg(self.d.path().join("known_hosts"));
        c
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
}

/// Puts the test binary in host `i`'s cache, as a previous run would have.
pub(crate) fn seed_cache(emu: &Emu, i: usize, sha: &str) {
    let dir = emu.home(i).join(".cache/mgmt/bin").join(sha);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::hard_link(env!("CARGO_BIN_EXE_mgmt"), dir.join("mgmt")).unwrap();
}

/// Host `i` is `h<i>`: it writes two files, exports one value and collects
/// the values of its decade (`h12?` for h120..h129).
fn graph(emu: &Emu, d: &Dir, i: usize) -> PathBuf {
    graph_via(emu, d, i, "")
}

/// [`graph`], with a `via:` line (or none).
fn graph_via(emu: &Emu, d: &Dir, i: usize, via: &str) -> PathBuf {
    let name = format!("h{i:03}");
    d.write(
        &format!("{name}.yaml"),
        &format!(
            "graph: {name}\nhostname: {name}\nresources:\n  file:\n  - name: a\n    path: /tmp/a\n    content: \"a of {name}\\n\"\n  - name: b\n    path: /tmp/b\n    content: \"b of {name}\\n\"\n  - name: \"@@v-{name}\"\n    path: /tmp/v-{name}\n    content: \"value of {name}\\n\"\ncollect:\n- kind: file\n  hostname: \"h{decade:02}?\"\n  pattern: /tmp/\nremote: {url}\n{via}",
            decade = i / 10,
            url = emu.url(i)
        ),
    )
}

/// The collected values (`v-*` files) in a host's `tmp`, sorted.
fn values(tmp: &Path) -> Vec<String> {
    let mut got: Vec<String> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("v-"))
        .collect();
    got.sort();
    got
}

/// The exact byte count in the summary's `wire sent: ... (N B) from here`.
fn wire_sent(log: &[String]) -> u64 {
    let line = log
        .iter()
        .find(|l| l.contains("wire sent:"))
        .expect("a wire sent line");
    let inner = line.rsplit_once('(').unwrap().1;
    inner.split(' ').next().unwrap().parse().unwrap()
}

/// An SSH Disconnect message as the initiator sends it, framing and MAC.
const DISCONNECT_PACKET: u64 = 52;

// See: #6 (tests: 200 emulated hosts through a real `mgmt run --remote` to
// convergence, every host's files checked; counters match the initiator)
#[test]
fn two_hundred_emulated_hosts_converge_with_their_own_files() {
    const N: usize = 200;
    let emu = Emu::start(N, false);
    let d = Dir::new();
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    // Hosts 0 and 1 start cold (the binary is copied); the others have it
    // cached already, which keeps the test's copying small.
    for i in 2..N {
        seed_cache(&emu, i, &sha);
    }
    let files: Vec<PathBuf> = (0..N).map(|i| graph(&emu, &d, i)).collect();
    let mut c = emu.run(&files, "key");
    c.arg("--converged-timeout=2");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(600));
    let log = p.lines_so_far();
    assert_eq!(code, 0, "log:\n{}", log.join("\n"));
    assert!(log
        .iter()
        .any(|l| l.contains(&format!("{N} converged, 0 failed"))));
    assert!(log.iter().any(|l| l.contains("binary sent: 2 copies")));
    for i in 0..N {
        let name = format!("h{i:03}");
        let tmp = emu.root(i).join("tmp");
        let read = |f: &str| std::fs::read_to_string(tmp.join(f)).unwrap_or_default();
        assert_eq!(read("a"), format!("a of {name}\n"));
        assert_eq!(read("b"), format!("b of {name}\n"));
        let got = values(&tmp);
        let want: Vec<String> = (i / 10 * 10..i / 10 * 10 + 10)
            .map(|j| format!("v-h{j:03}"))
            .collect();
        assert_eq!(got, want, "{name} collects exactly its decade");
        assert_eq!(read(&format!("v-{name}")), format!("value of {name}\n"));
    }
    // The counters agree with the initiator: one connection and one child
    // per host, and every byte it wrote arrived, except that a host may
    // drop the connection as the initiator's last packet (its Disconnect,
    // 52 bytes here) is on the way: seen once in a full test run.
    let wire = wire_sent(&log);
    let last_packets = N as u64 * DISCONNECT_PACKET;
    let settled = eventually(Duration::from_secs(10), || {
        let t = &emu.stats()["totals"];
        let got = t["bytes_in"].as_u64().unwrap_or(0);
        got <= wire && wire - got <= last_packets && t["children_running"].as_u64() == Some(0)
    });
    let s = emu.stats();
    assert!(
        settled,
        "wire sent {wire}, emulator counters: {}",
        s["totals"]
    );
    let t = &s["totals"];
    assert_eq!(t["connections"].as_u64(), Some(N as u64));
    assert_eq!(t["children_started"].as_u64(), Some(N as u64));
    assert_eq!(t["auth_refused"].as_u64(), Some(0));
    // SFTP is open for the two cold hosts' copies only: every child starts
    // warm, in one exec (#17), the copied ones too, with its graph in
    // memory, so there is no run directory and no clean-up session.
    assert_eq!(t["sftp_sessions"].as_u64(), Some(2));
    for i in 0..N {
        assert_eq!(s["per_host"][emu.addr(i)]["connections"].as_u64(), Some(1));
    }
    // No run files on any host (none was made); only the cache stays.
    for i in 0..N {
        let run = emu.home(i).join(".cache/mgmt/run");
        let left = std::fs::read_dir(&run).map(|r| r.count()).unwrap_or(0);
        assert_eq!(left, 0, "host {i} has per-run files left");
    }
}

fn ssh(emu: &Emu, key: &str, command: &str) -> std::process::Output {
    Command::new("ssh")
        .arg("-i")
        .arg(emu.d.path().join(key))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            emu.d.path().join("known_hosts").display()
        ))
        .arg("-p")
        .arg(emu.port.to_string())
        .arg(format!("root@{}", emu.addr(0)))
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh")
}

// See: #6 (tests: the emulator rejects unknown keys and refuses arbitrary
// commands)
#[test]
fn the_emulator_refuses_unknown_keys_and_other_commands() {
    // One shared socket for every host: the mode 10,000 hosts need.
    let mut emu = Emu::start(1, true);
    // OpenSSH's client, with the host key the emulator wrote: an arbitrary
    // command is refused, clearly; what mgmt sends is answered.
    let out = ssh(&emu, "key", "ls /");
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs only the commands mgmt sends"), "{err}");
    let out = ssh(&emu, "key", "id -u");
    assert!(out.status.success(), "{out:?}");
    // An unknown key is refused by ssh and by mgmt.
    let out = ssh(&emu, "stranger", "id -u");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            emu.url(0)
        ),
    );
    let mut p = Proc::spawn(&mut emu.run(&[g], "stranger"));
    assert_eq!(p.wait(Duration::from_secs(60)), 1);
    let log = p.lines_so_far().join("\n");
    assert!(log.contains("1 failed"), "{log}");
    assert!(eventually(Duration::from_secs(5), || {
        emu.stats()["totals"]["auth_refused"].as_u64() >= Some(2)
    }));
    // Nothing was launched, and the emulator stops cleanly on SIGTERM.
    assert_eq!(emu.stats()["totals"]["children_started"].as_u64(), Some(0));
    emu.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(emu.proc.wait(Duration::from_secs(20)), 0);
}

// See: #6 (through gateways: emulated gateways run the real `mgmt run
// --remote` child in-process and reach their hosts with the forwarded agent)
#[test]
fn twenty_emulated_hosts_converge_behind_two_emulated_gateways() {
    const N: usize = 20;
    let emu = Emu::start(N + 2, true);
    let d = Dir::new();
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..N + 2 {
        seed_cache(&emu, i, &sha);
    }
    let files: Vec<PathBuf> = (0..N)
        .map(|i| {
            let gw = emu.url(N + i % 2);
            graph_via(&emu, &d, i, &format!("via: [{gw}]\n"))
        })
        .collect();
    let mut c = emu.run(&files, "key");
    c.arg("--converged-timeout=2");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    let log = p.lines_so_far();
    assert_eq!(code, 0, "log:\n{}", log.join("\n"));
    assert!(log
        .iter()
        .any(|l| l.contains(&format!("{N} converged, 0 failed"))));
    for i in 0..N {
        let tmp = emu.root(i).join("tmp");
        let got = values(&tmp).len();
        assert_eq!(got, 10, "host {i} collects its decade across both gateways");
    }
    // Each gateway ran one child, each host one, all ended; no key file
    // exists on a gateway (the agent was forwarded).
    let settled = eventually(Duration::from_secs(10), || {
        emu.stats()["totals"]["children_running"].as_u64() == Some(0)
    });
    assert!(settled);
    let s = emu.stats();
    assert_eq!(s["totals"]["children_started"].as_u64(), Some(N as u64 + 2));
    for g in [N, N + 1] {
        assert_eq!(
            s["per_host"][emu.addr(g)]["children_started"].as_u64(),
            Some(1)
        );
        assert!(!emu.home(g).join(".ssh").exists());
    }
}

// See: #19 (README: `--hosts-out` is one `ssh://USER@ADDR:PORT` per host;
// the emulator stops on SIGTERM, stopping its children first)
#[test]
fn the_emulator_lists_its_hosts_and_stops_on_sigterm_with_its_children() {
    let mut emu = Emu::start(3, false);
    let listed = std::fs::read_to_string(emu.d.path().join("hosts")).expect("--hosts-out");
    let want: Vec<String> = (0..3).map(|i| emu.url(i)).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), want, "{listed}");
    // A run that stays up, so each host has a child (a task of the
    // emulator's) running.
    let d = Dir::new();
    let files: Vec<PathBuf> = (0..3).map(|i| graph(&emu, &d, i)).collect();
    let mut run = Proc::spawn(emu.run(&files, "key").args(["--converged-timeout", "-1"]));
    let running: Vec<String> = (0..3).map(|i| format!("[h{i:03}] running")).collect();
    let running: Vec<&str> = running.iter().map(String::as_str).collect();
    run.wait_all(&running, Duration::from_secs(120));
    let totals = |emu: &Emu, k: &str| emu.stats()["totals"][k].as_u64().unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(30), || totals(&emu, "children_running")
            == 3),
        "{}",
        emu.stats()
    );
    emu.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let code = emu.proc.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", emu.proc.lines_so_far().join("\n"));
    // Its last counters, written after the children stopped: none left.
    assert_eq!(totals(&emu, "children_running"), 0, "{}", emu.stats());
    // The run sees every host's child stopped cleanly (as by a signal on
    // the host), and ends.
    let code = run.wait(Duration::from_secs(60));
    let log = run.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("0 converged, 0 failed, 3 stopped"), "{log}");
}

/// What a TCP client gets from `ip:port` within 10 s: `connected` and the
/// first bytes the server sends (`b''` for a close), or why not.
fn first_bytes(wrap: impl Fn(&Command) -> Command, ip: &str, port: u16) -> String {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n\
             print('connected')\n\
             try:\n    print(repr(s.recv(64)))\n\
             except OSError as e:\n    print('error', e)\n",
        )
        .arg(ip)
        .arg(port.to_string());
    let out = wrap(&c).output().expect("run python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// See: #19 (README: `--shared-listener` is one socket on 0.0.0.0:PORT, and
// connections from outside loopback are refused)
#[test]
fn the_shared_listener_serves_loopback_and_refuses_the_lan() {
    let lan = NsLan::start(1);
    let mut emu = Emu::start_in(1, true, |c| lan.in_laptop(&c));
    // The same client, from the emulator's own loopback: a banner.
    let local = first_bytes(|c| lan.in_laptop(c), &emu.addr(0), emu.port);
    assert!(local.starts_with("connected\nb'SSH-2.0-"), "{local}");
    // From another machine on the LAN, to the socket's address there: the
    // connection is accepted by the kernel and closed unanswered.
    let remote = first_bytes(|c| lan.in_host(1, c), &lan.laptop_ip(), emu.port);
    assert_eq!(remote.trim(), "connected\nb''", "{remote}");
    // Even dialled at an emulated host's own address: the LAN host routes
    // 127.<a>.<b>.0/24 to the laptop and both sides accept such addresses
    // on the wire (route_localnet), as a misconfigured neighbour could.
    // Only the peer check stands in the way.
    let block = emu.addr(0).rsplit_once('.').expect("dotted").0.to_owned();
    let setup = |c: &Command| {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!(
                "set -e; sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1; \
                 ip route del local 127.0.0.0/8 dev lo table local; \
                 ip route add {block}.0/24 via {} dev eth0; exec \"$0\" \"$@\"",
                lan.laptop_ip()
            ))
            .arg(c.get_program())
            .args(c.get_args());
        lan.in_host(1, &sh)
    };
    ns_sysctl(&lan, "net.ipv4.conf.all.route_localnet=1");
    ns_sysctl(&lan, "net.ipv4.conf.br0.route_localnet=1");
    let dialled = first_bytes(setup, &emu.addr(0), emu.port);
    assert_eq!(dialled.trim(), "connected\nb''", "{dialled}");
    let refused = format!("refused a connection from {}:", lan.ip(1));
    assert!(
        eventually(Duration::from_secs(10), || emu
            .proc
            .lines_so_far()
            .iter()
            .any(|l| l.contains(&refused))),
        "{}",
        emu.proc.lines_so_far().join("\n")
    );
    emu.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(emu.proc.wait(Duration::from_secs(60)), 0);
}

/// `sysctl -w SETTING` in the laptop's network namespace.
fn ns_sysctl(lan: &NsLan, setting: &str) {
    let mut c = Command::new("sysctl");
    c.args(["-qw", setting]);
    let ok = lan.in_laptop(&c).status().expect("sysctl");
    assert!(ok.success(), "sysctl -w {setting}");
}
