//! One host of a remote run, from the set-up slot to the last cleanup:
//! connect and authenticate, start the cached binary warm or copy the
//! binary and the graph, open the authenticated reverse tunnel, run the
//! child with the secret on its stdin, stream its output, keep its graph
//! in step with the local file (on the child's stdin when it started warm,
//! else over SFTP), and on stop end the child by its pid, close the tunnel
//! and remove the per-run files.
//!
//! Teardown is explicit and in reverse order of set-up, because `Drop`
//! cannot await. The set-up slot (`--cconns`, [`super::place::SetupSlot`])
//! is held from before connect until the child has started warm
//! ([`crate::ssh::warm`]: one exec, no SFTP, when the binary is cached and
//! trusted). A miss copies the binary over SFTP, frees the slot at the
//! copy's last byte (the unpack and the start no longer use the uplink)
//! and then starts it with the same warm command; only where that cannot
//! be (`--no-caching`, a rolling run, a second miss) is the graph put over
//! SFTP, and that child launched after set-up. In a rolling run the placed
//! host then waits for its turn ([`super::rolling`]) before its child runs,
//! and its child exits once converged.
//!
//! The steps live in [`super::place`] (set-up and teardown, shared with
//! gateways) and [`super::supervise`] (the running child); this file strings
//! them together for a host reached directly.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::place::{
    connect_host, copy_to, explain, finish_placed, place_binary, setup_permit, Placed,
};
use super::plan::HostPlan;
use super::shared::{HostEvent, Shared, STDIN_GRACE};
use super::source::Source;
use super::supervise::{common_args, link_up, run_child, supervise, words, Launch, Linked, Synced};
use crate::link::rundir::GRAPH_NAME;
use crate::ssh::sftp::SftpSlot;
use crate::ssh::warm::{warm_start, Warm, WarmSpec};
use crate::ssh::{ExecOptions, OutputLine, RemoteChild};
use crate::store::Speaker;
use crate::ui::route::Record;
use crate::ui::{RowResult, Stage, SummaryRow};

/// Runs one host to its end; never fails: failures become the report.
pub async fn run(
    shared: Arc<Shared>,
    host: HostPlan,
    graph: watch::Receiver<Arc<Source>>,
    events: mpsc::Sender<HostEvent>,
    cancel: CancellationToken,
) -> SummaryRow {
    let start = Instant::now();
    let name = host.name.clone();
    let mut report = SummaryRow::new(&name, &name);
    let ui = shared.ui.clone();
    let mut on_line = |line: OutputLine| {
        match line {
            OutputLine::Stdout(l) => match Record::decode(&l) {
                // Only a resource record, and under this host's own
                // route whatever it says: a host speaks for itself.
                Some(Record::Resource {
                    kind,
                    name: what_name,
                    what,
                    reason,
                    ..
                }) => ui.resource(&name, &kind, &what_name, &what, &reason),
                _ => ui.line(&name, crate::ui::Stream::Stdout, &l),
            },
            OutputLine::Stderr(l) => ui.line(&name, crate::ui::Stream::Stderr, &l),
        }
        None
    };
    let mut launch = Launch {
        speaker: Speaker::new(&name, []),
        label: &name,
        args: Vec::new(),
        synced: vec![Synced {
            name: GRAPH_NAME.into(),
            source: graph,
            rest: None,
        }],
        agent: false,
        stdin_grace: shared.grace(STDIN_GRACE),
        on_line: &mut on_line,
        events: events.clone(),
        stdin_lines: None,
        written: Vec::new(),
    };
    let set_up = match place(&shared, &host, &mut launch, &cancel).await {
        Ok(s) => Some(s),
        Err(_) if cancel.is_cancelled() => None,
        Err(why) => {
            report.result = RowResult::Failed(why);
            None
        }
    };
    // A rolling run's host waits here, placed, for its turn; without one
    // (the rollout stopped first) it is cleaned up and never started.
    let set_up = match (set_up, &shared.rolling) {
        (Some(s), Some(r)) if !r.turn(&name, &cancel).await => {
            finish_placed(&shared, s.placed, &mut report).await;
            None
        }
        (s, _) => s,
    };
    if let Some(SetUp {
        placed: p,
        linked,
        started,
    }) = set_up
    {
        report.bytes_sent = p.cached.bytes_sent;
        report.cache_hit = Some(p.cached.hit);
        let _ = events.send(HostEvent::Running(name.clone())).await;
        shared.ui.host_event(&name, &name, true);
        report.result = match linked {
            Some(l) => run_child(&shared, &p, launch, l, started, &cancel, &mut report).await,
            None => supervise(&shared, &p, launch, &cancel, &mut report).await,
        };
        finish_placed(&shared, p, &mut report).await;
    }
    // The final stage first: a gateway's parent reads a failure from it
    // before the host's end (a rolling run counts it for --max-fail).
    let failed = matches!(report.result, RowResult::Failed(_));
    if let RowResult::Failed(why) = &report.result {
        shared.ui.stage(&name, Stage::Failed(why.clone()));
    } else {
        shared.ui.stage(&name, Stage::Done);
    }
    // Every host ends, placed or not: it no longer holds up convergence.
    shared.ended.mark();
    let _ = events.send(HostEvent::Ended(name.clone())).await;
    shared.ui.host_event(&name, &name, false);
    if let Some(r) = &shared.rolling {
        r.ended(&name, failed);
    }
    report.elapsed = start.elapsed();
    report
}

