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
    Run(Box<RunArgs>),
    /// Print the facts of this machine, or of every host of --remote graph
    /// files (connecting and copying the binary as a run does, applying
    /// nothing): an inventory to query before a rollout.
    Facts(FactsArgs),
    /// Serve many emulated SSH hosts from this one process (for measuring
    /// runs at scale); each runs the real engine for `mgmt run` in-process.
    Emulate(EmulateArgs),
}

/// Flags of `mgmt facts`.
#[derive(Debug, Args, Clone)]
#[group(skip)]
pub struct FactsArgs {
    /// A graph file whose `remote:` hosts to ask (repeatable); none: this
    /// machine. Nothing of the graph is applied.
    #[arg(long = "remote", value_name = "GRAPH.yaml")]
    pub remotes: Vec<PathBuf>,

    /// One JSON document on stdout (`{"v":1,"hosts":[{"host","facts",
    /// "error"}]}`; this machine alone: its facts) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// How many hosts may be in set-up (connect, authenticate, copy) at
    /// once; 0 means no cap.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub cconns: usize,

    /// Seconds allowed for TCP connect plus SSH handshake, per attempt.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub connect_timeout: u64,

    /// A private key file to authenticate with (repeatable), after ssh-agent.
    #[arg(short = 'i', long = "identity", value_name = "PATH")]
    pub identities: Vec<PathBuf>,

    /// The known_hosts file host keys are checked against.
    #[arg(long, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,

    /// strict, accept-new or off, as for `mgmt run`.
    #[arg(long, value_name = "POLICY", default_value = "strict", value_parser = ["strict", "accept-new", "off"])]
    pub host_key_check: String,

    /// The ssh client config honoured (default ~/.ssh/config).
    #[arg(long, value_name = "PATH")]
    pub ssh_config: Option<PathBuf>,

    /// The binary to copy to hosts (default: this one; it must be static).
    #[arg(long, value_name = "PATH")]
    pub remote_binary: Option<PathBuf>,

    /// Directory on hosts for the binary cache (default ~/.cache/mgmt).
    #[arg(long, value_name = "DIR")]
    pub remote_prefix: Option<String>,

    /// Remove the binary from hosts afterwards.
    #[arg(long)]
    pub no_caching: bool,

    /// A gateway for every --remote graph without a `via:` (repeat for a
    /// chain, outermost first), as for `mgmt run`: the gateway gathers the
    /// facts of the hosts behind it.
    #[arg(long = "via", value_name = "URL")]
    pub via: Vec<String>,

    /// Position in a remote execution tree (internal: set by the parent
    /// of a gateway). At depth 1 and more the process reports in route
    /// records and stops when its stdin closes.
    #[arg(long, default_value_t = 0, hide = true)]
    pub depth: u32,

    /// The name the initiator knows each `--remote` file by, in order, for
    /// the errors (internal: set by the parent of a gateway).
    #[arg(long = "remote-label", hide = true, value_name = "NAME")]
    pub remote_labels: Vec<String>,
}

/// Flags of `mgmt emulate`.
#[derive(Debug, Args, Clone)]
#[group(skip)]
pub struct EmulateArgs {
    /// How many hosts to emulate.
    #[arg(long, value_name = "N")]
    pub hosts: usize,

    /// The first host's address; the others follow it (127.0.0.0/8 only).
    #[arg(long, value_name = "ADDR", default_value = "127.20.0.1")]
    pub first_address: std::net::Ipv4Addr,

    /// The SSH port every host listens on.
    #[arg(long, default_value_t = 2222)]
    pub port: u16,

    /// Directory holding every host's files (`ROOT/<host>/`, its home is
    /// `ROOT/<host>/home`) and the uploads, stored once per content.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Public keys allowed to log in (OpenSSH format, one per line).
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: PathBuf,

    /// Write the hosts' keys here, as known_hosts lines.
    #[arg(long, value_name = "FILE")]
    pub known_hosts_out: PathBuf,

    /// Write the hosts' URLs here, one `ssh://USER@ADDR:PORT` per line.
    #[arg(long, value_name = "FILE")]
    pub hosts_out: Option<PathBuf>,

    /// Rewrite this JSON file every second with per-host and total
    /// counters (connections, bytes in and out, children, converged), and
    /// the leaf children of all hosts: running, the most at once, and the
    /// order they started in.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,

    /// The user named in the URLs written to --hosts-out (any user is
    /// accepted with an authorized key).
    #[arg(long, default_value = "root")]
    pub user: String,

