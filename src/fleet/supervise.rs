//! A child running on a placed host: the reverse tunnel and its bridge to
//! the store, the launch (a binary that fails its hash check is replaced
//! once), its output streamed line by line, the graph files kept in step
//! with the local ones, and the stop sequence: stdin closed, then SIGINT,
//! then SIGKILL, each by the child's own pid, never escalated while the
//! stop is still progressing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::place::{explain, replace_binary, Placed};
use super::shared::{HostEvent, Shared, STOP_GRACE};
use super::source::Source;
use crate::ssh::launch::VERIFY_FAILED_EXIT;
use crate::ssh::session::KillSignal;
use crate::ssh::tunnel::{ReverseTunnel, TunnelSecret};
use crate::ssh::{
    check_preamble, ExecOptions, ExitStatus, OutputLine, RemoteChild, Session, Stream,
};
use crate::store::Speaker;
use crate::ui::{RowResult, Stage, SummaryRow};

/// A file on the host kept in step with a local graph file.
pub(crate) struct Synced {
    /// Its name in the per-run directory.
    pub name: String,
    pub source: watch::Receiver<Arc<Source>>,
    /// For a gateway: the `via:` hops still ahead, written into the text.
    pub rest: Option<Vec<String>>,
}

impl Synced {
    /// The text to put on the host; `None` if it cannot be rewritten.
    pub fn text(&self) -> Option<Arc<str>> {
        let source = self.source.borrow().clone();
        source.for_host(self.rest.as_deref())
    }
}

/// What to run on a placed host, and how to read what it prints.
pub(crate) struct Launch<'a> {
    /// Display name in the UI.
    pub label: &'a str,
    /// The child's arguments, given the tunnel port on the host.
    pub args: Vec<String>,
    /// Files on the host kept in step with local ones.
    pub synced: Vec<Synced>,
    /// Forward agent access to the child (gateways).
    pub agent: bool,
    /// How long the child may take to stop by itself once its stdin is
    /// closed, before it gets SIGINT (a gateway first stops its subtree).
    pub stdin_grace: Duration,
    /// Whom the child's store connections speak for: the host, or a gateway
    /// and the hosts behind it. The store lets them write only those keys.
    pub speaker: Arc<Speaker>,
    /// Every line the child prints; may return an event for the run loop.
    pub on_line: &'a mut (dyn FnMut(OutputLine) -> Option<HostEvent> + Send),
    pub events: mpsc::Sender<HostEvent>,
    /// Lines for the child's stdin after the secret (a rolling run's
    /// turns, for a gateway); each is written again to a relaunched child.
    pub stdin_lines: Option<mpsc::UnboundedReceiver<String>>,
    /// What was written so far.
    pub written: Vec<String>,
}

/// Where `{port}` stands in [`Launch::args`] until the tunnel is open.
pub(crate) const PORT_SLOT: &str = "{port}";

/// The reverse tunnel to a host's child, the secret that opens it, and the
/// bridge that checks the secret before a byte reaches the store.
pub(crate) struct Linked {
    port: String,
    pub secret: TunnelSecret,
    bridges: JoinSet<()>,
    t0: Instant,
}

impl Linked {
    /// The launch's arguments with the tunnel's port on the host.
    pub fn args(&self, launch: &Launch<'_>) -> Vec<String> {
        launch
            .args
            .iter()
            .map(|a| a.replace(PORT_SLOT, &self.port))
            .collect()
    }
}

/// Opens the reverse tunnel for a launch's child on `session`: its store
/// connections speak for the launch's speaker, reading what its synced
/// graphs collect; `agent` forwards agent access to it.
pub(crate) async fn link_up(
    shared: &Shared,
    session: &Session,
    (speaker, synced, agent): (Arc<Speaker>, &[Synced], bool),
) -> Result<Linked, String> {
    let t0 = Instant::now();
    speaker.allow_reads(read_scope(synced));
    let tunnel = session.reverse_tunnel(64).await.map_err(|e| explain(&e))?;
    // A secret of this launch's own: it opens this host's tunnel only.
    let secret = TunnelSecret::generate();
    let port = tunnel.port.to_string();
    let mut bridges = JoinSet::new();
    bridges.spawn(bridge(
        tunnel,
        secret.clone(),
        speaker,
        shared.tunnels.clone(),
    ));
    if agent {
        session.set_agent_forwarding(shared.agent.clone());
    }
    Ok(Linked {
        port,
        secret,
        bridges,
        t0,
    })
}

