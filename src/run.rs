//! Top-level orchestration of `mgmt run`: start what the configuration asks
//! for, wait for the end (convergence, signal, max runtime), stop in order.
//!
//! Start order: the store (embedded, or a client of `--seeds`), this host's
//! exports and collects, the engine, the graph source (file edits and
//! exported-resource changes become new graphs for the engine), the
//! converged publisher. Stop order is the reverse, so the store stops last,
//! after everything that uses it.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreMode};
use crate::engine::{self, Status};
use crate::world::World;

mod source;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// Why it stopped.
    pub reason: StopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Converged,
    Cancelled,
    MaxRuntime,
}

impl Outcome {
    /// 0 when nothing failed, 1 otherwise (input errors, 2, never get here).
    pub fn exit_code(&self) -> u8 {
        if self.status.failed.is_empty() {
            0
        } else {
            1
        }
    }
}

/// A task that is aborted if it is still running when dropped.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs until converged (with a timeout), cancelled or out of time.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let file = cfg.file.clone().context("no graph to run")?;
    let (path, graph) = (file.path.clone(), file.graph.clone());
    // Armed before anything is applied, so no edit can slip through.
    let file_watch = match cfg.watch {
        true => Some(crate::fswatch::PathWatch::new(&path)?),
        false => None,
    };
    let store_cancel = CancellationToken::new();
    let (seeds, store_task) = start_store(&cfg.store, &store_cancel).await?;
    let mut world = connect_world(&cfg, &seeds, &cancel).await?;
    tracing::info!(
        "host {}: running graph {:?} from {}",
        cfg.hostname,
        graph.name,
        path.display()
    );

    let (updates_tx, updates_rx) = mpsc::channel(4);
    let mut source = source::Source::new(&file, world.clone(), cfg.noop, updates_tx);
    let initial = source.initial().await?;
    let (status_tx, mut status_rx) = watch::channel(Status::default());
    let engine_cancel = CancellationToken::new();
    let engine_cfg = engine::Config {
        noop: cfg.noop,
        converged_timeout: cfg.converged_timeout,
        root: "/".into(),
    };
    let mut engine = Task(tokio::spawn(engine::run(
        engine_cfg,
        initial,
        updates_rx,
        status_tx,
        engine_cancel.clone(),
    )));
    let source_cancel = CancellationToken::new();
    let source_task = Task(tokio::spawn(source.run(file_watch, source_cancel.clone())));

    let publish_cancel = CancellationToken::new();
    let publisher = Task(tokio::spawn(
        world
            .clone()
            .publish_converged(status_rx.clone(), publish_cancel.clone()),
    ));
    let cluster = matches!(cfg.store, StoreMode::Embedded { .. });
    let exit_on_converged = cfg.converged_timeout.is_some() && cfg.depth == 0;

    let reason = tokio::select! {
        _ = cancel.cancelled() => StopReason::Cancelled,
        _ = sleep_opt(cfg.max_runtime) => {
            tracing::info!("--max-runtime reached; stopping");
            StopReason::MaxRuntime
        }
        r = wait_converged(&mut world, &mut status_rx, cluster), if exit_on_converged => {
            r?;
            tracing::info!("converged for {}s; stopping", cfg.converged_timeout.unwrap_or_default().as_secs());
            StopReason::Converged
        }
        r = &mut engine.0 => anyhow::bail!("the engine stopped unexpectedly: {r:?}"),
    };
    source_cancel.cancel();
    let _ = (&mut { source_task }.0).await;
    engine_cancel.cancel();
    let status = (&mut engine.0).await?;
    publish_cancel.cancel();
    if let Ok(Err(e)) = (&mut { publisher }.0).await {
        tracing::warn!("converged state: {e}");
    }
    store_cancel.cancel();
    if let Some(t) = store_task {
        let _ = (&mut { t }.0).await;
    }
    Ok(Outcome { status, reason })
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Connects to the store; a child (depth 1 and more) also starts following
/// its stdin, whose end means the parent is gone.
async fn connect_world(
    cfg: &Config,
    seeds: &[String],
    root: &CancellationToken,
) -> anyhow::Result<World> {
    if cfg.depth == 0 {
        return Ok(World::connect(seeds, &cfg.hostname).await?);
    }
    let stdin = tokio::io::stdin();
    if !cfg.tunnel_secret_stdin {
        tokio::spawn(crate::link::stop_on_eof(stdin, root.clone()));
        return Ok(World::connect(seeds, &cfg.hostname).await?);
    }
    let (secret, rest) = crate::link::read_secret(stdin, Duration::from_secs(30)).await?;
    tokio::spawn(crate::link::stop_on_eof(rest, root.clone()));
    let url = seeds.first().context("--seeds is empty")?;
    Ok(World::connect_tunnel(url, &secret, &cfg.hostname).await?)
}

/// Starts the embedded store, or returns the external one's URLs.
async fn start_store(
    mode: &StoreMode,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<String>, Option<Task<()>>)> {
    match mode {
        StoreMode::External { seeds } => Ok((seeds.clone(), None)),
        StoreMode::Embedded { listen } => {
            let addr = listen.trim_start_matches("http://").trim_end_matches('/');
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--client-urls: cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!("store: listening on http://{local}");
            let store = crate::store::Store::new(crate::store::Config::default());
            let cancel = cancel.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = store.serve(listener, cancel).await {
                    tracing::error!("store: {e}");
                }
            });
            Ok((vec![format!("http://{local}")], Some(Task(task))))
        }
    }
}

/// Returns once this host is converged and, with `cluster`, every host that
/// publishes under `/_mgmt/converged/` is too, at the same time.
async fn wait_converged(
    world: &mut World,
    status: &mut watch::Receiver<Status>,
    cluster: bool,
) -> anyhow::Result<()> {
    let mut hosts = if cluster {
        Some(world.watch_converged().await?)
    } else {
        None
    };
    loop {
        let mine = status.borrow_and_update().converged;
        if mine {
            let others = match &mut hosts {
                Some(_) => world.converged_map().await?,
                None => Default::default(),
            };
            let me = world.hostname().to_owned();
            let waiting: Vec<_> = others
                .iter()
                .filter(|(h, c)| !**c && **h != me)
                .map(|(h, _)| h.as_str())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            tracing::debug!("converged here; waiting for {}", waiting.join(", "));
        }
        tokio::select! {
            r = status.changed() => r.context("the engine stopped")?,
            Some(ev) = next_msg(&mut hosts) => { ev?; }
        }
    }
}

async fn next_msg(
    w: &mut Option<etcd_client::WatchStream>,
) -> Option<Result<(), etcd_client::Error>> {
    match w {
        Some(w) => w.message().await.map(|m| m.map(|_| ())).transpose(),
        None => std::future::pending().await,
    }
}
