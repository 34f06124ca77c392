//! Conformance of watches: replay from a past revision, prefixes, `prev_kv`,
//! filters, client-chosen and duplicate ids, progress requests, cancel, and
//! fan-out at scale (10,000 watches on one stream, 1000 streams on their own
//! prefixes).

use etcd_client::{EventType, WatchFilterType, WatchOptions};

use super::{client, events, in_time, next_msg, rev_of, watch_created};

pub(super) async fn watch_replay_prefix_prev_kv_cancel(ep: String) {
    let mut c = client(&ep).await;
    c.put("w/a", "1", None).await.expect("put"); // 2
    c.put("w/b", "1", None).await.expect("put"); // 3
    c.put("other", "1", None).await.expect("put"); // 4
    c.put("w/a", "2", None).await.expect("put"); // 5
    c.delete("w/b", None).await.expect("delete"); // 6
    let mut ws = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = next_msg(&mut ws).await;
    assert!(created.created() && !created.canceled());
    assert!(created.events().is_empty());
    let id = created.watch_id();
    assert_eq!(id, 0);
    let got = events(&mut ws, 4).await;
    assert_eq!(
        got,
        vec![
            (EventType::Put, "w/a".into(), 2, None),
            (EventType::Put, "w/b".into(), 3, None),
            (EventType::Put, "w/a".into(), 5, Some("1".into())),
            (EventType::Delete, "w/b".into(), 6, Some("1".into())),
        ]
    );
    c.put("other", "2", None).await.expect("put"); // 7, not watched
    c.put("w/c", "1", None).await.expect("put"); // 8
    let got = events(&mut ws, 1).await;
    assert_eq!(got, vec![(EventType::Put, "w/c".into(), 8, None)]);
    // A second watch on the same stream.
    ws.watch("other", None).await.expect("second watch");
    let created = next_msg(&mut ws).await;
    assert!(created.created());
    assert_eq!(created.watch_id(), 1);
    c.put("other", "3", None).await.expect("put"); // 9
    let m = next_msg(&mut ws).await;
    assert_eq!(m.watch_id(), 1);
    assert_eq!(m.events().len(), 1);
    ws.cancel(id).await.expect("cancel");
    let m = next_msg(&mut ws).await;
    assert!(m.canceled());
    assert_eq!(m.watch_id(), id);
    c.put("w/d", "1", None).await.expect("put"); // 10: the canceled watch is quiet
    c.put("other", "4", None).await.expect("put"); // 11
    let m = next_msg(&mut ws).await;
    assert_eq!(m.watch_id(), 1);
    assert_eq!(m.events()[0].kv().expect("kv").mod_revision(), 11);
}

pub(super) async fn watch_filters_ids_progress(ep: String) {
    let mut c = client(&ep).await;
    let mut ws = c
        .watch(
            "f",
            Some(
                WatchOptions::new()
                    .with_watch_id(7)
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .expect("watch");
    let m = next_msg(&mut ws).await;
    assert!(m.created());
    assert_eq!(m.watch_id(), 7);
    ws.watch("g", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("send");
    let m = next_msg(&mut ws).await;
    assert!(m.canceled(), "duplicate id refused: {m:?}");
    assert_eq!(
        m.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    ws.watch(
        "g",
        Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
    )
    .await
    .expect("send");
    let m = next_msg(&mut ws).await;
    assert!(m.created());
    assert_eq!(m.watch_id(), 0);
    c.put("f", "1", None).await.expect("put"); // 2, filtered out
    c.put("g", "1", None).await.expect("put"); // 3
    c.delete("g", None).await.expect("delete"); // 4, filtered out
    c.delete("f", None).await.expect("delete"); // 5
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = next_msg(&mut ws).await;
        for e in m.events() {
            seen.push((
                m.watch_id(),
                e.event_type(),
                e.kv().expect("kv").mod_revision(),
            ));
        }
    }
    seen.sort_by_key(|s| s.2);
    assert_eq!(
        seen,
        vec![(0, EventType::Put, 3), (7, EventType::Delete, 5)]
    );
    ws.request_progress().await.expect("progress request");
    let m = next_msg(&mut ws).await;
    assert!(m.events().is_empty() && !m.created() && !m.canceled());
    assert_eq!(m.watch_id(), -1);
    assert_eq!(rev_of(m.header()), 5);
}

/// 10,000 watches on one stream: all created with consecutive ids, and a
/// put reaches exactly the one watching its key.
pub(super) async fn many_watches_on_one_stream(ep: String) {
    const N: i64 = 10_000;
    let mut c = client(&ep).await;
    let ws = c.watch("m/0", None).await.expect("watch");
    let (mut tx, mut rx) = ws.split();
    let send = async move {
        for i in 1..N {
            tx.watch(format!("m/{i}"), None).await.expect("send create");
        }
        tx
    };
    let recv = async {
        let mut created = 0;
        while created < N {
            let m = in_time("watch response", rx.message()).await;
            assert!(m.created() && !m.canceled(), "{m:?}");
            assert_eq!(m.watch_id(), created);
            created += 1;
        }
    };
    let (_tx, ()) = tokio::join!(send, recv);
    c.put("m/5000", "x", None).await.expect("put");
    c.put("m/9999", "x", None).await.expect("put");
    let m = in_time("watch response", rx.message()).await;
    assert_eq!((m.watch_id(), m.events().len()), (5000, 1));
    let m = in_time("watch response", rx.message()).await;
    assert_eq!((m.watch_id(), m.events().len()), (9999, 1));
    // Another client is served meanwhile.
    let mut other = client(&ep).await;
    assert_eq!(other.get("m/5000", None).await.expect("get").count(), 1);
}

/// Streams in `many_streams_each_get_their_own_events`.
pub(super) const PREFIX_STREAMS: usize = 1000;

/// 1000 watch streams, each with one watcher on its own prefix (the shape of
/// an emulated fleet), over connections of 100 streams. One write to each
/// prefix: every stream gets exactly its event; a second round shows that
/// nothing else was queued before it.
pub(super) async fn many_streams_each_get_their_own_events(ep: String) {
    let mut clients = Vec::new();
    for _ in 0..PREFIX_STREAMS.div_ceil(100) {
        clients.push(client(&ep).await);
    }
    let mut streams = Vec::new();
    for i in 0..PREFIX_STREAMS {
        let c = &mut clients[i / 100];
        let opts = Some(WatchOptions::new().with_prefix());
        streams.push(watch_created(c, &format!("h/{i:04}/"), opts).await);
    }
    for round in 1..=2 {
        // Writers in parallel, so etcd can batch its fsyncs.
        let writes = clients.iter().enumerate().map(|(j, c)| {
            let mut c = c.clone();
            async move {
                let mut revs = Vec::new();
                for i in (j * 100..(j + 1) * 100).filter(|&i| i < PREFIX_STREAMS) {
                    let r = c.put(format!("h/{i:04}/k{round}"), "v", None).await;
                    revs.push((i, rev_of(r.expect("put").header())));
                }
                revs
            }
        });
        let mut revs = futures::future::join_all(writes).await.concat();
        revs.sort();
        for (ws, (i, rev)) in streams.iter_mut().zip(revs) {
            let got = events(ws, 1).await;
            assert_eq!(
                (got[0].1.as_str(), got[0].2),
                (format!("h/{i:04}/k{round}").as_str(), rev),
                "stream {i}, round {round}"
            );
        }
    }
}
