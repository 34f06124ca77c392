//! One host of a remote run, from the set-up slot to the last cleanup:
//! connect and authenticate, copy the binary (or find it cached) and the
//! graph, open the authenticated reverse tunnel, run the child with the
//! secret on its stdin, stream its output, keep its graph in step with the
//! local file, and on stop end the child by its pid, close the tunnel and
//! remove the per-run files.
//!
//! Teardown is explicit and in reverse order of set-up, because `Drop`
//! cannot await. The set-up permit (`--cconns`) is held from before connect
//! until the copy is done, and released before the child runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::{HostPlan, Plan};
use crate::ssh::launch::VERIFY_FAILED_EXIT;
use crate::ssh::session::KillSignal;
use crate::ssh::sftp::{Sftp, SftpSlot};
use crate::ssh::tunnel::{ReverseTunnel, TunnelSecret};
use crate::ssh::{
    check_preamble, CacheOptions, CachedBinary, ExecOptions, ExitStatus, OutputLine, RemoteChild,
    Session, Stream,
};
use crate::ui::HopTimes;
use crate::ui::{RowResult, Stage, Ui};

/// How long a child may take to stop by itself once its stdin is closed,
/// before it gets SIGINT by its pid.
pub(crate) const STDIN_GRACE: Duration = Duration::from_secs(2);
/// How long a child may take to stop after SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Added to both graces per host this process stops: thousands of hosts
/// stopping at once share this machine (and the store), so each may take
/// longer, and signalling them early would only add load.
pub(crate) const GRACE_PER_HOST: Duration = Duration::from_millis(1);

/// When a host (here or below a gateway) last ended. A stop sequence that
/// is still making progress (hosts keep ending) is not escalated: 10,000
/// emulated hosts behind 10 gateways on two cores end over minutes, and
/// signalling the slow half would only kill children that were stopping.
/// A child is signalled once no host has ended for its whole grace.
#[derive(Default)]
pub struct StopClock(std::sync::Mutex<Option<Instant>>);

impl StopClock {
    /// A host ended just now.
    pub fn mark(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Instant::now());
        }
    }

    /// The later deadline for a signal due at `due`, if a host ended less
    /// than `grace` ago; `None`: send it now.
    fn postpone(&self, due: tokio::time::Instant, grace: Duration) -> Option<tokio::time::Instant> {
        let last = (*self.0.lock().ok()?)?;
        let later = tokio::time::Instant::from_std(last + grace);
        (later > due).then_some(later)
    }
}

impl Shared {
    /// `base`, stretched by how many hosts and gateways this run stops.
    pub(crate) fn grace(&self, base: Duration) -> Duration {
        let n = self.plan.hosts.len() + self.plan.gateways.len();
        base + GRACE_PER_HOST * n as u32
    }
}
/// How long a tunnel client has to present the secret.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags passed on to every child.
#[derive(Debug, Clone, Default)]
pub struct ChildFlags {
    pub converged_timeout: Option<u64>,
    pub noop: bool,
    pub no_watch: bool,
    /// This process's depth (0: the initiator); children run at depth + 1.
    pub depth: u32,
}

/// What every host task shares.
pub struct Shared {
    pub plan: Plan,
    /// Names this run's files on the hosts (`<prefix>/run/<run_id>/`).
    pub run_id: String,
    pub secret: TunnelSecret,
    pub flags: ChildFlags,
    /// Authenticated tunnel connections, handed to the embedded store.
    pub tunnels: mpsc::Sender<Stream>,
    /// `--cconns`; `None` for no cap.
    pub setup: Option<Arc<Semaphore>>,
    pub ui: Ui,
    /// Set when the run ends because the cluster converged.
    pub converged: Arc<AtomicBool>,
    /// The agent socket gateways get access to (forwarded agent channels
    /// are proxied to it); `None`: no agent forwarding.
    pub agent: Option<std::path::PathBuf>,
    /// Whether the stop is still progressing (see [`StopClock`]).
    pub ended: StopClock,
}

/// Told to the run loop as hosts come and go, for the converged rule.
#[derive(Debug)]
pub enum HostEvent {
    Running(String),
    Ended(String),
}

