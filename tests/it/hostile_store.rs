//! Who can reach the store of a remote run (#13): nobody outside the run.
//! The initiator's own client talks to its store in-process and hosts come
//! through their authenticated tunnels, so a remote run opens no TCP
//! listener at all unless `--client-urls` asks for one; an unprivileged
//! local user then has nothing to connect to. What is checked is the
//! kernel's view: the listening sockets held by the initiator's process.

use std::collections::HashSet;

use crate::remote_run::{interrupt, noop_run, LIMIT};

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `local address` of every TCP socket in LISTEN state, by inode, from
/// /proc/net/tcp and tcp6 (the network namespace of this test).
fn listening_tcp() -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    out.push((inode, f[1].to_owned()));
                }
            }
        }
    }
    out
}

/// The TCP listeners the process `pid` holds.
fn listeners_of(pid: i32) -> Vec<String> {
    let mine = socket_inodes(pid);
    listening_tcp()
        .into_iter()
        .filter(|(inode, _)| mine.contains(inode))
        .map(|(_, addr)| addr)
        .collect()
}

// See: #13 (the store answered anyone on the laptop's loopback)
#[test]
fn a_remote_run_opens_no_store_listener() {
    let (fleet, _d, mut p) = noop_run(2, &[]);
    p.wait_all(
        &[
            &format!("[{}] running", fleet.ip(1)),
            &format!("[{}] running", fleet.ip(2)),
        ],
        LIMIT,
    );
    let listeners = listeners_of(p.pid());
    let log = p.lines_so_far().join("\n");
    assert!(
        listeners.is_empty(),
        "the initiator listens on {listeners:?}\n{log}"
    );
    assert!(!log.contains("store: listening on"), "{log}");
    interrupt(&mut p);
}

/// The check above sees a listener when there is one: asked for with
/// `--client-urls`, it is there, and the run says it takes no credentials.
#[test]
fn a_store_listener_is_opened_only_when_asked_and_warned_about() {
    let (fleet, _d, mut p) = noop_run(1, &["--client-urls", "127.0.0.1:0"]);
    p.wait_line(&format!("[{}] running", fleet.ip(1)), LIMIT);
    let listeners = listeners_of(p.pid());
    let log = p.lines_so_far().join("\n");
    assert_eq!(listeners.len(), 1, "{listeners:?}\n{log}");
    assert!(
        log.contains("store: listening on http://127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains("without credentials"), "{log}");
    interrupt(&mut p);
}
