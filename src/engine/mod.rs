//! The engine: applies a graph of resources, reacts to change, and tells when
//! it has converged.
//!
//! One loop owns all scheduling state; each resource runs in its own
//! [`worker`] task. The loop checks a resource once every resource it depends
//! on has applied successfully, and after a resource changed something it
//! pokes its dependents (with a refresh along `notify` edges and the values of
//! Send/Recv edges). A failure holds back the failed resource's dependents;
//! independent branches go on. Events come from watchers (inotify, timers,
//! `watchcmd`), never from polling.
//!
//! A new [`Desired`] graph (live reload, or a change of collected resources)
//! is swapped in place: resources whose declaration is unchanged keep running
//! and are not re-applied, new ones start, removed ones stop. A kept sender
//! whose Send/Recv edge gains a new or restarted receiver is *probed* (asked
//! for its field values, not checked), so the receiver gets the same values
//! the old one had: a password is generated once per process.
//!
//! Resources that can be applied together (`pkg`) run as one vertex; see
//! [`autogroup`].
//!
//! Converged: nothing ran, no event arrived and nothing is waiting to run for
//! `converged_timeout`; the loop then sleeps on its channels and uses no CPU.
//! What to do when converged (exit, publish to the store) is the caller's.

mod autogroup;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::graph::{Edge, Graph, ResourceDecl, VertexRef};
use crate::resources::{self, Checked};
use worker::{Check, Report, Worker};

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global noop: check only, change nothing.
    pub noop: bool,
    /// Idle time after which the engine reports itself converged; `None`
    /// never does.
    pub converged_timeout: Option<Duration>,
    /// Prefix for every filesystem path resources touch (`/` normally).
    pub root: PathBuf,
    /// Told of each resource's outcome as it changes (applied, changed,
    /// failed), e.g. to report it to the parent of a remote run (#18).
    pub on_outcome: Option<OutcomeHook>,
}

/// What happened to one resource, for [`Config::on_outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: String,
    pub name: String,
    /// `applied` (first good check, nothing changed), `changed`, `failed`.
    pub what: &'static str,
    /// Why it failed; empty otherwise.
    pub reason: String,
}

/// A callback for [`Outcome`]s. It runs on the engine's loop: it must not
/// block (write a line, send on a channel with `try_send`).
#[derive(Clone)]
pub struct OutcomeHook(pub std::sync::Arc<dyn Fn(&Outcome) + Send + Sync>);

impl std::fmt::Debug for OutcomeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutcomeHook")
    }
}

/// The resources to run locally and the edges between them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub resources: Vec<ResourceDecl>,
    pub edges: Vec<Edge>,
}

impl Desired {
    /// The local part of a graph: every resource that is not exported.
    pub fn from_graph(g: &Graph) -> Desired {
        Desired {
            resources: g
                .resources
                .iter()
                .filter(|r| !r.exported)
                .cloned()
                .collect(),
            edges: g.edges.clone(),
        }
    }
}

/// What the engine reports, continuously, through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Idle for the converged timeout.
    pub converged: bool,
    /// How many resources the current graph runs.
    pub resources: usize,
    /// `kind[name]: reason` of each failed resource.
    pub failed: Vec<String>,
    /// Check/applies that changed something (or would have, in noop).
    pub changes: u64,
    /// Check/applies run in all.
    pub checks: u64,
    /// `kind[name]: what it waits for` of each resource held back by a
    /// `meta.when` that is not true, or by such a resource it depends on.
    /// While any is waiting the graph is not converged (#15).
    pub waiting: Vec<String>,
}

/// Scheduling state of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not applied yet (or its dependencies are not).
    Pending,
    /// Last check/apply succeeded.
    Ok,
    /// Last check/apply failed (after retries).
    Failed(String),
}

struct Vertex {
    /// The resources this vertex applies, its leader first: one, or a
    /// group made by [`autogroup`].
    decls: Vec<ResourceDecl>,
    /// Worker instance id; reports from older instances are ignored.
    id: u64,
    /// Where checks go; `None` when the resource could not be built.
    checks: Option<mpsc::Sender<Check>>,
    cancel: CancellationToken,
    state: State,
    running: bool,
    /// Needs a check (event, poke, new).
    dirty: bool,
    /// Needs to report its Send/Recv values without a check (after a swap).
    probe: bool,
    /// A refresh is due with the next check.
    refresh: bool,
    /// Received values not yet handed to the worker.
    recv: Vec<(String, Value)>,
    /// Last value delivered per received field, to send only changes.
    last_recv: BTreeMap<String, Value>,
}

