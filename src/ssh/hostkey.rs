//! Server host key verification against a `known_hosts` file.
//!
//! The lookup is russh's rule (`[host]:port` entries for ports other than
//! 22, hashed `|1|` entries, several keys per host) over the file parsed
//! once ([`super::known_index`]). This module adds the policy
//! ([`HostKeyPolicy`]), errors that carry the SHA-256 fingerprint, the exact
//! `file:line` of a conflicting entry and what to do, and serialised
//! appends for trust-on-first-use. A key on an `@revoked` line is refused
//! under every policy, `off` included, and never learned (#13). It does not
//! handle `@cert-authority` lines (they never match).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};

use super::{known_index, Hint};

/// What to do with a key that known_hosts does not vouch for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Unknown and changed keys are refused (the default).
    #[default]
    Strict,
    /// Unknown keys are recorded and accepted; changed keys are refused
    /// (OpenSSH's `StrictHostKeyChecking accept-new`).
    AcceptNew,
    /// Nothing is checked but `@revoked` lines. Only for throw-away test hosts.
    Off,
}

/// The known_hosts file and the policy to apply with it.
#[derive(Clone, Debug)]
pub struct KnownHosts {
    /// The file; it need not exist (then every key is unknown).
    pub path: PathBuf,
    /// See [`HostKeyPolicy`].
    pub policy: HostKeyPolicy,
}

impl KnownHosts {
    /// `~/.ssh/known_hosts` with the given policy.
    pub fn user_default(policy: HostKeyPolicy) -> Option<Self> {
        std::env::home_dir().map(|h| Self {
            path: h.join(".ssh").join("known_hosts"),
            policy,
        })
    }
}

/// The known_hosts lines `file` holds for `targets`, written afresh (plain
/// `host` or `[host]:port` patterns, one key a line, duplicates dropped):
/// what a gateway checks those hosts against. Hashed entries are found as
/// well; targets with no entry are left out (the gateway's policy decides).
/// Every `@revoked` key of `file` follows as `@revoked * KEY`, so that the
/// gateway refuses it too.
pub fn entries_for(file: &Path, targets: &[super::Target]) -> String {
    let mut out: Vec<String> = Vec::new();
    let Ok(index) = known_index::index_for(file) else {
        return String::new();
    };
    for t in targets {
        let keys = index.lookup(&entry_name(&t.host, t.port));
        let pattern = if t.port == 22 {
            t.host.clone()
        } else {
            format!("[{}]:{}", t.host, t.port)
        };
        for (_, key) in keys {
            let Ok(openssh) = key
                .map_err(|_| ())
                .and_then(|k| k.to_openssh().map_err(|_| ()))
            else {
                continue;
            };
            let line = format!("{pattern} {openssh}");
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    for key in index.revoked_keys() {
        if let Ok(openssh) = key.to_openssh() {
            let line = format!("@revoked * {openssh}");
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// How a key was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is in known_hosts.
    Known,
    /// It was unknown and has just been recorded ([`HostKeyPolicy::AcceptNew`]).
    Learned,
    /// Checking is off.
    Unchecked,
}

/// Why a host key was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The host is not in the file.
    #[error("host key {fingerprint} ({algorithm}) is not in {path}; refusing to connect", path = .path.display())]
    Unknown {
        /// `SHA256:...` of the key the server offered.
        fingerprint: String,
        /// e.g. `ssh-ed25519`.
        algorithm: String,
        /// The known_hosts file.
        path: PathBuf,
        /// `[host]:port` or `host`, as it would be written in the file.
        entry: String,
    },
    /// The file has a different key of the same type for this host.
    #[error("host key does not match {path}:{line} (the server offers {fingerprint}); refusing to connect", path = .path.display())]
    Changed {
        /// `SHA256:...` of the key the server offered.
        fingerprint: String,
        /// The known_hosts file.
        path: PathBuf,
        /// 1-based line of the conflicting entry.
        line: usize,
        /// `[host]:port` or `host`.
        entry: String,
    },
    /// The key is on an `@revoked` line.
    #[error("host key {fingerprint} is revoked at {path}:{line} (@revoked); refusing to connect", path = .path.display())]
    Revoked {
        /// `SHA256:...` of the key the server offered.
        fingerprint: String,
        /// The known_hosts file.
        path: PathBuf,
        /// 1-based line of the `@revoked` entry.
        line: usize,
        /// `[host]:port` or `host`.
        entry: String,
    },
    /// The file could not be read, or the host's own line does not parse.
    #[error("cannot check the host key against {path}", path = .path.display())]
    Read {
        /// The known_hosts file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// AcceptNew could not append to the file.
    #[error("cannot record the host key in {path}", path = .path.display())]
    Learn {
        /// The known_hosts file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: russh::keys::Error,
    },
    /// A key a gateway reported learning was not recorded.
    #[error("a gateway reported the host key {line:?}; not recorded: {why}")]
    Reported {
        /// The line as reported (at most 200 characters).
        line: String,
        /// Why it was refused.
        why: String,
    },
}

impl Hint for HostKeyError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Unknown { entry, path, .. } => format!(
                "compare the fingerprint with the one the host's administrator gives you \
                 (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host), then add it to {} \
                 or trust it on first use with the accept-new policy; entry name: {entry}",
                path.display()
            ),
            Self::Changed { entry, path, .. } => format!(
                "if the host was rebuilt, remove that line (ssh-keygen -R '{entry}' -f {}) and retry; \
                 otherwise someone may be intercepting the connection",
                path.display()
            ),
            Self::Revoked { entry, path, line, .. } => format!(
                "a revoked key is never trusted again: the host may be compromised, or its key \
                 was replaced; get its current key from the host's administrator \
                 (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host) and record it \
                 for {entry} in {}; remove line {line} only if the revocation was a mistake",
                path.display()
            ),
            Self::Read { .. } => "fix or move the known_hosts file".into(),
            Self::Learn { .. } => "check that the known_hosts file and its directory are writable".into(),
            Self::Reported { .. } => {
                "the gateway may be compromised; check the host's key with its administrator".into()
            }
        })
    }
}

