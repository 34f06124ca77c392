//! The fleet: many hosts at once, on top of the SSH layer ([`crate::ssh`]).
//!
//! A run's hosts go through these rooms, in order:
//!
//! - [`plan`]: everything decided before any connection: graphs read and
//!   checked, URLs resolved, identities unique, the binary hashed, the SSH
//!   settings built. Errors here are input errors (exit 2).
//! - [`fanout`]: all hosts and gateways at once, at most `--cconns` in
//!   set-up, each in its own task under the run's cancellation token.
//! - [`host`]: one host's life: connect, copy (cached), tunnel, launch,
//!   follow its output and the local graph file, stop, clean up.
//! - [`gateway`]: one gateway and the group behind it, whose progress comes
//!   back as route records ([`crate::ui::route`]).
//!
//! The fleet reports to the UI through the types `ui` owns (stages, summary
//! rows, route records); the UI never calls back into the fleet.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod fanout;
pub mod gateway;
pub mod host;
pub mod plan;
