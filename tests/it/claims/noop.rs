//! `--noop` in a remote run: every host checks its graph and says what it
//! would change, and nothing changes on any host; nothing is exported, so a
//! host that collects gets nothing.

use crate::remote_run::{remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{run, Dir};

// See: #19 (README: "--noop  check only: change nothing ... nothing is exported", passed on to every host)
#[test]
fn noop_remote_run_changes_and_exports_nothing() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (h1, h2) = (fleet.home(1), fleet.home(2));
    let own = h1.join("own");
    let collected = h2.join("collected");
    // Host 1 applies a file of its own and exports one; host 2 collects.
    let g1 = d.write(
        "g1.yaml",
        &format!(
            "graph: g1\nresources:\n  file:\n  - name: own\n    path: {own}\n    content: \"mine\\n\"\n  - name: \"@@shared\"\n    path: /tmp/shared\n    content: \"from host 1\\n\"\nremote: {url}\n",
            own = own.display(),
            url = fleet.url(1)
        ),
    );
    let g2 = d.write(
        "g2.yaml",
        &format!(
            "graph: g2\nresources:\n  noop:\n  - name: n\ncollect:\n- kind: file\n  pattern: {}/\nremote: {}\n",
            collected.display(),
            fleet.url(2)
        ),
    );
    let out = run(
        &mut remote_cmd(&fleet, &[&g1, &g2], &["--noop", "--converged-timeout", "2"]),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Host 1 looked at its file and left it alone.
    let ip1 = fleet.ip(1);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&format!("[{ip1}]"))
                && l.contains(&format!("would write 5 bytes to {}", own.display()))),
        "{}",
        out.stderr
    );
    assert!(!own.exists(), "--noop wrote {}", own.display());
    assert!(
        !collected.exists(),
        "host 2 collected under --noop: {:?}",
        std::fs::read_dir(&collected).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );

    // The same run without --noop does both: the checks above can fail.
    let out = run(
        &mut remote_cmd(&fleet, &[&g1, &g2], &["--converged-timeout", "2"]),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&own).ok().as_deref(),
        Some("mine\n")
    );
    assert_eq!(
        std::fs::read_to_string(collected.join("shared"))
            .ok()
            .as_deref(),
        Some("from host 1\n"),
        "{}",
        out.stderr
    );
}

// See: #19 (README: --noop is passed on to hosts behind a gateway)
#[test]
fn noop_reaches_a_host_behind_a_gateway() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let own = fleet.home(2).join("own");
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nremote: {url}\nvia:\n- {gw}\nresources:\n  file:\n  - name: own\n    path: {own}\n    content: \"mine\\n\"\n",
            url = fleet.url(2),
            gw = fleet.url(1),
            own = own.display()
        ),
    );
    let route = format!("[{}/{}]", fleet.ip(1), fleet.ip(2));
    let out = run(
        &mut remote_cmd(&fleet, &[&g], &["--noop", "--converged-timeout", "2"]),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&route)
            && l.contains(&format!("would write 5 bytes to {}", own.display()))),
        "{}",
        out.stderr
    );
    assert!(
        !own.exists(),
        "--noop wrote {} behind the gateway",
        own.display()
    );
    // Without --noop the same run writes it: the check above can fail.
    let out = run(
        &mut remote_cmd(&fleet, &[&g], &["--converged-timeout", "2"]),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&own).ok().as_deref(),
        Some("mine\n")
    );
}