/// What set-up leaves: the placed host and, when the tunnel is already up
/// (a warm start was tried), the tunnel and the child if it started.
struct SetUp {
    placed: Placed,
    linked: Option<Linked>,
    started: Option<RemoteChild>,
}

/// Whether a host is first tried warm ([`crate::ssh::warm`]): not with
/// `--no-caching` (the binary is never there), nor in a rolling run,
/// whose set-up runs ahead of the host's turn.
fn warm_first(shared: &Shared) -> bool {
    shared.plan.caching && shared.rolling.is_none()
}

/// Set-up, in a `--cconns` slot: connect, then start the child warm if
/// the binary is cached and trusted (the slot is held until it runs);
/// otherwise copy the binary (the slot freed at its last byte) and start
/// it the same way, or put the graph over SFTP and launch the child after
/// set-up.
async fn place(
    shared: &Shared,
    host: &HostPlan,
    launch: &mut Launch<'_>,
    cancel: &CancellationToken,
) -> Result<SetUp, String> {
    let slot = setup_permit(shared, &host.name, cancel).await?;
    // Without `remote:`/`via:` and their credentials (#13).
    let text = launch.synced[0]
        .text()
        .ok_or("cannot rewrite graph.yaml for the host")?;
    if !warm_first(shared) {
        let placed = place_binary(shared, &slot, &host.target, cancel).await?;
        launch.args = put_graph(shared, host, &placed, &text).await?;
        return Ok(SetUp {
            placed,
            linked: None,
            started: None,
        });
    }
    let (session, connect) = connect_host(shared, &host.name, &host.target, cancel).await?;
    // The tunnel's port goes in the command: its request and the
    // command's channel go out together, one round trip for both.
    let parts = (launch.speaker.clone(), &launch.synced[..], false);
    let (linked, channel) = tokio::join!(link_up(shared, &session, parts), session.open_channel());
    let linked = linked?;
    let channel = channel.map_err(|e| explain(&e))?;
    launch.args = child_args(shared, host, None);
    let spec = WarmSpec {
        prefix: shared.plan.prefix.clone(),
        sha256: shared.plan.binary.sha256.clone(),
        run_id: shared.run_id.clone(),
        args: linked.args(launch),
        graph_len: text.len(),
    };
    let mut stdin = linked.secret.stdin_line();
    stdin.extend_from_slice(text.as_bytes());
    shared.ui.stage(&host.name, Stage::Starting);
    let t1 = Instant::now();
    let first = start_warm(&session, Some(channel), &spec, &stdin, cancel).await?;
    let (placed, started) = match first {
        Warm::Started { child, cached } => {
            tracing::debug!("{}: set-up done (started warm)", host.name);
            let placed = Placed::new(session, SftpSlot::empty(), cached, connect, t1.elapsed());
            (placed, Some(child))
        }
        Warm::Miss(_) => {
            copy_turn(shared, &host.name, connect + t1.elapsed(), cancel).await?;
            // The next command's channel opens while the binary travels.
            let t2 = Instant::now();
            let copy = copy_to(shared, &slot, &session, cancel);
            let (copied, channel) = tokio::join!(copy, session.open_channel());
            let (sftp, cached) = copied?;
            shared.ui.stage(&host.name, Stage::Starting);
            let placed = Placed::new(session, sftp, cached, connect, t2.elapsed());
            // The copy left the binary where a warm start finds it: the
            // child starts the same way (graph on stdin, no run directory
            // made over SFTP), from the prefix the copy resolved. A miss
            // now (the cache changed in between) takes the launch path.
            let spec = WarmSpec {
                prefix: Some(placed.cached.prefix.clone()),
                ..spec
            };
            let (again, ()) = tokio::join!(
                start_warm(&placed.session, channel.ok(), &spec, &stdin, cancel),
                placed.sftp.park()
            );
            match again? {
                Warm::Started { child, .. } => {
                    tracing::debug!("{}: set-up done", host.name);
                    (placed, Some(child))
                }
                Warm::Miss(_) => {
                    launch.args = put_graph(shared, host, &placed, &text).await?;
                    (placed, None)
                }
            }
        }
    };
    Ok(SetUp {
        placed,
        linked: Some(linked),
        started,
    })
}

