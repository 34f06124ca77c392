//! The multi-version key space: one global revision, a per-key list of
//! versions, and an event log indexed by revision that watchers read from.
//!
//! This module owns the data structure and its invariants only; request
//! validation, transactions and lease bookkeeping live in `apply.rs`.
//!
//! Invariants:
//! - `rev` is the last committed revision; an empty store is at revision 1,
//!   as etcd is. Every committed write advances it by exactly one and leaves
//!   at least one event, so `log[i]` holds the events of `log_start + i` and
//!   the log has no holes.
//! - A key's versions are sorted by `mod_rev`; a tombstone (version 0) ends a
//!   generation. Writes of a transaction in progress are already in the key
//!   lists (with revision `rev + 1`) but only reach the log on `commit`, so a
//!   watcher never sees half a transaction.
//! - After compaction at `c`, reads at revisions `>= c` answer exactly as
//!   before, the log starts at `c`, and nothing older is kept.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use etcd_client::proto::PbKeyValue;

use super::error::EtcdError;

/// Keys and values are shared between the key lists, the log and responses
/// in flight, so a value is stored once however many places refer to it.
pub(crate) type Bytes = Arc<[u8]>;

/// Fixed bookkeeping cost charged per stored version in `approx_bytes`.
const ENTRY_OVERHEAD: usize = 64;

/// One version of a key. `version == 0` marks a tombstone (a delete).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub mod_rev: i64,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

impl Entry {
    pub fn is_live(&self) -> bool {
        self.version > 0
    }

    /// The wire form; `keys_only` drops the value as etcd does.
    pub fn to_pb(&self, key: &[u8], keys_only: bool) -> PbKeyValue {
        PbKeyValue {
            key: key.to_vec(),
            create_revision: self.create_rev,
            mod_revision: self.mod_rev,
            version: self.version,
            value: if keys_only {
                Vec::new()
            } else {
                self.value.to_vec()
            },
            lease: self.lease,
        }
    }
}

/// One change, as a watcher sees it: the new version (a tombstone for a
/// delete) and the version it replaced, kept so `prev_kv` watches never need
/// a second lookup into possibly compacted history.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub key: Bytes,
    pub cur: Entry,
    pub prev: Option<Entry>,
}

/// A key interval in etcd's encoding: `end` empty means the single key
/// `start`, `end == "\0"` means every key `>= start`, otherwise `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    pub fn new(start: &[u8], end: &[u8]) -> KeyRange {
        KeyRange {
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.start.as_slice()
        } else if self.end == [0] {
            key >= self.start.as_slice()
        } else {
            key >= self.start.as_slice() && key < self.end.as_slice()
        }
    }
}

/// The in-memory MVCC store.
#[derive(Debug)]
pub(crate) struct Kv {
    keys: BTreeMap<Bytes, Vec<Entry>>,
    /// `log[i]`: events of revision `log_start + i`, in the order applied.
    log: VecDeque<Vec<Event>>,
    log_start: i64,
    rev: i64,
    compact_rev: i64,
    /// Events of the write in progress; committed as revision `rev + 1`.
    pending: Vec<Event>,
    live_keys: usize,
    approx_bytes: usize,
}

/// The outcome of a range read, before it is put on the wire.
pub(crate) struct RangeOut {
    pub kvs: Vec<PbKeyValue>,
    pub count: i64,
    pub more: bool,
}

/// What a watcher gets from one read of the log.
pub(crate) enum LogRead {
    /// Events matching the watcher, and the revision to read from next time.
    Events { events: Vec<Event>, next: i64 },
    /// The watcher wanted history older than the compaction point.
    Compacted(i64),
}

const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// The subset of a range request the MVCC layer needs (shared by `Range`
/// and the ranges inside a `Txn`).
pub(crate) struct RangeArgs {
    pub range: KeyRange,
    pub revision: i64,
    pub limit: i64,
    pub sort_order: i32,
    pub sort_target: i32,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod: i64,
    pub max_mod: i64,
    pub min_create: i64,
    pub max_create: i64,
}

impl Default for Kv {
    fn default() -> Self {
        Kv {
            keys: BTreeMap::new(),
            log: VecDeque::new(),
            log_start: 2,
            rev: 1,
            compact_rev: 0,
            pending: Vec::new(),
            live_keys: 0,
            approx_bytes: 0,
        }
    }
}

impl Kv {
    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// Every version kept (tombstones included), by key, then revision.
    pub fn versions(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.keys
            .iter()
            .flat_map(|(k, hist)| hist.iter().map(move |e| (k, e)))
    }

