//! The real Go `etcdctl` 3.4 against both servers (issue #14): one script
//! of commands (put/get/del/txn/watch/lease/compaction/defrag/endpoint
//! health, status and hashkv/alarm list and disarm/member list) runs against
//! our store and against a real etcd, each fresh, and every command must
//! print the same thing once what legitimately differs is replaced by a
//! name: endpoints, member, cluster and lease ids, hashes, durations, the
//! patch version and the database size. Endpoints are given as URLs
//! (`http://…`), which is what broke `endpoint status`, `hashkv`, `defrag`
//! and `move-leader` before `store/authority.rs`.
//!
//! etcdctl comes from Debian's `etcd-client` (scripts/deps.sh installs it);
//! without it this test fails and says what to install. Every etcdctl is a
//! child killed when dropped; the watch is read until the events it must
//! print have arrived, never for a time.

use std::process::Stdio;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{client, guard, Ours};
use crate::util::etcd::Etcd;

/// Hang guard for one etcdctl command.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// One server under test, and the values that differ between servers.
pub(super) struct Target {
    ep: String,
    /// (text as printed, placeholder), replaced in every output.
    names: Vec<(String, String)>,
}

impl Target {
    pub(super) async fn new(ep: &str) -> Target {
        let mut c = client(ep).await;
        let s = c.status().await.expect("status");
        let h = s.header().expect("header");
        let mut t = Target {
            ep: ep.to_string(),
            names: Vec::new(),
        };
        t.name(ep, "EP");
        t.name(ep.trim_start_matches("http://"), "ADDR");
        t.name(&format!("{:x}", h.member_id()), "MEMBER");
        t.name(&h.member_id().to_string(), "MEMBER");
        t.name(&h.cluster_id().to_string(), "CLUSTER");
        t.name(&format!("{:x}", h.cluster_id()), "CLUSTER");
        t.name(s.version(), "VERSION");
        t
    }

    fn name(&mut self, text: &str, as_: &str) {
        self.names.push((text.to_string(), as_.to_string()));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let etcdctl = which_etcdctl();
        let mut c = Command::new(etcdctl);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.ep))
            .args(["--dial-timeout=5s", "--command-timeout=20s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs etcdctl with `args` (and `stdin`), returns what it printed,
    /// normalised.
    pub(super) async fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = self.cmd(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("run etcdctl");
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(text.as_bytes()).await.expect("etcdctl stdin");
        }
        let out = tokio::time::timeout(CMD_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {args:?} finished in time"))
            .expect("etcdctl output");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        // grpc-go's retry warnings are JSON log lines with timestamps; the
        // error etcdctl itself prints ("Error: …") stays.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if !line.starts_with("{\"level\"") {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(&format!("[exit {}]", out.status.code().unwrap_or(-1)));
        self.normalise(&text)
    }

    fn normalise(&self, text: &str) -> String {
        let mut t = text.to_string();
        for (from, to) in &self.names {
            t = t.replace(from.as_str(), to);
        }
        t.lines().map(normalise_line).collect::<Vec<_>>().join("\n")
    }
}

/// Per-line values: durations, database sizes and hashes.
fn normalise_line(line: &str) -> String {
    if let Some(i) = line.find("took = ") {
        return format!("{}took = T", &line[..i]);
    }
    // `endpoint status`: EP, MEMBER, VERSION, 20 kB, true, false, 2, 9, 9,
    let fields: Vec<&str> = line.split(", ").collect();
    if fields.len() >= 9 && fields[0] == "EP" {
        let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        f[3] = "SIZE".into();
        return f.join(", ");
    }
    // `endpoint hashkv`: EP, 1234567
    if fields.len() == 2 && fields[0] == "EP" && fields[1].parse::<u32>().is_ok() {
        return "EP, HASH".into();
    }
    // `member list`: MEMBER, started, NAME, PEER URLS, CLIENT URLS, false.
    // The name and peer URLs are etcd's flags (ours has no peers).
    if fields.len() == 6 && fields[0] == "MEMBER" {
        return format!(
            "MEMBER, {}, NAME, PEERS, {}, {}",
            fields[1], fields[4], fields[5]
        );
    }
    line.to_string()
}

pub(super) fn which_etcdctl() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcdctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcdctl is not installed (no `etcdctl` on PATH): install Debian's etcd-client \
                 (`apt-get install -y etcd-client`, or run scripts/deps.sh as root), then rerun"
            )
        })
}

