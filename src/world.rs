//! The world: what hosts share through the store, on top of an etcd v3
//! client (the embedded store or a real etcd, it makes no difference here).
//!
//! Key layout (mgmt's):
//! - `/_mgmt/exported/<host>/resources/<kind>/<name>`: a resource that host
//!   exported (`@@name` in its graph). The value is a YAML mapping of the
//!   resource's fields as written in the graph, plus `meta`; the name and
//!   kind are in the key. A host rewrites only the keys whose value changed
//!   and deletes the ones it no longer exports, in one transaction, so an
//!   unchanged graph causes no watch event anywhere.
//! - `/_mgmt/converged/<host>`: `true` or `false`, attached to a lease the
//!   process keeps alive, so a host that dies stops counting.
//! - `/_mgmt/facts/<host>`: `{"graph", "facts"}` (JSON) under the same
//!   lease as the converged key, written with it in one request, followed
//!   by hosts whose templates call `hosts()` ([`Published`]).
//!
//! Collecting reads and watches only the prefixes the entries' hostname
//! globs allow ([`collect`]) and follows them incrementally ([`Follower`]).
//! A file collected with a pattern lands directly inside the pattern's
//! directory or is refused, naming its exporter (`landing`, issue #13).
//!
//! This module does not decide when to export or what converged means; the
//! run loop does. Reading or watching these keys never touches the engine,
//! so it never counts as activity.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchResponse, WatchStream,
};
use serde_yaml_ng::{Mapping, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::graph::{Collect, Meta, Pos, ResourceDecl};
use crate::resources;

mod collect;
mod converged;
mod follow;
mod published;
#[cfg(test)]
pub(crate) mod testing;

pub use crate::graph::glob_match;

/// The key prefixes the `collect:` entries of `graph` read: what a host
/// running that graph must be allowed to read in the store.
pub fn collect_prefixes(graph: &crate::graph::Graph) -> Vec<String> {
    collect::prefixes(&graph.collect)
}
pub use collect::Collision;
pub use follow::Follower;
pub use published::Published;

pub const EXPORTED: &str = "/_mgmt/exported/";
/// `kv` resources (exchanged values, #15) live under this root instead:
/// `/_mgmt/values/<host>/resources/kv/<name>`, so that a host whose
/// templates read `values()` can be let read them without reading every
/// other host's exports (`store::access`).
pub const VALUES: &str = "/_mgmt/values/";

/// The root a resource of `kind` is exported under.
pub(crate) fn root_of(kind: &str) -> &'static str {
    if kind.eq_ignore_ascii_case("kv") {
        VALUES
    } else {
        EXPORTED
    }
}
pub const CONVERGED: &str = "/_mgmt/converged/";
/// Host `<h>`'s facts and graph name (JSON), under a lease: this prefix +
/// `<h>`. Read by hosts whose templates call `hosts()`.
pub const FACTS: &str = "/_mgmt/facts/";

/// How long a host's converged key outlives a silent host.
const LEASE_TTL_SECS: i64 = 30;
/// Gets per read transaction: etcd refuses more than 128 operations in one
/// (`--max-txn-ops`); a longer list of prefixes is read in several, at the
/// first one's revision.
const TXN_MAX_GETS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot reach the store at {seeds}: {source}")]
    Connect {
        seeds: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("store request failed: {0}")]
    Store(#[from] etcd_client::Error),
}

impl WorldError {
    /// Whether the store refused us for who we are (no login, a wrong
    /// password, a permission): asking again will not help.
    pub fn is_refusal(&self) -> bool {
        let (WorldError::Connect { source: e, .. } | WorldError::Store(e)) = self;
        let etcd_client::Error::GRpcStatus(status) = e else {
            return false;
        };
        use tonic::Code;
        match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => true,
            Code::InvalidArgument => {
                let m = status.message();
                m.contains("user name is empty") || m.contains("authentication failed")
            }
            _ => false,
        }
    }
}

