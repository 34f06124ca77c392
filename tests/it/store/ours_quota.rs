//! What one host may hold in ours (#13): past its bound on live keys,
//! their bytes or its leases, a host's writes get etcd's own errors while
//! other hosts go on; past the store's own bound on bytes (history
//! included, as etcd's backend quota), every write is refused and reads
//! and deletes still work. Clients are real etcd clients whose connections
//! are tagged as a host, as the initiator tags a host's tunnel.

use std::sync::Arc;

use etcd_client::{Client, Error};
use mgmt::store::{Config, Conn, HostQuota, Speaker, Store};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{assert_status, guard};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A store serving in-memory connections, and where they go.
struct Served {
    conns: mpsc::Sender<Conn<DuplexStream>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    fn start(cfg: Config) -> Served {
        let store = Store::new(cfg);
        let cancel = CancellationToken::new();
        let (conns, rx) = mpsc::channel(8);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            store.serve_incoming(incoming, c).await.expect("serve");
        });
        Served {
            conns,
            cancel,
            task,
        }
    }

    /// A client whose connections speak for `speaker` (`None`: for nobody,
    /// like the initiator's own).
    async fn client(&self, speaker: Option<Arc<Speaker>>) -> Client {
        let tx = self.conns.clone();
        let dial: mgmt::link::Dial = Arc::new(move || {
            let (tx, speaker) = (tx.clone(), speaker.clone());
            Box::pin(async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                let conn = match speaker {
                    Some(sp) => Conn::speaking_for(server, sp),
                    None => Conn::new(server),
                };
                tx.send(conn)
                    .await
                    .map_err(|_| std::io::Error::other("store gone"))?;
                Ok(Box::new(client) as mgmt::link::DialStream)
            })
        });
        mgmt::link::connect_store("http://in-process.invalid", None, Some(dial))
            .await
            .expect("client")
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("serve task");
    }
}

fn key(host: &str, name: &str) -> String {
    format!("/_mgmt/exported/{host}/resources/file/{name}")
}

fn small() -> Config {
    Config {
        host_quota: HostQuota {
            keys: 3,
            bytes: 4096,
            leases: 2,
            watches: 1_000,
        },
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_a_host_past_its_quota_is_refused_and_others_go_on() {
    let s = Served::start(small());
    guard(async {
        let mut web1 = s.client(Some(Speaker::new("web1", []))).await;
        let mut web2 = s.client(Some(Speaker::new("web2", []))).await;
        for n in ["a", "b", "c"] {
            web1.put(key("web1", n), "v", None)
                .await
                .expect("within quota");
        }
        assert_status(
            web1.put(key("web1", "d"), "v", None).await,
            Code::ResourceExhausted,
            NO_SPACE,
        );
        // Overwriting is not a new key; a freed key makes room again.
        web1.put(key("web1", "a"), "w", None)
            .await
            .expect("overwrite");
        web1.delete(key("web1", "a"), None).await.expect("delete");
        web1.put(key("web1", "d"), "v", None)
            .await
            .expect("room again");
        // Bytes: one value past the host's bound.
        let big = "x".repeat(5000);
        assert_status(
            web1.put(key("web1", "b"), big, None).await,
            Code::ResourceExhausted,
            NO_SPACE,
        );
        // Another host is not affected.
        for n in ["a", "b", "c"] {
            web2.put(key("web2", n), "v", None)
                .await
                .expect("web2 within its quota");
        }
        // Leases: two, then "too many requests" until one is revoked.
        let l1 = web1.lease_grant(10, None).await.expect("lease 1").id();
        web1.lease_grant(10, None).await.expect("lease 2");
        assert_status(
            web1.lease_grant(10, None).await,
            Code::ResourceExhausted,
            "etcdserver: too many requests",
        );
        web1.lease_revoke(l1).await.expect("revoke");
        web1.lease_grant(10, None)
            .await
            .expect("room for a lease again");
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_a_full_store_refuses_writes_and_still_serves_reads_and_deletes() {
    let s = Served::start(Config {
        quota_bytes: 64 * 1024,
        ..Config::default()
    });
    guard(async {
        let mut c = s.client(None).await;
        let value = "x".repeat(10 * 1024);
        let mut stored = 0;
        let refused = loop {
            match c.put(format!("k{stored}"), value.clone(), None).await {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100, "never refused");
        };
        assert!(stored >= 4, "refused too early, after {stored}");
        match refused {
            Error::GRpcStatus(st) => {
                assert_eq!(
                    (st.code(), st.message()),
                    (Code::ResourceExhausted, NO_SPACE)
                )
            }
            other => panic!("{other:?}"),
        }
        let got = c.get("k0", None).await.expect("reads go on");
        assert_eq!(got.kvs().len(), 1);
        c.delete("k0", None).await.expect("deletes go on");
    })
    .await;
    s.stop().await;
}

/// The next response on `ws`: whether the watch it answers was created,
/// and the reason the store gave if it was refused.
async fn created(ws: &mut etcd_client::WatchStream) -> Result<i64, String> {
    let resp = ws.message().await.expect("watch response").expect("open");
    assert!(resp.created(), "{resp:?}");
    if resp.canceled() {
        Err(resp.cancel_reason().to_owned())
    } else {
        Ok(resp.watch_id())
    }
}

/// Creates one more watch on `key` over `ws`.
async fn try_watch(ws: &mut etcd_client::WatchStream, key: &str) -> Result<i64, String> {
    ws.watch(key, None).await.expect("send a create");
    created(ws).await
}

// See: #13 (per-host and total bounds on watches, the store serving
// everyone else)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_a_host_past_its_watch_bound_is_refused_and_others_go_on() {
    let cfg = Config {
        host_quota: HostQuota {
            watches: 2,
            ..Config::default().host_quota
        },
        max_watches: 3,
        ..Config::default()
    };
    let s = Served::start(cfg);
    guard(async {
        let web1 = Speaker::new("web1", []);
        let mut c1 = s.client(Some(web1.clone())).await;
        let own = |n: &str| key("web1", n);
        let mut ws = c1.watch(own("a"), None).await.expect("first watch");
        let first = created(&mut ws).await.expect("first watch created");
        // Across streams of the same host: one more, then refused.
        let mut ws2 = c1.watch(own("b"), None).await.expect("second stream");
        created(&mut ws2).await.expect("second watch created");
        let reason = try_watch(&mut ws2, &own("c")).await.unwrap_err();
        assert!(
            reason.contains("web1 holds its limit of 2 watches"),
            "{reason}"
        );
        // Another host is not affected, up to the store's own bound.
        let mut c2 = s.client(Some(Speaker::new("web2", []))).await;
        let mut ws3 = c2.watch(key("web2", "a"), None).await.expect("web2");
        created(&mut ws3).await.expect("web2's watch created");
        let reason = try_watch(&mut ws3, &key("web2", "b")).await.unwrap_err();
        assert!(
            reason.contains("the store holds its limit of 3 watches"),
            "{reason}"
        );
        // A cancelled watch makes room again.
        ws.cancel(first).await.expect("cancel");
        let resp = ws.message().await.expect("cancel response").expect("open");
        assert!(resp.canceled(), "{resp:?}");
        try_watch(&mut ws2, &own("c")).await.expect("room again");
        // Writes still go through and wake the watchers left.
        c1.put(own("b"), "v", None).await.expect("put");
        let resp = ws2.message().await.expect("event").expect("open");
        assert_eq!(resp.events().len(), 1, "{resp:?}");
        drop((ws, ws2, ws3));
    })
    .await;
    s.stop().await;
}
