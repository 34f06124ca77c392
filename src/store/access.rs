//! Who may write what. A connection accepted on behalf of a host (a tunnel
//! from that host) carries a [`Speaker`]: it speaks for that host, or for a
//! gateway and the hosts behind it, and may write only their keys,
//! `/_mgmt/exported/<host>/…`, `/_mgmt/values/<host>/…`,
//! `/_mgmt/converged/<host>` and `/_mgmt/facts/<host>`; compaction and
//! the maintenance calls that change state are refused to it, and so are
//! revoking and renewing a lease another speaker granted. Anything else
//! answers etcd's `permission denied`, and the store logs who tried.
//!
//! Reads are limited to what the hosts need: their own keys, every host's
//! converged key (a gateway follows its subtree's), and the exported keys
//! their graphs' `collect:` selects ([`Speaker::allow_reads`], which the
//! fleet extends when a graph is edited live; it never narrows during a
//! run, so a host still on its old graph is not cut off). A connection
//! without a speaker (this process's own client, a `--client-urls`
//! listener) is not restricted here.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use etcd_client::proto::{PbTxnRequest, PbTxnRequestOp};

/// The exported resources of host `<h>` live under this prefix + `<h>/`.
pub const EXPORTED: &str = "/_mgmt/exported/";
/// The exchanged values (`kv`) of host `<h>` live under this prefix + `<h>/`.
pub const VALUES: &str = "/_mgmt/values/";
/// Host `<h>`'s converged key is this prefix + `<h>`.
pub const CONVERGED: &str = "/_mgmt/converged/";
/// Host `<h>`'s facts key is this prefix + `<h>` (#20); others read it only
/// when their templates call `hosts()`.
pub const FACTS: &str = "/_mgmt/facts/";

/// Whom a connection speaks for.
#[derive(Debug)]
pub struct Speaker {
    /// Who holds the connection (a host, or a gateway), for the log.
    pub name: String,
    /// The hosts whose keys it may write.
    pub hosts: BTreeSet<String>,
    /// Prefixes it may read besides its own keys and the converged keys.
    reads: RwLock<BTreeSet<String>>,
    /// Watches open on its connections, for its quota.
    watches: AtomicUsize,
}

impl Speaker {
    /// A connection that speaks for `name` and, for a gateway, `behind`.
    pub fn new(name: &str, behind: impl IntoIterator<Item = String>) -> Arc<Speaker> {
        let mut hosts: BTreeSet<String> = behind.into_iter().collect();
        hosts.insert(name.to_owned());
        Arc::new(Speaker {
            name: name.to_owned(),
            hosts,
            reads: RwLock::new(BTreeSet::new()),
            watches: AtomicUsize::new(0),
        })
    }

    /// Watches open on its connections.
    pub(crate) fn watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// Counts `n` watches opened (closed, when negative).
    pub(crate) fn count_watches(&self, n: i64) {
        if n >= 0 {
            self.watches.fetch_add(n as usize, Ordering::Relaxed);
        } else {
            self.watches
                .fetch_sub(n.unsigned_abs() as usize, Ordering::Relaxed);
        }
    }

    /// Lets it also read every key under each of `prefixes` (what its
    /// graphs' `collect:` selects).
    pub fn allow_reads(&self, prefixes: impl IntoIterator<Item = String>) {
        let mut reads = self.reads.write().unwrap_or_else(|p| p.into_inner());
        reads.extend(prefixes);
    }

