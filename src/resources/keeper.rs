//! The keeper: a small process between mgmt and each command `exec` starts,
//! so that nothing a command started outlives mgmt, however mgmt ends,
//! SIGKILL included (issue #13).
//!
//! Clean-up in `Drop` (kill the command's process group) does not run when
//! mgmt is SIGKILLed, and `PR_SET_PDEATHSIG` reaches only the process that
//! set it (and fires when the *thread* that forked it exits, which in a
//! tokio runtime is not the process ending). So the spawned child forks
//! once more before exec: its child execs the command in a new process
//! group, and it stays behind as the keeper, which
//!
//! - is a child subreaper: a descendant of the command whose parent dies
//!   (a daemon that double-forked, or left the group with `setsid`)
//!   becomes the keeper's child rather than init's;
//! - holds the read end of a pipe whose only write end mgmt holds in a
//!   [`Stop`]. End of file means mgmt is gone, or dropped the `Stop`
//!   (timeout, engine stop, resource removed): the keeper then kills the
//!   command's group and each of its own children, round after round,
//!   until it has no child left;
//! - when the command ends by itself, kills whatever it left running the
//!   same way, then exits with the command's status (or dies of the same
//!   signal), which is what mgmt's `wait` sees.
//!
//! The command itself gets `PR_SET_PDEATHSIG(SIGKILL)` against the keeper
//! (single-threaded, so the thread caveat does not apply), so an outside
//! SIGKILL of the keeper still takes it down. Finding the keeper's children
//! reads `/proc/thread-self/children` (`CONFIG_PROC_CHILDREN`, on in the
//! usual distribution kernels); without it only the process group is killed.
//!
//! Between fork and exec only async-signal-safe calls are allowed (another
//! thread may have held a lock, the allocator's among them): the code that
//! runs there makes raw system calls on stack memory and never allocates.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::null_mut;

use nix::fcntl::OFlag;
use nix::libc::{self, c_int, pid_t};

/// mgmt's end of a kept command: dropping it stops the command and all it
/// started (the keeper sees end of file on its pipe).
pub struct Stop {
    /// The pipe's only write end; nothing is ever written to it.
    _write: OwnedFd,
}

/// The keeper's end, until the command is spawned: passed to [`split`].
pub struct Watch(OwnedFd);

impl Watch {
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A new pipe for one command. Both ends are close-on-exec: the command
/// never holds either; the keeper, which does not exec, closes every
/// descriptor but its own read end.
pub fn pipe() -> io::Result<(Watch, Stop)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((Watch(read), Stop { _write: write }))
}

/// Runs in the child that `spawn` forked, before exec: forks the command
/// off and never returns in the keeper. Must be the first `pre_exec`
/// closure; the later ones then run in the command only.
///
/// # Safety
///
/// Only between fork and exec, with `watch` from [`Watch::raw`].
pub unsafe fn split(watch: RawFd) -> io::Result<()> {
    let keeper = libc::getpid();
    if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
        return Err(io::Error::last_os_error());
    }
    // Blocked before the fork so that no exit of the command is missed;
    // the command gets the empty mask back before exec.
    let chld = sigset(libc::SIGCHLD);
    libc::sigprocmask(libc::SIG_BLOCK, &chld, null_mut());
    match libc::fork() {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            libc::sigprocmask(libc::SIG_UNBLOCK, &chld, null_mut());
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != keeper {
                // The keeper is already gone: so is whoever waits for us.
                libc::_exit(137);
            }
            Ok(())
        }
        command => keep(command, watch),
    }
}

/// A signal set holding `sig` only.
unsafe fn sigset(sig: c_int) -> libc::sigset_t {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, sig);
    set
}

/// The keeper's life: wait for the command to end or the pipe to close,
/// then kill what is left and exit as the command did.
unsafe fn keep(command: pid_t, watch: RawFd) -> ! {
    // mgmt's signal handlers would write to descriptors closed below, and a
    // core dump of this copy of mgmt would be of no use to anyone.
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    close_all_but(watch);
    // Also set by the command itself: whichever runs first wins the race.
    libc::setpgid(command, command);
    let chld = sigset(libc::SIGCHLD);
    let exits = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC);
    let mut status = None;
    loop {
        reap_now(command, &mut status);
        if status.is_some() {
            break;
        }
        let mut fds = [
            libc::pollfd {
                fd: watch,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: exits,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Without a signalfd (never seen), look again every 100 ms.
        let wait = if exits < 0 { 100 } else { -1 };
        let n = libc::poll(fds.as_mut_ptr(), 2, wait);
        if n < 0 && errno() != libc::EINTR {
            break;
        }
        if fds[1].revents != 0 {
            let mut info = [0u8; 128];
            libc::read(exits, info.as_mut_ptr().cast(), info.len());
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    kill_all(command, &mut status);
    exit_as(status)
}

fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Reaps every child that has ended, noting the command's status.
unsafe fn reap_now(command: pid_t, status: &mut Option<c_int>) {
    loop {
        let mut st = 0;
        match libc::waitpid(-1, &mut st, libc::WNOHANG) {
            pid if pid == command => *status = Some(st),
            pid if pid > 0 => {}
            _ => return,
        }
    }
}

/// Kills the command's group and every child of the keeper, and reaps,
/// until no child is left. Each death can hand the keeper new children
/// (their orphans), so it goes round again after each.
unsafe fn kill_all(command: pid_t, status: &mut Option<c_int>) {
    loop {
        libc::kill(-command, libc::SIGKILL);
        kill_children();
        let mut st = 0;
        match libc::waitpid(-1, &mut st, 0) {
            pid if pid == command => *status = Some(st),
            pid if pid > 0 => {}
            _ if errno() == libc::EINTR => {}
            // ECHILD: nobody left.
            _ => return,
        }
    }
}

/// SIGKILL to each pid in `/proc/thread-self/children` (the keeper has one
/// thread), parsed on the fly: no allocation.
unsafe fn kill_children() {
    let path = c"/proc/thread-self/children";
    let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 512];
    let mut pid: pid_t = 0;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if b.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add(pid_t::from(b - b'0'));
            } else {
                if pid > 0 {
                    libc::kill(pid, libc::SIGKILL);
                }
                pid = 0;
            }
        }
    }
    if pid > 0 {
        libc::kill(pid, libc::SIGKILL);
    }
    libc::close(fd);
}

/// Closes every descriptor but `keep`: the pipes to mgmt's log readers,
/// std's exec-error pipe (its `spawn` waits for that to close), and any
/// other command's `Stop` (held here, it would keep that command alive).
unsafe fn close_all_but(keep: RawFd) {
    let ranges = [(0, keep - 1), (keep + 1, c_int::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        let done = libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        );
        if done != 0 {
            // Before Linux 5.9: one by one, up to the open-files limit.
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            let end = lim.rlim_cur.min(c_int::MAX as libc::rlim_t) as c_int;
            for fd in first..=last.min(end) {
                libc::close(fd);
            }
        }
    }
}

/// Exits with the command's exit code, or dies of the signal it died of.
unsafe fn exit_as(status: Option<c_int>) -> ! {
    match status {
        Some(st) if libc::WIFEXITED(st) => libc::_exit(libc::WEXITSTATUS(st)),
        Some(st) if libc::WIFSIGNALED(st) => {
            let sig = libc::WTERMSIG(st);
            libc::signal(sig, libc::SIG_DFL);
            let set = sigset(sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
        _ => libc::_exit(128 + libc::SIGKILL),
    }
}
