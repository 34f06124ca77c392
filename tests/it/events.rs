//! `--events` and `--summary json` (#18): real runs against real sshd
//! hosts, their stdout read back with a JSON parser line by line.

use std::collections::HashMap;

use serde_json::Value;

use crate::remote_run::{interrupt, one_noop_graph, remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// Every line of `out` as JSON, each checked for the fields every event has.
fn events(out: &str) -> Vec<Value> {
    let evs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(!evs.is_empty(), "no events");
    let run = evs[0]["run"].as_str().unwrap_or("").to_string();
    assert_eq!(run.len(), 16, "{}", evs[0]);
    for e in &evs {
        assert_eq!(e["v"], 1, "{e}");
        assert_eq!(e["run"], run.as_str(), "{e}");
        let ts = e["ts"].as_str().unwrap_or("");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{e}"
        );
        assert!(e["event"].is_string(), "{e}");
    }
    assert_eq!(evs[0]["event"], "started", "{out}");
    assert_eq!(evs[evs.len() - 1]["event"], "ended", "{out}");
    evs
}

/// The events about the host shown under `route`, in order.
fn of<'a>(evs: &'a [Value], route: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["route"] == route).collect()
}

fn kinds(evs: &[&Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

/// known_hosts of `fleet` without host `i`'s line: that host will fail.
fn forget(fleet: &SshdFleet, i: usize) {
    let tag = format!("[{}]:{} ", fleet.ip(i), fleet.port());
    let kh: String = std::fs::read_to_string(&fleet.known_hosts)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(&tag))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&fleet.known_hosts, kh).unwrap();
}

/// A run of `files` to the end with `--events -` and a 1 s convergence:
/// its exit code, its log (stderr) and its stdout (the events).
fn events_run(fleet: &SshdFleet, files: &[&std::path::Path]) -> (i32, String, String) {
    let mut p = Proc::spawn(&mut remote_cmd(
        fleet,
        files,
        &["--converged-timeout", "1", "--events", "-"],
    ));
    let code = p.wait(LIMIT);
    (code, p.lines_so_far().join("\n"), p.stdout_rest())
}

