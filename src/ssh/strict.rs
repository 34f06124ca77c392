//! Whether a directory on the way to the binary cache, or the cached binary
//! itself, can be trusted: OpenSSH's StrictModes rule applied to what SFTP
//! `lstat` reports (see #13).
//!
//! A path is only as safe as every directory above it: whoever can write
//! one of them can rename the next one away and put their own in its place,
//! between our hash check and the `exec`. So every directory from `/` down
//! to the cached binary and the per-run files must be owned by the login
//! user or root and not writable by group or others, and none may be a
//! symbolic link. One exception, for ancestors only: a root-owned directory
//! with the sticky bit (`/tmp`, mode 1777) is accepted, because in it only
//! the owner of an entry (or root) may rename or remove that entry, so the
//! private directory we own inside it cannot be swapped. The cache's own
//! directories ([`Place::Private`]) get no such exception: they are ours
//! alone, `0700`.
//!
//! This module only judges one set of attributes; walking a path, creating
//! what is missing and reporting errors is [`super::cache`]'s.

use russh_sftp::protocol::FileAttributes;

/// Where an entry sits on the way to the cached binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A directory above the cache prefix (`/`, `/home`, the home, `~/.cache`):
    /// used as it is, never chmodded.
    Ancestor,
    /// The prefix or a directory below it (`bin/`, `run/<id>/`): ours, `0700`.
    Private,
    /// The cached binary.
    Binary,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ancestor => "the directory above the cache",
            Self::Private => "the cache directory",
            Self::Binary => "the cached binary",
        })
    }
}

