//! The SFTP client of one host: a thin wrapper over russh-sftp that names
//! the host in every error, writes a file only under a temporary name in
//! its final directory and renames it into place (so a partial upload is
//! never at the final path), and can be parked between uses
//! ([`SftpSlot`]). What is stored where is [`super::cache`]'s (the binary)
//! and [`super::runfiles`]'s (per-run files).

use std::path::Path;
use std::sync::Arc;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::child::ExecError;
use super::session::Session;
use super::strict::{remedy, Place, Untrusted};
use super::{shell_join, Hint, HostError, HostId};

/// Bytes per SFTP write call; russh-sftp pipelines them.
const CHUNK: usize = 64 * 1024;

/// Progress callback: bytes sent so far, and of how many (what travels:
/// the compressed form's size when one is sent).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Why an upload or cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The SFTP subsystem could not be started.
    #[error("cannot start sftp")]
    Start(#[source] russh::Error),
    /// An SFTP operation failed.
    #[error("sftp {op} {path}: {source}")]
    Sftp {
        /// What we tried (`mkdir`, `write`...).
        op: &'static str,
        /// The remote path.
        path: String,
        /// The server's answer.
        source: SftpError,
    },
    /// Reading the local file failed.
    #[error("cannot read local file {path}", path = .path.display())]
    Local {
        /// The local path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither the prefix nor `/tmp` could be used.
    #[error("no usable directory for the cache (tried {tried})")]
    NoUsableDir {
        /// The directories tried and why they failed.
        tried: String,
    },
    /// A name that could escape its directory.
    #[error("invalid name {0:?}: only letters, digits, '.', '_' and '-' are allowed, not starting with '.'")]
    BadName(String),
    /// After the upload the remote size was wrong.
    #[error("{path} has {got} bytes after upload, expected {expected}")]
    SizeMismatch {
        /// Remote path.
        path: String,
        /// Local size.
        expected: u64,
        /// Remote size.
        got: u64,
    },
    /// A directory on the way to the cache, or the cached binary, could be
    /// changed by someone other than the login user and root (see
    /// [`super::strict`]); nothing was written or run there.
    #[error("{place} {path} {why}; refusing to use it")]
    Untrusted {
        /// Where it sits.
        place: Place,
        /// The remote path.
        path: String,
        /// What is wrong with it.
        why: Untrusted,
    },
    /// A cache prefix that does not name a directory below `/`.
    #[error("invalid cache prefix {0:?}: it must name a directory below / without '..'")]
    BadPrefix(String),
    /// `id -u` did not print a uid.
    #[error("cannot tell the login user's uid: `id -u` printed {0:?}")]
    NoUid(String),
    /// The host did not turn the compressed upload into the binary: its
    /// tool failed or gave bytes with another SHA-256. Nothing was put at
    /// the binary's path, and nothing ran.
    #[error("{path}: `{tool} -dc` on the host did not give the binary ({status}): {said}")]
    Unpack {
        /// The compressed file on the host.
        path: String,
        /// The host's tool.
        tool: &'static str,
        /// How the command ended.
        status: String,
        /// Its last stderr line.
        said: String,
    },
    /// A helper command failed.
    #[error(transparent)]
    Exec(ExecError),
    /// Cancelled between writes.
    #[error("upload cancelled")]
    Cancelled,
}

impl Hint for UploadError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Start(_) => Some("enable the sftp subsystem in the host's sshd_config".into()),
            Self::NoUsableDir { .. } => {
                Some("free disk space on the host or pass a writable cache prefix".into())
            }
            Self::Sftp { .. } | Self::SizeMismatch { .. } => {
                Some("check disk space and permissions on the host".into())
            }
            Self::Untrusted { place, path, why } => Some(remedy(path, *place, why)),
            Self::BadPrefix(_) => Some(
                "name the directory without '..', e.g. ~/.cache/mgmt or /var/cache/mgmt".into(),
            ),
            Self::NoUid(_) => Some("the login shell must run `id -u` (POSIX)".into()),
            Self::Unpack { tool, .. } => Some(format!(
                "check the host's `{tool}` (which one is first on PATH, and that it works): \
                 it changed the binary's bytes"
            )),
            _ => None,
        }
    }
}

/// One upload's expected size, and what it reports to (both optional): a
/// progress callback, and a token checked between writes.
#[derive(Clone, Copy)]
pub(super) struct Transfer<'a> {
    pub size: u64,
    pub progress: Option<&'a Progress>,
    pub cancel: Option<&'a CancellationToken>,
}

/// How long one SFTP request may wait for its answer.
const SFTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// An SFTP session on one host.
pub struct Sftp {
    pub(super) sftp: SftpSession,
    pub(super) host: HostId,
    /// Absolute start directory of the SFTP server (the user's home).
    pub(super) home: String,
    pub(super) user: String,
    /// The cache prefix this session checked from `/` down: as asked, its
    /// real path, and whether it is the `/tmp` fallback ([`super::cache`]).
    pub(super) checked: std::sync::Mutex<Option<(String, String, bool)>>,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp")
            .field("host", &self.host)
            .field("home", &self.home)
            .finish()
    }
}

