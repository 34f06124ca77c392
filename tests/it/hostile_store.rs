//! Who can reach the store of a remote run (#13): nobody outside the run.
//! The initiator's own client talks to its store in-process and hosts come
//! through their authenticated tunnels, so a remote run opens no TCP
//! listener at all unless `--client-urls` asks for one; an unprivileged
//! local user then has nothing to connect to. What is checked is the
//! kernel's view: the listening sockets held by the initiator's process.
//! A listener asked for needs a password: etcd's authentication is on from
//! the start, and a local user without it is refused everything.

use std::collections::HashSet;

use crate::remote_run::{interrupt, noop_run, remote_cmd, LIMIT};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `local address` of every TCP socket in LISTEN state, by inode, from
/// /proc/net/tcp and tcp6 (the network namespace of this test).
fn listening_tcp() -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    out.push((inode, f[1].to_owned()));
                }
            }
        }
    }
    out
}

/// The TCP listeners the process `pid` holds.
fn listeners_of(pid: i32) -> Vec<String> {
    let mine = socket_inodes(pid);
    listening_tcp()
        .into_iter()
        .filter(|(inode, _)| mine.contains(inode))
        .map(|(_, addr)| addr)
        .collect()
}

// See: #13 (the store answered anyone on the laptop's loopback)
#[test]
fn a_remote_run_opens_no_store_listener() {
    let (fleet, _d, mut p) = noop_run(2, &[]);
    p.wait_all(
        &[
            &format!("[{}] running", fleet.ip(1)),
            &format!("[{}] running", fleet.ip(2)),
        ],
        LIMIT,
    );
    let listeners = listeners_of(p.pid());
    let log = p.lines_so_far().join("\n");
    assert!(
        listeners.is_empty(),
        "the initiator listens on {listeners:?}\n{log}"
    );
    assert!(!log.contains("store: listening on"), "{log}");
    interrupt(&mut p);
}

// See: #13 (a remote run's listener answered anyone without credentials)
#[test]
fn a_remote_runs_listener_needs_a_password_file() {
    let (_fleet, _d, mut p) = noop_run(1, &["--client-urls", "127.0.0.1:0"]);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("--client-urls") && log.contains("--store-password-file FILE"),
        "{log}"
    );
}

/// etcdctl run as `nobody` against `url`: its exit code and what it printed.
fn etcdctl_as_nobody(url: &str, args: &str) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = crate::util::hostile::nobody();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "etcdctl --endpoints={url} --dial-timeout=5s {args}"
        ))
        .env("ETCDCTL_API", "3")
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run etcdctl as nobody");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// With `--store-password-file` the listener is there (the check above
/// sees it), and a local user without the password gets nothing from it:
/// not the hosts' keys, not a write, not a login with a guessed password.
/// The operator, with the password, reads the same keys (the control).
#[test]
fn a_local_user_without_the_password_gets_nothing_from_the_listener() {
    let listener = crate::util::listener_args();
    let listener: Vec<&str> = listener.iter().map(String::as_str).collect();
    let (fleet, _d, mut p) = noop_run(1, &listener);
    let url = p.store_url(LIMIT);
    p.wait_line(&format!("[{}] running", fleet.ip(1)), LIMIT);
    assert_eq!(listeners_of(p.pid()).len(), 1);
    let converged = format!("/_mgmt/converged/{}", fleet.ip(1));
    assert!(
        crate::util::eventually(LIMIT, || store_keys(&url).contains(&converged)),
        "root never saw {converged}"
    );
    let tries = [
        ("get --prefix /_mgmt/", "user name is empty"),
        (&*format!("put {converged} true"), "user name is empty"),
        (
            "--user root:guess get --prefix /_mgmt/",
            "authentication failed",
        ),
        ("--user root: get --prefix /_mgmt/", "user name is empty"),
        ("user add evil:evil", "user name is empty"),
        ("auth disable", "user name is empty"),
    ];
    for (args, why) in tries {
        let (code, out) = etcdctl_as_nobody(&url, args);
        assert_ne!(code, 0, "nobody ran `etcdctl {args}`: {out}");
        assert!(out.contains(why), "etcdctl {args}: {out}");
        assert!(!out.contains("/_mgmt/"), "etcdctl {args} leaked: {out}");
    }
    // Nothing changed: the key is still there, and root still logs in.
    assert!(store_keys(&url).contains(&converged));
    interrupt(&mut p);
}

/// Plants `script` as what the host runs: the binary shipped is `/bin/sh`,
/// so the launch `./mgmt run …` runs `sh run …`, i.e. this script with the
/// child's arguments (the tunnel secret on its stdin). A compromised host
/// can run whatever it likes in the child's place; this is how a test gets
/// one out of a real sshd.
pub(crate) fn plant_child(fleet: &SshdFleet, i: usize, script: &str) {
    plant_command(fleet, i, "run", script);
}

