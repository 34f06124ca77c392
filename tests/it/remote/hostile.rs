//! Trust boundaries of the SSH layer against a real sshd and the real user
//! `nobody` as the attacker (#13): cache directories someone else could
//! change are refused, naming the directory, before anything is written or
//! run there; a fallback directory planted in `/tmp` is never adopted; a
//! revoked host key is refused and never learned.

use std::path::{Path, PathBuf};

use mgmt::ssh::hostkey::{HostKeyError, HostKeyPolicy};
use mgmt::ssh::strict::{Place, Untrusted};
use mgmt::ssh::{connect, CacheOptions, ConnectError, UploadError};

use super::{guard, Upload};
use crate::util::hostile::{as_nobody, nobody, owner_and_mode, Area};
use crate::util::sshd::SshdFleet;

/// Size of the uploaded payload, and of what nobody plants: a planted file
/// of the right size is what a cache hit looks like.
const SIZE: usize = 4096;

/// One hostile layout: where the cache is asked for, and which directory
/// the refusal must name, with why.
struct Case {
    what: &'static str,
    prefix: PathBuf,
    at_fault: PathBuf,
    place: Place,
    why: Untrusted,
    /// The planted binary (if any) and what it held.
    planted: Option<(PathBuf, Vec<u8>)>,
}

/// The layouts, each built for real: directories given to nobody or left
/// open to it, and nobody's own process planting a binary in them.
fn cases(area: &Area, sha: &str) -> Vec<Case> {
    let (uid, gid) = nobody();
    let planted = |prefix: &Path| {
        let bin = area.plant(prefix, sha, SIZE);
        let body = std::fs::read(&bin).expect("planted");
        Some((bin, body))
    };
    let owned = area.dir("owned", 0o755, (uid, gid));
    let world = area.dir("world", 0o777, (0, 0));
    let group = area.dir("group", 0o770, (0, gid));
    // A cache root made for root, under a directory nobody owns: nobody
    // swaps it for its own (the attack the parent's owner can always make).
    let parent = area.dir("parent", 0o755, (uid, gid));
    let cache = area.dir("parent/cache", 0o700, (0, 0));
    as_nobody(&format!(
        "mv '{c}' '{c}.old' && mkdir -m 700 '{c}'",
        c = cache.display()
    ));
    vec![
        Case {
            what: "a prefix owned by nobody",
            planted: planted(&owned),
            prefix: owned.clone(),
            at_fault: owned,
            place: Place::Private,
            why: Untrusted::Owner {
                owner: uid,
                login: 0,
            },
        },
        Case {
            what: "a world-writable prefix",
            planted: planted(&world),
            prefix: world.clone(),
            at_fault: world,
            place: Place::Private,
            why: Untrusted::Writable { mode: 0o777 },
        },
        Case {
            what: "a group-writable prefix",
            planted: planted(&group),
            prefix: group.clone(),
            at_fault: group,
            place: Place::Private,
            why: Untrusted::Writable { mode: 0o770 },
        },
        Case {
            what: "a prefix under a directory owned by nobody",
            planted: planted(&cache),
            prefix: cache,
            at_fault: parent,
            place: Place::Ancestor,
            why: Untrusted::Owner {
                owner: uid,
                login: 0,
            },
        },
    ]
}

// See: #13 (root adopted a directory another user created, who could swap
// `mgmt` between the hash check and the exec)
#[tokio::test]
async fn cache_directories_others_can_change_are_refused_and_nothing_runs() {
    let fleet = SshdFleet::start(1);
    let area = Area::new();
    guard(async {
        let u = Upload::start(&fleet, SIZE).await;
        for case in cases(&area, &u.hash) {
            let what = case.what;
            let before = owner_and_mode(&case.at_fault);
            let prefix = case.prefix.display().to_string();
            let opts = CacheOptions {
                prefix: Some(prefix.clone()),
                ..Default::default()
            };
            let e = u.ensure(&opts).await.expect_err(what);
            let UploadError::Untrusted { place, path, why } = &e.kind else {
                panic!("{what}: {e}");
            };
            assert_eq!(
                (*place, Path::new(path), why),
                (case.place, case.at_fault.as_path(), &case.why),
                "{what}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&case.at_fault.display().to_string()), "{msg}");
            assert!(msg.contains("refusing to use it"), "{msg}");
            let hint = e.hint().unwrap_or_default();
            assert!(hint.contains("StrictModes"), "{what}: {hint}");
            // Per-run files are refused there too.
            let run = u
                .sftp
                .put_run_file(&u.s, Some(&prefix), "r1", "g.yaml", b"x");
            assert!(run.await.is_err(), "{what}: run files written");
            // Not adopted (no chown, no chmod), nothing added, nothing run.
            assert_eq!(owner_and_mode(&case.at_fault), before, "{what}");
            assert!(!case.prefix.join("run").exists(), "{what}");
            if let Some((bin, body)) = &case.planted {
                assert_eq!(&std::fs::read(bin).expect("planted"), body, "{what}");
                let dir = bin.parent().expect("dir");
                assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 1, "{what}");
            }
            assert!(!area.marker().exists(), "{what}: the planted mgmt ran");
        }
        u.s.close().await;
    })
    .await;
}

