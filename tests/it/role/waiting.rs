//! `meta.when` that never becomes true: the run does not report success
//! and says what was waiting (#15).

use super::{finish, local};
use crate::remote_run::remote_cmd;
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// A graph where `<dir>/gated` waits for two `peer` values and
/// `<dir>/after` depends on it; only one host ever publishes.
fn gated(d: &Dir, remote: &str) -> String {
    format!(
        "graph: gated\n{remote}resources:\n  kv:\n  - name: \"@@peer\"\n    value: \"{{{{ host.name }}}}\"\n  file:\n  - name: {g}\n    content: x\n    meta:\n      when: \"{{{{ values('peer') | length == 2 }}}}\"\n  - name: {a}\n    content: y\nedges:\n- name: e\n  from: {{kind: file, name: {g}}}\n  to: {{kind: file, name: {a}}}\n",
        g = d.p("gated"),
        a = d.p("after"),
    )
}

// See: #15 (a pending resource: not failed, never converged, exit 1 at --max-runtime)
#[test]
fn a_when_that_never_holds_ends_the_local_run_with_what_waited() {
    let d = Dir::new();
    let mut p = local(&d, &gated(&d, ""), "h1", &["--max-runtime", "3"]);
    let (code, log) = finish(&mut p);
    assert_eq!(code, 1, "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("not converged, 2 resource(s) still waiting")
            && last.contains("when {{ values('peer') | length == 2 }}")
            && last.contains(&format!(
                "file[{}]: after file[{}]",
                d.p("after"),
                d.p("gated")
            )),
        "{log}"
    );
    assert!(!log.contains("converged:"), "{log}");
    assert!(d.read("gated").is_none() && d.read("after").is_none());
}

// See: #15 (a cluster missing a member never reports success)
#[test]
fn a_when_that_never_holds_fails_the_remote_host_in_the_summary() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let text = gated(&d, &format!("remote: {}\n", fleet.url(1)));
    let g = d.write("gated.yaml", &text);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "1", "--max-runtime", "8"],
    ));
    let (code, log) = finish(&mut p);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("--max-runtime reached"), "{log}");
    let tail: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("--max-runtime reached"))
        .collect();
    assert!(
        tail.iter().any(|l| l.contains("still waiting")
            && l.contains("when {{ values('peer') | length == 2 }}")),
        "{log}"
    );
    assert!(d.read("gated").is_none() && d.read("after").is_none());
}
