//! Which watch streams a commit wakes: an index of every watcher's key range
//! by the stream that holds it, checked at commit time against the keys of
//! the commit, so a write wakes only the streams it concerns instead of all
//! of them (the emulator's 10,000 hosts each watch one narrow prefix).
//!
//! A stream is woken through its own [`Notify`] and told the first revision
//! that touched its ranges since it last looked (`dirty`). That is what lets
//! a stream skip, without reading the log, the revisions that were never
//! marked: see `WatchStream::catch_up` for the rule and why it is safe.
//!
//! Ranges are split by shape so that a key is matched without visiting
//! unrelated watchers: single keys by hash, prefixes (`range_end` =
//! prefix + 1, what `with_prefix` sends) by looking up each prefix of the
//! key whose length some watcher uses, and anything else (`[a, b)`, `>= a`)
//! by a linear scan, since those are rare. Matching may wake a stream
//! needlessly (several watchers of one stream share its mark) but never
//! misses one.
//!
//! Locking: the registry has its own mutex, taken after the state lock when
//! both are held. Commits and registrations of ranges happen under the state
//! lock, so a watcher registered at revision R is checked against every
//! commit after R and none before. Not handled here: reading the log, back
//! pressure and progress notifications, which stay in `watch.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Notify;

use super::kv::{Event, KeyRange};

/// Identifies one watch stream in the registry.
pub(crate) type StreamId = u64;

/// Stream → number of its watchers with one given range.
type Holders = HashMap<StreamId, usize>;

/// The shape of a watcher's range, as far as lookup goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// `range_end` empty: this key only.
    Key(Vec<u8>),
    /// Every key that starts with these bytes.
    Prefix(Vec<u8>),
    /// Any other interval, `KeyRange` encoding.
    Other(KeyRange),
}

impl Shape {
    fn of(r: &KeyRange) -> Shape {
        if r.end.is_empty() {
            Shape::Key(r.start.clone())
        } else if r.end != [0] && prefix_end(&r.start).as_deref() == Some(r.end.as_slice()) {
            Shape::Prefix(r.start.clone())
        } else {
            Shape::Other(r.clone())
        }
    }
}

/// etcd's end of a prefix range: the prefix with its last byte below 0xff
/// incremented and the 0xff bytes after it dropped; `None` when every byte is
/// 0xff (etcd then sends "\0", all keys from the prefix on, left to `Other`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let i = prefix.iter().rposition(|&b| b < 0xff)?;
    let mut end = prefix[..=i].to_vec();
    end[i] += 1;
    Some(end)
}

/// What the registry knows of one stream.
struct Slot {
    /// Woken (one permit kept) when a commit touches the stream's ranges;
    /// the stream's task is the only waiter.
    notify: Arc<Notify>,
    /// The first revision that touched the stream's ranges since its last
    /// `take`; `None` means no commit since then concerned it.
    dirty: Option<i64>,
    /// The stream's ranges and how many of its watchers have each, so a
    /// closing stream can be taken out of the index.
    shapes: HashMap<Shape, usize>,
}

/// The index of watchers' ranges by stream; one per store, in `Shared`.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: StreamId,
    streams: HashMap<StreamId, Slot>,
    keys: HashMap<Vec<u8>, Holders>,
    prefixes: HashMap<Vec<u8>, Holders>,
    /// Prefix length → how many distinct prefixes of that length are indexed.
    prefix_lens: BTreeMap<usize, usize>,
    others: HashMap<KeyRange, Holders>,
}

impl Registry {
    /// Adds a stream with no watchers; returns its id and the `Notify` its
    /// task waits on.
    pub fn open(&mut self) -> (StreamId, Arc<Notify>) {
        let id = self.next_id;
        self.next_id += 1;
        let notify = Arc::new(Notify::new());
        let slot = Slot {
            notify: notify.clone(),
            dirty: None,
            shapes: HashMap::new(),
        };
        self.streams.insert(id, slot);
        (id, notify)
    }

    /// Removes a stream and all its ranges.
    pub fn close(&mut self, id: StreamId) {
        let Some(slot) = self.streams.remove(&id) else {
            return;
        };
        for shape in slot.shapes.into_keys() {
            self.unindex(id, &shape, usize::MAX);
        }
    }