/// Writes in flight per upload. Everything in flight sits encrypted in the
/// SSH session's output buffer first, and that buffer keeps its largest size
/// for the session's life (the whole run): with russh-sftp's default of 16
/// the 200 sessions of a cold run held 105 MB of it (heaptrack). 8 writes
/// of 32 KiB are 256 KiB per round trip: 25 MB/s per host at 10 ms, and a
/// fleet copies to `--cconns` hosts at once.
const WRITES_IN_FLIGHT: usize = 8;

fn sftp_config() -> russh_sftp::client::Config {
    russh_sftp::client::Config {
        max_concurrent_writes: WRITES_IN_FLIGHT,
        ..Default::default()
    }
}

pub(super) fn is_not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// Hash a local file (blocking I/O on a blocking thread).
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(super) fn check_name(name: &str) -> Result<(), UploadError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(UploadError::BadName(name.to_owned()))
    }
}

/// A fresh temporary name in `dir` for the file `name`.
fn part_name(dir: &str, name: &str) -> String {
    format!("{dir}/.{name}.{}.part", random_suffix())
}

pub(super) fn random_suffix() -> String {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    hex::encode(b)
}

impl Sftp {
    /// Open the SFTP subsystem and find the home directory.
    pub async fn open(session: &Session) -> Result<Self, HostError<UploadError>> {
        let host = session.host().clone();
        let err = |k| HostError::new(&host, k);
        let ch = session
            .handle()
            .channel_open_session()
            .await
            .map_err(|e| err(UploadError::Start(e)))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| err(UploadError::Start(e)))?;
        let sftp = SftpSession::new_with_config(ch.into_stream(), sftp_config())
            .await
            .map_err(|e| {
                err(UploadError::Sftp {
                    op: "init",
                    path: String::new(),
                    source: e,
                })
            })?;
        // russh-sftp gives up on a request after 10 s by default. On a slow
        // uplink shared by many hosts' pipelined writes an acknowledgement
        // can take longer than that without anything being wrong (measured:
        // 50 uploads at once over 100 Mbit/s); a dead link is found by the
        // SSH keepalive instead.
        sftp.set_timeout(SFTP_REQUEST_TIMEOUT.as_secs());
        let home = sftp.canonicalize(".").await.map_err(|e| {
            err(UploadError::Sftp {
                op: "realpath",
                path: ".".into(),
                source: e,
            })
        })?;
        Ok(Self {
            sftp,
            host,
            home,
            user: session.target().user.clone(),
            checked: std::sync::Mutex::new(None),
        })
    }

    /// The SFTP start directory (normally the user's home).
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The underlying russh-sftp session, for anything not wrapped here.
    pub fn raw(&self) -> &SftpSession {
        &self.sftp
    }

    pub(super) fn err(&self, kind: UploadError) -> HostError<UploadError> {
        HostError::new(&self.host, kind)
    }

    pub(super) fn sftp_err<'a>(
        op: &'static str,
        path: &'a str,
    ) -> impl FnOnce(SftpError) -> UploadError + 'a {
        move |source| UploadError::Sftp {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Writes `src` to `dir/name` under a temporary name in `dir`, then
    /// renames it into place; a failed write removes the temporary file.
    /// Returns the final path and the bytes sent.
    pub(super) async fn put<R: tokio::io::AsyncRead + Unpin>(
        &self,
        session: &Session,
        src: &mut R,
        (dir, name): (&str, &str),
        t: Transfer<'_>,
    ) -> Result<(String, u64), HostError<UploadError>> {
        let tmp = part_name(dir, name);
        let final_path = format!("{dir}/{name}");
        let result = async {
            let sent = self.write_part(src, &tmp, t).await?;
            self.check_and_rename(session, &tmp, &final_path, t.size)
                .await?;
            Ok(sent)
        };
        let sent = self.or_remove(&tmp, result.await).await?;
        Ok((final_path, sent))
    }

    /// Writes `src` to a temporary name in `dir` (for `name`) and leaves it
    /// there, closed, for a command that checks it before it moves it into
    /// place; a failed write removes it. Returns its path and the bytes sent.
    pub(super) async fn put_part<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: &mut R,
        (dir, name): (&str, &str),
        t: Transfer<'_>,
    ) -> Result<(String, u64), HostError<UploadError>> {
        let tmp = part_name(dir, name);
        let sent = self
            .or_remove(&tmp, self.write_part(src, &tmp, t).await)
            .await?;
        Ok((tmp, sent))
    }

    /// `result`, after removing `tmp` when it is an error (best effort:
    /// never leave a partial file behind).
    async fn or_remove<T>(
        &self,
        tmp: &str,
        result: Result<T, UploadError>,
    ) -> Result<T, HostError<UploadError>> {
        if result.is_err() {
            let _ = self.sftp.remove_file(tmp).await;
        }
        result.map_err(|k| self.err(k))
    }

    /// Creates `tmp` (exclusively, mode 0700), writes `src` into it and
    /// closes it. Returns the bytes sent, which must be the expected size.
    async fn write_part<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: &mut R,
        tmp: &str,
        t: Transfer<'_>,
    ) -> Result<u64, UploadError> {
        let attrs = FileAttributes {
            permissions: Some(0o700),
            ..FileAttributes::empty()
        };
        let mut file = self
            .sftp
            .open_with_flags_and_attributes(
                tmp,
                OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
                attrs,
            )
            .await
            .map_err(Self::sftp_err("create", tmp))?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent: u64 = 0;
        loop {
            if t.cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(UploadError::Cancelled);
            }
            let n = src
                .read(&mut buf)
                .await
                .map_err(|source| UploadError::Local {
                    path: tmp.into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            file.write_all(chunk).await.map_err(|e| UploadError::Sftp {
                op: "write",
                path: tmp.to_owned(),
                source: e.into(),
            })?;
            sent += n as u64;
            if let Some(p) = t.progress {
                p(sent, t.size);
            }
        }
        file.shutdown().await.map_err(|e| UploadError::Sftp {
            op: "close",
            path: tmp.to_owned(),
            source: e.into(),
        })?;
        if sent != t.size {
            return Err(UploadError::SizeMismatch {
                path: tmp.to_owned(),
                expected: t.size,
                got: sent,
            });
        }
        Ok(sent)
    }

    /// Checks that the written `tmp` has the expected `size` on the host,
    /// then renames it to `final_path`.
    async fn check_and_rename(
        &self,
        session: &Session,
        tmp: &str,
        final_path: &str,
        size: u64,
    ) -> Result<(), UploadError> {
        let got = self
            .sftp
            .metadata(tmp)
            .await
            .map_err(Self::sftp_err("stat", tmp))?
            .size
            .unwrap_or(0);
        if got != size {
            return Err(UploadError::SizeMismatch {
                path: tmp.to_owned(),
                expected: size,
                got,
            });
        }
        if let Err(e) = self.sftp.rename(tmp, final_path).await {
            // Plain SFTP rename refuses an existing target, and russh-sftp
            // has no posix-rename: replace it with rename(2) through `mv`, so
            // that the target is never missing (a live graph update, a
            // replaced binary).
            if !self.replace_with_mv(session, tmp, final_path).await {
                return Err(Self::sftp_err("rename", final_path)(e));
            }
        }
        Ok(())
    }

    /// `mv -f tmp final` on the host: an atomic replacement of an existing
    /// file. Returns whether it succeeded.
    async fn replace_with_mv(&self, session: &Session, tmp: &str, final_path: &str) -> bool {
        let Some(cmd) = shell_join(["mv", "-f", "--", tmp, final_path]) else {
            return false;
        };
        matches!(session.run(&cmd).await, Ok(out) if out.status.success())
    }

    /// Close the SFTP session.
    pub async fn close(self) {
        let _ = self.sftp.close().await;
    }
}