    pub fn live_keys(&self) -> usize {
        self.live_keys
    }

    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Live keys in `[from, to)` and their bytes, as `approx_bytes` counts.
    pub fn usage(&self, from: &[u8], to: &[u8]) -> (usize, usize) {
        let range = (
            std::ops::Bound::Included(from),
            std::ops::Bound::Excluded(to),
        );
        self.keys
            .range::<[u8], _>(range)
            .filter_map(|(k, h)| h.last().filter(|e| e.is_live()).map(|e| (k, e)))
            .fold((0, 0), |(n, b), (k, e)| {
                (n + 1, b + Self::key_bytes(k, &e.value))
            })
    }

    /// Checks that `rev` (0 = current) can be read.
    pub fn check_read_rev(&self, rev: i64) -> Result<(), EtcdError> {
        if rev > self.rev {
            Err(EtcdError::FutureRev)
        } else if rev > 0 && rev < self.compact_rev {
            Err(EtcdError::Compacted)
        } else {
            Ok(())
        }
    }

    /// The key lists inside `r`, in key order.
    fn span<'a>(
        &'a self,
        r: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a Vec<Entry>)> + 'a> {
        if r.end.is_empty() {
            return Box::new(self.keys.get_key_value(r.start.as_slice()).into_iter());
        }
        let lo = Bound::Included(r.start.as_slice());
        if r.end == [0] {
            return Box::new(self.keys.range::<[u8], _>((lo, Bound::Unbounded)));
        }
        if r.end.as_slice() <= r.start.as_slice() {
            return Box::new(std::iter::empty());
        }
        Box::new(
            self.keys
                .range::<[u8], _>((lo, Bound::Excluded(r.end.as_slice()))),
        )
    }

    /// The live version of each key in `r` at revision `rev` (0 = latest,
    /// including writes of the transaction in progress).
    pub fn visible<'a>(
        &'a self,
        r: &'a KeyRange,
        rev: i64,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Entry)> + 'a {
        self.span(r).filter_map(move |(k, hist)| {
            let e = if rev <= 0 {
                hist.last()
            } else {
                let i = hist.partition_point(|e| e.mod_rev <= rev);
                i.checked_sub(1).and_then(|i| hist.get(i))
            };
            e.filter(|e| e.is_live()).map(|e| (k, e))
        })
    }

    /// The latest live version of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .filter(|e| e.is_live())
    }

    /// etcd's Range: count is over the whole interval, filters and sorting
    /// apply afterwards, and `limit` truncates last (see etcd's
    /// `applierV3backend.Range`, whose quirks this follows).
    pub fn range(&self, a: &RangeArgs) -> Result<RangeOut, EtcdError> {
        self.check_read_rev(a.revision)?;
        let filtered = a.min_mod != 0 || a.max_mod != 0 || a.min_create != 0 || a.max_create != 0;
        let fetch_all = a.sort_order != SORT_NONE || filtered;
        let fetch = if a.limit > 0 && !fetch_all {
            (a.limit + 1) as usize
        } else {
            usize::MAX
        };
        let mut count = 0i64;
        let mut hits: Vec<(&Bytes, &Entry)> = Vec::new();
        for (k, e) in self.visible(&a.range, a.revision) {
            count += 1;
            if !a.count_only && hits.len() < fetch {
                hits.push((k, e));
            }
        }
        if filtered {
            hits.retain(|(_, e)| {
                !(a.max_mod != 0 && e.mod_rev > a.max_mod
                    || a.min_mod != 0 && e.mod_rev < a.min_mod
                    || a.max_create != 0 && e.create_rev > a.max_create
                    || a.min_create != 0 && e.create_rev < a.min_create)
            });
        }
        let mut order = a.sort_order;
        if a.sort_target != TARGET_KEY && order == SORT_NONE {
            order = SORT_ASCEND;
        }
        if order == SORT_ASCEND || order == SORT_DESCEND {
            match a.sort_target {
                TARGET_VERSION => hits.sort_by_key(|(_, e)| e.version),
                TARGET_CREATE => hits.sort_by_key(|(_, e)| e.create_rev),
                TARGET_MOD => hits.sort_by_key(|(_, e)| e.mod_rev),
                TARGET_VALUE => hits.sort_by(|x, y| x.1.value.cmp(&y.1.value)),
                _ => {} // already in key order
            }
            if order == SORT_DESCEND {
                hits.reverse();
            }
        }
        let mut more = false;
        if a.limit > 0 && hits.len() > a.limit as usize {
            hits.truncate(a.limit as usize);
            more = true;
        }
        let kvs = hits
            .into_iter()
            .map(|(k, e)| e.to_pb(k, a.keys_only))
            .collect();
        Ok(RangeOut { kvs, count, more })
    }

    fn key_bytes(key: &[u8], value: &[u8]) -> usize {
        Self::size(key.len(), value.len())
    }

    /// What one stored version of a key of `key` bytes with a value of
    /// `value` bytes counts for in `approx_bytes`.
    pub(crate) fn size(key: usize, value: usize) -> usize {
        key + value + ENTRY_OVERHEAD
    }

    /// Writes `key` at revision `rev + 1` and returns the version it replaced.
    pub fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> Option<Entry> {
        let rev = self.rev + 1;
        let (k, hist) = match self.keys.get_key_value(key) {
            Some((k, _)) => {
                let k = k.clone();
                let hist = self.keys.entry(k.clone()).or_default();
                (k, hist)
            }
            None => {
                let k: Bytes = Arc::from(key);
                let hist = self.keys.entry(k.clone()).or_default();
                (k, hist)
            }
        };
        let prev = hist.last().filter(|e| e.is_live()).cloned();
        let (create_rev, version) = match &prev {
            Some(p) => (p.create_rev, p.version + 1),
            None => (rev, 1),
        };
        if prev.is_none() {
            self.live_keys += 1;
        }
        self.approx_bytes += Self::key_bytes(key, &value);
        let cur = Entry {
            mod_rev: rev,
            create_rev,
            version,
            lease,
            value,
        };
        hist.push(cur.clone());
        self.pending.push(Event {
            key: k,
            cur,
            prev: prev.clone(),
        });
        prev
    }

    /// Deletes `key` at revision `rev + 1`; returns the deleted version, if
    /// the key was live.
    pub fn delete(&mut self, key: &[u8]) -> Option<Entry> {
        let rev = self.rev + 1;
        let (k, hist) = self.keys.get_key_value(key)?;
        let prev = hist.last().filter(|e| e.is_live())?.clone();
        let k = k.clone();
        let tomb = Entry {
            mod_rev: rev,
            create_rev: 0,
            version: 0,
            lease: 0,
            value: Arc::from(&[][..]),
        };
        self.keys.get_mut(key)?.push(tomb.clone());
        self.live_keys -= 1;
        self.approx_bytes += Self::key_bytes(key, &[]);
        self.pending.push(Event {
            key: k,
            cur: tomb,
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    /// True when the write in progress changed something.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the write in progress: its events become revision `rev + 1`.
    /// Returns the new revision, or `None` when nothing was written (etcd
    /// does not spend a revision on a no-op delete or a read-only txn).
    pub fn commit(&mut self) -> Option<i64> {
        if self.pending.is_empty() {
            return None;
        }
        self.rev += 1;
        let events = std::mem::take(&mut self.pending);
        self.log.push_back(events);
        Some(self.rev)
    }

    /// The committed revisions after `after`, oldest first, with their
    /// events; `None` when some of them are no longer in the log (compacted
    /// by the same write that committed them).
    pub fn revisions_after(&self, after: i64) -> Option<impl Iterator<Item = (i64, &[Event])>> {
        if after + 1 < self.log_start {
            return None;
        }
        let skip = (after + 1 - self.log_start) as usize;
        let first = after + 1;
        Some(
            self.log
                .iter()
                .skip(skip)
                .enumerate()
                .map(move |(i, evs)| (first + i as i64, evs.as_slice())),
        )
    }

    /// Compacts history at `c`: see the module invariants.
    pub fn compact(&mut self, c: i64) -> Result<(), EtcdError> {
        if c <= self.compact_rev {
            return Err(EtcdError::Compacted);
        }
        if c > self.rev {
            return Err(EtcdError::FutureRev);
        }
        while self.log_start < c {
            let Some(events) = self.log.pop_front() else {
                break;
            };
            self.log_start += 1;
            for ev in events {
                self.prune(&ev.key, c);
            }
        }
        self.log_start = self.log_start.max(c);
        self.compact_rev = c;
        Ok(())
    }

    /// Drops the versions of `key` that no read at a revision `>= c` can see.
    fn prune(&mut self, key: &[u8], c: i64) {
        let Some(hist) = self.keys.get_mut(key) else {
            return;
        };
        let i = hist.partition_point(|e| e.mod_rev <= c);
        if i == 0 {
            return;
        }
        let mut freed = 0usize;
        for e in hist.drain(..i - 1) {
            freed += Self::key_bytes(key, &e.value);
        }
        if hist.first().is_some_and(|e| !e.is_live() && e.mod_rev <= c) {
            let e = hist.remove(0);
            freed += Self::key_bytes(key, &e.value);
        }
        if hist.is_empty() {
            self.keys.remove(key);
        }
        self.approx_bytes = self.approx_bytes.saturating_sub(freed);
    }

    /// Reads the committed events of revisions `from..` that fall in `r`,
    /// scanning at most `max_revs` revisions (etcd batches 1000 per
    /// response) and stopping after the revision that brings the matching
    /// keys and values over `max_bytes`, so one response stays bounded.
    /// A revision is never split across two reads.
    pub fn read_log(&self, from: i64, r: &KeyRange, max_revs: usize, max_bytes: usize) -> LogRead {
        if from < self.compact_rev {
            return LogRead::Compacted(self.compact_rev);
        }
        let first = from.max(self.log_start);
        let mut events = Vec::new();
        let mut next = first;
        let mut bytes = 0usize;
        let skip = (first - self.log_start).max(0) as usize;
        for revs in self.log.iter().skip(skip).take(max_revs) {
            for e in revs.iter().filter(|e| r.contains(&e.key)) {
                bytes +=
                    e.key.len() + e.cur.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len());
                events.push(e.clone());
            }
            next += 1;
            if bytes > max_bytes {
                break;
            }
        }
        LogRead::Events {
            events,
            next: next.max(from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Bytes {
        Arc::from(s.as_bytes())
    }

    fn args(r: KeyRange, rev: i64) -> RangeArgs {
        RangeArgs {
            range: r,
            revision: rev,
            limit: 0,
            sort_order: 0,
            sort_target: 0,
            keys_only: false,
            count_only: false,
            min_mod: 0,
            max_mod: 0,
            min_create: 0,
            max_create: 0,
        }
    }

    #[test]
    fn revisions_versions_and_past_reads() {
        let mut kv = Kv::default();
        kv.put(b"a", v("1"), 0);
        assert_eq!(kv.commit(), Some(2));
        kv.put(b"a", v("2"), 0);
        assert_eq!(kv.commit(), Some(3));
        let e = kv.get(b"a").cloned().expect("a is live");
        assert_eq!((e.create_rev, e.mod_rev, e.version), (2, 3, 2));
        kv.delete(b"a");
        assert_eq!(kv.commit(), Some(4));
        assert!(kv.get(b"a").is_none());
        assert_eq!(kv.delete(b"a").map(|e| e.version), None);
        assert_eq!(kv.commit(), None);
        let out = kv
            .range(&args(KeyRange::new(b"a", b""), 2))
            .expect("rev 2 readable");
        assert_eq!(out.kvs[0].value, b"1");
        kv.put(b"a", v("3"), 0);
        kv.commit();
        let e = kv.get(b"a").cloned().expect("a is live again");
        assert_eq!((e.create_rev, e.version), (5, 1));
    }

    #[test]
    fn compaction_keeps_what_later_reads_see() {
        let mut kv = Kv::default();
        for i in 0..10 {
            kv.put(b"k", v(&i.to_string()), 0);
            kv.put(format!("x{i}").as_bytes(), v("x"), 0);
            kv.commit();
        }
        kv.delete(b"x0");
        kv.commit(); // rev 12
        kv.compact(12).expect("compact");
        assert_eq!(
            kv.range(&args(KeyRange::new(b"k", b""), 11)).err(),
            Some(EtcdError::Compacted)
        );
        let out = kv
            .range(&args(KeyRange::new(b"k", b""), 12))
            .expect("read at compaction point");
        assert_eq!(out.kvs[0].value, b"9");
        assert!(!kv.keys.contains_key(&b"x0"[..]));
        assert_eq!(kv.keys.get(&b"k"[..]).map(Vec::len), Some(1));
        assert!(matches!(
            kv.read_log(11, &KeyRange::new(b"k", b""), 10, 1 << 20),
            LogRead::Compacted(12)
        ));
        assert_eq!(kv.compact(12), Err(EtcdError::Compacted));
        assert_eq!(kv.compact(13), Err(EtcdError::FutureRev));
    }

    #[test]
    fn range_encoding() {
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzz"));
        assert!(KeyRange::new(b"a", b"c").contains(b"b"));
        assert!(!KeyRange::new(b"a", b"c").contains(b"c"));
        assert!(!KeyRange::new(b"a", b"").contains(b"ab"));
    }
}
