//! A `known_hosts` file parsed once and looked up by host name.
//!
//! russh's own check reads and parses the whole file on every connection.
//! With one entry per host that is quadratic in the fleet: at 10,000 hosts
//! it was the largest super-linear cost of a run (about 15% of the
//! initiator's CPU, `perf record`). Here each file is parsed once (lines by
//! `ssh-key`'s `known_hosts` parser) into a map from plain names, plus a
//! list of hashed (`|1|salt|hash`) entries that every lookup still checks
//! (as OpenSSH does). The parsed file is reused while its size, mtime and
//! inode are unchanged; an append of our own ([`note_learned`]) updates it
//! in place instead of forcing a new parse.
//!
//! Matching is russh's: a host is `name` (port 22) or `[name]:port`,
//! compared exactly with each comma-separated pattern (no wildcards, no
//! negation). `@cert-authority` lines never match. `@revoked` lines are kept
//! apart ([`Index::revoked`]): their key is revoked for every host, whatever
//! the line's host patterns (OpenSSH matches the patterns, usually `*`; a
//! key that was revoked is not to be trusted anywhere, and it is stricter
//! than exact names without wildcards would be). Line numbers are the
//! file's own, 1-based.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::PublicKey;
use sha1::Sha1;

/// One recorded key: its line and the key, or why the line did not parse.
pub(crate) type Recorded = (usize, Result<PublicKey, String>);

/// What identifies one version of the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ino: meta.ino(),
    }
}

/// One parsed version of a file.
#[derive(Default, Debug, Clone)]
pub(crate) struct Index {
    plain: HashMap<String, Vec<Recorded>>,
    hashed: Vec<(Vec<u8>, [u8; 20], Recorded)>,
    /// `@revoked` keys with their lines.
    revoked: Vec<(usize, PublicKey)>,
    /// The first `@revoked` line that does not parse, and why.
    broken_revoked: Option<(usize, String)>,
    /// Lines in the file, so that an append knows its own number.
    lines: usize,
}

impl Index {
    /// Parses `text`; a line that does not parse is kept under the names
    /// its first field gives, so that only a lookup of those names fails.
    pub fn parse(text: &str) -> Index {
        let mut ix = Index {
            lines: text.lines().count(),
            ..Index::default()
        };
        for (i, line) in text.lines().enumerate() {
            let body = line.split('#').next().unwrap_or("").trim();
            let marker = body
                .split_whitespace()
                .next()
                .filter(|w| w.starts_with('@'));
            if body.is_empty() || marker.is_some_and(|m| m != "@revoked") {
                continue;
            }
            match body.parse::<Entry>() {
                Ok(e) => match e.marker() {
                    None => ix.add(e.host_patterns(), (i + 1, Ok(e.public_key().clone()))),
                    Some(Marker::Revoked) => ix.revoked.push((i + 1, e.public_key().clone())),
                    Some(_) => {}
                },
                // Which key a broken @revoked line revokes cannot be told:
                // it fails every check until it is fixed.
                Err(err) if marker.is_some() => {
                    ix.broken_revoked.get_or_insert((i + 1, err.to_string()));
                }
                Err(err) => {
                    let field = body.split_whitespace().next().unwrap_or("");
                    if let Ok(p) = field.parse::<HostPatterns>() {
                        ix.add(&p, (i + 1, Err(err.to_string())));
                    }
                }
            }
        }
        ix
    }

    fn add(&mut self, patterns: &HostPatterns, rec: Recorded) {
        match patterns {
            HostPatterns::Patterns(names) => {
                for n in names {
                    self.plain.entry(n.clone()).or_default().push(rec.clone());
                }
            }
            HostPatterns::HashedName { salt, hash } => {
                self.hashed.push((salt.clone(), *hash, rec));
            }
        }
    }

    /// The first `@revoked` line that holds `key`, if any.
    pub fn revoked(&self, key: &PublicKey) -> Option<usize> {
        self.revoked
            .iter()
            .find(|(_, k)| k.key_data() == key.key_data())
            .map(|(line, _)| *line)
    }

    /// The first `@revoked` line that does not parse (its line, why).
    pub fn broken_revoked(&self) -> Option<&(usize, String)> {
        self.broken_revoked.as_ref()
    }

    /// Every `@revoked` key, in file order.
    pub fn revoked_keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.revoked.iter().map(|(_, k)| k)
    }

    /// The keys recorded for `name` (`host` or `[host]:port`), in file order.
    pub fn lookup(&self, name: &str) -> Vec<Recorded> {
        let mut out: Vec<Recorded> = self.plain.get(name).cloned().unwrap_or_default();
        for (salt, hash, rec) in &self.hashed {
            let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                continue;
            };
            if mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok() {
                out.push(rec.clone());
            }
        }
        out.sort_by_key(|(line, _)| *line);
        out
    }
}

/// Parsed files by path, each with the version it was parsed from.
type Files = HashMap<PathBuf, (Stamp, Arc<Index>)>;

static CACHE: Mutex<Option<Files>> = Mutex::new(None);