/// A host's view of the shared world.
#[derive(Clone)]
pub struct World {
    client: Client,
    hostname: String,
    /// Shared by every clone, so a run's collect traffic can be counted.
    counters: Arc<Counters>,
}

/// Store requests made for collecting (see [`World::collect_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectStats {
    /// Read transactions under `/_mgmt/exported/`.
    pub reads: u64,
    /// Watchers created under `/_mgmt/exported/` (one per prefix).
    pub watches: u64,
    /// Watch events received by a [`Follower`].
    pub events: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    watches: AtomicU64,
    events: AtomicU64,
}

impl World {
    /// Connects to the store at `seeds` (URLs like `http://127.0.0.1:2379`).
    pub async fn connect(seeds: &[String], hostname: &str) -> Result<World, WorldError> {
        World::connect_as(seeds, hostname, None).await
    }

    /// As [`World::connect`], logging in as etcd user `login.0` with
    /// password `login.1` if given.
    pub async fn connect_as(
        seeds: &[String],
        hostname: &str,
        login: Option<(&str, &str)>,
    ) -> Result<World, WorldError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((user, password)) = login {
            opts = opts.with_user(user, password);
        }
        let client =
            Client::connect(seeds, Some(opts))
                .await
                .map_err(|source| WorldError::Connect {
                    seeds: seeds.join(","),
                    source,
                })?;
        Ok(World::from_client(client, hostname))
    }

    /// Connects through a tunnel: every connection presents `secret` first.
    pub async fn connect_tunnel(
        url: &str,
        secret: &crate::link::Secret,
        hostname: &str,
    ) -> Result<World, crate::link::LinkError> {
        Ok(World::from_client(
            crate::link::connect_store(url, Some(secret), None).await?,
            hostname,
        ))
    }

    pub fn from_client(client: Client, hostname: &str) -> World {
        World {
            client,
            hostname: hostname.to_owned(),
            counters: Arc::default(),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    fn my_prefix(&self, root: &str) -> String {
        format!("{root}{}/resources/", self.hostname)
    }

    /// Makes the store hold exactly `resources` as this host's exports;
    /// returns how many keys were written or deleted.
    pub async fn export(&mut self, resources: &[&ResourceDecl]) -> Result<usize, WorldError> {
        let prefix = self.my_prefix(EXPORTED);
        // Both prefixes in one request: one round trip, one revision.
        let reads: Vec<TxnOp> = [EXPORTED, VALUES]
            .iter()
            .map(|root| TxnOp::get(self.my_prefix(root), Some(GetOptions::new().with_prefix())))
            .collect();
        let have = self.client.txn(Txn::new().and_then(reads)).await?;
        let mut old: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for op in have.op_responses() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            old.extend(get.kvs().iter().map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            }));
        }
        let mut ops = Vec::new();
        for r in resources {
            let key = format!("{}{}/{}", self.my_prefix(root_of(r.kind)), r.kind, r.name);
            let value = encode(r);
            if old.remove(&key).as_deref() != Some(value.as_bytes()) {
                ops.push(TxnOp::put(key, value, None));
            }
        }
        ops.extend(old.into_keys().map(|k| TxnOp::delete(k, None)));
        let n = ops.len();
        if n > 0 {
            self.client.txn(Txn::new().and_then(ops)).await?;
            tracing::debug!("exported: {n} key(s) changed under {prefix}");
        }
        Ok(n)
    }

    /// Every exported resource matching a `collect` entry, from every host
    /// (this one included), with the entry's pattern applied. One fresh
    /// read of the entries' prefixes; [`Follower`] keeps such a result
    /// current without reading again.
    pub async fn collect(&mut self, collect: &[Collect]) -> Result<Vec<ResourceDecl>, WorldError> {
        if collect.is_empty() {
            return Ok(Vec::new());
        }
        let prefixes = collect::prefixes(collect);
        let (kvs, _) = self
            .read_exported(&prefixes, |k| collect::matches(collect, k))
            .await?;
        Ok(collect::resolve(collect, &kvs))
    }

    /// The keys under `prefixes` that `keep` accepts, with their values,
    /// all read at one revision, which is returned with them.
    async fn read_exported(
        &mut self,
        prefixes: &[String],
        keep: impl Fn(&str) -> bool,
    ) -> Result<(BTreeMap<String, Vec<u8>>, i64), WorldError> {
        let mut out = BTreeMap::new();
        // 0 reads the latest revision; later chunks read the first's.
        let mut rev = 0;
        for chunk in prefixes.chunks(TXN_MAX_GETS) {
            let opts = GetOptions::new().with_prefix().with_revision(rev);
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|p| TxnOp::get(p.as_str(), Some(opts.clone())))
                .collect();
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            let resp = self.client.txn(Txn::new().and_then(ops)).await?;
            if rev == 0 {
                rev = resp.header().map_or(0, |h| h.revision());
            }
            for op in resp.op_responses() {
                let TxnOpResponse::Get(get) = op else {
                    continue;
                };
                for kv in get.kvs() {
                    let key = String::from_utf8_lossy(kv.key());
                    if keep(&key) {
                        out.insert(key.into_owned(), kv.value().to_vec());
                    }
                }
            }
        }
        Ok((out, rev))
    }

    /// One watch stream with a watcher per prefix, from revision `from`.
    async fn watch_exported(
        &mut self,
        prefixes: &[String],
        from: i64,
    ) -> Result<WatchStream, WorldError> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let (first, rest) = prefixes
            .split_first()
            .ok_or_else(|| etcd_client::Error::WatchError("nothing to watch".into()))?;
        self.counters.watches.fetch_add(1, Ordering::Relaxed);
        let mut stream = self
            .client
            .watch(first.as_str(), Some(opts.clone()))
            .await?;
        for p in rest {
            self.counters.watches.fetch_add(1, Ordering::Relaxed);
            stream.watch(p.as_str(), Some(opts.clone())).await?;
        }
        Ok(stream)
    }

    /// What this handle and its clones asked of the store under
    /// `/_mgmt/exported/` for collecting, so far.
    pub fn collect_stats(&self) -> CollectStats {
        let c = &self.counters;
        CollectStats {
            reads: c.reads.load(Ordering::Relaxed),
            watches: c.watches.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }

    /// Every host's published converged state, and the revision it was
    /// read at (to watch from the next one without missing a change).
    pub async fn converged_snapshot(
        &mut self,
    ) -> Result<(BTreeMap<String, bool>, i64), WorldError> {
        let resp = self
            .client
            .get(CONVERGED, Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let map = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some((
                    String::from_utf8_lossy(kv.key())
                        .strip_prefix(CONVERGED)?
                        .to_owned(),
                    kv.value() == b"true",
                ))
            })
            .collect();
        Ok((map, rev))
    }

    /// Changes under `/_mgmt/converged/` after revision `rev`.
    pub async fn watch_converged_from(&mut self, rev: i64) -> Result<WatchStream, WorldError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        Ok(self.client.watch(CONVERGED, Some(opts)).await?)
    }

    /// Publishes this host's converged state on every change of `status`
    /// (`true`/`false` under a lease kept alive here) until `cancel`; then
    /// revokes the lease, which deletes the key, unless `lapse` was set
    /// (see [`converged::Keys::lapse`]). `facts`, if given (the
    /// host's facts and graph name, JSON), is published under the same
    /// lease at `/_mgmt/facts/<host>`, for other hosts' `hosts()` (#20). A
    /// lost lease session is replaced with a back-off (see [`converged`]),
    /// so this only returns when it is cancelled or the engine is gone.
    /// `first_wait`: see [`converged::Keys::first_wait`].
    pub async fn publish_converged(
        self,
        status: watch::Receiver<crate::engine::Status>,
        (facts, first_wait): (Option<String>, Duration),
        (cancel, lapse): (CancellationToken, Arc<std::sync::atomic::AtomicBool>),
    ) {
        let keys = converged::Keys {
            key: format!("{CONVERGED}{}", self.hostname),
            value: (status, converged::converged_value as fn(&_) -> String),
            fixed: facts
                .map(|f| (format!("{FACTS}{}", self.hostname), f))
                .into_iter()
                .collect(),
            first_wait,
            lapse,
        };
        let leases = converged::EtcdLeases(self.client);
        converged::publish(leases, keys, LEASE_TTL_SECS, cancel).await
    }
}

