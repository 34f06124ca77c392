//! Files on the host over SFTP: the content-addressed binary cache, per-run
//! files, and their removal.
//!
//! Layout under a prefix (default `~/.cache/mgmt`, `~` being the SFTP
//! server's start directory; if that cannot be used, a private directory
//! `/tmp/mgmt-<user>-<random>`, reused on later runs when it is still ours
//! and `0700`):
//!
//! ```text
//! <prefix>/                 0700
//!   bin/<sha256>/mgmt       0700 dirs, 0700 file; content-addressed
//!   run/<run-id>/graph.yaml 0700 dirs; one directory per run
//! ```
//!
//! Every file is written under a temporary name in its final directory and
//! renamed into place, so a partial upload is never at the final path. A
//! cached file counts as a hit when it is a regular file of the right size;
//! its hash is then checked by the command that runs it, every time
//! ([`CachedBinary::launch_command`]): SHA-256 (`openssl dgst`, else
//! `sha256sum`) compared and `exec` in one
//! shell, so a corrupt or truncated binary never runs. The window between
//! the check and the `exec` is only open to our own user and root (every
//! directory on the path that we create is `0700`), who could replace the
//! binary at any time anyway; the check is against corruption and partial
//! writes, not against our own uid. Fleet-level policy (when to clean up,
//! `--no-caching`) is the caller's.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::ssh::{ExecError, ExecOptions, RemoteChild, Session};
use super::{shell_join, shell_quote, Hint, HostError, HostId};

/// Exit code of [`CachedBinary::launch_command`] when the binary fails its
/// hash check (and so was not run).
pub const VERIFY_FAILED_EXIT: u32 = 121;

/// Name of the binary inside its cache directory.
const BIN_NAME: &str = "mgmt";

/// Bytes per SFTP write call; russh-sftp pipelines them.
const CHUNK: usize = 64 * 1024;

/// Progress callback: total bytes sent so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Options of [`Sftp::ensure_binary`].
#[derive(Clone, Default)]
pub struct CacheOptions {
    /// Cache prefix; `None` means `~/.cache/mgmt`. If it cannot be used, a
    /// private directory under `/tmp` is used instead.
    pub prefix: Option<String>,
    /// Also hash a cache hit remotely (one extra command) and replace it on
    /// mismatch. Not needed for safety: the launch command checks anyway.
    pub verify_hit: bool,
    /// Called with the bytes sent so far after each write.
    pub progress: Option<Progress>,
    /// Checked between writes; a cancelled upload removes its temporary file.
    pub cancel: Option<CancellationToken>,
}

impl std::fmt::Debug for CacheOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheOptions")
            .field("prefix", &self.prefix)
            .field("verify_hit", &self.verify_hit)
            .finish()
    }
}

/// Where the binary is on the host, and what it cost to get it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBinary {
    /// The prefix actually used.
    pub prefix: String,
    /// `<prefix>/bin/<sha256>`.
    pub dir: String,
    /// `<dir>/mgmt`.
    pub path: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// True when nothing had to be uploaded.
    pub hit: bool,
    /// Bytes written over SFTP (0 on a hit).
    pub bytes_sent: u64,
    /// True when the `/tmp` fallback was used.
    pub fallback: bool,
}

impl CachedBinary {
    /// A shell command line that checks the binary's hash and, only if it
    /// matches, `exec`s it with `args` (each quoted). On mismatch it prints
    /// one line on stderr and exits with [`VERIFY_FAILED_EXIT`]. `None` if
    /// an argument cannot be quoted (NUL byte).
    pub fn launch_command<S: AsRef<str>>(&self, args: &[S]) -> Option<String> {
        let dir = shell_quote(&self.dir)?;
        let argv = shell_join(args.iter().map(|a| a.as_ref()))?;
        // `openssl dgst` uses the CPU's SHA extensions (about 3x less CPU
        // than coreutils here, which adds up over a fleet); `sha256sum` is
        // the fallback. Both compute the real SHA-256 of the file.
        Some(format!(
            "cd {dir} && {{ h=$(openssl dgst -sha256 -r {BIN_NAME} 2>/dev/null) || h=$(sha256sum {BIN_NAME} 2>/dev/null); }} \
             && [ \"${{h%% *}}\" = {sha} ] && exec ./{BIN_NAME} {argv}; \
             echo {msg} >&2; exit {VERIFY_FAILED_EXIT}",
            sha = shell_quote(&self.sha256)?,
            msg = shell_quote(&format!(
                "mgmt: {}/{BIN_NAME} is missing or failed its sha-256 check; not running it",
                self.dir
            ))?,
        ))
    }

