//! Conformance of the server around the data: the request size limit,
//! stream messages far larger than their first buffers, `Status` and
//! `MemberList` (and `RangeStream` unimplemented), and a garbage connection
//! that must not hurt other clients.

use etcd_client::{Error, WatchOptions};
use tonic::Code;

use super::{
    assert_status, client, keep_alive_once, next_msg, rev_of, values, watch_created, MSG_TIMEOUT,
};

pub(super) async fn oversized_request(ep: String) {
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
pub(super) async fn streams_carry_messages_far_over_their_first_buffers(ep: String) {
    let mut c = client(&ep).await;
    // A 64 KiB key in the watch's create request.
    let long = format!("w/{}", "k".repeat(64 * 1024));
    let mut ws = watch_created(&mut c, &long, Some(WatchOptions::new().with_prefix())).await;
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

pub(super) async fn status_and_members(ep: String) {
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

/// A connection that speaks garbage is dropped; other clients never notice.
pub(super) async fn garbage_connection_does_not_hurt_others(ep: String) {
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
