//! The graph source: turns the graph file and the world into the engine's
//! [`Desired`] graph, and keeps doing so as either changes.
//!
//! On an edit of the file (live reload), the new graph is validated first:
//! an invalid edit is reported and the running graph stays. A valid one
//! re-exports this host's `@@` resources and re-collects. On a change under
//! `/_mgmt/exported/`, collected resources are read again. The engine gets a
//! new graph only when the result differs from what it runs.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::GraphFile;
use crate::engine::Desired;
use crate::fswatch::PathWatch;
use crate::graph::{self, Graph, ResourceDecl};
use crate::world::{World, WorldError};

pub(super) struct Source {
    path: PathBuf,
    /// The text of the graph file that `local` was parsed from.
    text: String,
    local: Graph,
    collected: Vec<ResourceDecl>,
    world: World,
    /// `--noop`: nothing is exported (as mgmt does).
    noop: bool,
    last: Desired,
    updates: mpsc::Sender<Desired>,
}

impl Source {
    pub fn new(
        file: &GraphFile,
        world: World,
        noop: bool,
        updates: mpsc::Sender<Desired>,
    ) -> Source {
        Source {
            path: file.path.clone(),
            text: file.text.clone(),
            local: file.graph.clone(),
            collected: Vec::new(),
            world,
            noop,
            last: Desired::default(),
            updates,
        }
    }

    /// Exports, collects, and returns the first graph to run.
    pub async fn initial(&mut self) -> Result<Desired, WorldError> {
        self.export().await?;
        self.collected = self.world.collect(&self.local.collect).await?;
        self.last = self.desired();
        Ok(self.last.clone())
    }

    fn desired(&self) -> Desired {
        let mut d = Desired::from_graph(&self.local);
        for c in &self.collected {
            if d.resources
                .iter()
                .any(|r| r.kind == c.kind && r.name == c.name)
            {
                tracing::debug!(
                    "{}: collected, but a local resource has that name; using the local one",
                    c.id()
                );
            } else {
                d.resources.push(c.clone());
            }
        }
        d
    }

    async fn export(&mut self) -> Result<(), WorldError> {
        if self.noop {
            return Ok(());
        }
        let exported: Vec<&ResourceDecl> =
            self.local.resources.iter().filter(|r| r.exported).collect();
        self.world.export(&exported).await.map(|_| ())
    }

    async fn push(&mut self) -> bool {
        let d = self.desired();
        if d == self.last {
            return true;
        }
        self.last = d.clone();
        self.updates.send(d).await.is_ok()
    }

    /// Follows file edits (through `file_watch`, armed by the caller before
    /// the first graph was read) and exported resources until cancelled.
    pub async fn run(mut self, mut file_watch: Option<PathWatch>, cancel: CancellationToken) {
        let mut exported = match self.world.watch_exported().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch exported resources: {e}");
                None
            }
        };
        // An edit made before the watch was armed has no event: look once.
        if file_watch.is_some() && !self.reread().await {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = changed(&mut file_watch) => {
                    if let Err(e) = r {
                        tracing::error!("{e}; live reload is off");
                        file_watch = None;
                        continue;
                    }
                    // Let an editor finish writing before reading it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if !self.reread().await {
                        return;
                    }
                }
                msg = next(&mut exported) => {
                    if let Err(e) = msg {
                        tracing::warn!("watching exported resources stopped: {e}");
                        exported = None;
                        continue;
                    }
                    match self.world.collect(&self.local.collect).await {
                        Ok(c) => self.collected = c,
                        Err(e) => tracing::warn!("cannot collect exported resources: {e}"),
                    }
                    if !self.push().await {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the file again and reloads it if its text changed; false when
    /// the engine is gone.
    async fn reread(&mut self) -> bool {
        match std::fs::read_to_string(&self.path) {
            Ok(text) if text != self.text => {
                self.text = text.clone();
                self.reload(text).await
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    "{}: cannot read the graph file ({e}); the running graph stays",
                    self.path.display()
                );
                true
            }
        }
    }

    /// Validates and applies an edit; false when the engine is gone.
    async fn reload(&mut self, src: String) -> bool {
        let label = self.path.display().to_string();
        match graph::parse_str(&src, &label) {
            Ok(g) => {
                tracing::info!("{label}: graph changed; applying it");
                self.local = g;
                if let Err(e) = self.export().await {
                    tracing::warn!("cannot export resources: {e}");
                }
                match self.world.collect(&self.local.collect).await {
                    Ok(c) => self.collected = c,
                    Err(e) => tracing::warn!("cannot collect exported resources: {e}"),
                }
                self.push().await
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!("{label}: invalid edit ignored; the running graph stays");
                true
            }
        }
    }
}

async fn changed(w: &mut Option<PathWatch>) -> Result<(), crate::fswatch::WatchError> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn next(w: &mut Option<etcd_client::WatchStream>) -> Result<(), etcd_client::Error> {
    match w {
        Some(w) => match w.message().await? {
            Some(_) => Ok(()),
            None => Err(etcd_client::Error::WatchError(
                "the store closed the watch".into(),
            )),
        },
        None => std::future::pending().await,
    }
}
