//! Trust boundaries on the host (issue #13): a real `mgmt run` under attack
//! by the real unprivileged user `nobody` (commands run through `setpriv`),
//! or by another host's exports, or outliving a SIGKILLed mgmt.
//!
//! Each test checks the outcome on disk or in `/proc`, not only the log:
//! owner, mode and content of what the attacker aimed at; what lies outside
//! a collect pattern's directory; whether a command's descendants still
//! exist (a zombie counts as gone). Waits are on events (log lines, a
//! process's pidfd), each bounded by the test's [`Deadline`]; what a test
//! started is stopped by pid when it ends, passed or failed (`Proc` and
//! [`Tracked`] do it on drop). The tests run as root, as CI does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::Signal;

use crate::util::{mgmt, run, Dir, Proc};

/// The most one test may take, all waits together.
const BUDGET: Duration = Duration::from_secs(90);

/// The end of a test's time: every wait takes what is left of it.
struct Deadline(Instant);

impl Deadline {
    fn start() -> Deadline {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need root: they attack as the user nobody"
        );
        Deadline(Instant::now() + BUDGET)
    }

    fn left(&self) -> Duration {
        let left = self.0.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the test ran out of its {BUDGET:?}");
        left
    }
}

/// Runs `script` with `sh` as the unprivileged user nobody; it must succeed.
fn as_nobody(script: &str, deadline: &Deadline) {
    let out = run(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(["sh", "-c", script]),
        deadline.left(),
    );
    assert_eq!(out.code, 0, "as nobody: {script}: {}", out.stderr);
}

/// Owner, group, mode and content of a file, not following a link.
fn state_of(path: &Path) -> (u32, u32, u32, Option<String>) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = m.is_file().then(|| std::fs::read_to_string(path).unwrap());
    (m.uid(), m.gid(), m.mode() & 0o7777, content)
}

/// A file owned by root, as the attacker's target.
fn root_file(path: &Path, content: &str) -> (u32, u32, u32, Option<String>) {
    std::fs::write(path, content).unwrap();
    std::os::unix::fs::chown(path, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    state_of(path)
}

/// A directory owned by nobody (the attacker can write it) in `d`, which
/// nobody may traverse.
fn nobody_dir(d: &Dir, name: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let dir = d.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    dir.display().to_string()
}

/// `mgmt run` that never exits by itself (`-t -1`), with a hostname.
fn serve(graph: &Path, host: &str) -> Proc {
    Proc::spawn(
        mgmt()
            .args(["run", "--hostname", host, "-t", "-1", "--file"])
            .arg(graph),
    )
}

/// A managed file whose name the attacker can replace.
fn managed_graph(d: &Dir, path: &str) -> std::path::PathBuf {
    d.write(
        "g.yaml",
        &format!(
            "graph: managed\nresources:\n  file:\n  - name: managed\n    path: {path}\n    content: \"managed\\n\"\n    mode: \"0600\"\n    owner: nobody\n"
        ),
    )
}

// See: #13 (a symlink planted next to a managed file: the re-check
// chowned and chmodded its root-owned target)
#[test]
fn a_planted_symlink_is_refused_and_its_target_untouched() {
    let deadline = Deadline::start();
    let d = Dir::new();
    let shared = nobody_dir(&d, "shared");
    let victim = d.path().join("victim");
    let before = root_file(&victim, "root's own\n");
    let managed = format!("{shared}/managed");
    let mut p = serve(&managed_graph(&d, &managed), "h");
    p.wait_line("settled:", deadline.left());
    assert_eq!(
        state_of(Path::new(&managed)),
        (65534, 0, 0o600, Some("managed\n".into()))
    );
    // Atomically, as an attacker would: a link under another name, renamed
    // over the managed file. The watcher sees it and mgmt checks again.
    as_nobody(
        &format!(
            "ln -s {v} {shared}/.evil && mv -fT {shared}/.evil {managed}",
            v = victim.display()
        ),
        &deadline,
    );
    p.wait_line(
        &format!(
            "file[managed]: {managed} is a symbolic link to {}; refusing to follow it (hint: ",
            victim.display()
        ),
        deadline.left(),
    );
    assert_eq!(state_of(&victim), before, "the root-owned target changed");
    assert!(std::fs::symlink_metadata(&managed)
        .unwrap()
        .file_type()
        .is_symlink());
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(deadline.left()), 1, "a failed resource exits 1");
    assert_eq!(state_of(&victim), before);
}

