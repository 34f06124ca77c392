//! Conformance of transactions: compares of every target and ordering (on
//! missing keys and over ranges), both branches, nested txns, one revision
//! per writing txn, the validation errors, and compare-and-swap from
//! concurrent clients losing no update.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use super::{assert_status, client, events, rev_of, txn_put, values, watch_created};

/// Whether a txn with only the compare `cmp` takes its success branch.
async fn holds(c: &mut Client, cmp: Compare) -> bool {
    c.txn(Txn::new().when([cmp]))
        .await
        .expect("txn")
        .succeeded()
}

pub(super) async fn txn_branches_and_compares(ep: String) {
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
    for (cmp, want) in [
        (Compare::value("missing", CompareOp::Equal, ""), false),
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        // Orderings on an existing key.
        (Compare::mod_revision("t", CompareOp::Greater, 2), true),
        (Compare::version("t", CompareOp::Less, 10), true),
        (Compare::value("t", CompareOp::NotEqual, "v1"), true),
        (Compare::value("t", CompareOp::Greater, "v1"), true),
        (Compare::value("t", CompareOp::Less, "v1"), false),
    ] {
        let what = format!("{cmp:?}");
        assert_eq!(holds(&mut c, cmp).await, want, "{what}");
    }
    // A compare over a range: every key must satisfy it.
    let all_a = || Compare::value("p/", CompareOp::Equal, "a").with_prefix();
    c.put("p/1", "a", None).await.expect("put"); // 5
    c.put("p/2", "a", None).await.expect("put"); // 6
    assert!(holds(&mut c, all_a()).await);
    c.put("p/2", "b", None).await.expect("put"); // 7
    assert!(!holds(&mut c, all_a()).await);
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

pub(super) async fn txn_invalid(ep: String) {
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

/// Four clients increment one counter with compare-and-swap txns: no update
/// is lost, and a watcher sees every value once, in revision order.
pub(super) async fn concurrent_compare_and_swap(ep: String) {
    const CLIENTS: usize = 4;
    const EACH: usize = 25;
    let mut c = client(&ep).await;
    c.put("cas", "0", None).await.expect("put"); // 2
    let mut ws = watch_created(&mut c, "cas", None).await;
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
