//! The one integration-test binary: black-box tests of the built `mgmt`
//! binary and of the library against real servers (sshd, etcd).

mod audit;
mod claims;
mod cli;
mod emulate;
mod engine;
mod events;
mod exchange;
mod facts;
mod gateway;
mod hostile_cache;
mod hostile_output;
mod hostile_paths;
mod hostile_store;
mod kinds;
mod layers;
mod published;
mod remote;
mod remote_run;
mod role;
mod rolling;
mod ship;
mod store;
mod store_login;
mod targeting;
mod util;
mod warm;
