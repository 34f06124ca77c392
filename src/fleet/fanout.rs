//! The fan-out: every host of a remote run at once, at most `--cconns` of
//! them in set-up, each in its own task; the graphs kept in step with the
//! local files; tunnel connections handed to the embedded store.
//!
//! What it does not decide: when the run ends. The caller watches the
//! converged keys (told which hosts are running through [`HostEvent`]s) and
//! cancels the token; every host then stops its child and cleans up.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::gateway;
use super::host;
use super::plan::Plan;
use super::rolling::{RollMode, Rolling};
use super::shared::{ChildFlags, HostEvent, Shared};
use super::source::Source;
use super::stagger::Stagger;
use crate::fswatch::PathWatch;
use crate::graph;
use crate::ssh::agent::OwnAgent;
use crate::ssh::Stream;
use crate::ui::events::RunInfo;
use crate::ui::{SummaryRow, Ui};

/// Everything a fan-out needs besides the plan.
pub struct Wiring {
    pub flags: ChildFlags,
    pub ui: Ui,
    /// Authenticated tunnel connections go here (to the store), with whom
    /// each speaks for.
    pub tunnels: mpsc::Sender<(Stream, Arc<crate::store::Speaker>)>,
    pub events: mpsc::Sender<HostEvent>,
    /// Set by the caller before cancelling when the cluster converged.
    pub converged: Arc<AtomicBool>,
    /// `--rolling` (or `--rolling-follow`), with what it needs: cancelled
    /// when the rollout is over (lead), the turns given on stdin (follow).
    pub rolling: Option<RollWiring>,
}

/// A rolling run's ends outside the fleet.
pub struct RollWiring {
    pub mode: RollMode,
    /// Cancelled by the lead when no turn will be given any more and every
    /// turn given has ended; the caller then stops the run.
    pub done: CancellationToken,
    /// A follower's turns, as its parent writes them on its stdin.
    pub turns: Option<mpsc::UnboundedReceiver<String>>,
}

