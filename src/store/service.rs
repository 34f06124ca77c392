//! The gRPC face of the store: implementations of the KV, Watch, Lease,
//! Maintenance and Cluster server traits that `etcd-client` exports. Each
//! handler checks the request size, runs the request against the shared
//! state under its lock, stamps the response header, and maps
//! [`EtcdError`] to etcd's status code and message. Streaming RPCs get a
//! task on the serve call's `TaskTracker`, stopped by its cancel token.
//!
//! RPCs an embedded single-member store has no use for (member changes,
//! downgrade, RangeStream, which etcd 3.4 does not have either) answer
//! `Unimplemented`; Snapshot does too, with a message that says what to do
//! instead. Defragment succeeds as a no-op, MoveLeader answers as a
//! single-member etcd does, and alarms and hashes live in `maintenance.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use etcd_client::proto::*;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::access::Speaker;
use super::error::EtcdError;
use super::maintenance;
use super::quota;
use super::rights::{denied, Rights};
use super::watch::{WatchStream, STREAM_BUFFER};
use super::Shared;

/// What the server reports as its version in Status: the etcd API level it
/// implements, marked as ours.
const VERSION: &str = "3.4.0";

/// One serve call's view of the store.
#[derive(Clone)]
pub(crate) struct Service {
    shared: Arc<Shared>,
    /// Streaming tasks of this serve call; waited for when it ends.
    tracker: TaskTracker,
    /// Fired when this serve call stops: streaming tasks end on it.
    cancel: CancellationToken,
}

impl Service {
    pub fn new(shared: Arc<Shared>, tracker: TaskTracker, cancel: CancellationToken) -> Service {
        Service {
            shared,
            tracker,
            cancel,
        }
    }

    fn check_size<M: Message>(&self, m: &M) -> Result<(), Status> {
        if m.encoded_len() > self.shared.cfg.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        Ok(())
    }

    /// Whom `req` speaks for; refused when auth is on and it carries no
    /// valid token.
    pub(super) fn rights<T>(&self, req: &Request<T>) -> Result<Rights, Status> {
        Ok(Rights::of(&self.shared, req)?)
    }

    /// [`Service::rights`] for a write: a refusal counts as etcd counts it.
    fn write_rights<T>(&self, req: &Request<T>) -> Result<Rights, Status> {
        Rights::of(&self.shared, req).map_err(|e| self.refused_write(e))
    }

