//! The install stamp: how a start knows, without re-reading 11 MB, that
//! the cached binary is still the one whose SHA-256 was checked (#17).
//!
//! The binary's SHA-256 is computed on the host whenever it is put in place
//! ([`super::pack::unpack_command`]) and whenever a start finds no stamp
//! that matches. Right after a hash that matched, the host writes the
//! hash and the binary's identity to `mgmt.ok` beside it, as its own `stat`
//! prints it: device, inode, size, and the modification and change times to
//! the nanosecond (`%d %i %s %.9Y %.9Z`). Every later start compares the same
//! `stat` line with the stamp and runs the binary at once when they are
//! equal; otherwise it hashes the binary again, runs it only on a match,
//! and writes a new stamp.
//!
//! Why equal lines mean the same bytes: any write to the file, a rename
//! onto its name, a `chmod` or a new link moves its change time (ctime) to
//! the current time, and no unprivileged process can set a ctime back
//! (`utimensat` sets only the access and modification times). Only the
//! login user and root can write the checked directories at all
//! ([`super::strict`]), and only root can set the clock. What the stamp
//! does not see is a change below the filesystem (a failing disk), which
//! the hash at install and at every mismatch still does; a `stat` that
//! cannot print nanoseconds (not GNU coreutils or BusyBox) gives no stamp,
//! and every start hashes.
//!
//! The stamp is read by the shell's own `read`, and the one line is
//! compared as a whole; the fingerprint is taken before the hash, so a
//! write that races the hash leaves a stamp that no longer matches.

/// The stamp's file name, beside the binary.
pub const STAMP_NAME: &str = "mgmt.ok";

/// Shell code, run in the binary's directory: `./mgmt`'s `stat` line in
/// `$_vw` (`%d %i %s %.9Y %.9Z`), or nothing.
#[macro_export]
#[doc(hidden)]
macro_rules! stamp_line_sh {
    () => {
        "_vw=$(stat -c '%d %i %s %.9Y %.9Z' mgmt 2>/dev/null </dev/null) || _vw=;"
    };
}

/// Shell code that empties a `$_vw` that is not such a line (digits,
/// dots and spaces, with the two nanosecond times), then, if one is
/// left, writes `$s $_vw` to the stamp: private, through a temporary name,
/// in a subshell so the caller's umask stays; never failing.
#[macro_export]
#[doc(hidden)]
macro_rules! write_stamp_sh {
    (valid) => {
        "case $_vw in *[!0-9.\\ ]*) _vw=;; *.*.*) ;; *) _vw=;; esac;"
    };
    () => {
        concat!(
            "{ [ -z \"$_vw\" ] || (umask 077 && echo \"$s $_vw\" >.mgmt.ok.$$",
            " && mv -f .mgmt.ok.$$ mgmt.ok) 2>/dev/null || :; }"
        )
    };
}

/// Shell code, run in the binary's directory with the expected SHA-256 in
/// `$s` and `./mgmt`'s `stat` line (taken before) in `$_vw`, that succeeds
/// only when `./mgmt` is the binary with that hash: its stamp matches, or
/// its hash does (and then the stamp is written). Every name it sets
/// starts with `_v`.
#[macro_export]
#[doc(hidden)]
macro_rules! check_stamp_sh {
    () => {
        concat!(
            "{ ",
            $crate::write_stamp_sh!(valid),
            " { [ -n \"$_vw\" ] && read -r _vc <mgmt.ok && [ \"$_vc\" = \"$s $_vw\" ]; } 2>/dev/null",
            " || { { _vh=$(openssl dgst -sha256 -r mgmt 2>/dev/null </dev/null)",
            " || _vh=$(sha256sum mgmt 2>/dev/null </dev/null); } && [ \"${_vh%% *}\" = \"$s\" ]",
            " && ",
            $crate::write_stamp_sh!(),
            "; }; }"
        )
    };
}

/// Shell code, run in the binary's directory with the expected SHA-256 in
/// `$s`, that succeeds only when `./mgmt` is the binary with that hash
/// ([`check_stamp_sh!`] after one `stat`). One `stat` when the stamp
/// matches; `stat` and `openssl dgst` (or `sha256sum`) when it does not.
pub const VERIFY_SH: &str = concat!("{ ", stamp_line_sh!(), " ", check_stamp_sh!(), "; }");

