//! The SSH layer against a real OpenSSH sshd: authentication, host keys,
//! exec streaming, the binary cache, per-run files, the reverse tunnel,
//! connection pacing and trust boundaries (`hostile`), one group file
//! each. Each test starts its own fleet (random loopback block and port)
//! and bounds its own run time with a hang guard; this file holds the
//! helpers the groups share.

mod auth;
mod connect;
mod exec;
mod fleet;
mod hostile;
mod hostkeys;
mod measure;
mod pacing;
mod sftp_cache;
mod slow_link;
mod tunnel;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mgmt::ssh::auth::{AuthSettings, Credentials};
use mgmt::ssh::sftp::{sha256_file, Sftp};
use mgmt::ssh::target::{SshConfigFile, Target};
use mgmt::ssh::Output;
use mgmt::ssh::{CacheOptions, CachedBinary};
use mgmt::ssh::{ExecOptions, HostError, Session, UploadError};

use crate::util::sshd::SshdFleet;

/// Hang guard: a test that takes longer than this has a bug.
async fn guard<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test hung (hang guard)")
}

async fn session(fleet: &SshdFleet, i: usize) -> Session {
    mgmt::ssh::connect(&fleet.target(i), &fleet.settings())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect: {e}; hint: {:?}\nsshd log:\n{}",
                e.hint(),
                fleet.log()
            )
        })
}

/// `url` parsed with no ssh config and no default user.
fn target(url: &str) -> Target {
    Target::parse(url, &SshConfigFile::none(), None).expect("target")
}

/// Credentials of the agent at `agent` (if any) and the one key file `key`;
/// never a prompt.
fn credentials(agent: Option<PathBuf>, key: PathBuf) -> Credentials {
    Credentials::new(AuthSettings {
        agent_socket: agent,
        key_files: vec![key],
        allow_interactive: false,
    })
}

/// A command whose stdin stays open, with its pid reported.
fn stdin_open_with_pid() -> ExecOptions {
    ExecOptions {
        close_stdin: false,
        report_pid: true,
        ..Default::default()
    }
}

/// The permission bits of `path`, which must exist.
fn mode_of(path: impl AsRef<Path>) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("dir").permissions().mode() & 0o777
}

/// A fake "binary": a shell script of exactly `size` bytes that prints its
/// arguments, or, if `evil`, touches `corrupt-ran` in its working directory.
fn payload(path: &Path, size: usize, evil: bool) {
    let head = if evil {
        "#!/bin/sh\ntouch corrupt-ran\nexit 0\n".to_owned()
    } else {
        "#!/bin/sh\necho \"ran $*\"\nexit 0\n".to_owned()
    };
    let mut body = head.into_bytes();
    body.push(b'#');
    body.resize(size - 1, b'x');
    body.push(b'\n');
    std::fs::write(path, body).expect("payload");
}

/// The set-up of the binary-cache tests: a local [`payload`] of `size` bytes
/// and its hash, a session to host 1 and an SFTP channel on it.
struct Upload {
    local: PathBuf,
    hash: String,
    s: Session,
    sftp: Sftp,
    /// The binary's cache directory on host 1, seen from this machine.
    cache_dir: PathBuf,
}

impl Upload {
    async fn start(fleet: &SshdFleet, size: usize) -> Upload {
        let local = fleet.dir().join("mgmt-local");
        payload(&local, size, false);
        let hash = sha256_file(&local).await.expect("hash");
        let s = session(fleet, 1).await;
        let sftp = Sftp::open(&s).await.expect("sftp");
        let cache_dir = fleet.home(1).join(".cache/mgmt/bin").join(&hash);
        Upload {
            local,
            hash,
            s,
            sftp,
            cache_dir,
        }
    }

    /// `Sftp::ensure_binary` of the local payload.
    async fn ensure(&self, opts: &CacheOptions) -> Result<CachedBinary, HostError<UploadError>> {
        self.sftp
            .ensure_binary(&self.s, &self.local, &self.hash, opts)
            .await
    }

    /// Launches `cached` with the one argument `x` and collects its output.
    async fn launch_x(&self, cached: &CachedBinary) -> Output {
        cached
            .launch(&self.s, &["x"], ExecOptions::default())
            .await
            .expect("exec")
            .collect()
            .await
    }
}
