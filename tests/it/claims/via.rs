//! Gateways from the command line (#19 item 1): `--via URL` for files that
//! have no `via:`, `--no-caching` passed on through a gateway, and a
//! gateway that cannot be reached or refuses us failing its group alone
//! with a message that names it.

use crate::remote_run::{remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{run, Dir};

/// A graph for host `i` writing `mine` in its home, with `via` lines.
fn graph(d: &Dir, fleet: &SshdFleet, i: usize, via: &[String]) -> std::path::PathBuf {
    let via: String = via.iter().map(|u| format!("- {u}\n")).collect();
    let via = if via.is_empty() {
        String::new()
    } else {
        format!("via:\n{via}")
    };
    d.write(
        &format!("g{i}.yaml"),
        &format!(
            "graph: g{i}\nremote: {url}\n{via}resources:\n  file:\n  - name: mine\n    path: {home}/mine\n    content: \"{i}\\n\"\n",
            url = fleet.url(i),
            home = fleet.home(i).display()
        ),
    )
}

fn mine(fleet: &SshdFleet, i: usize) -> Option<String> {
    std::fs::read_to_string(fleet.home(i).join("mine")).ok()
}

/// What is left in host `i`'s cache directory, the audit file aside.
fn cache_left(fleet: &SshdFleet, i: usize) -> Vec<String> {
    let cache = fleet.home(i).join(".cache/mgmt");
    std::fs::read_dir(&cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "audit.log")
                .collect()
        })
        .unwrap_or_default()
}

// See: #19 (README: "`--via URL` (repeatable, for a chain) applies to every
// `--remote` file that has none"; `--no-caching` is passed on)
#[test]
fn via_on_the_command_line_reaches_hosts_and_no_caching_is_passed_on() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    let (g2, g3) = (graph(&d, &fleet, 2, &[]), graph(&d, &fleet, 3, &[]));
    let gw = fleet.url(1);
    let out = run(
        &mut remote_cmd(
            &fleet,
            &[&g2, &g3],
            &["--via", &gw, "--no-caching", "--converged-timeout", "1"],
        ),
        LIMIT,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for i in [2, 3] {
        let route = format!("{}/{}", fleet.ip(1), fleet.ip(i));
        assert!(
            out.stderr.contains(&format!("[{route}] running")),
            "host {i} not reached through the gateway:\n{}",
            out.stderr
        );
        assert_eq!(mine(&fleet, i).as_deref(), Some(format!("{i}\n").as_str()));
    }
    // --no-caching reached the gateway and the hosts behind it.
    for i in [1, 2, 3] {
        assert!(
            cache_left(&fleet, i).is_empty(),
            "host {i} keeps {:?}\n{}",
            cache_left(&fleet, i),
            out.stderr
        );
    }
}

// See: #19 (README: an unreachable and a refusing gateway fail their group
// alone)
#[test]
fn an_unreachable_or_refusing_gateway_fails_its_group_alone() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    // Nothing listens on port 1 of host 1's address; user `nosuchuser`
    // is refused by host 1's sshd.
    let unreachable = format!("ssh://root@{}:1", fleet.ip(1));
    let refusing = fleet.url(1).replacen("root@", "nosuchuser@", 1);
    for (gw, why) in [(unreachable, "connect"), (refusing, "authentication")] {
        let behind = graph(&d, &fleet, 2, std::slice::from_ref(&gw));
        let direct = graph(&d, &fleet, 3, &[]);
        let out = run(
            &mut remote_cmd(&fleet, &[&behind, &direct], &["--converged-timeout", "1"]),
            LIMIT,
        );
        assert_eq!(out.code, 1, "{gw}: {}", out.stderr);
        let gw_host = gw.trim_start_matches("ssh://");
        let gw_host = gw_host.split('@').nth(1).unwrap_or(gw_host);
        let gw_host = gw_host.split(':').next().unwrap_or(gw_host);
        let failed: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("failed"))
            .collect();
        assert!(
            failed
                .iter()
                .any(|l| l.contains(gw_host) && l.contains(why)),
            "{gw}: no failure naming the gateway and {why:?}:\n{}",
            out.stderr
        );
        assert_eq!(mine(&fleet, 2), None, "{gw}: host 2 ran");
        // The host that does not go through it converged.
        assert_eq!(mine(&fleet, 3).as_deref(), Some("3\n"), "{}", out.stderr);
        std::fs::remove_file(fleet.home(3).join("mine")).unwrap();
    }
}
