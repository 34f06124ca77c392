//! The graph source: turns the graph file and the world into the engine's
//! [`Desired`] graph, and keeps doing so as either changes.
//!
//! On an edit of the file (live reload), the new graph is validated first:
//! an invalid edit is reported and the running graph stays. A valid one
//! re-exports this host's `@@` resources and follows its `collect:` entries
//! (a changed list changes what is read and watched). Collected resources
//! come from a [`Follower`]: one read, then watch events on the prefixes the
//! entries select, nothing at all without entries. The engine gets a new
//! graph only when the result differs from what it runs.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Desired;
use crate::fswatch::PathWatch;
use crate::graph::GraphFile;
use crate::graph::{self, Graph, ResourceDecl};
use crate::world::{Follower, World, WorldError};

/// How long the first export and collect may keep failing before the run
/// gives up.
const INITIAL_PATIENCE: Duration = Duration::from_secs(60);

pub(super) struct Source {
    path: PathBuf,
    /// The text of the graph file that `local` was parsed from.
    text: String,
    local: Graph,
    /// What `follow` last handed out.
    collected: Vec<ResourceDecl>,
    /// Follows `local.collect`; re-pointed on each valid edit.
    follow: Follower,
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
            follow: Follower::new(world.clone()),
            world,
            noop,
            last: Desired::default(),
            updates,
        }
    }

    /// Exports, collects, and returns the first graph to run.
    /// A store that is slow for a moment (a loaded tunnel, a keepalive
    /// missed) is retried with back-off for up to [`INITIAL_PATIENCE`].
    pub async fn initial(&mut self) -> Result<Desired, WorldError> {
        let deadline = tokio::time::Instant::now() + INITIAL_PATIENCE;
        let mut pause = Duration::from_millis(200);
        loop {
            match self.try_initial().await {
                Ok(d) => return Ok(d),
                Err(e) if e.is_refusal() => {
                    tracing::error!(
                        "the store refused this process ({e}); if it requires etcd \
                         authentication, give --store-password-file with root's password"
                    );
                    return Err(e);
                }
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!("{e}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_initial(&mut self) -> Result<Desired, WorldError> {
        self.export().await?;
        self.follow.follow(&self.local.collect).await?;
        self.collected = self.follow.collected();
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
    /// the first graph was read) and collected resources until cancelled.
    pub async fn run(mut self, mut file_watch: Option<PathWatch>, cancel: CancellationToken) {
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
                collected = self.follow.changed() => {
                    self.collected = collected;
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
                match self.follow.follow(&self.local.collect).await {
                    Ok(()) => self.collected = self.follow.collected(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::testing::Served;
    use crate::world::CollectStats;

    const EXPORTS: &str =
        "graph: g\nresources:\n  file:\n  - name: \"@@f\"\n    path: /srv/f\n    content: hi\n";

    fn graph_file(collect: &str) -> GraphFile {
        let text = format!("{EXPORTS}{collect}");
        let graph = graph::parse_str(&text, "g.yaml").expect("valid graph");
        GraphFile {
            path: "g.yaml".into(),
            text,
            graph,
        }
    }

    // The 10,000-host case: a host that collects nothing must not watch.
    #[tokio::test]
    async fn without_collect_entries_nothing_is_read_or_watched() {
        let served = Served::start().await;
        let world = served.world("lone").await;
        let (tx, _rx) = mpsc::channel(4);
        let mut source = Source::new(&graph_file(""), world.clone(), false, tx);
        source.initial().await.expect("initial");
        // Cancelled first: run arms whatever it arms, then returns.
        let cancel = CancellationToken::new();
        cancel.cancel();
        source.run(None, cancel).await;
        assert_eq!(world.collect_stats(), CollectStats::default());
        served.stop().await;
    }

    #[tokio::test]
    async fn an_edit_of_the_collect_list_changes_what_is_watched() {
        let served = Served::start().await;
        let world = served.world("h1").await;
        let (tx, _rx) = mpsc::channel(4);
        let mut source = Source::new(&graph_file(""), world.clone(), false, tx);
        source.initial().await.expect("initial");
        let collect = "collect:\n- kind: file\n  hostname: \"h?\"\n";
        assert!(source.reload(format!("{EXPORTS}{collect}")).await);
        let s = world.collect_stats();
        assert_eq!((s.reads, s.watches), (1, 1));
        // Its own export matches `h?`: collected, but the local one wins.
        assert_eq!(source.collected.len(), 1);
        assert!(source.reload(EXPORTS.to_owned()).await);
        assert!(source.collected.is_empty());
        assert_eq!(world.collect_stats(), s);
        served.stop().await;
    }
}
