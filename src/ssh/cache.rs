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
//!   bin/<sha256>/mgmt.zst   what was sent (or .xz, .gz), kept for gateways
//!   run/<run-id>/graph.yaml 0700 dirs; one directory per run
//! ```
//!
//! Trust (#13): every directory from `/` down to the binary and the per-run
//! files is checked over SFTP `lstat` against the login user's uid (`id -u`,
//! once per connection): owned by that user or root, not writable by group
//! or others, no symbolic link, the deepest existing one above the prefix
//! resolved with `realpath` first ([`super::strict`] has the rule and its one
//! exception, a root-owned sticky ancestor such as `/tmp`). A directory that
//! fails fails the host with an error naming it and what to change; it is
//! never chmodded into shape (root could, and would adopt whatever another
//! user left in it), and the run does not fall back to `/tmp` either. So
//! from the check on only the login user and root can change what is at
//! the binary's path.
//!
//! Every file is written under a temporary name in its final directory and
//! renamed into place, so a partial upload is never at the final path. A
//! miss sends the compressed form the host can decompress ([`super::pack`]):
//! it is written under a temporary name, then one command decompresses it
//! to another temporary name in the same checked directory and renames the
//! result to `mgmt`, and the form to `mgmt.<ext>`, only once the result's
//! SHA-256 matched. A
//! cached file counts as a hit when it is a regular file of the right size,
//! owned and moded like its directories; it is then checked by the
//! command that runs it, every time ([`CachedBinary::launch_command`]):
//! its install stamp, else its SHA-256 (`openssl dgst`, else `sha256sum`;
//! [`super::stamp`]), and `exec` in one shell, in the cache directory it
//! `cd`ed into, so a corrupt, truncated or changed binary never runs, and
//! what runs is the file that was checked: nobody but our own uid and root
//! can write that directory. Fleet-level policy (when
//! to clean up, `--no-caching`) is the caller's.

use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Instant;

use russh_sftp::protocol::FileAttributes;
use tokio_util::sync::CancellationToken;