    /// The inverse of [`Self::launch_command`]: the cache directory, the
    /// expected hash and the arguments of a launch command line, or `None`
    /// if `cmd` is not exactly one (`mgmt emulate` runs only these).
    pub fn parse_launch(cmd: &str) -> Option<(String, String, Vec<String>)> {
        let rest = cmd.strip_prefix("cd ")?;
        let (dir_q, rest) = rest.split_once(" && { h=$(openssl dgst ")?;
        let (_, rest) = rest.split_once("[ \"${h%% *}\" = ")?;
        let (sha_q, rest) = rest.split_once(" ] && exec ./")?;
        let argv_q = rest.strip_prefix(BIN_NAME)?.strip_prefix(' ')?;
        let dir = single_word(dir_q)?;
        let sha = single_word(sha_q)?;
        let argv_q = argv_q.rsplit_once("; echo ")?.0;
        let args = shlex::split(argv_q)?;
        let probe = CachedBinary {
            prefix: String::new(),
            dir: dir.clone(),
            path: String::new(),
            sha256: sha.clone(),
            hit: true,
            bytes_sent: 0,
            fallback: false,
        };
        // Only a command this process would have built is accepted.
        (probe.launch_command(&args)? == cmd).then_some((dir, sha, args))
    }

    /// Start the binary with `args` through [`Self::launch_command`].
    pub async fn launch<S: AsRef<str>>(
        &self,
        session: &Session,
        args: &[S],
        opts: ExecOptions,
    ) -> Result<RemoteChild, HostError<ExecError>> {
        let Some(cmd) = self.launch_command(args) else {
            return Err(HostError::new(
                session.host(),
                ExecError::BadArgument {
                    what: BIN_NAME.into(),
                },
            ));
        };
        session.exec(&cmd, opts).await
    }
}

fn single_word(quoted: &str) -> Option<String> {
    let mut w = shlex::split(quoted)?;
    (w.len() == 1).then(|| w.remove(0))
}

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
            _ => None,
        }
    }
}