// See: #18 (a run as JSON lines: every host ends with a `done`, the failing
// host's reason is there, the counts are the summary's)
#[test]
fn events_on_stdout_tell_the_whole_run() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    forget(&fleet, 3);
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: g\nresources:\n  exec:\n  - name: hi\n    cmd: \"echo hello events\"\nremote:\n- {}\n- {}\n- {}\n",
            fleet.url(1),
            fleet.url(2),
            fleet.url(3)
        ),
    );
    let (code, log, out) = events_run(&fleet, &[&g]);
    assert_eq!(code, 1, "{log}");
    let evs = events(&out);
    let started = &evs[0];
    assert_eq!(
        started["hosts"].as_array().map(Vec::len),
        Some(3),
        "{started}"
    );
    assert!(started["initiator"]
        .as_str()
        .is_some_and(|s| s.contains('@')));
    assert_eq!(started["flags"]["converged_timeout"], 1, "{started}");
    for i in 1..=2 {
        let host = of(&evs, fleet.ip(i));
        let k = kinds(&host);
        for want in [
            "connecting",
            "authenticated",
            "running",
            "converged",
            "done",
        ] {
            assert!(
                k.iter().any(|x| x == want),
                "{i}: no {want} in {k:?}\n{out}"
            );
        }
        assert!(k.iter().any(|x| x == "copying" || x == "cached"), "{k:?}");
        // After a copy the host shows its start, not a full bar.
        if let Some(at) = k.iter().rposition(|x| x == "copying") {
            let next = k[at + 1..].iter().find(|x| *x != "output");
            assert_eq!(next.map(String::as_str), Some("starting"), "{k:?}");
        }
        assert_eq!(host[0]["host"], fleet.ip(i));
        let done = host.last().unwrap();
        assert_eq!(done["event"], "done", "{k:?}");
        assert_eq!(done["result"], "converged", "{done}");
        assert!(done["wire_bytes"].as_u64() > Some(0), "{done}");
        // A copy's last event is a full bar of what travelled (the
        // compressed form), not of the binary's own size.
        if let Some(last) = host.iter().rev().find(|e| e["event"] == "copying") {
            assert_eq!(last["sent"], last["total"], "{last}");
            assert_eq!(last["sent"], done["binary_bytes"], "{last}\n{done}");
        }
        assert!(
            host.iter().any(|e| e["event"] == "output"
                && e["stream"] == "stderr"
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("hello events"))),
            "no output event for host {i}:\n{out}"
        );
    }
    let bad = of(&evs, fleet.ip(3));
    let failed = bad
        .iter()
        .find(|e| e["event"] == "failed")
        .unwrap_or_else(|| panic!("no failed event:\n{out}"));
    assert_eq!(failed["stage"], "connecting", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("known_hosts")),
        "{failed}"
    );
    let done = bad.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["result"], "failed");
    assert_eq!(done["reason"], failed["reason"]);
    assert_eq!(done["exit_status"], 1);
    // The counts are the human summary's, which stays on stderr.
    let ended = evs.last().unwrap();
    assert!(
        log.contains("2 converged, 1 failed, 0 stopped (3 hosts)"),
        "{log}"
    );
    assert_eq!(
        (
            ended["converged"].as_u64(),
            ended["failed"].as_u64(),
            ended["stopped"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{ended}"
    );
    assert_eq!(ended["hosts"], 3);
    assert_eq!(ended["exit_code"], 1);
    assert_eq!(ended["dropped"], 0);
    assert!(
        !log.contains("\"event\""),
        "events leaked to stderr:\n{log}"
    );
}

/// A child that prints invalid UTF-8, escape sequences, a NUL and a line
/// longer than a host line may be (so it arrives cut in pieces), on both
/// streams, then a marker, then waits for stdin's EOF as a child does.
const GARBAGE: &str = "printf 'bin:\\377\\376\\033[2J\\000\\042\\134end\\n'
printf 'err:\\377\\033]0;x\\007\\n' >&2
head -c 150000 /dev/zero | tr '\\000' a >&2
printf '\\n' >&2
echo garbage-done >&2
exec cat >/dev/null
";

// See: #18 (output events stay valid JSON whatever a host prints)
#[test]
fn output_events_are_json_even_for_binary_garbage() {
    let (fleet, _d, mut p) = crate::hostile_output::planted_run(GARBAGE, &["--events", "-"]);
    p.wait_line("garbage-done", LIMIT);
    interrupt(&mut p);
    let out = p.stdout_rest();
    let evs = events(&out);
    let texts: HashMap<&str, Vec<&str>> = ["stdout", "stderr"]
        .into_iter()
        .map(|s| {
            let t = evs
                .iter()
                .filter(|e| e["event"] == "output" && e["stream"] == s)
                .filter_map(|e| e["text"].as_str())
                .collect();
            (s, t)
        })
        .collect();
    let bin = texts["stdout"]
        .iter()
        .find(|t| t.starts_with("bin:"))
        .unwrap_or_else(|| panic!("no stdout line:\n{out}"));
    // Invalid bytes become U+FFFD; controls, quotes and backslashes survive
    // as JSON escapes and come back exactly.
    assert_eq!(*bin, "bin:\u{fffd}\u{fffd}\u{1b}[2J\u{0}\"\\end");
    assert!(
        texts["stderr"].contains(&"err:\u{fffd}\u{1b}]0;x\u{7}"),
        "{out}"
    );
    let long: usize = texts["stderr"]
        .iter()
        .filter(|t| t.bytes().all(|b| b == b'a'))
        .map(|t| t.len())
        .sum();
    assert_eq!(long, 150_000);
    let done = of(&evs, fleet.ip(1));
    assert_eq!(done.last().unwrap()["event"], "done");
    // Nothing but events on stdout (the host's stdout line went to
    // stderr), each starting with the schema version.
    assert!(out.lines().all(|l| l.starts_with("{\"v\":1,\"ts\":")));
}

// See: #18 (--summary json: the summary as one document on stdout; the
// events to a file)
#[test]
fn summary_json_on_stdout_and_events_to_a_file() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    forget(&fleet, 2);
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1), fleet.url(2)]);
    let file = d.p("events.jsonl");
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &[
            "--converged-timeout",
            "0",
            "--summary",
            "json",
            "--events",
            &file,
        ],
    ));
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 1, "{log}");
    let out = p.stdout_rest();
    let doc: Value = serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["counts"]["converged"], 1, "{doc}");
    assert_eq!(doc["counts"]["failed"], 1, "{doc}");
    let hosts = doc["hosts"].as_array().unwrap();
    let row = |i: usize| hosts.iter().find(|h| h["route"] == fleet.ip(i)).unwrap();
    assert_eq!(row(1)["result"], "converged");
    assert!(row(1)["binary_bytes"].as_u64() > Some(0) || row(1)["cache_hit"] == true);
    assert_eq!(row(2)["result"], "failed");
    assert!(row(2)["reason"]
        .as_str()
        .is_some_and(|r| r.contains("known_hosts")));
    // No table: the counts line is the human summary's.
    assert!(!log.contains("1 converged, 1 failed"), "{log}");
    let evs = events(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(evs.last().unwrap()["failed"], 1);
}

