//! Reaching a path on the host without following a symbolic link that the
//! graph did not ask for (issue #13).
//!
//! A resource never acts twice on a path string. It opens the directory
//! that holds its target one component at a time from `/`, then works
//! relative to that open directory (`openat`, `mkdirat`, `renameat`,
//! `unlinkat`), and on the target only through what it opened
//! (`O_NOFOLLOW`, then `fstat`, `fchown`, `fchmod` on the descriptor), as
//! OpenSSH and coreutils do. A user who can write a directory on the way
//! can swap names in it, but cannot make mgmt act on another file.
//!
//! Links: the target itself is never followed (a link there is refused,
//! and the error names it). A link among the directories on the way is
//! followed only when root or the user mgmt runs as owns it, since only
//! they could have made it (`/lib -> usr/lib` on a merged-/usr system);
//! one owned by anyone else is refused. What this module does not decide:
//! what to write, or which mode and owner; the resource does.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

/// Links followed on the way to one target before giving up (the
/// kernel's own limit).
const MAX_LINKS: usize = 40;

/// Why a path could not be reached or acted on safely.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "{} is a symbolic link{}; refusing to follow it (hint: set path to the file it leads to if that is the one to manage, or remove the link (rm {}) so that a plain file can take its place)",
        .link.display(),
        leads_to(.to.as_deref()),
        .link.display()
    )]
    Symlink { link: PathBuf, to: Option<PathBuf> },
    #[error(
        "{} is a symbolic link owned by uid {owner}, on the way to {}; refusing to follow it, as only links owned by root or by the user mgmt runs as are followed (hint: if the link is wanted, have root own it (chown -h root {}) or set path to where it leads)",
        .link.display(),
        .target.display(),
        .link.display()
    )]
    UntrustedLink {
        link: PathBuf,
        owner: u32,
        target: PathBuf,
    },
    #[error("{} is not a directory, on the way to {}", .path.display(), .target.display())]
    NotDirectory { path: PathBuf, target: PathBuf },
    #[error(
        "{} does not exist, on the way to {} (hint: set parents: true on the resource to create it, or declare {}/ as a file resource with an edge to this one)",
        .path.display(),
        .target.display(),
        .path.display()
    )]
    Missing { path: PathBuf, target: PathBuf },
    #[error("more than {MAX_LINKS} symbolic links on the way to {}", .target.display())]
    TooManyLinks { target: PathBuf },
    #[error("{} names no file (it ends in / or ..); give the path of a file or directory", .target.display())]
    NoName { target: PathBuf },
    #[error(
        "{} has {links} hard links; refusing to change the owner or mode of a file that also lives elsewhere (hint: remove the other links, or remove this one so that a new file is written)",
        .path.display()
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn leads_to(to: Option<&Path>) -> String {
    to.map(|t| format!(" to {}", t.display()))
        .unwrap_or_default()
}