/// How long one SFTP request may wait for its answer.
const SFTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// An SFTP session on one host.
pub struct Sftp {
    sftp: SftpSession,
    host: HostId,
    /// Absolute start directory of the SFTP server (the user's home).
    home: String,
    user: String,
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

fn is_not_found(e: &SftpError) -> bool {
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

fn check_name(name: &str) -> Result<(), UploadError> {
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

fn random_suffix() -> String {
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

    fn err(&self, kind: UploadError) -> HostError<UploadError> {
        HostError::new(&self.host, kind)
    }

    fn sftp_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(SftpError) -> UploadError + 'a {
        move |source| UploadError::Sftp {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Make `path` an existing directory, mode 0700, not a symlink. Creates
    /// it if missing; fixes the mode of one that exists (which fails unless
    /// it is ours, or we are root).
    async fn private_dir(&self, path: &str) -> Result<(), UploadError> {
        match self.sftp.symlink_metadata(path).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                if let Err(e) = self.sftp.create_dir(path).await {
                    // Lost a race with another uploader: fine if it is a dir now.
                    if self.sftp.symlink_metadata(path).await.is_err() {
                        return Err(Self::sftp_err("mkdir", path)(e));
                    }
                }
            }
            Err(e) => return Err(Self::sftp_err("stat", path)(e)),
        }
        let md = self
            .sftp
            .symlink_metadata(path)
            .await
            .map_err(Self::sftp_err("stat", path))?;
        if !md.is_dir() {
            return Err(UploadError::Sftp {
                op: "mkdir",
                path: path.to_owned(),
                source: SftpError::UnexpectedBehavior("exists and is not a directory".into()),
            });
        }
        if md.permissions.map(|p| p & 0o7777) != Some(0o700) {
            let attrs = FileAttributes {
                permissions: Some(0o700),
                ..FileAttributes::empty()
            };
            self.sftp
                .set_metadata(path, attrs)
                .await
                .map_err(Self::sftp_err("chmod", path))?;
        }
        Ok(())
    }

    /// Create the chain `prefix`, `prefix/sub...` as private directories.
    /// The parents of `prefix` are created if missing but left as they are.
    async fn prepare_prefix(&self, prefix: &str, subs: &[&str]) -> Result<(), UploadError> {
        // Parents (e.g. ~/.cache): create if missing, default mode.
        let mut parents = Vec::new();
        let mut p = Path::new(prefix).parent();
        while let Some(dir) = p {
            let s = dir.to_string_lossy().into_owned();
            if s.is_empty() || s == "/" || s == self.home {
                break;
            }
            parents.push(s);
            p = dir.parent();
        }
        for dir in parents.iter().rev() {
            if let Err(e) = self.sftp.symlink_metadata(dir.as_str()).await {
                if !is_not_found(&e) {
                    return Err(Self::sftp_err("stat", dir)(e));
                }
                if let Err(e) = self.sftp.create_dir(dir.as_str()).await {
                    if self.sftp.metadata(dir.as_str()).await.is_err() {
                        return Err(Self::sftp_err("mkdir", dir)(e));
                    }
                }
            }
        }
        self.private_dir(prefix).await?;
        let mut path = prefix.to_owned();
        for s in subs {
            path = format!("{path}/{s}");
            self.private_dir(&path).await?;
        }
        Ok(())
    }

    /// Resolve the prefix: the given one (or `~/.cache/mgmt`), else a
    /// private `/tmp` directory. Returns (prefix, fallback?).
    async fn usable_prefix(
        &self,
        session: &Session,
        wanted: Option<&str>,
        subs: &[&str],
    ) -> Result<(String, bool), HostError<UploadError>> {
        let prefix = match wanted {
            Some(p) if p.starts_with("~/") => format!("{}/{}", self.home, &p[2..]),
            Some(p) => p.to_owned(),
            None => format!("{}/.cache/mgmt", self.home),
        };
        let first = match self.prepare_prefix(&prefix, subs).await {
            Ok(()) => return Ok((prefix, false)),
            Err(e) => e,
        };
        tracing::info!(host = %self.host, prefix, error = %first, "cache prefix not usable; falling back to /tmp");
        match self.tmp_prefix(session, subs).await {
            Ok(p) => Ok((p, true)),
            Err(second) => Err(self.err(UploadError::NoUsableDir {
                tried: format!("{prefix}: {first}; /tmp: {second}"),
            })),
        }
    }

    /// Find our own `0700` `/tmp/mgmt-<user>-*` directory or make a new one
    /// (mkdir fails if the name exists, so it is never someone else's).
    async fn tmp_prefix(&self, session: &Session, subs: &[&str]) -> Result<String, UploadError> {
        let out = session
            .run("id -u")
            .await
            .map_err(|e| UploadError::Exec(e.kind))?;
        let uid: Option<u32> = out.stdout.first().and_then(|s| s.trim().parse().ok());
        let stem = format!(
            "mgmt-{}-",
            self.user.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        if let (Some(uid), Ok(entries)) = (uid, self.sftp.read_dir("/tmp").await) {
            for entry in entries {
                let name = entry.file_name();
                let md = entry.metadata();
                // read_dir reports lstat data: a symlink is not a dir here.
                if name.starts_with(&stem)
                    && md.is_dir()
                    && md.uid == Some(uid)
                    && md.permissions.map(|p| p & 0o7777) == Some(0o700)
                {
                    let path = format!("/tmp/{name}");
                    if self.prepare_prefix(&path, subs).await.is_ok() {
                        return Ok(path);
                    }
                }
            }
        }
        let path = format!("/tmp/{stem}{}", random_suffix());
        self.sftp
            .create_dir(path.as_str())
            .await
            .map_err(Self::sftp_err("mkdir", &path))?;
        self.prepare_prefix(&path, subs).await?;
        Ok(path)
    }

    /// Make sure `<prefix>/bin/<sha256>/mgmt` holds `local` (whose SHA-256
    /// is `sha256`, lowercase hex); upload it if it does not.
    pub async fn ensure_binary(
        &self,
        session: &Session,
        local: &Path,
        sha256: &str,
        opts: &CacheOptions,
    ) -> Result<CachedBinary, HostError<UploadError>> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err(UploadError::BadName(sha256.to_owned())));
        }
        let sha256 = sha256.to_ascii_lowercase();
        let size = tokio::fs::metadata(local)
            .await
            .map_err(|source| {
                self.err(UploadError::Local {
                    path: local.to_owned(),
                    source,
                })
            })?
            .len();
        let (prefix, fallback) = self
            .usable_prefix(session, opts.prefix.as_deref(), &["bin", &sha256])
            .await?;
        let dir = format!("{prefix}/bin/{sha256}");
        let path = format!("{dir}/{BIN_NAME}");
        let mut cached = CachedBinary {
            prefix,
            dir,
            path: path.clone(),
            sha256,
            hit: false,
            bytes_sent: 0,
            fallback,
        };

        let hit = match self.sftp.symlink_metadata(path.as_str()).await {
            Ok(md) => md.is_regular() && md.size == Some(size),
            Err(_) => false,
        };
        let hit = hit && (!opts.verify_hit || self.remote_hash_ok(session, &cached).await);
        if hit {
            cached.hit = true;
            return Ok(cached);
        }
        let t = Instant::now();
        cached.bytes_sent = self
            .put_file(session, local, &cached.dir, BIN_NAME, size, opts)
            .await?;
        tracing::debug!(host = %self.host, bytes = cached.bytes_sent, elapsed = ?t.elapsed(), "binary uploaded");
        Ok(cached)
    }