// See: #18 (a host behind a gateway has its events at the initiator, under
// its route)
#[test]
fn hosts_behind_a_gateway_have_their_events() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        &format!(
            "graph: leaf\nremote: {}\nvia:\n- {}\nresources:\n  noop:\n  - name: n\n",
            fleet.url(2),
            fleet.url(1)
        ),
    );
    let (code, log, out) = events_run(&fleet, &[&g]);
    assert_eq!(code, 0, "{log}");
    let evs = events(&out);
    let route = format!("{}/{}", fleet.ip(1), fleet.ip(2));
    let leaf = of(&evs, &route);
    let k = kinds(&leaf);
    for want in ["connecting", "running", "converged", "done"] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    assert_eq!(leaf[0]["host"], fleet.ip(2));
    assert_eq!(leaf.last().unwrap()["result"], "converged");
    let gw = of(&evs, fleet.ip(1));
    assert_eq!(gw.last().unwrap()["result"], "gateway", "{gw:?}");
    assert_eq!(evs.last().unwrap()["gateways"], 1);
}

// See: #18 (the flags are the initiator's, and only one of them may have
// stdout)
#[test]
fn misused_output_flags_are_usage_errors() {
    let d = Dir::new();
    let local = d.write("l.yaml", "graph: l\nresources:\n  noop:\n  - name: n\n");
    let remote = d.write(
        "r.yaml",
        "graph: r\nresources:\n  noop:\n  - name: n\nremote: ssh://root@127.0.0.1:1\n",
    );
    let (l, r) = (local.display().to_string(), remote.display().to_string());
    let cases: [(&[&str], &str); 3] = [
        (&["--file", &l, "--events", "-"], "--events"),
        (&["--file", &l, "--summary", "json"], "--summary"),
        (
            &["--remote", &r, "--summary", "json", "--events", "-"],
            "--summary",
        ),
    ];
    for (args, flag) in cases {
        let out = crate::util::run(crate::util::mgmt().arg("run").args(args), LIMIT);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

// See: #18 (resource events flow up from the hosts, through gateways: which
// resource on which host failed, without parsing logs)
#[test]
fn resource_outcomes_reach_the_initiator_at_every_depth() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    let resources = "resources:\n  exec:\n  - name: ok\n    cmd: \"true\"\n  - name: bad\n    cmd: \"exit 7\"\n";
    let behind = d.write(
        "behind.yaml",
        &format!(
            "graph: behind\nremote: {}\nvia:\n- {}\n{resources}",
            fleet.url(2),
            fleet.url(1)
        ),
    );
    let direct = d.write(
        "direct.yaml",
        &format!("graph: direct\nremote: {}\n{resources}", fleet.url(3)),
    );
    let (code, log, out) = events_run(&fleet, &[&behind, &direct]);
    assert_eq!(code, 1, "{log}");
    // The records are consumed, never shown.
    assert!(!log.contains('\u{1e}'), "{log}");
    let evs = events(&out);
    for route in [
        format!("{}/{}", fleet.ip(1), fleet.ip(2)),
        fleet.ip(3).to_string(),
    ] {
        let res: Vec<&Value> = of(&evs, &route)
            .into_iter()
            .filter(|e| e["event"] == "resource")
            .collect();
        let find = |name: &str| {
            res.iter()
                .find(|e| e["kind"] == "exec" && e["name"] == name)
                .unwrap_or_else(|| panic!("no resource event for {name} on {route}: {res:?}"))
        };
        let bad = find("bad");
        assert_eq!(bad["outcome"], "failed", "{bad}");
        assert!(
            bad["reason"].as_str().is_some_and(|r| r.contains("code 7")),
            "{bad}"
        );
        let ok = find("ok");
        assert!(
            ok["outcome"] == "changed" || ok["outcome"] == "applied",
            "{ok}"
        );
    }
    // A gateway has no resources of its own to report.
    assert!(of(&evs, fleet.ip(1))
        .iter()
        .all(|e| e["event"] != "resource"));
}
