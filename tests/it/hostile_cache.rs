//! Trust boundaries of whole `mgmt run --remote` runs against a real sshd
//! (#13): a host whose cache directory belongs to someone else fails alone,
//! naming the directory, and nothing in it runs; nothing is made or
//! chmodded below a directory someone else owns; a URL password never shows
//! in the output or the logs and never lands on the host's disk (a leaf's
//! graph file carries no `remote:` at all); passwords behind a gateway and
//! unescaped `/?#` in a password are input errors that do not print them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::remote_run::{one_noop_graph, read, remote_cmd, row, LIMIT};
use crate::util::hostile::{any_file_contains, files_under, nobody, owner_and_mode};
use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, run, Dir, Proc};

/// A graph writing host 1's `<home>/hello`, reached by `url`.
fn hello_graph(d: &Dir, fleet: &SshdFleet, url: &str) -> PathBuf {
    let path = fleet.home(1).join("hello");
    d.write(
        "hello.yaml",
        &format!(
            "graph: hello\nresources:\n  file:\n  - name: hello\n    path: {}\n    \
             content: \"hi\\n\"\nremote: {url}\n",
            path.display()
        ),
    )
}

/// The SHA-256 of the binary every host gets.
fn binary_sha() -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(crate::util::shipped()).expect("binary");
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).expect("hash");
    hex::encode(h.finalize())
}

/// Makes `cache` (host 1's default cache) nobody's, with a planted
/// `bin/<sha>/mgmt` that writes `marker` if it runs. nobody cannot reach
/// the fleet's homes (its directory is 0700), so root builds the directory
/// and hands it over, as if nobody had made it. Returns the planted file.
fn give_cache_to_nobody(cache: &Path, sha: &str, marker: &Path) -> PathBuf {
    let dir = cache.join("bin").join(sha);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bin = dir.join("mgmt");
    let script = format!("#!/bin/sh\ntouch {}\nexit 0\n", marker.display());
    std::fs::write(&bin, script).expect("plant");
    let (uid, gid) = nobody();
    for p in [cache.to_path_buf(), cache.join("bin"), dir, bin.clone()] {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
    }
    bin
}

// See: #13 (root adopted a cache directory another user created)
#[test]
fn a_cache_owned_by_nobody_fails_that_host_only_and_nothing_runs_there() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    let cache = fleet.home(1).join(".cache/mgmt");
    let marker = d.path().join("planted-mgmt-ran");
    let planted = give_cache_to_nobody(&cache, &binary_sha(), &marker);
    let before = (
        owner_and_mode(&cache),
        std::fs::read(&planted).expect("read"),
    );
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1), fleet.url(2)]);
    let out = run(
        &mut remote_cmd(&fleet, &[&g], &["--converged-timeout", "1"]),
        LIMIT,
    );
    let log = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{log}");
    assert!(row(&log, fleet.ip(1))[2].starts_with("failed"), "{log}");
    assert_eq!(row(&log, fleet.ip(2))[2], "converged", "{log}");
    let named = format!(
        "the cache directory {} is owned by uid {}",
        cache.canonicalize().expect("cache").display(),
        nobody().0
    );
    assert!(log.contains(&named), "{log}");
    assert!(log.contains("StrictModes"), "no hint in:\n{log}");
    // Not adopted, nothing added to it, nothing run from it.
    assert_eq!(
        (
            owner_and_mode(&cache),
            std::fs::read(&planted).expect("read")
        ),
        before
    );
    assert_eq!(files_under(&cache), [planted], "{log}");
    assert!(!marker.exists(), "the planted mgmt ran:\n{log}");
    // The other host ran from its own cache.
    assert!(fleet.home(2).join(".cache/mgmt/bin").is_dir());
}

