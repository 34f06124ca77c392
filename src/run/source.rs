//! The graph source: turns the graph file and the world into the engine's
//! [`Desired`] graph, and keeps doing so as either changes.
//!
//! The file's templates (#15) are rendered here, on the host, with its
//! facts (gathered once, at start), its place in the run and the values
//! hosts publish with `kv` resources; the values are followed like
//! collected resources (a [`Follower`] of every host's `kv` exports, only
//! when the text reads `values()`), and a change renders the file again.
//! The first render, like the first parse, is all or nothing: an error
//! there stops the run before anything is applied.
//!
//! On an edit of the file (live reload; a warm start's edits come on its
//! stdin instead, [`Edits`]) or new values, the new graph is
//! rendered and validated first: an invalid one is reported and the running
//! graph stays. A valid one re-exports this host's `@@` resources and
//! follows its `collect:` entries (a changed list changes what is read and
//! watched). Collected resources come from a [`Follower`]: one read, then
//! watch events on the prefixes the entries select, nothing at all without
//! entries; two hosts' files landing on one path are an error, not a pick.
//! The engine gets a new graph only when the result differs from what it
//! runs, so an unchanged render re-applies nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::Desired;
use crate::fswatch::PathWatch;
use crate::graph::template::{reads_hosts, reads_values, Context};
use crate::graph::{self, Collect, Graph, GraphError, GraphErrors, GraphFile, ResourceDecl};
use crate::world::{Collision, Follower, World, WorldError};

/// How long the first export and collect may keep failing before the run
/// gives up.
const INITIAL_PATIENCE: Duration = Duration::from_secs(60);

