//! The validated configuration of a run, built from [`crate::cli::RunArgs`].
//!
//! This is where files are read and combinations of flags are checked, so
//! that every input error is found before anything starts (exit code 2).
//! Nothing below [`crate::run`] sees the raw flags.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::RunArgs;
use crate::fleet::plan::{Plan, PlanError, PlanInputs};
use crate::fleet::rolling::{MaxFail, RollMode};
use crate::graph::{GraphErrors, GraphFile};

/// An input error: nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Graph(#[from] GraphErrors),
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

impl ConfigError {
    fn flag(flag: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Flag {
            flag,
            message: message.into(),
        }
    }
}

/// The store's `root` password, from `--store-password-file`; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct StorePassword(pub String);

impl std::fmt::Debug for StorePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorePassword(***)")
    }
}

/// Reads the first line of `path`, which only its owner may read (as
/// OpenSSH insists for a private key).
fn read_store_password(path: &std::path::Path) -> Result<StorePassword, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let bad = |m: String| ConfigError::flag("--store-password-file", format!("{shown}: {m}"));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "readable by group or others (mode {mode:04o}); run `chmod 600 {shown}`"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(bad("its first line, the password, is empty".into()));
    }
    Ok(StorePassword(line))
}

/// Where the coordination store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreMode {
    /// Embedded in this process. This process's own client reaches it
    /// in-process; `listen` is a TCP address for other clients, if any.
    Embedded { listen: Option<String> },
    /// An external etcd v3 store (ours in another process, or a real etcd).
    External { seeds: Vec<String> },
}

/// Everything `mgmt run` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The graph file to apply here.
    pub file: Option<GraphFile>,
    pub hostname: String,
    pub converged_timeout: Option<Duration>,
    pub noop: bool,
    pub watch: bool,
    pub max_runtime: Option<Duration>,
    pub store: StoreMode,
    /// `--store-password-file`: the embedded store's listener requires
    /// etcd authentication as `root` with it; with `--seeds`, this process
    /// authenticates as `root` with it.
    pub store_password: Option<StorePassword>,
    pub depth: u32,
    /// The store is reached through a tunnel that wants the secret from stdin.
    pub tunnel_secret_stdin: bool,
    /// `--run-dir`: removed when the run ends.
    pub run_dir: Option<PathBuf>,
    /// The graph came on stdin (`--graph-stdin`), and its edits come there.
    pub graph_on_stdin: bool,
    /// `user@host` of the process that started the run: `--initiator`
    /// from the parent, else this process's own.
    pub initiator: String,
    /// `--remote` graphs and how to reach their hosts.
    pub remote: Option<Plan>,
    /// This host's place in the run, for templates (`host.name`, ...).
    pub host: crate::graph::template::Host,
    /// `--route`: how the initiator shows this process, when it is a child.
    pub route: Option<String>,
    /// `--events`: where the run's JSON lines go, if anywhere.
    pub events: Option<EventsTo>,
    /// `--summary json`.
    pub summary_json: bool,
    /// `--rolling` (the initiator) or `--rolling-follow` (a gateway).
    pub rolling: Option<crate::fleet::rolling::RollMode>,
    /// `--exit-converged`: a rolling run's host ends when it converged.
    pub exit_converged: bool,
    /// The run's store ends with the run: the initiator's embedded one, or
    /// (`--store-ends-with-run`) a parent's that is.
    pub store_ends_with_run: bool,
    /// `--where`: a host where it is false applies nothing.
    pub where_expr: Option<String>,
    /// Where `file` resources' absolute paths are rooted: `/`, or a host's
    /// own directory when `mgmt emulate` runs many hosts in one process.
    pub root: PathBuf,
}

/// Where `--events` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsTo {
    Stdout,
    File(PathBuf),
}

