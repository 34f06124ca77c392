//! Following collected resources: one read, then watch events applied to a
//! local map, so a host pays for the keys its entries select and for the
//! changes to them, never for the whole of `/_mgmt/exported/` per change.
//!
//! The [`Follower`] reads the entries' prefixes ([`super::collect::prefixes`])
//! at one revision R, keeps the matching keys, and watches the same
//! prefixes from R+1 on one watch stream (a watcher per prefix; prefixes
//! never overlap, so no event arrives twice). An event for a key that no
//! entry matches (`webserver` under the `web` prefix of `web?`) is dropped
//! without recomputing anything. Events already received are drained before
//! a result is handed out, so a burst costs one recompute, not one each.
//!
//! A watch that fails, is closed, is refused or falls behind compaction is
//! dropped with a warning; the next [`Follower::changed`] reads again and
//! re-watches, waiting with a back-off between attempts that fail, so a
//! store that is down costs a request every few seconds, not a busy loop.
//!
//! No entries: nothing is read or watched at all.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{EventType, WatchResponse, WatchStream};
use futures::{FutureExt, StreamExt};

use super::{collect, World, WorldError};
use crate::graph::{Collect, ResourceDecl};

/// First wait after a failed read or watch; doubled after each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The collected resources of a list of entries, kept current.
pub struct Follower {
    /// A clone of the host's handle: same connection, same counters.
    world: World,
    entries: Vec<Collect>,
    /// What is read and watched for `entries`.
    prefixes: Vec<String>,
    /// Every key under `prefixes` that an entry matches, with its value.
    keys: BTreeMap<String, Vec<u8>>,
    /// The revision `keys` was read at; the watch starts right after it.
    rev: i64,
    /// The watch on `prefixes`; `None` before it is armed or after it failed.
    stream: Option<WatchStream>,
    /// `keys` may have missed changes: read again before watching.
    stale: bool,
    /// A matching key changed since a result was last handed out.
    dirty: bool,
    /// The last attempt failed: wait `backoff` before the next one.
    failed: bool,
    backoff: Duration,
}

impl Follower {
    /// A follower of no entries (it reads and watches nothing).
    pub fn new(world: World) -> Follower {
        Follower {
            world,
            entries: Vec::new(),
            prefixes: Vec::new(),
            keys: BTreeMap::new(),
            rev: 0,
            stream: None,
            stale: false,
            dirty: false,
            failed: false,
            backoff: BACKOFF_MIN,
        }
    }

    /// Follows `entries` from now on. When they select the same keys as
    /// before (only patterns differ) nothing is asked of the store;
    /// otherwise the old watch is dropped, the new prefixes are read, and
    /// watched. A failed read is returned (the next [`Follower::changed`]
    /// retries); a failed watch is only logged, as it is retried the same way.
    pub async fn follow(&mut self, entries: &[Collect]) -> Result<(), WorldError> {
        let same = collect::selection(entries) == collect::selection(&self.entries);
        self.entries = entries.to_vec();
        if same && !self.stale {
            return Ok(());
        }
        self.prefixes = collect::prefixes(entries);
        self.keys.clear();
        self.stream = None;
        self.failed = false;
        self.stale = !self.prefixes.is_empty();
        if !self.stale {
            return Ok(());
        }
        self.read().await?;
        if let Err(e) = self.arm().await {
            tracing::warn!("cannot watch exported resources: {e}; retrying");
            self.failed = true;
        }
        Ok(())
    }

    /// The collected resources, from the local map (no request).
    pub fn collected(&self) -> Vec<ResourceDecl> {
        collect::resolve(&self.entries, &self.keys)
    }

    /// Two hosts' files that the entries would place on one path, if any.
    pub fn collision(&self) -> Option<collect::Collision> {
        collect::collision(&self.entries, &self.keys)
    }

    /// The `value` of every `kv` followed, by name and host (#15).
    pub fn values(&self) -> crate::graph::template::Values {
        let mut out = crate::graph::template::Values::new();
        for (key, value) in &self.keys {
            let Some((host, "kv", name)) = collect::split_key(key) else {
                continue;
            };
            let Ok(decl) = super::decode("kv", name, value, None) else {
                continue;
            };
            if let Some(v) = decl.params.get("value").and_then(|v| v.as_str()) {
                out.entry(name.to_owned())
                    .or_default()
                    .insert(host.to_owned(), v.to_owned());
            }
        }
        out
    }

