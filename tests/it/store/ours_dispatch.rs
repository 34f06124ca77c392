//! How a commit reaches the watchers in ours: it wakes only the streams with
//! a watcher on a key it wrote (counted by `Stats::watch_wakeups`), and a
//! watcher created while another client writes misses no revision.

use etcd_client::{Txn, WatchOptions};
use mgmt::store::Config;
use tokio_util::sync::CancellationToken;

use super::{
    client, events, guard, next_msg, ours_with, rev_of, txn_put, watch, watch_created, Event,
};

/// A commit wakes only the watch streams with a watcher whose range holds a
/// key it wrote, counted by `Stats::watch_wakeups` before the write is
/// answered: a write under `/a/` leaves a stream on `/b/` asleep. Covers each
/// range shape: prefix, single key, from-key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_write_wakes_only_the_streams_it_concerns() {
    let s = ours_with(Config::default()).await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        let prefix = || Some(WatchOptions::new().with_prefix());
        let mut a = watch_created(&mut c, "/a/", prefix()).await;
        let mut b = watch_created(&mut c, "/b/", prefix()).await;
        let mut k = watch_created(&mut c, "/k", None).await;
        let from = Some(WatchOptions::new().with_from_key());
        let mut y = watch_created(&mut c, "/y", from).await;
        let wakeups = || s.store.stats().watch_wakeups;
        let revs = |evs: Vec<Event>| evs.into_iter().map(|e| e.2).collect::<Vec<_>>();
        assert_eq!(wakeups(), 0);
        c.put("/a/1", "x", None).await.expect("put"); // 2
        assert_eq!(wakeups(), 1, "only the stream on /a/ is woken");
        c.put("/c", "x", None).await.expect("put"); // 3: nobody's
        c.put("/a", "x", None).await.expect("put"); // 4: not under /a/
        assert_eq!(wakeups(), 1);
        c.put("/b/1", "x", None).await.expect("put"); // 5
        assert_eq!(wakeups(), 2);
        c.put("/k", "x", None).await.expect("put"); // 6
        assert_eq!(wakeups(), 3);
        c.put("/z", "x", None).await.expect("put"); // 7
        assert_eq!(wakeups(), 4);
        // Each stream got exactly its events. Having sent them, it has taken
        // its wake-up mark, so the next write that concerns it wakes it again.
        for (ws, rev) in [(&mut a, 2), (&mut b, 5), (&mut k, 6), (&mut y, 7)] {
            assert_eq!(revs(events(ws, 1).await), [rev]);
        }
        // One revision under two prefixes wakes both streams, once each.
        let txn = Txn::new().and_then([txn_put("/a/2", "x"), txn_put("/b/2", "x")]);
        c.txn(txn).await.expect("txn"); // 8
        assert_eq!(wakeups(), 6);
        for ws in [&mut a, &mut b] {
            assert_eq!(revs(events(ws, 1).await), [8]);
        }
        c.put("/a/3", "x", None).await.expect("put"); // 9
        c.put("/b/3", "x", None).await.expect("put"); // 10
        c.put("/k", "y", None).await.expect("put"); // 11
        c.put("/y1", "x", None).await.expect("put"); // 12
        assert_eq!(wakeups(), 10);
        for (ws, rev) in [(&mut a, 9), (&mut b, 10), (&mut k, 11), (&mut y, 12)] {
            assert_eq!(revs(events(ws, 1).await), [rev]);
        }
    })
    .await;
    s.stop().await;
}

/// The 1000-stream scenario against ours, and each write woke exactly one
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_each_write_wakes_one_of_many_streams() {
    let s = ours_with(Config::default()).await;
    guard(watch::many_streams_each_get_their_own_events(
        s.endpoint.clone(),
    ))
    .await;
    assert_eq!(
        s.store.stats().watch_wakeups,
        2 * watch::PREFIX_STREAMS as u64
    );
    s.stop().await;
}

/// Watchers created while another client writes as fast as it can get every
/// event from their start revision: none falls between reading the revision
/// it starts after and registering its range. Each round opens a new stream
/// with a watcher from now and one replaying from a little earlier, and
/// drops it after; every revision is a put under the watched prefix, so
/// each watcher must see consecutive revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_watch_created_during_writes_misses_nothing() {
    const ROUNDS: usize = 300;
    let s = ours_with(Config {
        retain_revisions: 1_000_000,
        ..Config::default()
    })
    .await;
    guard(async {
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let mut w = client(&s.endpoint).await;
            let stop = stop.clone();
            async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    w.put(format!("r/{}", n % 100), "v", None)
                        .await
                        .expect("put");
                    n += 1;
                }
            }
        });
        let mut c = client(&s.endpoint).await;
        for round in 0..ROUNDS {
            let prefix = || WatchOptions::new().with_prefix();
            let mut ws = c.watch("r/", Some(prefix())).await.expect("watch");
            let m = next_msg(&mut ws).await;
            assert!(m.created() && m.watch_id() == 0, "{m:?}");
            let from_now = rev_of(m.header()) + 1;
            let from_past = (from_now - 3).max(2);
            let past = prefix().with_start_revision(from_past).with_watch_id(1);
            ws.watch("r/", Some(past)).await.expect("send");
            // The next revision each watcher must deliver.
            let mut next = [from_now, from_past];
            let mut until = None;
            while until.is_none_or(|u| next.iter().any(|&n| n <= u)) {
                let m = next_msg(&mut ws).await;
                assert!(!m.canceled(), "round {round}: {m:?}");
                if m.created() {
                    // Everything committed by now must reach both watchers.
                    until = Some(s.store.stats().revision);
                }
                let id = m.watch_id() as usize;
                for e in m.events() {
                    let r = e.kv().expect("kv").mod_revision();
                    assert_eq!(
                        r, next[id],
                        "round {round}: watcher {id} skipped a revision"
                    );
                    next[id] = r + 1;
                }
            }
        }
        stop.cancel();
        writer.await.expect("writer");
    })
    .await;
    s.stop().await;
}