/// [`plant_child`] for the launch of `./mgmt COMMAND …` (`facts`, say).
pub(crate) fn plant_command(fleet: &SshdFleet, i: usize, command: &str, script: &str) {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let sh = std::fs::read("/bin/sh").expect("read /bin/sh");
    let sha = hex::encode(sha2::Sha256::digest(&sh));
    let dir = fleet.home(i).join(".cache/mgmt/bin").join(sha);
    std::fs::create_dir_all(&dir).unwrap();
    let run = dir.join(command);
    std::fs::write(&run, script).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A child that runs the real mgmt with the arguments it got, but the value
/// after `flag` replaced by `value`: a compromised host claiming another
/// name (`--hostname`) or choosing what it runs (`--file`), through its own
/// authenticated tunnel. A graph sent on stdin (`--graph-stdin=N`, a warm
/// start) counts as `--file`: the real mgmt then reads the file instead and
/// discards the graph with the rest of its stdin.
fn tampered(flag: &str, value: &str) -> String {
    format!(
        r#"prev=
n=$#
for a in "$@"; do
  if [ "$prev" = {flag} ]; then a={value}; fi
  case {flag}$a in --file--graph-stdin=*) set -- "$@" --file; a={value} ;; esac
  set -- "$@" "$a"
  prev=$a
done
shift $n
exec {mgmt} run "$@"
"#,
        mgmt = env!("CARGO_BIN_EXE_mgmt")
    )
}

/// Every key under `/_mgmt/` in the store at `url`.
fn store_keys(url: &str) -> Vec<String> {
    crate::util::store_kvs(url, "/_mgmt/")
        .into_iter()
        .map(|(k, _, _)| k)
        .collect()
}

// See: #13 (one secret for the whole run: any host could write any other
// host's exports and converged key)
#[test]
fn a_host_cannot_write_another_hosts_keys() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (attacker, victim) = (fleet.ip(1).to_string(), fleet.ip(2).to_string());
    plant_child(&fleet, 1, &tampered("--hostname", &victim));
    // The victim's child only waits for the end: it writes nothing.
    plant_child(&fleet, 2, "exec cat >/dev/null\n");
    let graph = |i: usize| {
        d.write(
            &format!("g{i}.yaml"),
            &format!(
                "graph: g{i}\nresources:\n  noop:\n  - name: n\n  file:\n  - name: \"@@planted\"\n    path: /tmp/planted\n    content: \"from {i}\\n\"\nremote: {}\n",
                fleet.url(i)
            ),
        )
    };
    let (g1, g2) = (graph(1), graph(2));
    // A listener only so that this test can read the store afterwards.
    let mut p = Proc::spawn(
        remote_cmd(&fleet, &[&g1, &g2], &["--remote-binary", "/bin/sh"])
            .args(crate::util::listener_args()),
    );
    let url = p.store_url(LIMIT);
    let refused = p.wait_line(&format!("store: {attacker} tried to"), LIMIT);
    assert!(
        refused.contains(&victim) && refused.contains("refused"),
        "{refused}"
    );
    let keys = store_keys(&url);
    assert!(
        keys.iter().all(|k| !k.contains(&victim)),
        "the impostor wrote under the victim's name: {keys:?}"
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    p.wait(LIMIT);
}

// See: #13 (a gateway's route records could end hosts outside its subtree)
#[test]
fn a_gateway_cannot_speak_for_hosts_outside_its_subtree() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let victim = fleet.ip(2).to_string();
    // The "gateway" reports the victim, a direct host of the run, as ended.
    let record = format!(r#"{{"t":"host","host":"{victim}","route":"{victim}","running":false}}"#);
    plant_child(
        &fleet,
        1,
        &format!("printf '\\036mgmt:%s\\n' '{record}'\nexec cat >/dev/null\n"),
    );
    plant_child(&fleet, 2, "exec cat >/dev/null\n");
    let (direct, behind) = direct_and_behind(&d, &fleet);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&direct, &behind],
        &["--remote-binary", "/bin/sh"],
    ));
    let refused = p.wait_line("which is not behind it; refused", LIMIT);
    assert!(refused.contains(&format!("{victim:?}")), "{refused}");
    p.signal(nix::sys::signal::Signal::SIGINT);
    p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    assert!(
        !log.contains(&format!("[{victim}] done")) || log.contains("stopping"),
        "the victim was ended by the gateway's word\n{log}"
    );
}

/// Two graphs for a planted gateway: one for host 2 reached directly, one
/// for a host `leaf` behind host 1 (the gateway, whose child is planted).
pub(crate) fn direct_and_behind(
    d: &Dir,
    fleet: &SshdFleet,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let direct = d.write(
        "direct.yaml",
        &format!(
            "graph: direct\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(2)
        ),
    );
    let behind = d.write(
        "behind.yaml",
        &format!(
            "graph: behind\nresources:\n  noop:\n  - name: n\nvia: [{}]\nremote: ssh://root@127.0.0.9:2222\nhostname: leaf\n",
            fleet.url(1)
        ),
    );
    (direct, behind)
}