/// Applies a watch response under `/_mgmt/converged/` to `map`; returns
/// the hosts whose state changed.
pub fn apply_converged(map: &mut BTreeMap<String, bool>, resp: &WatchResponse) -> Vec<String> {
    let mut changed = Vec::new();
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Some(host) = String::from_utf8_lossy(kv.key())
            .strip_prefix(CONVERGED)
            .map(str::to_owned)
        else {
            continue;
        };
        let now = match ev.event_type() {
            EventType::Put => Some(kv.value() == b"true"),
            EventType::Delete => None,
        };
        let before = match now {
            Some(v) => map.insert(host.clone(), v),
            None => map.remove(&host),
        };
        if before != now {
            changed.push(host);
        }
    }
    changed
}

fn encode(r: &ResourceDecl) -> String {
    let mut m = r.params.clone();
    let mut meta = Mapping::new();
    meta.insert("noop".into(), r.meta.noop.into());
    meta.insert("retry".into(), r.meta.retry.into());
    meta.insert("delay".into(), r.meta.delay_ms.into());
    m.insert("meta".into(), Value::Mapping(meta));
    serde_yaml_ng::to_string(&m).unwrap_or_default()
}

/// Why an exported value cannot be collected; the caller names the key
/// and the exporting host.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("not a YAML mapping: {0}")]
    NotMapping(#[source] serde_yaml_ng::Error),
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {field:?} should be {expected}")]
    FieldType {
        field: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Landing(#[from] LandingError),
    #[error("{0}")]
    Invalid(#[from] resources::FieldError),
}

/// An exported file whose last path part would not land inside a collect
/// pattern's directory (issue #13).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "its path {path:?} ends in {name:?}, which is not a file name, so it would not land inside the pattern directory {pattern}; refusing it (hint: the exporting host must export a path whose last part is a plain name, not ., .. or empty)"
)]
pub(crate) struct LandingError {
    path: String,
    name: String,
    pattern: String,
}

/// Where a file exported as `path` lands under a collect `pattern`:
/// `<pattern>/<last part of path>`, a trailing `/` kept. The last part
/// must be a plain name (not empty, `.` or `..`, no `/` or NUL), so the
/// result is always directly inside the pattern directory.
pub(crate) fn landing(path: &str, pattern: &str) -> Result<String, LandingError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
    if matches!(name, "" | "." | "..") || name.contains(['/', '\0']) {
        return Err(LandingError {
            path: path.to_owned(),
            name: name.to_owned(),
            pattern: pattern.to_owned(),
        });
    }
    let slash = if path.ends_with('/') { "/" } else { "" };
    Ok(format!("{}/{name}{slash}", pattern.trim_end_matches('/')))
}

