//! Top-level orchestration of `mgmt run`: start what the configuration asks
//! for, wait for the end (convergence, signal, max runtime, every remote
//! host ended), stop in order.
//!
//! Start order: the store (embedded, or a client of `--seeds`), the local
//! graph if any ([`local`]: exports, collects, engine, live reload,
//! converged publisher), the remote hosts if any (the fan-out, whose tunnel
//! connections the store serves). Stop order is the reverse, so the store
//! stops last, after everything that uses it.

mod local;
mod source;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreMode};
use crate::engine::Status;
use crate::fleet::fanout::{self, RollWiring, Wiring};
use crate::fleet::rolling::RollMode;
use crate::fleet::shared::{ChildFlags, HostEvent};
use crate::link::ParentLink;
use crate::ssh::tunnel::TunnelSecret;
use crate::ui::{RowResult, Stage, SummaryRow, Ui};
use crate::world::World;

/// How a run ended.
pub struct Outcome {
    /// The local graph's final status, when there was one.
    pub status: Option<Status>,
    /// One report per remote host.
    pub hosts: Vec<SummaryRow>,
    pub reason: StopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Converged,
    Cancelled,
    MaxRuntime,
    /// Every remote host ended (failed or finished) and nothing runs here.
    HostsEnded,
    /// `--where` or the graph's `when:` is false here: nothing was applied.
    Skipped,
}

impl Outcome {
    /// 0 when nothing failed, 1 otherwise (input errors, 2, never get here).
    pub fn exit_code(&self) -> u8 {
        if self.reason == StopReason::Skipped {
            return crate::link::SKIPPED_EXIT;
        }
        let local_failed = self.status.as_ref().is_some_and(|s| !s.failed.is_empty());
        let host_failed = self
            .hosts
            .iter()
            .any(|h| matches!(h.result, RowResult::Failed(_)));
        u8::from(local_failed || host_failed)
    }

    /// How the run ended, in a few words, for the audit record.
    fn result(&self, converged: bool) -> String {
        let failed_hosts = self
            .hosts
            .iter()
            .filter(|h| matches!(h.result, RowResult::Failed(_)))
            .count();
        match (self.failed().len(), failed_hosts) {
            (0, 0) if converged => "converged".into(),
            (0, 0) => "stopped".into(),
            (r, 0) => format!("failed: {r} resource(s)"),
            (_, h) => format!("failed: {h} host(s)"),
        }
    }

    /// Resources of the local graph still held back by a `meta.when` (or
    /// by one they depend on) when the run ended, one line each.
    pub fn waiting(&self) -> &[String] {
        self.status
            .as_ref()
            .map(|s| s.waiting.as_slice())
            .unwrap_or_default()
    }

    /// Failed resources of the local graph, one line each.
    pub fn failed(&self) -> &[String] {
        self.status
            .as_ref()
            .map(|s| s.failed.as_slice())
            .unwrap_or_default()
    }
}