/// Shell code, run in the binary's directory right after the hash of
/// `./mgmt` matched `$s`, that writes its stamp; it never fails (a host
/// with no stamp hashes at every start).
pub const WRITE_STAMP_SH: &str = concat!(
    "{ ",
    stamp_line_sh!(),
    " ",
    write_stamp_sh!(valid),
    " ",
    write_stamp_sh!(),
    "; }"
);

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::path::Path;

    /// Runs `script` with `/bin/sh` in `dir`, `PATH` set to `path` (None:
    /// the default); its exit status and stdout.
    fn sh_in(dir: &Path, script: &str, path: Option<&str>) -> (bool, String) {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let out = cmd.output().expect("sh");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success(), text)
    }

    /// Runs `VERIFY_SH` in `dir` expecting `sha`; true when it succeeded.
    fn verify(dir: &Path, sha: &str, path: Option<&str>) -> bool {
        sh_in(dir, &format!("s={sha} && {VERIFY_SH}"), path).0
    }

    /// A directory holding `mgmt` with `body`, and its hash.
    fn cache(body: &[u8]) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("mgmt"), body).expect("write");
        (dir, hex::encode(sha2::Sha256::digest(body)))
    }

    /// A PATH whose `openssl` and `sha256sum` fail the test if called.
    fn no_hash_tools(dir: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("tools");
        std::fs::create_dir(&bin).expect("mkdir");
        for tool in ["openssl", "sha256sum"] {
            let p = bin.join(tool);
            std::fs::write(&p, "#!/bin/sh\necho called >> \"$0.called\"\nexit 1\n").expect("w");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        format!("{}:/usr/bin:/bin", bin.display())
    }

    #[test]
    fn a_matching_hash_writes_a_stamp_that_later_starts_use_instead() {
        let (dir, sha) = cache(b"binary one");
        assert!(verify(dir.path(), &sha, None), "hash matches");
        let stamp = std::fs::read_to_string(dir.path().join(STAMP_NAME)).expect("stamp written");
        let fields: Vec<&str> = stamp.split_whitespace().collect();
        assert_eq!(fields.len(), 6, "{stamp}");
        assert_eq!(
            (fields[0], fields[3]),
            (sha.as_str(), "10"),
            "hash, size: {stamp}"
        );
        // With the hash tools broken, the stamp alone passes.
        let tools = tempfile::tempdir().expect("tmp");
        let path = no_hash_tools(tools.path());
        assert!(verify(dir.path(), &sha, Some(&path)), "stamp matches");
        assert!(!tools.path().join("tools/openssl.called").exists());
        // A stamp never vouches for another hash.
        assert!(!verify(dir.path(), &"0".repeat(64), Some(&path)));
    }

    #[test]
    fn any_write_to_the_binary_voids_its_stamp() {
        let (dir, sha) = cache(b"binary one");
        assert!(verify(dir.path(), &sha, None));
        let bin = dir.path().join("mgmt");
        let before = std::fs::metadata(&bin).expect("md");
        // Same size, and the modification time put back as it was: only the
        // change time tells.
        std::fs::write(&bin, b"binary two").expect("tamper");
        let mtime = filetime_of(&before);
        set_mtime(&bin, mtime);
        let tools = tempfile::tempdir().expect("tmp");
        let path = no_hash_tools(tools.path());
        assert!(
            !verify(dir.path(), &sha, Some(&path)),
            "stamp must not match"
        );
        assert!(
            tools.path().join("tools/openssl.called").exists(),
            "it hashed"
        );
        assert!(!verify(dir.path(), &sha, None), "and the hash is wrong");
        // A copy of the genuine bytes under the same name: a new inode and
        // ctime, so it is hashed (and passes) before it is trusted again.
        std::fs::remove_file(&bin).expect("rm");
        std::fs::write(&bin, b"binary one").expect("write");
        assert!(
            !verify(dir.path(), &sha, Some(&path)),
            "a new file is hashed first"
        );
        assert!(verify(dir.path(), &sha, None));
        assert!(verify(dir.path(), &sha, Some(&path)), "and then stamped");
    }

    #[test]
    fn a_stamp_that_is_not_the_stat_line_is_ignored() {
        let (dir, sha) = cache(b"binary one");
        let tools = tempfile::tempdir().expect("tmp");
        let path = no_hash_tools(tools.path());
        let line = |sha: &str| format!("{sha} 0 0 10 1.0 1.0");
        for forged in [String::new(), "x".into(), line(&sha), "\n".into()] {
            std::fs::write(dir.path().join(STAMP_NAME), &forged).expect("write");
            assert!(!verify(dir.path(), &sha, Some(&path)), "{forged:?}");
        }
        // A `stat` that cannot print nanoseconds: no stamp is written, and
        // every start hashes.
        std::fs::remove_file(dir.path().join(STAMP_NAME)).expect("rm");
        let fake = tools.path().join("stat");
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &fake,
            "#!/bin/sh\necho '2049 12 10 1796309308 1796309308'\n",
        )
        .expect("w");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let coarse = format!("{}:/usr/bin:/bin", tools.path().display());
        assert!(verify(dir.path(), &sha, Some(&coarse)));
        assert!(!dir.path().join(STAMP_NAME).exists());
    }

    #[test]
    fn the_stamp_is_private_and_the_umask_is_kept() {
        let (dir, sha) = cache(b"binary one");
        let script = format!("umask 022 && s={sha} && {VERIFY_SH} && umask");
        assert_eq!(sh_in(dir.path(), &script, None), (true, "0022".into()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STAMP_NAME))
            .expect("stamp")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn writing_a_stamp_never_fails_and_matches_what_verify_reads() {
        let (dir, sha) = cache(b"binary one");
        let write = format!("s={sha} && {WRITE_STAMP_SH}");
        assert!(sh_in(dir.path(), &write, None).0);
        let tools = tempfile::tempdir().expect("tmp");
        assert!(verify(dir.path(), &sha, Some(&no_hash_tools(tools.path()))));
        // With no binary to stat (and a directory nobody can write), it
        // writes nothing and still succeeds.
        assert!(sh_in(Path::new("/proc"), &write, None).0);
        assert!(!Path::new("/proc").join(STAMP_NAME).exists());
    }

    fn filetime_of(md: &std::fs::Metadata) -> std::time::SystemTime {
        md.modified().expect("mtime")
    }

    fn set_mtime(path: &Path, t: std::time::SystemTime) {
        let f = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        f.set_modified(t).expect("set mtime");
    }
}