use super::launch::{CachedBinary, BIN_NAME};
use super::pack::{unpack_command, HostProbe, Packer, PROBE_COMMAND};
use super::session::Session;
use super::sftp::{is_not_found, random_suffix, Progress, Sftp, Transfer, UploadError};
use super::strict::{chain, is_dir, judge, Place};
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
    /// The binary's compressed forms: a miss sends the best one the host
    /// can decompress ([`super::pack`]); `None` sends the binary as it is.
    pub packer: Option<Arc<Packer>>,
    /// Called once the host has acknowledged the binary's last byte; what
    /// follows (decompressing and checking it there) no longer uses the
    /// link, so a caller may give its `--cconns` slot to the next host.
    pub uploaded: Option<Arc<dyn Fn() + Send + Sync>>,
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
    /// The login user's uid on the host and the codecs it has (see
    /// [`probe`]).
    pub(super) async fn probe<'s>(
        &self,
        session: &'s Session,
    ) -> Result<&'s HostProbe, UploadError> {
        probe(session).await
    }
    /// The login user's uid on the host (see [`Self::probe`]).
    pub(super) async fn login_uid(&self, session: &Session) -> Result<u32, UploadError> {
        Ok(self.probe(session).await?.uid)
    }

    /// `md` (the `lstat` of `path`) judged for `place`.
    fn judged(md: &FileAttributes, path: &str, uid: u32, place: Place) -> Result<(), UploadError> {
        judge(md, uid, place).map_err(|why| UploadError::Untrusted {
            place,
            path: path.to_owned(),
            why,
        })
    }

    /// Makes each of `levels` a directory (created if missing) that only
    /// the login user or root can change, and judges it for its place, in
    /// order, so the error names the topmost one at fault: a private one
    /// is set to `0700` when it is ours; a new ancestor loses any group or
    /// other write bit the umask left. An existing directory that someone
    /// else can write is refused, never repaired: it may hold anything by
    /// now. Each level is inside the one before it; the first is `/` or
    /// inside a directory judged already. Returns, per level, whether this
    /// call created it.
    ///
    /// Round trips: the `lstat`s of all levels go out at once; the
    /// existing ones are judged; then every missing one is made in one
    /// more round (its `mkdir`s, then its `lstat`s: the SFTP server answers
    /// in order), and, when the umask left a mode to change, one more for
    /// the `chmod`s. Making the missing ones at once is safe because the
    /// deepest existing level was judged first: nobody but the login user
    /// and root can write it, nor the new directories below it.
    async fn trusted_dirs(
        &self,
        levels: &[(String, Place)],
        uid: u32,
    ) -> Result<Vec<bool>, UploadError> {
        let found = levels
            .iter()
            .map(|(p, _)| self.sftp.symlink_metadata(p.as_str()));
        let found = futures::future::join_all(found).await;
        let mut there = Vec::new();
        let mut gap = None;
        for ((path, place), md) in levels.iter().zip(found) {
            match md {
                Ok(md) => there.push((path.as_str(), *place, md, false)),
                Err(e) => {
                    gap = Some((path, e));
                    break;
                }
            }
        }
        let existing = there.len();
        // What is there is judged first: its fault is the one to name.
        self.settle(&mut there, uid).await?;
        if let Some((path, e)) = gap.filter(|(_, e)| !is_not_found(e)) {
            return Err(Self::sftp_err("stat", path)(e));
        }
        let Some(missing) = levels.get(existing..).filter(|m| !m.is_empty()) else {
            return Ok(vec![false; existing]);
        };
        // A lost race with another uploader is judged as found.
        let made = missing
            .iter()
            .map(|(p, _)| self.sftp.create_dir(p.as_str()));
        let stats = missing
            .iter()
            .map(|(p, _)| self.sftp.symlink_metadata(p.as_str()));
        // Polled in order, so sent in order: every `mkdir`, then every `lstat`.
        let (made, stats) = futures::future::join(
            futures::future::join_all(made),
            futures::future::join_all(stats),
        )
        .await;
        let mut new = Vec::new();
        for (((path, place), made), md) in missing.iter().zip(made).zip(stats) {
            let (md, created) = match (made, md) {
                (made, Ok(md)) => (md, made.is_ok()),
                (Err(e), Err(_)) => return Err(Self::sftp_err("mkdir", path)(e)),
                (Ok(()), Err(e)) => return Err(Self::sftp_err("stat", path)(e)),
            };
            new.push((path.as_str(), *place, md, created));
        }
        self.settle(&mut new, uid).await?;
        let created = new.iter().map(|d| d.3);
        Ok(std::iter::repeat_n(false, existing)
            .chain(created)
            .collect())
    }

    /// Judges each of `dirs` (path, place, `lstat`, whether this run
    /// created it) in order, with the mode it is to be given where that
    /// needs a change; only when all of them pass are those changes sent,
    /// all in one round. So no `chmod` goes through a directory that failed.
    async fn settle(
        &self,
        dirs: &mut [(&str, Place, FileAttributes, bool)],
        uid: u32,
    ) -> Result<(), UploadError> {
        let mut chmods = Vec::new();
        for (path, place, md, created) in dirs.iter_mut() {
            let perm = md.permissions.unwrap_or(0);
            let mode = perm & 0o7777;
            let want = match place {
                Place::Private => 0o700,
                _ => mode & !0o022,
            };
            let repairable = *created || mode & 0o022 == 0;
            if md.uid == Some(uid) && is_dir(md) && mode != want && repairable {
                md.permissions = Some(perm & !0o7777 | want);
                chmods.push((*path, want));
            }
            Self::judged(md, path, uid, *place)?;
        }
        let chmods = chmods.into_iter().map(|(path, want)| async move {
            let attrs = FileAttributes {
                permissions: Some(want),
                ..FileAttributes::empty()
            };
            let done = self.sftp.set_metadata(path, attrs).await;
            done.map_err(Self::sftp_err("chmod", path))
        });
        for done in futures::future::join_all(chmods).await {
            done?;
        }
        Ok(())
    }

    /// Makes `prefix` and `prefix/sub...` private directories on a path
    /// that only the login user and root can change ([`super::strict`]);
    /// returns the prefix's real path and the directories above it that
    /// this call created, outermost first. The deepest existing directory
    /// above the prefix is resolved (`realpath`, as OpenSSH does) and
    /// checked up to `/` before anything is created under it.
    async fn prepare_prefix(
        &self,
        uid: u32,
        prefix: &str,
        subs: &[&str],
    ) -> Result<Usable, UploadError> {
        let (mut base, name) = split_prefix(prefix)?;
        let mut missing = Vec::new();
        // `realpath` fails on a missing path (or a dangling link, which the
        // checks below then refuse by name): one level up each time.
        let real = loop {
            match self.sftp.canonicalize(base.as_str()).await {
                Ok(real) => break real,
                Err(e) if is_not_found(&e) && base != "/" => {
                    let (up, last) = split_prefix(&base)?;
                    missing.push(last);
                    base = up;
                }
                Err(e) => return Err(Self::sftp_err("realpath", &base)(e)),
            }
        };
        let mut levels: Vec<_> = chain(&real)
            .into_iter()
            .map(|d| (d, Place::Ancestor))
            .collect();
        let mut dir = real;
        for m in missing.iter().rev() {
            dir = join(&dir, m);
            levels.push((dir.clone(), Place::Ancestor));
        }
        let prefix = join(&dir, &name);
        levels.push((prefix.clone(), Place::Private));
        levels.extend(private_subs(&prefix, subs));
        let made = self.trusted_dirs(&levels, uid).await?;
        let fresh = made.last().copied().unwrap_or(false);
        let created = levels
            .into_iter()
            .zip(made)
            .filter(|((_, place), made)| *made && *place == Place::Ancestor)
            .map(|((d, _), _)| d)
            .collect();
        Ok(Usable {
            real: prefix,
            fallback: false,
            created,
            fresh,
        })
    }

    /// Resolve the prefix: the given one (or `~/.cache/mgmt`; a relative
    /// one is under the home), else a private `/tmp` directory, with `subs`
    /// made below it. A prefix that someone else could change fails the
    /// host, naming the directory: falling back to `/tmp` would hide what
    /// may be an attack.
    pub(super) async fn usable_prefix(
        &self,
        session: &Session,
        wanted: Option<&str>,
        subs: &[&str],
    ) -> Result<Usable, HostError<UploadError>> {
        let uid = self.login_uid(session).await.map_err(|k| self.err(k))?;
        let prefix = match wanted {
            Some(p) if p.starts_with("~/") => format!("{}/{}", self.home, &p[2..]),
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(p) => format!("{}/{p}", self.home),
            None => format!("{}/.cache/mgmt", self.home),
        };
        if let Some(found) = self.checked_before(uid, &prefix, subs).await {
            return found.map_err(|k| self.err(k));
        }
        let first = match self.prepare_prefix(uid, &prefix, subs).await {
            Ok(usable) => {
                self.remember(&prefix, &usable.real, false);
                return Ok(usable);
            }
            Err(e @ (UploadError::Untrusted { .. } | UploadError::BadPrefix(_))) => {
                return Err(self.err(e))
            }
            Err(e) => e,
        };
        tracing::info!(host = %self.host, prefix, error = %first, "cache prefix not usable; falling back to /tmp");
        match self.tmp_prefix(uid, subs).await {
            Ok(usable) => {
                self.remember(&prefix, &usable.real, true);
                Ok(Usable {
                    fallback: true,
                    created: Vec::new(),
                    ..usable
                })
            }
            Err(e @ UploadError::Untrusted { .. }) => Err(self.err(e)),
            Err(second) => Err(self.err(UploadError::NoUsableDir {
                tried: format!("{prefix}: {first}; /tmp: {second}"),
            })),
        }
    }

    /// Notes that `asked` resolved to the checked prefix `real` on this
    /// SFTP session.
    fn remember(&self, asked: &str, real: &str, fallback: bool) {
        *super::lock(&self.checked) = Some((asked.to_owned(), real.to_owned(), fallback));
    }

    /// The prefix checked earlier on this session, when `prefix` names it
    /// (as asked, or its real path), with `subs` made and checked below it:
    /// the directories above it were judged already (only the login user
    /// and root can change them), so the run files' step skips the walk
    /// from `/` (four round trips). `None`: not checked yet.
    async fn checked_before(
        &self,
        uid: u32,
        prefix: &str,
        subs: &[&str],
    ) -> Option<Result<Usable, UploadError>> {
        let (asked, real, fallback) = super::lock(&self.checked).clone()?;
        if prefix != asked && prefix != real {
            return None;
        }
        let made = self.trusted_dirs(&private_subs(&real, subs), uid).await;
        Some(made.map(|made| Usable {
            real,
            fallback,
            created: Vec::new(),
            fresh: made.last().copied().unwrap_or(false),
        }))
    }

    /// Find our own `0700` `/tmp/mgmt-<user>-*` directory or make a new one
    /// (mkdir fails if the name exists, so it is never someone else's).
    /// `/tmp` itself is trusted as root's sticky directory ([`super::strict`]).
    async fn tmp_prefix(&self, uid: u32, subs: &[&str]) -> Result<Usable, UploadError> {
        let stem = format!(
            "mgmt-{}-",
            self.user.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        if let Ok(entries) = self.sftp.read_dir("/tmp").await {
            for entry in entries {
                let name = entry.file_name();
                let md = entry.metadata();
                // read_dir reports lstat data: a symlink is not a dir here.
                if name.starts_with(&stem)
                    && is_dir(&md)
                    && md.uid == Some(uid)
                    && md.permissions.map(|p| p & 0o7777) == Some(0o700)
                {
                    let path = format!("/tmp/{name}");
                    if let Ok(p) = self.prepare_prefix(uid, &path, subs).await {
                        return Ok(p);
                    }
                }
            }
        }
        let path = format!("/tmp/{stem}{}", random_suffix());
        self.sftp
            .create_dir(path.as_str())
            .await
            .map_err(Self::sftp_err("mkdir", &path))?;
        self.prepare_prefix(uid, &path, subs).await
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
        let usable = self
            .usable_prefix(session, opts.prefix.as_deref(), &["bin", &sha256])
            .await?;
        let dir = format!("{}/bin/{sha256}", usable.real);
        let path = format!("{dir}/{BIN_NAME}");
        let mut cached = CachedBinary {
            prefix: usable.real,
            dir,
            path: path.clone(),
            sha256,
            hit: false,
            bytes_sent: 0,
            fallback: usable.fallback,
            created: usable.created,
        };

        // Whatever is at the path must be ours (or root's) like its
        // directories, or the host fails: it was put there by someone else.
        // A directory this call made holds nothing yet: no lstat.
        let uid = self.login_uid(session).await.map_err(|k| self.err(k))?;
        let found = match usable.fresh {
            true => None,
            false => self.sftp.symlink_metadata(path.as_str()).await.ok(),
        };
        let hit = match found {
            Some(md) => {
                Self::judged(&md, &path, uid, Place::Binary).map_err(|k| self.err(k))?;
                md.size == Some(size)
            }
            None => false,
        };
        let hit = hit && (!opts.verify_hit || self.remote_hash_ok(session, &cached).await);
        if hit {
            cached.hit = true;
            return Ok(cached);
        }
        let t = Instant::now();
        let have = match self.probe(session).await {
            Ok(p) => p.codecs.as_slice(),
            Err(_) => &[],
        };
        let codec = opts
            .packer
            .as_ref()
            .and_then(|p| Some((p, p.choose(have)?)));
        let packed = match codec {
            Some((packer, codec)) => match packer.get(codec).await {
                Ok(p) => Some(p),
                Err(why) => {
                    tracing::warn!(host = %self.host, "{why}; sending the binary uncompressed");
                    None
                }
            },
            _ => None,
        };
        cached.bytes_sent = match packed {
            Some(p) => self.put_packed(session, &cached, &p, opts).await?,
            None => {
                self.put_file(session, local, &cached.dir, BIN_NAME, size, opts)
                    .await?
            }
        };
        tracing::debug!(host = %self.host, bytes = cached.bytes_sent, elapsed = ?t.elapsed(), "binary uploaded");
        Ok(cached)
    }

    /// Uploads the compressed form `p` to a temporary name beside the
    /// binary's path, then has the host decompress it there and verify the
    /// result before renaming both into place ([`unpack_command`]): the
    /// command's channel opens while the bytes travel, and the form's size
    /// needs no check of its own (the result's SHA-256 covers it). The form
    /// stays, for a gateway to send onward. Returns the bytes sent.
    async fn put_packed(
        &self,
        session: &Session,
        cached: &CachedBinary,
        p: &super::pack::Packed,
        opts: &CacheOptions,
    ) -> Result<u64, HostError<UploadError>> {
        let name = format!("{BIN_NAME}.{}", p.codec.ext());
        let mut src = self.source(&p.path).await?;
        let put = self.put_part(&mut src, (&cached.dir, &name), transfer(p.size, opts));
        let (put, channel) = tokio::join!(put, session.open_channel());
        let (uploaded, sent) = put?;
        opts.uploaded.as_ref().inspect(|f| f());
        let part = uploaded
            .rsplit_once('/')
            .map_or(uploaded.as_str(), |(_, n)| n);
        let Some(cmd) = unpack_command(&cached.dir, part, &cached.sha256, p.codec) else {
            return Err(self.err(UploadError::BadName(cached.dir.clone())));
        };
        // Not bounded by the command timeout: like the upload, it takes
        // time in proportion to the binary (a debug build is 150 MB).
        let out = match session
            .exec_on(channel.ok(), &cmd, Default::default())
            .await
        {
            Ok(child) => child.collect().await,
            Err(e) => {
                // The command never ran: nothing else removes the upload.
                let _ = self.sftp.remove_file(uploaded.as_str()).await;
                return Err(self.err(UploadError::Exec(e.kind)));
            }
        };
        if !out.status.success() {
            let said = out.stderr.last().cloned().unwrap_or_default();
            return Err(self.err(UploadError::Unpack {
                path: format!("{}/{name}", cached.dir),
                tool: p.codec.tool(),
                status: out.status.to_string(),
                said,
            }));
        }
        Ok(sent)
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
        let mut src = self.source(local).await?;
        let t = transfer(size, opts);
        let (_, sent) = self.put(session, &mut src, (dir, name), t).await?;
        opts.uploaded.as_ref().inspect(|f| f());
        Ok(sent)
    }

    /// The local file `local`, opened to be uploaded.
    async fn source(&self, local: &Path) -> Result<tokio::fs::File, HostError<UploadError>> {
        tokio::fs::File::open(local).await.map_err(|source| {
            self.err(UploadError::Local {
                path: local.to_owned(),
                source,
            })
        })
    }

    /// Remove the cached binary and its directories (`--no-caching`), then
    /// `bin/` and the prefix if they are empty, then the directories above
    /// the prefix that the upload created (e.g. `~/.cache`), innermost
    /// first, each only if empty: one that holds anything now, or that was
    /// there before, stays.
    pub async fn remove_binary(&self, cached: &CachedBinary) -> Result<(), HostError<UploadError>> {
        self.remove_flat_dir(&cached.dir)
            .await
            .map_err(|k| self.err(k))?;
        self.remove_if_empty(&format!("{}/bin", cached.prefix))
            .await;
        self.remove_if_empty(&cached.prefix).await;
        for dir in cached.created.iter().rev() {
            self.remove_if_empty(dir).await;
        }
        Ok(())
    }
}