    /// Indexes one watcher's range for stream `id`. Call it under the state
    /// lock, reading the revision the watcher starts after under the same lock.
    pub fn watch(&mut self, id: StreamId, r: &KeyRange) {
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        let shape = Shape::of(r);
        *slot.shapes.entry(shape.clone()).or_default() += 1;
        let holders = match shape {
            Shape::Key(k) => self.keys.entry(k).or_default(),
            Shape::Prefix(p) => {
                if !self.prefixes.contains_key(&p) {
                    *self.prefix_lens.entry(p.len()).or_default() += 1;
                }
                self.prefixes.entry(p).or_default()
            }
            Shape::Other(r) => self.others.entry(r).or_default(),
        };
        *holders.entry(id).or_default() += 1;
    }

    /// Removes one watcher's range for stream `id` (a cancel or a compaction).
    pub fn unwatch(&mut self, id: StreamId, r: &KeyRange) {
        let shape = Shape::of(r);
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        match slot.shapes.get_mut(&shape) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                slot.shapes.remove(&shape);
            }
            None => return,
        }
        self.unindex(id, &shape, 1);
    }

    /// Takes `n` (saturating) of stream `id`'s watchers off `shape`'s entry.
    fn unindex(&mut self, id: StreamId, shape: &Shape, n: usize) {
        let (map, key): (&mut HashMap<_, Holders>, _) = match shape {
            Shape::Key(k) => (&mut self.keys, k),
            Shape::Prefix(p) => (&mut self.prefixes, p),
            Shape::Other(r) => {
                drop_holder(&mut self.others, r, id, n);
                return;
            }
        };
        if drop_holder(map, key, id, n) {
            if let Shape::Prefix(p) = shape {
                if let Some(c) = self.prefix_lens.get_mut(&p.len()) {
                    *c -= 1;
                    if *c == 0 {
                        self.prefix_lens.remove(&p.len());
                    }
                }
            }
        }
    }

    /// Marks and wakes every stream with a range holding a key of `events`,
    /// committed as revision `rev`. Returns how many streams were woken (a
    /// stream already marked is not woken again until it takes the mark).
    pub fn committed(&mut self, rev: i64, events: &[Event]) -> u64 {
        let mut hit: Vec<StreamId> = Vec::new();
        for e in events {
            self.matches(&e.key, &mut hit);
        }
        let mut woken = 0;
        for id in hit {
            if let Some(slot) = self.streams.get_mut(&id) {
                woken += u64::from(mark(slot, rev));
            }
        }
        woken
    }

    /// Marks and wakes every stream, for when the commits to check are no
    /// longer in the log (a write that outran compaction).
    pub fn wake_all(&mut self, rev: i64) -> u64 {
        self.streams
            .values_mut()
            .map(|s| u64::from(mark(s, rev)))
            .sum()
    }

    /// Returns and clears stream `id`'s mark. Call it under the state lock:
    /// the revisions after the last `take` up to the current one that are
    /// below the returned mark did not touch the stream's ranges.
    pub fn take(&mut self, id: StreamId) -> Option<i64> {
        self.streams.get_mut(&id).and_then(|s| s.dirty.take())
    }

    /// Appends the streams with a range holding `key` (possibly repeated).
    fn matches(&self, key: &[u8], out: &mut Vec<StreamId>) {
        if let Some(h) = self.keys.get(key) {
            out.extend(h.keys());
        }
        for &len in self.prefix_lens.keys() {
            if len > key.len() {
                break;
            }
            if let Some(h) = self.prefixes.get(&key[..len]) {
                out.extend(h.keys());
            }
        }
        for (r, h) in &self.others {
            if r.contains(key) {
                out.extend(h.keys());
            }
        }
    }
}

/// Marks a stream as touched at `rev` and wakes it if it was not marked.
fn mark(slot: &mut Slot, rev: i64) -> bool {
    if slot.dirty.is_some() {
        return false;
    }
    slot.dirty = Some(rev);
    slot.notify.notify_one();
    true
}