struct Engine {
    cfg: Config,
    vertices: HashMap<VertexRef, Vertex>,
    ids: HashMap<u64, VertexRef>,
    edges: Vec<Edge>,
    /// Edge indexes by source and by destination.
    outgoing: HashMap<VertexRef, Vec<usize>>,
    incoming: HashMap<VertexRef, Vec<usize>>,
    reports_tx: mpsc::Sender<Report>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    next_id: u64,
    /// Resources that may have become runnable.
    worklist: Vec<VertexRef>,
    last_activity: Instant,
    /// Every resource of the current graph has had its first check (or is
    /// held back) and nothing runs; reset by a swap. Logged once per graph,
    /// so a run that never exits (`-t -1`) still says when it has settled.
    settled: bool,
    status: Status,
    status_tx: watch::Sender<Status>,
}

/// Runs the engine until `cancel` fires; returns the final status.
pub async fn run(
    cfg: Config,
    initial: Desired,
    mut updates: mpsc::Receiver<Desired>,
    status_tx: watch::Sender<Status>,
    cancel: CancellationToken,
) -> Status {
    // Bounded: workers block when the loop is behind, which is the
    // back-pressure we want; the loop never sends to a worker blockingly.
    let (reports_tx, mut reports) = mpsc::channel(1024);
    let mut e = Engine {
        cfg,
        vertices: HashMap::new(),
        ids: HashMap::new(),
        edges: Vec::new(),
        outgoing: HashMap::new(),
        incoming: HashMap::new(),
        reports_tx,
        tasks: JoinSet::new(),
        cancel: cancel.child_token(),
        next_id: 0,
        worklist: Vec::new(),
        last_activity: Instant::now(),
        settled: false,
        status: Status::default(),
        status_tx,
    };
    e.swap(initial);
    let mut updates_open = true;
    loop {
        e.schedule();
        let busy = e.busy();
        if !busy && !e.settled {
            e.settled = true;
            e.log_settled();
        }
        let idle_deadline = e.idle_deadline(busy);
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(report) = reports.recv() => e.handle(report),
            desired = updates.recv(), if updates_open => match desired {
                Some(d) => e.swap(d),
                // The source is gone (the run is stopping): nothing
                // happened here, so the converged state stays.
                None => {
                    updates_open = false;
                    continue;
                }
            },
            Some(_) = e.tasks.join_next(), if !e.tasks.is_empty() => continue,
            _ = sleep_until_opt(idle_deadline) => {
                e.set_converged(true);
                continue;
            }
        }
        e.activity();
    }
    e.stop().await
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Vertex {
    /// Held back by a false `when:` (a group's members share their meta).
    fn waiting(&self) -> bool {
        self.decls.iter().any(|d| d.meta.waiting())
    }

    /// `kind[name]`, or `kind[a,b,c]` for a group, for logs and status.
    fn label(&self) -> String {
        match self.decls.as_slice() {
            [one] => one.id(),
            many => {
                let names: Vec<&str> = many.iter().map(|d| d.name.as_str()).collect();
                let kind = many.first().map(|d| d.kind).unwrap_or_default();
                format!("{kind}[{}]", names.join(","))
            }
        }
    }
}

impl Engine {
    fn busy(&self) -> bool {
        self.vertices.values().any(|v| v.running)
    }

    /// When the engine will count as converged if nothing happens.
    fn idle_deadline(&self, busy: bool) -> Option<Instant> {
        let t = self.cfg.converged_timeout?;
        let waiting = !self.status.waiting.is_empty();
        (!self.status.converged && !busy && !waiting).then(|| self.last_activity + t)
    }

    fn log_settled(&self) {
        let failed = self
            .vertices
            .values()
            .filter(|v| matches!(v.state, State::Failed(_)))
            .count();
        tracing::info!(
            "settled: {} resources checked, {} changes so far, {failed} failed; waiting for events",
            self.vertices.len(),
            self.status.changes,
        );
        for w in &self.status.waiting {
            tracing::info!("waiting: {w}");
        }
    }

    fn activity(&mut self) {
        self.last_activity = Instant::now();
        self.set_converged(false);
    }

