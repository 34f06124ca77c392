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

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::{HostPlan, Plan};
use super::sftp::{Sftp, VERIFY_FAILED_EXIT};
use super::ssh::KillSignal;
use super::tunnel::{ReverseTunnel, TunnelSecret};
use super::{
    check_preamble, CacheOptions, CachedBinary, ExecOptions, ExitStatus, OutputLine, RemoteChild,
    Session, Stream,
};
use crate::ui::{RowResult, Stage, Ui};

/// How long a child may take to stop by itself once its stdin is closed,
/// before it gets SIGINT by its pid.
const STDIN_GRACE: Duration = Duration::from_secs(2);
/// How long a child may take to stop after SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a tunnel client has to present the secret.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags passed on to every child.
#[derive(Debug, Clone, Default)]
pub struct ChildFlags {
    pub converged_timeout: Option<u64>,
    pub noop: bool,
    pub no_watch: bool,
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
    pub result: RowResult,
    pub bytes_sent: u64,
    pub cache_hit: Option<bool>,
    pub elapsed: Duration,
}

/// A host's set-up, kept for teardown.
struct Placed {
    session: Session,
    sftp: Sftp,
    cached: CachedBinary,
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
    let mut report = HostReport {
        name: name.clone(),
        result: RowResult::Stopped,
        bytes_sent: 0,
        cache_hit: None,
        elapsed: Duration::ZERO,
    };
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
        report.result = supervise(&shared, &host, &p, graph, &cancel).await;
        teardown(&shared, p).await;
    }
    // Every host ends, placed or not: it no longer holds up convergence.
    let _ = events.send(HostEvent::Ended(name.clone())).await;
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
    let ui = &shared.ui;
    ui.stage(&host.name, Stage::Queued);
    let stopping = || "the run is stopping".to_string();
    let _permit = match &shared.setup {
        Some(s) => tokio::select! {
            _ = cancel.cancelled() => return Err(stopping()),
            p = s.clone().acquire_owned() => Some(p.map_err(|_| stopping())?),
        },
        None => None,
    };
    ui.stage(&host.name, Stage::Connecting);
    // Dropping a connect half-way is harmless; the copy below instead
    // checks `cancel` between writes and removes its temporary file.
    let session = tokio::select! {
        _ = cancel.cancelled() => return Err(stopping()),
        r = super::connect(&host.target, &shared.plan.settings) => r.map_err(|e| explain(&e))?,
    };
    let sftp = Sftp::open(&session).await.map_err(|e| explain(&e))?;
    let total = shared.plan.binary.size;
    let progress_ui = ui.clone();
    let progress_name = host.name.clone();
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
        ui.stage(&host.name, Stage::Cached);
    }
    let text = graph.borrow().clone();
    sftp.put_run_file(
        &session,
        Some(&cached.prefix),
        &shared.run_id,
        "graph.yaml",
        text.as_bytes(),
    )
    .await
    .map_err(|e| e.kind.to_string())?;
    // Still under the permit: tests measure the set-up concurrency with it.
    tracing::debug!("{}: set-up done", host.name);
    Ok(Placed {
        session,
        sftp,
        cached,
    })
}

