//! Request semantics on top of the MVCC key space: validation in etcd's
//! order, Put/DeleteRange/Range/Txn, lease attachment of keys, lease revoke,
//! and the automatic compaction policy.
//!
//! Everything here runs under the store's one mutex, so a request is atomic
//! and revisions are handed out in order. Nothing here awaits or does I/O.
//! Headers (cluster and member ids) are added by `service.rs`.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbPutRequest, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use tokio::time::Instant;

use super::alarm::Alarms;
use super::error::EtcdError;
use super::kv::{Bytes, KeyRange, Kv, RangeArgs};
use super::lease::Leases;

/// etcd's default `--max-txn-ops`.
pub(crate) const MAX_TXN_OPS: usize = 128;

/// All mutable data of a store: guarded by one mutex in `Shared`.
#[derive(Debug)]
pub(crate) struct State {
    pub kv: Kv,
    pub leases: Leases,
    /// Automatic compaction keeps at least this many revisions of history.
    pub retain_revisions: i64,
    /// Smallest TTL a lease is granted (etcd derives 2 s from its raft timing).
    pub min_lease_ttl: i64,
    /// Alarms raised through the Maintenance API; NOSPACE refuses writes.
    pub alarms: Alarms,
    /// Set by a write request that etcd answers without a raft log entry
    /// (refused by its validation, or a read-only txn); read and reset by
    /// `Shared::write`, which counts the raft index Status reports.
    pub unlogged: bool,
}

impl State {
    pub fn new(retain_revisions: i64, min_lease_ttl: i64) -> State {
        State {
            kv: Kv::default(),
            leases: Leases::default(),
            retain_revisions: retain_revisions.max(1),
            min_lease_ttl,
            alarms: Alarms::default(),
            unlogged: false,
        }
    }

