//! The exit codes of the README's table, each from a real run: 2 for bad
//! input before anything starts, 1 for a runtime error, 130 for a second
//! signal.

use crate::remote_run::{remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, run, Dir};

fn noop_graph(d: &Dir, url: &str) -> std::path::PathBuf {
    d.write(
        "g.yaml",
        &format!("graph: g\nresources:\n  noop:\n  - name: n\nremote: {url}\n"),
    )
}

// See: #19 (README: "a malformed URL or a missing key file are input errors (exit 2 ...), found before any connection")
#[test]
fn a_missing_key_file_exits_2_before_connecting() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let g = noop_graph(&d, &fleet.url(1));
    let missing = d.path().join("no-such-key");
    let out = run(
        mgmt()
            .env_remove("SSH_AUTH_SOCK")
            .args(["run", "--converged-timeout", "0", "--remote"])
            .arg(&g)
            .arg("-i")
            .arg(&missing)
            .arg("--known-hosts")
            .arg(&fleet.known_hosts),
        LIMIT,
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "the error does not name the key file:\n{}",
        out.stderr
    );
    // Nothing reached the host: sshd saw no connection, the home is empty.
    let log = fleet.log();
    assert!(
        !log.contains("Accepted") && !log.contains("Connection"),
        "sshd saw a connection:\n{log}"
    );
    let home: Vec<_> = std::fs::read_dir(fleet.home(1))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(home.is_empty(), "{home:?}");
}

// See: #19 (README: "1 | a resource failed (the others still ran), or a runtime error")
#[test]
fn an_unreachable_host_exits_1() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    // The fleet's block, an address it does not serve: connections are refused.
    let ip = fleet.ip(1).rsplit_once('.').unwrap().0.to_owned() + ".250";
    let g = noop_graph(&d, &format!("ssh://root@{ip}:{}", fleet.port()));
    let out = run(
        &mut remote_cmd(
            &fleet,
            &[&g],
            &["--converged-timeout", "0", "--connect-timeout", "5"],
        ),
        LIMIT,
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("0 converged, 1 failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&format!("{ip}: ")) && l.contains("cannot connect")),
        "{}",
        out.stderr
    );
}

// See: #19 (README: exit 130, "a second signal: exited at once", for a --file run)
#[test]
fn a_second_signal_ends_a_file_run_with_130_and_nothing_left() {
    use nix::sys::signal::Signal;
    let d = Dir::new();
    // A unique argument, to find the watch command's process by.
    let marker = format!("{}", 424_242 + std::process::id());
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  exec:\n  - name: w\n    cmd: \"true\"\n    watchcmd: \"exec sleep {marker}\"\n"
        ),
    );
    let mut c = mgmt();
    c.args(["run", "--hostname", "h1", "--file"]).arg(&g);
    let mut p = crate::util::Proc::spawn(&mut c);
    p.wait_line("settled:", LIMIT);
    let mut sleeps = Vec::new();
    assert!(
        crate::util::eventually(LIMIT, || {
            sleeps = crate::remote_run::procs_with(&format!("sleep {marker}"));
            !sleeps.is_empty()
        }),
        "the watch command never ran"
    );
    // Stopped, the process holds both signals pending; SIGCONT delivers
    // them together, so the second arrives while the first stop has only
    // begun, however fast the stop would have been.
    p.signal(Signal::SIGSTOP);
    p.signal(Signal::SIGINT);
    p.signal(Signal::SIGTERM);
    p.signal(Signal::SIGCONT);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 130, "{log}");
    assert!(log.contains("second signal, exiting at once"), "{log}");
    // Exiting at once still leaves nothing behind: the keeper of the watch
    // command sees mgmt gone and kills it.
    assert!(
        crate::util::eventually(LIMIT, || sleeps.iter().all(|&s| crate::util::gone(s))),
        "the watch command outlived mgmt"
    );
}