/// Removes a directory made in `/tmp` for a test, by path, on drop.
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// See: #13 (the /tmp fallback: /tmp is shared, root's and sticky)
#[tokio::test]
async fn a_fallback_directory_planted_in_tmp_is_never_adopted() {
    let fleet = SshdFleet::start(1);
    let area = Area::new();
    guard(async {
        // Another size than the other tests' payloads: its own binary, even
        // if a parallel test uses the same fallback directory.
        let size = SIZE + 1;
        let u = Upload::start(&fleet, size).await;
        // nobody's look-alike of our fallback, 0700, a binary inside.
        let name = format!("/tmp/mgmt-root-{}", std::process::id());
        let fake = RemoveOnDrop(PathBuf::from(&name));
        as_nobody(&format!("mkdir -m 700 '{name}'"));
        area.plant(&fake.0, &u.hash, size);
        let opts = CacheOptions {
            prefix: Some("/proc/mgmt-cannot-exist".into()),
            ..Default::default()
        };
        let cached = u.ensure(&opts).await.expect("a fallback of our own");
        assert!(cached.fallback);
        assert_ne!(cached.prefix, name);
        assert_eq!(owner_and_mode(Path::new(&cached.prefix)), (0, 0o700));
        let o = u.launch_x(&cached).await;
        assert_eq!(o.stdout, ["ran x"], "{o:?}");
        assert!(!area.marker().exists(), "the planted mgmt ran");
        u.sftp.remove_binary(&cached).await.expect("cleanup");
        u.s.close().await;
    })
    .await;
}

// See: #13 (@revoked lines were skipped: the key was accepted, or learned)
#[tokio::test]
async fn a_revoked_host_key_is_refused_and_never_learned() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let entry = format!("[{}]:{}", fleet.ip(1), fleet.port());
        let revoked = format!("@revoked * {}\n", fleet.host_pub);
        let known = format!("{entry} {}\n", fleet.host_pub);
        let cases = [
            (HostKeyPolicy::Strict, format!("{known}{revoked}"), 2),
            (HostKeyPolicy::AcceptNew, format!("# revoked\n{revoked}"), 2),
            (HostKeyPolicy::AcceptNew, format!("{revoked}{known}"), 1),
            (HostKeyPolicy::Off, revoked.clone(), 1),
        ];
        for (policy, text, line) in cases {
            let path = fleet.dir().join("revoked_known_hosts");
            std::fs::write(&path, &text).expect("write");
            let mut settings = fleet.settings();
            settings.known_hosts.path = path.clone();
            settings.known_hosts.policy = policy;
            let e = connect(&fleet.target(1), &settings)
                .await
                .expect_err("revoked key");
            let msg = e.to_string();
            assert!(
                matches!(e.kind, ConnectError::HostKey(HostKeyError::Revoked { .. })),
                "{policy:?}: {msg}"
            );
            assert!(msg.contains(&format!("{}:{line}", path.display())), "{msg}");
            assert!(msg.contains(fleet.ip(1)), "{msg}");
            let hint = e.hint().unwrap_or_default();
            assert!(hint.contains("revoked") && hint.contains(&entry), "{hint}");
            let after = std::fs::read_to_string(&path).expect("read");
            assert_eq!(after, text, "{policy:?}: the file changed");
        }
    })
    .await;
}
