//! Serving in ours beyond a single listener: several `serve` calls on one
//! store share its data, and `serve_incoming` serves any byte streams (here
//! in-memory duplex pipes, what an SSH channel looks like).

use std::time::Duration;

use etcd_client::Client;
use mgmt::store::{Config, Store};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{client, events, guard, ours_with, rev_of, values, watch_created, Ours};

/// Several serve calls on one store share the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_two_listeners_share_data() {
    let a = ours_with(Config::default()).await;
    let b = Ours::serve(a.store.clone()).await;
    guard(async {
        let mut c1 = client(&a.endpoint).await;
        let mut c2 = client(&b.endpoint).await;
        let mut ws = watch_created(&mut c2, "k", None).await;
        c1.put("k", "v", None).await.expect("put");
        assert_eq!(events(&mut ws, 1).await[0].2, 2);
        assert_eq!(values(c2.get("k", None).await.expect("get").kvs()), ["v"]);
    })
    .await;
    b.stop().await;
    a.stop().await;
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
        let mut ws = watch_created(&mut c, "d", None).await;
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
