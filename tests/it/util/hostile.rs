//! The attacker of the trust tests (#13): the real unprivileged user
//! `nobody`, running real processes, in a scratch area it can reach.
//!
//! Tests run as root. [`Area`] is a root-owned `0755` directory under
//! `/tmp` (the fleet's own directory is `0700`, out of nobody's reach), so
//! that a test can hand nobody a directory there, or let it write one that
//! is open to it, and then check that mgmt, as root, refuses to use it.
//! [`as_nobody`] runs a shell script with nobody's uid and gid.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// nobody's uid and primary gid.
pub fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody")
        .expect("read passwd")
        .expect("no user nobody on this machine");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Runs `script` with `sh -c` as nobody, to completion; panics if it fails.
pub fn as_nobody(script: &str) {
    let (uid, gid) = nobody();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run a shell as nobody");
    assert!(
        out.status.success(),
        "as nobody: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory under `/tmp` that nobody can reach (root, `0755`);
/// removed on drop.
pub struct Area {
    dir: tempfile::TempDir,
}

impl Area {
    pub fn new() -> Area {
        let dir = tempfile::Builder::new()
            .prefix("mgmt-hostile-")
            .tempdir_in("/tmp")
            .expect("scratch dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Area { dir }
    }

    /// `<area>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The marker a planted `mgmt` writes when it runs.
    pub fn marker(&self) -> PathBuf {
        self.path("planted-mgmt-ran")
    }

    /// A directory `<area>/<name>` made by root with `mode`, then given to
    /// `owner` (uid, gid).
    pub fn dir(&self, name: &str, mode: u32, owner: (u32, u32)) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1)).expect("chown");
        p
    }

    /// As nobody: puts at `<prefix>/bin/<sha>/mgmt` a script of `size`
    /// bytes that writes [`Area::marker`] if it is ever run. Returns its path.
    pub fn plant(&self, prefix: &Path, sha: &str, size: usize) -> PathBuf {
        let dir = prefix.join("bin").join(sha);
        let bin = dir.join("mgmt");
        as_nobody(&format!(
            "mkdir -p '{d}' && printf '#!/bin/sh\\ntouch {m}\\nexit 0\\n' > '{b}' \
             && truncate -s {size} '{b}' && chmod 755 '{b}'",
            d = dir.display(),
            m = self.marker().display(),
            b = bin.display(),
        ));
        bin
    }
}

/// A path's owner and permission bits, to see that nothing adopted it.
pub fn owner_and_mode(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).expect("stat");
    (md.uid(), md.mode() & 0o7777)
}

/// Every file under `dir` (not following links), recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Whether any file under `dir` contains `needle` (read in chunks, so the
/// cached binaries are searched too without holding them whole).
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    use std::io::Read;
    for f in files_under(dir) {
        let Ok(mut file) = std::fs::File::open(&f) else {
            continue;
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = file.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            if carry.windows(needle.len()).any(|w| w == needle) {
                return Some(f);
            }
            let keep = carry.len().saturating_sub(needle.len());
            carry.drain(..keep);
        }
    }
    None
}