    fn inner_header(&self) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            revision: self.kv.rev(),
            ..Default::default()
        })
    }

    /// Ends a write: commits it and applies the compaction policy, which
    /// compacts to `rev - retain` once history reaches twice `retain`, so the
    /// cost is amortised over `retain` writes.
    fn finish(&mut self) {
        if let Some(rev) = self.kv.commit() {
            let keep = self.retain_revisions;
            if rev - self.kv.compact_rev() >= 2 * keep {
                // Cannot fail: rev - keep is above the old point and not in the future.
                let _ = self.kv.compact(rev - keep);
            }
        }
    }

    pub fn range(&self, r: &PbRangeRequest) -> Result<PbRangeResponse, EtcdError> {
        check_range(r)?;
        let out = self.kv.range(&RangeArgs {
            range: KeyRange::new(&r.key, &r.range_end),
            revision: r.revision,
            limit: r.limit,
            sort_order: r.sort_order,
            sort_target: r.sort_target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod: r.min_mod_revision,
            max_mod: r.max_mod_revision,
            min_create: r.min_create_revision,
            max_create: r.max_create_revision,
        })?;
        Ok(PbRangeResponse {
            header: self.inner_header(),
            kvs: out.kvs,
            more: out.more,
            count: out.count,
        })
    }

    pub fn put(&mut self, r: &PbPutRequest, now: Instant) -> Result<PbPutResponse, EtcdError> {
        check_put(r).inspect_err(|_| self.unlogged = true)?;
        self.alarms.check_space()?;
        self.check_put_state(r, now)?;
        let resp = self.apply_put(r);
        self.finish();
        Ok(resp)
    }

    pub fn delete(&mut self, r: &PbDeleteRequest) -> Result<PbDeleteResponse, EtcdError> {
        check_delete(r).inspect_err(|_| self.unlogged = true)?;
        let resp = self.apply_delete(r);
        self.finish();
        Ok(resp)
    }

    pub fn txn(&mut self, r: &PbTxnRequest, now: Instant) -> Result<PbTxnResponse, EtcdError> {
        check_txn(r, MAX_TXN_OPS).inspect_err(|_| self.unlogged = true)?;
        self.unlogged = txn_read_only(r);
        if txn_puts(r) {
            self.alarms.check_space()?;
        }
        self.check_txn_state(r, now)?;
        let resp = self.apply_txn(r);
        self.finish();
        Ok(resp)
    }

    pub fn compact(&mut self, rev: i64) -> Result<(), EtcdError> {
        self.kv.compact(rev)
    }

    /// Removes lease `id` and deletes its keys in one revision. The caller
    /// decides whether an expired lease still counts (the timer: yes).
    pub fn revoke(&mut self, id: i64) -> Result<(), EtcdError> {
        let lease = self.leases.remove(id).ok_or(EtcdError::LeaseNotFound)?;
        for key in &lease.keys {
            if self.kv.get(key).is_some_and(|e| e.lease == id) {
                self.kv.delete(key);
            }
        }
        self.finish();
        Ok(())
    }

    /// Revokes every lease whose deadline has passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ids = self.leases.expired(now);
        for id in &ids {
            let _ = self.revoke(*id);
        }
        ids.len()
    }

    fn check_put_state(&self, r: &PbPutRequest, now: Instant) -> Result<(), EtcdError> {
        if r.lease != 0 && self.leases.alive(r.lease, now).is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        if (r.ignore_value || r.ignore_lease) && self.kv.get(&r.key).is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        Ok(())
    }

    /// The checks etcd makes on the branch a txn will take, before any op runs.
    fn check_txn_state(&self, r: &PbTxnRequest, now: Instant) -> Result<(), EtcdError> {
        let ops = if self.compares(&r.compare) {
            &r.success
        } else {
            &r.failure
        };
        for op in ops {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(q)) => self.kv.check_read_rev(q.revision)?,
                Some(PbTxnOpRequest::RequestPut(p)) => self.check_put_state(p, now)?,
                Some(PbTxnOpRequest::RequestTxn(t)) => self.check_txn_state(t, now)?,
                Some(PbTxnOpRequest::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn compares(&self, cs: &[PbCompare]) -> bool {
        cs.iter().all(|c| self.compare(c))
    }

    /// etcd's `applyCompare`: every key in the range must satisfy the
    /// compare; with no key, a value compare fails and the others compare
    /// against zero.
    fn compare(&self, c: &PbCompare) -> bool {
        let r = KeyRange::new(&c.key, &c.range_end);
        let mut any = false;
        for (_, e) in self.kv.visible(&r, 0) {
            any = true;
            if !compare_one(
                c,
                Some((e.version, e.create_rev, e.mod_rev, &e.value, e.lease)),
            ) {
                return false;
            }
        }
        if any {
            true
        } else if c.target == TARGET_VALUE {
            false
        } else {
            compare_one(c, None)
        }
    }

    fn apply_put(&mut self, r: &PbPutRequest) -> PbPutResponse {
        let cur = self.kv.get(&r.key).cloned();
        let value: Bytes = match (&cur, r.ignore_value) {
            (Some(c), true) => c.value.clone(),
            _ => Arc::from(r.value.as_slice()),
        };
        let lease = match (&cur, r.ignore_lease) {
            (Some(c), true) => c.lease,
            _ => r.lease,
        };
        let prev = self.kv.put(&r.key, value, lease);
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.leases.detach(p.lease, &r.key);
            }
        }
        if lease != 0 {
            self.leases.attach(lease, Arc::from(r.key.as_slice()));
        }
        PbPutResponse {
            header: Some(PbResponseHeader {
                revision: self.kv.rev() + 1,
                ..Default::default()
            }),
            prev_kv: if r.prev_kv {
                prev.map(|p| p.to_pb(&r.key, false))
            } else {
                None
            },
        }
    }

    fn apply_delete(&mut self, r: &PbDeleteRequest) -> PbDeleteResponse {
        let range = KeyRange::new(&r.key, &r.range_end);
        let keys: Vec<Bytes> = self.kv.visible(&range, 0).map(|(k, _)| k.clone()).collect();
        let mut prev_kvs = Vec::new();
        for k in &keys {
            if let Some(p) = self.kv.delete(k) {
                if p.lease != 0 {
                    self.leases.detach(p.lease, k);
                }
                if r.prev_kv {
                    prev_kvs.push(p.to_pb(k, false));
                }
            }
        }
        PbDeleteResponse {
            header: Some(PbResponseHeader {
                revision: self.kv.rev() + i64::from(self.kv.dirty()),
                ..Default::default()
            }),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    fn apply_txn(&mut self, r: &PbTxnRequest) -> PbTxnResponse {
        let succeeded = self.compares(&r.compare);
        let ops = if succeeded { &r.success } else { &r.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(q)) => {
                    // Checked above; a failure here would be a bug, answer empty.
                    Some(PbTxnOpResponse::ResponseRange(
                        self.range(q).unwrap_or_default(),
                    ))
                }
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    Some(PbTxnOpResponse::ResponsePut(self.apply_put(p)))
                }
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    Some(PbTxnOpResponse::ResponseDeleteRange(self.apply_delete(d)))
                }
                Some(PbTxnOpRequest::RequestTxn(t)) => {
                    Some(PbTxnOpResponse::ResponseTxn(self.apply_txn(t)))
                }
                None => None,
            };
            responses.push(PbResponseOp { response });
        }
        PbTxnResponse {
            header: Some(PbResponseHeader {
                revision: self.kv.rev() + i64::from(self.kv.dirty()),
                ..Default::default()
            }),
            succeeded,
            responses,
        }
    }
}

