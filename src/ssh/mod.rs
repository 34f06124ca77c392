//! The SSH layer: everything done to one host over one SSH connection, and
//! nothing about fleets. It imports nothing from the fleet, the UI, `run`,
//! `config` or the graph (`tests/it/layers.rs` checks it).
//!
//! A host is reached in this order, and each step has its own module and its
//! own error type:
//!
//! - [`target`]: `ssh://[user[:password]@]host[:port]` plus `~/.ssh/config`
//!   into a [`Target`]; passwords live in a [`Secret`] that never prints.
//! - [`hostkey`]: the server key against `known_hosts` (`Strict`,
//!   `AcceptNew`, `Off`), with the fingerprint, the file:line and a hint;
//!   each file parsed once into a [`known_index`].
//! - [`auth`]: ssh-agent, key files (loaded once, shared by every host), the
//!   URL password, then an optional prompt serialised across all hosts.
//! - [`connect`]: the dial (timeout, pacing per address, bounded retry of
//!   handshake resets), through the russh [`handler`] that checks the key
//!   and takes the channels the server opens; bytes counted by [`wire`];
//!   what sshd sends acknowledged at once ([`tcp`]).
//! - [`session`]: a [`Session`] that runs commands, with a pid to stop them
//!   by and stdin kept open until the caller closes it; each running
//!   command is a [`child`] whose output arrives line by whole line.
//! - [`sftp`]: the SFTP client; on top of it the content-addressed binary
//!   [`cache`] and the per-run files ([`runfiles`]), every directory on
//!   their path checked as OpenSSH's StrictModes would ([`strict`]);
//!   [`launch`] runs the cached binary only after the host checked it (its
//!   install [`stamp`], else its hash); [`pack`] compresses the binary once on the initiator and
//!   has the host decompress and verify it before it is put in place.
//! - [`tunnel`]: the reverse TCP forward back to the embedded store and the
//!   secret preamble check; [`agent`] is the ssh-agent served to gateways,
//!   and every forwarded agent channel goes through `agent_filter` (list
//!   keys and sign, nothing else).
//!
//! What this layer does not do: concurrency caps across hosts, progress and
//! the run's lifecycle; those belong to `fleet`, which calls it. Every
//! fallible operation returns a [`HostError`] that names the host and
//! carries a per-operation error kind with a [`Hint`].

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub(crate) mod agent_filter;
pub mod auth;
pub mod cache;
pub mod child;
pub mod connect;
pub(crate) mod handler;
pub mod hostkey;
pub(crate) mod known_index;
pub mod launch;
pub mod pack;
pub mod runfiles;
pub mod session;
pub mod sftp;
pub mod stamp;
pub mod strict;
pub mod target;
pub(crate) mod tcp;
pub mod tunnel;
pub mod warm;
pub(crate) mod wire;

use std::fmt;

pub use auth::{AuthError, Credentials};
pub use cache::CacheOptions;
pub use child::{ExecError, ExitStatus, Output, OutputLine, RemoteChild};
pub use connect::{connect, ClientSettings, ConnectError, Pacer};
pub use handler::Stream;
pub use hostkey::{HostKeyError, HostKeyPolicy};
pub use launch::CachedBinary;
pub use session::{ExecOptions, KillSignal, Session};
pub use sftp::UploadError;
pub use target::{Secret, Target, TargetError};
pub use tunnel::{check_preamble, PreambleError, ReverseTunnel, TunnelError};

/// Which host an error is about: the name the user wrote and the address
/// actually dialled, so that `web-3 (10.0.0.7:22)` can be printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostId {
    /// The name as written in the URL (before `~/.ssh/config` `HostName`).
    pub name: String,
    /// `host:port` (IPv6 in brackets) as dialled.
    pub addr: String,
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// Something the user can do about an error, printed by the CLI on its own
/// `hint:` line after the error chain.
pub trait Hint {
    /// A lowercase sentence saying what to do next, when there is one.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// An error of one operation (`E`) on one host.
///
/// Display prints `host: error` in one line. `source()` skips `E` itself
/// (already printed) and continues with `E`'s own source, so an anyhow `{:#}`
/// chain never repeats a message.
#[derive(Debug)]
pub struct HostError<E> {
    /// The host the operation was about.
    pub host: HostId,
    /// What went wrong.
    pub kind: E,
}

impl<E> HostError<E> {
    pub(crate) fn new(host: &HostId, kind: E) -> Self {
        Self {
            host: host.clone(),
            kind,
        }
    }
}

impl<E: fmt::Display> fmt::Display for HostError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.kind)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for HostError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl<E: Hint> HostError<E> {
    /// The hint of the inner error.
    pub fn hint(&self) -> Option<String> {
        self.kind.hint()
    }
}

/// Locks a std mutex, recovering from a poisoned one (a panic elsewhere
/// must not take every host down). Never held across an await.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Quote one word for the remote POSIX shell.
///
/// Returns `None` for a word that cannot be passed at all (it contains a NUL
/// byte), so a caller never runs a command that means something else.
pub fn shell_quote(word: &str) -> Option<String> {
    shlex::try_quote(word).ok().map(|q| q.into_owned())
}

/// Quote every word and join them with spaces: a command line for `exec`.
pub fn shell_join<I, S>(words: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for w in words {
        out.push(shell_quote(w.as_ref())?);
    }
    Some(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_words_apart() {
        let line = shell_join(["echo", "a b", "$(x)", "it's"]).expect("no NUL");
        assert_eq!(
            shlex::split(&line).expect("valid"),
            ["echo", "a b", "$(x)", "it's"]
        );
        assert!(shell_quote("a\0b").is_none());
    }
}
