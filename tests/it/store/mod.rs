//! Conformance suite of the embedded store: every scenario is a function of
//! an endpoint, run once against our [`Store`] (`store::ours::NAME`) and once
//! against a real etcd 3.4 (`store::etcd::NAME`, see `util/etcd.rs`), through
//! the real `etcd_client::Client` with identical assertions. When the two
//! disagree, ours is wrong. The scenarios live in the group files; this file
//! holds the server guards, the `conformance!` list and the shared helpers.
//!
//! Each test gets a fresh server, so revisions are predictable and tests run
//! in parallel. Tests wait on responses and events; `timeout` is only a hang
//! guard. Tests of limits that etcd does not have (or that would take etcd
//! minutes of fsyncs) run against ours only, in the `ours_*` files.

mod etcdctl;
mod etcdctl_auth;
mod kv;
mod lease;
mod maintenance;
mod ours_dispatch;
mod ours_quota;
mod ours_serving;
mod ours_watch;
mod server;
mod txn;
mod watch;

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Error, EventType, GetOptions, GetResponse, TxnOp, WatchOptions, WatchResponse,
    WatchStream,
};
use mgmt::store::{Config, Store, StoreError};
use tokio::net::TcpListener;
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
        Ours::serve(Store::new(cfg)).await
    }

    /// Serves `store` (a new one, or one already served elsewhere) on a new
    /// loopback listener.
    async fn serve(store: Store) -> Ours {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
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

/// Runs each scenario `group::NAME` against ours (`store::ours::NAME`) and
/// etcd (`store::etcd::NAME`).
macro_rules! conformance {
    ($($group:ident::$name:ident),* $(,)?) => {
        mod ours {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = super::Ours::start(mgmt::store::Config::default()).await;
                    super::guard(super::$group::$name(s.endpoint.clone())).await;
                    s.stop().await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let e = crate::util::etcd::Etcd::start().await;
                    super::guard(super::$group::$name(e.endpoint.clone())).await;
                }
            )*
        }
    };
}

conformance!(
    kv::kv_revisions_and_prev_kv,
    kv::kv_bad_puts,
    kv::range_options,
    txn::txn_branches_and_compares,
    txn::txn_invalid,
    watch::watch_replay_prefix_prev_kv_cancel,
    watch::watch_filters_ids_progress,
    kv::compaction_errors,
    lease::lease_expiry_deletes_keys_with_events,
    lease::lease_keep_alive_time_to_live_revoke,
    lease::unknown_lease_ids,
    server::oversized_request,
    server::streams_carry_messages_far_over_their_first_buffers,
    server::status_and_members,
    watch::many_watches_on_one_stream,
    server::garbage_connection_does_not_hurt_others,
    txn::concurrent_compare_and_swap,
    watch::many_streams_each_get_their_own_events,
    maintenance::hash_kv_hashes_history_up_to_a_revision,
    maintenance::nospace_alarm_refuses_puts_until_disarmed,
    maintenance::raft_index_and_move_leader_as_a_single_member,
);

async fn client(ep: &str) -> Client {
    Client::connect([ep], None).await.expect("connect")
}

/// Our store alone, for the `ours_*` tests of what etcd does not have.
async fn ours_with(cfg: Config) -> Ours {
    Ours::start(cfg).await
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

/// The next message of a stream (`what` names it in a failure), within
/// [`MSG_TIMEOUT`]; a stream error or end fails the test.
async fn in_time<T>(what: &str, next: impl Future<Output = Result<Option<T>, Error>>) -> T {
    tokio::time::timeout(MSG_TIMEOUT, next)
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap_or_else(|e| panic!("{what} stream ok: {e}"))
        .unwrap_or_else(|| panic!("{what} stream open"))
}

async fn next_msg(ws: &mut WatchStream) -> WatchResponse {
    in_time("watch response", ws.message()).await
}

/// Opens a watch on `key` and asserts its first response is the creation.
async fn watch_created(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> WatchStream {
    let mut ws = c.watch(key, opts).await.expect("watch");
    assert!(next_msg(&mut ws).await.created());
    ws
}

/// Sends one keep-alive and returns its answer.
async fn keep_alive_once(
    keeper: &mut etcd_client::LeaseKeeper,
    acks: &mut etcd_client::LeaseKeepAliveStream,
) -> etcd_client::LeaseKeepAliveResponse {
    keeper.keep_alive().await.expect("send keep-alive");
    in_time("keep-alive answer", acks.message()).await
}

/// One event as [`events`] returns it: (type, key, mod_revision, prev value).
type Event = (EventType, String, i64, Option<String>);

/// Reads watch responses until `n` events arrived.
async fn events(ws: &mut WatchStream, n: usize) -> Vec<Event> {
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

/// A range read with `opts` that must succeed.
async fn range(c: &mut Client, key: &str, opts: GetOptions) -> GetResponse {
    c.get(key, Some(opts)).await.expect("get")
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

fn txn_put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}
