//! The local graph of a run: exports and collects, the engine, live reload
//! of the file, and this host's converged state in the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{source, Task};
use crate::config::Config;
use crate::engine::{self, Status};
use crate::facts::Facts;
use crate::graph::GraphFile;
use crate::world::World;

/// The running local graph; [`Local::stop`] stops it in order.
pub(super) struct Local {
    /// The engine's status, continuously.
    pub status: watch::Receiver<Status>,
    engine: Task<Status>,
    engine_cancel: CancellationToken,
    source: Task<()>,
    source_cancel: CancellationToken,
    /// Publishes this host's converged state and facts until stopped
    /// (which withdraws them, or leaves them to lapse).
    publisher: Publisher,
}

/// How long a one-shot run's first converged write waits for the engine
/// to converge: a small graph does within milliseconds, and its key is
/// then written once (`true`) instead of twice.
const ONE_SHOT_FIRST_WAIT: Duration = Duration::from_millis(250);

/// The first converged write's wait ([`crate::world::World::publish_converged`]):
/// only with `--converged-timeout 0`, where the engine converges as soon as
/// it settles; with a longer timeout it could not converge in time anyway.
fn first_wait(cfg: &Config) -> Duration {
    match cfg.converged_timeout {
        Some(t) if t.is_zero() => ONE_SHOT_FIRST_WAIT,
        _ => Duration::ZERO,
    }
}

/// The task publishing this host's keys until [`Publisher::stop`].
struct Publisher {
    task: Task<()>,
    cancel: CancellationToken,
    lapse: Arc<AtomicBool>,
}

impl Publisher {
    /// How the keys go when publishing ends: `withdraw`, their lease is
    /// revoked at once (this host ends alone); else it is left to lapse
    /// (the whole run stops, and peers not stopped yet must not see this
    /// host leave: their graphs would change during the stop). Said before
    /// anything else stops, because the engine's end ends publishing too.
    fn on_stop(&self, withdraw: bool) {
        self.lapse.store(!withdraw, Ordering::SeqCst);
    }

    /// Stops publishing ([`Publisher::on_stop`]).
    async fn stop(mut self, withdraw: bool) {
        self.on_stop(withdraw);
        self.cancel.cancel();
        let _ = (&mut self.task.0).await;
    }
}

impl Local {
    /// `from_stdin`: a warm start's edits of `file`, else the file is
    /// watched (unless `--no-watch`). `facts`: this host's, for the
    /// templates and the `hosts()` record. `on_outcome`: told of each
    /// resource's outcome (see [`engine::Config::on_outcome`]).
    /// `stop` is the run's root token: the graph stops following edits,
    /// values and hosts the moment the run starts stopping, so that peers
    /// leaving because of that same stop change nothing here; a stop before
    /// the graph started returns `None`.
    pub async fn start(
        cfg: &Config,
        (file, from_stdin, facts): (&GraphFile, Option<source::StdinGraphs>, Facts),
        world: World,
        (on_outcome, stop): (Option<engine::OutcomeHook>, &CancellationToken),
    ) -> anyhow::Result<Option<Local>> {
        // Armed before anything is applied, so no edit can slip through.
        let edits = match (from_stdin, cfg.watch) {
            (Some(rx), _) => Some(source::Edits::Stdin(rx)),
            (None, true) => match crate::fswatch::PathWatch::new(&file.path) {
                Ok(w) => Some(source::Edits::File(w)),
                Err(e) => {
                    tracing::warn!("{e}; live reload of the graph is off");
                    None
                }
            },
            (None, false) => None,
        };
        tracing::info!(
            "host {}: running graph {:?} from {}",
            cfg.hostname,
            file.graph.name,
            file.label
        );
        let (updates_tx, updates_rx) = mpsc::channel(4);
        // This host's facts and graph, for other hosts' `hosts()` (#20);
        // not in --noop, which publishes nothing.
        let record = serde_json::json!({"graph": file.graph.name, "facts": facts}).to_string();
        let ctx = crate::graph::template::Context {
            facts,
            host: cfg.host.clone(),
            ..Default::default()
        };
        // Published from the start (converged `false` until the engine
        // says otherwise), so the lease is granted while the graph's first
        // export is on its way.
        let (status_tx, status) = watch::channel(Status::default());
        let (publish_cancel, lapse) = (CancellationToken::new(), Arc::default());
        let publisher = Publisher {
            task: Task(tokio::spawn(world.clone().publish_converged(
                status.clone(),
                ((!cfg.noop).then_some(record), first_wait(cfg)),
                (publish_cancel.clone(), Arc::clone(&lapse)),
            ))),
            cancel: publish_cancel,
            lapse,
        };
        let mut source = source::Source::new(file, ctx, world, cfg.noop, updates_tx);
        let initial = tokio::select! {
            r = source.initial() => r,
            _ = stop.cancelled() => {
                // The whole run stops: as in [`Local::stop`].
                publisher.stop(!cfg.store_ends_with_run).await;
                return Ok(None);
            }
        };
        // An input error stays a GraphErrors, which main turns into exit 2.
        let initial = match initial {
            Ok(initial) => initial,
            Err(e) => {
                publisher.stop(true).await;
                return Err(match e {
                    source::StartError::Graph(g) => anyhow::Error::new(g),
                    source::StartError::World(w) => anyhow::Error::new(w),
                });
            }
        };
        let engine_cancel = CancellationToken::new();
        let engine_cfg = engine::Config {
            noop: cfg.noop,
            converged_timeout: cfg.converged_timeout,
            root: cfg.root.clone(),
            on_outcome,
        };
        let engine = Task(tokio::spawn(engine::run(
            engine_cfg,
            initial,
            updates_rx,
            status_tx,
            engine_cancel.clone(),
        )));
        let source_cancel = stop.child_token();
        let source = Task(tokio::spawn(source.run(edits, source_cancel.clone())));
        Ok(Some(Local {
            status,
            engine,
            engine_cancel,
            source,
            source_cancel,
            publisher,
        }))
    }

    /// Resolves only if the engine task ends by itself (a bug).
    pub async fn died(&mut self) -> String {
        match (&mut self.engine.0).await {
            Ok(_) => "it returned".into(),
            Err(e) => e.to_string(),
        }
    }

    /// Stops the graph source, the engine (killing running commands), then
    /// the publisher: `withdraw` when this host ends alone, so its keys go
    /// at once; not when the whole run stops ([`Publisher::stop`]).
    pub async fn stop(mut self, withdraw: bool) -> Status {
        self.publisher.on_stop(withdraw);
        self.source_cancel.cancel();
        let _ = (&mut self.source.0).await;
        self.engine_cancel.cancel();
        let status = (&mut self.engine.0).await.unwrap_or_default();
        self.publisher.stop(withdraw).await;
        status
    }
}
