//! Publishing this host's converged state: `/_mgmt/converged/<host>` =
//! `true`/`false`, attached to a lease the process keeps alive, so a host
//! that dies stops counting.
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

use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
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
    /// Grants a lease of `ttl` seconds and opens its keep-alive stream.
    async fn open(&mut self, ttl: i64) -> Result<Self::Session, etcd_client::Error>;
    async fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<(), etcd_client::Error>;
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
    /// Sends one keep-alive request.
    async fn keep_alive(&mut self) -> Result<(), etcd_client::Error>;
    /// The TTL of the next answer; `None` once the stream has ended.
    /// Cancel-safe: used in `select!`.
    async fn ack(&mut self) -> Result<Option<i64>, etcd_client::Error>;
}

/// [`Leases`] on a real etcd client (ours or etcd's).
pub(super) struct EtcdLeases(pub Client);

pub(super) struct EtcdSession {
    lease: i64,
    keeper: LeaseKeeper,
    acks: LeaseKeepAliveStream,
}

#[async_trait::async_trait]
impl Leases for EtcdLeases {
    type Session = EtcdSession;

    async fn open(&mut self, ttl: i64) -> Result<EtcdSession, etcd_client::Error> {
        let lease = self.0.lease_grant(ttl, None).await?.id();
        match self.0.lease_keep_alive(lease).await {
            Ok((keeper, acks)) => Ok(EtcdSession {
                lease,
                keeper,
                acks,
            }),
            Err(e) => {
                self.revoke(lease).await;
                Err(e)
            }
        }
    }

    async fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<(), etcd_client::Error> {
        let opts = PutOptions::new().with_lease(lease);
        self.0.put(key, value, Some(opts)).await.map(drop)
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

    async fn keep_alive(&mut self) -> Result<(), etcd_client::Error> {
        self.keeper.keep_alive().await
    }

    async fn ack(&mut self) -> Result<Option<i64>, etcd_client::Error> {
        Ok(self.acks.message().await?.map(|r| r.ttl()))
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

/// Publishes `converged` at `key` until `cancel` (or until the engine's
/// status channel closes), then revokes the lease, which deletes the key.
pub(super) async fn publish<L: Leases, T: Send + Sync>(
    mut leases: L,
    key: String,
    ttl: i64,
    (mut converged, render): (watch::Receiver<T>, fn(&T) -> String),
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
                    &key,
                    ttl,
                    (&mut converged, render),
                    &cancel,
                    &mut backoff,
                    &mut stale,
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
        tracing::warn!("{key}: {why}; granting a new lease in {wait:?}");
        tokio::select! {
            biased; // a stop wins over anything else ready
            _ = cancel.cancelled() => break,
            _ = leases.pause(wait) => {}
        }
    }
    for lease in stale {
        leases.revoke(lease).await;
    }
}

/// The converged key's value for `status`: `true` or `false`.
pub(super) fn converged_value(status: &Status) -> String {
    if status.converged { "true" } else { "false" }.to_owned()
}

/// Runs one session: writes the key on every change of `converged` and
/// keeps the lease alive, until it is stopped or lost.
#[allow(clippy::too_many_arguments)]
async fn serve<L: Leases, T: Send + Sync>(
    leases: &mut L,
    session: &mut L::Session,
    key: &str,
    ttl: i64,
    (converged, render): (&mut watch::Receiver<T>, fn(&T) -> String),
    cancel: &CancellationToken,
    backoff: &mut Backoff,
    stale: &mut Vec<i64>,
) -> End {
    enum Event {
        Tick,
        Ack(Result<Option<i64>, etcd_client::Error>),
    }
    let mut tick = tokio::time::interval(Duration::from_secs((ttl / 3).max(1) as u64));
    let mut last: Option<String> = None;
    loop {
        let now = render(&converged.borrow_and_update());
        if last.as_ref() != Some(&now) {
            if let Err(e) = leases.put(key, &now, session.lease()).await {
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
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    use super::*;

    /// What the fake store saw.
    #[derive(Default)]
    struct Log {
        opens: i64,
        /// `(value, lease)` of every put.
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
            _: &str,
            value: &str,
            lease: i64,
        ) -> Result<(), etcd_client::Error> {
            lock(&self.log).puts.push((value.to_owned(), lease));
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

    // See: #3 (an ended keep-alive stream made publish_converged spin)
    #[tokio::test]
    async fn ended_keep_alive_stream_is_retried_with_backoff() {
        let fake = Fake::new(false, 10);
        let (log, stop) = (fake.log.clone(), fake.stop.clone());
        let (_status_tx, status) = watch::channel(Status::default());
        let run = publish(fake, "k".into(), 10, (status, converged_value), stop);
        tokio::time::timeout(GUARD, run)
            .await
            .expect("publisher stops");
        let log = lock(&log);
        let ms: Vec<u128> = log.waits.iter().map(Duration::as_millis).collect();
        // A wait before every new lease, doubling up to the cap.
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        // Each new lease carries the key; the one it replaced is revoked
        // once it does, and the last one at stop.
        let leases: Vec<i64> = log.puts.iter().map(|p| p.1).collect();
        assert_eq!(leases, (1..=10).collect::<Vec<_>>());
        assert_eq!(log.revoked, (1..=10).collect::<Vec<_>>());
    }

    // A session that stays up is kept, and the key follows the status.
    #[tokio::test]
    async fn a_live_session_is_kept_and_follows_the_status() {
        let fake = Fake::new(true, 0);
        let (log, put) = (fake.log.clone(), fake.put.clone());
        let (status_tx, status) = watch::channel(Status::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publish(
            fake,
            "k".into(),
            10,
            (status, converged_value),
            cancel.clone(),
        ));
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
        assert_eq!(puts, [("false", 1), ("true", 1)]);
        assert_eq!(log.revoked, [1]);
    }
}