    /// Waits for a change to the collected resources' inputs and returns
    /// the new result; pending forever without entries. Cancel-safe: events
    /// applied before a cancellation are kept and counted in the next call.
    pub async fn changed(&mut self) -> Vec<ResourceDecl> {
        if self.prefixes.is_empty() {
            return std::future::pending().await;
        }
        loop {
            if self.failed {
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.failed = false;
            }
            if let Err(e) = self.resync().await {
                tracing::warn!("cannot follow exported resources: {e}; retrying");
                self.failed = true;
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            // Block for the first response only; then take what is ready.
            let msg = if self.dirty {
                match stream.next().now_or_never() {
                    Some(msg) => msg,
                    None => {
                        self.dirty = false;
                        return self.collected();
                    }
                }
            } else {
                stream.next().await
            };
            self.handle(msg);
        }
    }

    /// Reads again if the map is stale, then arms the watch if needed.
    async fn resync(&mut self) -> Result<(), WorldError> {
        if self.stale {
            self.read().await?;
            // Whatever changed while the watch was down counts as a change.
            self.dirty = true;
        }
        if self.stream.is_none() {
            self.arm().await?;
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<(), WorldError> {
        let entries = &self.entries;
        let (keys, rev) = self
            .world
            .read_exported(&self.prefixes, |k| collect::matches(entries, k))
            .await?;
        (self.keys, self.rev, self.stale) = (keys, rev, false);
        Ok(())
    }

    async fn arm(&mut self) -> Result<(), WorldError> {
        let stream = self
            .world
            .watch_exported(&self.prefixes, self.rev + 1)
            .await?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Applies one item of the watch stream.
    fn handle(&mut self, msg: Option<Result<WatchResponse, etcd_client::Error>>) {
        let resp = match msg {
            Some(Ok(resp)) => resp,
            Some(Err(e)) => return self.lost(&format!("the watch failed: {e}")),
            None => return self.lost("the store closed the watch"),
        };
        if resp.canceled() {
            let why = match resp.compact_revision() {
                0 => format!("the store cancelled the watch: {}", resp.cancel_reason()),
                c => format!("the watch fell behind compaction (revision {c})"),
            };
            return self.lost(&why);
        }
        self.backoff = BACKOFF_MIN;
        let n = resp.events().len() as u64;
        self.world.counters.events.fetch_add(n, Ordering::Relaxed);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
            self.dirty |= self.apply(&key, value);
            self.rev = self.rev.max(kv.mod_revision());
        }
    }

    /// Applies a put (`Some(value)`) or a delete of `key`; true when the key
    /// is one an entry matches.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        if !collect::matches(&self.entries, key) {
            return false;
        }
        match value {
            Some(v) => self.keys.insert(key.to_owned(), v.to_vec()),
            None => self.keys.remove(key),
        };
        true
    }

    fn lost(&mut self, why: &str) {
        tracing::warn!("exported resources: {why}; reading them again and re-watching");
        self.stream = None;
        self.stale = true;
        self.failed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{collect_files, file, Served};
    use super::*;
    use crate::world::CollectStats;

    fn names(got: &[ResourceDecl]) -> Vec<&str> {
        got.iter().map(|d| d.name.as_str()).collect()
    }

    #[tokio::test]
    async fn no_entries_ask_nothing_of_the_store() {
        let served = Served::start().await;
        let world = served.world("lone").await;
        let mut f = Follower::new(world.clone());
        f.follow(&[]).await.expect("follow");
        assert!(f.collected().is_empty());
        assert!(f.changed().now_or_never().is_none());
        assert_eq!(world.collect_stats(), CollectStats::default());
        served.stop().await;
    }

    #[tokio::test]
    async fn a_pattern_edit_reads_nothing_a_glob_edit_reads_again() {
        let served = Served::start().await;
        let world = served.world("c").await;
        let mut f = Follower::new(world.clone());
        let mut entry = collect_files(Some("web?"));
        f.follow(std::slice::from_ref(&entry))
            .await
            .expect("follow");
        let once = CollectStats {
            reads: 1,
            watches: 1,
            events: 0,
        };
        assert_eq!(world.collect_stats(), once);
        entry.pattern = Some("/in/".into());
        f.follow(std::slice::from_ref(&entry))
            .await
            .expect("follow");
        assert_eq!(world.collect_stats(), once);
        entry.hostname = Some("db*".into());
        f.follow(&[entry]).await.expect("follow");
        let twice = CollectStats {
            reads: 2,
            watches: 2,
            events: 0,
        };
        assert_eq!(world.collect_stats(), twice);
        f.follow(&[]).await.expect("follow");
        assert_eq!(world.collect_stats(), twice);
        assert!(f.changed().now_or_never().is_none());
        served.stop().await;
    }

    #[tokio::test]
    async fn a_compacted_watch_falls_back_to_a_fresh_read() {
        let served = Served::start().await;
        let world = served.world("c").await;
        let mut web1 = served.world("web1").await;
        let mut f = Follower::new(world.clone());
        f.follow(&[collect_files(Some("web?"))])
            .await
            .expect("follow");
        // As if the watch had been lost long ago: the next one would start
        // at a revision compaction has removed.
        f.stream = None;
        f.rev = 1;
        let a = file("a", "1");
        web1.export(&[&a]).await.expect("export");
        web1.export(&[&file("a", "2")]).await.expect("export");
        let mut client = web1.client.clone();
        let rev = client
            .get("x", None)
            .await
            .expect("get")
            .header()
            .map_or(0, |h| h.revision());
        client.compact(rev, None).await.expect("compact");
        let got = tokio::time::timeout(Duration::from_secs(30), f.changed())
            .await
            .expect("a result after the fresh read");
        assert_eq!(names(&got), ["a"]);
        let content = got[0].params.get("content").and_then(|v| v.as_str());
        assert_eq!(content, Some("2"));
        let s = world.collect_stats();
        // The first read and watch, the compacted watch, then both again.
        assert_eq!((s.reads, s.watches), (2, 3));
        served.stop().await;
    }

    #[tokio::test]
    async fn only_matching_keys_enter_the_map() {
        let served = Served::start().await;
        let mut f = Follower::new(served.world("c").await);
        f.entries = vec![collect_files(Some("web?"))];
        let key = |h: &str| format!("/_mgmt/exported/{h}/resources/file/a");
        assert!(f.apply(&key("web1"), Some(b"x")));
        assert!(!f.apply(&key("webserver"), Some(b"x")));
        assert!(!f.apply(&key("db1"), Some(b"x")));
        assert_eq!(f.keys.keys().collect::<Vec<_>>(), [&key("web1")]);
        assert!(f.apply(&key("web1"), None));
        assert!(f.keys.is_empty());
        served.stop().await;
    }
}