// See: #17 (the cache's missing directories are made in one round: never
// below a directory someone else owns, which is judged first)
#[test]
fn nothing_is_made_or_changed_below_a_directory_nobody_owns() {
    let fleet = SshdFleet::start(2);
    let d = Dir::new();
    // nobody's directory above the prefix, which is root's own, 0755 (a
    // private one is chmodded to 0700 once trusted: here that would go
    // through nobody's), with nothing in it yet.
    let shared = fleet.home(1).join("shared");
    let own = shared.join("own");
    std::fs::create_dir_all(&own).expect("mkdir");
    std::fs::set_permissions(&own, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (uid, gid) = nobody();
    std::os::unix::fs::chown(&shared, Some(uid), Some(gid)).expect("chown");
    let before = (owner_and_mode(&shared), owner_and_mode(&own));
    let g = one_noop_graph(&d, "g.yaml", &[fleet.url(1), fleet.url(2)]);
    let prefix = [
        "--converged-timeout",
        "1",
        "--remote-prefix",
        "~/shared/own",
    ];
    let out = run(&mut remote_cmd(&fleet, &[&g], &prefix), LIMIT);
    let log = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{log}");
    assert!(row(&log, fleet.ip(1))[2].starts_with("failed"), "{log}");
    assert_eq!(row(&log, fleet.ip(2))[2], "converged", "{log}");
    let named = format!("{} is owned by uid {uid}", shared.display());
    assert!(log.contains(&named), "{log}");
    // Nothing made below it, nothing chmodded through it, nothing run.
    assert_eq!((owner_and_mode(&shared), owner_and_mode(&own)), before);
    assert_eq!(std::fs::read_dir(&own).expect("ls").count(), 0, "{log}");
    assert!(fleet.home(2).join("shared/own/bin").is_dir(), "{log}");
}

/// A password with every URL delimiter, as written in the URL (escaped)
/// and as it is.
const PASSWORD: &str = "Zq8k/Yv4m?Xw2p#Tu6r";
const ESCAPED: &str = "Zq8k%2FYv4m%3FXw2p%23Tu6r";

/// Each piece of [`PASSWORD`] between delimiters, none of which may show.
fn pieces() -> [&'static str; 4] {
    ["Zq8k", "Yv4m", "Xw2p", "Tu6r"]
}

fn assert_no_password(what: &str, text: &str) {
    for p in pieces() {
        assert!(
            !text.contains(p),
            "{what} shows {p:?} of the password:\n{text}"
        );
    }
}

// See: #13 (the graphs on the hosts carried every host's `remote:` URL)
#[test]
fn a_url_password_never_shows_nor_lands_on_the_hosts_disk() {
    // A warm start's graph goes on the child's stdin and never to the
    // disk; without caching it goes into the run directory over SFTP,
    // where its text is checked too.
    for caching in [true, false] {
        let fleet = SshdFleet::start(1);
        let d = Dir::new();
        // Keys authenticate first: the password is there, never needed.
        let url = format!("ssh://root:{ESCAPED}@{}:{}", fleet.ip(1), fleet.port());
        let g = hello_graph(&d, &fleet, &url);
        let mut extra = vec!["-vv", "--converged-timeout", "-1"];
        if !caching {
            extra.push("--no-caching");
        }
        let mut p = Proc::spawn(&mut remote_cmd(&fleet, &[&g], &extra));
        // The child has applied its graph: its files are on the host now.
        p.wait_line("settled:", LIMIT);
        let home = fleet.home(1);
        assert_eq!(read(&home.join("hello")).as_deref(), Some("hi\n"));
        let graphs: Vec<PathBuf> = files_under(&home.join(".cache/mgmt/run"))
            .into_iter()
            .filter(|f| f.ends_with("graph.yaml"))
            .collect();
        match caching {
            true => assert!(graphs.is_empty(), "a graph on the disk: {graphs:?}"),
            false => {
                assert_eq!(graphs.len(), 1, "{graphs:?}");
                let on_host = read(&graphs[0]).expect("graph on the host");
                assert!(on_host.contains("hello"), "{on_host}");
                for needle in ["remote", "ssh://", "via", "root:", ESCAPED] {
                    assert!(
                        !on_host.contains(needle),
                        "{needle:?} in the host's graph:\n{on_host}"
                    );
                }
                assert_no_password("the host's graph", &on_host);
            }
        }
        let on_disk = |when: &str| {
            for needle in [PASSWORD, ESCAPED, pieces()[0]] {
                if let Some(f) = any_file_contains(&home, needle.as_bytes()) {
                    panic!("{when}: {needle:?} in {}", f.display());
                }
            }
        };
        on_disk("while running");
        p.signal(nix::sys::signal::Signal::SIGINT);
        assert_eq!(p.wait(LIMIT), 0, "{}", p.lines_so_far().join("\n"));
        let log = format!("{}\n{}", p.stdout_rest(), p.lines_so_far().join("\n"));
        assert!(log.contains("DEBUG"), "-vv logs expected:\n{log}");
        assert_no_password("the run's output", &log);
        assert_no_password("sshd's log", &fleet.log());
        on_disk("after the run");
    }
}

// See: #13 (a URL error printed the password when it held '/', '?' or '#')
#[test]
fn password_urls_refused_up_front_are_never_printed() {
    let d = Dir::new();
    let known = d.write("known_hosts", "");
    let raw = d.write(
        "raw.yaml",
        &format!("graph: raw\nremote: \"ssh://root:{PASSWORD}@127.0.0.1:2\"\n"),
    );
    let behind = d.write(
        "behind.yaml",
        &format!("graph: behind\nremote: ssh://root:{ESCAPED}@leaf:22\nvia: ssh://admin@gw:22\n"),
    );
    let cases = [(raw, "%2F, %3F, %23"), (behind, "behind a gateway")];
    for (g, why) in cases {
        let mut c = mgmt();
        c.args(["run", "--remote"])
            .arg(&g)
            .arg("--known-hosts")
            .arg(&known)
            .args(["-vv", "--converged-timeout", "0"]);
        let out = run(&mut c, Duration::from_secs(60));
        let log = format!("{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.code, 2, "{log}");
        assert!(log.contains(why) && log.contains("root:***@"), "{log}");
        assert_no_password(why, &log);
    }
}