/// Runs the child until it ends or the run stops; the host's result.
pub(crate) async fn supervise(
    shared: &Shared,
    p: &Placed,
    launch: Launch<'_>,
    cancel: &CancellationToken,
    report: &mut SummaryRow,
) -> RowResult {
    let parts = (launch.speaker.clone(), &launch.synced[..], launch.agent);
    match link_up(shared, &p.session, parts).await {
        Ok(linked) => run_child(shared, p, launch, linked, None, cancel, report).await,
        Err(why) => RowResult::Failed(why),
    }
}

/// [`supervise`] once the tunnel is up: launches the child (or follows
/// `started`, one already launched), relaunches it once after replacing a
/// binary that failed its hash check, and reads how it ended.
pub(crate) async fn run_child(
    shared: &Shared,
    p: &Placed,
    mut launch: Launch<'_>,
    mut linked: Linked,
    mut started: Option<RemoteChild>,
    cancel: &CancellationToken,
    report: &mut SummaryRow,
) -> RowResult {
    let ui = &shared.ui;
    let label = launch.label;
    let args = linked.args(&launch);
    if started.is_none() {
        ui.stage(label, Stage::Starting);
    }
    let mut replaced = false;
    let mut stopping = false;
    // A child started already was started warm: it took its graph on
    // stdin, and takes its live edits there too.
    let edits_on_stdin = started.is_some();
    let status = loop {
        let mut child = match started.take() {
            Some(c) => c,
            None => {
                let mut opts = exec_options(&linked.secret);
                opts.agent_forward = launch.agent && shared.agent.is_some();
                match p.cached.launch(&p.session, &args, opts).await {
                    Ok(c) => c,
                    Err(e) => return RowResult::Failed(explain(&e)),
                }
            }
        };
        report.hop.start_ms = linked.t0.elapsed().as_millis() as u64;
        for l in &launch.written {
            let _ = child.write_stdin(l.as_bytes()).await;
        }
        ui.stage(label, Stage::Running);
        let (status, last_err) = follow(
            shared,
            p,
            &mut child,
            &mut launch,
            cancel,
            (&mut stopping, edits_on_stdin),
        )
        .await;
        if status == ExitStatus::Exited(VERIFY_FAILED_EXIT) && !replaced && !stopping {
            // The cached binary failed its hash check at launch, so it was
            // not run: replace it and launch once more.
            replaced = true;
            tracing::warn!("{label}: the cached binary failed its hash check; replacing it");
            if let Err(why) = replace_binary(shared, p, report).await {
                return RowResult::Failed(why);
            }
            continue;
        }
        break (status, last_err);
    };
    let bridges = &mut linked.bridges;
    bridges.abort_all();
    let (status, last_err) = status;
    if status == ExitStatus::Exited(0) {
        p.child_cleaned.store(true, Ordering::Relaxed);
    }
    // A rolling run's child exits by itself once converged.
    let rolled = shared.rolling.is_some() && !stopping;
    match status {
        ExitStatus::Exited(0) if rolled || shared.converged.load(Ordering::SeqCst) => {
            RowResult::Converged
        }
        ExitStatus::Exited(0) => RowResult::Stopped,
        ExitStatus::Exited(c) if c == u32::from(crate::link::SKIPPED_EXIT) && !stopping => {
            RowResult::Skipped
        }
        ExitStatus::Signaled { .. } if stopping => RowResult::Stopped,
        other if last_err.is_empty() => RowResult::Failed(format!("the child ended: {other}")),
        other => RowResult::Failed(format!("the child ended ({other}): {}", last_err.trim())),
    }
}

/// Runs the child of `launch` with no tunnel and nothing on its stdin (a
/// gateway's `mgmt facts`: it needs no store): launched (a binary that
/// fails its hash check replaced once), its output followed and the child
/// stopped as [`supervise`] does; its exit status and last stderr line.
pub(crate) async fn run_plain(
    shared: &Shared,
    p: &Placed,
    launch: &mut Launch<'_>,
    cancel: &CancellationToken,
) -> Result<(ExitStatus, String), String> {
    let label = launch.label;
    if launch.agent {
        p.session.set_agent_forwarding(shared.agent.clone());
    }
    shared.ui.stage(label, Stage::Starting);
    let mut replaced = false;
    loop {
        let opts = ExecOptions {
            close_stdin: false,
            report_pid: true,
            agent_forward: launch.agent && shared.agent.is_some(),
            ..ExecOptions::default()
        };
        let mut child = p
            .cached
            .launch(&p.session, &launch.args, opts)
            .await
            .map_err(|e| explain(&e))?;
        shared.ui.stage(label, Stage::Running);
        let mut stopping = false;
        let (status, last_err) = follow(
            shared,
            p,
            &mut child,
            launch,
            cancel,
            (&mut stopping, false),
        )
        .await;
        if status == ExitStatus::Exited(VERIFY_FAILED_EXIT) && !replaced && !stopping {
            replaced = true;
            tracing::warn!("{label}: the cached binary failed its hash check; replacing it");
            replace_binary(shared, p, &mut SummaryRow::new(label, label)).await?;
            continue;
        }
        return Ok((status, last_err));
    }
}