    /// etcd logs a write (and every auth management call) in raft before
    /// its apply step refuses it for auth, so such a refusal still takes a
    /// raft index; one with a bad token is refused before raft and does not.
    pub(super) fn refused_write(&self, e: EtcdError) -> Status {
        if e != EtcdError::InvalidAuthToken {
            self.count(&self.shared.counters.raft_index);
        }
        e.into()
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether `speaker` may revoke or renew lease `id`: leases granted by
    /// another speaker are theirs.
    fn owns_lease(&self, speaker: &Speaker, id: i64) -> bool {
        let owners = self
            .shared
            .lease_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        owners.get(&id).is_none_or(|o| *o == speaker.name)
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl PbKvService for Service {
    async fn range(&self, req: Request<PbRangeRequest>) -> Res<PbRangeResponse> {
        let who = self.rights(&req)?;
        let r = req.into_inner();
        who.read("read", &r.key, &r.range_end)?;
        self.check_size(&r)?;
        self.count(&self.shared.counters.ranges);
        let st = self.shared.lock();
        let mut resp = st.range(&r)?;
        resp.header = self.shared.header(st.kv.rev());
        Ok(Response::new(resp))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(&self, _req: Request<PbRangeRequest>) -> Res<Self::RangeStreamStream> {
        Err(Status::unimplemented(
            "unknown method RangeStream for service etcdserverpb.KV",
        ))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Res<PbPutResponse> {
        let who = self.write_rights(&req)?;
        let speaker = who.speaker();
        let r = req.into_inner();
        who.write("write", &r.key, &[], r.prev_kv)
            .map_err(|e| self.refused_write(e))?;
        self.check_size(&r)?;
        self.count(&self.shared.counters.puts);
        let now = Instant::now();
        let writes = [(r.key.as_slice(), r.value.len())];
        let (cfg, member) = (&self.shared.cfg, self.shared.member_id);
        let (resp, rev) = self.shared.write(|st| {
            quota::check_writes(st, (cfg, member), speaker.map(|s| &**s), &writes)?;
            st.put(&r, now)
        });
        let mut resp = resp?;
        resp.header = self.shared.header(rev);
        Ok(Response::new(resp))
    }

    async fn delete_range(&self, req: Request<PbDeleteRequest>) -> Res<PbDeleteResponse> {
        let who = self.write_rights(&req)?;
        let r = req.into_inner();
        who.write("delete", &r.key, &r.range_end, r.prev_kv)
            .map_err(|e| self.refused_write(e))?;
        self.check_size(&r)?;
        self.count(&self.shared.counters.deletes);
        let (resp, rev) = self.shared.write(|st| st.delete(&r));
        let mut resp = resp?;
        resp.header = self.shared.header(rev);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Res<PbTxnResponse> {
        let who = self.write_rights(&req)?;
        let speaker = who.speaker();
        let r = req.into_inner();
        if let Some(g) = who.guard() {
            if let Some(key) = g.forbidden_in_txn(&r) {
                return Err(self.refused_write(denied(g, "write (in a txn)", key)));
            }
        }
        self.check_size(&r)?;
        self.count(&self.shared.counters.txns);
        let now = Instant::now();
        let writes = quota::txn_writes(&r);
        let (cfg, member) = (&self.shared.cfg, self.shared.member_id);
        let (resp, rev) = self.shared.write(|st| {
            quota::check_writes(st, (cfg, member), speaker.map(|s| &**s), &writes)?;
            st.txn(&r, now)
        });
        let mut resp = resp?;
        resp.header = self.shared.header(rev);
        Ok(Response::new(resp))
    }

    async fn compact(&self, req: Request<PbCompactionRequest>) -> Res<PbCompactionResponse> {
        self.rights(&req)?.admin("compact the history")?;
        let r = req.into_inner();
        let (res, rev) = self.shared.write(|st| st.compact(r.revision));
        res?;
        Ok(Response::new(PbCompactionResponse {
            header: self.shared.header(rev),
        }))
    }
}

#[tonic::async_trait]
impl PbWatchService for Service {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(&self, req: Request<Streaming<PbWatchRequest>>) -> Res<Self::WatchStream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let who = self.rights(&req)?;
        let stream = WatchStream::new(self.shared.clone(), tx, self.cancel.clone(), who);
        self.tracker.spawn(stream.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl PbLeaseService for Service {
    async fn lease_grant(&self, req: Request<PbLeaseGrantRequest>) -> Res<PbLeaseGrantResponse> {
        let who = self.rights(&req)?;
        let speaker = who.speaker();
        let r = req.into_inner();
        let now = Instant::now();
        let (res, rev) = self.shared.write(|st| {
            st.alarms.check_space()?;
            if let Some(sp) = &speaker {
                let owners = self
                    .shared
                    .lease_owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                quota::check_lease(st, &self.shared.cfg, &owners, sp, now)?;
            }
            let min = st.min_lease_ttl;
            st.leases.grant(r.id, r.ttl, min, now)
        });
        let (id, ttl) = res?;
        if let Some(sp) = speaker {
            let mut owners = self
                .shared
                .lease_owners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            owners.insert(id, sp.name.clone());
        }
        self.shared.lease_changed.notify_waiters();
        Ok(Response::new(PbLeaseGrantResponse {
            header: self.shared.header(rev),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(&self, req: Request<PbLeaseRevokeRequest>) -> Res<PbLeaseRevokeResponse> {
        let who = self.rights(&req)?;
        let id = req.into_inner().id;
        if let Some(sp) = who.speaker().filter(|sp| !self.owns_lease(sp, id)) {
            return Err(denied(sp.as_ref(), "revoke lease", id.to_string().as_bytes()).into());
        }
        let now = Instant::now();
        let (res, rev) = self.shared.write(|st| {
            let Some(lease) = st.leases.alive(id, now) else {
                return Err(EtcdError::LeaseNotFound);
            };
            // As etcd: revoking deletes the lease's keys, so it needs the
            // right to write each of them.
            if let Some(g) = who.guard() {
                if let Some(k) = lease.keys.iter().find(|k| !g.may_write(k, &[])) {
                    return Err(denied(g, "revoke the lease of", k));
                }
            }
            st.revoke(id)
        });
        res?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: self.shared.header(rev),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let speaker = self.rights(&req)?.speaker().cloned();
        let mut reqs = req.into_inner();
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        let me = self.clone();
        self.tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = reqs.message() => m,
                };
                let Ok(Some(r)) = msg else { return };
                if let Some(sp) = speaker.as_ref().filter(|sp| !me.owns_lease(sp, r.id)) {
                    let _ = tx
                        .send(Err(denied(
                            sp.as_ref(),
                            "renew lease",
                            r.id.to_string().as_bytes(),
                        )
                        .into()))
                        .await;
                    return;
                }
                let now = Instant::now();
                let (ttl, rev) = {
                    let mut st = shared.lock();
                    // etcd answers TTL 0 for a lease it does not know.
                    (st.leases.renew(r.id, now).unwrap_or(0), st.kv.rev())
                };
                let resp = PbLeaseKeepAliveResponse {
                    header: shared.header(rev),
                    id: r.id,
                    ttl,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = tx.send(Ok(resp)) => if sent.is_err() { return },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Res<PbLeaseTimeToLiveResponse> {
        self.rights(&req)?;
        let r = req.into_inner();
        let now = Instant::now();
        let st = self.shared.lock();
        let rev = st.kv.rev();
        // etcd 3.4 answers TTL -1 (not an error) for an unknown lease.
        let resp = match st.leases.alive(r.id, now) {
            Some(l) => PbLeaseTimeToLiveResponse {
                header: self.shared.header(rev),
                id: r.id,
                ttl: l.deadline.saturating_duration_since(now).as_secs() as i64,
                granted_ttl: l.granted_ttl,
                keys: if r.keys {
                    l.keys.iter().map(|k| k.to_vec()).collect()
                } else {
                    Vec::new()
                },
            },
            None => PbLeaseTimeToLiveResponse {
                header: self.shared.header(rev),
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(&self, req: Request<PbLeaseLeasesRequest>) -> Res<PbLeaseLeasesResponse> {
        self.rights(&req)?;
        let now = Instant::now();
        let st = self.shared.lock();
        let mut ids = st.leases.ids(now);
        ids.sort_unstable();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.shared.header(st.kv.rev()),
            leases: ids.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}

fn unsupported<T>(what: &'static str) -> Res<T> {
    Err(EtcdError::Unsupported(what).into())
}

#[tonic::async_trait]
impl PbMaintenanceService for Service {
    /// As etcd 3.4's `applyV3.Alarm`: GET lists, ACTIVATE answers the alarm
    /// raised, DEACTIVATE the alarm disarmed (nothing if it was not raised).
    async fn alarm(&self, req: Request<PbAlarmRequest>) -> Res<PbAlarmResponse> {
        const GET: i32 = 0;
        const ACTIVATE: i32 = 1;
        const DEACTIVATE: i32 = 2;
        let who = self.rights(&req)?;
        let r = req.into_inner();
        if r.action != GET {
            who.maintainer("raise or disarm an alarm")?;
        }
        let mut st = self.shared.lock();
        let alarms = match r.action {
            ACTIVATE => vec![st.alarms.activate(r.member_id, r.alarm)],
            DEACTIVATE => st
                .alarms
                .deactivate(r.member_id, r.alarm)
                .into_iter()
                .collect(),
            _ => st.alarms.get(r.alarm),
        };
        // etcd sends every alarm request through raft, GET included.
        self.count(&self.shared.counters.raft_index);
        let what = match r.action {
            ACTIVATE => "raised: puts are refused until it is disarmed",
            DEACTIVATE => "disarmed",
            _ => "",
        };
        if r.alarm == super::alarm::NOSPACE && !what.is_empty() {
            tracing::warn!("store: NOSPACE alarm {what}");
        }
        Ok(Response::new(PbAlarmResponse {
            header: self.shared.header(st.kv.rev()),
            alarms,
        }))
    }

    /// What a single-member etcd reports: itself as leader, term 2, its
    /// raft index (one entry per write), the alarms raised in `errors`.
    async fn status(&self, req: Request<PbStatusRequest>) -> Res<PbStatusResponse> {
        self.rights(&req)?;
        let st = self.shared.lock();
        let size = st.kv.approx_bytes() as i64;
        let index = self.shared.counters.raft_index.load(Ordering::Relaxed);
        Ok(Response::new(PbStatusResponse {
            header: self.shared.header(st.kv.rev()),
            version: VERSION.to_string(),
            db_size: size,
            leader: self.shared.member_id,
            raft_index: index,
            raft_term: 2,
            raft_applied_index: index,
            errors: st.alarms.errors(),
            db_size_in_use: size,
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(&self, req: Request<PbDefragmentRequest>) -> Res<PbDefragmentResponse> {
        self.rights(&req)?.maintainer("defragment")?;
        // Nothing to defragment in memory: succeed as a no-op.
        Ok(Response::new(PbDefragmentResponse {
            header: self.shared.header(self.shared.rev()),
        }))
    }

    async fn hash(&self, req: Request<PbHashRequest>) -> Res<PbHashResponse> {
        self.rights(&req)?.maintainer("hash the store")?;
        let (rev, input) = {
            let st = self.shared.lock();
            (st.kv.rev(), maintenance::hash_all(&st, Instant::now()))
        };
        Ok(Response::new(PbHashResponse {
            header: self.shared.header(rev),
            hash: input.finish(),
        }))
    }

    async fn hash_kv(&self, req: Request<PbHashKvRequest>) -> Res<PbHashKvResponse> {
        self.rights(&req)?.maintainer("hash the store")?;
        let rev = req.into_inner().revision;
        let h = maintenance::hash_kv(&self.shared.lock(), rev)?;
        Ok(Response::new(PbHashKvResponse {
            header: self.shared.header(h.current),
            hash: h.input.finish(),
            compact_revision: h.compact_rev,
            hash_revision: h.hash_rev,
        }))
    }

    type SnapshotStream = futures::stream::Empty<Result<PbSnapshotResponse, Status>>;

    async fn snapshot(&self, _req: Request<PbSnapshotRequest>) -> Res<Self::SnapshotStream> {
        Err(EtcdError::SnapshotUnsupported.into())
    }

    /// The only member is the leader: moving to itself succeeds, as in
    /// etcd; any other id is not a member.
    async fn move_leader(&self, req: Request<PbMoveLeaderRequest>) -> Res<PbMoveLeaderResponse> {
        self.rights(&req)?.maintainer("move the leader")?;
        if req.into_inner().target_id != self.shared.member_id {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        Ok(Response::new(PbMoveLeaderResponse {
            header: self.shared.header(self.shared.rev()),
        }))
    }

    async fn downgrade(&self, _req: Request<PbDowngradeRequest>) -> Res<PbDowngradeResponse> {
        unsupported("Downgrade")
    }
}

#[tonic::async_trait]
impl PbClusterService for Service {
    async fn member_add(&self, _req: Request<PbMemberAddRequest>) -> Res<PbMemberAddResponse> {
        unsupported("MemberAdd")
    }

    async fn member_remove(
        &self,
        _req: Request<PbMemberRemoveRequest>,
    ) -> Res<PbMemberRemoveResponse> {
        unsupported("MemberRemove")
    }

    async fn member_update(
        &self,
        _req: Request<PbMemberUpdateRequest>,
    ) -> Res<PbMemberUpdateResponse> {
        unsupported("MemberUpdate")
    }

    async fn member_list(&self, req: Request<PbMemberListRequest>) -> Res<PbMemberListResponse> {
        self.rights(&req)?;
        let urls = self
            .shared
            .client_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Response::new(PbMemberListResponse {
            header: self.shared.header(self.shared.rev()),
            members: vec![PbMember {
                id: self.shared.member_id,
                name: "mgmt".to_string(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: urls,
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<PbMemberPromoteRequest>,
    ) -> Res<PbMemberPromoteResponse> {
        unsupported("MemberPromote")
    }
}