impl Config {
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let stdin = std::path::Path::new("-");
        let file = match (&args.file, &args.graph_label, &args.graph_text) {
            (_, label, Some(text)) => Some(GraphFile::from_text(
                stdin,
                label.as_deref().unwrap_or("-"),
                text.clone(),
            )?),
            (Some(f), Some(label), None) => Some(GraphFile::load_as(f, label)?),
            (Some(f), None, None) => Some(GraphFile::load(f)?),
            (None, _, None) => None,
        };
        if !args.remotes.is_empty() && args.no_server && args.depth == 0 {
            return Err(ConfigError::flag(
                "--remote",
                "needs the embedded store: drop --no-server and --seeds",
            ));
        }
        let remote = crate::fleet::plan::plan(&plan_inputs(args)).map_err(|e| match e {
            PlanError::Graphs(g) => ConfigError::Graph(g),
            PlanError::Flag { flag, message } => ConfigError::Flag { flag, message },
        })?;
        if file.is_none() && remote.is_none() {
            return Err(ConfigError::flag(
                "--file",
                "nothing to run: give a graph with --file GRAPH.yaml or --remote GRAPH.yaml",
            ));
        }
        let (events, summary_json) = output_flags(args, remote.is_some())?;
        let rolling = rolling(args, remote.is_some())?;
        if let Some(w) = &args.where_expr {
            crate::graph::template::check_condition(w)
                .map_err(|e| ConfigError::flag("--where", format!("{w:?}: {e}")))?;
        }
        let converged_timeout = match args.converged_timeout {
            -1 => None,
            t if t >= 0 => Some(Duration::from_secs(t as u64)),
            t => {
                return Err(ConfigError::flag(
                    "--converged-timeout",
                    format!("{t} is not a number of seconds (use -1 to never exit on convergence)"),
                ))
            }
        };
        let store_password = args
            .store_password_file
            .as_deref()
            .map(read_store_password)
            .transpose()?;
        let store = match (args.no_server, args.seeds.is_empty()) {
            (false, true) => StoreMode::Embedded {
                listen: store_listener(args, remote.is_some(), store_password.is_some())?,
            },
            (true, false) => StoreMode::External {
                seeds: args.seeds.clone(),
            },
            (true, true) => {
                return Err(ConfigError::flag(
                    "--no-server",
                    "needs --seeds URL to reach a store",
                ))
            }
            (false, false) => {
                return Err(ConfigError::flag(
                    "--seeds",
                    "needs --no-server (this process would otherwise embed its own store)",
                ))
            }
        };
        let store_ends_with_run = args.store_ends_with_run
            || (args.depth == 0 && matches!(store, StoreMode::Embedded { .. }));
        let hostname = args
            .hostname
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.graph.hostname.clone()))
            .unwrap_or_else(os_hostname);
        if hostname.is_empty() || hostname.contains('/') {
            return Err(ConfigError::flag(
                "--hostname",
                format!("{hostname:?} is not a usable host name (non-empty, no /)"),
            ));
        }
        Ok(Config {
            file,
            converged_timeout,
            noop: args.noop,
            watch: !args.no_watch,
            max_runtime: (args.max_runtime > 0).then(|| Duration::from_secs(args.max_runtime)),
            store,
            store_password,
            depth: args.depth,
            tunnel_secret_stdin: args.tunnel_secret_stdin,
            run_dir: args.run_dir.clone(),
            graph_on_stdin: args.graph_text.is_some(),
            initiator: args.initiator.clone().unwrap_or_else(|| {
                let user = crate::ssh::target::local_user().unwrap_or_else(|| "unknown".into());
                format!("{user}@{}", os_hostname())
            }),
            remote,
            host: crate::graph::template::Host {
                route: args.route.clone().unwrap_or_else(|| hostname.clone()),
                name: hostname.clone(),
                index: args.host_index,
                count: args.host_count.max(1),
            },
            route: args.route.clone(),
            events,
            summary_json,
            hostname,
            rolling,
            exit_converged: args.exit_converged,
            store_ends_with_run,
            where_expr: args.where_expr.clone(),
            root: "/".into(),
        })
    }
}

fn os_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Where the embedded store listens for other clients: `--client-urls`;
/// by default loopback for a `--file` run, nowhere for a remote run (its
/// hosts come through their tunnels). A remote run's listener needs
/// credentials: it is refused without `--store-password-file`.
fn store_listener(
    args: &RunArgs,
    remote: bool,
    password: bool,
) -> Result<Option<String>, ConfigError> {
    Ok(match (&args.client_urls, remote) {
        (Some(_), true) if !password => {
            return Err(ConfigError::flag(
                "--client-urls",
                "the store of a --remote run serves other clients only with credentials: \
                 give --store-password-file FILE (the password of etcd user root, \
                 for example for etcdctl --user root)",
            ))
        }
        (Some(addr), _) => Some(addr.clone()),
        (None, true) => None,
        (None, false) => Some("127.0.0.1:0".into()),
    })
}