fn io(action: &'static str, path: &Path, e: impl Into<std::io::Error>) -> PathError {
    PathError::Io {
        action,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Whether a link owned by `uid` may be followed: only root and the user
/// mgmt runs as can have made it.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// One step of the walk.
enum Step {
    Root,
    Up,
    Name(OsString),
}

/// The steps of `path`, last first (the walk pops them).
fn steps(path: &Path) -> Vec<Step> {
    let mut out: Vec<Step> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(Step::Root),
            Component::ParentDir => Some(Step::Up),
            Component::Normal(n) => Some(Step::Name(n.to_owned())),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    out.reverse();
    out
}

/// The directory that holds a target, open, and the target's name in it:
/// every action on the target goes through this.
pub struct Parent {
    dir: OwnedFd,
    name: OsString,
    /// The whole target as written, for messages.
    target: PathBuf,
}

/// Where a walk ended.
pub enum Reached {
    /// The directory that holds the target.
    Open(Parent),
    /// This directory on the way does not exist (and was not created).
    Absent(PathBuf),
}

/// Opens the directory that holds `target` (absolute), walking from `/`.
/// With `create`, missing directories are made (mode 0755, less the
/// umask) and pushed on `created`.
pub fn open_parent(
    target: &Path,
    create: bool,
    created: &mut Vec<PathBuf>,
) -> Result<Reached, PathError> {
    let name = target.file_name().ok_or_else(|| PathError::NoName {
        target: target.to_owned(),
    })?;
    let root = Path::new("/");
    let top = || open_dir(nix::fcntl::AT_FDCWD, OsStr::new("/"), root);
    let mut dir = top()?;
    let mut here = root.to_owned();
    let mut todo = steps(target.parent().unwrap_or(root));
    let (mut links, mut made) = (0, false);
    while let Some(step) = todo.pop() {
        let c = match step {
            Step::Root => {
                (dir, here) = (top()?, root.to_owned());
                continue;
            }
            Step::Up => {
                dir = open_dir(&dir, OsStr::new(".."), &here)?;
                here.pop();
                continue;
            }
            Step::Name(c) => c,
        };
        let shown = here.join(&c);
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&dir, c.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create && !made => {
                make_dir(&dir, &c, shown, created)?;
                made = true;
                todo.push(Step::Name(c));
                continue;
            }
            Err(Errno::ENOENT) => return Ok(Reached::Absent(shown)),
            Err(e) => return Err(io("open", &shown, e)),
        };
        made = false;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| io("stat", &shown, e))?;
        match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => (dir, here) = (fd, shown),
            nix::libc::S_IFLNK => {
                links += 1;
                todo.extend(follow(&fd, &st, shown, target, links)?);
            }
            _ => {
                return Err(PathError::NotDirectory {
                    path: shown,
                    target: target.to_owned(),
                })
            }
        }
    }
    Ok(Reached::Open(Parent {
        dir,
        name: name.to_owned(),
        target: target.to_owned(),
    }))
}

/// Creates the missing directory `name` in `dir` (a race with another
/// creator is fine: the walk opens what is there, with the same checks).
fn make_dir(
    dir: &OwnedFd,
    name: &OsStr,
    shown: PathBuf,
    created: &mut Vec<PathBuf>,
) -> Result<(), PathError> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => created.push(shown),
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(io("create directory", &shown, e)),
    }
    Ok(())
}

/// The steps a link on the way leads to, when it may be followed: the
/// `links`-th one on the way to `target`, opened as `fd` (`O_PATH`), with
/// `st` from `fstat` on it, so the owner checked is the link read.
fn follow(
    fd: &OwnedFd,
    st: &nix::sys::stat::FileStat,
    shown: PathBuf,
    target: &Path,
    links: usize,
) -> Result<Vec<Step>, PathError> {
    if links > MAX_LINKS {
        return Err(PathError::TooManyLinks {
            target: target.to_owned(),
        });
    }
    if !trusted(st.st_uid) {
        return Err(PathError::UntrustedLink {
            link: shown,
            owner: st.st_uid,
            target: target.to_owned(),
        });
    }
    let to = nix::fcntl::readlinkat(fd, "").map_err(|e| io("read link", &shown, e))?;
    Ok(steps(Path::new(&to)))
}

/// Opens the directory `name` under `at` (`..` included) to walk on.
fn open_dir(at: impl AsFd, name: &OsStr, shown: &Path) -> Result<OwnedFd, PathError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::openat(at, name, flags, Mode::empty()).map_err(|e| io("open directory", shown, e))
}

/// The target, opened without following it, and what `fstat` said of it.
pub struct Opened {
    file: std::fs::File,
    meta: std::fs::Metadata,
    path: PathBuf,
}