    /// Listen on one socket, 0.0.0.0:PORT, for every host (connections
    /// from outside loopback are refused), instead of one listener per
    /// host: half the open files, for 10,000 hosts under a 20,000 limit.
    #[arg(long)]
    pub shared_listener: bool,
}

/// Flags of `mgmt run`.
#[derive(Debug, Args, Clone)]
#[group(skip)]
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

    /// Address the embedded store listens on for other clients (port 0
    /// picks a free port; the address chosen is logged). Default: 127.0.0.1:0
    /// for a --file run; none for a --remote run, whose hosts reach the store
    /// only through their authenticated tunnels. A --file run's listener
    /// answers anyone who can connect, as etcd does by default, unless
    /// --store-password-file is given; a --remote run's listener needs it.
    #[arg(long, value_name = "ADDR")]
    pub client_urls: Option<String>,

    /// The password of the store's etcd user `root`, as the first line of
    /// FILE (mode 0600 or stricter). The embedded store's listener then
    /// requires etcd authentication from the start (etcdctl --user root;
    /// users and roles as in etcd); with --seeds, this process logs in to
    /// that store as `root`.
    #[arg(long, value_name = "FILE")]
    pub store_password_file: Option<std::path::PathBuf>,

    /// Use this etcd v3 store (ours or a real etcd) instead of embedding
    /// one; comma-separated URLs like http://127.0.0.1:2379. Needs --no-server.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Do not start the embedded store; connect to --seeds instead.
    #[arg(long)]
    pub no_server: bool,

    /// A graph file to run on the hosts named by its `remote:` (one URL or a
    /// list); repeat for more files. Needs the embedded store.
    #[arg(long = "remote", value_name = "GRAPH.yaml")]
    pub remotes: Vec<PathBuf>,

    /// How many hosts may be in set-up (connect, authenticate, copy) or
    /// clean-up at once; 0 means no cap. Running hosts do not hold a slot.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub cconns: usize,

    /// Run only where EXPR holds, with the host's facts and place
    /// (`facts.os.id == "debian" and facts.memory_mb >= 4096`, `host.name`,
    /// `host.index`): a host where it is false applies nothing and is
    /// reported as skipped. Evaluated on each host; a graph's `when:` does
    /// the same for that graph.
    #[arg(long = "where", value_name = "EXPR")]
    pub where_expr: Option<String>,

    /// Roll the run out: at most N hosts (of the whole tree, gateways' hosts
    /// included) apply at once, in the order of the --remote files and of
    /// each file's `remote:` list. A host's turn ends when it has converged
    /// (its child exits; needs --converged-timeout) or failed; then the next
    /// host starts. Set-up (connect, copy) runs ahead under --cconns.
    #[arg(long, value_name = "N")]
    pub rolling: Option<usize>,

    /// With --rolling: stop the rollout once more than N hosts (or N% of
    /// them) failed: no host starts any more, the ones applying finish, the
    /// run exits 1 and the summary names the hosts that never started.
    #[arg(long, value_name = "N|N%", requires = "rolling")]
    pub max_fail: Option<String>,

    /// Seconds allowed for TCP connect plus SSH handshake, per attempt.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub connect_timeout: u64,

    /// A private key file to authenticate with (repeatable); tried after
    /// ssh-agent. Default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
    #[arg(
        short = 'i',
        long = "identity",
        visible_alias = "ssh-priv-id-rsa",
        value_name = "PATH"
    )]
    pub identities: Vec<PathBuf>,

    /// Allow prompting on the terminal for key passphrases and passwords
    /// (one prompt at a time); without it nothing ever waits on the keyboard.
    #[arg(long)]
    pub allow_interactive: bool,

    /// The known_hosts file host keys are checked against.
    #[arg(long, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,

    /// strict: unknown or changed keys fail the host; accept-new: record
    /// unknown keys, refuse changed ones; off: no check but `@revoked`
    /// lines (test hosts only). A revoked key is refused under every policy.
    #[arg(long, value_name = "POLICY", default_value = "strict", value_parser = ["strict", "accept-new", "off"])]
    pub host_key_check: String,

    /// The ssh client config honoured for HostName, User, Port, IdentityFile
    /// (default ~/.ssh/config).
    #[arg(long, value_name = "PATH")]
    pub ssh_config: Option<PathBuf>,

    /// The binary to copy to hosts (default: this one; it must be static).
    #[arg(long, value_name = "PATH")]
    pub remote_binary: Option<PathBuf>,

    /// Directory on hosts for the binary cache and per-run files (default
    /// ~/.cache/mgmt, else a private directory under /tmp).
    #[arg(long, value_name = "DIR")]
    pub remote_prefix: Option<String>,

    /// Remove the binary, the graphs and their directories from hosts at the
    /// end of the run (a host without a system log keeps its audit record,
    /// audit.log beside the cache).
    #[arg(long)]
    pub no_caching: bool,

    /// A gateway for every --remote graph without a `via:` (repeat for a
    /// chain, outermost first): the initiator sends the binary and graphs
    /// once to it, and it runs `mgmt run --remote` for them.
    #[arg(long = "via", value_name = "URL")]
    pub via: Vec<String>,

    /// After the summary, print each hop's set-up timings (connect, copy,
    /// start) by route, to see which hop is slow.
    #[arg(long)]
    pub trace: bool,

    /// Write the run as JSON lines to FILE (`-`: stdout, which then carries
    /// nothing else; hosts' stdout lines move to stderr): `started`, each
    /// host's stages (connecting, authenticated, copying, cached, running,
    /// converged, failed with its reason, stopped), its resources applied,
    /// changed or failed, its output lines, a
    /// `done` per host with result, bytes and times, and `ended` with the
    /// counts and exit code. Schema: docs/events.md.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// The end-of-run summary as a human table on stderr (`human`) or as
    /// one JSON document on stdout (`json`; hosts' stdout lines move to
    /// stderr).
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub summary: String,

    /// Position in a remote execution tree (internal: set by the parent).
    /// At depth 1 and more the process stops when its stdin closes.
    #[arg(long, default_value_t = 0, hide = true)]
    pub depth: u32,

    /// Read the tunnel secret from the first line of stdin and present it
    /// on every store connection (internal: set by the parent).
    #[arg(long, hide = true, requires = "seeds")]
    pub tunnel_secret_stdin: bool,

    /// The per-run directory the parent made on this host for this process
    /// (its graphs; a warm start makes none and the name only says which
    /// run and cache this is); removed when the run ends, so that a child
    /// whose link was cut leaves nothing behind (internal: set by the
    /// parent).
    #[arg(
        long,
        hide = true,
        value_name = "DIR",
        requires = "tunnel_secret_stdin"
    )]
    pub run_dir: Option<std::path::PathBuf>,

    /// The graph comes on stdin, LEN bytes right after the secret line,
    /// and its live edits as frames later on (internal: a warm start, set
    /// by the parent).
    #[arg(
        long,
        hide = true,
        value_name = "LEN",
        requires = "run_dir",
        conflicts_with = "file"
    )]
    pub graph_stdin: Option<usize>,

    /// The text that came on stdin (`--graph-stdin`), once read.
    #[arg(skip)]
    pub graph_text: Option<String>,

    /// `user@host` of the process that started the run, for the host's audit
    /// record (internal: set by the parent).
    #[arg(long, hide = true, value_name = "USER@HOST", requires = "run_dir")]
    pub initiator: Option<String>,

    /// This host's position in its graph's `remote:` list, for templates'
    /// `host.index` (internal: set by the parent).
    #[arg(long, hide = true, default_value_t = 0, value_name = "N")]
    pub host_index: u64,

    /// The length of that list, for `host.count` (internal: set by the parent).
    #[arg(long, hide = true, default_value_t = 1, value_name = "N")]
    pub host_count: u64,

    /// The name the initiator knows each `--remote` file by, in order, for
    /// the hosts' errors (internal: set by the parent of a gateway).
    #[arg(long = "remote-label", hide = true, value_name = "NAME")]
    pub remote_labels: Vec<String>,

    /// The graph file's name as the initiator knows it, for errors
    /// (internal: set by the parent).
    #[arg(long, hide = true, value_name = "NAME", requires = "file")]
    pub graph_label: Option<String>,

    /// A gateway of a rolling run: its hosts wait for turns given on stdin
    /// (internal: set by the parent).
    #[arg(long, hide = true, conflicts_with = "rolling", requires = "remotes")]
    pub rolling_follow: bool,

    /// The run's store is the initiator's own and ends with the run: a
    /// stop of the whole run leaves this host's keys to lapse with it
    /// instead of revoking them, so that no host still stopping sees this
    /// one leave (internal: set by the parent).
    #[arg(long, hide = true, requires = "tunnel_secret_stdin")]
    pub store_ends_with_run: bool,

    /// Exit once converged, as the initiator would (internal: a rolling
    /// run's host, whose turn ends there).
    #[arg(long, hide = true, requires = "file")]
    pub exit_converged: bool,

    /// How the initiator shows this process (`gw.dc1/web3`), for
    /// `host.route` and the routes of a gateway's hosts (internal: set by
    /// the parent).
    #[arg(long, hide = true, value_name = "ROUTE")]
    pub route: Option<String>,
}