/// `--events` and `--summary`: only for the initiator of a remote run, and
/// not both on stdout.
fn output_flags(args: &RunArgs, remote: bool) -> Result<(Option<EventsTo>, bool), ConfigError> {
    let json = args.summary == "json";
    let events = args.events.as_ref().map(|p| match p.to_str() {
        Some("-") => EventsTo::Stdout,
        _ => EventsTo::File(p.clone()),
    });
    let needs_remote = |flag: &'static str| {
        ConfigError::flag(
            flag,
            "reports on remote hosts: use it with --remote GRAPH.yaml",
        )
    };
    if events.is_some() && (!remote || args.depth > 0) {
        return Err(needs_remote("--events"));
    }
    if json && (!remote || args.depth > 0) {
        return Err(needs_remote("--summary"));
    }
    if json && events == Some(EventsTo::Stdout) {
        return Err(ConfigError::flag(
            "--summary",
            "json and --events - would both write to stdout: write the events to a file \
             (--events FILE) or keep --summary human",
        ));
    }
    Ok((events, json))
}

/// What `mgmt facts` asks, validated: the hosts of its `--remote` files
/// (`None`: this machine), and how to print.
#[derive(Debug)]
pub struct FactsConfig {
    pub remote: Option<Plan>,
    pub json: bool,
    /// Above 0: a gateway's `mgmt facts`, started by its parent.
    pub depth: u32,
}

impl FactsConfig {
    pub fn from_args(args: &crate::cli::FactsArgs) -> Result<FactsConfig, ConfigError> {
        let inputs = PlanInputs {
            remotes: args.remotes.clone(),
            host_key_check: args.host_key_check.clone(),
            known_hosts: args.known_hosts.clone(),
            identities: args.identities.clone(),
            ssh_config: args.ssh_config.clone(),
            remote_binary: args.remote_binary.clone(),
            connect_timeout: args.connect_timeout,
            cconns: args.cconns,
            remote_prefix: args.remote_prefix.clone(),
            caching: !args.no_caching,
            via: args.via.clone(),
            labels: args.remote_labels.clone(),
            ..PlanInputs::default()
        };
        let remote = crate::fleet::plan::plan(&inputs).map_err(|e| match e {
            PlanError::Graphs(g) => ConfigError::Graph(g),
            PlanError::Flag { flag, message } => ConfigError::Flag { flag, message },
        })?;
        Ok(FactsConfig {
            remote,
            json: args.json,
            depth: args.depth,
        })
    }
}

/// `--rolling N [--max-fail N|N%]`, or a gateway's `--rolling-follow`.
fn rolling(args: &RunArgs, remote: bool) -> Result<Option<RollMode>, ConfigError> {
    if args.rolling_follow {
        return Ok(Some(RollMode::Follow));
    }
    let Some(cap) = args.rolling else {
        return Ok(None);
    };
    if !remote || args.depth > 0 {
        return Err(ConfigError::flag(
            "--rolling",
            "rolls out remote hosts: use it with --remote GRAPH.yaml",
        ));
    }
    if cap == 0 {
        return Err(ConfigError::flag(
            "--rolling",
            "0 hosts at once would never start any: give 1 or more",
        ));
    }
    if args.converged_timeout < 0 {
        return Err(ConfigError::flag(
            "--rolling",
            "a host's turn ends when it has converged: give --converged-timeout SECONDS",
        ));
    }
    let max_fail = args
        .max_fail
        .as_deref()
        .map(MaxFail::parse)
        .transpose()
        .map_err(|m| ConfigError::flag("--max-fail", m))?;
    Ok(Some(RollMode::Lead { cap, max_fail }))
}

/// The `--remote` side of the flags, for the fleet's plan.
fn plan_inputs(args: &RunArgs) -> PlanInputs {
    PlanInputs {
        remotes: args.remotes.clone(),
        labels: args.remote_labels.clone(),
        via: args.via.clone(),
        ssh_config: args.ssh_config.clone(),
        remote_binary: args.remote_binary.clone(),
        host_key_check: args.host_key_check.clone(),
        known_hosts: args.known_hosts.clone(),
        identities: args.identities.clone(),
        allow_interactive: args.allow_interactive,
        connect_timeout: args.connect_timeout,
        cconns: args.cconns,
        remote_prefix: args.remote_prefix.clone(),
        caching: !args.no_caching,
        trace: args.trace,
    }
}