/// Why an entry cannot be trusted; each says what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Someone else owns it.
    #[error("is owned by uid {owner}, neither the login user (uid {login}) nor root")]
    Owner {
        /// Its owner.
        owner: u32,
        /// The login user's uid.
        login: u32,
    },
    /// Group or others may write it.
    #[error("is writable by group or others (mode {mode:04o})")]
    Writable {
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link where a real directory or file must be.
    #[error("is a symbolic link")]
    Symlink,
    /// Not a directory where one must be.
    #[error("is not a directory")]
    NotDir,
    /// Not a regular file where the binary must be.
    #[error("is not a regular file")]
    NotFile,
    /// The SFTP server did not report the owner or the mode.
    #[error("has no owner or mode in the sftp server's answer")]
    Unknown,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Whether `md` is a directory (not a link to one).
pub fn is_dir(md: &FileAttributes) -> bool {
    md.permissions.is_some_and(|p| p & S_IFMT == S_IFDIR)
}

/// Judges one entry's `lstat` attributes for `place`, the login user being
/// `login`.
pub fn judge(md: &FileAttributes, login: u32, place: Place) -> Result<(), Untrusted> {
    let (Some(owner), Some(perm)) = (md.uid, md.permissions) else {
        return Err(Untrusted::Unknown);
    };
    // The file type by its S_IFMT bits: russh-sftp's `is_regular()` tests
    // bits, and a symlink's type (0o120000) contains a regular file's.
    match (perm & S_IFMT, place) {
        (S_IFLNK, _) => return Err(Untrusted::Symlink),
        (S_IFDIR, Place::Ancestor | Place::Private) | (S_IFREG, Place::Binary) => {}
        (_, Place::Binary) => return Err(Untrusted::NotFile),
        _ => return Err(Untrusted::NotDir),
    }
    if owner != login && owner != 0 {
        return Err(Untrusted::Owner { owner, login });
    }
    let mode = perm & 0o7777;
    let shared_sticky = place == Place::Ancestor && owner == 0 && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !shared_sticky {
        return Err(Untrusted::Writable { mode });
    }
    Ok(())
}

/// What to do about `why` at `path`: a sentence for a hint.
pub fn remedy(path: &str, place: Place, why: &Untrusted) -> String {
    let rule = "every directory from / down to the cache must be owned by the login user \
                or root and not writable by group or others (OpenSSH's StrictModes rule; \
                a root-owned sticky directory like /tmp is accepted above the cache)";
    let what = match (place, why) {
        (_, Untrusted::Unknown) => {
            "the host's sftp server must report owners and modes (OpenSSH's does)".to_owned()
        }
        (Place::Ancestor, Untrusted::Owner { .. } | Untrusted::Writable { .. }) => format!(
            "fix {path} on the host (chown root or the login user; chmod go-w), \
             or use another cache prefix (--remote-prefix)"
        ),
        (_, Untrusted::Owner { login, .. }) => format!(
            "someone else may have put files in {path}: look, then remove it (rm -r {path}) \
             or give it to the login user (chown -R {login} {path}), \
             or use another cache prefix (--remote-prefix)"
        ),
        (_, Untrusted::Writable { .. }) => format!(
            "others may have put files in {path}: look, then remove it (rm -r {path}) \
             or chmod go-w {path}"
        ),
        (_, Untrusted::Symlink) => format!(
            "replace the link {path} with a real directory, or use the real path as the \
             cache prefix (--remote-prefix)"
        ),
        (_, Untrusted::NotDir | Untrusted::NotFile) => {
            format!("move {path} away, or use another cache prefix (--remote-prefix)")
        }
    };
    format!("{what}; {rule}")
}

/// Every directory from `/` down to `path` (absolute), `/` first:
/// `/a/b` gives `/`, `/a`, `/a/b`.
pub fn chain(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_owned()];
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attributes of a directory (or, with `file`, a regular file).
    fn attrs(uid: u32, mode: u32, kind: u32) -> FileAttributes {
        FileAttributes {
            uid: Some(uid),
            permissions: Some(kind | mode),
            ..FileAttributes::empty()
        }
    }
    const DIR: u32 = S_IFDIR;
    const FILE: u32 = S_IFREG;
    const LINK: u32 = S_IFLNK;

    #[test]
    fn owners_other_than_the_login_user_or_root_are_refused() {
        assert_eq!(
            judge(&attrs(1000, 0o700, DIR), 1000, Place::Private),
            Ok(())
        );
        assert_eq!(judge(&attrs(0, 0o755, DIR), 1000, Place::Ancestor), Ok(()));
        assert_eq!(
            judge(&attrs(65534, 0o700, DIR), 0, Place::Private),
            Err(Untrusted::Owner {
                owner: 65534,
                login: 0
            })
        );
        assert_eq!(
            judge(&attrs(65534, 0o755, DIR), 1000, Place::Ancestor),
            Err(Untrusted::Owner {
                owner: 65534,
                login: 1000
            })
        );
        assert_eq!(
            judge(&attrs(65534, 0o700, FILE), 0, Place::Binary),
            Err(Untrusted::Owner {
                owner: 65534,
                login: 0
            })
        );
    }

    #[test]
    fn group_or_world_writable_is_refused_except_root_sticky_above() {
        for mode in [0o770, 0o707, 0o777, 0o720] {
            assert_eq!(
                judge(&attrs(0, mode, DIR), 0, Place::Private),
                Err(Untrusted::Writable { mode }),
                "{mode:o}"
            );
        }
        // /tmp: accepted above the cache, never as the cache itself.
        assert_eq!(judge(&attrs(0, 0o1777, DIR), 0, Place::Ancestor), Ok(()));
        assert_eq!(
            judge(&attrs(0, 0o1777, DIR), 0, Place::Private),
            Err(Untrusted::Writable { mode: 0o1777 })
        );
        // A sticky directory someone else could own is not /tmp.
        assert_eq!(
            judge(&attrs(1000, 0o1777, DIR), 1000, Place::Ancestor),
            Err(Untrusted::Writable { mode: 0o1777 })
        );
        // Without the sticky bit a world-writable root directory is open.
        assert_eq!(
            judge(&attrs(0, 0o777, DIR), 1000, Place::Ancestor),
            Err(Untrusted::Writable { mode: 0o777 })
        );
        assert_eq!(
            judge(&attrs(0, 0o775, FILE), 0, Place::Binary),
            Err(Untrusted::Writable { mode: 0o775 })
        );
    }

    #[test]
    fn links_wrong_kinds_and_missing_attributes_are_refused() {
        assert_eq!(
            judge(&attrs(0, 0o777, LINK), 0, Place::Ancestor),
            Err(Untrusted::Symlink)
        );
        assert_eq!(
            judge(&attrs(0, 0o700, FILE), 0, Place::Private),
            Err(Untrusted::NotDir)
        );
        assert_eq!(
            judge(&attrs(0, 0o700, DIR), 0, Place::Binary),
            Err(Untrusted::NotFile)
        );
        assert_eq!(
            judge(&FileAttributes::empty(), 0, Place::Ancestor),
            Err(Untrusted::Unknown)
        );
    }

    #[test]
    fn the_chain_runs_from_the_root_down() {
        assert_eq!(chain("/"), ["/"]);
        assert_eq!(chain("/a//b/"), ["/", "/a", "/a/b"]);
        let why = Untrusted::Owner {
            owner: 65534,
            login: 0,
        };
        let hint = remedy("/srv/c", Place::Private, &why);
        assert!(hint.contains("rm -r /srv/c") && hint.contains("chown -R 0 /srv/c"));
        assert!(hint.contains("StrictModes"), "{hint}");
    }
}