    /// Whether it may read the keys in `[key, range_end)`.
    pub fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        if self.may_write(key, range_end) {
            return true;
        }
        if within(key, range_end, CONVERGED.as_bytes()) {
            return true;
        }
        let reads = self.reads.read().unwrap_or_else(|p| p.into_inner());
        let allowed = reads.iter().any(|p| within(key, range_end, p.as_bytes()));
        allowed
    }

    /// Whether it may write (put, or delete) the keys in `[key, range_end)`
    /// (`range_end` empty: `key` alone), as etcd ranges are given.
    pub fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        self.hosts.iter().any(|h| {
            if range_end.is_empty()
                && (key == format!("{CONVERGED}{h}") || key == format!("{FACTS}{h}"))
            {
                return true;
            }
            [EXPORTED, VALUES].iter().any(|root| {
                let own = format!("{root}{h}/");
                // A range must lie inside one of the host's prefixes.
                key.starts_with(&own)
                    && (range_end.is_empty()
                        || (range_end != b"\0"
                            && range_end <= prefix_end(own.as_bytes()).as_slice()))
            })
        })
    }

    /// The key ranges `[from, to)` whose keys are its hosts': what counts
    /// against their quota.
    pub(crate) fn owned_ranges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for h in &self.hosts {
            for root in [EXPORTED, VALUES] {
                let own = format!("{root}{h}/").into_bytes();
                let end = prefix_end(&own);
                out.push((own, end));
            }
            for root in [CONVERGED, FACTS] {
                let key = format!("{root}{h}").into_bytes();
                let mut after = key.clone();
                after.push(0);
                out.push((key, after));
            }
        }
        out
    }
}

/// What a connection or a user may touch, key range by key range. A
/// [`Speaker`] (a host's tunnel) and a user authenticated with a token
/// (`super::auth`) are the two kinds; a request with neither is not
/// restricted.
pub(crate) trait Guard: Send + Sync {
    /// Who it is, for the log.
    fn who(&self) -> String;
    /// Whether it may read the keys in `[key, range_end)`.
    fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool;
    /// Whether it may write (put, or delete) the keys in `[key, range_end)`.
    fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool;

    /// The first key of `txn` (its compares and ranges, which it must be
    /// able to read, and its puts and deletes, which it must be able to
    /// write, nested ones included) that it may not touch, if any.
    fn forbidden_in_txn<'a>(&self, txn: &'a PbTxnRequest) -> Option<&'a [u8]> {
        let compared = txn
            .compare
            .iter()
            .find(|c| !self.may_read(&c.key, &c.range_end))
            .map(|c| c.key.as_slice());
        compared.or_else(|| {
            txn.success
                .iter()
                .chain(txn.failure.iter())
                .find_map(|op| self.forbidden_in_op(op))
        })
    }

    /// The key of `op` it may not touch, if any; a put or delete that asks
    /// for the previous values needs the right to read them too.
    fn forbidden_in_op<'a>(&self, op: &'a PbTxnRequestOp) -> Option<&'a [u8]> {
        use etcd_client::proto::PbTxnOpRequest as R;
        match op.request.as_ref()? {
            R::RequestPut(p) => (!self.may_write(&p.key, &[])
                || (p.prev_kv && !self.may_read(&p.key, &[])))
            .then_some(p.key.as_slice()),
            R::RequestDeleteRange(d) => (!self.may_write(&d.key, &d.range_end)
                || (d.prev_kv && !self.may_read(&d.key, &d.range_end)))
            .then_some(d.key.as_slice()),
            R::RequestTxn(t) => self.forbidden_in_txn(t),
            R::RequestRange(r) => {
                (!self.may_read(&r.key, &r.range_end)).then_some(r.key.as_slice())
            }
        }
    }
}

impl Guard for Speaker {
    fn who(&self) -> String {
        self.name.clone()
    }
    fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        Speaker::may_read(self, key, range_end)
    }
    fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        Speaker::may_write(self, key, range_end)
    }
}

/// Whether `[key, range_end)` (`range_end` empty: `key` alone) lies under
/// `prefix`.
fn within(key: &[u8], range_end: &[u8], prefix: &[u8]) -> bool {
    key.starts_with(prefix)
        && (range_end.is_empty()
            || (range_end != b"\0" && range_end <= prefix_end(prefix).as_slice()))
}

/// The smallest key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a connection's requests carry (tonic hands every request the
/// [`ConnectInfo`](tonic::transport::server::Connected::ConnectInfo) of the
/// connection it came on).
#[derive(Debug, Clone, Default)]
pub struct Peer(pub Option<Arc<Speaker>>);

