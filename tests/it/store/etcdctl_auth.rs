//! etcd's Auth API through the real Go `etcdctl` 3.4, against both servers
//! (#13, #14): one script, from auth off to users, roles, key-range
//! permissions, tokens, refusals and back to auth off, runs against a fresh
//! store of ours and a fresh etcd, and every step must print the same.
//!
//! Left out on purpose, because ours is stricter (see `docs/store.md`):
//! `compaction` by a user without the `root` role, which etcd 3.4 allows.

use super::etcdctl::{which_etcdctl, Target};
use super::{guard, Ours};
use crate::util::etcd::Etcd;

/// The script: each step's name and normalised output, in order.
async fn session(t: &Target) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = ["--user", "root:pw"];
    let alice = ["--user", "alice:pa"];
    macro_rules! step {
        ($name:expr, $who:expr, [$($a:expr),*]) => {
            step!($name, $who, [$($a),*], None)
        };
        ($name:expr, $who:expr, [$($a:expr),*], $stdin:expr) => {{
            let mut args: Vec<&str> = $who.to_vec();
            args.extend([$($a),*]);
            out.push(($name.to_string(), t.run(&args, $stdin).await));
        }};
    }
    let anyone: [&str; 0] = [];
    step!("enable without root", anyone, ["auth", "enable"]);
    step!("add root", anyone, ["user", "add", "root:pw"]);
    step!("enable", anyone, ["auth", "enable"]);
    step!("get without a user", anyone, ["get", "foo"]);
    step!("put without a user", anyone, ["put", "foo", "x"]);
    step!("wrong password", ["--user", "root:bad"], ["get", "foo"]);
    step!("unknown user", ["--user", "mallory:pw"], ["get", "foo"]);
    step!("root puts", root, ["put", "foo", "bar"]);
    step!("root gets", root, ["get", "foo"]);
    step!("add alice", root, ["user", "add", "alice:pa"]);
    step!("add alice again", root, ["user", "add", "alice:pa"]);
    step!("add r1", root, ["role", "add", "r1"]);
    step!("add r1 again", root, ["role", "add", "r1"]);
    step!(
        "grant read foo",
        root,
        ["role", "grant-permission", "r1", "read", "foo"]
    );
    step!(
        "grant readwrite /a/",
        root,
        [
            "role",
            "grant-permission",
            "--prefix",
            "r1",
            "readwrite",
            "/a/"
        ]
    );
    step!(
        "grant read from k",
        root,
        ["role", "grant-permission", "--from-key", "r1", "read", "k"]
    );
    step!("role get r1", root, ["role", "get", "r1"]);
    step!(
        "grant r1 to alice",
        root,
        ["user", "grant-role", "alice", "r1"]
    );
    step!(
        "grant r1 twice",
        root,
        ["user", "grant-role", "alice", "r1"]
    );
    step!(
        "grant a missing role",
        root,
        ["user", "grant-role", "alice", "r9"]
    );
    step!("user get alice", root, ["user", "get", "alice"]);
    step!("user get bob", root, ["user", "get", "bob"]);
    step!("user list", root, ["user", "list"]);
    step!("role list", root, ["role", "list"]);
    step!("role get root", root, ["role", "get", "root"]);
    step!("alice reads foo", alice, ["get", "foo"]);
    step!("alice writes foo", alice, ["put", "foo", "x"]);
    step!("alice writes /a/b", alice, ["put", "/a/b", "x"]);
    step!("alice reads /a/", alice, ["get", "--prefix", "/a/"]);
    step!("alice reads /a", alice, ["get", "--prefix", "/a"]);
    step!("alice reads from k", alice, ["get", "--from-key", "kz"]);
    step!("alice deletes /a/b", alice, ["del", "/a/b"]);
    step!(
        "alice txn outside",
        alice,
        ["txn"],
        Some("\nput foo y\n\n\n")
    );
    step!("alice lists users", alice, ["user", "list"]);
    step!("alice adds a user", alice, ["user", "add", "eve:eve"]);
    step!("alice disables auth", alice, ["auth", "disable"]);
    step!("alice defrags", alice, ["defrag"]);
    step!("alice hashes", alice, ["endpoint", "hashkv"]);
    step!("alice lists alarms", alice, ["alarm", "list"]);
    step!("alice's status", alice, ["endpoint", "status"]);
    step!("alice's member list", alice, ["member", "list"]);
    step!("delete root", root, ["user", "delete", "root"]);
    step!(
        "revoke root's root",
        root,
        ["user", "revoke-role", "root", "root"]
    );
    step!("delete role root", root, ["role", "delete", "root"]);
    step!(
        "revoke a missing perm",
        root,
        ["role", "revoke-permission", "r1", "zzz"]
    );
    step!(
        "revoke an ungranted role",
        root,
        ["user", "revoke-role", "alice", "r2"]
    );
    step!(
        "revoke read foo",
        root,
        ["role", "revoke-permission", "r1", "foo"]
    );
    step!("alice reads foo, revoked", alice, ["get", "foo"]);
    step!(
        "alice's new password",
        root,
        ["user", "passwd", "alice", "--interactive=false"],
        Some("pb\n")
    );
    step!("alice's old password", alice, ["get", "/a/b"]);
    step!(
        "alice's new one",
        ["--user", "alice:pb"],
        ["put", "/a/c", "z"]
    );
    step!("revoke r1", root, ["user", "revoke-role", "alice", "r1"]);
    step!("alice without r1", ["--user", "alice:pb"], ["get", "/a/c"]);
    step!("delete r1", root, ["role", "delete", "r1"]);
    step!("delete alice", root, ["user", "delete", "alice"]);
    step!("alice deleted", ["--user", "alice:pb"], ["get", "/a/c"]);
    step!("disable", root, ["auth", "disable"]);
    step!("get, auth off", anyone, ["get", "--prefix", "/a/"]);
    out
}

/// See: #13 (etcd's Auth API, so that `etcdctl --user` works with
/// credentials exactly as against etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_prints_the_same_for_ours_and_etcd() {
    which_etcdctl();
    guard(async {
        let ours = Ours::start(mgmt::store::Config::default()).await;
        let t = Target::new(&ours.endpoint).await;
        let got = session(&t).await;
        ours.stop().await;

        let etcd = Etcd::start().await;
        let t = Target::new(&etcd.endpoint).await;
        let want = session(&t).await;
        drop(etcd);

        assert_eq!(got.len(), want.len());
        for ((step, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g, w, "etcdctl {step}: ours (left) and etcd (right) differ");
        }
    })
    .await;
}