/// A host's SFTP session, open only while it is used.
///
/// Set-up copies and writes the graph, then parks the session: an open one
/// held 27 KB of the initiator's heap per host for the whole run (heaptrack
/// at 1,000 hosts), and after set-up it is only needed for a live edit, a
/// replaced binary or a clean-up that is still needed. Those open it again
/// (a channel and four round trips).
pub(crate) struct SftpSlot(tokio::sync::Mutex<Option<Sftp>>);

impl SftpSlot {
    pub fn new(sftp: Sftp) -> Self {
        SftpSlot(tokio::sync::Mutex::new(Some(sftp)))
    }

    /// A slot with no session yet: the first [`SftpSlot::get`] opens one.
    pub fn empty() -> Self {
        SftpSlot(tokio::sync::Mutex::new(None))
    }

    /// The session, opened again on `session` if it was parked.
    pub async fn get(
        &self,
        session: &Session,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, Sftp>, HostError<UploadError>> {
        let mut slot = self.0.lock().await;
        if slot.is_none() {
            *slot = Some(Sftp::open(session).await?);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut).map_err(|_| {
            HostError::new(
                session.host(),
                UploadError::Sftp {
                    op: "reopen",
                    path: String::new(),
                    source: SftpError::UnexpectedBehavior("no session after opening".into()),
                },
            )
        })
    }

    /// Closes the session until the next [`SftpSlot::get`].
    pub async fn park(&self) {
        if let Some(s) = self.0.lock().await.take() {
            s.close().await;
        }
    }
}