/// The parsed file at `path` (empty if it does not exist), parsed again
/// only when it changed.
pub(crate) fn index_for(path: &Path) -> std::io::Result<Arc<Index>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
        Err(e) => return Err(e),
    };
    let now = stamp(&meta);
    if let Some((s, ix)) = cache().as_ref().and_then(|c| c.get(path)) {
        if *s == now {
            return Ok(ix.clone());
        }
    }
    let text = std::fs::read_to_string(path)?;
    // Stamp what was read: a write racing the read shows on the next call.
    let read_as = std::fs::metadata(path).map(|m| stamp(&m)).unwrap_or(now);
    let ix = Arc::new(Index::parse(&text));
    cache()
        .get_or_insert_with(HashMap::new)
        .insert(path.to_owned(), (read_as, ix.clone()));
    Ok(ix)
}

/// Records that `name key` was just appended to `path` by us, so the next
/// lookup does not parse the file again. The caller holds the lock that
/// serialises appends; if anything else changed the file meanwhile, the
/// entry is dropped and the next lookup parses it.
pub(crate) fn note_learned(path: &Path, before: Option<u64>, name: &str, key: &PublicKey) {
    let mut cache = cache();
    let Some(map) = cache.as_mut() else { return };
    let Some((s, ix)) = map.get_mut(path) else {
        return;
    };
    let after = std::fs::metadata(path).map(|m| stamp(&m));
    match after {
        Ok(after) if before == Some(s.len) && after.ino == s.ino => {
            // In place unless a lookup still holds this version.
            let next = Arc::make_mut(ix);
            next.lines += 1;
            let line = next.lines;
            next.plain
                .entry(name.to_owned())
                .or_default()
                .push((line, Ok(key.clone())));
            *s = after;
        }
        _ => {
            map.remove(path);
        }
    }
}

/// The size of `path` now, for [`note_learned`].
pub(crate) fn len_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn cache() -> std::sync::MutexGuard<'static, Option<Files>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Two ed25519 keys for tests of host-key checks.
#[cfg(test)]
pub(crate) mod test_keys {
    use russh::keys::PublicKey;

    pub const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    pub const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    pub fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).expect("test key")
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::{key, KEY_A, KEY_B};
    use super::*;

    fn lines(recs: &[Recorded]) -> Vec<usize> {
        recs.iter().map(|(l, _)| *l).collect()
    }

    #[test]
    fn plain_hashed_and_listed_names_with_their_lines() {
        // "web1" hashed as `ssh-keygen -H` does, with the salt
        // "saltsaltsaltsaltsalt" (HMAC-SHA1 computed with Python's hmac).
        let hashed = "|1|c2FsdHNhbHRzYWx0c2FsdHNhbHQ=|auZxSkHKkwkEF/6WAlRAwhwHkwg=";
        let text = format!(
            "# comment\n\
             web1,[web2]:2222 ssh-ed25519 {KEY_A}\n\
             \n\
             {hashed} ssh-ed25519 {KEY_B}\n\
             @revoked web1 ssh-ed25519 {KEY_B}\n\
             web3 ssh-ed25519 not-base64\n\
             web1 ssh-ed25519 {KEY_B} a comment\n"
        );
        let ix = Index::parse(&text);
        assert_eq!(lines(&ix.lookup("web1")), vec![2, 4, 7]);
        // The revoked key is kept apart, for every host.
        assert_eq!(ix.revoked(&key(KEY_B)), Some(5));
        assert_eq!(ix.revoked(&key(KEY_A)), None);
        assert!(ix.broken_revoked().is_none());
        assert_eq!(ix.lookup("web1")[1].1.as_ref().ok(), Some(&key(KEY_B)));
        assert_eq!(lines(&ix.lookup("[web2]:2222")), vec![2]);
        assert!(ix.lookup("web2").is_empty(), "the port is part of the name");
        assert!(ix.lookup("web").is_empty(), "names match exactly");
        let bad = ix.lookup("web3");
        assert_eq!(lines(&bad), vec![6]);
        assert!(
            bad[0].1.is_err(),
            "an unparsable line fails its own host only"
        );
    }

    #[test]
    fn a_changed_file_is_parsed_again_and_our_appends_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        assert!(index_for(&path)
            .expect("missing is empty")
            .lookup("a")
            .is_empty());
        std::fs::write(&path, format!("a ssh-ed25519 {KEY_A}\n")).expect("write");
        let first = index_for(&path).expect("index");
        assert_eq!(lines(&first.lookup("a")), vec![1]);
        assert!(Arc::ptr_eq(&first, &index_for(&path).expect("again")));
        // An append of ours: the cached index grows without a new parse.
        let before = len_of(&path);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, format!("b ssh-ed25519 {KEY_B}\n").as_bytes())
            .expect("append");
        note_learned(&path, before, "b", &key(KEY_B));
        assert_eq!(
            lines(&index_for(&path).expect("index").lookup("b")),
            vec![2]
        );
        // Someone else rewrites the file (another length): parsed again.
        let text = format!("c ssh-ed25519 {KEY_A}\n\nd ssh-ed25519 {KEY_B}\n");
        std::fs::write(&path, text).expect("rewrite");
        let ix = index_for(&path).expect("index");
        assert!(ix.lookup("a").is_empty());
        assert_eq!(lines(&ix.lookup("d")), vec![3]);
    }
}