/// Host 1 (the attacker) runs the graph `evil` instead of its own once host
/// 2 (the victim, running the real child unchanged) has made its `ready`
/// file, whose path is returned for the victim's graph.
fn attack_after_victim(fleet: &SshdFleet, evil: &std::path::Path) -> std::path::PathBuf {
    let ready = fleet.home(2).join("ready");
    let wait_ready = format!("while [ ! -e {} ]; do sleep 0.1; done\n", ready.display());
    plant_child(
        fleet,
        1,
        &(wait_ready + &tampered("--file", &evil.display().to_string())),
    );
    plant_child(
        fleet,
        2,
        &format!("exec {} run \"$@\"\n", env!("CARGO_BIN_EXE_mgmt")),
    );
    ready
}

// See: #13 (a host could read every other host's exports)
#[test]
fn a_host_reads_only_what_its_graph_collects() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (attacker, victim) = (fleet.ip(1).to_string(), fleet.ip(2).to_string());
    let (home1, home2) = (fleet.home(1), fleet.home(2));
    // What the attacker runs instead of its graph: collect every export.
    let evil = home1.join("evil.yaml");
    std::fs::write(
        &evil,
        format!(
            "graph: evil\nresources:\n  noop:\n  - name: n\ncollect:\n- kind: file\n  pattern: {}/stolen/\n",
            home1.display()
        ),
    )
    .unwrap();
    // It starts once the victim has exported (the victim's `ready` file is
    // applied after its export), so that there is something to steal.
    let ready = attack_after_victim(&fleet, &evil);
    // What the attacker's graph declares reads exchanged values (#15):
    // that opens every host's values, not their other exports.
    let g1 = d.write(
        "g1.yaml",
        &format!(
            "graph: g1\nresources:\n  noop:\n  - name: \"n{{{{ values('peer') | length }}}}\"\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let g2 = d.write(
        "g2.yaml",
        &format!(
            "graph: g2\nresources:\n  file:\n  - name: \"@@secret\"\n    path: {}/secret\n    content: \"victim's secret\\n\"\n  - name: ready\n    path: {}\n    content: \"\"\nremote: {}\n",
            home2.display(),
            ready.display(),
            fleet.url(2)
        ),
    );
    let mut p = Proc::spawn(
        remote_cmd(&fleet, &[&g1, &g2], &["--remote-binary", "/bin/sh"])
            .args(crate::util::listener_args()),
    );
    let url = p.store_url(LIMIT);
    p.wait_line(&format!("store: {attacker} tried to"), LIMIT);
    // The secret was in the store when the attacker asked ...
    assert!(
        store_keys(&url).iter().any(|k| k.contains(&victim)),
        "the victim never exported"
    );
    // ... and the refusal is final: the attacker's host fails on etcd's
    // `permission denied` (no retrying its way in), nothing landed.
    let failed = p.wait_line(&format!("[{attacker}] failed"), LIMIT);
    assert!(failed.contains("permission denied"), "{failed}");
    assert!(
        !home1.join("stolen/secret").exists(),
        "the attacker collected the victim's export"
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    p.wait(LIMIT);
    assert!(!home1.join("stolen/secret").exists());
}

// See: #20 (facts in the store: a host reads other hosts' facts records
// only when the graph it was given calls `hosts()`)
#[test]
fn a_host_reads_other_hosts_facts_only_when_its_graph_asks() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let (attacker, victim) = (fleet.ip(1).to_string(), fleet.ip(2).to_string());
    let home1 = fleet.home(1);
    // What the attacker runs instead of its graph: every host's facts.
    let evil = home1.join("evil.yaml");
    std::fs::write(
        &evil,
        format!(
            "graph: evil\nresources:\n  file:\n  - name: {}/stolen\n    content: \"{{{{ hosts('true') | map(attribute='name') | join(',') }}}}\"\n",
            home1.display()
        ),
    )
    .unwrap();
    // It starts once the victim's graph has been applied, by which time the
    // victim's facts record is in the store.
    let ready = attack_after_victim(&fleet, &evil);
    // The graph the initiator gave the attacker never calls hosts().
    let g1 = d.write(
        "g1.yaml",
        &format!(
            "graph: g1\nresources:\n  noop:\n  - name: n\nremote: {}\n",
            fleet.url(1)
        ),
    );
    let g2 = d.write(
        "g2.yaml",
        &format!(
            "graph: g2\nresources:\n  file:\n  - name: {}\n    content: \"\"\nremote: {}\n",
            ready.display(),
            fleet.url(2)
        ),
    );
    let mut p = Proc::spawn(
        remote_cmd(&fleet, &[&g1, &g2], &["--remote-binary", "/bin/sh"])
            .args(crate::util::listener_args()),
    );
    let url = p.store_url(LIMIT);
    p.wait_line(&format!("store: {attacker} tried to"), LIMIT);
    assert!(
        store_keys(&url)
            .iter()
            .any(|k| k == &format!("/_mgmt/facts/{victim}")),
        "the victim's facts were never published"
    );
    let failed = p.wait_line(&format!("[{attacker}] failed"), LIMIT);
    assert!(failed.contains("permission denied"), "{failed}");
    let stolen = std::fs::read_to_string(home1.join("stolen")).unwrap_or_default();
    assert!(
        !stolen.contains(&victim),
        "the attacker read the victim's facts"
    );
    p.signal(nix::sys::signal::Signal::SIGINT);
    p.wait(LIMIT);
}
