//! Command-line flags, close to what the user types (clap derive).
//!
//! No I/O happens here beyond parsing values; [`crate::config`] turns these
//! into a validated configuration. Flag names follow mgmt's original CLI
//! where it had one (`--converged-timeout`, `--noop`, `--seeds`, ...).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// mgmt: bootstrap and configure fleets of machines over SSH.
#[derive(Debug, Parser)]
#[command(name = "mgmt", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More logs: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a resource graph here and keep it applied.
    #[command(visible_alias = "r")]
    Run(RunArgs),
}

/// Flags of `mgmt run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The graph file to apply on this host.
    #[arg(
        short = 'f',
        long = "file",
        visible_alias = "yaml",
        value_name = "GRAPH.yaml"
    )]
    pub file: Option<PathBuf>,

    /// Exit after this many seconds in a converged state (every resource
    /// idle: no event, nothing applied); -1 never exits on convergence.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = -1, allow_negative_numbers = true)]
    pub converged_timeout: i64,

    /// Check only: change nothing and report what would change.
    #[arg(long)]
    pub noop: bool,

    /// Do not reload the graph file when it is edited.
    #[arg(long)]
    pub no_watch: bool,

    /// This host's name in the store (default: the graph's `hostname:`, else
    /// the OS hostname).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Stop after this many seconds whatever the state; 0 means no limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub max_runtime: u64,

    /// Address the embedded store listens on for clients (port 0 picks a
    /// free port; the address chosen is logged).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub client_urls: String,

    /// Use this etcd v3 store (ours or a real etcd) instead of embedding
    /// one; comma-separated URLs like http://127.0.0.1:2379. Needs --no-server.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Do not start the embedded store; connect to --seeds instead.
    #[arg(long)]
    pub no_server: bool,

    /// Position in a remote execution tree (internal: set by the parent).
    /// At depth 1 and more the process stops when its stdin closes.
    #[arg(long, default_value_t = 0, hide = true)]
    pub depth: u32,

    /// Read the tunnel secret from the first line of stdin and present it
    /// on every store connection (internal: set by the parent).
    #[arg(long, hide = true, requires = "seeds")]
    pub tunnel_secret_stdin: bool,
}
