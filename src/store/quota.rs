//! Bounds on what the store holds, so that one host cannot fill the
//! laptop's memory for everyone: per host (through the connections that
//! speak for it) its live keys, their bytes and its leases; in all, the
//! bytes stored, history included, as etcd's backend quota counts them, and
//! the watches open (etcd has no bound on watches: a watch past ours is
//! refused as a cancelled watch whose reason says which bound it met).
//! Past a bound the write is refused with etcd's own error (`database
//! space exceeded`, or `too many requests` for leases) and the store logs
//! which host it was; reads, deletes and every other host go on. The
//! store-wide bound also raises etcd's NOSPACE alarm, as etcd does, which
//! holds every growing write back until it is disarmed.

use std::collections::HashMap;

use etcd_client::proto::{PbTxnOpRequest, PbTxnRequest};
use tokio::time::Instant;

use super::access::Speaker;
use super::apply::State;
use super::error::EtcdError;
use super::kv::Kv;
use super::{Config, Shared};

/// One key a write will set, and the length of its new value.
pub(crate) type Write<'a> = (&'a [u8], usize);

/// The puts of `txn`, nested ones and both branches included (either may
/// run, so both count).
pub(crate) fn txn_writes(txn: &PbTxnRequest) -> Vec<Write<'_>> {
    let mut out = Vec::new();
    for op in txn.success.iter().chain(txn.failure.iter()) {
        match op.request.as_ref() {
            Some(PbTxnOpRequest::RequestPut(p)) => out.push((p.key.as_slice(), p.value.len())),
            Some(PbTxnOpRequest::RequestTxn(t)) => out.extend(txn_writes(t)),
            _ => {}
        }
    }
    out
}

/// Refuses `writes` that would take the store, or `speaker`'s hosts, past
/// their bounds.
pub(crate) fn check_writes(
    st: &mut State,
    (cfg, member): (&Config, u64),
    speaker: Option<&Speaker>,
    writes: &[Write<'_>],
) -> Result<(), EtcdError> {
    let added: usize = writes.iter().map(|(k, n)| Kv::size(k.len(), *n)).sum();
    if st.kv.approx_bytes() + added > cfg.quota_bytes {
        // As etcd: the store-wide quota raises NOSPACE, which refuses
        // every write that grows the store until it is disarmed. A host's
        // own bound (below) refuses that host only.
        if st.alarms.check_space().is_ok() {
            tracing::warn!(
                "store: {} bytes stored, past the quota of {}; NOSPACE alarm raised (etcdctl alarm disarm once space is freed)",
                st.kv.approx_bytes(),
                cfg.quota_bytes
            );
            st.alarms.activate(member, super::alarm::NOSPACE);
        }
        return Err(EtcdError::NoSpace);
    }
    let Some(sp) = speaker else { return Ok(()) };
    let (mut keys, mut bytes) = (0, 0);
    for (from, to) in sp.owned_ranges() {
        let (k, b) = st.kv.usage(&from, &to);
        keys += k;
        bytes += b;
    }
    for (key, len) in writes {
        let new = Kv::size(key.len(), *len);
        match st.kv.get(key) {
            Some(old) => bytes = (bytes + new).saturating_sub(Kv::size(key.len(), old.value.len())),
            None => (keys, bytes) = (keys + 1, bytes + new),
        }
    }
    let q = &cfg.host_quota;
    if keys > q.keys || bytes > q.bytes {
        tracing::warn!(
            "store: {} would hold {keys} keys, {bytes} bytes (at most {} and {}); write refused",
            sp.name,
            q.keys,
            q.bytes
        );
        return Err(EtcdError::NoSpace);
    }
    Ok(())
}

/// Refuses a new lease for `speaker` once it holds its quota of live ones.
pub(crate) fn check_lease(
    st: &State,
    cfg: &Config,
    owners: &HashMap<i64, String>,
    speaker: &Speaker,
    now: Instant,
) -> Result<(), EtcdError> {
    let held = owners
        .iter()
        .filter(|(id, o)| **o == speaker.name && st.leases.alive(**id, now).is_some())
        .count();
    if held >= cfg.host_quota.leases {
        tracing::warn!(
            "store: {} holds {held} leases (at most {}); grant refused",
            speaker.name,
            cfg.host_quota.leases
        );
        return Err(EtcdError::TooManyRequests);
    }
    Ok(())
}

/// Refuses one more watch once the store, or `speaker`'s host, holds its
/// bound of open ones; the reason is what the client is told.
pub(crate) fn check_watch(
    shared: &Shared,
    speaker: Option<&std::sync::Arc<Speaker>>,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let cfg = &shared.cfg;
    let open = shared.counters.watches_open.load(Ordering::Relaxed);
    if open >= cfg.max_watches as u64 {
        tracing::warn!(
            "store: {open} watches open (at most {}); watch refused",
            cfg.max_watches
        );
        return Err(format!(
            "mgmt: the store holds its limit of {} watches; cancel some",
            cfg.max_watches
        ));
    }
    let Some(sp) = speaker else { return Ok(()) };
    let held = sp.watches();
    if held >= cfg.host_quota.watches {
        tracing::warn!(
            "store: {} holds {held} watches (at most {}); watch refused",
            sp.name,
            cfg.host_quota.watches
        );
        return Err(format!(
            "mgmt: {} holds its limit of {} watches; cancel some",
            sp.name, cfg.host_quota.watches
        ));
    }
    Ok(())
}
