//! Each host records each run (#13): a line when its child starts and one
//! when it ends, with the run id, the initiator's `user@host`, the graph's
//! SHA-256, the time it ran and how it ended. The test machine has no
//! `/dev/log`, so the lines land in `audit.log` beside the host's cache;
//! the syslog path is tested against a real datagram socket in
//! `audit.rs`'s unit tests.

use crate::remote_run::{noop_run, LIMIT};

// See: #13 (audit)
#[test]
fn every_host_records_the_run_it_took_part_in() {
    let (fleet, _d, mut p) = noop_run(2, &["--converged-timeout", "1"]);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let me = format!(
        "{user}@{}",
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );
    for i in [1, 2] {
        let path = fleet.home(i).join(".cache/mgmt/audit.log");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{log}", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let head = |l: &str| l.split_once(' ').map(|(_, rest)| rest.to_owned()).unwrap();
        let (start, end) = (head(lines[0]), head(lines[1]));
        let prefix = start.strip_suffix(" started").expect("a started line");
        assert!(end.starts_with(prefix), "{start}\n{end}");
        assert!(end.ends_with(": converged"), "{end}");
        assert!(
            prefix.contains(&format!(" on {} by {me} graph sha256:", fleet.ip(i))),
            "{prefix}"
        );
        let sha = prefix.rsplit("sha256:").next().unwrap();
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sha}"
        );
    }
}