fn exec_options(secret: &TunnelSecret) -> ExecOptions {
    ExecOptions {
        stdin: Some(secret.stdin_line()),
        close_stdin: false,
        report_pid: true,
        ..ExecOptions::default()
    }
}

/// Streams the child's output, keeps its files in step (on its stdin when
/// `edits_on_stdin`, else over SFTP), stops it when the run stops;
/// returns its exit status and its last stderr line.
async fn follow(
    shared: &Shared,
    p: &Placed,
    child: &mut RemoteChild,
    launch: &mut Launch<'_>,
    cancel: &CancellationToken,
    (stopping, edits_on_stdin): (&mut bool, bool),
) -> (ExitStatus, String) {
    let label = launch.label;
    // Stop sequence: stdin closed (the child stops by itself; no extra
    // session needed), then SIGINT by pid, then SIGKILL by pid.
    let mut next_signal: Option<(tokio::time::Instant, KillSignal)> = None;
    // A `kill` runs in a channel of the same connection, while the child's
    // output keeps being read: the connection delivers nothing else until
    // that output is taken (a gateway stopping 1,000 hosts prints a lot).
    let mut signalling: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
    > = None;
    let pid = child.pid;
    let mut last_err = String::new();
    // Made once: a gateway keeps a thousand files in step, and building a
    // wait on each of them per output line was quadratic.
    let mut changes = changes(&launch.synced);
    loop {
        tokio::select! {
            () = async {
                match signalling.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if signalling.is_some() => {
                signalling = None;
            }
            line = child.next_line() => {
                let Some(line) = line else { break };
                if let OutputLine::Stderr(l) = &line {
                    last_err.clone_from(l);
                }
                if let Some(ev) = (launch.on_line)(line) {
                    let _ = launch.events.send(ev).await;
                }
            },
            Some(l) = next_line(&mut launch.stdin_lines), if !*stopping => {
                let _ = child.write_stdin(l.as_bytes()).await;
                launch.written.push(l);
            }
            Some(i) = changes.next(), if !*stopping => {
                // The new graph's collects may read more: allowed before
                // the host can see the new text.
                launch.speaker.allow_reads(read_scope(&launch.synced[i..=i]));
                match edits_on_stdin {
                    true => send_graph(label, child, &mut launch.synced[i]).await,
                    false => sync_file(shared, p, label, &mut launch.synced[i]).await,
                }
            }
            _ = cancel.cancelled(), if !*stopping => {
                *stopping = true;
                shared.ui.stage(label, Stage::Stopping);
                if shared.converged.load(Ordering::SeqCst) {
                    let _ = child.write_stdin(crate::link::CONVERGED_LINE).await;
                }
                let _ = child.close_stdin().await;
                next_signal = Some((tokio::time::Instant::now() + launch.stdin_grace, KillSignal::Int));
            }
            _ = sleep_until(next_signal.map(|(at, _)| at)) => {
                let Some((due, signal)) = next_signal.take() else { continue };
                let grace = match signal {
                    KillSignal::Int => launch.stdin_grace,
                    _ => shared.grace(STOP_GRACE),
                };
                if let Some(later) = shared.ended.postpone(due, grace) {
                    next_signal = Some((later, signal));
                    continue;
                }
                tracing::debug!("{label}: the child is still running; sending {signal:?} to its pid");
                signalling = Some(Box::pin(kill(p, pid, signal)));
                if signal == KillSignal::Int {
                    next_signal = Some((tokio::time::Instant::now() + shared.grace(STOP_GRACE), KillSignal::Kill));
                } else {
                    tracing::warn!("{label}: the child did not stop within {:?} of SIGINT; killed it", shared.grace(STOP_GRACE));
                }
            }
        }
    }
    (child.status().await, last_err)
}

/// The index of each synced file whose source changes, as it changes; a
/// source that closes drops out.
fn changes(synced: &[Synced]) -> futures::stream::SelectAll<BoxStream<'static, usize>> {
    futures::stream::select_all(synced.iter().enumerate().map(|(i, s)| {
        tokio_stream::wrappers::WatchStream::from_changes(s.source.clone())
            .map(move |_| i)
            .boxed()
    }))
}