/// Lowers stream `id`'s count under `key` by `n`; returns true when the
/// key's entry went away with it.
fn drop_holder<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Holders>,
    key: &K,
    id: StreamId,
    n: usize,
) -> bool {
    let Some(holders) = map.get_mut(key) else {
        return false;
    };
    if let Some(c) = holders.get_mut(&id) {
        *c = c.saturating_sub(n);
        if *c == 0 {
            holders.remove(&id);
        }
    }
    if holders.is_empty() {
        map.remove(key);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::kv::{Entry, Event};

    fn put(key: &[u8]) -> Event {
        Event {
            key: Arc::from(key),
            cur: Entry {
                mod_rev: 0,
                create_rev: 0,
                version: 1,
                lease: 0,
                value: Arc::from(&b"v"[..]),
            },
            prev: None,
        }
    }

    fn prefix(p: &[u8]) -> KeyRange {
        let end = prefix_end(p).unwrap_or_else(|| vec![0]);
        KeyRange::new(p, &end)
    }

    #[test]
    fn shapes() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(
            Shape::of(&KeyRange::new(b"k", b"")),
            Shape::Key(b"k".to_vec())
        );
        assert_eq!(
            Shape::of(&prefix(b"a\xff")),
            Shape::Prefix(b"a\xff".to_vec())
        );
        let from = KeyRange::new(b"a", b"\0");
        assert_eq!(Shape::of(&from), Shape::Other(from.clone()));
        let ab = KeyRange::new(b"a", b"c");
        assert_eq!(Shape::of(&ab), Shape::Other(ab.clone()));
    }

    /// The index agrees with `KeyRange::contains` for every shape, and a
    /// stream is woken once per mark, not once per matching key.
    #[test]
    fn wakes_exactly_the_streams_whose_ranges_match() {
        let ranges = [
            KeyRange::new(b"/k", b""),
            prefix(b"/a/"),
            prefix(b"/a/b/"),
            prefix(b"/z\xff"),
            KeyRange::new(b"/r/0", b"/r/5"),
            KeyRange::new(b"/y", b"\0"),
        ];
        let keys: [&[u8]; 12] = [
            b"/k",
            b"/kk",
            b"/a/",
            b"/a",
            b"/a/b/c",
            b"/a0",
            b"/r/0",
            b"/r/4z",
            b"/r/5",
            b"/y",
            b"/zzz",
            b"/z\xff\x01",
        ];
        let mut reg = Registry::default();
        let ids: Vec<StreamId> = ranges
            .iter()
            .map(|r| {
                let (id, _) = reg.open();
                reg.watch(id, r);
                id
            })
            .collect();
        for (rev, key) in keys.iter().enumerate() {
            let rev = rev as i64 + 2;
            let want: Vec<bool> = ranges.iter().map(|r| r.contains(key)).collect();
            let woken = reg.committed(rev, &[put(key), put(key)]);
            let got: Vec<bool> = ids.iter().map(|&id| reg.take(id) == Some(rev)).collect();
            assert_eq!(got, want, "key {:?}", String::from_utf8_lossy(key));
            assert_eq!(woken, want.iter().filter(|&&w| w).count() as u64);
        }
    }

    #[test]
    fn unwatch_and_close_take_ranges_out() {
        let mut reg = Registry::default();
        let (a, _) = reg.open();
        let (b, _) = reg.open();
        let p = prefix(b"/p/");
        reg.watch(a, &p);
        reg.watch(a, &p);
        reg.watch(b, &p);
        reg.unwatch(a, &p);
        assert_eq!(reg.committed(2, &[put(b"/p/1")]), 2);
        reg.unwatch(a, &p);
        assert_eq!((reg.take(a), reg.take(b)), (Some(2), Some(2)));
        assert_eq!(reg.committed(3, &[put(b"/p/1")]), 1);
        assert_eq!((reg.take(a), reg.take(b)), (None, Some(3)));
        reg.close(b);
        assert_eq!(reg.committed(4, &[put(b"/p/1")]), 0);
        assert!(reg.prefixes.is_empty() && reg.prefix_lens.is_empty());
        // A mark is kept until taken: later commits do not move it.
        reg.watch(a, &KeyRange::new(b"/x", b"\0"));
        reg.committed(5, &[put(b"/x")]);
        reg.committed(6, &[put(b"/x")]);
        assert_eq!(reg.take(a), Some(5));
        reg.close(a);
        assert!(reg.others.is_empty() && reg.streams.is_empty());
    }
}