impl Opened {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }

    pub fn is_file(&self) -> bool {
        self.meta.is_file()
    }

    pub fn mode(&self) -> u32 {
        self.meta.mode() & 0o7777
    }

    pub fn uid(&self) -> u32 {
        self.meta.uid()
    }

    pub fn gid(&self) -> u32 {
        self.meta.gid()
    }

    /// Whether it is a regular file holding exactly `want`; reads at most
    /// `want.len() + 1` bytes, and nothing when the sizes differ.
    pub fn holds(&mut self, want: &[u8]) -> Result<bool, PathError> {
        if !self.is_file() || self.meta.len() != want.len() as u64 {
            return Ok(false);
        }
        let mut have = Vec::with_capacity(want.len() + 1);
        (&mut self.file)
            .take(want.len() as u64 + 1)
            .read_to_end(&mut have)
            .map_err(|e| io("read", &self.path, e))?;
        Ok(have == want)
    }

    /// Refuses a change of owner or mode on a regular file with other
    /// hard links: the change would reach every name of it.
    pub fn check_single_link(&self) -> Result<(), PathError> {
        match self.meta.nlink() {
            n if self.is_file() && n > 1 => Err(PathError::HardLinked {
                path: self.path.clone(),
                links: n,
            }),
            _ => Ok(()),
        }
    }

    /// `fchown` on what was opened; then what `fstat` says (a change of
    /// owner clears the set-id bits).
    pub fn chown(&mut self, uid: Option<u32>, gid: Option<u32>) -> Result<(), PathError> {
        std::os::unix::fs::fchown(&self.file, uid, gid).map_err(|e| io("chown", &self.path, e))?;
        self.meta = self
            .file
            .metadata()
            .map_err(|e| io("stat", &self.path, e))?;
        Ok(())
    }

    /// `fchmod` on what was opened.
    pub fn chmod(&self, mode: u32) -> Result<(), PathError> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("chmod", &self.path, e))
    }
}

/// The attributes of a file written by [`Parent::replace`].
pub struct NewFile<'a> {
    pub data: &'a [u8],
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A failed `fchown` is an error (else it is ignored: keeping a
    /// previous owner is only possible for root).
    pub owner_required: bool,
}