/// Serialises appends so that parallel first connections never interleave
/// their lines (std mutex: the critical section is blocking file I/O, no await).
static LEARN_LOCK: Mutex<()> = Mutex::new(());

/// The name of `host:port` as known_hosts writes it.
pub fn entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The known_hosts line for `key` of `host:port`, as it is appended.
pub fn known_line(host: &str, port: u16, key: &PublicKey) -> Option<String> {
    let key = key.to_openssh().ok()?;
    Some(format!("{} {key}", entry_name(host, port)))
}

/// Records a key a gateway learned under `AcceptNew` for a target behind it
/// (`line` as [`known_line`] writes it) in `known`'s file, through the same
/// check as a key learned here: a revoked or a changed key is refused, a
/// known one is left alone. `behind` lists the entry names the gateway may
/// speak for; a line naming anything else is refused.
pub fn learn_reported(
    known: &KnownHosts,
    line: &str,
    behind: &[String],
) -> Result<Verdict, HostKeyError> {
    let refused = |why: &str| HostKeyError::Reported {
        line: line.chars().take(200).collect(),
        why: why.to_owned(),
    };
    let (entry, key) = line
        .split_once(' ')
        .ok_or_else(|| refused("not a known_hosts line"))?;
    if !behind.iter().any(|b| b == entry) {
        return Err(refused("it names a host that is not behind this gateway"));
    }
    let key = PublicKey::from_openssh(key).map_err(|_| refused("the key does not parse"))?;
    let (host, port) = match entry.strip_prefix('[').and_then(|e| e.split_once("]:")) {
        Some((h, p)) => (h, p.parse().map_err(|_| refused("bad port"))?),
        None => (entry, 22),
    };
    let learn = KnownHosts {
        path: known.path.clone(),
        policy: HostKeyPolicy::AcceptNew,
    };
    verify(&learn, host, port, &key)
}

