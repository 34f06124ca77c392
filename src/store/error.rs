//! Errors of the embedded store: [`StoreError`] for the caller of
//! [`crate::store::Store::serve`], and the private [`EtcdError`] that a request
//! handler turns into a gRPC status carrying etcd's own code and message, so
//! that a client (and `etcd-client`'s error matching) cannot tell us apart
//! from etcd 3.4. The messages are etcd's, byte for byte; do not reword them.

use tonic::{Code, Status};

/// Why [`crate::store::Store::serve`] or `serve_incoming` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The gRPC server failed (accepting or driving connections).
    #[error("store: grpc server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// A request the store refuses, in etcd's vocabulary (`etcdserver/api/v3rpc/rpctypes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// A write while a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// Snapshot: etcd streams its database file; this store has none.
    #[error(
        "etcdserver: Snapshot is not supported by the embedded mgmt store: it keeps its data in \
         memory for one run and has no database file to stream; to save the data, read every \
         key instead (etcdctl get \"\" --prefix -w json)"
    )]
    SnapshotUnsupported,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A maintenance call that needs the root role, refused as etcd 3.4's
    /// maintenance server refuses it (a plain error, not an `etcdserver:` one).
    #[error("auth: permission denied")]
    AdminOnly,
    /// An RPC of the etcd API this store deliberately does not implement.
    #[error("etcdserver: {0} is not supported by the embedded mgmt store")]
    Unsupported(&'static str),
}

impl EtcdError {
    /// The gRPC code etcd 3.4 uses for this error.
    fn code(&self) -> Code {
        match self {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::RequestTooLarge
            | EtcdError::UserEmpty
            | EtcdError::RoleEmpty
            | EtcdError::AuthFailed
            | EtcdError::InvalidAuthMgmt => Code::InvalidArgument,
            EtcdError::Compacted | EtcdError::FutureRev | EtcdError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            EtcdError::LeaseNotFound => Code::NotFound,
            EtcdError::LeaseExist
            | EtcdError::BadLeaderTransferee
            | EtcdError::RootUserNotExist
            | EtcdError::RootRoleNotExist
            | EtcdError::UserAlreadyExist
            | EtcdError::UserNotFound
            | EtcdError::RoleAlreadyExist
            | EtcdError::RoleNotFound
            | EtcdError::RoleNotGranted
            | EtcdError::PermissionNotGranted
            | EtcdError::AuthNotEnabled => Code::FailedPrecondition,
            EtcdError::InvalidAuthToken => Code::Unauthenticated,
            EtcdError::AdminOnly => Code::Unknown,
            EtcdError::Unsupported(_) | EtcdError::SnapshotUnsupported => Code::Unimplemented,
            EtcdError::PermissionDenied => Code::PermissionDenied,
            EtcdError::NoSpace | EtcdError::TooManyRequests => Code::ResourceExhausted,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