/// One row of the summary.
pub struct HostReport {
    pub name: String,
    /// `web3`, or `gw.dc1/web3` behind a gateway.
    pub route: String,
    pub result: RowResult,
    pub bytes_sent: u64,
    pub cache_hit: Option<bool>,
    pub elapsed: Duration,
    pub hop: HopTimes,
    /// Bytes this process wrote to the host's SSH connection, all told.
    pub wire_sent: u64,
}

impl HostReport {
    pub(crate) fn new(name: &str, route: &str) -> Self {
        HostReport {
            name: name.into(),
            route: route.into(),
            result: RowResult::Stopped,
            bytes_sent: 0,
            cache_hit: None,
            elapsed: Duration::ZERO,
            hop: HopTimes::default(),
            wire_sent: 0,
        }
    }
}

/// A host's set-up, kept for teardown.
pub(crate) struct Placed {
    pub session: Session,
    /// Parked once set-up is done; see [`SftpSlot`].
    pub sftp: SftpSlot,
    pub cached: CachedBinary,
    /// How long connecting (with authentication) and copying took.
    pub connect: Duration,
    pub copy: Duration,
    /// Set when the child exited 0: it removed its own run directory
    /// (`--run-dir`), so the clean-up has nothing left to do there.
    pub child_cleaned: AtomicBool,
}

impl Placed {
    /// Writes `data` as `name` into the host's run directory (SFTP opened
    /// again if it was parked; the caller parks it when done).
    pub async fn put_run_file(
        &self,
        run_id: &str,
        name: &str,
        data: &[u8],
    ) -> Result<String, crate::ssh::HostError<crate::ssh::UploadError>> {
        let sftp = self.sftp.get(&self.session).await?;
        let prefix = Some(self.cached.prefix.as_str());
        sftp.put_run_file(&self.session, prefix, run_id, name, data)
            .await
    }
}

/// A file on the host kept in step with a local graph file.
pub(crate) struct Synced {
    /// Its name in the per-run directory.
    pub name: String,
    pub source: watch::Receiver<Arc<String>>,
    /// For a gateway: the `via:` hops still ahead, written into the text.
    pub rest: Option<Vec<String>>,
}

impl Synced {
    /// The text to put on the host; `None` if it cannot be rewritten.
    pub fn text(&self) -> Option<String> {
        let text = self.source.borrow().clone();
        match &self.rest {
            None => Some(text.as_ref().clone()),
            Some(rest) => super::plan::gateway_text(&text, rest),
        }
    }
}

/// Runs one host to its end; never fails: failures become the report.
pub async fn run(
    shared: Arc<Shared>,
    host: HostPlan,
    graph: watch::Receiver<Arc<String>>,
    events: mpsc::Sender<HostEvent>,
    cancel: CancellationToken,
) -> HostReport {
    let start = Instant::now();
    let name = host.name.clone();
    let mut report = HostReport::new(&name, &name);
    let placed = match place(&shared, &host, &graph, &cancel).await {
        Ok(p) => Some(p),
        Err(_) if cancel.is_cancelled() => None,
        Err(why) => {
            report.result = RowResult::Failed(why);
            None
        }
    };
    if let Some(p) = placed {
        report.bytes_sent = p.cached.bytes_sent;
        report.cache_hit = Some(p.cached.hit);
        let _ = events.send(HostEvent::Running(name.clone())).await;
        shared.ui.host_event(&name, &name, true);
        let graph_path = format!("{}/run/{}/graph.yaml", p.cached.prefix, shared.run_id);
        let ui = shared.ui.clone();
        let mut on_line = |line: OutputLine| {
            match line {
                OutputLine::Stdout(l) => ui.line(&name, crate::ui::Stream::Stdout, &l),
                OutputLine::Stderr(l) => ui.line(&name, crate::ui::Stream::Stderr, &l),
            }
            None
        };
        let launch = Launch {
            label: &name,
            args: child_args(&shared, &host, &graph_path),
            synced: vec![Synced {
                name: "graph.yaml".into(),
                source: graph,
                rest: None,
            }],
            agent: false,
            stdin_grace: shared.grace(STDIN_GRACE),
            on_line: &mut on_line,
            events: events.clone(),
        };
        report.result = supervise(&shared, &p, launch, &cancel, &mut report).await;
        finish_placed(&shared, p, &mut report).await;
    }
    // Every host ends, placed or not: it no longer holds up convergence.
    shared.ended.mark();
    let _ = events.send(HostEvent::Ended(name.clone())).await;
    shared.ui.host_event(&name, &name, false);
    if let RowResult::Failed(why) = &report.result {
        shared.ui.stage(&name, Stage::Failed(why.clone()));
    } else {
        shared.ui.stage(&name, Stage::Done);
    }
    report.elapsed = start.elapsed();
    report
}

