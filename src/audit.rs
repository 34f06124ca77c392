//! The host's own record of each run (#13): when a child starts and when it
//! ends, one line each in the host's system log, naming the run, who
//! started it (`user@host` of the initiator), the SHA-256 of the graph it
//! applies and, at the end, how long it ran and how it ended. The system
//! log is reached through `/dev/log` (journald and syslog daemons both
//! listen there); where there is none, the line is appended to `audit.log`
//! beside the cache (`<prefix>/audit.log`, mode 0600), so a host without a
//! logger still keeps the record. Writing the record never fails a run: a
//! record that cannot be written is logged and dropped.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the system logger listens.
const SYSLOG: &str = "/dev/log";
/// syslog priority: facility `auth` (4), severity `info` (6).
const PRIORITY: u8 = 4 * 8 + 6;

/// Who ran what: fixed for the run.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The run's id (the name of its per-run directory).
    pub run_id: String,
    /// `user@host` of the initiator.
    pub initiator: String,
    /// This host's identity in the run.
    pub host: String,
    /// Lowercase hex SHA-256 of the graph text.
    pub graph_sha256: String,
    /// Where the record goes when there is no system logger.
    pub fallback: PathBuf,
}

impl Audit {
    /// The line that says the run started here.
    pub fn started(&self) -> String {
        format!("{} started", self.head())
    }

    /// The line that says it ended, after `secs` seconds, with `result`.
    pub fn ended(&self, secs: u64, result: &str) -> String {
        format!("{} ended after {secs}s: {result}", self.head())
    }

    fn head(&self) -> String {
        format!(
            "mgmt run {} on {} by {} graph sha256:{}",
            self.run_id, self.host, self.initiator, self.graph_sha256
        )
    }

    /// Writes `line` to the system log, else to the fallback file.
    pub fn record(&self, line: &str) {
        let sent = send_to(Path::new(SYSLOG), line);
        if let Err(e) = sent.or_else(|_| append(&self.fallback, line)) {
            tracing::warn!("audit: cannot record the run ({e}): {line}");
        }
    }
}

/// One RFC 3164 message (`<PRI>mgmt[PID]: line`) to the datagram socket at
/// `socket`, as `logger` sends it.
pub fn send_to(socket: &Path, line: &str) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let msg = format!("<{PRIORITY}>mgmt[{}]: {line}", std::process::id());
    sock.send_to(msg.as_bytes(), socket).map(|_| ())
}

/// Appends `line` to `file` (created 0600, never through a link).
fn append(file: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(file)?;
    let stamp = epoch_stamp();
    writeln!(f, "{stamp} {line}")
}

/// Seconds since the epoch, UTC, as `@1733212345` (what `date -d` reads).
fn epoch_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("@{secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(dir: &Path) -> Audit {
        Audit {
            run_id: "r1".into(),
            initiator: "ops@laptop".into(),
            host: "web1".into(),
            graph_sha256: "ab".repeat(32),
            fallback: dir.join("audit.log"),
        }
    }

    /// A real datagram socket in the syslog daemon's place gets the
    /// message as `logger` would send it.
    #[test]
    fn a_record_reaches_a_syslog_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let a = audit(d.path());
        send_to(&path, &a.ended(3, "converged")).unwrap();
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]);
        assert!(msg.starts_with("<38>mgmt["), "{msg}");
        assert!(
            msg.ends_with(&format!(
                "mgmt run r1 on web1 by ops@laptop graph sha256:{} ended after 3s: converged",
                "ab".repeat(32)
            )),
            "{msg}"
        );
    }

    #[test]
    fn the_fallback_file_is_private_and_never_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = audit(d.path());
        append(&a.fallback, &a.started()).unwrap();
        append(&a.fallback, &a.ended(1, "stopped")).unwrap();
        let text = std::fs::read_to_string(&a.fallback).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("ended after 1s: stopped"));
        let mode = std::fs::metadata(&a.fallback).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &link).unwrap();
        assert!(append(&link, "x").is_err(), "followed a link");
        assert!(!d.path().join("elsewhere").exists());
    }
}