/// The error and its sources on one line, then the hint.
fn explain<E: std::error::Error + super::Hint>(e: &super::HostError<E>) -> String {
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

/// Runs the child until it ends or the run stops; the host's result.
async fn supervise(
    shared: &Shared,
    host: &HostPlan,
    p: &Placed,
    mut graph: watch::Receiver<Arc<String>>,
    cancel: &CancellationToken,
) -> RowResult {
    let ui = &shared.ui;
    let tunnel = match p.session.reverse_tunnel(64).await {
        Ok(t) => t,
        Err(e) => return RowResult::Failed(explain(&e)),
    };
    let port = tunnel.port;
    let mut bridges = JoinSet::new();
    bridges.spawn(bridge(
        tunnel,
        shared.secret.clone(),
        shared.tunnels.clone(),
    ));
    let graph_path = format!("{}/run/{}/graph.yaml", p.cached.prefix, shared.run_id);
    let args = child_args(shared, host, port, &graph_path);
    ui.stage(&host.name, Stage::Starting);
    let mut replaced = false;
    let mut stopping = false;
    let status = loop {
        let mut child = match p
            .cached
            .launch(&p.session, &args, exec_options(shared))
            .await
        {
            Ok(c) => c,
            Err(e) => return RowResult::Failed(explain(&e)),
        };
        ui.stage(&host.name, Stage::Running);
        let (status, last_err) = follow(
            shared,
            host,
            p,
            &mut child,
            &mut graph,
            cancel,
            &mut stopping,
        )
        .await;
        if status == ExitStatus::Exited(VERIFY_FAILED_EXIT) && !replaced && !stopping {
            // The cached binary failed its hash check at launch, so it was
            // not run: replace it and launch once more.
            replaced = true;
            tracing::warn!(
                "{}: the cached binary failed its hash check; replacing it",
                host.name
            );
            let bin = &shared.plan.binary;
            let opts = CacheOptions {
                prefix: shared.plan.prefix.clone(),
                verify_hit: true,
                ..CacheOptions::default()
            };
            if let Err(e) = p
                .sftp
                .ensure_binary(&p.session, &bin.path, &bin.sha256, &opts)
                .await
            {
                return RowResult::Failed(e.kind.to_string());
            }
            continue;
        }
        break (status, last_err);
    };
    bridges.abort_all();
    let (status, last_err) = status;
    match status {
        ExitStatus::Exited(0) if shared.converged.load(Ordering::SeqCst) => RowResult::Converged,
        ExitStatus::Exited(0) => RowResult::Stopped,
        ExitStatus::Signaled { .. } if stopping => RowResult::Stopped,
        other if last_err.is_empty() => RowResult::Failed(format!("the child ended: {other}")),
        other => RowResult::Failed(format!("the child ended ({other}): {}", last_err.trim())),
    }
}

fn exec_options(shared: &Shared) -> ExecOptions {
    ExecOptions {
        stdin: Some(shared.secret.stdin_line()),
        close_stdin: false,
        report_pid: true,
        ..ExecOptions::default()
    }
}

/// Streams the child's output, keeps its graph in step, stops it when the
/// run stops; returns its exit status and its last stderr line.
async fn follow(
    shared: &Shared,
    host: &HostPlan,
    p: &Placed,
    child: &mut RemoteChild,
    graph: &mut watch::Receiver<Arc<String>>,
    cancel: &CancellationToken,
    stopping: &mut bool,
) -> (ExitStatus, String) {
    let ui = &shared.ui;
    // Stop sequence: stdin closed (the child stops by itself; no extra
    // session needed), then SIGINT by pid, then SIGKILL by pid.
    let mut next_signal: Option<(tokio::time::Instant, KillSignal)> = None;
    let mut last_err = String::new();
    loop {
        tokio::select! {
            line = child.next_line() => match line {
                Some(OutputLine::Stdout(l)) => ui.line(&host.name, crate::ui::Stream::Stdout, &l),
                Some(OutputLine::Stderr(l)) => {
                    ui.line(&host.name, crate::ui::Stream::Stderr, &l);
                    last_err = l;
                }
                None => break,
            },
            r = graph.changed(), if !*stopping => {
                if r.is_err() {
                    continue;
                }
                let text = graph.borrow_and_update().clone();
                match p.sftp.put_run_file(&p.session, Some(&p.cached.prefix), &shared.run_id, "graph.yaml", text.as_bytes()).await {
                    Ok(_) => tracing::info!("{}: graph updated", host.name),
                    Err(e) => tracing::warn!("{}: cannot update the graph: {}", host.name, e.kind),
                }
            }
            _ = cancel.cancelled(), if !*stopping => {
                *stopping = true;
                ui.stage(&host.name, Stage::Stopping);
                let _ = child.close_stdin().await;
                next_signal = Some((tokio::time::Instant::now() + STDIN_GRACE, KillSignal::Int));
            }
            _ = sleep_until(next_signal.map(|(at, _)| at)) => {
                let Some((_, signal)) = next_signal.take() else { continue };
                tracing::debug!("{}: the child is still running; sending {signal:?} to its pid", host.name);
                kill(p, child, signal).await;
                if signal == KillSignal::Int {
                    next_signal = Some((tokio::time::Instant::now() + STOP_GRACE, KillSignal::Kill));
                } else {
                    tracing::warn!("{}: the child did not stop within {STOP_GRACE:?} of SIGINT; killed it", host.name);
                }
            }
        }
    }
    (child.status().await, last_err)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `signal` to the child by its own pid (never by name).
async fn kill(p: &Placed, child: &RemoteChild, signal: KillSignal) {
    if let Some(pid) = child.pid {
        if let Err(e) = p.session.kill(pid, signal).await {
            tracing::debug!("{}: kill {pid}: {e}", p.session.host());
        }
    }
}

/// The child's command line (each word quoted by `launch`).
fn child_args(shared: &Shared, host: &HostPlan, port: u16, graph: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--hostname",
        &host.name,
        "--no-server",
        "--seeds",
        &format!("http://127.0.0.1:{port}"),
        "--file",
        graph,
        "--depth",
        "1",
        "--tunnel-secret-stdin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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

/// Removes what the run put on the host, in reverse order of set-up.
async fn teardown(shared: &Shared, p: Placed) {
    if let Err(e) = p
        .sftp
        .remove_run_dir(&p.cached.prefix, &shared.run_id)
        .await
    {
        tracing::warn!("{e}");
    }
    if !shared.plan.caching {
        if let Err(e) = p.sftp.remove_binary(&p.cached).await {
            tracing::warn!("{e}");
        }
    }
    p.sftp.close().await;
    p.session.close().await;
}