/// Waits for this copy's turn in the first wave ([`super::stagger`]), the
/// host's set-up so far having taken `so_far`; given up when the run stops.
async fn copy_turn(
    shared: &Shared,
    name: &str,
    so_far: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let wait = shared.stagger.wait(so_far);
    if wait.is_zero() {
        return Ok(());
    }
    tracing::debug!("{name}: copy waits {wait:?} (first wave)");
    shared.ui.stage(name, Stage::Waiting);
    tokio::select! {
        _ = cancel.cancelled() => Err("the run is stopping".into()),
        _ = tokio::time::sleep(wait) => Ok(()),
    }
}

/// The warm start ([`warm_start`]) of `spec` with `stdin` (the secret line
/// and the graph), given up when the run stops.
async fn start_warm(
    session: &crate::ssh::Session,
    channel: Option<russh::Channel<russh::client::Msg>>,
    spec: &WarmSpec,
    stdin: &[u8],
    cancel: &CancellationToken,
) -> Result<Warm, String> {
    let opts = ExecOptions {
        close_stdin: false,
        ..ExecOptions::default()
    };
    tokio::select! {
        _ = cancel.cancelled() => Err("the run is stopping".into()),
        w = warm_start(session, channel, spec, (stdin, opts)) => w.map_err(|e| explain(&e)),
    }
}

/// Puts the host's graph in its run directory over SFTP (then parked);
/// returns the child's arguments that read it there.
async fn put_graph(
    shared: &Shared,
    host: &HostPlan,
    placed: &Placed,
    text: &str,
) -> Result<Vec<String>, String> {
    let put = placed.put_run_file(&shared.run_id, GRAPH_NAME, text.as_bytes());
    let path = put.await.map_err(|e| e.kind.to_string())?;
    placed.sftp.park().await;
    tracing::debug!("{}: set-up done", host.name);
    Ok(child_args(shared, host, Some(&path)))
}

/// The child's command line (each word quoted by `launch`; [`PORT_SLOT`]
/// becomes the tunnel port).
fn child_args(shared: &Shared, host: &HostPlan, graph: Option<&str>) -> Vec<String> {
    let mut a = words(&["run", "--hostname", &host.name]);
    a.extend([
        format!("--host-index={}", host.index),
        format!("--host-count={}", host.count),
        format!("--route={}", shared.flags.route_of(&host.name)),
    ]);
    if let Some(f) = shared.plan.files.get(host.file) {
        a.push(format!("--graph-label={}", f.label));
    }
    // A warm start's graph comes on stdin, and the start adds its run
    // directory ([`crate::ssh::warm`]).
    if let Some(graph) = graph {
        a.extend(words(&["--file", graph]));
        if let Some((dir, _)) = graph.rsplit_once('/') {
            a.extend(words(&["--run-dir", dir]));
        }
    }
    if shared.rolling.is_some() {
        // Its turn ends when it has converged: it exits by itself.
        a.push("--exit-converged".into());
    }
    a.extend(common_args(shared));
    a
}