/// Set-up, under a `--cconns` permit: connect, copy binary and graph.
async fn place(
    shared: &Shared,
    host: &HostPlan,
    graph: &watch::Receiver<Arc<String>>,
    cancel: &CancellationToken,
) -> Result<Placed, String> {
    let _permit = setup_permit(shared, &host.name, cancel).await?;
    let placed = place_binary(shared, &host.name, &host.target, cancel).await?;
    let text = graph.borrow().clone();
    let put = placed.put_run_file(&shared.run_id, "graph.yaml", text.as_bytes());
    put.await.map_err(|e| e.kind.to_string())?;
    placed.sftp.park().await;
    // Still under the permit: tests measure the set-up concurrency with it.
    tracing::debug!("{}: set-up done", host.name);
    Ok(placed)
}

/// Waits for a `--cconns` set-up slot (none without a cap).
pub(crate) async fn setup_permit(
    shared: &Shared,
    label: &str,
    cancel: &CancellationToken,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, String> {
    shared.ui.stage(label, Stage::Queued);
    match &shared.setup {
        Some(s) => tokio::select! {
            _ = cancel.cancelled() => Err(stopping()),
            p = s.clone().acquire_owned() => Ok(Some(p.map_err(|_| stopping())?)),
        },
        None => Ok(None),
    }
}

/// A `--cconns` slot for work after set-up (a replaced binary, a clean-up),
/// which must happen even when the run is stopping; none without a cap.
async fn slot(shared: &Shared) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match &shared.setup {
        Some(s) => s.clone().acquire_owned().await.ok(),
        None => None,
    }
}

fn stopping() -> String {
    "the run is stopping".to_string()
}

/// Connects to `target` and makes sure the binary is in its cache (shown
/// under `label`); the caller holds the set-up permit.
pub(crate) async fn place_binary(
    shared: &Shared,
    label: &str,
    target: &crate::ssh::Target,
    cancel: &CancellationToken,
) -> Result<Placed, String> {
    let ui = &shared.ui;
    ui.stage(label, Stage::Connecting);
    let t0 = Instant::now();
    // Dropping a connect half-way is harmless; the copy below instead
    // checks `cancel` between writes and removes its temporary file.
    let session = tokio::select! {
        _ = cancel.cancelled() => return Err(stopping()),
        r = crate::ssh::connect::connect_with(target, &shared.plan.settings, || {
            ui.stage(label, Stage::Authenticating)
        }) => r.map_err(|e| explain(&e))?,
    };
    let connect = t0.elapsed();
    let t1 = Instant::now();
    let sftp = Sftp::open(&session).await.map_err(|e| explain(&e))?;
    let total = shared.plan.binary.size;
    let progress_ui = ui.clone();
    let progress_name = label.to_string();
    let opts = CacheOptions {
        prefix: shared.plan.prefix.clone(),
        verify_hit: false,
        progress: Some(Arc::new(move |sent| {
            progress_ui.stage(&progress_name, Stage::Copying { sent, total })
        })),
        cancel: Some(cancel.clone()),
    };
    let bin = &shared.plan.binary;
    let cached = sftp
        .ensure_binary(&session, &bin.path, &bin.sha256, &opts)
        .await
        .map_err(|e| explain(&e))?;
    if cached.hit {
        ui.stage(label, Stage::Cached);
    }
    Ok(Placed {
        session,
        sftp: SftpSlot::new(sftp),
        cached,
        connect,
        copy: t1.elapsed(),
        child_cleaned: AtomicBool::new(false),
    })
}

