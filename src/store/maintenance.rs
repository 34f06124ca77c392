//! The state behind the Maintenance RPCs (issue #14): the hashes of the
//! key-value history (`Hash`, `HashKV`); the alarms are `alarm.rs`'s. The RPC handlers in
//! `service.rs` call these under the state lock, except the hashing itself
//! ([`HashInput::finish`]), done on a copy after the lock is released;
//! nothing here awaits.
//!
//! The hashes have etcd's meaning, not etcd's values: HashKV at `rev` hashes
//! every version the store keeps with a revision up to `rev` (the kept
//! history since the last compaction, tombstones included), so two stores
//! that applied the same requests give the same hash, and one that differs
//! in any key, value, lease or revision gives another. etcd hashes the
//! bytes of its bbolt pages (with sub-revisions this store does not keep),
//! so its numbers cannot be reproduced; compare ours with ours.

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::apply::State;
use super::error::EtcdError;
use super::kv::{Bytes, Entry};

/// What a hash covers, copied under the state lock (keys and values are
/// shared, so the copy is cheap) and hashed once the lock is released:
/// hashing a large store must not hold up writers.
pub(crate) struct HashInput {
    head: Vec<u8>,
    versions: Vec<(Bytes, Entry)>,
    tail: Vec<u8>,
}

impl HashInput {
    fn new(head: &[u8], st: &State, upto: i64) -> HashInput {
        HashInput {
            head: head.to_vec(),
            versions: st
                .kv
                .versions()
                .filter(|(_, e)| e.mod_rev <= upto)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            tail: Vec::new(),
        }
    }

    /// The hash: every version, key by key, each field length-prefixed so
    /// that no two histories feed the same bytes; the first 32 bits of
    /// SHA-256.
    pub fn finish(self) -> u32 {
        let mut h = Sha256::new();
        h.update(&self.head);
        for (key, e) in &self.versions {
            h.update((key.len() as u64).to_be_bytes());
            h.update(key);
            for n in [e.mod_rev, e.create_rev, e.version, e.lease] {
                h.update(n.to_be_bytes());
            }
            h.update((e.value.len() as u64).to_be_bytes());
            h.update(&e.value);
        }
        h.update(&self.tail);
        let d = h.finalize();
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }
}

/// A HashKV answer: what to hash, the revision hashed and the current one.
pub(crate) struct KvHash {
    pub input: HashInput,
    pub hash_rev: i64,
    pub current: i64,
    /// As etcd reports it: -1 before the first compaction.
    pub compact_rev: i64,
}

/// etcd's compaction point as Status and HashKV report it.
fn reported_compact(st: &State) -> i64 {
    match st.kv.compact_rev() {
        0 => -1,
        c => c,
    }
}

/// HashKV at `rev` (0: the current revision), with etcd's errors: a
/// revision at or below the compaction point is compacted, one above the
/// current revision is in the future.
pub(crate) fn hash_kv(st: &State, rev: i64) -> Result<KvHash, EtcdError> {
    let current = st.kv.rev();
    let compact = st.kv.compact_rev();
    if rev > 0 && rev <= compact {
        return Err(EtcdError::Compacted);
    }
    if rev > current {
        return Err(EtcdError::FutureRev);
    }
    let upto = if rev > 0 { rev } else { current };
    Ok(KvHash {
        input: HashInput::new(b"key", st, upto),
        hash_rev: upto,
        current,
        compact_rev: reported_compact(st),
    })
}

/// Hash of the whole store at the current revision: the compaction point,
/// the key-value history and the live leases (id and granted TTL).
pub(crate) fn hash_all(st: &State, now: Instant) -> HashInput {
    let mut head = b"store".to_vec();
    head.extend(reported_compact(st).to_be_bytes());
    let mut input = HashInput::new(&head, st, st.kv.rev());
    let mut ids = st.leases.ids(now);
    ids.sort_unstable();
    for id in ids {
        let ttl = st.leases.alive(id, now).map_or(0, |l| l.granted_ttl);
        input.tail.extend(b"lease");
        input.tail.extend(id.to_be_bytes());
        input.tail.extend(ttl.to_be_bytes());
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::PbPutRequest;

    fn put(st: &mut State, k: &str, v: &str) {
        let r = PbPutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        st.put(&r, Instant::now()).expect("put");
    }

    #[test]
    fn equal_histories_hash_equal_and_any_change_differs() {
        let (mut a, mut b) = (State::new(1000, 2), State::new(1000, 2));
        for st in [&mut a, &mut b] {
            put(st, "x", "1");
            put(st, "y", "2");
        }
        let hash = |st: &State, rev| hash_kv(st, rev).expect("hash").input.finish();
        let ha = hash_kv(&a, 0).expect("hash");
        assert_eq!((ha.hash_rev, ha.current, ha.compact_rev), (3, 3, -1));
        let ha = ha.input.finish();
        assert_eq!(ha, hash(&b, 0));
        // The past is hashed as it was: rev 3 of a is still rev 3 after a put.
        put(&mut a, "x", "3");
        assert_eq!(hash(&a, 3), ha);
        assert_ne!(hash(&a, 0), ha);
        put(&mut b, "x", "4");
        assert_ne!(hash(&a, 0), hash(&b, 0));
        assert!(matches!(hash_kv(&a, 9), Err(EtcdError::FutureRev)));
        a.compact(3).expect("compact");
        assert!(matches!(hash_kv(&a, 3), Err(EtcdError::Compacted)));
        assert_eq!(hash_kv(&a, 4).expect("hash").compact_rev, 3);
    }
}
