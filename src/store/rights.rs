//! Whom a request speaks for, decided once per request from the connection
//! it came on: this process's own client (no restriction), a host's tunnel
//! ([`Speaker`]), or a listener's connection, which while auth is on must
//! carry a token naming a user ([`UserRights`]).

use std::sync::Arc;

use tonic::Request;

use super::access::{log_denied, Guard, Peer, Speaker};
use super::auth::UserRights;
use super::error::EtcdError;
use super::Shared;

/// What one request may do.
pub(crate) enum Rights {
    /// This process's own client, or a listener while auth is off.
    Full,
    /// A connection accepted on behalf of a host or a gateway.
    Host(Arc<Speaker>),
    /// A token's user (the `root` role included) while auth is on.
    User(Arc<UserRights>),
}

/// The gRPC metadata that carries a token: etcd's own name, and the header
/// newer clients also send.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

impl Rights {
    pub fn of<T>(shared: &Shared, req: &Request<T>) -> Result<Rights, EtcdError> {
        match req.extensions().get::<Peer>() {
            Some(Peer(Some(speaker))) => Ok(Rights::Host(speaker.clone())),
            Some(Peer(None)) => Ok(Rights::Full),
            None => {
                let token = TOKEN_KEYS
                    .iter()
                    .find_map(|k| req.metadata().get(*k))
                    .and_then(|v| v.to_str().ok());
                Ok(match shared.auth().rights(token)? {
                    Some(user) => Rights::User(user),
                    None => Rights::Full,
                })
            }
        }
    }

    /// The key-range checks that apply, if any.
    pub fn guard(&self) -> Option<&dyn Guard> {
        match self {
            Rights::Full => None,
            Rights::Host(sp) => Some(sp.as_ref()),
            Rights::User(u) if u.root => None,
            Rights::User(u) => Some(u.as_ref()),
        }
    }

    /// The host speaker, for its quotas and leases.
    pub fn speaker(&self) -> Option<&Arc<Speaker>> {
        match self {
            Rights::Host(sp) => Some(sp),
            _ => None,
        }
    }

    /// Refuses, unless it may administer the store (compaction, auth
    /// management): this process, or a user with the `root` role. Others
    /// are told etcd's `permission denied`, and the log says who tried.
    pub fn admin(&self, what: &str) -> Result<(), EtcdError> {
        self.root_only(what, EtcdError::PermissionDenied)
    }

    /// As [`Rights::admin`], for the maintenance calls (alarms, hashes,
    /// defragment, leader moves): a user is refused with what etcd's
    /// maintenance server answers, `auth: permission denied`.
    pub fn maintainer(&self, what: &str) -> Result<(), EtcdError> {
        self.root_only(what, EtcdError::AdminOnly)
    }

    fn root_only(&self, what: &str, users_error: EtcdError) -> Result<(), EtcdError> {
        match self {
            Rights::Full => Ok(()),
            Rights::User(u) if u.root => Ok(()),
            Rights::User(u) => {
                log_denied(u.as_ref(), what, b"");
                Err(users_error)
            }
            Rights::Host(sp) => {
                log_denied(sp.as_ref(), what, b"");
                Err(EtcdError::PermissionDenied)
            }
        }
    }

    /// Refuses `what` on `[key, range_end)` unless it may read it.
    pub fn read(&self, what: &str, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        match self.guard() {
            Some(g) if !g.may_read(key, range_end) => Err(denied(g, what, key)),
            _ => Ok(()),
        }
    }

    /// Refuses `what` on `[key, range_end)` unless it may write it (and
    /// read it, when the previous values are asked for).
    pub fn write(
        &self,
        what: &str,
        key: &[u8],
        range_end: &[u8],
        prev: bool,
    ) -> Result<(), EtcdError> {
        match self.guard() {
            Some(g) if !g.may_write(key, range_end) || (prev && !g.may_read(key, range_end)) => {
                Err(denied(g, what, key))
            }
            _ => Ok(()),
        }
    }
}

/// Logs who tried and returns etcd's `permission denied`.
pub(crate) fn denied(g: &dyn Guard, what: &str, key: &[u8]) -> EtcdError {
    log_denied(g, what, key);
    EtcdError::PermissionDenied
}