/// A task that is aborted if it is still running when dropped.
pub(crate) struct Task<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs until converged (with a timeout), cancelled, out of time, or (for
/// remote runs without a local graph) every host ended.
pub async fn run(cfg: Config, ui: Ui, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    run_linked(cfg, ui, cancel, ParentLink::stdio()).await
}

/// [`run`], with the link to the parent given (a child's stdin and its way
/// to the tunnel): how `mgmt emulate` runs a host's child in-process.
pub async fn run_linked(
    cfg: Config,
    ui: Ui,
    cancel: CancellationToken,
    link: ParentLink,
) -> anyhow::Result<Outcome> {
    let audit = audit_of(&cfg);
    if let Some(a) = &audit {
        a.record(&a.started());
    }
    let started = std::time::Instant::now();
    let mut facts = cfg.file.as_ref().map(|_| crate::facts::Gathering::start());
    if let Some(why) = skipped(&cfg, facts.as_mut()).await? {
        tracing::info!("host {}: skipped: {why}; nothing applied", cfg.hostname);
        if let Some(a) = &audit {
            a.record(&a.ended(0, "skipped"));
        }
        return Ok(Outcome {
            status: None,
            hosts: Vec::new(),
            reason: StopReason::Skipped,
        });
    }
    let store_cancel = CancellationToken::new();
    let (seeds, store) = start_store(&cfg, &store_cancel).await?;
    // Set when the run ends because the cluster converged: by the run loop
    // here, or, in a gateway, by its parent's word on stdin.
    let converged_flag = Arc::new(AtomicBool::new(false));
    let dial = link.dial.clone();
    let engine_converged = link.engine_converged.clone();
    let local = store.as_ref().map(|h| h.local.clone());
    // A gateway of a rolling run: the turns its parent gives, from stdin.
    let (turns_tx, turns_rx) = match cfg.rolling {
        Some(RollMode::Follow) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    // A warm start's live edits come on stdin, to its graph source.
    let (graphs_tx, graphs_rx) = match cfg.graph_on_stdin && cfg.watch {
        true => {
            let (tx, rx) = watch::channel(None);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let sinks = crate::link::StdinSinks {
        turns: turns_tx,
        graphs: graphs_tx,
    };
    let (mut world, secret) = connect_world(
        &cfg,
        (&seeds, local),
        &cancel,
        (&converged_flag, sinks),
        link,
    )
    .await?;
    let rollout_done = CancellationToken::new();
    // A stop while the graph is starting (its first export may be
    // retrying against a store that is gone) skips to the stop below.
    let mut local = match (&cfg.file, facts.as_mut()) {
        (Some(file), Some(facts)) => {
            local::Local::start(
                &cfg,
                (file, graphs_rx, facts.get().await.clone()),
                world.clone(),
                (outcome_hook(&cfg, &ui), &cancel),
            )
            .await?
        }
        _ => None,
    };
    let _mirror = match (&local, engine_converged) {
        (Some(l), Some(flag)) => Some(Task(tokio::spawn(mirror_converged(l.status.clone(), flag)))),
        _ => None,
    };

    let remote_cancel = CancellationToken::new();
    let mut expected = BTreeMap::new();
    let capacity = cfg
        .remote
        .as_ref()
        .map_or(0, |p| p.all_hosts().count() + p.gateways.len());
    let (events_tx, mut events_rx) = mpsc::channel(2 * capacity + 1);
    let mut fan = None;
    let mut tunnel_server = None;
    if let Some(plan) = cfg.remote.clone() {
        let (tunnels_tx, tunnels_rx) = mpsc::channel(64);
        tunnel_server = Some(serve_tunnels(
            &store,
            (&seeds, dial),
            &secret,
            tunnels_rx,
            &store_cancel,
        )?);
        expected = plan.routes().into_iter().collect();
        let wiring = Wiring {
            flags: ChildFlags {
                converged_timeout: cfg.converged_timeout.map(|d| d.as_secs()),
                noop: cfg.noop,
                no_watch: !cfg.watch,
                depth: cfg.depth,
                initiator: cfg.initiator.clone(),
                route: cfg.route.clone(),
                where_expr: cfg.where_expr.clone(),
                store_ends_with_run: cfg.store_ends_with_run,
            },
            ui: ui.clone(),
            tunnels: tunnels_tx,
            events: events_tx,
            converged: converged_flag.clone(),
            rolling: cfg.rolling.map(|mode| RollWiring {
                mode,
                done: rollout_done.clone(),
                turns: turns_rx,
            }),
        };
        fan = Some(Task(tokio::spawn(fanout::run(
            plan,
            wiring,
            remote_cancel.clone(),
        ))));
    } else {
        drop(events_tx);
    }

    // A rolling run's host exits once converged: its turn is over.
    let exit_on_converged =
        cfg.converged_timeout.is_some() && (cfg.depth == 0 || cfg.exit_converged);
    let lead = matches!(cfg.rolling, Some(RollMode::Lead { .. }));
    let peers = if cfg.remote.is_some() {
        Peers::Hosts(expected)
    } else if matches!(cfg.store, StoreMode::Embedded { .. }) {
        Peers::Published
    } else {
        Peers::None
    };
    let mut status_rx = local.as_ref().map(|l| l.status.clone());
    // An error still stops everything in order (remote children stopped,
    // their files removed) before it is returned.
    let mut failure = None;
    let reason = tokio::select! {
        _ = cancel.cancelled() => StopReason::Cancelled,
        _ = sleep_opt(cfg.max_runtime) => {
            tracing::info!("--max-runtime reached; stopping");
            StopReason::MaxRuntime
        }
        r = async {
            if lead {
                wait_rollout(&rollout_done, &mut events_rx).await;
                return Ok(true);
            }
            wait_converged(&mut world, status_rx.as_mut(), peers, &mut events_rx, exit_on_converged, &ui).await.map(|()| false)
        } => match r {
            Ok(true) => {
                tracing::info!("the rollout is over; stopping");
                StopReason::HostsEnded
            }
            Ok(false) => {
                converged_flag.store(true, Ordering::SeqCst);
                match cfg.converged_timeout {
                    Some(t) => tracing::info!("converged for {}s; stopping", t.as_secs()),
                    None => tracing::info!("every remote host ended; stopping"),
                }
                if exit_on_converged { StopReason::Converged } else { StopReason::HostsEnded }
            }
            Err(e) => {
                tracing::error!("{e:#}; stopping");
                failure = Some(e);
                StopReason::Cancelled
            }
        },
        r = engine_died(&mut local) => {
            failure = Some(anyhow::anyhow!("the engine stopped unexpectedly: {r}"));
            StopReason::Cancelled
        }
    };
    remote_cancel.cancel();
    let hosts = match fan.as_mut() {
        Some(t) => (&mut t.0).await.unwrap_or_default(),
        None => Vec::new(),
    };
    // Peers stop with the whole run: this host's keys are then left to
    // lapse with the store, so that none of them sees it leave before its
    // own stop. A store that outlives the run (`--seeds`) would keep them
    // for their TTL, where a next run would find them: withdrawn there.
    let whole_run = cancel.is_cancelled() || matches!(reason, StopReason::MaxRuntime);
    let status = match local {
        Some(l) => Some(l.stop(!(whole_run && cfg.store_ends_with_run)).await),
        None => None,
    };
    store_cancel.cancel();
    if let Some(h) = &store {
        log_store_stats(&h.store.stats());
    }
    let store_tasks = store.map(|h| h.tasks).unwrap_or_default();
    for task in tunnel_server.into_iter().chain(store_tasks) {
        let _ = (&mut { task }.0).await;
    }
    if !hosts.is_empty() {
        ui.finish(&hosts);
        if cfg.remote.as_ref().is_some_and(|p| p.onward.trace) {
            ui.trace(&hosts);
        }
    }
    if let Some(dir) = &cfg.run_dir {
        crate::link::rundir::remove(dir);
    }
    let outcome = Outcome {
        status,
        hosts,
        reason,
    };
    if let Some(a) = &audit {
        let result = match &failure {
            Some(e) => format!("failed: {e:#}"),
            None => outcome.result(converged_flag.load(Ordering::SeqCst)),
        };
        a.record(&a.ended(started.elapsed().as_secs(), &result));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// `mgmt facts`: this machine's facts, or every `--remote` host's, on
/// stdout; exit 1 when a host gave none.
pub async fn facts(
    cfg: crate::config::FactsConfig,
    ui: Ui,
    cancel: CancellationToken,
) -> anyhow::Result<u8> {
    use crate::ui::inventory::{facts_json, facts_table};
    // A gateway's: its parent closing stdin means stop.
    let _stdin = (cfg.depth > 0).then(|| {
        Task(tokio::spawn(crate::link::stop_on_eof(
            tokio::io::stdin(),
            cancel.clone(),
            Arc::new(AtomicBool::new(false)),
        )))
    });
    let answers = match cfg.remote {
        Some(plan) => crate::fleet::inventory::gather(plan, ui.clone(), cfg.depth, cancel).await,
        None => {
            let f = crate::facts::gather().await;
            if cfg.json {
                // What a host prints for `mgmt facts --remote`: the facts alone.
                println!("{}", serde_json::to_string(&f)?);
                return Ok(0);
            }
            vec![crate::fleet::inventory::HostFacts {
                host: f.hostname.clone(),
                route: f.hostname.clone(),
                facts: Ok(serde_json::to_value(&f)?),
            }]
        }
    };
    let rows: Vec<crate::ui::inventory::Answer<'_>> = answers
        .iter()
        .map(|a| crate::ui::inventory::Answer {
            host: &a.host,
            route: &a.route,
            facts: a.facts.as_ref().map_err(String::as_str),
        })
        .collect();
    ui.close();
    if cfg.depth > 0 {
        // A gateway's, read by its parent: a document per host, so that no
        // line passes the SSH layer's line limit however many hosts there are.
        for r in &rows {
            println!("{}", facts_json(std::slice::from_ref(r)));
        }
    } else if cfg.json {
        println!("{}", facts_json(&rows));
    } else {
        print!("{}", facts_table(&rows));
    }
    Ok(u8::from(answers.iter().any(|a| a.facts.is_err())))
}

/// Why this host applies nothing: `--where` or its graph's `when:` is
/// false with its facts; `None` when both hold (or there is no graph here).
async fn skipped(
    cfg: &Config,
    facts: Option<&mut crate::facts::Gathering>,
) -> anyhow::Result<Option<String>> {
    let (Some(file), Some(facts)) = (&cfg.file, facts) else {
        return Ok(None);
    };
    let when = file
        .graph
        .when
        .as_ref()
        .map(|w| (w.value.clone(), Some(w.pos)));
    let conditions: Vec<(String, Option<crate::graph::Pos>)> = cfg
        .where_expr
        .iter()
        .map(|w| (w.clone(), None))
        .chain(when)
        .collect();
    if conditions.is_empty() {
        return Ok(None);
    }
    let ctx = crate::graph::template::Context {
        facts: facts.get().await.clone(),
        host: cfg.host.clone(),
        ..Default::default()
    };
    for (expr, pos) in conditions {
        let at = match pos {
            Some(p) => format!("{}:{}:{}: when:", file.label, p.line, p.col),
            None => "--where".to_owned(),
        };
        match crate::graph::template::eval_condition(&expr, &ctx) {
            Ok(true) => {}
            Ok(false) => return Ok(Some(format!("{at} {expr} is false on this host"))),
            Err(e) => anyhow::bail!("{at} {expr}: {e}"),
        }
    }
    Ok(None)
}

/// A remote child's resources' outcomes go up to its parent as route
/// records on stdout (#18); elsewhere they are only logged.
fn outcome_hook(cfg: &Config, ui: &Ui) -> Option<crate::engine::OutcomeHook> {
    if cfg.depth == 0 || ui.writes_records() {
        return None;
    }
    let ui = ui.clone();
    Some(crate::engine::OutcomeHook(Arc::new(move |o| {
        ui.report_resource(&o.kind, &o.name, o.what, &o.reason)
    })))
}

/// The audit record of a child (a process its parent started over SSH,
/// with a per-run directory): `None` for anything else.
fn audit_of(cfg: &Config) -> Option<crate::audit::Audit> {
    use sha2::{Digest, Sha256};
    let dir = cfg.run_dir.as_ref().filter(|_| cfg.depth > 0)?;
    let mut h = Sha256::new();
    if let Some(f) = &cfg.file {
        h.update(f.text.as_bytes());
    }
    for f in cfg.remote.iter().flat_map(|p| p.files.iter()) {
        h.update(f.text.as_bytes());
    }
    // <prefix>/run/<run-id>: the record goes beside the cache, in <prefix>.
    let prefix = dir.parent()?.parent()?;
    Some(crate::audit::Audit {
        run_id: dir.file_name()?.to_string_lossy().into_owned(),
        initiator: cfg.initiator.clone(),
        host: cfg.hostname.clone(),
        graph_sha256: hex::encode(h.finalize()),
        fallback: prefix.join("audit.log"),
    })
}

/// What the embedded store served during the run, in one line, and what
/// it held at the end (the last hosts' keys, left to lapse with it).
fn log_store_stats(s: &crate::store::Stats) {
    tracing::info!(
        "store: {} puts, {} ranges, {} txns, {} deletes, {} watch events sent; {} keys and {} leases left at the end, about {} KiB at revision {}",
        s.puts,
        s.ranges,
        s.txns,
        s.deletes,
        s.watch_events_sent,
        s.keys,
        s.leases,
        s.approx_bytes / 1024,
        s.revision
    );
}

/// Keeps `flag` equal to the engine's converged state.
async fn mirror_converged(mut status: watch::Receiver<Status>, flag: Arc<AtomicBool>) {
    loop {
        let converged = status.borrow_and_update().converged;
        flag.store(converged, Ordering::Relaxed);
        if status.changed().await.is_err() {
            return;
        }
    }
}

async fn engine_died(local: &mut Option<local::Local>) -> String {
    match local {
        Some(l) => l.died().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A warm start (`--graph-stdin`): takes the graph's text from `link`'s
/// stdin into `args`; other runs get `link` back as it is.
pub async fn graph_from_stdin(
    args: &mut crate::cli::RunArgs,
    link: ParentLink,
) -> Result<ParentLink, crate::link::LinkError> {
    let Some(len) = args.graph_stdin else {
        return Ok(link);
    };
    let (link, text) = crate::link::take_graph(link, len).await?;
    args.graph_text = Some(text);
    Ok(link)
}

/// Connects to the store; a child (depth 1 and more) also starts following
/// its stdin, whose end means the parent is gone. Returns the tunnel secret
/// when it came on stdin (a gateway hands it down).
async fn connect_world(
    cfg: &Config,
    (seeds, local): (&[String], Option<crate::link::Dial>),
    root: &CancellationToken,
    (converged, sinks): (&Arc<AtomicBool>, crate::link::StdinSinks),
    link: ParentLink,
) -> anyhow::Result<(World, Option<crate::link::Secret>)> {
    if let Some(dial) = local {
        // Our own store: in-process, no preamble, no socket.
        let client = crate::link::connect_store(IN_PROCESS_URL, None, Some(dial)).await?;
        return Ok((World::from_client(client, &cfg.hostname), None));
    }
    if cfg.depth == 0 {
        return Ok((
            World::connect_as(seeds, &cfg.hostname, login(cfg)).await?,
            None,
        ));
    }
    let stdin = link.stdin;
    if !cfg.tunnel_secret_stdin {
        tokio::spawn(crate::link::stop_on_eof(
            stdin,
            root.clone(),
            converged.clone(),
        ));
        return Ok((
            World::connect_as(seeds, &cfg.hostname, login(cfg)).await?,
            None,
        ));
    }
    let (secret, rest) = match link.secret {
        // A warm start's: read with its graph, before the configuration.
        Some(secret) => (secret, stdin),
        None => {
            let (secret, rest) = crate::link::read_secret(stdin, Duration::from_secs(30)).await?;
            (
                secret,
                Box::new(rest) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            )
        }
    };
    tokio::spawn(crate::link::follow_stdin(
        rest,
        root.clone(),
        converged.clone(),
        sinks,
    ));
    let url = seeds.first().context("--seeds is empty")?;
    let client = crate::link::connect_store(url, Some(&secret), link.dial).await?;
    Ok((World::from_client(client, &cfg.hostname), Some(secret)))
}

/// Where the hosts' tunnel connections go: the embedded store, or, in a
/// gateway, on up the tunnel it was started through.
fn serve_tunnels(
    store: &Option<StoreHandle>,
    (seeds, dial): (&[String], Option<crate::link::Dial>),
    secret: &Option<crate::link::Secret>,
    tunnels: mpsc::Receiver<(crate::ssh::Stream, Arc<crate::store::Speaker>)>,
    cancel: &CancellationToken,
) -> anyhow::Result<Task<()>> {
    let c = cancel.clone();
    if let Some(StoreHandle { store, .. }) = store {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(tunnels)
            .map(|(s, sp)| Ok::<_, std::io::Error>(crate::store::Conn::speaking_for(s, sp)));
        let store = store.clone();
        return Ok(Task(tokio::spawn(async move {
            if let Err(e) = store.serve_incoming(incoming, c).await {
                tracing::error!("store (tunnels): {e}");
            }
        })));
    }
    let secret = secret
        .as_ref()
        .context("--remote with --seeds runs only as a gateway, started by mgmt run --remote")?;
    let url = seeds.first().context("--seeds is empty")?;
    let upstream = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let dial = dial.unwrap_or_else(|| crate::link::tcp_dial(upstream));
    let secret = TunnelSecret::inherited(secret);
    // Upstream, the parent tags what this gateway relays as the gateway.
    let tunnels = tokio_stream::wrappers::ReceiverStream::new(tunnels).map(|(s, _)| s);
    Ok(Task(tokio::spawn(crate::ssh::tunnel::relay(
        tunnels, dial, secret, c,
    ))))
}

/// The URL this process's own client names for its in-process store (the
/// connector ignores it; it only has to be a valid URI).
const IN_PROCESS_URL: &str = "http://in-process.invalid";

/// The embedded store, the tasks serving it, and how this process's own
/// client reaches it (in-process, never through a socket).
struct StoreHandle {
    store: crate::store::Store,
    tasks: Vec<Task<()>>,
    local: crate::link::Dial,
}

/// Starts the embedded store, or returns the external one's URLs.
async fn start_store(
    cfg: &Config,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<String>, Option<StoreHandle>)> {
    let listen = match &cfg.store {
        StoreMode::External { seeds } => return Ok((seeds.clone(), None)),
        StoreMode::Embedded { listen } => listen,
    };
    let store = crate::store::Store::new(crate::store::Config::default());
    if let Some(password) = &cfg.store_password {
        store.enable_auth(&password.0);
    }
    let (local, task) = serve_in_process(&store, cancel);
    let mut tasks = vec![task];
    let mut seeds = Vec::new();
    if let Some(listen) = listen {
        let addr = listen.trim_start_matches("http://").trim_end_matches('/');
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--client-urls: cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        if cfg.store_password.is_some() {
            tracing::info!("store: the listener requires etcd authentication (user root)");
        }
        tracing::info!("store: listening on http://{bound}");
        let (s, cancel) = (store.clone(), cancel.clone());
        tasks.push(Task(tokio::spawn(async move {
            if let Err(e) = s.serve(listener, cancel).await {
                tracing::error!("store: {e}");
            }
        })));
        seeds.push(format!("http://{bound}"));
    }
    Ok((
        seeds,
        Some(StoreHandle {
            store,
            tasks,
            local,
        }),
    ))
}

/// The etcd login for an external store: `root` with
/// `--store-password-file`'s password.
fn login(cfg: &Config) -> Option<(&str, &str)> {
    cfg.store_password.as_ref().map(|p| ("root", p.0.as_str()))
}

/// Serves in-memory pipes to `store`; the [`Dial`](crate::link::Dial)
/// returned opens one. No other process can reach the store this way.
fn serve_in_process(
    store: &crate::store::Store,
    cancel: &CancellationToken,
) -> (crate::link::Dial, Task<()>) {
    // A few at once at most: this process's own client reconnecting.
    let (tx, rx) = mpsc::channel::<tokio::io::DuplexStream>(4);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|s| Ok::<_, std::io::Error>(crate::store::Conn::new(s)));
    let (s, c) = (store.clone(), cancel.clone());
    let task = Task(tokio::spawn(async move {
        if let Err(e) = s.serve_incoming(incoming, c).await {
            tracing::error!("store (in-process): {e}");
        }
    }));
    let dial: crate::link::Dial = Arc::new(move || {
        let tx = tx.clone();
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(256 * 1024);
            tx.send(server).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the embedded store has stopped",
                )
            })?;
            Ok(Box::new(client) as crate::link::DialStream)
        })
    });
    (dial, task)
}

/// Whose converged state, besides this host's, ends the run.
enum Peers {
    /// Nobody else (a client of an external store).
    None,
    /// Every host publishing under `/_mgmt/converged/` (the embedded store).
    Published,
    /// These remote hosts (identity → route shown); each leaves the set
    /// when it ends.
    Hosts(BTreeMap<String, String>),
}

/// Returns when this host (if it runs a graph) and every peer are converged
/// at the same time; with `exit_on_converged` false it only returns once
/// every remote host has ended. Keeps reading host events either way, and
/// shows each remote host's converged state in the UI.
///
/// The peers' states are read once and then followed through a watch from
/// the next revision, so each change costs one event, not a full read.
async fn wait_converged(
    world: &mut World,
    mut status: Option<&mut watch::Receiver<Status>>,
    mut peers: Peers,
    events: &mut mpsc::Receiver<HostEvent>,
    exit_on_converged: bool,
    ui: &Ui,
) -> anyhow::Result<()> {
    let (mut map, mut keys) = match peers {
        Peers::None => (Default::default(), None),
        _ => {
            let (map, rev) = world.converged_snapshot().await?;
            (map, Some(world.watch_converged_from(rev).await?))
        }
    };
    let me = world.hostname().to_owned();
    let mut events_open = true;
    // The remote hosts not converged now, kept up to date event by event:
    // counting them afresh on each event would cost O(hosts) per event.
    let mut unconverged: std::collections::HashSet<String> = match &peers {
        Peers::Hosts(set) => set
            .keys()
            .filter(|h| map.get(*h) != Some(&true))
            .cloned()
            .collect(),
        _ => Default::default(),
    };
    loop {
        let mine = status
            .as_deref_mut()
            .is_none_or(|s| s.borrow_and_update().converged);
        if let Peers::Hosts(set) = &peers {
            if set.is_empty() && status.is_none() {
                return Ok(());
            }
        }
        if exit_on_converged && mine {
            let waiting = match &peers {
                Peers::None => 0,
                Peers::Published => map.iter().filter(|(h, c)| !**c && **h != me).count(),
                Peers::Hosts(_) => unconverged.len(),
            };
            if waiting == 0 {
                return Ok(());
            }
            tracing::debug!("waiting for {waiting} host(s) to converge");
        }
        tokio::select! {
            r = changed(status.as_deref_mut()) => r.context("the engine stopped")?,
            Some(resp) = next_msg(&mut keys) => {
                for host in crate::world::apply_converged(&mut map, &resp?) {
                    if let Peers::Hosts(set) = &peers {
                        if let Some(route) = set.get(&host) {
                            let done = map.get(&host) == Some(&true);
                            if done {
                                unconverged.remove(&host);
                            } else {
                                unconverged.insert(host.clone());
                            }
                            ui.stage(route, if done { Stage::Converged } else { Stage::Running });
                        }
                    }
                }
            }
            ev = events.recv(), if events_open => match ev {
                Some(HostEvent::Ended(h)) => {
                    if let Peers::Hosts(set) = &mut peers {
                        set.remove(&h);
                    }
                    unconverged.remove(&h);
                }
                Some(HostEvent::Running(_)) => {}
                None => events_open = false,
            },
        }
    }
}

/// Returns when a rolling run's lead says the rollout is over; reads host
/// events meanwhile (nothing else needs them: the turns end the run, not
/// the converged rule).
async fn wait_rollout(done: &CancellationToken, events: &mut mpsc::Receiver<HostEvent>) {
    let mut open = true;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            ev = events.recv(), if open => open = ev.is_some(),
        }
    }
}

async fn changed(
    status: Option<&mut watch::Receiver<Status>>,
) -> Result<(), watch::error::RecvError> {
    match status {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

async fn next_msg(
    w: &mut Option<etcd_client::WatchStream>,
) -> Option<Result<etcd_client::WatchResponse, etcd_client::Error>> {
    match w {
        Some(w) => w.message().await.transpose(),
        None => std::future::pending().await,
    }
}