/// What the children of the synced graphs read beyond their own keys, as
/// their current texts say ([`Source::scope`]).
fn read_scope(synced: &[Synced]) -> Vec<String> {
    synced
        .iter()
        .flat_map(|s| s.source.borrow().scope().to_vec())
        .collect()
}

/// Puts the new text of a synced file on the host (atomically).
async fn sync_file(shared: &Shared, p: &Placed, label: &str, s: &mut Synced) {
    s.source.borrow_and_update();
    let Some(text) = s.text() else {
        tracing::warn!(
            "{label}: cannot rewrite {} for the gateway; not sent",
            s.name
        );
        return;
    };
    let put = p
        .put_run_file(&shared.run_id, &s.name, text.as_bytes())
        .await;
    p.sftp.park().await;
    match put {
        Ok(_) => tracing::info!("{label}: {} updated", s.name),
        Err(e) => tracing::warn!("{label}: cannot update {}: {}", s.name, e.kind),
    }
}

/// Sends the new text of a warm-started child's graph on its stdin.
async fn send_graph(label: &str, child: &mut RemoteChild, s: &mut Synced) {
    s.source.borrow_and_update();
    let Some(text) = s.text() else {
        tracing::warn!("{label}: cannot rewrite {} for the host; not sent", s.name);
        return;
    };
    match child.write_stdin(&crate::link::graph_frame(&text)).await {
        Ok(()) => tracing::info!("{label}: {} updated", s.name),
        Err(e) => tracing::warn!("{label}: cannot update {}: {e}", s.name),
    }
}

async fn next_line(lines: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `signal` to the child by its own pid (never by name).
async fn kill(p: &Placed, pid: Option<u32>, signal: KillSignal) {
    if let Some(pid) = pid {
        if let Err(e) = p.session.kill(pid, signal).await {
            tracing::debug!("{}: kill {pid}: {e}", p.session.host());
        }
    }
}

/// What every child gets: the store through the tunnel, its depth, the
/// secret on stdin, and the run's flags.
pub(crate) fn common_args(shared: &Shared) -> Vec<String> {
    let depth = (shared.flags.depth + 1).to_string();
    let seeds = format!("http://127.0.0.1:{PORT_SLOT}");
    let mut a = words(&[
        "--no-server",
        "--seeds",
        &seeds,
        "--depth",
        &depth,
        "--tunnel-secret-stdin",
    ]);
    if let Some(t) = shared.flags.converged_timeout {
        a.push(format!("--converged-timeout={t}"));
    }
    if shared.flags.noop {
        a.push("--noop".into());
    }
    if shared.flags.no_watch {
        a.push("--no-watch".into());
    }
    if let Some(w) = &shared.flags.where_expr {
        a.push(format!("--where={w}"));
    }
    if shared.flags.store_ends_with_run {
        a.push("--store-ends-with-run".into());
    }
    a.push(format!("--initiator={}", shared.flags.initiator));
    a
}

pub(crate) fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// How long a tunnel client has to present the secret.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Hands every tunnel connection that presents the secret to the store,
/// tagged with whom it speaks for; the others are dropped before a byte
/// reaches it.
async fn bridge(
    mut tunnel: ReverseTunnel,
    secret: TunnelSecret,
    speaker: Arc<Speaker>,
    store: mpsc::Sender<(Stream, Arc<Speaker>)>,
) {
    let mut checks = JoinSet::new();
    while let Some(inc) = tunnel.accept().await {
        let (secret, store, speaker) = (secret.clone(), store.clone(), speaker.clone());
        checks.spawn(async move {
            match check_preamble(inc.stream, &secret, PREAMBLE_TIMEOUT).await {
                Ok(s) => {
                    let _ = store.send((s, speaker)).await;
                }
                Err(e) => tracing::warn!("tunnel connection from {} refused: {e}", inc.originator),
            }
        });
        while checks.try_join_next().is_some() {}
    }
}
