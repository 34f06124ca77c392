//! Conformance of leases: expiry deleting its keys in one revision with
//! events, keep-alive, time-to-live with keys, moving a key between leases,
//! revoke, and the answers for unknown, duplicate and too long leases.

use std::time::Duration;

use etcd_client::{
    Error, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use tonic::Code;

use super::{assert_status, client, events, keep_alive_once, keys, range, rev_of, watch_created};

/// Put options that attach the key to lease `id`.
fn on_lease(id: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(id))
}

pub(super) async fn lease_expiry_deletes_keys_with_events(ep: String) {
    let mut c = client(&ep).await;
    let l = c.lease_grant(1, None).await.expect("grant");
    assert_eq!(l.ttl(), 2, "TTLs are raised to the 2 s minimum");
    c.put("x/1", "a", on_lease(l.id())).await.expect("put"); // 2
    c.put("x/2", "b", on_lease(l.id())).await.expect("put"); // 3
    c.put("x/3", "c", None).await.expect("put"); // 4
    let g = c.get("x/1", None).await.expect("get");
    assert_eq!(g.kvs()[0].lease(), l.id());
    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let mut ws = watch_created(&mut c, "x/", Some(opts)).await;
    let mut got = events(&mut ws, 2).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            (EventType::Delete, "x/1".into(), 5, Some("a".into())),
            (EventType::Delete, "x/2".into(), 5, Some("b".into())),
        ],
        "both keys deleted in one revision"
    );
    let g = range(&mut c, "x/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(g.kvs()), ["x/3"]);
    let t = c.lease_time_to_live(l.id(), None).await.expect("ttl");
    assert_eq!(t.ttl(), -1);
    let ls = c.leases().await.expect("leases");
    assert!(ls.leases().iter().all(|s| s.id() != l.id()));
}

pub(super) async fn lease_keep_alive_time_to_live_revoke(ep: String) {
    let mut c = client(&ep).await;
    let a = c.lease_grant(3, None).await.expect("grant a");
    let b = c.lease_grant(3, None).await.expect("grant b");
    assert_eq!((a.ttl(), b.ttl()), (3, 3));
    c.put("a1", "x", on_lease(a.id())).await.expect("put");
    c.put("a2", "x", on_lease(a.id())).await.expect("put");
    c.put("b1", "x", on_lease(b.id())).await.expect("put"); // 4
    let t = c
        .lease_time_to_live(a.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(t.granted_ttl(), 3);
    assert!((1..=3).contains(&t.ttl()), "ttl {}", t.ttl());
    let mut ks: Vec<&[u8]> = t.keys().iter().map(Vec::as_slice).collect();
    ks.sort();
    assert_eq!(ks, [&b"a1"[..], &b"a2"[..]]);
    let ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|s| s.id())
        .collect();
    assert!(ids.contains(&a.id()) && ids.contains(&b.id()));
    // Moving a key to another lease detaches it from the first.
    c.put("a2", "y", on_lease(b.id())).await.expect("put"); // 5
    c.put("a2", "z", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put"); // 6
    assert_eq!(
        c.get("a2", None).await.expect("get").kvs()[0].lease(),
        b.id()
    );
    let t = c
        .lease_time_to_live(a.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(t.keys(), [b"a1".to_vec()]);

    // Keep a alive while b runs out: the event of b's expiry is the clock.
    let (mut keeper, mut stream) = c.lease_keep_alive(a.id()).await.expect("keep alive");
    let r = keep_alive_once(&mut keeper, &mut stream).await;
    assert_eq!((r.id(), r.ttl()), (a.id(), 3));
    let mut ws = watch_created(&mut c, "b1", None).await;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let r = keep_alive_once(&mut keeper, &mut stream).await;
                assert_eq!(r.ttl(), 3, "lease a stays alive");
            }
            m = ws.message() => {
                let m = m.expect("watch ok").expect("watch open");
                if m.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    break;
                }
            }
        }
    }
    let g = c.get("a1", None).await.expect("get");
    assert_eq!(g.kvs().len(), 1, "the kept-alive lease still holds its key");
    assert_eq!(
        c.get("a2", None).await.expect("get").kvs().len(),
        0,
        "a2 went with lease b"
    );
    let before = rev_of(g.header());
    let r = c.lease_revoke(a.id()).await.expect("revoke");
    assert_eq!(rev_of(r.header()), before + 1);
    assert_eq!(c.get("a1", None).await.expect("get").kvs().len(), 0);
    assert_status(
        c.lease_revoke(a.id()).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let r = keep_alive_once(&mut keeper, &mut stream).await;
    assert_eq!(r.ttl(), 0, "keep-alive of a revoked lease answers TTL 0");
}

pub(super) async fn unknown_lease_ids(ep: String) {
    let mut c = client(&ep).await;
    let nf = "etcdserver: requested lease not found";
    assert_status(c.put("k", "v", on_lease(12345)).await, Code::NotFound, nf);
    assert_status(c.lease_revoke(12345).await, Code::NotFound, nf);
    let t = c
        .lease_time_to_live(12345, None)
        .await
        .expect("ttl of unknown lease");
    assert_eq!((t.id(), t.ttl()), (12345, -1));
    // The server answers TTL 0, which etcd-client turns into this error.
    match c.lease_keep_alive(12345).await {
        Err(Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("keep-alive of an unknown lease: {other:?}"),
    }
    let l = c
        .lease_grant(10, Some(LeaseGrantOptions::new().with_id(777)))
        .await
        .expect("grant with id");
    assert_eq!((l.id(), l.ttl()), (777, 10));
    assert_status(
        c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(777)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_status(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    assert_eq!(
        rev_of(c.put("k", "v", None).await.expect("put").header()),
        2
    );
}