/// The `SHA256:...` fingerprint of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Check `key` for `host:port` under `known`'s policy.
pub fn verify(
    known: &KnownHosts,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<Verdict, HostKeyError> {
    refuse_revoked(known, host, port, key)?;
    if known.policy == HostKeyPolicy::Off {
        tracing::warn!(
            host,
            port,
            fingerprint = %fingerprint(key),
            "host key checking is off; accepting the key unchecked"
        );
        return Ok(Verdict::Unchecked);
    }
    let path = &known.path;
    match check(path, host, port, key)? {
        true => Ok(Verdict::Known),
        false if known.policy == HostKeyPolicy::AcceptNew => {
            let _guard = LEARN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            // Another connection to the same host may have learned it while
            // we waited: check again under the lock.
            if check(path, host, port, key)? {
                return Ok(Verdict::Known);
            }
            let before = known_index::len_of(path);
            russh::keys::known_hosts::learn_known_hosts_path(host, port, key, path).map_err(
                |source| HostKeyError::Learn {
                    path: path.clone(),
                    source,
                },
            )?;
            known_index::note_learned(path, before, &entry_name(host, port), key);
            tracing::info!(host, port, fingerprint = %fingerprint(key), path = %path.display(), "recorded new host key");
            Ok(Verdict::Learned)
        }
        false => Err(HostKeyError::Unknown {
            fingerprint: fingerprint(key),
            algorithm: key.algorithm().to_string(),
            path: path.clone(),
            entry: entry_name(host, port),
        }),
    }
}

/// Refuses `key` if `known`'s file revokes it. A file that cannot be read,
/// or a broken `@revoked` line, is an error too, except under `Off`, which
/// has never failed on the file (it still refuses a key it can see revoked).
fn refuse_revoked(
    known: &KnownHosts,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<(), HostKeyError> {
    let path = &known.path;
    let lenient = known.policy == HostKeyPolicy::Off;
    let read_err = |source: Box<dyn std::error::Error + Send + Sync>| HostKeyError::Read {
        path: path.clone(),
        source,
    };
    let index = match known_index::index_for(path) {
        Ok(ix) => ix,
        Err(_) if lenient => return Ok(()),
        Err(e) => return Err(read_err(Box::new(e))),
    };
    if let Some(line) = index.revoked(key) {
        return Err(HostKeyError::Revoked {
            fingerprint: fingerprint(key),
            path: path.clone(),
            line,
            entry: entry_name(host, port),
        });
    }
    match index.broken_revoked() {
        Some((line, why)) if !lenient => Err(read_err(
            format!("line {line}: an @revoked line that does not parse: {why}").into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `path` vouches for `key` (russh's rule: a recorded key of the
/// same type that differs is a change, even if another line matches).
fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<bool, HostKeyError> {
    let read_err = |source: Box<dyn std::error::Error + Send + Sync>| HostKeyError::Read {
        path: path.to_owned(),
        source,
    };
    let index = known_index::index_for(path).map_err(|e| read_err(Box::new(e)))?;
    let mut known = false;
    for (line, recorded) in index.lookup(&entry_name(host, port)) {
        let recorded = recorded.map_err(|e| read_err(format!("line {line}: {e}").into()))?;
        if recorded.algorithm() != key.algorithm() {
            continue;
        }
        if recorded != *key {
            return Err(HostKeyError::Changed {
                fingerprint: fingerprint(key),
                path: path.to_owned(),
                line,
                entry: entry_name(host, port),
            });
        }
        known = true;
    }
    Ok(known)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Known => "known",
            Self::Learned => "learned",
            Self::Unchecked => "unchecked",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::known_index::test_keys::{key, KEY_A, KEY_B};
    use super::*;

    #[test]
    fn changed_key_names_the_real_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!("# comment\n# another\n[h]:2222 ssh-ed25519 {KEY_A}\n"),
        )
        .expect("write");
        let known = KnownHosts {
            path: path.clone(),
            policy: HostKeyPolicy::AcceptNew,
        };
        assert_eq!(
            verify(&known, "h", 2222, &key(KEY_A)).expect("known"),
            Verdict::Known
        );
        let err = verify(&known, "h", 2222, &key(KEY_B)).expect_err("changed");
        let msg = err.to_string();
        assert!(msg.contains("known_hosts:3"), "{msg}");
        assert!(msg.contains("SHA256:"), "{msg}");
        assert!(err
            .hint()
            .unwrap_or_default()
            .contains("ssh-keygen -R '[h]:2222'"));
    }

    #[test]
    fn strict_refuses_unknown_and_accept_new_learns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        let mut known = KnownHosts {
            path: path.clone(),
            policy: HostKeyPolicy::Strict,
        };
        let err = verify(&known, "h", 22, &key(KEY_A)).expect_err("unknown");
        assert!(matches!(err, HostKeyError::Unknown { .. }));
        known.policy = HostKeyPolicy::AcceptNew;
        assert_eq!(
            verify(&known, "h", 22, &key(KEY_A)).expect("learn"),
            Verdict::Learned
        );
        known.policy = HostKeyPolicy::Strict;
        assert_eq!(
            verify(&known, "h", 22, &key(KEY_A)).expect("known"),
            Verdict::Known
        );
    }

    // See: #13
    #[test]
    fn a_revoked_key_is_refused_under_every_policy_and_never_learned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        let text =
            format!("[h]:2222 ssh-ed25519 {KEY_A}\n# gone\n@revoked * ssh-ed25519 {KEY_A}\n");
        std::fs::write(&path, &text).expect("write");
        for policy in [
            HostKeyPolicy::Strict,
            HostKeyPolicy::AcceptNew,
            HostKeyPolicy::Off,
        ] {
            let known = KnownHosts {
                path: path.clone(),
                policy,
            };
            // Known for [h]:2222, unknown for other: refused for both.
            for (host, port) in [("h", 2222), ("other", 22)] {
                let err = verify(&known, host, port, &key(KEY_A)).expect_err("revoked");
                let msg = err.to_string();
                assert!(
                    matches!(err, HostKeyError::Revoked { line: 3, .. }),
                    "{msg}"
                );
                assert!(
                    msg.contains("known_hosts:3") && msg.contains("SHA256:"),
                    "{msg}"
                );
                assert!(err.hint().unwrap_or_default().contains("revoked"));
            }
        }
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            text,
            "nothing learned"
        );
        // Another key is still learned under accept-new.
        let known = KnownHosts {
            path: path.clone(),
            policy: HostKeyPolicy::AcceptNew,
        };
        assert_eq!(
            verify(&known, "other", 22, &key(KEY_B)).expect("learn"),
            Verdict::Learned
        );
    }

    #[test]
    fn a_broken_revoked_line_fails_checks_and_gateways_get_revocations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!("h ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 not-base64\n"),
        )
        .expect("write");
        let mut known = KnownHosts {
            path: path.clone(),
            policy: HostKeyPolicy::Strict,
        };
        let err = verify(&known, "h", 22, &key(KEY_A)).expect_err("broken");
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(chain.contains("line 2"), "{chain}");
        known.policy = HostKeyPolicy::Off;
        assert_eq!(
            verify(&known, "h", 22, &key(KEY_A)).expect("off"),
            Verdict::Unchecked
        );

        std::fs::write(
            &path,
            format!("h ssh-ed25519 {KEY_A}\n@revoked other ssh-ed25519 {KEY_B}\n"),
        )
        .expect("write");
        let t = super::super::Target {
            name: "h".into(),
            host: "h".into(),
            port: 22,
            user: "u".into(),
            password: None,
            identity_files: Vec::new(),
        };
        let lines = entries_for(&path, &[t]);
        assert!(
            lines.starts_with(&format!("h ssh-ed25519 {KEY_A}\n")),
            "{lines}"
        );
        assert!(
            lines.contains(&format!("@revoked * ssh-ed25519 {KEY_B}\n")),
            "{lines}"
        );
    }
}
