//! One host of a remote run, from the set-up slot to the last cleanup:
//! connect and authenticate, copy the binary (or find it cached) and the
//! graph, open the authenticated reverse tunnel, run the child with the
//! secret on its stdin, stream its output, keep its graph in step with the
//! local file, and on stop end the child by its pid, close the tunnel and
//! remove the per-run files.
//!
//! Teardown is explicit and in reverse order of set-up, because `Drop`
//! cannot await. The set-up permit (`--cconns`) is held from before connect
//! until the copy is done, and released before the child runs. In a
//! rolling run the placed host then waits for its turn
//! ([`super::rolling`]) before its child runs, and its child exits once
//! converged.
//!
//! The steps live in [`super::place`] (set-up and teardown, shared with
//! gateways) and [`super::supervise`] (the running child); this file strings
//! them together for a host reached directly.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::place::{finish_placed, place_binary, setup_permit, Placed};
use super::plan::HostPlan;
use super::shared::{HostEvent, Shared, STDIN_GRACE};
use super::supervise::{common_args, supervise, words, Launch, Synced};
use crate::ssh::OutputLine;
use crate::store::Speaker;
use crate::ui::route::Record;
use crate::ui::{RowResult, Stage, SummaryRow};

/// Runs one host to its end; never fails: failures become the report.
pub async fn run(
    shared: Arc<Shared>,
    host: HostPlan,
    graph: watch::Receiver<Arc<String>>,
    events: mpsc::Sender<HostEvent>,
    cancel: CancellationToken,
) -> SummaryRow {
    let start = Instant::now();
    let name = host.name.clone();
    let mut report = SummaryRow::new(&name, &name);
    let placed = match place(&shared, &host, &graph, &cancel).await {
        Ok(p) => Some(p),
        Err(_) if cancel.is_cancelled() => None,
        Err(why) => {
            report.result = RowResult::Failed(why);
            None
        }
    };
    // A rolling run's host waits here, placed, for its turn; without one
    // (the rollout stopped first) it is cleaned up and never started.
    let placed = match (placed, &shared.rolling) {
        (Some(p), Some(r)) if !r.turn(&name, &cancel).await => {
            finish_placed(&shared, p, &mut report).await;
            None
        }
        (p, _) => p,
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
        let launch = Launch {
            speaker: Speaker::new(&name, []),
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
            stdin_lines: None,
            written: Vec::new(),
        };
        report.result = supervise(&shared, &p, launch, &cancel, &mut report).await;
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
    // Without `remote:`/`via:` and their credentials (#13).
    let text =
        super::plan::host_text(&text, None).ok_or("cannot rewrite graph.yaml for the host")?;
    let put = placed.put_run_file(&shared.run_id, "graph.yaml", text.as_bytes());
    put.await.map_err(|e| e.kind.to_string())?;
    placed.sftp.park().await;
    // Still under the permit: tests measure the set-up concurrency with it.
    tracing::debug!("{}: set-up done", host.name);
    Ok(placed)
}

/// The child's command line (each word quoted by `launch`; [`PORT_SLOT`]
/// becomes the tunnel port).
fn child_args(shared: &Shared, host: &HostPlan, graph: &str) -> Vec<String> {
    let mut a = words(&["run", "--hostname", &host.name, "--file", graph]);
    a.extend([
        format!("--host-index={}", host.index),
        format!("--host-count={}", host.count),
        format!("--route={}", shared.flags.route_of(&host.name)),
    ]);
    if let Some(f) = shared.plan.files.get(host.file) {
        a.push(format!("--graph-label={}", f.label));
    }
    if let Some((dir, _)) = graph.rsplit_once('/') {
        a.extend(words(&["--run-dir", dir]));
    }
    if shared.rolling.is_some() {
        // Its turn ends when it has converged: it exits by itself.
        a.push("--exit-converged".into());
    }
    a.extend(common_args(shared));
    a
}
