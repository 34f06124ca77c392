//! One graph for a whole role (#15): facts, templates, exchanged `kv`
//! values, `meta.when`, and the errors of each, through the real binary
//! (local runs) and real sshd fleets on loopback addresses (remote runs).

mod cluster;
mod errors;
mod exchange;
mod facts;
mod gateway;
mod waiting;

use std::time::Duration;

use crate::util::{mgmt, Dir, Proc};

/// Bound on every run of these tests.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// `mgmt run --file <g> --hostname <host> --converged-timeout 1` plus
/// `extra`, started.
pub(crate) fn local(d: &Dir, graph: &str, host: &str, extra: &[&str]) -> Proc {
    let g = d.write(&format!("{host}.yaml"), graph);
    let mut c = mgmt();
    c.arg("run")
        .arg("--file")
        .arg(&g)
        .args(["--hostname", host, "--converged-timeout", "1"])
        .args(extra);
    Proc::spawn(&mut c)
}

/// Waits for the run to end; its exit code and log.
pub(crate) fn finish(p: &mut Proc) -> (i32, String) {
    let code = p.wait(LIMIT);
    (code, p.lines_so_far().join("\n"))
}
