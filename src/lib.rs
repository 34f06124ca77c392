//! mgmt: bootstrap and configure fleets of machines over nothing but SSH.
//!
//! One static binary plays every role: the initiator on an operator's laptop,
//! a gateway inside a datacentre, and the leaf that applies a resource graph
//! on a host. This crate is the library behind that binary; `main.rs` only
//! parses flags and turns the result of [`run::run`] into an exit code.
//!
//! # Layout
//!
//! The rooms, from the bottom layer up. A room uses only rooms of lower
//! layers, never one of its own layer or above, and no file uses a file
//! that uses it back; `tests/it/layers.rs` reads this list and checks every
//! path in `src/` against it.
//!
//! - layer 0, [`shutdown`]: signals and the root cancellation token.
//! - layer 0, [`link`]: a remote child's link to its parent: secret (and a warm start's graph and its edits) on stdin, its run directory, stop on EOF.
//! - layer 0, [`fswatch`]: one inotify instance shared by every path watch.
//! - layer 0, [`audit`]: a host's own record of each run, in its system log.
//! - layer 0, [`facts`]: what a host knows about itself (OS, CPUs, addresses), for graph templates.
//! - layer 0, [`term`]: the terminal a prompt and the progress bars share: bars hide while a prompt is open.
//! - layer 1, [`store`]: the embedded etcd v3 compatible coordination store.
//! - layer 1, [`ssh`]: one host over one SSH connection: URL and ssh_config, host keys, auth, commands, SFTP and the binary cache, the tunnel, the served agent.
//! - layer 1, [`ui`]: progress bars, prefixed host lines, the summary, the route records a gateway writes, and `--events`' JSON lines.
//! - layer 2, [`resources`]: one file per resource kind behind the [`resources::Resource`] trait.
//! - layer 3, [`graph`]: the YAML graph format and graph files: parsing with positions, validation, DAG.
//! - layer 4, [`engine`]: applies a graph, reacts to events, detects convergence, live reload.
//! - layer 5, [`world`]: exported and collected resources and converged keys, on top of an etcd client.
//! - layer 6, [`fleet`]: many hosts: the plan, one host's life, gateways, the fan-out under `--cconns`.
//! - layer 7, [`cli`]: clap structs that mirror the flags, no I/O.
//! - layer 8, [`config`]: the validated configuration built from the flags.
//! - layer 9, [`run`]: top-level orchestration: store, engine, fleet; stop in order.
//! - layer 10, [`emulate`]: `mgmt emulate`, many SSH hosts in one process, each running the real `run` in-process.

pub mod audit;
pub mod cli;
pub mod config;
pub mod emulate;
pub mod engine;
pub mod facts;
pub mod fleet;
pub mod fswatch;
pub mod graph;
pub mod link;
pub mod resources;
pub mod run;
pub mod shutdown;
pub mod ssh;
pub mod store;
pub mod term;
pub mod ui;
pub mod world;
