//! The `mgmt` binary: parse flags, set up logs, run, turn the result into an
//! exit code (0 success, 1 something failed, 2 bad input). Everything else
//! lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use mgmt::cli::{Cli, Command};
use mgmt::config::{Config, ConfigError};

/// musl's allocator is small but slow under many threads and keeps freed
/// memory fragmented; a run holding thousands of SSH sessions (or an
/// emulator holding thousands of hosts) spends less CPU and memory on
/// mimalloc, which builds statically with the rest. (Without the default
/// `mimalloc` feature the system allocator is used, e.g. for heap profilers
/// that interpose `malloc`.)
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Run(args) => args,
        Command::Emulate(args) => return emulate(cli.verbose, args),
        Command::Facts(args) => return facts(cli.verbose, args),
    };
    // Logs go through the UI so they never tear progress bars or host lines.
    // A gateway (a remote run started by another) reports to its parent in
    // route records instead of drawing bars.
    let ui = if args.depth > 0 && !args.remotes.is_empty() {
        mgmt::ui::Ui::records(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    } else {
        // `--events -` and `--summary json` keep stdout for themselves.
        let stdout_taken =
            args.summary == "json" || args.events.as_ref().is_some_and(|p| p.as_os_str() == "-");
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        mgmt::ui::Ui::new_with_stdout(tty, !stdout_taken)
    };
    init_logs(cli.verbose, args.depth > 0, &ui);
    let depth = args.depth;
    // A host's child that starts no hosts of its own does little at once:
    // one thread serves it, and starting none of a pool's is measurably
    // cheaper on the host (#17). The initiator and gateways keep the pool.
    let flavor = match depth > 0 && args.remotes.is_empty() {
        true => Flavor::OneThread,
        false => Flavor::Pool,
    };
    let mut args = args.clone();
    with_runtime(flavor, |root| async move {
        // A warm start's graph comes on stdin, before the configuration.
        let link = mgmt::link::ParentLink::stdio();
        let link = match mgmt::run::graph_from_stdin(&mut args, link).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mgmt: {e}");
                return 2;
            }
        };
        let cfg = match config(&args) {
            Ok(cfg) => cfg,
            Err(code) => return code,
        };
        if let Err(e) = attach_outputs(&cfg, &ui) {
            eprintln!("mgmt: {e:#}");
            return 2;
        }
        let events_ui = ui.clone();
        let result = mgmt::run::run_linked(cfg, ui, root, link).await;
        let rows = result.as_ref().map(|o| o.hosts.clone()).unwrap_or_default();
        let code = exit_code(result, depth);
        events_ui.run_ended(&rows, code);
        code
    })
}

/// The run's configuration, or the exit code (2) after saying why not.
fn config(args: &mgmt::cli::RunArgs) -> Result<Config, u8> {
    match Config::from_args(args) {
        Ok(cfg) => Ok(cfg),
        Err(ConfigError::Graph(errors)) => {
            for e in &errors.0 {
                eprintln!("mgmt: {e}");
            }
            eprintln!(
                "mgmt: {} error(s) in the graph; nothing was applied",
                errors.0.len()
            );
            Err(2)
        }
        Err(e) => {
            eprintln!("mgmt: {e:#}");
            Err(2)
        }
    }
}

