//! The stop escalation of a remote run: a child that stays up after its
//! stdin closes gets SIGINT by its pid, and one that ignores SIGINT too
//! gets SIGKILL, so nothing is left running on the host.

use std::path::Path;
use std::process::Command;

use crate::hostile_store::plant_child;
use crate::remote_run::{remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// A child that reports its pid, reads its stdin to EOF (the secret, then
/// the stop), says so and stays up, logging each SIGINT and carrying on. It
/// forks nothing once started, so its pid is all there is of it: it blocks
/// on a FIFO held open for both reading and writing, which never ends.
fn stubborn(fifo: &Path) -> String {
    format!(
        "trap 'echo \"stubborn: got SIGINT\" >&2' INT\n\
         echo \"stubborn: pid $$\" >&2\n\
         while read -r line; do :; done\n\
         echo 'stubborn: stdin closed; staying' >&2\n\
         exec 3<>'{f}'\n\
         while :; do read -r line <&3; done\n",
        f = fifo.display()
    )
}

// See: #19 (README: "its stdin closes; one still running 2 s later gets SIGINT, and SIGKILL 5 s after that")
#[test]
fn a_child_that_ignores_eof_and_sigint_is_killed() {
    let fleet = SshdFleet::start(1);
    let fifo = fleet.home(1).join("hold");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    plant_child(&fleet, 1, &stubborn(&fifo));
    // Started warm (nothing of the run on the host's disk), then launched
    // with its graph in a run directory (`--no-caching`), which the child
    // cannot remove once killed: the parent does.
    for extra in [&[][..], &["--no-caching"][..]] {
        killed_and_cleaned(&fleet, extra);
    }
}

/// One run of [`a_child_that_ignores_eof_and_sigint_is_killed`].
fn killed_and_cleaned(fleet: &SshdFleet, extra: &[&str]) {
    let d = Dir::new();
    let ip = fleet.ip(1).to_owned();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let args = [&["--remote-binary", "/bin/sh"][..], extra].concat();
    let mut p = Proc::spawn(&mut remote_cmd(fleet, &[&g], &args));
    let line = p.wait_line(&format!("[{ip}] stubborn: pid "), LIMIT);
    let pid: i32 = line
        .rsplit(' ')
        .next()
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    // That pid is the host's child of this run (the launch shell exec'd it).
    let cmd = crate::remote_run::cmdline(pid);
    assert!(cmd.contains(&format!("--hostname {ip}")), "{pid}: {cmd:?}");
    assert!(!crate::util::gone(pid));
    // What there is to clean up: a run directory for a launched child only.
    let runs = crate::remote_run::run_dirs(&fleet.home(1));
    assert_eq!(runs, usize::from(!extra.is_empty()), "{extra:?}");

    p.signal(nix::sys::signal::Signal::SIGINT);
    // In this order: stdin closes, the child stays; SIGINT by pid, which
    // it shrugs off; then SIGKILL, after which the run ends.
    p.wait_line(&format!("[{ip}] stubborn: stdin closed; staying"), LIMIT);
    // The trap's line is the child's own word that SIGINT reached it and
    // left it running.
    p.wait_line(&format!("[{ip}] stubborn: got SIGINT"), LIMIT);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert!(
        log.contains("did not stop within") && log.contains("of SIGINT; killed it"),
        "{extra:?}: {log}"
    );
    assert!(
        crate::util::gone(pid),
        "pid {pid} still runs on the host ({extra:?})\n{log}"
    );
    assert!(
        crate::remote_run::procs_with(&format!("--hostname {ip}")).is_empty(),
        "a process of the run is left on the host ({extra:?})\n{log}"
    );
    // The run's own files went with it (the child could not remove them).
    assert!(
        crate::remote_run::run_files_go(&fleet.home(1)),
        "per-run files left on the host ({extra:?})"
    );
    // A ^C stop, however it had to end the child: the host counts as
    // stopped, not failed.
    assert_eq!(code, 0, "{extra:?}: {log}");
}
