//! The embedded etcd v3 compatible store (issue 3): an in-memory,
//! multi-version key-value store with watches and leases, served over gRPC
//! with the server traits `etcd-client` generates, so that the remote copies
//! of mgmt (and any etcd v3 client) talk to it as they would to etcd 3.4.
//!
//! This module is the public face: [`Config`], [`Store`] and its `serve`
//! calls, [`Stats`] and [`StoreError`]. The rest is private:
//! `kv.rs` (revisions, versions, event log, compaction), `apply.rs` (request
//! semantics, txn, lease attachment), `lease.rs` (lease table), `expiry.rs`
//! (lease timer), `watch.rs` (watch streams and back-pressure),
//! `dispatch.rs` (which streams a commit wakes), `service.rs` (the gRPC
//! trait impls and error mapping), `conn.rs` (a byte stream served as one
//! connection), `authority.rs` (clients that send a URL as `:authority`),
//! `alarm.rs` (NOSPACE and the other alarms), `maintenance.rs` (the hashes
//! of the history), `access.rs` and `quota.rs` (what a connection that
//! speaks for a host may read and write, and how much it may hold),
//! `auth.rs` and `auth_service.rs` (etcd's Auth API: users, roles, tokens),
//! and `rights.rs` (whom a request speaks for: this process, a host's
//! tunnel, or a listener's client with a token).
//!
//! Not here: persistence (the store lives as long as the initiating process;
//! nothing is written to disk) and clustering. See `docs/store.md` and
//! `docs/security.md`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod access;
mod alarm;
mod apply;
mod auth;
mod auth_service;
mod authority;
mod conn;
mod dispatch;
mod error;
mod expiry;
mod kv;
mod lean;
mod lease;
mod maintenance;
mod quota;
mod rights;
mod service;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader,
    PbWatchServer,
};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch as tokio_watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::{Peer, Speaker};
pub use conn::Conn;
pub use error::StoreError;

use apply::State;
use dispatch::Registry;
use service::Service;

/// etcd adds this much to `max_request_bytes` for the gRPC receive limit, so
/// a request a little over the limit gets etcd's "request is too large"
/// rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How a store behaves; [`Config::default`] matches etcd 3.4's defaults
/// where etcd has one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request accepted (etcd's `--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Compaction policy: history of at least this many revisions is kept;
    /// once twice as many have accumulated, everything older than the last
    /// `retain_revisions` is compacted. Watchers further behind than that
    /// are cancelled with `compact_revision`, as etcd does.
    pub retain_revisions: i64,
    /// Watches one Watch stream may hold; the next create is refused with a
    /// `canceled` response and a reason (etcd has no limit).
    pub max_watches_per_stream: usize,
    /// How often watchers created with `progress_notify` get an empty
    /// response (etcd: 10 minutes).
    pub watch_progress_interval: Duration,
    /// Smallest TTL granted to a lease; etcd derives 2 s from its default
    /// election timeout and raises shorter TTLs to it.
    pub min_lease_ttl: i64,
    /// Bytes the store may hold, history included (etcd's
    /// `--quota-backend-bytes`, 2 GiB); past it every write is refused with
    /// `database space exceeded`, reads and deletes go on.
    pub quota_bytes: usize,
    /// What one host may hold through connections that speak for it
    /// ([`Speaker`]): live keys, their bytes, leases and watches.
    pub host_quota: HostQuota,
    /// Watches open in the whole store; the next create is refused with a
    /// `canceled` response and a reason.
    pub max_watches: usize,
}

/// Per-host bounds, far above what a graph needs (a few keys and leases),
/// so that one host cannot fill the store for everyone else.
#[derive(Debug, Clone)]
pub struct HostQuota {
    pub keys: usize,
    pub bytes: usize,
    pub leases: usize,
    pub watches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_request_bytes: 1536 * 1024,
            retain_revisions: 10_000,
            max_watches_per_stream: 65_536,
            watch_progress_interval: Duration::from_secs(600),
            min_lease_ttl: 2,
            quota_bytes: 2 << 30,
            host_quota: HostQuota {
                keys: 10_000,
                bytes: 64 << 20,
                leases: 1_000,
                watches: 1_000,
            },
            max_watches: 1_000_000,
        }
    }
}