    fn set_converged(&mut self, converged: bool) {
        if self.status.converged == converged {
            return;
        }
        self.status.converged = converged;
        if converged {
            tracing::info!(
                "converged: {} resources, {} changed, {} failed",
                self.status.resources,
                self.status.changes,
                self.status.failed.len()
            );
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.status.resources = self.vertices.values().map(|v| v.decls.len()).sum();
        let mut failed: Vec<String> = self
            .vertices
            .values()
            .filter_map(|v| match &v.state {
                State::Failed(why) => Some(format!("{}: {why}", v.label())),
                _ => None,
            })
            .collect();
        failed.sort();
        self.status.failed = failed;
        self.status.waiting = self.waiting();
        self.status_tx.send_replace(self.status.clone());
    }

    /// What is held back by a `when:` and why, sorted: the condition for a
    /// resource that has one, the resource it waits on for a dependent.
    fn waiting(&self) -> Vec<String> {
        // The common case, and the cheap one: no condition anywhere.
        if !self.vertices.values().any(|v| v.waiting()) {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .vertices
            .iter()
            .filter_map(|(key, v)| {
                if let Some(w) = v
                    .decls
                    .iter()
                    .find_map(|d| d.meta.when.as_ref().filter(|w| !w.ready))
                {
                    return Some(format!("{key}: when {}", w.expr));
                }
                let blocker = self.held_back_by(key)?;
                Some(format!("{key}: after {blocker}, which is waiting"))
            })
            .collect();
        out.sort();
        out
    }

    /// The first resource with a false `when:` that `key` depends on,
    /// directly or not.
    fn held_back_by(&self, key: &VertexRef) -> Option<VertexRef> {
        let mut seen = HashSet::new();
        let mut todo = vec![key.clone()];
        while let Some(k) = todo.pop() {
            for &i in self.incoming.get(&k).into_iter().flatten() {
                let from = &self.edges[i].from;
                if !seen.insert(from.clone()) {
                    continue;
                }
                if self.vertices.get(from).is_some_and(|v| v.waiting()) {
                    return Some(from.clone());
                }
                todo.push(from.clone());
            }
        }
        None
    }

    /// Builds the resource (or the group) of one vertex.
    fn build(decls: &[ResourceDecl]) -> Option<Result<Box<dyn resources::Resource>, String>> {
        let first = decls.first()?;
        let spec = resources::lookup(first.kind)?;
        let built = match (decls, spec.group) {
            ([one], _) => (spec.build)(&one.name, &one.params),
            (many, Some(group)) => {
                let members: Vec<_> = many
                    .iter()
                    .map(|d| (d.name.clone(), d.params.clone()))
                    .collect();
                group(&members)
            }
            (_, None) => return None,
        };
        Some(built.map_err(|e| e.to_string()))
    }

    /// Starts a worker for a vertex; a resource that cannot be built is failed.
    fn spawn(&mut self, decls: Vec<ResourceDecl>) -> Vertex {
        self.next_id += 1;
        let id = self.next_id;
        let cancel = self.cancel.child_token();
        let mut v = Vertex {
            decls,
            id,
            checks: None,
            cancel: cancel.clone(),
            state: State::Pending,
            running: false,
            dirty: true,
            probe: false,
            refresh: false,
            recv: Vec::new(),
            last_recv: BTreeMap::new(),
        };
        let name = v.label();
        let meta = v.decls.first().map(|d| d.meta.clone()).unwrap_or_default();
        let (state, checks) = match Self::build(&v.decls) {
            Some(Ok(resource)) => {
                let (tx, rx) = mpsc::channel(1);
                let w = Worker {
                    id,
                    name,
                    resource,
                    meta,
                    noop: self.cfg.noop,
                    root: self.cfg.root.clone(),
                    checks: rx,
                    reports: self.reports_tx.clone(),
                    cancel: cancel.clone(),
                };
                self.tasks.spawn(w.run());
                (State::Pending, Some(tx))
            }
            Some(Err(e)) => {
                tracing::error!("{name}: {e}");
                (State::Failed(e), None)
            }
            None => {
                tracing::error!("{name}: unknown kind");
                (State::Failed("unknown kind".into()), None)
            }
        };
        v.state = state;
        v.checks = checks;
        v
    }

    /// Swaps in a new graph: unchanged resources keep running untouched.
    fn swap(&mut self, desired: Desired) {
        let mut old = std::mem::take(&mut self.vertices);
        let old_incoming = std::mem::take(&mut self.incoming);
        let old_edges = std::mem::take(&mut self.edges);
        let (mut kept, mut started) = (0, 0);
        // Resources that start afresh: new, or changed and restarted.
        let mut fresh = HashSet::new();
        let plan = autogroup::plan(desired.resources, desired.edges);
        for decls in plan.vertices {
            let Some(key) = decls.first().map(|d| VertexRef {
                kind: d.kind,
                name: d.name.clone(),
            }) else {
                continue;
            };
            let v = match old.remove(&key) {
                Some(v) if v.decls == decls => {
                    kept += 1;
                    v
                }
                prev => {
                    if let Some(prev) = prev {
                        tracing::info!("{}: changed, restarting it", prev.label());
                        prev.cancel.cancel();
                        self.ids.remove(&prev.id);
                    }
                    started += 1;
                    fresh.insert(key.clone());
                    self.spawn(decls)
                }
            };
            self.ids.insert(v.id, key.clone());
            self.vertices.insert(key, v);
        }
        for (key, v) in old {
            tracing::info!("{key}: removed from the graph, stopping it (its effects stay)");
            v.cancel.cancel();
            self.ids.remove(&v.id);
        }
        self.edges = plan.edges;
        for (i, e) in self.edges.iter().enumerate() {
            self.outgoing.entry(e.from.clone()).or_default().push(i);
            self.incoming.entry(e.to.clone()).or_default().push(i);
        }
        // A kept resource whose dependencies changed is checked again.
        let describe = |edges: &[Edge], idx: Option<&Vec<usize>>| {
            let mut v: Vec<_> = idx
                .into_iter()
                .flatten()
                .map(|&i| {
                    (
                        edges[i].from.clone(),
                        edges[i].notify,
                        edges[i].send.clone(),
                        edges[i].recv.clone(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        for (key, v) in self.vertices.iter_mut() {
            if describe(&old_edges, old_incoming.get(key))
                != describe(&self.edges, self.incoming.get(key))
            {
                v.dirty = true;
            }
        }
        self.probe_kept_senders(&old_edges, &fresh);
        if kept > 0 || started > 0 {
            tracing::debug!("graph swapped: {kept} kept, {started} started");
        }
        self.worklist = self.vertices.keys().cloned().collect();
        self.settled = false;
        self.publish();
    }

    /// Values travel along a Send/Recv edge when the sender has applied; a
    /// kept sender does not apply again, so a restarted receiver (which lost
    /// what it had received) or an edge new in this graph would get nothing.
    /// Such senders are probed instead; `done` delivers what they report.
    /// A fresh sender applies anyway, and one not applied yet sends later.
    fn probe_kept_senders(&mut self, old_edges: &[Edge], fresh: &HashSet<VertexRef>) {
        let send_recv = |e: &Edge| {
            Some((
                e.from.clone(),
                e.send.clone()?,
                e.to.clone(),
                e.recv.clone()?,
            ))
        };
        let before: HashSet<_> = old_edges.iter().filter_map(send_recv).collect();
        for e in &self.edges {
            let Some(link) = send_recv(e) else { continue };
            let unfed = fresh.contains(&e.to) || !before.contains(&link);
            if !unfed || fresh.contains(&e.from) {
                continue;
            }
            if let Some(sender) = self.vertices.get_mut(&e.from) {
                if sender.state == State::Ok {
                    sender.probe = true;
                }
            }
        }
    }

    fn ready(&self, key: &VertexRef) -> bool {
        self.incoming.get(key).into_iter().flatten().all(|&i| {
            let from = &self.edges[i].from;
            self.vertices
                .get(from)
                .is_some_and(|p| p.state == State::Ok && !p.dirty && !p.probe && !p.running)
        })
    }

    /// Sends a check to every resource on the worklist that may run now.
    fn schedule(&mut self) {
        let mut list = std::mem::take(&mut self.worklist);
        list.sort();
        list.dedup();
        for key in list {
            let Some(v) = self.vertices.get(&key) else {
                continue;
            };
            // Held back by its `when:`; a new render restarts it when true.
            if v.running || v.checks.is_none() || v.waiting() {
                continue;
            }
            // A due check also reports the values, so it answers a probe too.
            let probe = match (v.dirty, v.probe) {
                (true, _) if self.ready(&key) => false,
                (false, true) => true,
                _ => continue,
            };
            let sends: Vec<String> = self
                .outgoing
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|&i| self.edges[i].send.clone())
                .collect();
            let Some(v) = self.vertices.get_mut(&key) else {
                continue;
            };
            let check = Check {
                probe,
                refresh: v.refresh && !probe,
                recv: if probe {
                    Vec::new()
                } else {
                    std::mem::take(&mut v.recv)
                },
                sends,
            };
            if let Some(tx) = &v.checks {
                if tx.try_send(check).is_ok() {
                    v.running = true;
                    v.probe = false;
                    if !probe {
                        v.dirty = false;
                        v.refresh = false;
                        self.status.checks += 1;
                    }
                }
            }
        }
    }

    fn handle(&mut self, report: Report) {
        match report {
            Report::Event { id } => {
                if let Some(v) = self.ids.get(&id).and_then(|k| self.vertices.get_mut(k)) {
                    tracing::debug!("{}: event", v.label());
                    v.dirty = true;
                    self.worklist.push(self.ids[&id].clone());
                }
            }
            Report::WatchFailed { id, error } => {
                if let Some(v) = self.ids.get(&id).and_then(|k| self.vertices.get_mut(k)) {
                    tracing::error!("{}: watch failed: {error}", v.label());
                    v.state = State::Failed(format!("watch failed: {error}"));
                    self.publish();
                }
            }
            Report::Done {
                id,
                probe,
                result,
                fields,
            } => self.done(id, probe, result, fields),
        }
    }

    fn done(
        &mut self,
        id: u64,
        probe: bool,
        result: Result<Checked, String>,
        fields: BTreeMap<String, Value>,
    ) {
        let Some(key) = self.ids.get(&id).cloned() else {
            return;
        };
        let Some(v) = self.vertices.get_mut(&key) else {
            return;
        };
        v.running = false;
        self.worklist.push(key.clone());
        if probe {
            // Only the values: the resource's state is whatever it was.
            self.deliver(&key, &fields, false, false);
            return;
        }
        let was_ok = v.state == State::Ok;
        let hook = self.cfg.on_outcome.clone();
        let tell = |what: &'static str, reason: &str| {
            if let Some(h) = &hook {
                h.0(&Outcome {
                    kind: key.kind.to_string(),
                    name: key.name.clone(),
                    what,
                    reason: reason.to_string(),
                });
            }
        };
        let changed = match result {
            Ok(c) => {
                v.state = State::Ok;
                c == Checked::Changed
            }
            Err(why) => {
                tracing::error!("{}: {why}", v.label());
                tell("failed", &why);
                v.state = State::Failed(why);
                self.publish();
                return;
            }
        };
        match (changed, was_ok) {
            (true, _) => tell("changed", ""),
            (false, false) => tell("applied", ""),
            (false, true) => {}
        }
        if changed {
            self.status.changes += 1;
        }
        if !was_ok {
            self.publish();
        }
        let poke = changed || !was_ok;
        self.deliver(&key, &fields, changed, poke);
    }

    /// Hands `key`'s outcome to its dependents: Send/Recv values that
    /// changed, a poke, and a refresh along `notify` edges.
    fn deliver(
        &mut self,
        key: &VertexRef,
        fields: &BTreeMap<String, Value>,
        changed: bool,
        poke: bool,
    ) {
        for i in self.outgoing.get(key).cloned().unwrap_or_default() {
            let e = &self.edges[i];
            let Some(child) = self.vertices.get_mut(&e.to) else {
                continue;
            };
            if let (Some(send), Some(recv)) = (&e.send, &e.recv) {
                if let Some(val) = fields.get(send) {
                    if child.last_recv.get(recv) != Some(val) {
                        child.last_recv.insert(recv.clone(), val.clone());
                        child.recv.push((recv.clone(), val.clone()));
                        child.dirty = true;
                    }
                }
            }
            if poke {
                child.dirty = true;
            }
            if e.notify && changed {
                child.refresh = true;
                child.dirty = true;
            }
            self.worklist.push(e.to.clone());
        }
    }

    /// Stops every worker (running commands are killed) and waits for them.
    async fn stop(mut self) -> Status {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.publish();
        self.status
    }
}

#[cfg(test)]
mod tests;
