//! The binary shipped compressed (#17 item 2), in whole runs against a
//! real sshd: a cold host gets at most 0.4x the binary's bytes on the wire
//! (mgmt's own count and a counting TCP relay between mgmt and sshd agree),
//! the host decompresses it with its own `xz` and verifies it before it is
//! put in place, and a decompressor that gives other bytes makes the host
//! fail without anything of it ever running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::remote_run::{remote_cmd, row, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

fn binary_size() -> u64 {
    std::fs::metadata(crate::util::shipped()).unwrap().len()
}

/// A graph for one host at `url` that writes `<home>/shipped`.
fn graph(d: &Dir, home: &Path, url: &str) -> PathBuf {
    d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  file:\n  - name: f\n    path: {}/shipped\n    \
             content: \"yes\\n\"\nremote: {url}\n",
            home.display()
        ),
    )
}

/// A TCP relay that takes one connection and forwards it to `to`, counting
/// the bytes the client sends: what crossed the wire towards the host,
/// counted outside mgmt.
struct Relay {
    port: u16,
    up: Arc<AtomicU64>,
    done: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicU64::new(0));
        let count = up.clone();
        let done = std::thread::spawn(move || {
            let (client, _) = listener.accept().expect("accept");
            let server = TcpStream::connect(to).expect("connect to sshd");
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let down = std::thread::spawn(move || pump(s2, c2, None));
            pump(client, server, Some(&count));
            let _ = down.join();
        });
        Relay { port, up, done }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<&AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = count {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The `wire_bytes` of `host`'s `done` event in `--events` output.
fn wire_bytes(events: &str, host: &str) -> u64 {
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "done" && e["host"] == host)
        .and_then(|e| e["wire_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no done event for {host}:\n{events}"))
}

/// The one `bin/<sha>` directory of a host's cache.
fn bin_dir(home: &Path) -> PathBuf {
    let bin = home.join(".cache/mgmt/bin");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&bin)
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

/// The name of the compressed form in a cache directory: `mgmt.zst` on
/// this machine, which has zstd (and xz and gzip).
pub(crate) fn packed_name(dir: &Path) -> String {
    let want = "mgmt.zst";
    assert!(dir.join(want).is_file(), "no {want} in {}", dir.display());
    want.to_owned()
}

// See: #17 item 2 (a cold host costs at most 0.4x the binary on the wire)
#[test]
fn a_cold_host_gets_the_binary_compressed() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let to: SocketAddr = format!("{}:{}", fleet.ip(1), fleet.port()).parse().unwrap();
    let relay = Relay::start(to);
    // The relay's address carries the fleet's host key.
    let mut known = std::fs::OpenOptions::new()
        .append(true)
        .open(&fleet.known_hosts)
        .unwrap();
    writeln!(known, "[127.0.0.1]:{} {}", relay.port, fleet.host_pub).unwrap();
    let url = format!("ssh://root@127.0.0.1:{}", relay.port);
    let g = graph(&d, &fleet.home(1), &url);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "1", "--events", "-"],
    ));
    let code = p.wait(LIMIT);
    let (log, events) = (p.lines_so_far().join("\n"), p.stdout_rest());
    assert_eq!(code, 0, "{log}\n{events}");
    relay.done.join().expect("relay");
    let home = fleet.home(1);
    assert_eq!(
        std::fs::read_to_string(home.join("shipped"))
            .ok()
            .as_deref(),
        Some("yes\n")
    );
    let size = binary_size();
    let dir = bin_dir(&home);
    // What arrived is the compressed form (zstd, the host having it);
    // the binary next to it is the real one.
    let form = packed_name(&dir);
    let xz = std::fs::metadata(dir.join(&form)).expect("form").len();
    assert_eq!(
        std::fs::read(dir.join("mgmt")).unwrap(),
        std::fs::read(crate::util::shipped()).unwrap()
    );
    let ours = wire_bytes(&events, "127.0.0.1");
    let relayed = relay.up.load(Ordering::Relaxed);
    eprintln!("binary {size} B, {form} {xz} B, wire: mgmt {ours} B, relay {relayed} B");
    for (what, n) in [
        ("the upload", xz),
        ("mgmt's count", ours),
        ("the relay", relayed),
    ] {
        assert!(
            n * 10 <= size * 4,
            "{what}: {n} B is more than 0.4x the binary ({size} B)"
        );
    }
    // The two counts are of the same bytes: the relay sees all of them.
    assert!(relayed >= ours && ours >= xz, "{relayed} {ours} {xz}");
    // No temporary file stays beside them.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The binary, its install stamp (#17: later starts compare it instead
    // of hashing again) and the form it came in.
    let mut want = ["mgmt".to_string(), "mgmt.ok".into(), form];
    want.sort();
    assert_eq!(names, want);
}

// See: #17 item 2 (the host's decompressor is not trusted: what it gives
// is hashed before it is put in place, and never run when wrong)
#[test]
fn a_decompressor_that_lies_runs_nothing() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let home = fleet.home(1);
    let marker = d.path().join("ran");
    // A fake `xz` and `gzip` first on the host's PATH: whatever they are
    // given, they print a script that would leave the marker.
    let fake = home.join(".path");
    std::fs::create_dir_all(&fake).unwrap();
    for tool in ["zstd", "xz", "gzip"] {
        let p = fake.join(tool);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\ncat >/dev/null\nprintf '#!/bin/sh\\ntouch {}\\n'\n",
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let g = graph(&d, &home, &fleet.url(1));
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "1"],
    ));
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_ne!(code, 0, "{log}");
    assert!(row(&log, fleet.ip(1))[2].starts_with("failed"), "{log}");
    assert!(
        log.contains(" -dc` on the host did not give the binary"),
        "{log}"
    );
    assert!(!marker.exists(), "the fake's output ran\n{log}");
    assert!(!home.join("shipped").exists(), "{log}");
    // Nothing at the binary's path, no temporary file, and not the upload
    // either: it is kept (for a gateway) only beside a binary it gave.
    let dir = bin_dir(&home);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "{names:?}\n{log}");
}