/// Decodes an exported value back into a declaration, checking it against
/// the kind as the graph parser would, and applies a collect pattern: a
/// file lands inside the pattern directory, which is created if missing.
fn decode(
    kind: &str,
    name: &str,
    value: &[u8],
    pattern: Option<&str>,
) -> Result<ResourceDecl, DecodeError> {
    let spec = resources::lookup(kind).ok_or_else(|| DecodeError::UnknownKind(kind.into()))?;
    let mut params: Mapping = serde_yaml_ng::from_slice(value).map_err(DecodeError::NotMapping)?;
    let meta = match params.remove("meta") {
        Some(Value::Mapping(m)) => Meta {
            noop: m.get("noop").and_then(Value::as_bool).unwrap_or(false),
            retry: m.get("retry").and_then(Value::as_i64).unwrap_or(0),
            delay_ms: m.get("delay").and_then(Value::as_u64).unwrap_or(0),
            // A condition is the exporter's: the collector applies what it got.
            when: None,
        },
        _ => Meta::default(),
    };
    for (k, v) in &params {
        let key = k.as_str().unwrap_or_default();
        let f = spec
            .fields
            .iter()
            .find(|f| f.name == key)
            .ok_or_else(|| DecodeError::UnknownField(key.into()))?;
        if !f.ty.fits(v) {
            return Err(DecodeError::FieldType {
                field: key.into(),
                expected: f.ty.describe(),
            });
        }
    }
    if let (Some(dir), "file") = (pattern, spec.kind) {
        // mgmt's file pattern: the directory the collected file lands in.
        let path = params.get("path").and_then(Value::as_str).unwrap_or(name);
        let landed = landing(path, dir)?;
        params.insert("path".into(), landed.into());
        params.insert("parents".into(), true.into());
    }
    (spec.build)(name, &params)?;
    Ok(ResourceDecl {
        kind: spec.kind,
        name: name.to_owned(),
        exported: false,
        params,
        meta,
        pos: Pos::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_pattern_sets_the_directory() {
        let mut params = Mapping::new();
        params.insert("path".into(), "/tmp/x/file2a".into());
        params.insert("content".into(), "hi\n".into());
        let decl = ResourceDecl {
            kind: "file",
            name: "file2a".into(),
            exported: true,
            params,
            meta: Meta::default(),
            pos: Pos::default(),
        };
        let back = decode("file", "file2a", encode(&decl).as_bytes(), Some("/srv/")).unwrap();
        assert_eq!(
            back.params.get("path").and_then(Value::as_str),
            Some("/srv/file2a")
        );
        assert_eq!(
            back.params.get("content").and_then(Value::as_str),
            Some("hi\n")
        );
        assert!(!back.exported);
        assert_eq!(
            back.params.get("parents").and_then(Value::as_bool),
            Some(true),
            "a missing pattern directory is created"
        );
    }

    // See: #13 (an export ending in /../ landed on the pattern's parent)
    #[test]
    fn landing_stays_inside_the_pattern_directory() {
        assert_eq!(landing("/tmp/x/file2a", "/srv/").unwrap(), "/srv/file2a");
        assert_eq!(landing("/tmp/x/sub/", "/srv").unwrap(), "/srv/sub/");
        assert_eq!(landing("relative", "/srv/").unwrap(), "/srv/relative");
        assert_eq!(landing("/a/..b", "/srv/").unwrap(), "/srv/..b");
        for bad in [
            "/tmp/../", "/tmp/..", "..", "/tmp/.", "/tmp/./", ".", "/", "", "//", "/a//", "/a/\0",
        ] {
            let e = landing(bad, "/srv/").expect_err(bad);
            assert_eq!(e.path, bad);
            assert!(
                e.to_string()
                    .contains("would not land inside the pattern directory /srv/"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_bad_landing_is_refused_with_the_path() {
        let value = b"path: /tmp/../\nmode: \"0777\"\nowner: nobody\n";
        let e = decode("file", "evil", value, Some("/srv/in/")).expect_err("refused");
        assert!(matches!(e, DecodeError::Landing(_)), "{e}");
        assert!(e.to_string().contains("\"/tmp/../\""), "{e}");
        // Without a pattern the exported path is used as it is.
        let d = decode("file", "evil", b"path: /tmp/x\n", None).unwrap();
        assert_eq!(d.params.get("path").and_then(Value::as_str), Some("/tmp/x"));
        assert!(d.params.get("parents").is_none());
    }
}
