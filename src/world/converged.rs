//! Publishing this host's converged state: `/_mgmt/converged/<host>` =
//! `true`/`false`, attached to a lease the process keeps alive, so a host
//! that dies stops counting. Keys that never change while the process
//! lives (its facts) ride on the same lease: they are written with the
//! first write of each lease, in the same request.
//!
//! Starting costs two round trips to the store: the grant, then one write
//! of every key. The keep-alive stream is opened only when the first
//! keep-alive is due (a third of the TTL later), so a short run never opens
//! it at all.
//!
//! A lease session can end under us: the keep-alive stream closes (the store
//! restarted, a connection dropped) or the store answers TTL 0 (the lease
//! expired). The publisher then grants a new lease and writes the key again
//! under it, waiting between attempts with a back-off (doubling from
//! [`BACKOFF_MIN`] to [`BACKOFF_MAX`]), so a store that keeps failing costs a
//! request every few seconds, never a busy loop. The previous lease is
//! revoked only once the key has moved to the new one, so readers never see
//! the key vanish while the host is alive.
//!
//! What this does not do: decide what converged means (the engine does) or
//! read other hosts' keys (the run loop does). [`Leases`] is the seam the
//! tests use to end sessions at will; [`EtcdLeases`] is the real client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::Status;

/// First wait after a lost session; doubled after each failed attempt.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The store operations the publisher needs.
#[async_trait::async_trait]
pub(super) trait Leases: Send {
    type Session: Session;
    /// Grants a lease of `ttl` seconds.
    async fn open(&mut self, ttl: i64) -> Result<Self::Session, etcd_client::Error>;
    /// Writes every `(key, value)` under `lease`, in one request.
    async fn put(&mut self, kvs: &[(String, String)], lease: i64)
        -> Result<(), etcd_client::Error>;
    /// Best effort: the lease may already be gone.
    async fn revoke(&mut self, lease: i64);
    /// Waits `wait` before the next attempt (a seam: tests record it).
    async fn pause(&mut self, wait: Duration) {
        tokio::time::sleep(wait).await
    }
}

/// One granted lease and its keep-alive stream.
#[async_trait::async_trait]
pub(super) trait Session: Send {
    fn lease(&self) -> i64;
    /// Sends one keep-alive request (opening the stream the first time).
    async fn keep_alive(&mut self) -> Result<(), etcd_client::Error>;
    /// The TTL of the next answer; `None` once the stream has ended;
    /// pending while no stream is open. Cancel-safe: used in `select!`.
    async fn ack(&mut self) -> Result<Option<i64>, etcd_client::Error>;
}

/// [`Leases`] on a real etcd client (ours or etcd's).
pub(super) struct EtcdLeases(pub Client);

pub(super) struct EtcdSession {
    client: Client,
    lease: i64,
    /// Opened by the first keep-alive.
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

#[async_trait::async_trait]
impl Leases for EtcdLeases {
    type Session = EtcdSession;

    async fn open(&mut self, ttl: i64) -> Result<EtcdSession, etcd_client::Error> {
        let lease = self.0.lease_grant(ttl, None).await?.id();
        Ok(EtcdSession {
            client: self.0.clone(),
            lease,
            stream: None,
        })
    }

    async fn put(
        &mut self,
        kvs: &[(String, String)],
        lease: i64,
    ) -> Result<(), etcd_client::Error> {
        let opts = PutOptions::new().with_lease(lease);
        let ops: Vec<TxnOp> = kvs
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), Some(opts.clone())))
            .collect();
        self.0.txn(Txn::new().and_then(ops)).await.map(drop)
    }

    /// Bounded: when the link to the store is gone, the lease expires by
    /// itself, and a stop must not wait for the dead connection to time out.
    async fn revoke(&mut self, lease: i64) {
        let revoke = self.0.lease_revoke(lease);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), revoke).await;
    }
}

#[async_trait::async_trait]
impl Session for EtcdSession {
    fn lease(&self) -> i64 {
        self.lease
    }

    /// Opening the stream sends the first keep-alive and waits for its
    /// answer (an expired lease fails here).
    async fn keep_alive(&mut self) -> Result<(), etcd_client::Error> {
        match &mut self.stream {
            Some((keeper, _)) => keeper.keep_alive().await,
            None => {
                self.stream = Some(self.client.lease_keep_alive(self.lease).await?);
                Ok(())
            }
        }
    }

