//! A host's output cannot drive the operator's terminal (#13): control
//! characters other than tab arrive escaped (`\x1b`), never raw.
//!
//! The hostile host is emulated with real parts ([`plant_child`]): its
//! child prints what any compromised host could: an OSC title change, a
//! screen clear, a bell.

use crate::hostile_store::plant_child;
use crate::remote_run::{interrupt, remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// Prints on stderr (the initiator's stderr) and stdout (its stdout), then
/// waits for stdin's EOF, as a child does.
const SCRIPT: &str = "printf '\\033]0;pwned\\007\\033[2Jhostile host\\n' >&2
printf '\\033[1Ahostile out\\033c\\n'
exec cat >/dev/null
";

/// A run of one host whose child is `script` ([`plant_child`]: the
/// binary shipped is `/bin/sh`), with `extra` arguments; keep the fleet and
/// the dir for as long as the run.
pub(crate) fn planted_run(script: &str, extra: &[&str]) -> (SshdFleet, Dir, Proc) {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    plant_child(&fleet, 1, script);
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let mut args = vec!["--remote-binary", "/bin/sh"];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&mut remote_cmd(&fleet, &[&g], &args));
    (fleet, d, p)
}

// See: #13 (hosts' output reached the terminal with escape sequences intact)
#[test]
fn control_characters_from_a_host_are_escaped() {
    let (_fleet, _d, mut p) = planted_run(SCRIPT, &[]);
    let line = p.wait_line("hostile host", LIMIT);
    let log = p.lines_so_far().join("\n");
    assert!(
        line.contains("\\x1b]0;pwned\\x07\\x1b[2Jhostile host"),
        "not escaped as expected: {line:?}"
    );
    assert!(
        !log.contains(['\u{1b}', '\u{7}']),
        "a raw control character reached the output: {log:?}"
    );
    interrupt(&mut p);
    let out = p.stdout_rest();
    assert!(out.contains("\\x1b[1Ahostile out\\x1bc"), "stdout: {out:?}");
    assert!(!out.contains(['\u{1b}', '\u{7}']), "stdout: {out:?}");
}