/// The script: each step's name and normalised output, in order.
async fn session(t: &mut Target) -> Vec<(String, String)> {
    let mut out = Vec::new();
    macro_rules! step {
        ($name:expr, $args:expr) => {
            step!($name, $args, None)
        };
        ($name:expr, $args:expr, $stdin:expr) => {{
            let got = t.run(&$args, $stdin).await;
            out.push(($name.to_string(), got.clone()));
            got
        }};
    }
    step!("put", ["put", "foo", "bar"]);
    step!("get", ["get", "foo"]);
    step!("get json", ["get", "foo", "-w", "json"]);
    let txn = "value(\"foo\") = \"bar\"\n\nput foo baz\n\nput foo nope\n\n";
    step!("txn", ["txn"], Some(txn));
    step!("get after txn", ["get", "foo", "--print-value-only"]);
    step!("del", ["del", "foo"]);
    step!("del missing", ["del", "foo"]);
    step!("put w/1", ["put", "w/1", "a"]);
    step!("put w/2", ["put", "w/2", "b"]);
    step!("del w/1", ["del", "w/1"]);
    out.push(("watch".into(), watch_history(t).await));

    let granted = step!("lease grant", ["lease", "grant", "60"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id in grant output")
        .to_string();
    t.name(&id, "LEASE");
    // Normalise the grant line too, now that the id has a name.
    if let Some(last) = out.last_mut() {
        last.1 = t.normalise(&last.1);
    }
    step!(
        "put with lease",
        ["put", "l", "v", &format!("--lease={id}")]
    );
    let ttl = step!("lease timetolive", ["lease", "timetolive", &id, "--keys"]);
    // remaining(59s) or (60s): the second may have turned.
    if let Some(last) = out.last_mut() {
        last.1 = ttl
            .replace("remaining(60s)", "remaining(Ns)")
            .replace("remaining(59s)", "remaining(Ns)");
    }
    step!("lease list", ["lease", "list"]);
    step!(
        "lease keep-alive once",
        ["lease", "keep-alive", "--once", &id]
    );
    step!("lease revoke", ["lease", "revoke", &id]);
    step!("get revoked key", ["get", "l"]);

    step!("compaction", ["compaction", "5"]);
    step!("get compacted", ["get", "foo", "--rev=3"]);
    step!("defrag", ["defrag"]);
    step!("endpoint health", ["endpoint", "health"]);
    step!("endpoint status", ["endpoint", "status"]);
    step!("endpoint hashkv", ["endpoint", "hashkv"]);
    step!("move-leader to a stranger", ["move-leader", "1"]);
    step!("alarm list, none", ["alarm", "list"]);

    // etcdctl cannot raise an alarm: the Rust client does.
    let mut c = client(&t.ep).await;
    let member = c
        .status()
        .await
        .expect("status")
        .header()
        .expect("h")
        .member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(opts))
        .await
        .expect("raise NOSPACE");
    step!("alarm list, NOSPACE", ["alarm", "list"]);
    step!("put under NOSPACE", ["put", "x", "y"]);
    step!("alarm disarm", ["alarm", "disarm"]);
    step!("alarm list, disarmed", ["alarm", "list"]);
    step!("put after disarm", ["put", "x", "y"]);
    step!("member list", ["member", "list"]);
    out
}

/// `etcdctl watch --prefix w/ --rev=2` replays the history; read until the
/// three events (8 lines) arrived, then stop the watcher.
async fn watch_history(t: &Target) -> String {
    let mut child = t
        .cmd(&["watch", "--prefix", "w/", "--rev=2"])
        .spawn()
        .expect("run etcdctl watch");
    let stdout = child.stdout.take().expect("watch stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut got = Vec::new();
    while got.len() < 8 {
        let line = tokio::time::timeout(CMD_TIMEOUT, lines.next_line())
            .await
            .expect("watch event in time")
            .expect("watch output")
            .unwrap_or_else(|| panic!("watch ended early after {got:?}"));
        got.push(line);
    }
    let _ = child.kill().await;
    t.normalise(&got.join("\n"))
}

/// See: #14.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_prints_the_same_for_ours_and_etcd() {
    which_etcdctl();
    guard(async {
        let ours = Ours::start(mgmt::store::Config::default()).await;
        let mut t = Target::new(&ours.endpoint).await;
        let got = session(&mut t).await;
        // Ours only: Snapshot says why not, and what to do instead.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("snap.db").display().to_string();
        let snap = t.run(&["snapshot", "save", &db], None).await;
        assert!(
            snap.contains("Snapshot is not supported by the embedded mgmt store")
                && snap.contains("etcdctl get \"\" --prefix -w json"),
            "{snap}"
        );
        ours.stop().await;

        let etcd = Etcd::start().await;
        let mut t = Target::new(&etcd.endpoint).await;
        let want = session(&mut t).await;
        drop(etcd);

        assert_eq!(got.len(), want.len());
        for ((step, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g, w, "etcdctl {step}: ours (left) and etcd (right) differ");
        }
    })
    .await;
}
