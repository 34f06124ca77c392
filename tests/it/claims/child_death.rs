//! A host whose mgmt child dies (SIGKILL by its pid on the host): the run
//! reports that host failed, its converged key goes from the store (it hangs
//! on a lease only the dead process kept alive), and a run with
//! `--converged-timeout` does not wait for it.

use crate::remote_run::{mgmt_children, remote_cmd, row, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{eventually, Dir, Proc};

/// `/_mgmt/converged/*` in the store at `url`: (host, value, lease id).
fn converged_keys(url: &str) -> Vec<(String, String, i64)> {
    let prefix = "/_mgmt/converged/";
    crate::util::store_kvs(url, prefix)
        .into_iter()
        .map(|(k, v, lease)| (k.trim_start_matches(prefix).to_owned(), v, lease))
        .collect()
}

/// Host 1 never converges (a timer fires every second, well within any
/// `--converged-timeout` used here), host 2 at once.
fn graphs(d: &Dir, fleet: &SshdFleet) -> (std::path::PathBuf, std::path::PathBuf) {
    let busy = d.write(
        "busy.yaml",
        &format!(
            "graph: busy\nresources:\n  timer:\n  - name: t\n    interval: 1\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let idle = d.write(
        "idle.yaml",
        &format!(
            "graph: idle\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(2)
        ),
    );
    (busy, idle)
}

/// The pid of host `ip`'s mgmt child, once it runs.
pub(crate) fn child_of(ip: &str) -> i32 {
    let mut pid = None;
    assert!(
        eventually(LIMIT, || {
            pid = mgmt_children(ip).first().copied();
            pid.is_some()
        }),
        "no mgmt child for {ip}"
    );
    pid.unwrap_or_default()
}

fn kill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the child");
}

/// Two hosts, host 1 busy and host 2 idle ([`graphs`]), in a run with
/// `extra` arguments; the dir holds the graphs, so keep it.
fn start(extra: &[&str]) -> (SshdFleet, Dir, Proc) {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (busy, idle) = graphs(&d, &fleet);
    let p = Proc::spawn(&mut remote_cmd(&fleet, &[&busy, &idle], extra));
    (fleet, d, p)
}

// See: #19 (README: "`/_mgmt/converged/<host>` is `true`/`false`, attached to a lease the process keeps alive (TTL 10 s), so a dead host stops counting")
#[test]
fn a_killed_childs_converged_key_leaves_the_store() {
    // No --converged-timeout: the run stays up; a listener only so that
    // this test can read the store.
    let listener = crate::util::listener_args();
    let listener: Vec<&str> = listener.iter().map(String::as_str).collect();
    let (fleet, _d, mut p) = start(&listener);
    let (ip1, ip2) = (fleet.ip(1).to_owned(), fleet.ip(2).to_owned());
    let url = p.store_url(LIMIT);
    let pid = child_of(&ip1);
    // Both hosts publish, each key on a lease.
    let mut keys = Vec::new();
    assert!(
        eventually(LIMIT, || {
            keys = converged_keys(&url);
            keys.len() == 2
        }),
        "{keys:?}"
    );
    assert!(keys.iter().all(|(_, _, lease)| *lease != 0), "{keys:?}");

    kill(pid);
    p.wait_line(&format!("[{ip1}] failed"), LIMIT);
    assert!(
        eventually(LIMIT, || crate::util::gone(pid)),
        "the killed child {pid} is still there"
    );
    // The dead host's key goes (within the lease's 10 s, or at once);
    // the live host's stays.
    assert!(
        eventually(LIMIT, || {
            keys = converged_keys(&url);
            keys.iter().all(|(h, _, _)| *h != ip1)
        }),
        "the dead host still counts: {keys:?}"
    );
    assert!(keys.iter().any(|(h, _, _)| *h == ip2), "{keys:?}");
    assert!(!mgmt_children(&ip2).is_empty(), "host 2 was stopped too");
    p.signal(nix::sys::signal::Signal::SIGINT);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}");
    assert_eq!(row(&log, &ip1)[2], "failed:", "{log}");
    assert_eq!(row(&log, &ip2)[2], "stopped", "{log}");
}

// See: #19 (README: "a host that failed or ended no longer holds the run up")
#[test]
fn a_killed_child_does_not_hold_up_the_converged_end() {
    let (fleet, _d, mut p) = start(&["--converged-timeout", "3"]);
    let (ip1, ip2) = (fleet.ip(1).to_owned(), fleet.ip(2).to_owned());
    let pid = child_of(&ip1);
    // Host 2 converges; the run goes on, held up by host 1.
    p.wait_line(&format!("[{ip2}] converged"), LIMIT);
    assert!(
        !crate::util::gone(p.pid()),
        "the run ended while host 1 was busy"
    );
    kill(pid);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}");
    assert_eq!(row(&log, &ip1)[2], "failed:", "{log}");
    assert_eq!(row(&log, &ip2)[2], "converged", "{log}");
    assert!(crate::util::gone(pid));
}