    async fn ack(&mut self) -> Result<Option<i64>, etcd_client::Error> {
        match &mut self.stream {
            Some((_, acks)) => Ok(acks.message().await?.map(|r| r.ttl())),
            None => std::future::pending().await,
        }
    }
}

/// Waits that double from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`].
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// How a session ended.
enum End {
    /// Cancelled, or the engine is gone: stop publishing.
    Stopped,
    /// The session is unusable (why); open another one.
    Lost(String),
}

/// What one publisher writes under its lease.
pub(super) struct Keys<T> {
    /// Rewritten whenever `value` renders differently.
    pub key: String,
    pub value: (watch::Receiver<T>, fn(&T) -> String),
    /// Written with the first write of each lease, never again.
    pub fixed: Vec<(String, String)>,
    /// How long the very first write waits for the value to leave its
    /// default (a one-shot run converges moments after it starts: its
    /// first write then says so, and no second one follows); zero: not at
    /// all. A value that left its default before the lease was granted
    /// is written at once.
    pub first_wait: Duration,
    /// Set before the stop to leave the lease to lapse (its TTL, or the
    /// store's end) instead of revoking it: when the whole run stops, a
    /// host whose keys vanished at once would be seen leaving by peers
    /// that have not stopped yet, and their graphs would change.
    pub lapse: Arc<AtomicBool>,
}

/// Publishes `keys` until `cancel` (or until the value's channel closes,
/// e.g. the engine is gone), then revokes the lease, which deletes them,
/// unless `keys.lapse` is set.
pub(super) async fn publish<L: Leases, T: Send + Sync + Default>(
    mut leases: L,
    mut keys: Keys<T>,
    ttl: i64,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff(BACKOFF_MIN);
    // Leases of lost sessions that may still hold the key.
    let mut stale: Vec<i64> = Vec::new();
    loop {
        let opened = tokio::select! {
            biased; // a stop wins over anything else ready
            _ = cancel.cancelled() => break,
            s = leases.open(ttl) => s,
        };
        let why = match opened {
            Err(e) => format!("cannot grant a lease: {e}"),
            Ok(mut session) => {
                let end = serve(
                    &mut leases,
                    &mut session,
                    &mut keys,
                    ttl,
                    &cancel,
                    (&mut backoff, &mut stale),
                )
                .await;
                stale.push(session.lease());
                match end {
                    End::Stopped => break,
                    End::Lost(why) => why,
                }
            }
        };
        let wait = backoff.next();
        tracing::warn!("{}: {why}; granting a new lease in {wait:?}", keys.key);
        tokio::select! {
            biased; // a stop wins over anything else ready
            _ = cancel.cancelled() => break,
            _ = leases.pause(wait) => {}
        }
    }
    if keys.lapse.load(Ordering::SeqCst) {
        tracing::debug!("{}: the run stops; its lease is left to lapse", keys.key);
        return;
    }
    for lease in stale {
        leases.revoke(lease).await;
    }
}

/// The converged key's value for `status`: `true` or `false`.
pub(super) fn converged_value(status: &Status) -> String {
    if status.converged { "true" } else { "false" }.to_owned()
}

