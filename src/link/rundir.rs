//! A child's per-run directory on its host (`<prefix>/run/<run-id>/`):
//! written by the child itself on a warm start (`--graph-stdin`, #17), and
//! removed by the child when its run ends, so that a child whose link was
//! cut leaves nothing behind.
//!
//! On a warm start the parent has checked everything down to the binary's
//! directory (`<prefix>/bin/<sha>`, see `ssh::warm`), so `<prefix>` is a
//! real directory that only this user and root can change. The child makes
//! `run/` and `run/<run-id>/` in it (`0700`), and a directory that is
//! already there is used only when it passes the same rule: a real
//! directory (no link), owned by this user or root, not writable by group
//! or others. The graph is written under a temporary name (`O_EXCL`, mode
//! `0600`) and renamed into place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The name of the graph in the run directory.
pub const GRAPH_NAME: &str = "graph.yaml";

/// Makes `dir` and its parent (`run/`) if missing, checks both, and writes
/// `graph` to `dir/graph.yaml`; returns that path.
pub fn write_graph(dir: &Path, graph: &[u8]) -> io::Result<PathBuf> {
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::other("the run directory has no parent"))?;
    private_dir(parent)?;
    private_dir(dir)?;
    let path = dir.join(GRAPH_NAME);
    let tmp = dir.join(format!(".{GRAPH_NAME}.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f.write_all(graph).and_then(|()| f.sync_data());
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

/// `dir`, made (`0700`) if missing, and judged: a real directory owned by
/// this user or root, not writable by group or others.
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if !md.file_type().is_dir() {
        Some("is not a directory (or is a symbolic link)".to_owned())
    } else if md.uid() != me && md.uid() != 0 {
        Some(format!("is owned by uid {}, not {me} or root", md.uid()))
    } else if md.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by group or others (mode {:04o})",
            md.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(io::Error::other(format!("{} {why}", dir.display()))),
        None => Ok(()),
    }
}

/// Removes the run directory: its files (no subdirectories are made
/// there), the directory, and `run/` above it if that is now empty.
/// Whatever fails is left for the parent's own cleanup, which tolerates a
/// directory already gone.
pub fn remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if fs::remove_dir(dir).is_ok() {
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_graph_lands_in_a_private_run_directory() {
        let top = tempfile::tempdir().expect("tmp");
        let dir = top.path().join("run").join("r1");
        let path = write_graph(&dir, b"resources: []\n").expect("written");
        assert_eq!(fs::read(&path).expect("read"), b"resources: []\n");
        for d in [top.path().join("run"), dir.clone()] {
            let mode = fs::metadata(&d).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        assert_eq!(
            fs::read_dir(&dir).expect("ls").count(),
            1,
            "no temporary left"
        );
        remove(&dir);
        assert!(!top.path().join("run").exists());
    }

    #[test]
    fn a_run_directory_others_can_change_is_refused() {
        let top = tempfile::tempdir().expect("tmp");
        let run = top.path().join("run");
        fs::create_dir(&run).expect("mkdir");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = write_graph(&run.join("r1"), b"x").expect_err("refused");
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert!(!run.join("r1").exists());
        // A link where the run directory should be is refused too.
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod");
        let elsewhere = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(elsewhere.path(), run.join("r2")).expect("link");
        let err = write_graph(&run.join("r2"), b"x").expect_err("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(elsewhere.path()).expect("ls").count(), 0);
    }
}