/// A temporary file in the target's directory, removed unless renamed.
struct Temp<'a> {
    dir: &'a OwnedFd,
    name: Option<OsString>,
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = nix::unistd::unlinkat(
                self.dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

impl Parent {
    /// What is at the target, not following a link: `None` when nothing.
    pub fn lstat(&self) -> Result<Option<nix::sys::stat::FileStat>, PathError> {
        match nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io("stat", &self.target, e)),
        }
    }

    /// Opens the target itself for reading, never through a link (which
    /// is refused, naming it); `None` when nothing is there. A FIFO does
    /// not block the open.
    pub fn open(&self) -> Result<Option<Opened>, PathError> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.dir, self.name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                let to = nix::fcntl::readlinkat(&self.dir, self.name.as_os_str()).ok();
                return Err(PathError::Symlink {
                    link: self.target.clone(),
                    to: to.map(PathBuf::from),
                });
            }
            Err(e) => return Err(io("open", &self.target, e)),
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| io("stat", &self.target, e))?;
        Ok(Some(Opened {
            file,
            meta,
            path: self.target.clone(),
        }))
    }

    /// Makes the target a new directory with `mode` (less the umask).
    pub fn mkdir(&self, mode: u32) -> Result<(), PathError> {
        nix::sys::stat::mkdirat(
            &self.dir,
            self.name.as_os_str(),
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| io("create directory", &self.target, e))
    }

    /// Removes the target (a link itself, never what it leads to).
    pub fn remove(&self, dir: bool) -> Result<(), PathError> {
        let flag = if dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&self.dir, self.name.as_os_str(), flag)
            .map_err(|e| io("remove", &self.target, e))
    }

    /// Replaces the target atomically: a new file in the same directory,
    /// owner then mode set on its descriptor (a change of owner clears
    /// set-id bits), data written, then renamed over the target. A reader
    /// never sees half a file, and a link at the target is replaced, not
    /// followed.
    pub fn replace(&self, new: &NewFile) -> Result<(), PathError> {
        let (fd, temp) = self.temp_file()?;
        let mut file = std::fs::File::from(fd);
        let shown = self
            .target
            .with_file_name(temp.name.as_deref().unwrap_or_default());
        if new.uid.is_some() || new.gid.is_some() {
            let owned = std::os::unix::fs::fchown(&file, new.uid, new.gid);
            if new.owner_required {
                owned.map_err(|e| io("chown", &shown, e))?;
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(new.mode))
            .map_err(|e| io("chmod", &shown, e))?;
        file.write_all(new.data)
            .map_err(|e| io("write", &shown, e))?;
        drop(file);
        self.rename_over(temp)
    }

    fn rename_over(&self, mut temp: Temp) -> Result<(), PathError> {
        let name = temp.name.clone().unwrap_or_default();
        nix::fcntl::renameat(
            &self.dir,
            name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(|e| io("rename into", &self.target, e))?;
        temp.name = None;
        Ok(())
    }

    /// Creates `.mgmt-XXXXXXXXXX` (mode 0600) next to the target.
    fn temp_file(&self) -> Result<(OwnedFd, Temp<'_>), PathError> {
        use rand::distr::{Alphanumeric, SampleString};
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut tries = 0;
        loop {
            let name = OsString::from(format!(
                ".mgmt-{}",
                Alphanumeric.sample_string(&mut rand::rng(), 10)
            ));
            match nix::fcntl::openat(
                &self.dir,
                name.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    let temp = Temp {
                        dir: &self.dir,
                        name: Some(name),
                    };
                    return Ok((fd, temp));
                }
                Err(Errno::EEXIST) if tries < 8 => tries += 1,
                Err(e) => {
                    let dir = self.target.parent().unwrap_or(Path::new("/"));
                    return Err(io("create a temporary file in", dir, e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(target: &Path, create: bool) -> Result<Reached, PathError> {
        open_parent(target, create, &mut Vec::new())
    }

    fn parent(target: &Path) -> Parent {
        match open(target, false) {
            Ok(Reached::Open(p)) => p,
            Ok(Reached::Absent(d)) => panic!("{} absent", d.display()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_link_at_the_target_is_refused_and_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("real"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let e = parent(&d.path().join("link"))
            .open()
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(matches!(e, PathError::Symlink { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "{} is a symbolic link to {}; refusing to follow it (hint: ",
                d.path().join("link").display(),
                d.path().join("real").display()
            )),
            "{msg}"
        );
        // Removing it removes the link, not what it leads to.
        parent(&d.path().join("link")).remove(false).unwrap();
        assert!(d.path().join("real").exists());
    }

    #[test]
    fn links_on_the_way_are_followed_only_when_trusted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", d.path().join("mine")).unwrap();
        // Made by the user running the test: followed, relative target too.
        let mut have = parent(&d.path().join("mine/f")).open().unwrap().unwrap();
        assert!(have.holds(b"x").unwrap());
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: cannot give a link to another user; skipped");
            return;
        }
        std::os::unix::fs::symlink("real", d.path().join("theirs")).unwrap();
        std::os::unix::fs::lchown(d.path().join("theirs"), Some(65534), Some(65534)).unwrap();
        match open(&d.path().join("theirs/f"), false) {
            Err(PathError::UntrustedLink { link, owner, .. }) => {
                assert_eq!((link, owner), (d.path().join("theirs"), 65534));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("followed a link owned by uid 65534"),
        }
    }

    #[test]
    fn missing_directories_are_created_only_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a/b/f");
        assert!(matches!(open(&target, false), Ok(Reached::Absent(p)) if p == d.path().join("a")));
        let mut made = Vec::new();
        let Ok(Reached::Open(p)) = open_parent(&target, true, &mut made) else {
            panic!("not reached");
        };
        assert_eq!(made, [d.path().join("a"), d.path().join("a/b")]);
        p.replace(&NewFile {
            data: b"new\n",
            mode: 0o640,
            uid: None,
            gid: None,
            owner_required: false,
        })
        .unwrap();
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(&target).unwrap(), b"new\n");
        // Nothing but the file: the temporary name is gone.
        assert_eq!(std::fs::read_dir(d.path().join("a/b")).unwrap().count(), 1);
        // A file on the way is not a directory.
        let e = open(&target.join("g"), true).err().expect("refused");
        assert!(matches!(e, PathError::NotDirectory { .. }), "{e}");
    }

    #[test]
    fn hard_links_block_owner_and_mode_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let one = parent(&d.path().join("f")).open().unwrap().unwrap();
        assert!(one.check_single_link().is_ok());
        std::fs::hard_link(d.path().join("f"), d.path().join("g")).unwrap();
        let two = parent(&d.path().join("f")).open().unwrap().unwrap();
        let e = two.check_single_link().expect_err("refused");
        assert!(matches!(e, PathError::HardLinked { links: 2, .. }), "{e}");
    }
}
