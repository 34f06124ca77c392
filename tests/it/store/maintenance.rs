//! Conformance of the Maintenance API beyond Status (issue #14): HashKV
//! hashes the history up to a revision (the past hashes as it was, a new
//! write changes the current hash, compacted and future revisions are
//! refused), Hash answers, an alarm is kept until disarmed and NOSPACE
//! refuses what would grow the store, the raft index moves one per write,
//! and MoveLeader answers as a single member. Hash values themselves are
//! compared only within one server: etcd's depend on its page layout.

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Compare, CompareOp, Error, TxnOp};
use tonic::Code;

use super::{assert_status, client, guard, rev_of, txn_put};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

pub(super) async fn hash_kv_hashes_history_up_to_a_revision(ep: String) {
    let mut c = client(&ep).await;
    c.put("a", "1", None).await.expect("put");
    c.put("b", "2", None).await.expect("put");
    let h3 = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(rev_of(h3.header()), 3);
    assert_eq!(h3.compact_version(), -1, "never compacted");
    assert_eq!(c.hash_kv(3).await.expect("hash kv 3").hash(), h3.hash());
    c.put("a", "3", None).await.expect("put");
    let h4 = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(rev_of(h4.header()), 4);
    assert_ne!(h4.hash(), h3.hash(), "a write changes the current hash");
    let past = c.hash_kv(3).await.expect("hash kv at 3");
    assert_eq!(past.hash(), h3.hash(), "the past hashes as it was");
    assert_eq!(
        rev_of(past.header()),
        4,
        "the header carries the current revision"
    );
    assert_status(
        c.hash_kv(9).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    c.compact(3, None).await.expect("compact");
    for rev in [2, 3] {
        assert_status(
            c.hash_kv(rev).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    let after = c.hash_kv(4).await.expect("hash kv after compaction");
    assert_eq!(after.compact_version(), 3);
    let whole = c.hash().await.expect("hash");
    assert_eq!(rev_of(whole.header()), 4);
    c.put("c", "4", None).await.expect("put");
    assert_ne!(c.hash().await.expect("hash").hash(), whole.hash());
}

pub(super) async fn nospace_alarm_refuses_puts_until_disarmed(ep: String) {
    let mut c = client(&ep).await;
    c.put("k", "1", None).await.expect("put");
    let me = c.status().await.expect("status");
    let member = me.header().expect("header").member_id();
    assert!(me.errors().is_empty(), "{:?}", me.errors());
    assert!(c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm get")
        .alarms()
        .is_empty());
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    let on = c
        .alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(opts.clone()),
        )
        .await
        .expect("activate");
    let pairs = |a: &[etcd_client::AlarmMember]| {
        a.iter()
            .map(|m| (m.member_id(), m.alarm()))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(on.alarms()), [(member, AlarmType::Nospace)]);
    let listed = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm get");
    assert_eq!(pairs(listed.alarms()), [(member, AlarmType::Nospace)]);
    let errors = c.status().await.expect("status").errors().to_vec();
    assert_eq!(errors, [format!("memberID:{member} alarm:NOSPACE ")]);

    // Writes that grow the store are refused; reads and deletes are not.
    assert_status(
        c.put("k", "2", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    let txn = etcd_client::Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "1")])
        .and_then([txn_put("k", "3")]);
    assert_status(c.txn(txn).await, Code::ResourceExhausted, NO_SPACE);
    assert_status(
        c.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    let read = etcd_client::Txn::new().and_then([TxnOp::get("k", None)]);
    assert!(c.txn(read).await.expect("read-only txn").succeeded());
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    let del = c.delete("k", None).await.expect("delete");
    assert_eq!(del.deleted(), 1);

    let off = c
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(opts.clone()),
        )
        .await
        .expect("deactivate");
    assert_eq!(pairs(off.alarms()), [(member, AlarmType::Nospace)]);
    let again = c
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(opts.clone()),
        )
        .await
        .expect("deactivate again");
    assert!(pairs(again.alarms()).is_empty());
    c.put("k", "4", None).await.expect("put after disarm");
    assert!(c.status().await.expect("status").errors().is_empty());
}

pub(super) async fn raft_index_and_move_leader_as_a_single_member(ep: String) {
    let mut c = client(&ep).await;
    let before = c.status().await.expect("status");
    c.put("r", "1", None).await.expect("put");
    c.lease_grant(60, None).await.expect("grant");
    // A no-op delete is logged; neither a read-only txn nor a request
    // refused by validation is.
    c.delete("nothing", None).await.expect("no-op delete");
    let read = etcd_client::Txn::new().and_then([TxnOp::get("r", None)]);
    c.txn(read).await.expect("read-only txn");
    assert!(c.put("", "x", None).await.is_err(), "empty key refused");
    // Alarm requests go through raft in etcd, GET included.
    c.alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm get");
    let after = c.status().await.expect("status");
    assert_eq!(
        after.raft_index(),
        before.raft_index() + 4,
        "one entry per write"
    );
    assert_eq!(after.leader(), after.header().expect("header").member_id());
    assert!(!after.is_learner());
    let me = after.leader();
    c.move_leader(me).await.expect("move leadership to itself");
    match c.move_leader(me ^ 1).await {
        Err(Error::GRpcStatus(s)) => assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee"
            )
        ),
        other => panic!("move to a non-member: {other:?}"),
    }
}

/// What etcd 3.4 does not have or answer: HashKV's `hash_revision` (3.6),
/// and Snapshot's refusal, which says what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_hash_revision_and_snapshot_refusal() {
    let s = super::ours_with(mgmt::store::Config::default()).await;
    guard(async {
        let mut c = client(&s.endpoint).await;
        c.put("a", "1", None).await.expect("put");
        c.put("a", "2", None).await.expect("put");
        assert_eq!(c.hash_kv(2).await.expect("hash kv").hash_revision(), 2);
        assert_eq!(c.hash_kv(0).await.expect("hash kv").hash_revision(), 3);
        let refused = match c.snapshot().await {
            Err(e) => e,
            Ok(mut st) => st.message().await.expect_err("snapshot refused"),
        };
        match refused {
            Error::GRpcStatus(st) => {
                assert_eq!(st.code(), Code::Unimplemented);
                assert!(
                    st.message().contains("no database file")
                        && st.message().contains("etcdctl get \"\" --prefix"),
                    "{}",
                    st.message()
                );
            }
            other => panic!("snapshot: expected Unimplemented, got {other:?}"),
        }
    })
    .await;
    s.stop().await;
}
