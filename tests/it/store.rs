//! Conformance suite of the embedded store: every scenario is a function of
//! an endpoint, run once against our [`Store`] and once against a real etcd
//! 3.4 (see `util/etcd.rs`), through the real `etcd_client::Client` with
//! identical assertions. When the two disagree, ours is wrong.
//!
//! Each test gets a fresh server, so revisions are predictable and tests run
//! in parallel. Tests wait on responses and events; `timeout` is only a hang
//! guard. A few tests of limits that etcd does not have (or that would take
//! etcd minutes of fsyncs) run against ours only, at the end of the file.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use mgmt::store::{Config, Store, StoreError};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Hang guard for a whole scenario.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);
/// Hang guard for one expected watch response.
const MSG_TIMEOUT: Duration = Duration::from_secs(20);

/// Our store, served on a bound loopback listener for one test.
struct Ours {
    endpoint: String,
    store: Store,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Ours {
    async fn start(cfg: Config) -> Ours {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let store = Store::new(cfg);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let store = store.clone();
            let cancel = cancel.clone();
            async move { store.serve(listener, cancel).await }
        });
        Ours {
            endpoint: format!("http://{addr}"),
            store,
            cancel,
            task,
        }
    }

    /// Cancels the server and checks that it stops cleanly.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("store stops after cancel")
            .expect("serve task not panicked")
            .expect("serve ends without error");
    }
}

async fn guard<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(SCENARIO_TIMEOUT, f)
        .await
        .expect("scenario finished in time");
}

/// Runs each scenario against ours (`store::ours::NAME`) and etcd (`store::etcd::NAME`).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod ours {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = super::Ours::start(mgmt::store::Config::default()).await;
                    super::guard(super::$name(s.endpoint.clone())).await;
                    s.stop().await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let e = crate::util::etcd::Etcd::start().await;
                    super::guard(super::$name(e.endpoint.clone())).await;
                }
            )*
        }
    };
}

conformance!(
    kv_revisions_and_prev_kv,
    kv_bad_puts,
    range_options,
    txn_branches_and_compares,
    txn_invalid,
    watch_replay_prefix_prev_kv_cancel,
    watch_filters_ids_progress,
    compaction_errors,
    lease_expiry_deletes_keys_with_events,
    lease_keep_alive_time_to_live_revoke,
    unknown_lease_ids,
    oversized_request,
    streams_carry_messages_far_over_their_first_buffers,
    status_and_members,
    many_watches_on_one_stream,
    garbage_connection_does_not_hurt_others,
    concurrent_compare_and_swap,
    many_streams_each_get_their_own_events,
);

async fn client(ep: &str) -> Client {
    Client::connect([ep], None).await.expect("connect")
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// Asserts a call failed with exactly this gRPC code and message.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, Error>, code: Code, msg: &str) {
    match r {
        Err(Error::GRpcStatus(s)) => {
            assert_eq!((s.code(), s.message()), (code, msg), "status")
        }
        other => panic!("expected {code:?} {msg:?}, got {other:?}"),
    }
}

async fn next_msg(ws: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(MSG_TIMEOUT, ws.message())
        .await
        .expect("watch response in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

/// Sends one keep-alive and returns its answer.
async fn keep_alive_once(
    keeper: &mut etcd_client::LeaseKeeper,
    acks: &mut etcd_client::LeaseKeepAliveStream,
) -> etcd_client::LeaseKeepAliveResponse {
    keeper.keep_alive().await.expect("send keep-alive");
    tokio::time::timeout(MSG_TIMEOUT, acks.message())
        .await
        .expect("keep-alive answer in time")
        .expect("keep-alive stream ok")
        .expect("keep-alive stream open")
}

/// Reads watch responses until `n` events arrived; returns
/// (type, key, mod_revision, prev value) per event.
async fn events(ws: &mut WatchStream, n: usize) -> Vec<(EventType, String, i64, Option<String>)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = next_msg(ws).await;
        assert!(!m.canceled(), "watch canceled unexpectedly: {m:?}");
        for e in m.events() {
            let kv = e.kv().expect("event kv");
            out.push((
                e.event_type(),
                kv.key_str().expect("utf8").to_string(),
                kv.mod_revision(),
                e.prev_kv()
                    .map(|p| p.value_str().expect("utf8").to_string()),
            ));
        }
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.key_str().expect("utf8").to_string())
        .collect()
}

