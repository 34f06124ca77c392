//! mgmt: bootstrap and configure fleets of machines over nothing but SSH.
//!
//! One static binary plays every role: the initiator on an operator's laptop,
//! a gateway inside a datacentre, and the leaf that applies a resource graph
//! on a host. This crate is the library behind that binary; `main.rs` only
//! parses flags and turns the result of [`run::run`] into an exit code.
//!
//! # Layout
//!
//! - [`cli`]: clap structs that mirror the flags, no I/O.
//! - [`config`]: the validated configuration built from the flags.
//! - [`run`]: top-level orchestration: store, engine, remotes; stop in order.
//! - [`graph`]: the YAML graph format: parsing with positions, validation, DAG.
//! - [`resources`]: one file per resource kind behind the [`resources::Resource`] trait.
//! - [`engine`]: applies a graph, reacts to events, detects convergence, live reload.
//! - [`store`]: the embedded etcd v3 compatible coordination store.
//! - [`world`]: exported and collected resources and converged keys, on top of an etcd client.
//! - [`shutdown`]: signals and the root cancellation token.
//! - [`link`]: a remote child's link to its parent: secret on stdin, stop on EOF.
//! - [`fswatch`]: one inotify instance shared by every path watch.
//! - [`remote`]: the SSH layer (targets, host keys, auth, exec, SFTP cache,
//!   tunnel) and the fan-out that runs a graph on many hosts, directly or
//!   through gateways (route records, an agent served to gateways).
//! - [`ui`]: progress bars, prefixed host lines, the end-of-run summary.
//! - [`emulate`]: `mgmt emulate`, many SSH hosts in one process, each
//!   running the real engine in-process, for measuring runs at scale.

pub mod cli;
pub mod config;
pub mod emulate;
pub mod engine;
pub mod fswatch;
pub mod graph;
pub mod link;
pub mod remote;
pub mod resources;
pub mod run;
pub mod shutdown;
pub mod store;
pub mod ui;
pub mod world;