/// A snapshot of the store's counters (see [`Store::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub puts: u64,
    pub ranges: u64,
    pub txns: u64,
    pub deletes: u64,
    /// Events delivered to watchers (one event to two watchers counts two).
    pub watch_events_sent: u64,
    /// Times a commit woke a watch stream; a commit wakes only the streams
    /// with a watcher whose range holds a key it wrote.
    pub watch_wakeups: u64,
    pub watches_open: u64,
    pub leases: u64,
    /// Live keys at the current revision.
    pub keys: u64,
    pub revision: i64,
    pub compact_revision: i64,
    /// Approximate bytes held by keys, values and history.
    pub approx_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub puts: AtomicU64,
    pub ranges: AtomicU64,
    pub txns: AtomicU64,
    pub deletes: AtomicU64,
    pub watch_events: AtomicU64,
    pub watch_wakeups: AtomicU64,
    pub watches_open: AtomicU64,
    /// What a single-member etcd reports as its raft index: one entry per
    /// write request (see [`FIRST_RAFT_INDEX`]).
    pub raft_index: AtomicU64,
}

/// The raft index of a fresh single-member etcd 3.4 before its first
/// request: its own member ConfChange, the new leader's empty entry, and
/// publishing its attributes and the cluster version.
const FIRST_RAFT_INDEX: u64 = 4;

/// State shared by every serve call and every task of one store.
pub(crate) struct Shared {
    pub cfg: Config,
    /// All data. A std mutex: no critical section awaits.
    state: Mutex<State>,
    /// The last committed revision. Sent under the state lock after each
    /// commit, so it can be read without that lock; nobody subscribes (watch
    /// streams are woken through `dispatch` instead).
    pub rev_tx: tokio_watch::Sender<i64>,
    /// Watchers' ranges by stream, checked at each commit to wake the
    /// streams it concerns. Lock order: `state`, then `dispatch`.
    dispatch: Mutex<Registry>,
    /// Wakes the lease timers when a grant may bring the next deadline forward.
    pub lease_changed: Notify,
    pub counters: Counters,
    pub cluster_id: u64,
    pub member_id: u64,
    /// Client URLs of the listeners served, for MemberList.
    pub client_urls: Mutex<Vec<String>>,
    /// Who granted each lease, for leases granted over a connection that
    /// speaks for someone ([`access`]): only they may revoke or renew it.
    pub lease_owners: Mutex<std::collections::HashMap<i64, String>>,
    /// etcd's Auth API: users, roles, tokens, on or off.
    auth: Mutex<auth::Auth>,
}

impl Shared {
    /// Locks the state. A poisoned lock (a panic mid-request) is taken over:
    /// every request leaves the state consistent before it can panic.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the auth state; never held with the state lock.
    pub fn auth(&self) -> MutexGuard<'_, auth::Auth> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the watch registry; hold the state lock first when taking both.
    pub fn dispatch(&self) -> MutexGuard<'_, Registry> {
        self.dispatch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a write, publishes the new revision and, still under the state
    /// lock (so no watcher registers in between), wakes the watch streams
    /// the committed keys concern.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> (R, i64) {
        let mut st = self.lock();
        let before = st.kv.rev();
        let r = f(&mut st);
        // etcd logs each write request in raft, unless its validation
        // refused it first or it is a read-only txn (`State::unlogged`).
        if !std::mem::take(&mut st.unlogged) {
            self.counters.raft_index.fetch_add(1, Ordering::Relaxed);
        }
        let rev = st.kv.rev();
        if rev != before {
            self.rev_tx.send_replace(rev);
            let mut reg = self.dispatch();
            let woken = match st.kv.revisions_after(before) {
                Some(revs) => revs.map(|(r, evs)| reg.committed(r, evs)).sum(),
                None => reg.wake_all(before + 1),
            };
            self.counters
                .watch_wakeups
                .fetch_add(woken, Ordering::Relaxed);
        }
        (r, rev)
    }

    pub fn rev(&self) -> i64 {
        *self.rev_tx.borrow()
    }

    pub fn header(&self, rev: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: rev,
            raft_term: 2,
        })
    }
}