/// Logs that `who` tried to `what` `key`, which it may not.
pub(crate) fn log_denied(who: &dyn Guard, what: &str, key: &[u8]) {
    let key: String = String::from_utf8_lossy(key).chars().take(200).collect();
    tracing::warn!(
        "store: {} tried to {what} {key:?}, which it may not; refused",
        who.who()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_writes_only_its_own_keys() {
        let web1 = Speaker::new("web1", []);
        assert!(web1.may_write(b"/_mgmt/exported/web1/resources/file/a", b""));
        assert!(web1.may_write(b"/_mgmt/converged/web1", b""));
        assert!(!web1.may_write(b"/_mgmt/exported/web2/resources/file/a", b""));
        assert!(
            !web1.may_write(b"/_mgmt/exported/web10/x", b""),
            "a name is not a prefix"
        );
        assert!(!web1.may_write(b"/_mgmt/converged/web2", b""));
        assert!(!web1.may_write(b"/_mgmt/converged/web1x", b""));
        assert!(web1.may_write(b"/_mgmt/facts/web1", b""));
        assert!(!web1.may_write(b"/_mgmt/facts/web2", b""));
        assert!(!web1.may_write(b"/_mgmt/facts/", b"/_mgmt/facts0"));
        assert!(!web1.may_read(b"/_mgmt/facts/", b"/_mgmt/facts0"));
        assert!(!web1.may_write(b"/other", b""));
        // Its exchanged values, not another host's.
        assert!(web1.may_write(b"/_mgmt/values/web1/resources/kv/peer", b""));
        assert!(!web1.may_write(b"/_mgmt/values/web2/resources/kv/peer", b""));
        assert!(!web1.may_write(b"/_mgmt/values/", b"/_mgmt/values0"));
        // Ranges: its own prefix, not beyond.
        assert!(web1.may_write(b"/_mgmt/exported/web1/", b"/_mgmt/exported/web10"));
        assert!(!web1.may_write(b"/_mgmt/exported/web1/", b"/_mgmt/exported/web2"));
        assert!(!web1.may_write(b"/_mgmt/exported/web1/", b"\0"));
        assert!(!web1.may_write(b"/_mgmt/exported/", b"/_mgmt/exported0"));
    }

    #[test]
    fn reads_are_its_own_keys_the_converged_keys_and_what_it_collects() {
        let web1 = Speaker::new("web1", []);
        assert!(web1.may_read(b"/_mgmt/exported/web1/resources/file/a", b""));
        assert!(web1.may_read(b"/_mgmt/converged/", b"/_mgmt/converged0"));
        assert!(!web1.may_read(b"/_mgmt/exported/db1/resources/file/a", b""));
        assert!(!web1.may_read(b"/_mgmt/exported/", b"/_mgmt/exported0"));
        assert!(!web1.may_read(b"/other", b""));
        // collect: hostname: "db*" reads under /_mgmt/exported/db.
        web1.allow_reads(["/_mgmt/exported/db".to_string()]);
        assert!(web1.may_read(b"/_mgmt/exported/db1/resources/file/a", b""));
        assert!(web1.may_read(b"/_mgmt/exported/db", b"/_mgmt/exported/dc"));
        assert!(!web1.may_read(b"/_mgmt/exported/db", b"\0"));
        assert!(!web1.may_read(b"/_mgmt/exported/web2/x", b""));
    }

    #[test]
    fn a_gateway_speaks_for_its_subtree_only() {
        let gw = Speaker::new("gw", ["web1".to_string(), "web2".to_string()]);
        assert!(gw.may_write(b"/_mgmt/converged/gw", b""));
        assert!(gw.may_write(b"/_mgmt/exported/web2/resources/exec/x", b""));
        assert!(!gw.may_write(b"/_mgmt/exported/db1/resources/exec/x", b""));
    }

    #[test]
    fn every_write_of_a_txn_is_checked_nested_ones_too() {
        use etcd_client::proto::{PbPutRequest, PbTxnOpRequest as R};
        let put = |k: &str| PbTxnRequestOp {
            request: Some(R::RequestPut(PbPutRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })),
        };
        let web1 = Speaker::new("web1", []);
        let inner = PbTxnRequest {
            failure: vec![put("/_mgmt/converged/web2")],
            ..Default::default()
        };
        let txn = PbTxnRequest {
            success: vec![
                put("/_mgmt/converged/web1"),
                PbTxnRequestOp {
                    request: Some(R::RequestTxn(inner)),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            web1.forbidden_in_txn(&txn),
            Some(&b"/_mgmt/converged/web2"[..])
        );
    }
}