    /// Whether the cached binary hashes right, computed on the host.
    pub async fn remote_hash_ok(&self, session: &Session, cached: &CachedBinary) -> bool {
        let Some(path) = shell_quote(&cached.path) else {
            return false;
        };
        match session.run(&format!("sha256sum -- {path}")).await {
            Ok(out) => {
                out.status.success()
                    && out
                        .stdout
                        .first()
                        .and_then(|l| l.split_whitespace().next())
                        .is_some_and(|h| h == cached.sha256)
            }
            Err(_) => false,
        }
    }

    /// Upload `local` to `dir/name` through a temporary name and a rename.
    /// Returns the bytes sent.
    async fn put_file(
        &self,
        session: &Session,
        local: &Path,
        dir: &str,
        name: &str,
        size: u64,
        opts: &CacheOptions,
    ) -> Result<u64, HostError<UploadError>> {
        let mut src = tokio::fs::File::open(local).await.map_err(|source| {
            self.err(UploadError::Local {
                path: local.to_owned(),
                source,
            })
        })?;
        let tmp = format!("{dir}/.{name}.{}.part", random_suffix());
        let final_path = format!("{dir}/{name}");
        let result = self
            .write_then_rename(session, &mut src, &tmp, &final_path, size, opts)
            .await;
        if result.is_err() {
            // Best effort: never leave a partial file behind.
            let _ = self.sftp.remove_file(tmp.as_str()).await;
        }
        result.map_err(|k| self.err(k))
    }

    async fn write_then_rename<R: tokio::io::AsyncRead + Unpin>(
        &self,
        session: &Session,
        src: &mut R,
        tmp: &str,
        final_path: &str,
        size: u64,
        opts: &CacheOptions,
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
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
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
            if let Some(p) = &opts.progress {
                p(sent);
            }
        }
        file.shutdown().await.map_err(|e| UploadError::Sftp {
            op: "close",
            path: tmp.to_owned(),
            source: e.into(),
        })?;
        let got = self
            .sftp
            .metadata(tmp)
            .await
            .map_err(Self::sftp_err("stat", tmp))?
            .size
            .unwrap_or(0);
        if got != size || sent != size {
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
        Ok(sent)
    }

    /// `mv -f tmp final` on the host: an atomic replacement of an existing
    /// file. Returns whether it succeeded.
    async fn replace_with_mv(&self, session: &Session, tmp: &str, final_path: &str) -> bool {
        let Some(cmd) = super::shell_join(["mv", "-f", "--", tmp, final_path]) else {
            return false;
        };
        matches!(session.run(&cmd).await, Ok(out) if out.status.success())
    }

    /// Write `data` to `<prefix>/run/<run_id>/<name>` atomically (temporary
    /// name, then rename); returns the remote path. Pass the binary's
    /// [`CachedBinary::prefix`] so that a host on the `/tmp` fallback keeps
    /// both in the same place; `None` resolves the default again.
    pub async fn put_run_file(
        &self,
        session: &Session,
        prefix: Option<&str>,
        run_id: &str,
        name: &str,
        data: &[u8],
    ) -> Result<String, HostError<UploadError>> {
        check_name(run_id).map_err(|k| self.err(k))?;
        check_name(name).map_err(|k| self.err(k))?;
        let (prefix, _) = self
            .usable_prefix(session, prefix, &["run", run_id])
            .await?;
        let dir = format!("{prefix}/run/{run_id}");
        let tmp = format!("{dir}/.{name}.{}.part", random_suffix());
        let final_path = format!("{dir}/{name}");
        let opts = CacheOptions::default();
        let mut src = data;
        let r = self
            .write_then_rename(
                session,
                &mut src,
                &tmp,
                &final_path,
                data.len() as u64,
                &opts,
            )
            .await;
        if r.is_err() {
            let _ = self.sftp.remove_file(tmp.as_str()).await;
        }
        r.map_err(|k| self.err(k))?;
        Ok(final_path)
    }