/// `--events` and `--summary json`: tell the UI where they go.
/// `mgmt facts`: the inventory on stdout, stages and logs on stderr. A
/// gateway's (`--depth` 1 and more) writes its hosts' stages as route
/// records on stdout before the inventory, for its parent to show.
fn facts(verbose: u8, args: &mgmt::cli::FactsArgs) -> ExitCode {
    let ui = if args.depth > 0 {
        mgmt::ui::Ui::records(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    } else {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        mgmt::ui::Ui::new_with_stdout(tty, false)
    };
    init_logs(verbose, args.depth > 0, &ui);
    let cfg = match mgmt::config::FactsConfig::from_args(args) {
        Ok(cfg) => cfg,
        Err(ConfigError::Graph(errors)) => {
            for e in &errors.0 {
                eprintln!("mgmt: {e}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("mgmt: {e:#}");
            return ExitCode::from(2);
        }
    };
    with_runtime(Flavor::Pool, |root| async move {
        match mgmt::run::facts(cfg, ui, root).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("mgmt: {e:#}");
                1
            }
        }
    })
}

fn attach_outputs(cfg: &Config, ui: &mgmt::ui::Ui) -> anyhow::Result<()> {
    use anyhow::Context;
    use mgmt::config::EventsTo;
    ui.summary_json(cfg.summary_json);
    let out: Box<dyn std::io::Write + Send> = match &cfg.events {
        None => return Ok(()),
        Some(EventsTo::Stdout) => Box::new(std::io::stdout()),
        Some(EventsTo::File(p)) => Box::new(std::fs::File::create(p).with_context(|| {
            format!(
                "--events: cannot create {} (check the directory exists and is writable)",
                p.display()
            )
        })?),
    };
    let events =
        mgmt::ui::events::Events::new(out).context("--events: cannot start the writer thread")?;
    ui.attach_events(events);
    Ok(())
}

/// The run's exit code, its failures reported on stderr.
fn exit_code(result: anyhow::Result<mgmt::run::Outcome>, depth: u32) -> u8 {
    match result {
        Ok(outcome) => {
            for f in outcome.failed() {
                eprintln!("mgmt: failed: {f}");
            }
            // A run cut short (--max-runtime, or a child stopped by
            // its parent) with resources still waiting did not succeed
            // (#15); the last line names them, for the parent's summary.
            let waiting = outcome.waiting();
            let cut = outcome.reason == mgmt::run::StopReason::MaxRuntime || depth > 0;
            if cut && !waiting.is_empty() && outcome.reason != mgmt::run::StopReason::Converged {
                eprintln!(
                    "mgmt: not converged, {} resource(s) still waiting: {}",
                    waiting.len(),
                    waiting.join("; ")
                );
                return 1;
            }
            if outcome.reason == mgmt::run::StopReason::Skipped && depth == 0 {
                // Only a parent reads the skipped code; here it is no failure.
                return 0;
            }
            outcome.exit_code()
        }
        // The graph did not render or validate on this host (#15):
        // an input error, reported like one, nothing applied.
        Err(e) if e.is::<mgmt::graph::GraphErrors>() => {
            // The errors come last: a parent shows a child's last line
            // in its summary.
            if let Some(errors) = e.downcast_ref::<mgmt::graph::GraphErrors>() {
                eprintln!(
                    "mgmt: {} error(s) in the graph; nothing was applied",
                    errors.0.len()
                );
                for e in &errors.0 {
                    eprintln!("mgmt: {e}");
                }
            }
            2
        }
        Err(e) => {
            eprintln!("mgmt: {e:#}");
            1
        }
    }
}

/// mimalloc asks for transparent huge pages on its arenas: every first touch
/// of one then costs zeroing 2 MiB, which measured as a quarter of a host's
/// CPU for a short `mgmt run` child, and counts 2 MiB of resident memory for
/// a few bytes used. This process runs without them (commands started by
/// `exec` resources get them back; see `resources::exec`).
fn no_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!("cannot turn off transparent huge pages: {e}");
    }
}

/// Which runtime a process runs on.
#[derive(Clone, Copy)]
enum Flavor {
    /// A worker thread per core.
    Pool,
    /// The main thread only (blocking work still goes to its own threads).
    OneThread,
}

/// Runs `job` on a runtime of `flavor` with signals cancelling its root
/// token; its result is the exit code.
fn with_runtime<F, Fut>(flavor: Flavor, job: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    let mut builder = match flavor {
        Flavor::Pool => tokio::runtime::Builder::new_multi_thread(),
        Flavor::OneThread => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mgmt: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        let root = CancellationToken::new();
        let signals = tokio::spawn(mgmt::shutdown::on_signals(root.clone()));
        let code = job(root).await;
        signals.abort();
        code
    });
    // Don't wait for blocking threads (e.g. a stuck inotify read) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// `mgmt emulate`: serve until SIGINT or SIGTERM. In-process children log
/// here, so only warnings by default.
fn emulate(verbose: u8, args: &mgmt::cli::EmulateArgs) -> ExitCode {
    let default = match verbose {
        0 => "warn",
        1 => "mgmt=info,warn",
        _ => "mgmt=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let opts = mgmt::emulate::Options {
        hosts: args.hosts,
        first: args.first_address,
        port: args.port,
        root: args.root.clone(),
        authorized_keys: args.authorized_keys.clone(),
        known_hosts: args.known_hosts_out.clone(),
        hosts_file: args.hosts_out.clone(),
        stats: args.stats.clone(),
        user: args.user.clone(),
        shared_listener: args.shared_listener,
    };
    with_runtime(Flavor::Pool, |root| async move {
        match mgmt::emulate::run(opts, root).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mgmt emulate: {e}");
                2
            }
        }
    })
}

/// A remote child (`child`) logs without timestamps: its parent prints
/// each line with the host it came from.
fn init_logs(verbose: u8, child: bool, ui: &mgmt::ui::Ui) {
    let default = match verbose {
        0 => "info",
        1 => "mgmt=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(ui.make_writer());
    if child {
        logs.without_time().init();
    } else {
        logs.init();
    }
}
