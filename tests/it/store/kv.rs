//! Conformance of the key-value calls: revisions, versions and `prev_kv`
//! after put and delete, the errors of malformed requests, every range
//! option (limit, count, keys only, sorts, revision filters, intervals), and
//! compaction errors of reads and watches.

use etcd_client::{
    Client, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, WatchOptions,
};
use tonic::Code;

use super::{assert_status, client, events, keys, next_msg, range, rev_of, values, watch_created};

pub(super) async fn kv_revisions_and_prev_kv(ep: String) {
    let mut c = client(&ep).await;
    assert_eq!(rev_of(c.get("a", None).await.expect("get").header()), 1);
    let r = c.put("a", "1", None).await.expect("put");
    assert_eq!(rev_of(r.header()), 2);
    assert!(r.prev_key().is_none());
    let r = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(rev_of(r.header()), 3);
    let p = r.prev_key().expect("prev kv");
    assert_eq!(
        (
            p.value(),
            p.create_revision(),
            p.mod_revision(),
            p.version()
        ),
        (&b"1"[..], 2, 2, 1)
    );
    let g = c.get("a", None).await.expect("get");
    let kv = &g.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"2"[..], 2, 3, 2)
    );
    assert_eq!((g.count(), g.more(), rev_of(g.header())), (1, false, 3));
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("get at rev 2");
    assert_eq!(values(old.kvs()), ["1"]);
    assert_eq!(rev_of(old.header()), 3);
    let d = c
        .delete("a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!((d.deleted(), rev_of(d.header())), (1, 4));
    assert_eq!(values(d.prev_kvs()), ["2"]);
    let d = c.delete("a", None).await.expect("delete again");
    assert_eq!(
        (d.deleted(), rev_of(d.header())),
        (0, 4),
        "a no-op delete spends no revision"
    );
    let g = c.get("a", None).await.expect("get");
    assert_eq!((g.kvs().len(), g.count()), (0, 0));
    c.put("a", "3", None).await.expect("put");
    let kv = c.get("a", None).await.expect("get").kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (5, 5, 1)
    );
    // ignore_value keeps the value and bumps the version.
    let r = c
        .put("a", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("put");
    assert_eq!(rev_of(r.header()), 6);
    let kv = c.get("a", None).await.expect("get").kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"3"[..], 2));
    // Delete of a range: several keys in one revision.
    c.put("r/1", "x", None).await.expect("put");
    c.put("r/2", "x", None).await.expect("put");
    let d = c
        .delete("r/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    assert_eq!((d.deleted(), rev_of(d.header())), (2, 9));
}