    /// Remove `<prefix>/run/<run_id>` and everything in it (files only: we
    /// never create subdirectories there), then `run/` and the prefix if
    /// they are empty.
    pub async fn remove_run_dir(
        &self,
        prefix: &str,
        run_id: &str,
    ) -> Result<(), HostError<UploadError>> {
        check_name(run_id).map_err(|k| self.err(k))?;
        let dir = format!("{prefix}/run/{run_id}");
        self.remove_flat_dir(&dir).await.map_err(|k| self.err(k))?;
        self.remove_if_empty(&format!("{prefix}/run")).await;
        self.remove_if_empty(prefix).await;
        Ok(())
    }

    /// Remove the cached binary and its directories (`--no-caching`), then
    /// `bin/` and the prefix if they are empty.
    pub async fn remove_binary(&self, cached: &CachedBinary) -> Result<(), HostError<UploadError>> {
        self.remove_flat_dir(&cached.dir)
            .await
            .map_err(|k| self.err(k))?;
        self.remove_if_empty(&format!("{}/bin", cached.prefix))
            .await;
        self.remove_if_empty(&cached.prefix).await;
        Ok(())
    }

    async fn remove_flat_dir(&self, dir: &str) -> Result<(), UploadError> {
        let entries = match self.sftp.read_dir(dir).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Self::sftp_err("readdir", dir)(e)),
        };
        for entry in entries {
            let path = format!("{dir}/{}", entry.file_name());
            self.sftp
                .remove_file(path.as_str())
                .await
                .map_err(Self::sftp_err("remove", &path))?;
        }
        self.sftp
            .remove_dir(dir)
            .await
            .map_err(Self::sftp_err("rmdir", dir))
    }

    /// rmdir that only succeeds on an empty directory; errors are expected
    /// (not empty, gone) and ignored.
    async fn remove_if_empty(&self, dir: &str) {
        let _ = self.sftp.remove_dir(dir).await;
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

#[cfg(test)]
mod launch_tests {
    use super::*;

    /// Runs the launch command with /bin/sh and the given PATH.
    fn launch_here(cached: &CachedBinary, path: &str) -> (i32, String) {
        let cmd = cached.launch_command(&["a b", "c"]).expect("quotable");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("PATH", path)
            .output()
            .expect("sh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn a_launch_command_parses_back_to_its_parts() {
        let cached = CachedBinary {
            prefix: "/h/.cache/mgmt".into(),
            dir: "/h/.cache/mgmt/bin/ab cd".into(),
            path: String::new(),
            sha256: "ab".repeat(32),
            hit: true,
            bytes_sent: 0,
            fallback: false,
        };
        let args = [
            "run",
            "--file",
            "/x y/g.yaml; echo",
            "--seeds=http://127.0.0.1:{port}",
        ];
        let cmd = cached.launch_command(&args).expect("quotable");
        let (dir, sha, got) = CachedBinary::parse_launch(&cmd).expect("parses");
        assert_eq!(
            (dir.as_str(), sha.as_str()),
            (cached.dir.as_str(), cached.sha256.as_str())
        );
        assert_eq!(got, args);
        // Anything else is refused, including a launch with a tail added.
        assert!(CachedBinary::parse_launch(&format!("{cmd}; rm -rf /")).is_none());
        assert!(CachedBinary::parse_launch("cd /tmp && ls").is_none());
    }

    #[test]
    fn launch_checks_the_hash_with_openssl_or_sha256sum() {
        use sha2::Digest;
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join(BIN_NAME);
        let script = b"#!/bin/sh\necho ran \"$@\"\n";
        std::fs::write(&bin, script).expect("write");
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let cached = CachedBinary {
            prefix: String::new(),
            dir: dir.path().display().to_string(),
            path: bin.display().to_string(),
            sha256: hex::encode(sha2::Sha256::digest(script)),
            hit: true,
            bytes_sent: 0,
            fallback: false,
        };
        // Only sha256sum on the PATH: the fallback is used.
        let only = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink("/usr/bin/sha256sum", only.path().join("sha256sum"))
            .expect("link");
        let only = only.path().display().to_string();
        for path in [std::env::var("PATH").unwrap_or_default(), only.clone()] {
            assert_eq!(
                launch_here(&cached, &path),
                (0, "ran a b c\n".into()),
                "PATH={path}"
            );
        }
        // A changed binary is not run, whichever tool checks it.
        std::fs::write(&bin, b"#!/bin/sh\necho evil\n").expect("write");
        for path in [std::env::var("PATH").unwrap_or_default(), only] {
            assert_eq!(
                launch_here(&cached, &path),
                (VERIFY_FAILED_EXIT as i32, String::new()),
                "PATH={path}"
            );
        }
    }
}