/// What `--events`' `started` event says about the run.
fn run_info(
    plan: &Plan,
    flags: &ChildFlags,
    flags_rolling: Option<RollMode>,
    run_id: &str,
) -> RunInfo {
    let mut hosts: Vec<(String, String)> = plan
        .gateways
        .iter()
        .map(|g| (g.name.clone(), g.name.clone()))
        .collect();
    hosts.extend(plan.routes());
    let shown = serde_json::json!({
        "noop": flags.noop,
        "converged_timeout": flags.converged_timeout,
        "no_watch": flags.no_watch,
        "cconns": plan.cconns,
        "caching": plan.caching,
        "trace": plan.onward.trace,
        "host_key_check": plan.onward.host_key_check,
    });
    let mut shown = shown;
    if let Some(RollMode::Lead { cap, max_fail }) = flags_rolling {
        shown["rolling"] = serde_json::json!(cap);
        shown["max_fail"] = serde_json::json!(max_fail.map(|m| m.to_string()));
    }
    RunInfo {
        run: run_id.to_string(),
        initiator: flags.initiator.clone(),
        hosts,
        flags: match shown {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
    }
}

/// Runs every host and gateway until `cancel`, or until every one has
/// ended; returns one report per host (a gateway's own row followed by its
/// group's), in plan order.
pub async fn run(plan: Plan, w: Wiring, cancel: CancellationToken) -> Vec<SummaryRow> {
    let mut run_id = [0u8; 8];
    rand::fill(&mut run_id[..]);
    let setup = (plan.cconns > 0).then(|| Arc::new(Semaphore::new(plan.cconns)));
    let mut watchers = JoinSet::new();
    let mut graphs = Vec::new();
    for f in &plan.files {
        let (tx, rx) = watch::channel(Source::new(f.text.clone()));
        if !w.flags.no_watch {
            match PathWatch::new(&f.path) {
                Ok(pw) => {
                    watchers.spawn(follow_file(f.path.clone(), f.text.clone(), pw, tx));
                }
                Err(e) => tracing::warn!("{e}; edits of {} will not be sent", f.path.display()),
            }
        }
        graphs.push(rx);
    }
    let run_id = hex::encode(run_id);
    let mode = w.rolling.as_ref().map(|r| r.mode);
    w.ui.run_started(&run_info(&plan, &w.flags, mode, &run_id));
    let hosts = plan.hosts.clone();
    let gateways = plan.gateways.clone();
    for h in &hosts {
        w.ui.add_host(&h.name);
    }
    // Keeps the agent served to gateways alive for the whole run.
    let (agent, _own_agent) = gateway_agent(&plan).await;
    let order = plan.order.clone();
    let (rolling, mut gw_turns, mut roll_tasks) = rolling_for(&plan, w.rolling, &w.ui, &cancel);
    let shared = Arc::new(Shared {
        stagger: Stagger::new(plan.hosts.len(), plan.cconns),
        plan,
        run_id,
        flags: w.flags,
        tunnels: w.tunnels,
        setup,
        ui: w.ui,
        converged: w.converged,
        agent,
        ended: Default::default(),
        rolling: rolling.clone(),
    });
    if let Some(r) = &rolling {
        roll_tasks.spawn(r.clone().lead(order, cancel.clone()));
    }
    let mut tasks = JoinSet::new();
    for (i, h) in hosts.into_iter().enumerate() {
        let g = graphs[h.file].clone();
        let (shared, events, token) = (shared.clone(), w.events.clone(), cancel.child_token());
        tasks.spawn(async move { (i, vec![host::run(shared, h, g, events, token).await]) });
    }
    let first_gw = tasks.len();
    for (i, gw) in gateways.into_iter().enumerate() {
        let g = gw.files.iter().map(|f| graphs[*f].clone()).collect();
        // A child token per gateway: cancelling it stops its subtree only.
        let (shared, events, token) = (shared.clone(), w.events.clone(), cancel.child_token());
        let turns = gw_turns.remove(&gw.name);
        tasks.spawn(async move {
            (
                first_gw + i,
                gateway::run(shared, gw, g, (events, turns), token).await,
            )
        });
    }
    let mut reports: Vec<Vec<SummaryRow>> = (0..tasks.len()).map(|_| Vec::new()).collect();
    while let Some(r) = tasks.join_next().await {
        if let Ok((i, rep)) = r {
            reports[i] = rep;
        }
    }
    watchers.abort_all();
    roll_tasks.abort_all();
    let mut rows: Vec<SummaryRow> = reports.into_iter().flatten().collect();
    if let Some(r) = &rolling {
        r.mark_not_started(&mut rows);
    }
    rows
}

/// Each gateway's stdin lines (a rolling run's turns), by gateway name.
type GatewayLines = HashMap<String, mpsc::UnboundedReceiver<String>>;

/// The turns of a rolling run: the [`Rolling`] its hosts share, the
/// stdin lines of each gateway (by name), and, for a follower, the task
/// that takes its parent's turns. The lead's own task is started by the
/// caller, once the hosts can wait for their turns.
fn rolling_for(
    plan: &Plan,
    wiring: Option<RollWiring>,
    ui: &Ui,
    cancel: &CancellationToken,
) -> (Option<Arc<Rolling>>, GatewayLines, JoinSet<()>) {
    let mut tasks = JoinSet::new();
    let mut lines = HashMap::new();
    let Some(wiring) = wiring else {
        return (None, lines, tasks);
    };
    let mut via = HashMap::new();
    for g in &plan.gateways {
        let (tx, rx) = mpsc::unbounded_channel();
        for leaf in &g.leaves {
            via.insert(leaf.clone(), tx.clone());
        }
        lines.insert(g.name.clone(), rx);
    }
    let total = plan.order.len();
    let r = Rolling::new(wiring.mode, total, via, wiring.done, ui.clone());
    if let Some(turns) = wiring.turns {
        let follower = r.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = follower.follow(turns) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    (Some(r), lines, tasks)
}

/// The agent gateways get access to: the user's (when no `-i` key was
/// named), else one served here from the key files; none without gateways.
pub(super) async fn gateway_agent(plan: &Plan) -> (Option<std::path::PathBuf>, Option<OwnAgent>) {
    if plan.gateways.is_empty() {
        return (None, None);
    }
    if let Some(sock) = &plan.onward.agent {
        return (Some(sock.clone()), None);
    }
    match OwnAgent::start(&plan.onward.key_files).await {
        Ok(a) => {
            tracing::debug!("serving {} key(s) to gateways through an agent", a.keys);
            (Some(a.socket().to_owned()), Some(a))
        }
        Err(e) => {
            tracing::warn!("{e}; gateways get no agent and must authenticate onward by themselves");
            (None, None)
        }
    }
}

/// Sends every valid edit of a `--remote` file to its hosts; an invalid one
/// is reported and not sent.
async fn follow_file(
    path: std::path::PathBuf,
    mut last: String,
    mut watch: PathWatch,
    tx: watch::Sender<Arc<Source>>,
) {
    let label = path.display().to_string();
    loop {
        if let Err(e) = watch.changed().await {
            tracing::warn!("{e}; edits of {label} will not be sent");
            return;
        }
        // Let an editor finish writing before reading it.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text == last {
            continue;
        }
        last = text.clone();
        match graph::parse_str(&text, &label) {
            Ok(_) => {
                tracing::info!("{label}: changed; sending it to its hosts");
                if tx.send(Source::new(text)).is_err() {
                    return;
                }
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    "{label}: invalid edit not sent; the hosts keep the previous graph"
                );
            }
        }
    }
}
