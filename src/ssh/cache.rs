//! The content-addressed binary cache on a host, and where per-run files go.
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
use std::time::Instant;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::FileAttributes;
use tokio_util::sync::CancellationToken;

use super::launch::{CachedBinary, BIN_NAME};
use super::session::Session;
use super::sftp::{is_not_found, random_suffix, Progress, Sftp, Transfer, UploadError};
use super::{shell_quote, HostError};

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

impl Sftp {
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
    pub(super) async fn usable_prefix(
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
            .write_then_rename(
                session,
                &mut src,
                &tmp,
                &final_path,
                Transfer {
                    size,
                    progress: opts.progress.as_ref(),
                    cancel: opts.cancel.as_ref(),
                },
            )
            .await;
        if result.is_err() {
            // Best effort: never leave a partial file behind.
            let _ = self.sftp.remove_file(tmp.as_str()).await;
        }
        result.map_err(|k| self.err(k))
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
}