fn values(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.value_str().expect("utf8").to_string())
        .collect()
}

async fn kv_revisions_and_prev_kv(ep: String) {
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

async fn kv_bad_puts(ep: String) {
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

async fn range_options(ep: String) {
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
    let g = c.get("k", Some(prefix())).await.expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!((g.count(), g.more()), (5, false));
    let g = c.get("k", Some(prefix().with_limit(2))).await.expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let g = c
        .get("k", Some(prefix().with_count_only()))
        .await
        .expect("get");
    assert_eq!((g.kvs().len(), g.count()), (0, 5));
    let g = c
        .get("k", Some(prefix().with_keys_only()))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4", "k5"]);
    assert!(g.kvs().iter().all(|kv| kv.value().is_empty()));
    let g = c
        .get(
            "k",
            Some(prefix().with_sort(SortTarget::Value, SortOrder::Ascend)),
        )
        .await
        .expect("get");
    assert_eq!(values(g.kvs()), ["a", "b", "c", "d", "e"]);
    let g = c
        .get(
            "k",
            Some(
                prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k5", "k4"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let g = c
        .get(
            "k",
            Some(prefix().with_sort(SortTarget::Mod, SortOrder::Descend)),
        )
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k3", "k5", "k4", "k2", "k1"]);
    let g = c
        .get(
            "k",
            Some(
                prefix()
                    .with_sort(SortTarget::Version, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k3"]);
    let g = c
        .get(
            "k",
            Some(prefix().with_sort(SortTarget::Create, SortOrder::Ascend)),
        )
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3", "k4", "k5"]);
    let g = c
        .get("k", Some(prefix().with_min_mod_revision(5)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k3", "k4", "k5"]);
    assert_eq!(g.count(), 5, "count is over the range, before filters");
    let g = c
        .get("k", Some(prefix().with_max_mod_revision(4)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2"]);
    let g = c
        .get("k", Some(prefix().with_max_create_revision(3)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2"]);
    let g = c
        .get("k", Some(prefix().with_min_create_revision(6)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k5"]);
    let g = c
        .get("k", Some(prefix().with_min_mod_revision(3).with_limit(2)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k2", "k3"]);
    assert_eq!((g.count(), g.more()), (5, true));
    let g = c
        .get("k2", Some(GetOptions::new().with_range("k4")))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k2", "k3"]);
    let g = c
        .get("k4", Some(GetOptions::new().with_range("k2")))
        .await
        .expect("get");
    assert_eq!(g.kvs().len(), 0, "an empty interval");
    let g = c
        .get("k3", Some(GetOptions::new().with_from_key()))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k3", "k4", "k5", "l"]);
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(g.count(), 6);
    let g = c
        .get("k", Some(prefix().with_revision(4)))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3"]);
    assert_eq!(rev_of(g.header()), 8);
}

fn txn_put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

async fn txn_branches_and_compares(ep: String) {
    let mut c = client(&ep).await;
    c.put("t", "v1", None).await.expect("put"); // 2
    let r = c
        .txn(
            Txn::new()
                .when([
                    Compare::value("t", CompareOp::Equal, "v1"),
                    Compare::version("t", CompareOp::Equal, 1),
                    Compare::create_revision("t", CompareOp::Equal, 2),
                    Compare::mod_revision("t", CompareOp::Equal, 2),
                    Compare::lease("t", CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put("t", "v2", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("t", None),
                    txn_put("u", "x"),
                ])
                .or_else([TxnOp::get("t", None)]),
        )
        .await
        .expect("txn");
    assert!(r.succeeded());
    assert_eq!(rev_of(r.header()), 3, "one revision for the whole txn");
    let ops = r.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().map(|kv| kv.value()), Some(&b"v1"[..])),
        other => panic!("expected put, got {other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => assert_eq!(values(g.kvs()), ["v2"], "a txn reads its own writes"),
        other => panic!("expected get, got {other:?}"),
    }
    let g = c.get("u", None).await.expect("get");
    assert_eq!(
        (g.kvs()[0].create_revision(), g.kvs()[0].mod_revision()),
        (3, 3)
    );
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("t", CompareOp::Equal, "nope")])
                .and_then([txn_put("t", "z")])
                .or_else([TxnOp::get("t", None), TxnOp::delete("u", None)]),
        )
        .await
        .expect("txn");
    assert!(!r.succeeded());
    assert_eq!(rev_of(r.header()), 4);
    match &r.op_responses()[1] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("expected delete, got {other:?}"),
    }
    // A read-only txn spends no revision.
    let r = c
        .txn(Txn::new().and_then([TxnOp::get("t", None)]))
        .await
        .expect("txn");
    assert_eq!(rev_of(r.header()), 4);
    // Compares on a missing key: a value compare fails, the others see zero.
    let ok = |r: Result<etcd_client::TxnResponse, Error>| r.expect("txn").succeeded();
    assert!(!ok(c
        .txn(Txn::new().when([Compare::value("missing", CompareOp::Equal, "")]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::version("missing", CompareOp::Equal, 0)]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::create_revision("missing", CompareOp::Equal, 0)]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::mod_revision("t", CompareOp::Greater, 2)]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::version("t", CompareOp::Less, 10)]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::value("t", CompareOp::NotEqual, "v1")]))
        .await));
    assert!(ok(c
        .txn(Txn::new().when([Compare::value("t", CompareOp::Greater, "v1")]))
        .await));
    assert!(!ok(c
        .txn(Txn::new().when([Compare::value("t", CompareOp::Less, "v1")]))
        .await));
    // A compare over a range: every key must satisfy it.
    c.put("p/1", "a", None).await.expect("put"); // 5
    c.put("p/2", "a", None).await.expect("put"); // 6
    assert!(ok(c
        .txn(Txn::new().when([Compare::value("p/", CompareOp::Equal, "a").with_prefix()]))
        .await));
    c.put("p/2", "b", None).await.expect("put"); // 7
    assert!(!ok(c
        .txn(Txn::new().when([Compare::value("p/", CompareOp::Equal, "a").with_prefix()]))
        .await));
    // Nested txn.
    let r = c
        .txn(
            Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .when([Compare::version("t", CompareOp::Greater, 0)])
                    .and_then([txn_put("n", "1")])
                    .or_else([txn_put("n", "2")]),
            )]),
        )
        .await
        .expect("nested txn");
    assert_eq!(rev_of(r.header()), 8);
    match &r.op_responses()[0] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("expected txn, got {other:?}"),
    }
    assert_eq!(values(c.get("n", None).await.expect("get").kvs()), ["1"]);
    // Deleting the same key twice in one txn is allowed.
    let r = c
        .txn(Txn::new().and_then([TxnOp::delete("n", None), TxnOp::delete("n", None)]))
        .await
        .expect("double delete");
    assert_eq!(rev_of(r.header()), 9);
}

async fn txn_invalid(ep: String) {
    let mut c = client(&ep).await;
    let dup = "etcdserver: duplicate key given in txn request";
    assert_status(
        c.txn(Txn::new().and_then([txn_put("d", "1"), txn_put("d", "2")]))
            .await,
        Code::InvalidArgument,
        dup,
    );
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::delete("d", Some(DeleteOptions::new().with_prefix())),
            txn_put("d1", "2"),
        ]))
        .await,
        Code::InvalidArgument,
        dup,
    );
    assert_status(
        c.txn(Txn::new().and_then([
            txn_put("d", "1"),
            TxnOp::txn(Txn::new().and_then([txn_put("d", "2")])),
        ]))
        .await,
        Code::InvalidArgument,
        dup,
    );
    // The two branches of a nested txn are exclusive: the same key is fine.
    c.txn(
        Txn::new().and_then([TxnOp::txn(
            Txn::new()
                .and_then([txn_put("e", "1")])
                .or_else([txn_put("e", "2")]),
        )]),
    )
    .await
    .expect("same key in exclusive branches");
    let many: Vec<TxnOp> = (0..129).map(|i| txn_put(&format!("m{i}"), "x")).collect();
    assert_status(
        c.txn(Txn::new().and_then(many)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_status(
        c.txn(Txn::new().and_then([txn_put("", "x")])).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put(
            "l",
            "x",
            Some(PutOptions::new().with_lease(4242)),
        )]))
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Only the txn with the exclusive branches wrote.
    assert_eq!(rev_of(c.get("e", None).await.expect("get").header()), 2);
}

async fn watch_replay_prefix_prev_kv_cancel(ep: String) {
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

async fn watch_filters_ids_progress(ep: String) {
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

async fn compaction_errors(ep: String) {
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
    let g = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .expect("read at compaction point");
    assert_eq!(values(g.kvs()), ["3"]);
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
    let mut ws = c
        .watch("c", Some(WatchOptions::new().with_start_revision(4)))
        .await
        .expect("watch");
    assert!(next_msg(&mut ws).await.created());
    let got: Vec<i64> = events(&mut ws, 3).await.into_iter().map(|e| e.2).collect();
    assert_eq!(got, [4, 5, 6]);
}

async fn lease_expiry_deletes_keys_with_events(ep: String) {
    let mut c = client(&ep).await;
    let l = c.lease_grant(1, None).await.expect("grant");
    assert_eq!(l.ttl(), 2, "TTLs are raised to the 2 s minimum");
    c.put("x/1", "a", Some(PutOptions::new().with_lease(l.id())))
        .await
        .expect("put"); // 2
    c.put("x/2", "b", Some(PutOptions::new().with_lease(l.id())))
        .await
        .expect("put"); // 3
    c.put("x/3", "c", None).await.expect("put"); // 4
    let g = c.get("x/1", None).await.expect("get");
    assert_eq!(g.kvs()[0].lease(), l.id());
    let mut ws = c
        .watch(
            "x/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    assert!(next_msg(&mut ws).await.created());
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
    let g = c
        .get("x/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(keys(g.kvs()), ["x/3"]);
    let t = c.lease_time_to_live(l.id(), None).await.expect("ttl");
    assert_eq!(t.ttl(), -1);
    let ls = c.leases().await.expect("leases");
    assert!(ls.leases().iter().all(|s| s.id() != l.id()));
}

async fn lease_keep_alive_time_to_live_revoke(ep: String) {
    let mut c = client(&ep).await;
    let a = c.lease_grant(3, None).await.expect("grant a");
    let b = c.lease_grant(3, None).await.expect("grant b");
    assert_eq!((a.ttl(), b.ttl()), (3, 3));
    c.put("a1", "x", Some(PutOptions::new().with_lease(a.id())))
        .await
        .expect("put");
    c.put("a2", "x", Some(PutOptions::new().with_lease(a.id())))
        .await
        .expect("put");
    c.put("b1", "x", Some(PutOptions::new().with_lease(b.id())))
        .await
        .expect("put"); // 4
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
    c.put("a2", "y", Some(PutOptions::new().with_lease(b.id())))
        .await
        .expect("put"); // 5
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
    let mut ws = c.watch("b1", None).await.expect("watch");
    assert!(next_msg(&mut ws).await.created());
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

async fn unknown_lease_ids(ep: String) {
    let mut c = client(&ep).await;
    let nf = "etcdserver: requested lease not found";
    assert_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(12345)))
            .await,
        Code::NotFound,
        nf,
    );
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

async fn oversized_request(ep: String) {
    let mut c = client(&ep).await;
    let big = vec![b'x'; 1536 * 1024 + 100 * 1024];
    assert_status(
        c.put("big", big, None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let ok = vec![b'y'; 1024 * 1024];
    assert_eq!(
        rev_of(c.put("big", ok, None).await.expect("1 MiB put").header()),
        2
    );
    assert_eq!(
        c.get("big", None).await.expect("get").kvs()[0]
            .value()
            .len(),
        1024 * 1024
    );
}

/// Watch and keep-alive streams start with small buffers in ours: requests
/// and events much larger than that arrive whole and in order.
async fn streams_carry_messages_far_over_their_first_buffers(ep: String) {
    let mut c = client(&ep).await;
    // A 64 KiB key in the watch's create request.
    let long = format!("w/{}", "k".repeat(64 * 1024));
    let mut ws = c
        .watch(long.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch with a 64 KiB key");
    assert!(next_msg(&mut ws).await.created());
    // Events of 1 MiB, 1 byte and 300 KiB: one per response or batched.
    let sizes = [1024 * 1024, 1, 300 * 1024];
    for (i, n) in sizes.iter().enumerate() {
        let key = format!("{long}/{i}");
        c.put(key, vec![b'a' + i as u8; *n], None)
            .await
            .expect("put");
    }
    let mut got = Vec::new();
    while got.len() < sizes.len() {
        for e in next_msg(&mut ws).await.events() {
            let v = e.kv().expect("kv").value();
            assert!(v.iter().all(|b| *b == v[0]), "a value arrived mixed");
            got.push((v[0], v.len()));
        }
    }
    assert_eq!(
        got,
        vec![(b'a', sizes[0]), (b'b', sizes[1]), (b'c', sizes[2])]
    );
    // A keep-alive stream still answers each request.
    let id = c.lease_grant(60, None).await.expect("grant").id();
    let (mut keeper, mut acks) = c.lease_keep_alive(id).await.expect("keep-alive");
    for _ in 0..3 {
        let ack = keep_alive_once(&mut keeper, &mut acks).await;
        assert_eq!(ack.id(), id);
        assert!(ack.ttl() > 0);
    }
}

async fn status_and_members(ep: String) {
    let mut c = client(&ep).await;
    c.put("s", "1", None).await.expect("put");
    let s = c.status().await.expect("status");
    assert!(s.version().starts_with("3.4"), "version {}", s.version());
    assert_eq!(rev_of(s.header()), 2);
    assert!(s.raft_index() > 0 && s.leader() != 0);
    // RangeStream is newer than etcd 3.4: both answer Unimplemented.
    match c.kv_client().get_stream("s", None).await {
        Err(Error::GRpcStatus(s)) => assert_eq!(s.code(), Code::Unimplemented),
        Ok(mut st) => match st.message().await {
            Err(Error::GRpcStatus(s)) => assert_eq!(s.code(), Code::Unimplemented),
            other => panic!("RangeStream: expected Unimplemented, got {other:?}"),
        },
        Err(other) => panic!("RangeStream: expected Unimplemented, got {other:?}"),
    }
    let m = c.member_list().await.expect("member list");
    assert_eq!(m.members().len(), 1);
    assert!(
        m.members()[0].client_urls().iter().any(|u| u == &ep),
        "{:?}",
        m.members()[0].client_urls()
    );
}

/// 10,000 watches on one stream: all created with consecutive ids, and a
/// put reaches exactly the one watching its key.
async fn many_watches_on_one_stream(ep: String) {
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
            let m = tokio::time::timeout(MSG_TIMEOUT, rx.message())
                .await
                .expect("in time")
                .expect("ok")
                .expect("open");
            assert!(m.created() && !m.canceled(), "{m:?}");
            assert_eq!(m.watch_id(), created);
            created += 1;
        }
    };
    let (_tx, ()) = tokio::join!(send, recv);
    c.put("m/5000", "x", None).await.expect("put");
    c.put("m/9999", "x", None).await.expect("put");
    let m = tokio::time::timeout(MSG_TIMEOUT, rx.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!((m.watch_id(), m.events().len()), (5000, 1));
    let m = tokio::time::timeout(MSG_TIMEOUT, rx.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!((m.watch_id(), m.events().len()), (9999, 1));
    // Another client is served meanwhile.
    let mut other = client(&ep).await;
    assert_eq!(other.get("m/5000", None).await.expect("get").count(), 1);
}

/// A connection that speaks garbage is dropped; other clients never notice.
async fn garbage_connection_does_not_hurt_others(ep: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = client(&ep).await;
    c.put("g", "1", None).await.expect("put");
    let addr = ep.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("raw connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthis is not http2 at all\r\n")
        .await
        .expect("write garbage");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(MSG_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("server closes the connection");
    assert_eq!(values(c.get("g", None).await.expect("get").kvs()), ["1"]);
}

/// Four clients increment one counter with compare-and-swap txns: no update
/// is lost, and a watcher sees every value once, in revision order.
async fn concurrent_compare_and_swap(ep: String) {
    const CLIENTS: usize = 4;
    const EACH: usize = 25;
    let mut c = client(&ep).await;
    c.put("cas", "0", None).await.expect("put"); // 2
    let mut ws = c.watch("cas", None).await.expect("watch");
    assert!(next_msg(&mut ws).await.created());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let ep = ep.clone();
        set.spawn(async move {
            let mut c = client(&ep).await;
            let mut done = 0;
            while done < EACH {
                let g = c.get("cas", None).await.expect("get");
                let kv = &g.kvs()[0];
                let n: u64 = kv.value_str().expect("utf8").parse().expect("number");
                let r = c
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision(
                                "cas",
                                CompareOp::Equal,
                                kv.mod_revision(),
                            )])
                            .and_then([txn_put("cas", &(n + 1).to_string())]),
                    )
                    .await
                    .expect("txn");
                if r.succeeded() {
                    done += 1;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("client task");
    }
    let total = CLIENTS * EACH;
    let g = c.get("cas", None).await.expect("get");
    assert_eq!(values(g.kvs()), [total.to_string()]);
    assert_eq!(
        g.kvs()[0].mod_revision(),
        2 + total as i64,
        "only successful txns spend revisions"
    );
    let got = events(&mut ws, total).await;
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.2, 3 + i as i64);
    }
}

/// Streams in `many_streams_each_get_their_own_events`.
const PREFIX_STREAMS: usize = 1000;

/// 1000 watch streams, each with one watcher on its own prefix (the shape of
/// an emulated fleet), over connections of 100 streams. One write to each
/// prefix: every stream gets exactly its event; a second round shows that
/// nothing else was queued before it.
async fn many_streams_each_get_their_own_events(ep: String) {
    let mut clients = Vec::new();
    for _ in 0..PREFIX_STREAMS.div_ceil(100) {
        clients.push(client(&ep).await);
    }
    let mut streams = Vec::new();
    for i in 0..PREFIX_STREAMS {
        let c = &mut clients[i / 100];
        let opts = Some(WatchOptions::new().with_prefix());
        let mut ws = c.watch(format!("h/{i:04}/"), opts).await.expect("watch");
        assert!(next_msg(&mut ws).await.created());
        streams.push(ws);
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

// ---- Limits and back-pressure: ours only -----------------------------------

async fn ours_with(cfg: Config) -> Ours {
    Ours::start(cfg).await
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
        let mut ws = c.watch("w/0", None).await.expect("watch");
        assert!(next_msg(&mut ws).await.created());
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
        let mut stalled = client(&s.endpoint)
            .await
            .watch("s/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        assert!(next_msg(&mut stalled).await.created());
        let mut live = c
            .watch("s/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        assert!(next_msg(&mut live).await.created());
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
        let mut stalled = client(&s.endpoint)
            .await
            .watch("s/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        assert!(next_msg(&mut stalled).await.created());
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

/// Several serve calls on one store share the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_two_listeners_share_data() {
    let a = ours_with(Config::default()).await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ep2 = format!("http://{}", l.local_addr().expect("addr"));
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let store = a.store.clone();
        let cancel = cancel.clone();
        async move { store.serve(l, cancel).await }
    });
    guard(async {
        let mut c1 = client(&a.endpoint).await;
        let mut c2 = client(&ep2).await;
        let mut ws = c2.watch("k", None).await.expect("watch");
        assert!(next_msg(&mut ws).await.created());
        c1.put("k", "v", None).await.expect("put");
        assert_eq!(events(&mut ws, 1).await[0].2, 2);
        assert_eq!(values(c2.get("k", None).await.expect("get").kvs()), ["v"]);
    })
    .await;
    cancel.cancel();
    task.await
        .expect("join")
        .expect("second serve ends cleanly");
    a.stop().await;
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
        let mut ws = c
            .watch("p", Some(WatchOptions::new().with_progress_notify()))
            .await
            .expect("watch");
        assert!(next_msg(&mut ws).await.created());
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

/// `serve_incoming` serves any byte streams, here in-memory duplex pipes
/// (what an SSH channel looks like), with the client on `Client::from_channel`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_serve_incoming_over_duplex_pipes() {
    let store = Store::new(Config::default());
    let cancel = CancellationToken::new();
    // Each client connection sends the server half of a new pipe here.
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<tokio::io::DuplexStream>(4);
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
    let server = tokio::spawn({
        let store = store.clone();
        let cancel = cancel.clone();
        async move { store.serve_incoming(incoming, cancel).await }
    });
    guard(async {
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let conn_tx = conn_tx.clone();
            async move {
                let (client_half, server_half) = tokio::io::duplex(64 * 1024);
                conn_tx
                    .send(server_half)
                    .await
                    .map_err(|_| std::io::Error::other("store gone"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client_half))
            }
        });
        let channel = tonic::transport::Endpoint::from_static("http://tunnel")
            .connect_with_connector(connector)
            .await
            .expect("channel over a pipe");
        let mut c = Client::from_channel(etcd_client::Channel::Tonic(channel), None)
            .await
            .expect("client");
        let mut ws = c.watch("d", None).await.expect("watch");
        assert!(next_msg(&mut ws).await.created());
        assert_eq!(
            rev_of(c.put("d", "1", None).await.expect("put").header()),
            2
        );
        assert_eq!(events(&mut ws, 1).await[0].2, 2);
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve_incoming stops")
        .expect("join")
        .expect("serve_incoming ends cleanly");
    assert_eq!(store.stats().puts, 1);
}

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
        let mut a = c.watch("/a/", prefix()).await.expect("watch");
        let mut b = c.watch("/b/", prefix()).await.expect("watch");
        let mut k = c.watch("/k", None).await.expect("watch");
        let from = Some(WatchOptions::new().with_from_key());
        let mut y = c.watch("/y", from).await.expect("watch");
        for ws in [&mut a, &mut b, &mut k, &mut y] {
            assert!(next_msg(ws).await.created());
        }
        let wakeups = || s.store.stats().watch_wakeups;
        let revs = |evs: Vec<(EventType, String, i64, Option<String>)>| {
            evs.into_iter().map(|e| e.2).collect::<Vec<_>>()
        };
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
        assert_eq!(revs(events(&mut a, 1).await), [2]);
        assert_eq!(revs(events(&mut b, 1).await), [5]);
        assert_eq!(revs(events(&mut k, 1).await), [6]);
        assert_eq!(revs(events(&mut y, 1).await), [7]);
        // One revision under two prefixes wakes both streams, once each.
        let txn = Txn::new().and_then([txn_put("/a/2", "x"), txn_put("/b/2", "x")]);
        c.txn(txn).await.expect("txn"); // 8
        assert_eq!(wakeups(), 6);
        assert_eq!(revs(events(&mut a, 1).await), [8]);
        assert_eq!(revs(events(&mut b, 1).await), [8]);
        c.put("/a/3", "x", None).await.expect("put"); // 9
        c.put("/b/3", "x", None).await.expect("put"); // 10
        c.put("/k", "y", None).await.expect("put"); // 11
        c.put("/y1", "x", None).await.expect("put"); // 12
        assert_eq!(wakeups(), 10);
        assert_eq!(revs(events(&mut a, 1).await), [9]);
        assert_eq!(revs(events(&mut b, 1).await), [10]);
        assert_eq!(revs(events(&mut k, 1).await), [11]);
        assert_eq!(revs(events(&mut y, 1).await), [12]);
    })
    .await;
    s.stop().await;
}

/// The 1000-stream scenario against ours, and each write woke exactly one
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_each_write_wakes_one_of_many_streams() {
    let s = ours_with(Config::default()).await;
    guard(many_streams_each_get_their_own_events(s.endpoint.clone())).await;
    assert_eq!(s.store.stats().watch_wakeups, 2 * PREFIX_STREAMS as u64);
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