/// Why the first graph could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    /// The file does not render or validate, or its collects collide:
    /// an input error (exit 2), nothing applied.
    #[error(transparent)]
    Graph(#[from] GraphErrors),
    #[error(transparent)]
    World(#[from] WorldError),
}

pub(super) struct Source {
    path: PathBuf,
    /// The path as shown in errors.
    label: String,
    /// The text of the graph file that `local` was rendered from.
    text: String,
    /// What templates read; `values` kept current from `values`.
    ctx: Context,
    local: Graph,
    /// What `follow` last handed out.
    collected: Vec<ResourceDecl>,
    /// Follows `local.collect`; re-pointed on each valid edit.
    follow: Follower,
    /// Follows every host's `kv` exports while the text reads `values()`.
    values: Follower,
    /// Follows every host's published facts while the text calls `hosts()`.
    published: crate::world::Published,
    world: World,
    /// `--noop`: nothing is exported (as mgmt does); rendered values are shown.
    noop: bool,
    last: Desired,
    updates: mpsc::Sender<Desired>,
}

impl Source {
    pub fn new(
        file: &GraphFile,
        ctx: Context,
        world: World,
        noop: bool,
        updates: mpsc::Sender<Desired>,
    ) -> Source {
        Source {
            path: file.path.clone(),
            label: file.label.clone(),
            text: file.text.clone(),
            ctx,
            local: file.graph.clone(),
            collected: Vec::new(),
            follow: Follower::new(world.clone()),
            values: Follower::new(world.clone()),
            published: crate::world::Published::new(world.clone()),
            world,
            noop,
            last: Desired::default(),
            updates,
        }
    }

    /// Renders, exports, collects, and returns the first graph to run.
    /// A store that is slow for a moment (a loaded tunnel, a keepalive
    /// missed) is retried with back-off for up to [`INITIAL_PATIENCE`];
    /// an input error is returned at once.
    pub async fn initial(&mut self) -> Result<Desired, StartError> {
        let deadline = tokio::time::Instant::now() + INITIAL_PATIENCE;
        let mut pause = Duration::from_millis(200);
        loop {
            match self.try_initial().await {
                Ok(d) => return Ok(d),
                Err(StartError::World(e)) if e.is_refusal() => {
                    tracing::error!(
                        "the store refused this process ({e}); if it requires etcd \
                         authentication, give --store-password-file with root's password"
                    );
                    return Err(StartError::World(e));
                }
                Err(StartError::World(e)) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!("{e}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_initial(&mut self) -> Result<Desired, StartError> {
        self.values.follow(&values_entries(&self.text)).await?;
        self.ctx.values = self.values.values();
        self.published.follow(reads_hosts(&self.text)).await?;
        self.ctx.hosts = self.published.hosts();
        self.local = self.render()?;
        self.show();
        self.export().await?;
        self.follow.follow(&self.local.collect).await?;
        self.collected = self.gathered()?;
        self.last = self.desired();
        Ok(self.last.clone())
    }

    /// The file's text rendered with the current context, validated. This
    /// host's own `kv` exports count as published at once: a second pass
    /// renders with them when the store does not show them yet, so a host
    /// does not apply a graph without its own value first.
    fn render(&self) -> Result<Graph, GraphErrors> {
        let g = graph::parse_rendered(&self.text, &self.label, &self.ctx)?;
        let mut ctx = self.ctx.clone();
        let me = &ctx.host.name;
        for by_host in ctx.values.values_mut() {
            by_host.remove(me);
        }
        for r in g.resources.iter().filter(|r| r.exported && r.kind == "kv") {
            if let Some(v) = r.params.get("value").and_then(|v| v.as_str()) {
                let by_host = ctx.values.entry(r.name.clone()).or_default();
                by_host.insert(me.clone(), v.to_owned());
            }
        }
        ctx.values.retain(|_, by_host| !by_host.is_empty());
        if ctx.values == self.ctx.values {
            return Ok(g);
        }
        graph::parse_rendered(&self.text, &self.label, &ctx)
    }

    /// What the collect entries bring in, unless two hosts' files collide.
    fn gathered(&self) -> Result<Vec<ResourceDecl>, GraphErrors> {
        match self.follow.collision() {
            Some(c) => Err(self.collision_error(&c)),
            None => Ok(self.follow.collected()),
        }
    }

    fn collision_error(&self, c: &Collision) -> GraphErrors {
        GraphErrors(vec![GraphError {
            file: self.label.clone(),
            pos: (c.pos.line > 0).then_some(c.pos),
            message: c.to_string(),
        }])
    }

    /// `--noop` shows what the templates rendered, resource by resource.
    fn show(&self) {
        if !self.noop {
            return;
        }
        for r in &self.local.resources {
            let params = serde_json::to_string(&r.params).unwrap_or_default();
            let at = if r.exported { " (exported)" } else { "" };
            tracing::info!("noop: {}{at} rendered: {params}", r.id());
        }
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

    /// Follows edits (through `edits`, armed by the caller before the
    /// first graph was read), exchanged values and collected resources
    /// until cancelled.
    pub async fn run(mut self, mut edits: Option<Edits>, cancel: CancellationToken) {
        // An edit of the file made before the watch was armed has no
        // event: look once. (One on stdin waits in its channel.)
        if matches!(edits, Some(Edits::File(_))) && !self.reread().await {
            return;
        }
        loop {
            tokio::select! {
                // A stop wins over a change that arrived with it.
                biased;
                _ = cancel.cancelled() => return,
                r = next_edit(&mut edits) => {
                    let text = match r {
                        Ok(Edit::File) => {
                            // Let an editor finish writing before reading it.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            None
                        }
                        Ok(Edit::Text(text)) => Some(text),
                        Err(why) => {
                            tracing::error!("{why}; live reload is off");
                            edits = None;
                            continue;
                        }
                    };
                    let more = match text {
                        Some(text) => self.take(text.to_string()).await,
                        None => self.reread().await,
                    };
                    if !more {
                        return;
                    }
                }
                _ = self.values.changed() => {
                    let values = self.values.values();
                    if values != self.ctx.values {
                        self.ctx.values = values;
                        if !self.reload(Why::Values).await {
                            return;
                        }
                    }
                }
                () = self.published.changed() => {
                    let hosts = self.published.hosts();
                    if hosts != self.ctx.hosts {
                        self.ctx.hosts = hosts;
                        if !self.reload(Why::Values).await {
                            return;
                        }
                    }
                }
                _ = self.follow.changed() => {
                    match self.gathered() {
                        Ok(collected) => self.collected = collected,
                        Err(e) => {
                            log_errors(&e, "collected resources not taken; the running graph stays");
                            continue;
                        }
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
            Ok(text) => self.take(text).await,
            Err(e) => {
                tracing::warn!(
                    "{}: cannot read the graph file ({e}); the running graph stays",
                    self.path.display()
                );
                true
            }
        }
    }

    /// Takes an edit's `text`: when it differs from the running text,
    /// follows what it reads and renders it (see [`Self::reload`]).
    async fn take(&mut self, text: String) -> bool {
        if text == self.text {
            return true;
        }
        self.text = text;
        if let Err(e) = self.values.follow(&values_entries(&self.text)).await {
            tracing::warn!("cannot follow exchanged values: {e}");
        }
        self.ctx.values = self.values.values();
        if let Err(e) = self.published.follow(reads_hosts(&self.text)).await {
            tracing::warn!("cannot follow the hosts' published facts: {e}");
        }
        self.ctx.hosts = self.published.hosts();
        self.reload(Why::Edit).await
    }

    /// Renders and validates the text again and applies the result when it
    /// differs; false when the engine is gone.
    async fn reload(&mut self, why: Why) -> bool {
        let g = match self.render() {
            Ok(g) => g,
            Err(errors) => {
                let then = match why {
                    Why::Edit => format!("{}: invalid edit ignored; the running graph stays", self.label),
                    Why::Values => format!("{}: the graph does not render with the new values; the running graph stays", self.label),
                };
                log_errors(&errors, &then);
                return true;
            }
        };
        match why {
            Why::Edit => tracing::info!("{}: graph changed; applying it", self.label),
            Why::Values if g != self.local => tracing::info!(
                "{}: exchanged values changed the graph; applying it",
                self.label
            ),
            Why::Values => {}
        }
        if g == self.local {
            return true;
        }
        self.local = g;
        self.show();
        if let Err(e) = self.export().await {
            tracing::warn!("cannot export resources: {e}");
        }
        match self.follow.follow(&self.local.collect).await {
            Ok(()) => match self.gathered() {
                Ok(c) => self.collected = c,
                Err(e) => log_errors(&e, "collected resources not taken"),
            },
            Err(e) => tracing::warn!("cannot collect exported resources: {e}"),
        }
        self.push().await
    }
}

/// What made the text render again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The file was edited.
    Edit,
    /// Values exported by hosts changed.
    Values,
}

fn log_errors(errors: &GraphErrors, then: &str) {
    for e in &errors.0 {
        tracing::error!("{e}");
    }
    tracing::error!("{then}");
}

/// What the values follower follows for `text`: every host's `kv`
/// exports when its templates read them, nothing otherwise.
fn values_entries(text: &str) -> Vec<Collect> {
    if !reads_values(text) {
        return Vec::new();
    }
    vec![Collect {
        kind: "kv",
        pattern: None,
        hostname: None,
        pos: Default::default(),
    }]
}

/// A warm start's edited graphs, from its stdin ([`crate::link::follow_stdin`]).
pub(super) type StdinGraphs = watch::Receiver<Option<Arc<str>>>;

/// Where a graph's live edits come from.
pub(super) enum Edits {
    /// The graph file, watched on disk.
    File(PathWatch),
    /// The parent's frames on stdin (a warm start): the latest text.
    Stdin(StdinGraphs),
}

/// What changed: the file (read it), or a new text.
enum Edit {
    File,
    Text(Arc<str>),
}

/// The next edit; an error when the file can no longer be watched.
async fn next_edit(edits: &mut Option<Edits>) -> Result<Edit, String> {
    match edits {
        Some(Edits::File(w)) => w
            .changed()
            .await
            .map(|()| Edit::File)
            .map_err(|e| e.to_string()),
        Some(Edits::Stdin(rx)) => loop {
            if rx.changed().await.is_err() {
                // Stdin is closed: the run is stopping, no edit comes.
                return std::future::pending().await;
            }
            if let Some(text) = rx.borrow_and_update().clone() {
                return Ok(Edit::Text(text));
            }
        },
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
            label: "g.yaml".into(),
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
        let mut source = Source::new(
            &graph_file(""),
            Context::default(),
            world.clone(),
            false,
            tx,
        );
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
        let mut source = Source::new(
            &graph_file(""),
            Context::default(),
            world.clone(),
            false,
            tx,
        );
        source.initial().await.expect("initial");
        let collect = "collect:\n- kind: file\n  hostname: \"h?\"\n";
        source.text = format!("{EXPORTS}{collect}");
        assert!(source.reload(Why::Edit).await);
        let s = world.collect_stats();
        assert_eq!((s.reads, s.watches), (1, 1));
        // Its own export matches `h?`: collected, but the local one wins.
        assert_eq!(source.collected.len(), 1);
        source.text = EXPORTS.to_owned();
        assert!(source.reload(Why::Edit).await);
        assert!(source.collected.is_empty());
        assert_eq!(world.collect_stats(), s);
        served.stop().await;
    }
}
