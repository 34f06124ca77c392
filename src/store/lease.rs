//! Lease bookkeeping: TTLs, deadlines, and which keys each lease holds.
//!
//! This module only keeps the table; revoking a lease (deleting its keys in
//! one revision) is done by `apply.rs`, and the timer that expires leases is
//! the single task in `expiry.rs`, which sleeps until [`Leases::next_deadline`].
//! An expired lease that the timer has not reached yet is already treated as
//! gone by every request, so a late timer never makes a lease outlive its TTL.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::error::EtcdError;
use super::kv::Bytes;

/// etcd's `MaxLeaseTTL`.
pub(crate) const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug)]
pub(crate) struct Lease {
    pub granted_ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Bytes>,
}

#[derive(Debug, Default)]
pub(crate) struct Leases {
    map: HashMap<i64, Lease>,
    /// Deadlines in order, so the timer finds the next one in O(log n).
    queue: BTreeSet<(Instant, i64)>,
}

impl Leases {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A lease that exists and has not expired.
    pub fn alive(&self, id: i64, now: Instant) -> Option<&Lease> {
        self.map.get(&id).filter(|l| l.deadline > now)
    }

    /// Grants `id` (0: pick one) for `ttl` seconds, raised to `min_ttl` as
    /// etcd does. Returns the id and the granted TTL.
    pub fn grant(
        &mut self,
        id: i64,
        ttl: i64,
        min_ttl: i64,
        now: Instant,
    ) -> Result<(i64, i64), EtcdError> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        let id = if id == 0 {
            loop {
                // Positive and never 0 (0 means "no lease" on the wire).
                let c = (rand::random::<u64>() >> 1) as i64;
                if c != 0 && !self.map.contains_key(&c) {
                    break c;
                }
            }
        } else {
            id
        };
        if self.map.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        // etcd raises short (and negative) TTLs to the minimum.
        let ttl = ttl.max(min_ttl).max(1);
        let deadline = deadline_after(now, ttl);
        self.map.insert(
            id,
            Lease {
                granted_ttl: ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.queue.insert((deadline, id));
        Ok((id, ttl))
    }

    /// Pushes the deadline of a live lease to now + its TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.map.get_mut(&id).filter(|l| l.deadline > now)?;
        self.queue.remove(&(l.deadline, id));
        l.deadline = deadline_after(now, l.granted_ttl);
        self.queue.insert((l.deadline, id));
        Some(l.granted_ttl)
    }

    /// Removes a lease from the table (expired or not) and returns it.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let l = self.map.remove(&id)?;
        self.queue.remove(&(l.deadline, id));
        Some(l)
    }

    pub fn attach(&mut self, id: i64, key: Bytes) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.insert(key);
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(d, _)| *d)
    }

    /// Leases whose deadline is at or before `now`.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.queue
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    pub fn ids(&self, now: Instant) -> Vec<i64> {
        self.map
            .iter()
            .filter(|(_, l)| l.deadline > now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// `now + ttl` seconds; a TTL beyond what the clock can represent never expires.
fn deadline_after(now: Instant, ttl: i64) -> Instant {
    let secs = u64::try_from(ttl).unwrap_or(1);
    now.checked_add(Duration::from_secs(secs))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_renew_expire() {
        let now = Instant::now();
        let mut ls = Leases::default();
        let (id, ttl) = ls.grant(7, 1, 2, now).expect("grant");
        assert_eq!((id, ttl), (7, 2));
        assert_eq!(ls.grant(7, 5, 2, now).err(), Some(EtcdError::LeaseExist));
        assert!(ls.expired(now + Duration::from_secs(1)).is_empty());
        assert_eq!(ls.renew(7, now + Duration::from_secs(1)), Some(2));
        assert!(ls.expired(now + Duration::from_secs(2)).is_empty());
        assert_eq!(ls.expired(now + Duration::from_secs(3)), vec![7]);
        assert!(ls.alive(7, now + Duration::from_secs(3)).is_none());
        assert_eq!(ls.renew(7, now + Duration::from_secs(3)), None);
        assert_eq!(
            ls.grant(0, MAX_LEASE_TTL + 1, 2, now).err(),
            Some(EtcdError::LeaseTtlTooLarge)
        );
    }
}
