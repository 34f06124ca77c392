//! The fleet: many hosts at once, on top of the SSH layer ([`crate::ssh`]).
//!
//! A run's hosts go through these rooms, in order:
//!
//! - [`plan`]: everything decided before any connection: graphs read and
//!   checked, URLs resolved, identities unique, the binary hashed, the SSH
//!   settings built. Errors here are input errors (exit 2).
//! - [`fanout`]: all hosts and gateways at once, at most `--cconns` in
//!   set-up, each in its own task under the run's cancellation token.
//! - [`host`]: one host's life, in two halves shared with gateways:
//!   [`place`] (the set-up permit, connect, the binary in its cache, and the
//!   clean-up at the end) and [`supervise`] (tunnel, launch, output, graph
//!   files kept in step, the stop by pid).
//! - [`gateway`]: one gateway and the group behind it, whose progress comes
//!   back as route records ([`crate::ui::route`]).
//! - [`inventory`]: `mgmt facts --remote`: every host placed, its facts
//!   gathered by its own binary, nothing applied.
//! - [`rolling`]: `--rolling`'s turns: at most N hosts of the tree
//!   applying at once, in the plan's order, and `--max-fail`.
//! - [`shared`]: what every host task shares, and what each reports back.
//! - [`source`]: one version of a graph file, with the text its hosts are
//!   sent and what they may read, worked out once for all of them.
//! - [`stagger`]: the first wave of copies spread over time, so that the
//!   waves after it do not set up all at once on an idle uplink.
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
pub mod inventory;
pub mod place;
pub mod plan;
pub mod rolling;
pub mod shared;
pub mod source;
pub mod stagger;
pub mod supervise;