/// The error and its sources on one line, then the hint.
pub(crate) fn explain<E: std::error::Error + crate::ssh::Hint>(
    e: &crate::ssh::HostError<E>,
) -> String {
    let mut msg = e.kind.to_string();
    let mut src = e.kind.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    match e.hint() {
        Some(h) => format!("{msg} (hint: {h})"),
        None => msg,
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
    /// Every line the child prints; may return an event for the run loop.
    pub on_line: &'a mut (dyn FnMut(OutputLine) -> Option<HostEvent> + Send),
    pub events: mpsc::Sender<HostEvent>,
}

/// Where `{port}` stands in [`Launch::args`] until the tunnel is open.
pub(crate) const PORT_SLOT: &str = "{port}";

/// Runs the child until it ends or the run stops; the host's result.
pub(crate) async fn supervise(
    shared: &Shared,
    p: &Placed,
    mut launch: Launch<'_>,
    cancel: &CancellationToken,
    report: &mut HostReport,
) -> RowResult {
    let ui = &shared.ui;
    let label = launch.label;
    let t0 = Instant::now();
    let tunnel = match p.session.reverse_tunnel(64).await {
        Ok(t) => t,
        Err(e) => return RowResult::Failed(explain(&e)),
    };
    let port = tunnel.port.to_string();
    let args: Vec<String> = launch
        .args
        .iter()
        .map(|a| a.replace(PORT_SLOT, &port))
        .collect();
    let mut bridges = JoinSet::new();
    bridges.spawn(bridge(
        tunnel,
        shared.secret.clone(),
        shared.tunnels.clone(),
    ));
    if launch.agent {
        p.session.set_agent_forwarding(shared.agent.clone());
    }
    ui.stage(label, Stage::Starting);
    let mut replaced = false;
    let mut stopping = false;
    let status = loop {
        let mut opts = exec_options(shared);
        opts.agent_forward = launch.agent && shared.agent.is_some();
        let mut child = match p.cached.launch(&p.session, &args, opts).await {
            Ok(c) => c,
            Err(e) => return RowResult::Failed(explain(&e)),
        };
        report.hop.start_ms = t0.elapsed().as_millis() as u64;
        ui.stage(label, Stage::Running);
        let (status, last_err) =
            follow(shared, p, &mut child, &mut launch, cancel, &mut stopping).await;
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
    bridges.abort_all();
    let (status, last_err) = status;
    if status == ExitStatus::Exited(0) {
        p.child_cleaned.store(true, Ordering::Relaxed);
    }
    match status {
        ExitStatus::Exited(0) if shared.converged.load(Ordering::SeqCst) => RowResult::Converged,
        ExitStatus::Exited(0) => RowResult::Stopped,
        ExitStatus::Signaled { .. } if stopping => RowResult::Stopped,
        other if last_err.is_empty() => RowResult::Failed(format!("the child ended: {other}")),
        other => RowResult::Failed(format!("the child ended ({other}): {}", last_err.trim())),
    }
}

/// Uploads the binary again after it failed its hash check at launch.
async fn replace_binary(
    shared: &Shared,
    p: &Placed,
    report: &mut HostReport,
) -> Result<(), String> {
    let bin = &shared.plan.binary;
    let opts = CacheOptions {
        prefix: shared.plan.prefix.clone(),
        verify_hit: true,
        ..CacheOptions::default()
    };
    // A replacement is a copy like any other: under a set-up permit.
    let _permit = slot(shared).await;
    let sftp = p.sftp.get(&p.session).await.map_err(|e| explain(&e))?;
    let again = sftp
        .ensure_binary(&p.session, &bin.path, &bin.sha256, &opts)
        .await
        .map_err(|e| explain(&e))?;
    drop(sftp);
    p.sftp.park().await;
    report.bytes_sent += again.bytes_sent;
    report.cache_hit = Some(false);
    Ok(())
}

fn exec_options(shared: &Shared) -> ExecOptions {
    ExecOptions {
        stdin: Some(shared.secret.stdin_line()),
        close_stdin: false,
        report_pid: true,
        ..ExecOptions::default()
    }
}

/// Streams the child's output, keeps its files in step, stops it when the
/// run stops; returns its exit status and its last stderr line.
async fn follow(
    shared: &Shared,
    p: &Placed,
    child: &mut RemoteChild,
    launch: &mut Launch<'_>,
    cancel: &CancellationToken,
    stopping: &mut bool,
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
            Some(i) = changes.next(), if !*stopping => {
                sync_file(shared, p, label, &mut launch.synced[i]).await;
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

/// The child's command line (each word quoted by `launch`; [`PORT_SLOT`]
/// becomes the tunnel port).
fn child_args(shared: &Shared, host: &HostPlan, graph: &str) -> Vec<String> {
    let mut a = words(&["run", "--hostname", &host.name, "--file", graph]);
    if let Some((dir, _)) = graph.rsplit_once('/') {
        a.extend(words(&["--run-dir", dir]));
    }
    a.extend(common_args(shared));
    a
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
    a
}

pub(crate) fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// Hands every tunnel connection that presents the secret to the store;
/// the others are dropped before a byte reaches it.
async fn bridge(mut tunnel: ReverseTunnel, secret: TunnelSecret, store: mpsc::Sender<Stream>) {
    let mut checks = JoinSet::new();
    while let Some(inc) = tunnel.accept().await {
        let (secret, store) = (secret.clone(), store.clone());
        checks.spawn(async move {
            match check_preamble(inc.stream, &secret, PREAMBLE_TIMEOUT).await {
                Ok(s) => {
                    let _ = store.send(s).await;
                }
                Err(e) => tracing::warn!("tunnel connection from {} refused: {e}", inc.originator),
            }
        });
        while checks.try_join_next().is_some() {}
    }
}

/// Records the hop's set-up times, tears the host down, then records every
/// byte its connection carried.
pub(crate) async fn finish_placed(shared: &Shared, p: Placed, report: &mut HostReport) {
    report.hop.connect_ms = p.connect.as_millis() as u64;
    report.hop.copy_ms = p.copy.as_millis() as u64;
    let wire = p.session.wire_sent();
    teardown(shared, p).await;
    report.wire_sent = wire.load(Ordering::Relaxed);
}

/// Removes what the run put on the host, in reverse order of set-up.
/// Nothing to do over SFTP when the child exited 0 and the binary stays
/// cached: the child removed its run directory itself. Otherwise under a
/// `--cconns` permit like set-up: it opens SFTP again, and a stopping fleet
/// would otherwise reopen it on every host at once.
async fn teardown(shared: &Shared, p: Placed) {
    if shared.plan.caching && p.child_cleaned.load(Ordering::Relaxed) {
        p.sftp.park().await;
        p.session.close().await;
        return;
    }
    let _permit = slot(shared).await;
    match p.sftp.get(&p.session).await {
        Ok(sftp) => {
            if let Err(e) = sftp.remove_run_dir(&p.cached.prefix, &shared.run_id).await {
                tracing::warn!("{e}");
            }
            if !shared.plan.caching {
                if let Err(e) = sftp.remove_binary(&p.cached).await {
                    tracing::warn!("{e}");
                }
            }
        }
        Err(e) => tracing::warn!("cannot clean up: {e}"),
    }
    p.sftp.park().await;
    p.session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_that_progresses_postpones_signals() {
        let clock = StopClock::default();
        let now = tokio::time::Instant::now();
        let grace = Duration::from_secs(2);
        // Nobody ended yet: signal when due.
        assert_eq!(clock.postpone(now, grace), None);
        clock.mark();
        // A host just ended: wait until a whole grace has passed since.
        let later = clock.postpone(now, grace).expect("postponed");
        assert!(later > now + Duration::from_secs(1), "{:?}", later - now);
        // A deadline already past that point is kept.
        assert_eq!(clock.postpone(now + Duration::from_secs(5), grace), None);
    }
}