/// Runs one session: writes the key on every change of its value (the
/// fixed keys with the first write) and keeps the lease alive, until it is
/// stopped or lost.
async fn serve<L: Leases, T: Send + Sync + Default>(
    leases: &mut L,
    session: &mut L::Session,
    keys: &mut Keys<T>,
    ttl: i64,
    cancel: &CancellationToken,
    (backoff, stale): (&mut Backoff, &mut Vec<i64>),
) -> End {
    enum Event {
        Tick,
        Ack(Result<Option<i64>, etcd_client::Error>),
    }
    // The grant gave a full TTL: the first keep-alive is due a period later.
    let period = Duration::from_secs((ttl / 3).max(1) as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let (converged, render) = (&mut keys.value.0, keys.value.1);
    let first_wait = std::mem::take(&mut keys.first_wait);
    if !first_wait.is_zero() {
        // From the default, not from the value now: the engine may have
        // converged while the lease was being granted.
        let unsettled = render(&T::default());
        tokio::select! {
            biased; // a stop wins over anything else ready
            _ = cancel.cancelled() => return End::Stopped,
            _ = converged.wait_for(|v| render(v) != unsettled) => {}
            _ = tokio::time::sleep(first_wait) => {}
        }
    }
    let mut last: Option<String> = None;
    loop {
        let now = render(&converged.borrow_and_update());
        if last.as_ref() != Some(&now) {
            let mut kvs = vec![(keys.key.clone(), now.clone())];
            if last.is_none() {
                kvs.extend(keys.fixed.iter().cloned());
            }
            if let Err(e) = leases.put(&kvs, session.lease()).await {
                return End::Lost(format!("cannot write the key: {e}"));
            }
            last = Some(now);
            // The key has left the old leases: revoking them deletes nothing.
            for lease in stale.drain(..) {
                leases.revoke(lease).await;
            }
        }
        let event = tokio::select! {
            biased; // a stop wins over anything else ready
            _ = cancel.cancelled() => return End::Stopped,
            r = converged.changed() => match r {
                Ok(()) => continue,
                Err(_) => return End::Stopped,
            },
            _ = tick.tick() => Event::Tick,
            ack = session.ack() => Event::Ack(ack),
        };
        match event {
            Event::Tick => {
                if let Err(e) = session.keep_alive().await {
                    return End::Lost(format!("keep-alive failed: {e}"));
                }
            }
            Event::Ack(Ok(Some(t))) if t > 0 => backoff.reset(),
            Event::Ack(Ok(Some(_))) => return End::Lost("the lease expired".into()),
            Event::Ack(Ok(None)) => return End::Lost("the keep-alive stream ended".into()),
            Event::Ack(Err(e)) => return End::Lost(format!("keep-alive failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    /// What the fake store saw.
    #[derive(Default)]
    struct Log {
        opens: i64,
        /// `(values, lease)` of every put, the values joined with `+`.
        puts: Vec<(String, i64)>,
        revoked: Vec<i64>,
        /// Back-off waits, in order.
        waits: Vec<Duration>,
        acks: u64,
    }

    /// A store whose keep-alive streams end as soon as they are read or,
    /// if `live`, never end. `stop` is cancelled at the `stop_after`th open.
    #[derive(Clone)]
    struct Fake {
        log: Arc<Mutex<Log>>,
        live: bool,
        stop_after: i64,
        stop: CancellationToken,
        /// Notified on every put.
        put: Arc<Notify>,
    }

    impl Fake {
        fn new(live: bool, stop_after: i64) -> Fake {
            Fake {
                log: Arc::default(),
                live,
                stop_after,
                stop: CancellationToken::new(),
                put: Arc::default(),
            }
        }
    }

    struct FakeSession {
        lease: i64,
        live: bool,
        log: Arc<Mutex<Log>>,
    }

    fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
        log.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[async_trait::async_trait]
    impl Leases for Fake {
        type Session = FakeSession;
        async fn open(&mut self, _ttl: i64) -> Result<FakeSession, etcd_client::Error> {
            let mut log = lock(&self.log);
            log.opens += 1;
            if log.opens == self.stop_after {
                self.stop.cancel();
            }
            Ok(FakeSession {
                lease: log.opens,
                live: self.live,
                log: self.log.clone(),
            })
        }
        async fn put(
            &mut self,
            kvs: &[(String, String)],
            lease: i64,
        ) -> Result<(), etcd_client::Error> {
            let values: Vec<&str> = kvs.iter().map(|(_, v)| v.as_str()).collect();
            lock(&self.log).puts.push((values.join("+"), lease));
            self.put.notify_one();
            Ok(())
        }
        async fn revoke(&mut self, lease: i64) {
            lock(&self.log).revoked.push(lease);
        }
        async fn pause(&mut self, wait: Duration) {
            lock(&self.log).waits.push(wait);
            tokio::task::yield_now().await;
        }
    }

    #[async_trait::async_trait]
    impl Session for FakeSession {
        fn lease(&self) -> i64 {
            self.lease
        }
        async fn keep_alive(&mut self) -> Result<(), etcd_client::Error> {
            Ok(())
        }
        async fn ack(&mut self) -> Result<Option<i64>, etcd_client::Error> {
            {
                let mut log = lock(&self.log);
                log.acks += 1;
                // A publisher that loops on an ended stream gets here at
                // once, forever: fail instead of hanging.
                assert!(log.acks < 10_000, "busy loop on an ended keep-alive stream");
            }
            if !self.live {
                return Ok(None);
            }
            std::future::pending::<()>().await;
            Ok(Some(10))
        }
    }

    const GUARD: Duration = Duration::from_secs(20);

    /// Key `k` following `status`, and a fixed key `f` = `F`.
    fn keys(status: watch::Receiver<Status>) -> Keys<Status> {
        Keys {
            key: "k".into(),
            value: (status, converged_value),
            fixed: vec![("f".into(), "F".into())],
            first_wait: Duration::ZERO,
            lapse: Arc::default(),
        }
    }

    // See: #3 (an ended keep-alive stream made publish_converged spin)
    #[tokio::test]
    async fn ended_keep_alive_stream_is_retried_with_backoff() {
        let fake = Fake::new(false, 10);
        let (log, stop) = (fake.log.clone(), fake.stop.clone());
        let (_status_tx, status) = watch::channel(Status::default());
        let run = publish(fake, keys(status), 10, stop);
        tokio::time::timeout(GUARD, run)
            .await
            .expect("publisher stops");
        let log = lock(&log);
        let ms: Vec<u128> = log.waits.iter().map(Duration::as_millis).collect();
        // A wait before every new lease, doubling up to the cap.
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        // Each new lease carries the key and the fixed one, in one write;
        // the lease it replaced is revoked once it does, and the last one at
        // stop.
        let puts: Vec<(&str, i64)> = log.puts.iter().map(|(v, l)| (v.as_str(), *l)).collect();
        let want: Vec<(&str, i64)> = (1..=10).map(|l| ("false+F", l)).collect();
        assert_eq!(puts, want);
        assert_eq!(log.revoked, (1..=10).collect::<Vec<_>>());
    }

    // A session that stays up is kept, and the key follows the status.
    #[tokio::test]
    async fn a_live_session_is_kept_and_follows_the_status() {
        let fake = Fake::new(true, 0);
        let (log, put) = (fake.log.clone(), fake.put.clone());
        let (status_tx, status) = watch::channel(Status::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publish(fake, keys(status), 10, cancel.clone()));
        tokio::time::timeout(GUARD, put.notified())
            .await
            .expect("first put");
        status_tx.send_modify(|s| s.converged = true);
        tokio::time::timeout(GUARD, put.notified())
            .await
            .expect("second put");
        cancel.cancel();
        task.await.expect("publisher");
        let log = lock(&log);
        assert_eq!(log.opens, 1);
        assert!(log.waits.is_empty());
        let puts: Vec<(&str, i64)> = log.puts.iter().map(|(v, l)| (v.as_str(), *l)).collect();
        // The fixed key goes with the first write only.
        assert_eq!(puts, [("false+F", 1), ("true", 1)]);
        assert_eq!(log.revoked, [1]);
    }

    // A one-shot run: the first write waits for the value to change and
    // carries it, so the key is written once; a value that does not change
    // is written when the wait is over.
    #[tokio::test(start_paused = true)]
    async fn the_first_write_waits_a_moment_for_the_value_to_change() {
        // When the engine converges: a moment after the publisher starts,
        // before it does (its first poll, or the lease's grant, came after
        // the engine's status changed), or not within the wait.
        #[derive(PartialEq)]
        enum Flip {
            After,
            Before,
            Never,
        }
        for flip in [Flip::After, Flip::Before, Flip::Never] {
            let fake = Fake::new(true, 0);
            let (log, put) = (fake.log.clone(), fake.put.clone());
            let (status_tx, status) = watch::channel(Status::default());
            let cancel = CancellationToken::new();
            let mut k = keys(status);
            k.first_wait = Duration::from_millis(250);
            if flip == Flip::Before {
                status_tx.send_modify(|s| s.converged = true);
            }
            let t0 = tokio::time::Instant::now();
            let task = tokio::spawn(publish(fake, k, 10, cancel.clone()));
            if flip == Flip::After {
                tokio::time::sleep(Duration::from_millis(10)).await;
                status_tx.send_modify(|s| s.converged = true);
            }
            put.notified().await;
            let waited = t0.elapsed();
            cancel.cancel();
            task.await.expect("publisher");
            let puts: Vec<(String, i64)> = lock(&log).puts.clone();
            if flip == Flip::Never {
                assert_eq!(puts, [("false+F".to_owned(), 1)]);
                assert!(waited >= Duration::from_millis(250), "{waited:?}");
            } else {
                assert_eq!(puts, [("true+F".to_owned(), 1)]);
                assert!(waited < Duration::from_millis(250), "{waited:?}");
            }
        }
    }
}

/// The real client against the embedded store: one lease, both keys in
/// one write, the keep-alive stream opened when due, everything gone at stop.
#[cfg(test)]
mod store_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use etcd_client::{Client, GetOptions, KeyValue};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::{converged_value, publish, EtcdLeases, Keys};
    use crate::engine::Status;
    use crate::world::testing::Served;

    const GUARD: Duration = Duration::from_secs(20);

    /// Reads `/p/` until `done` accepts its keys (at most [`GUARD`]).
    async fn until(c: &mut Client, done: impl Fn(&[KeyValue]) -> bool) -> Vec<KeyValue> {
        let wait = async {
            loop {
                let r = c.get("/p/", Some(GetOptions::new().with_prefix())).await;
                let kvs = r.expect("get").kvs().to_vec();
                if done(&kvs) {
                    return kvs;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(GUARD, wait).await.expect("in time")
    }

    #[tokio::test]
    async fn one_lease_carries_both_keys_and_is_kept_alive_until_the_stop() {
        let served = Served::start().await;
        let mut c = served.world("h").await.client.clone();
        let (status_tx, status) = watch::channel(Status::default());
        let keys = Keys {
            key: "/p/converged".into(),
            value: (status, converged_value),
            fixed: vec![("/p/facts".into(), "{}".into())],
            first_wait: Duration::ZERO,
            lapse: Arc::default(),
        };
        let cancel = CancellationToken::new();
        // TTL 6 s: a keep-alive is due every 2 s, when 4 s (as whole
        // seconds: 4) are left; right after it, 5.
        let task = tokio::spawn(publish(EtcdLeases(c.clone()), keys, 6, cancel.clone()));
        let kvs = until(&mut c, |kvs| kvs.len() == 2).await;
        let (conv, facts) = (&kvs[0], &kvs[1]);
        assert_eq!(
            (conv.key(), conv.value()),
            (&b"/p/converged"[..], &b"false"[..])
        );
        assert_eq!(facts.key(), b"/p/facts");
        assert_eq!(conv.lease(), facts.lease(), "one lease for both");
        assert_eq!(conv.mod_revision(), facts.mod_revision(), "one write");
        let lease = conv.lease();
        // The lease's remaining time goes up again: a keep-alive arrived.
        let kept = async {
            let mut low = i64::MAX;
            loop {
                let t = c.lease_time_to_live(lease, None).await.expect("ttl").ttl();
                assert!(t > 0, "the lease expired");
                if t > low {
                    return;
                }
                low = low.min(t);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(GUARD, kept)
            .await
            .expect("a keep-alive");
        // A new state rewrites the converged key only.
        status_tx.send_modify(|s| s.converged = true);
        let kvs = until(&mut c, |kvs| {
            kvs.first().is_some_and(|k| k.value() == b"true")
        })
        .await;
        assert_eq!(
            kvs[1].mod_revision(),
            facts.mod_revision(),
            "facts not rewritten"
        );
        cancel.cancel();
        task.await.expect("publisher");
        until(&mut c, |kvs| kvs.is_empty()).await;
        served.stop().await;
    }

    // See: #20 (a stop of the whole run changes nothing on the hosts still
    // stopping): the keys stay, on their live lease, after such a stop.
    #[tokio::test]
    async fn a_run_wide_stop_leaves_the_keys_to_their_lease() {
        let served = Served::start().await;
        let mut c = served.world("h").await.client.clone();
        let (_status_tx, status) = watch::channel(Status::default());
        let lapse = Arc::new(AtomicBool::new(false));
        let keys = Keys {
            key: "/p/converged".into(),
            value: (status, converged_value),
            fixed: vec![("/p/facts".into(), "{}".into())],
            first_wait: Duration::ZERO,
            lapse: lapse.clone(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publish(EtcdLeases(c.clone()), keys, 30, cancel.clone()));
        let kvs = until(&mut c, |kvs| kvs.len() == 2).await;
        lapse.store(true, Ordering::SeqCst);
        cancel.cancel();
        task.await.expect("publisher");
        let left = until(&mut c, |_| true).await;
        assert_eq!(left.len(), 2, "the keys stay");
        let ttl = c
            .lease_time_to_live(kvs[0].lease(), None)
            .await
            .expect("ttl");
        assert!(ttl.ttl() > 0, "their lease was not revoked");
    }
}
