//! A real etcd server for the conformance suite: one process per test, on
//! its own random loopback address (all of 127.0.0.0/8 reaches `lo` on
//! Linux, so fixed ports 2379/2380 never collide and no port is hunted),
//! with a temporary data directory. Readiness is the "ready to serve client
//! requests" line on etcd's stderr and the line that says the cluster
//! version was set (a raft entry of its own), not a sleep. The [`Etcd`] guard kills
//! and reaps the process when dropped, also when the test panics.
//!
//! A missing `etcd` binary is a test failure that says what to install,
//! never a silent pass.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long etcd may take to say it is ready before the start is abandoned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_LINE: &str = "ready to serve client requests";
/// The leader sets the cluster version through raft, sometimes after the
/// ready line: a test counting raft entries starts after it.
const VERSION_LINE: &str = "cluster version to ";

/// A running etcd; dropping it kills and waits for the process.
pub struct Etcd {
    child: Child,
    /// `http://127.a.b.c:2379`, for `etcd_client::Client::connect`.
    pub endpoint: String,
    /// Drains etcd's stderr so it never blocks on a full pipe; ends at EOF.
    reader: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it serves clients. Panics with a clear
    /// message when etcd is not installed or does not start.
    pub async fn start() -> Etcd {
        Self::start_with(&[]).await
    }

    /// As [`Etcd::start`], with extra command-line flags.
    pub async fn start_with(extra: &[&str]) -> Etcd {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(extra).await {
                Ok(e) => return e,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    async fn try_start(extra: &[&str]) -> Result<Etcd, String> {
        let ip = format!(
            "127.{}.{}.{}",
            rand::random_range(1..=254u8),
            rand::random_range(1..=254u8),
            rand::random_range(2..=254u8)
        );
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("conformance")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("conformance={peer}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "etcd is not installed (no `etcd` on PATH): install the Debian package \
                 etcd-server (`apt-get install -y etcd-server`), as CI does, then rerun"
            ),
            Err(e) => return Err(format!("cannot run etcd: {e}")),
        };
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("etcd stderr not captured".into());
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let (mut serving, mut versioned) = (false, false);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                serving |= line.contains(READY_LINE);
                versioned |= line.contains(VERSION_LINE);
                if serving && versioned {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let mut etcd = Etcd {
            child,
            endpoint: client,
            reader: Some(reader),
            _dir: dir,
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(etcd),
            // The sender was dropped: etcd exited (e.g. the address was taken).
            Ok(Err(_)) => {
                let status = etcd.child.wait().map_err(|e| e.to_string())?;
                Err(format!(
                    "etcd on {} exited before it was ready: {status}",
                    etcd.endpoint
                ))
            }
            Err(_) => Err(format!(
                "etcd on {} not ready after {READY_TIMEOUT:?}",
                etcd.endpoint
            )),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
