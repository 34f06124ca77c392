//! The open-files limit (#19 item 1): a remote run raises its soft limit
//! to what its hosts need, seen in `/proc/<pid>/limits` while it runs, and
//! refuses up front, exit 2, when the hard limit is too low.

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::remote_run::{interrupt, one_noop_graph, remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{run, Dir, Proc};

/// `cmd` started with the open-files limit at `soft`/`hard`.
fn limited(cmd: &mut Command, soft: u64, hard: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        })
    }
}

/// (soft, hard) "Max open files" of process `pid`.
fn open_files(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

// See: #19 (README: "The open-files limit is raised to what the host count
// needs, or the run says up front that it cannot serve that many")
#[test]
fn the_open_files_limit_is_raised_or_the_run_refused_up_front() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let urls = [fleet.url(1), fleet.url(2)];
    let g = one_noop_graph(&d, "g.yaml", &urls);
    // A hard limit below the need: refused before any connection.
    let out = run(
        limited(&mut remote_cmd(&fleet, &[&g], &[]), 100, 100),
        LIMIT,
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("2 hosts need about 258 open files but the hard limit is 100"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("connecting"), "{}", out.stderr);
    // Room under the hard limit: the soft one is raised, and the run goes.
    let mut p = Proc::spawn(limited(&mut remote_cmd(&fleet, &[&g], &[]), 100, 4096));
    p.wait_line(&format!("[{}] running", fleet.ip(1)), LIMIT);
    assert_eq!(open_files(p.pid()), (258, 4096));
    interrupt(&mut p);
}
