//! The system kinds (issue #16) against the real tools, each run of `mgmt`
//! inside a mount namespace of its own whose system directories are
//! temporary copies, so the machine's own accounts and package database are
//! never touched. `pkg` is tested against dpkg/apt (`pkg.rs`) and, in a
//! namespace that looks like Fedora, rpm/dnf 4 (`pkg_dnf.rs`) and, chrooted
//! into a root of its own (`scripts/test-roots.sh`), rpm/dnf 5
//! (`pkg_dnf5.rs`).
//!
//! Whole directories are bound (a copy of `/etc`, not of `/etc/passwd`
//! alone): the shadow tools and dpkg replace a database by writing a new
//! file and renaming it over the old one, and a rename over a bind-mounted
//! file fails (EBUSY). The namespace ends with the process that made it, so
//! nothing outlives a test; `unshare` execs `mgmt` itself (no fork), so the
//! run's pid is mgmt's and the `Proc` guard stops it by that pid.

mod accounts;
mod pkg;
mod pkg_dnf;
mod pkg_dnf5;
mod svc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{mgmt, Dir, Output};

pub const LIMIT: Duration = Duration::from_secs(120);

/// Temporary copies of system directories, bound over the real ones in
/// each command run through [`Sandbox::command`].
pub struct Sandbox {
    pub dir: Dir,
    /// (temporary directory, the system directory it stands for)
    binds: Vec<(PathBuf, &'static str)>,
    /// The root file system commands run chrooted into, if not the
    /// machine's: the binds are made under it, and `/tmp` (where the
    /// sandbox's own files are) is the machine's.
    root: Option<PathBuf>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: Dir::new(),
            binds: Vec::new(),
            root: None,
        }
    }

    /// A sandbox whose commands run chrooted into `root`, which they never
    /// change: every directory a test writes must be bound over. `mgmt` is
    /// the shipped static binary, copied in.
    pub fn chrooted(root: PathBuf) -> Sandbox {
        let mut s = Sandbox::new();
        s.binds.push((PathBuf::from("/tmp"), "/tmp"));
        s.root = Some(root);
        std::fs::copy(crate::util::shipped(), s.dir.path().join("mgmt")).expect("copy mgmt");
        s
    }

    fn slot(&self, target: &str) -> PathBuf {
        self.dir
            .path()
            .join(target.trim_start_matches('/').replace('/', "_"))
    }

    /// Binds a copy of `target` (which must exist) over it.
    pub fn copy(&mut self, target: &'static str) -> PathBuf {
        let slot = self.slot(target);
        let from = match &self.root {
            Some(root) => root.join(target.trim_start_matches('/')),
            None => PathBuf::from(target),
        };
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&slot)
            .status()
            .expect("run cp");
        assert!(ok.success(), "cp -a {target}");
        self.binds.push((slot.clone(), target));
        slot
    }

    /// Binds an empty directory over `target` (which must exist).
    pub fn empty(&mut self, target: &'static str) -> PathBuf {
        let slot = self.slot(target);
        std::fs::create_dir_all(&slot).expect("make a sandbox dir");
        self.binds.push((slot.clone(), target));
        slot
    }

    /// The file `path` (under a bound directory) as the sandbox sees it.
    pub fn path(&self, path: &str) -> PathBuf {
        let (slot, target) = self
            .binds
            .iter()
            .filter(|(_, t)| Path::new(path).starts_with(t))
            .max_by_key(|(_, t)| t.len())
            .unwrap_or_else(|| panic!("{path} is not in the sandbox"));
        let rest = Path::new(path).strip_prefix(target).expect("under target");
        slot.join(rest)
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path(path)).unwrap_or_default()
    }

    /// `program args...` in a new mount namespace with every bind made
    /// (and chrooted, with a `/proc`, into the sandbox's root if it has one).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
        c.arg(concat!(
            "root=$1; shift; ",
            "while [ \"$1\" != -- ]; do mount --bind \"$1\" \"$root$2\" || exit 97; shift 2; done; ",
            "shift; [ -z \"$root\" ] && exec \"$@\"; ",
            "mount -t proc proc \"$root/proc\" || exit 97; exec chroot \"$root\" \"$@\""
        ));
        c.arg("sandbox");
        c.arg(self.root.as_deref().unwrap_or(Path::new("")));
        for (slot, target) in &self.binds {
            c.arg(slot).arg(target);
        }
        c.arg("--").arg(program);
        c.stdin(std::process::Stdio::null()).env_remove("RUST_LOG");
        c
    }

    /// `mgmt run -t 1 [extra...] --file GRAPH` in the sandbox, to the end.
    pub fn run(&self, graph: &Path, extra: &[&str]) -> Output {
        let mgmt_bin = match self.root {
            Some(_) => self.dir.path().join("mgmt").into_os_string(),
            None => mgmt().get_program().to_owned(),
        };
        let mut c = self.command(Path::new(&mgmt_bin));
        c.args(["run", "--converged-timeout", "1"])
            .args(extra)
            .arg("--file")
            .arg(graph);
        crate::util::run(&mut c, LIMIT)
    }

    /// A tool run in the sandbox (to look at it as the system sees it).
    pub fn tool(&self, program: &str, args: &[&str]) -> std::process::Output {
        self.command(Path::new(program))
            .args(args)
            .output()
            .expect("run a tool in the sandbox")
    }
}

/// `mgmt run --file` refuses a graph: exit 2 and every needle in stderr.
pub fn refused(graph: &Path, needles: &[&str]) {
    let out = crate::util::run(mgmt().args(["run", "-t", "1", "--file"]).arg(graph), LIMIT);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "no {n:?} in:\n{}", out.stderr);
    }
}

/// Holds a POSIX record lock on the whole of `path` (created if missing),
/// the kind dpkg, apt and rpm take, until the returned file is dropped.
pub(crate) fn hold_record_lock(path: &std::path::Path) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let fl = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&lock, nix::fcntl::FcntlArg::F_SETLK(&fl)).expect("lock");
    lock
}