pub(super) async fn kv_bad_puts(ep: String) {
    let mut c = client(&ep).await;
    assert_status(
        c.put("", "x", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        c.get("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        c.delete("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.put(
            "k",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(100))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Nothing above changed the store.
    assert_eq!(
        rev_of(c.put("k", "v", None).await.expect("put").header()),
        2
    );
}

/// The keys a range read with `opts` returns, in order.
async fn range_keys(c: &mut Client, key: &str, opts: GetOptions) -> Vec<String> {
    keys(range(c, key, opts).await.kvs())
}

pub(super) async fn range_options(ep: String) {
    let mut c = client(&ep).await;
    for (k, v) in [
        ("k1", "e"),
        ("k2", "d"),
        ("k3", "c"),
        ("k4", "b"),
        ("k5", "a"),
    ] {
        c.put(k, v, None).await.expect("put"); // revisions 2..=6
    }
    c.put("k3", "c", None).await.expect("put"); // k3: version 2, mod 7
    c.put("l", "z", None).await.expect("put"); // 8
    let prefix = || GetOptions::new().with_prefix();
    let g = range(&mut c, "k", prefix()).await;
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!((g.count(), g.more()), (5, false));
    let g = range(&mut c, "k", prefix().with_limit(2)).await;
    assert_eq!(keys(g.kvs()), ["k1", "k2"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let g = range(&mut c, "k", prefix().with_count_only()).await;
    assert_eq!((g.kvs().len(), g.count()), (0, 5));
    let g = range(&mut c, "k", prefix().with_keys_only()).await;
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4", "k5"]);
    assert!(g.kvs().iter().all(|kv| kv.value().is_empty()));
    let sorted = |target, order| prefix().with_sort(target, order);
    let g = range(&mut c, "k", sorted(SortTarget::Value, SortOrder::Ascend)).await;
    assert_eq!(values(g.kvs()), ["a", "b", "c", "d", "e"]);
    let by_key = sorted(SortTarget::Key, SortOrder::Descend).with_limit(2);
    let g = range(&mut c, "k", by_key).await;
    assert_eq!(keys(g.kvs()), ["k5", "k4"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let by_mod = sorted(SortTarget::Mod, SortOrder::Descend);
    assert_eq!(
        range_keys(&mut c, "k", by_mod).await,
        ["k3", "k5", "k4", "k2", "k1"]
    );
    let by_version = sorted(SortTarget::Version, SortOrder::Descend).with_limit(1);
    assert_eq!(range_keys(&mut c, "k", by_version).await, ["k3"]);
    let by_create = sorted(SortTarget::Create, SortOrder::Ascend);
    assert_eq!(
        range_keys(&mut c, "k", by_create).await,
        ["k1", "k2", "k3", "k4", "k5"]
    );
    let g = range(&mut c, "k", prefix().with_min_mod_revision(5)).await;
    assert_eq!(keys(g.kvs()), ["k3", "k4", "k5"]);
    assert_eq!(g.count(), 5, "count is over the range, before filters");
    let max_mod = prefix().with_max_mod_revision(4);
    assert_eq!(range_keys(&mut c, "k", max_mod).await, ["k1", "k2"]);
    let max_create = prefix().with_max_create_revision(3);
    assert_eq!(range_keys(&mut c, "k", max_create).await, ["k1", "k2"]);
    let min_create = prefix().with_min_create_revision(6);
    assert_eq!(range_keys(&mut c, "k", min_create).await, ["k5"]);
    let g = range(&mut c, "k", prefix().with_min_mod_revision(3).with_limit(2)).await;
    assert_eq!(keys(g.kvs()), ["k2", "k3"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let interval = |end| GetOptions::new().with_range(end);
    assert_eq!(range_keys(&mut c, "k2", interval("k4")).await, ["k2", "k3"]);
    let empty = range_keys(&mut c, "k4", interval("k2")).await;
    assert_eq!(empty.len(), 0, "an empty interval");
    let from_key = GetOptions::new().with_from_key();
    assert_eq!(
        range_keys(&mut c, "k3", from_key).await,
        ["k3", "k4", "k5", "l"]
    );
    let g = range(&mut c, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(g.count(), 6);
    let g = range(&mut c, "k", prefix().with_revision(4)).await;
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3"]);
    assert_eq!(rev_of(g.header()), 8);
}

pub(super) async fn compaction_errors(ep: String) {
    let mut c = client(&ep).await;
    for i in 1..=5 {
        c.put("c", i.to_string(), None).await.expect("put"); // revisions 2..=6
    }
    let r = c.compact(4, None).await.expect("compact");
    assert_eq!(rev_of(r.header()), 6);
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    assert_status(
        c.get("c", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        compacted,
    );
    let g = range(&mut c, "c", GetOptions::new().with_revision(4)).await;
    assert_eq!(values(g.kvs()), ["3"], "read at compaction point");
    assert_status(c.compact(4, None).await, Code::OutOfRange, compacted);
    assert_status(c.compact(3, None).await, Code::OutOfRange, compacted);
    assert_status(
        c.compact(100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let mut ws = c
        .watch("c", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch");
    let m = next_msg(&mut ws).await;
    assert!(m.created());
    let m = if m.canceled() {
        m
    } else {
        next_msg(&mut ws).await
    };
    assert!(
        m.canceled(),
        "a watch from a compacted revision is canceled: {m:?}"
    );
    assert_eq!(m.compact_revision(), 4);
    let from_4 = Some(WatchOptions::new().with_start_revision(4));
    let mut ws = watch_created(&mut c, "c", from_4).await;
    let got: Vec<i64> = events(&mut ws, 3).await.into_iter().map(|e| e.2).collect();
    assert_eq!(got, [4, 5, 6]);
}