// See: #13 (the same through a directory on the way: a link owned by the
// attacker is not followed, wherever it is in the path)
#[test]
fn a_planted_directory_link_on_the_way_is_refused() {
    let deadline = Deadline::start();
    let d = Dir::new();
    let shared = nobody_dir(&d, "shared");
    nobody_dir(&d, "shared/sub");
    std::fs::create_dir(d.path().join("rootdir")).unwrap();
    let victim = d.path().join("rootdir/managed");
    let before = root_file(&victim, "root's own\n");
    let managed = format!("{shared}/sub/managed");
    let mut p = serve(&managed_graph(&d, &managed), "h");
    p.wait_line("settled:", deadline.left());
    // The directory moved aside and a link in its place; then a poke at
    // the managed file, now under old/, which mgmt's watch followed (a
    // watch is on the directory itself), so that mgmt checks again.
    as_nobody(
        &format!(
            "mv {shared}/sub {shared}/old && ln -s {root} {shared}/sub && echo poke >> {shared}/old/managed",
            root = d.p("rootdir")
        ),
        &deadline,
    );
    p.wait_line(
        &format!(
            "file[managed]: {shared}/sub is a symbolic link owned by uid 65534, on the way to {managed}; refusing to follow it"
        ),
        deadline.left(),
    );
    assert_eq!(state_of(&victim), before, "the root-owned file changed");
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(deadline.left()), 1);
    assert_eq!(state_of(&victim), before);
}

/// Every entry of `dir` (not recursive) with owner, group and mode, and
/// `dir` itself as `.`; `skip` left out.
fn listing(dir: &Path, skip: &str) -> Vec<(String, u32, u32, u32)> {
    let of = |name: String, p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (name, m.uid(), m.gid(), m.mode())
    };
    let mut out = vec![of(".".into(), dir)];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name != skip {
            out.push(of(name, &e.path()));
        }
    }
    out.sort();
    out
}

// See: #13 (an export ending in /../ landed on the pattern's parent, which
// became 0777 nobody)
#[test]
fn collected_dot_dot_dot_and_empty_names_are_refused() {
    let deadline = Deadline::start();
    let d = Dir::new();
    let inbox = d.p("in");
    let collector = d.write(
        "a.yaml",
        &format!("graph: a\nresources:\n  noop: [{{name: n}}]\ncollect:\n- kind: file\n  pattern: {inbox}/\n"),
    );
    let hostile = d.write(
        "evil.yaml",
        "graph: evil\nresources:\n  file:\n  - name: \"@@dotdot\"\n    path: /tmp/../\n    mode: \"0777\"\n    owner: nobody\n  - name: \"@@dot\"\n    path: /tmp/./\n    mode: \"0777\"\n  - name: \"@@empty\"\n    path: /\n    mode: \"0777\"\n  - name: \"@@fine\"\n    path: /tmp/fine\n    content: \"fine\\n\"\n",
    );
    let before = listing(d.path(), "in");
    let mut a = serve(&collector, "a");
    let url = a.store_url(deadline.left());
    let mut evil = Proc::spawn(
        mgmt()
            .args(["run", "--hostname", "evil", "--no-server", "--seeds", &url])
            .args(["-t", "1", "--file"])
            .arg(&hostile),
    );
    assert_eq!(evil.wait(deadline.left()), 0, "{:?}", evil.lines_so_far());
    let said = |name: &str, path: &str, last: &str| {
        format!("cannot collect file[{name}] exported by host \"evil\" (/_mgmt/exported/evil/resources/file/{name}): its path \"{path}\" ends in \"{last}\"")
    };
    a.wait_all(
        &[
            &said("dotdot", "/tmp/../", ".."),
            &said("dot", "/tmp/./", "."),
            &said("empty", "/", ""),
            &format!("file[fine]: wrote 5 bytes to {inbox}/fine"),
        ],
        deadline.left(),
    );
    a.signal(Signal::SIGINT);
    assert_eq!(a.wait(deadline.left()), 0);
    assert_eq!(listing(d.path(), "in"), before, "outside the pattern dir");
    let inside: Vec<_> = listing(Path::new(&inbox), "")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(inside, [".", "fine"]);
}

// See: #13 (a missing pattern directory failed the host with "cannot
// create a temporary file")
#[test]
fn a_missing_pattern_directory_is_created() {
    let deadline = Deadline::start();
    let d = Dir::new();
    let inbox = d.p("deep/er/in");
    let g = d.write(
        "g.yaml",
        &format!("graph: a\nresources:\n  file:\n  - name: \"@@shared\"\n    path: /tmp/shared\n    content: \"shared\\n\"\ncollect:\n- kind: file\n  pattern: {inbox}/\n"),
    );
    let out = run(
        mgmt()
            .args(["run", "--hostname", "a", "-t", "1", "--file"])
            .arg(&g),
        deadline.left(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("created directory {inbox}")),
        "{}",
        out.stderr
    );
    assert_eq!(d.read("deep/er/in/shared").as_deref(), Some("shared\n"));
}

