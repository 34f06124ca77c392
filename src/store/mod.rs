//! The embedded etcd v3 compatible store (see issue 3).