/// A cache prefix made usable on a host ([`Sftp::usable_prefix`]).
pub(super) struct Usable {
    /// Its real path.
    pub real: String,
    /// Whether it is the private `/tmp` directory, the prefix asked for
    /// being unusable.
    pub fallback: bool,
    /// The directories above it that this call created, outermost first.
    pub created: Vec<String>,
    /// Whether this call made the deepest directory asked for: nothing can
    /// be in it yet.
    pub fresh: bool,
}

/// `prefix/sub...`, each a private directory inside the one before.
fn private_subs(prefix: &str, subs: &[&str]) -> Vec<(String, Place)> {
    let mut path = prefix.to_owned();
    let mut out = Vec::new();
    for s in subs {
        path = join(&path, s);
        out.push((path.clone(), Place::Private));
    }
    out
}

/// An upload of `size` bytes that reports to `opts`' progress and stops
/// with its token.
fn transfer(size: u64, opts: &CacheOptions) -> Transfer<'_> {
    Transfer {
        size,
        progress: opts.progress.as_ref(),
        cancel: opts.cancel.as_ref(),
    }
}

/// The login user's uid on the host and the codecs it has: one command
/// ([`PROBE_COMMAND`]), run once per connection. A caller may start it
/// while the SFTP session opens, so it costs no round trip of its own.
pub async fn probe(session: &Session) -> Result<&HostProbe, UploadError> {
    let ask = || async {
        let out = session
            .run(PROBE_COMMAND)
            .await
            .map_err(|e| UploadError::Exec(e.kind))?;
        match HostProbe::parse(&out.stdout) {
            Some(p) if out.status.success() => Ok(p),
            _ => {
                let line = out.stdout.first().map(|l| l.trim()).unwrap_or_default();
                Err(UploadError::NoUid(line.to_owned()))
            }
        }
    };
    session.probe.get_or_try_init(ask).await
}

/// `path` (absolute) split into its parent and its last name; `..` is
/// refused (the walk up from a prefix must stay lexical), `.` dropped.
fn split_prefix(path: &str) -> Result<(String, String), UploadError> {
    let bad = || UploadError::BadPrefix(path.to_owned());
    let mut names = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => names.push(n.to_str().ok_or_else(bad)?),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if !path.starts_with('/') {
        return Err(bad());
    }
    let name = names.pop().ok_or_else(bad)?.to_owned();
    Ok((format!("/{}", names.join("/")), name))
}

/// `dir/name`, without doubling the root's slash.
fn join(dir: &str, name: &str) -> String {
    match dir {
        "/" => format!("/{name}"),
        d => format!("{d}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_lexically_and_refuse_dot_dot() {
        let split = |p: &str| split_prefix(p).ok();
        assert_eq!(split("/a/b/c"), Some(("/a/b".into(), "c".into())));
        assert_eq!(split("/a//./b/"), Some(("/a".into(), "b".into())));
        assert_eq!(split("/top"), Some(("/".into(), "top".into())));
        for bad in ["/", "/a/../b", "rel/a", ""] {
            assert!(split(bad).is_none(), "{bad}");
        }
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