/// The embedded store. Cheap to clone; clones share the data, and several
/// serve calls (a TCP listener, SSH tunnel channels) may run at once.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// Shows counters only: the data may hold secrets and can be large.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.stats();
        f.debug_struct("Store")
            .field("revision", &s.revision)
            .field("keys", &s.keys)
            .field("leases", &s.leases)
            .field("watches_open", &s.watches_open)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(cfg: Config) -> Store {
        let state = State::new(cfg.retain_revisions, cfg.min_lease_ttl);
        let (rev_tx, _) = tokio_watch::channel(state.kv.rev());
        Store {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(state),
                rev_tx,
                dispatch: Mutex::new(Registry::default()),
                lease_changed: Notify::new(),
                counters: Counters {
                    raft_index: AtomicU64::new(FIRST_RAFT_INDEX),
                    ..Counters::default()
                },
                cluster_id: rand::random::<u64>() >> 1,
                member_id: rand::random::<u64>() >> 1,
                client_urls: Mutex::new(Vec::new()),
                lease_owners: Mutex::new(std::collections::HashMap::new()),
                auth: Mutex::new(auth::Auth::default()),
            }),
        }
    }

    /// Turns etcd's authentication on from the start, as
    /// `etcdctl user add root && etcdctl auth enable` would: user `root`
    /// with `root_password` and the `root` role. Listeners' clients must
    /// then authenticate; this process's client and the hosts' tunnels are
    /// authenticated at their transport and unaffected.
    pub fn enable_auth(&self, root_password: &str) {
        let mut auth = self.shared.auth();
        // A fresh store: neither can fail.
        let _ = auth.role_add(auth::ROOT);
        let _ = auth.user_add(auth::ROOT, root_password, false);
        let _ = auth.user_grant_role(auth::ROOT, auth::ROOT);
        let _ = auth.enable();
    }

    /// Serves on an already-bound listener until `cancel` fires, then waits
    /// for the connections and the store's tasks of this call to finish.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        if let Ok(addr) = listener.local_addr() {
            let mut urls = self
                .shared
                .client_urls
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            urls.push(format!("http://{addr}"));
        }
        // Watch latency depends on it: without TCP_NODELAY small responses
        // wait for the peer's delayed ACK.
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
            r.and_then(|s| {
                s.set_nodelay(true)?;
                Ok(s)
            })
        });
        self.serve_incoming(incoming, cancel).await
    }

    /// Serves connections from any stream of byte streams (for example SSH
    /// tunnel channels) until `cancel` fires.
    pub async fn serve_incoming<S, IO>(
        &self,
        incoming: S,
        cancel: CancellationToken,
    ) -> Result<(), StoreError>
    where
        S: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    {
        // Our tasks stop when the caller cancels, or when the server fails.
        let tasks_cancel = cancel.child_token();
        let tracker = TaskTracker::new();
        let svc = Service::new(self.shared.clone(), tracker.clone(), tasks_cancel.clone());
        tracker.spawn(expiry::run(self.shared.clone(), tasks_cancel.clone()));
        let limit = self.shared.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        // Go clients may send a URL as `:authority`, which h2 refuses.
        let incoming = incoming.map(|r| r.map(authority::AuthorityFix::new));
        let result = tonic::transport::Server::builder()
            .add_service(PbKvServer::new(svc.clone()).max_decoding_message_size(limit))
            .add_service(lean::Lean::new(
                PbWatchServer::new(svc.clone()).max_decoding_message_size(limit),
                svc.clone(),
                limit,
            ))
            .add_service(lean::Lean::new(
                PbLeaseServer::new(svc.clone()).max_decoding_message_size(limit),
                svc.clone(),
                limit,
            ))
            .add_service(PbMaintenanceServer::new(svc.clone()).max_decoding_message_size(limit))
            .add_service(PbClusterServer::new(svc.clone()).max_decoding_message_size(limit))
            .add_service(auth_service::AuthApi::new(svc, limit))
            .serve_with_incoming_shutdown(Box::pin(incoming), cancel.cancelled_owned())
            .await;
        if let Err(e) = &result {
            tracing::warn!("store: grpc server stopped: {e}");
        }
        tasks_cancel.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::debug!("store: serve call ended");
        result.map_err(StoreError::from)
    }

    /// Counters and sizes, for logs and benchmarks.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let st = self.shared.lock();
        Stats {
            puts: c.puts.load(Ordering::Relaxed),
            ranges: c.ranges.load(Ordering::Relaxed),
            txns: c.txns.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            watch_events_sent: c.watch_events.load(Ordering::Relaxed),
            watch_wakeups: c.watch_wakeups.load(Ordering::Relaxed),
            watches_open: c.watches_open.load(Ordering::Relaxed),
            leases: st.leases.len() as u64,
            keys: st.kv.live_keys() as u64,
            revision: st.kv.rev(),
            compact_revision: st.kv.compact_rev(),
            approx_bytes: st.kv.approx_bytes() as u64,
        }
    }
}