const TARGET_VERSION: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;
const TARGET_VALUE: i32 = 3;
const TARGET_LEASE: i32 = 4;

/// Compares one key's (version, create, mod, value, lease) with `c`.
fn compare_one(c: &PbCompare, kv: Option<(i64, i64, i64, &Bytes, i64)>) -> bool {
    let (version, create, modr, value, lease) = match kv {
        Some((v, cr, m, val, l)) => (v, cr, m, &val[..], l),
        None => (0, 0, 0, &[][..], 0),
    };
    let int = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let u = c.target_union.as_ref();
    let ord: Ordering = match c.target {
        TARGET_VERSION => int(
            u.and_then(|t| match t {
                PbTargetUnion::Version(v) => Some(*v),
                _ => None,
            }),
            version,
        ),
        TARGET_CREATE => int(
            u.and_then(|t| match t {
                PbTargetUnion::CreateRevision(v) => Some(*v),
                _ => None,
            }),
            create,
        ),
        TARGET_MOD => int(
            u.and_then(|t| match t {
                PbTargetUnion::ModRevision(v) => Some(*v),
                _ => None,
            }),
            modr,
        ),
        TARGET_LEASE => int(
            u.and_then(|t| match t {
                PbTargetUnion::Lease(v) => Some(*v),
                _ => None,
            }),
            lease,
        ),
        TARGET_VALUE => {
            let want: &[u8] = match u {
                Some(PbTargetUnion::Value(v)) => v,
                _ => &[],
            };
            value.cmp(want)
        }
        _ => return false,
    };
    match c.result {
        0 => ord == Ordering::Equal,
        1 => ord == Ordering::Greater,
        2 => ord == Ordering::Less,
        3 => ord != Ordering::Equal,
        _ => false,
    }
}

fn check_range(r: &PbRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

fn check_put(r: &PbPutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(r: &PbDeleteRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
fn check_txn(r: &PbTxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(q)) => check_range(q)?,
            Some(PbTxnOpRequest::RequestPut(p)) => check_put(p)?,
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => check_delete(d)?,
            Some(PbTxnOpRequest::RequestTxn(t)) => check_txn(t, max_ops)?,
            None => {}
        }
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// No key may be written twice by one branch, counting nested txns (whose
/// two branches are exclusive, so they may write the same key).
fn check_intervals(ops: &[PbTxnRequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<KeyRange>), EtcdError> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                Some(KeyRange::new(&d.key, &d.range_end))
            }
            _ => None,
        })
        .collect();
    let hits = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = check_intervals(&t.success)?;
        let (else_puts, else_dels) = check_intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        puts.extend(then_puts.iter().cloned());
        for k in else_puts {
            if (puts.contains(&k) && !then_puts.contains(&k)) || hits(&dels, &k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let Some(PbTxnOpRequest::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Whether a txn would write a value (etcd's capped applier counts the
/// Puts in either branch, not in nested txns).
pub(crate) fn txn_puts(r: &PbTxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .any(|op| matches!(op.request, Some(PbTxnOpRequest::RequestPut(_))))
}

/// Whether etcd serves a txn without raft: every op of both branches is a
/// range (a nested txn counts as a write, as in etcd's `isTxnReadonly`).
pub(crate) fn txn_read_only(r: &PbTxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(PbTxnOpRequest::RequestRange(_))))
}
