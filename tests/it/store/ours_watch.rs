//! Watches in ours beyond etcd's conformance: the per-stream watch limit,
//! back-pressure (a stalled watcher catches up without loss and slows no one,
//! or is canceled once behind the compaction point), and progress
//! notifications.

use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions, WatchStream};
use mgmt::store::Config;

use super::{client, events, guard, next_msg, ours_with, rev_of, watch_created};

/// A prefix watch on `s/` over its own connection, which the test then
/// leaves unread.
async fn stalled_watch(endpoint: &str) -> WatchStream {
    let mut c = client(endpoint).await;
    watch_created(&mut c, "s/", Some(WatchOptions::new().with_prefix())).await
}

/// The watch limit per stream refuses the next create with a reason, and
/// the watches already there keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_watch_limit_per_stream() {
    let s = ours_with(Config {
        max_watches_per_stream: 100,
        ..Config::default()
    })
    .await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        let mut ws = watch_created(&mut c, "w/0", None).await;
        for i in 1..100 {
            ws.watch(format!("w/{i}"), None).await.expect("send");
            assert!(!next_msg(&mut ws).await.canceled());
        }
        ws.watch("w/100", None).await.expect("send");
        let m = next_msg(&mut ws).await;
        assert!(m.created() && m.canceled());
        assert!(
            m.cancel_reason().contains("too many watches"),
            "{}",
            m.cancel_reason()
        );
        c.put("w/42", "x", None).await.expect("put");
        let m = next_msg(&mut ws).await;
        assert_eq!((m.watch_id(), m.events().len()), (42, 1));
        assert_eq!(s.store.stats().watches_open, 100);
    })
    .await;
    s.stop().await;
}

/// A client that stops reading its watch stream while a lot is written:
/// writers and other watchers are not slowed down to its pace, the server
/// holds no per-watcher queue (the backlog is the event log), and when the
/// client reads again it gets every event, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_stalled_watcher_loses_nothing() {
    const N: usize = 3000;
    let s = ours_with(Config::default()).await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        let mut stalled = stalled_watch(&s.endpoint).await;
        let mut live = watch_created(&mut c, "s/", Some(WatchOptions::new().with_prefix())).await;
        let value = vec![b'v'; 8 * 1024]; // 3000 x 8 KiB = 24 MiB, far above the buffers
        let writer = async {
            let mut w = client(&s.endpoint).await;
            for i in 0..N {
                w.put(format!("s/{i:05}"), value.clone(), None)
                    .await
                    .expect("put");
            }
        };
        let reader = async {
            let mut n = 0;
            while n < N {
                n += next_msg(&mut live).await.events().len();
            }
        };
        tokio::join!(writer, reader);
        // The stalled client now reads: everything, in order.
        let got = events(&mut stalled, N).await;
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.1, format!("s/{i:05}"));
            assert_eq!(e.2, i as i64 + 2);
        }
        assert!(s.store.stats().watch_events_sent >= 2 * N as u64);
    })
    .await;
    s.stop().await;
}

/// A stalled watcher that falls behind the compaction point is canceled with
/// `compact_revision`, as etcd does, after the events it could still get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_stalled_watcher_behind_compaction_is_canceled() {
    let s = ours_with(Config {
        retain_revisions: 100,
        ..Config::default()
    })
    .await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        let mut stalled = stalled_watch(&s.endpoint).await;
        let value = vec![b'v'; 64 * 1024]; // enough to fill the stream's buffers
        for i in 0..2000 {
            c.put(format!("s/{}", i % 10), value.clone(), None)
                .await
                .expect("put");
        }
        let st = s.store.stats();
        assert!(
            st.compact_revision > 1800,
            "history is compacted automatically: {st:?}"
        );
        let mut last = 1;
        loop {
            let m = next_msg(&mut stalled).await;
            if m.canceled() {
                assert!(m.compact_revision() > last, "{m:?}");
                break;
            }
            for e in m.events() {
                let r = e.kv().expect("kv").mod_revision();
                assert_eq!(r, last + 1, "in order, no gap");
                last = r;
            }
        }
        // The store serves everyone else as before.
        assert_eq!(
            c.get(
                "s/",
                Some(GetOptions::new().with_prefix().with_count_only())
            )
            .await
            .expect("get")
            .count(),
            10
        );
    })
    .await;
    s.stop().await;
}

/// Watches created with `progress_notify` get empty responses carrying the
/// current revision when nothing happens on their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_progress_notify() {
    let s = ours_with(Config {
        watch_progress_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        let opts = Some(WatchOptions::new().with_progress_notify());
        let mut ws = watch_created(&mut c, "p", opts).await;
        c.put("q", "1", None).await.expect("put"); // 2, another key
        loop {
            let m = next_msg(&mut ws).await;
            assert!(m.events().is_empty() && !m.canceled());
            assert_eq!(m.watch_id(), 0);
            if rev_of(m.header()) == 2 {
                break;
            }
        }
    })
    .await;
    s.stop().await;
}