/// A process watched through a pidfd: its exit is an event, and it cannot
/// be confused with a later process that gets the same pid. Killed on drop
/// if still there, so a failing test leaves nothing behind.
struct Tracked {
    pid: i32,
    fd: OwnedFd,
    /// `starttime` from `/proc/PID/stat`: tells this process from a reuse.
    start: String,
}

impl Tracked {
    fn new(pid: i32) -> Tracked {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let start = proc_stat(pid).expect("a live process").1;
        let t = Tracked { pid, fd, start };
        assert!(t.alive(), "{pid} is not running");
        t
    }

    /// Waits for the process to end (the pidfd turns readable); false
    /// after `limit`.
    fn wait_gone(&self, limit: Duration) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = limit.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        n == 1
    }

    /// Alive in `/proc`: present, the same process, and not a zombie.
    fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => start == self.start && !matches!(state, 'Z' | 'X'),
            None => false,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal(2) on our own pidfd; harmless once dead.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// State letter and starttime of a process, from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // starttime is field 22; the state was field 3.
    let start = fields.nth(18)?.to_owned();
    Some((state, start))
}

/// Reads the pid a command wrote to `name` in `d`.
fn pid_in(d: &Dir, name: &str) -> i32 {
    let s = d.read(name).unwrap_or_else(|| panic!("{name} not written"));
    s.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {s:?}: {e}"))
}

// See: #13 (a command's descendants outlived a SIGKILLed mgmt: Drop does
// not run on SIGKILL)
#[test]
fn exec_descendants_die_with_a_sigkilled_mgmt() {
    let deadline = Deadline::start();
    let d = Dir::new();
    // A grandchild of the command's shell in its process group, and a
    // child that left the group (and session) with setsid.
    let cmd = format!(
        "sh -c 'sleep 301 & echo $! > {a}; echo inner started; wait' & setsid sleep 302 & echo $! > {b}; echo outer started; wait",
        a = d.p("grandchild"),
        b = d.p("escaped")
    );
    let g = d.write(
        "g.yaml",
        &format!("graph: long\nresources:\n  exec:\n  - name: long\n    cmd: \"{cmd}\"\n"),
    );
    let mut p = Proc::spawn(mgmt().args(["run", "--file"]).arg(&g));
    p.wait_all(
        &["exec[long]: inner started", "exec[long]: outer started"],
        deadline.left(),
    );
    let procs = [
        Tracked::new(pid_in(&d, "grandchild")),
        Tracked::new(pid_in(&d, "escaped")),
    ];
    p.signal(Signal::SIGKILL);
    assert_eq!(p.wait(deadline.left()), -1, "killed by a signal");
    for t in &procs {
        assert!(
            t.wait_gone(deadline.left()),
            "{} outlived mgmt's SIGKILL",
            t.pid
        );
        assert!(!t.alive(), "{} still in /proc", t.pid);
    }
}

// See: #13 (what a command leaves running ends with it, even outside its
// process group; mgmt keeps running)
#[test]
fn what_a_command_leaves_behind_is_killed_when_it_ends() {
    let deadline = Deadline::start();
    let d = Dir::new();
    let go = d.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cmd = format!(
        "setsid sleep 303 & echo $! > {b}; echo started; read line < {go}; echo ending",
        b = d.p("left"),
        go = go.display()
    );
    let g = d.write(
        "g.yaml",
        &format!("graph: left\nresources:\n  exec:\n  - name: left\n    cmd: \"{cmd}\"\n"),
    );
    // Held open for reading and writing: neither the command's open nor
    // the write below waits for the other side.
    let mut gate = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&go)
        .unwrap();
    let mut p = serve(&g, "h");
    p.wait_line("exec[left]: started", deadline.left());
    let left = Tracked::new(pid_in(&d, "left"));
    // Lets the command end.
    std::io::Write::write_all(&mut gate, b"go\n").unwrap();
    p.wait_line("exec[left]: ending", deadline.left());
    assert!(
        left.wait_gone(deadline.left()),
        "{} outlived its command",
        left.pid
    );
    assert!(!left.alive());
    p.wait_line(
        "settled: 1 resources checked, 1 changes so far, 0 failed",
        deadline.left(),
    );
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait(deadline.left()), 0);
}
