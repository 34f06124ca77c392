//! `mgmt facts --remote FILE...` (#20 item 4): every host's facts, gathered
//! by the host itself, without applying anything.
//!
//! Each host is placed as in a run (the `--cconns` set-up permit, connect,
//! the binary in its cache) and runs `<cached mgmt> facts --json`, which
//! prints [`crate::facts::gather`] as one JSON line and exits: no tunnel,
//! no store, no graph, no per-run files. The clean-up is the run's
//! (`--no-caching` removes the binary). A host that cannot be reached or
//! whose output is not JSON gets its reason instead of facts.
//!
//! Hosts behind a gateway are asked by the gateway: it is placed as for a
//! run, with its group's graphs and known_hosts, and runs this same
//! inventory for them ([`super::gateway::facts`]), with the agent access a
//! run's gateway gets; its rows come back under `gw/host` routes. When the
//! gateway cannot be reached, each host behind it gets "via gw: reason".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::place::{explain, finish_placed, place_binary, setup_permit};
use super::plan::{GatewayPlan, HostPlan, Plan};
use super::shared::{ChildFlags, Shared};
use crate::ssh::{ExecOptions, ExitStatus, OutputLine};
use crate::ui::{Stage, SummaryRow, Ui};

/// One host's answer: its facts as the host printed them, or why not.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub host: String,
    /// How it was reached: its name, or `gw/host` behind a gateway.
    pub route: String,
    pub facts: Result<serde_json::Value, String>,
}

/// Gathers the facts of every host of `plan`, direct or behind gateways,
/// in plan order. `depth` is this process's (above 0: a gateway's).
pub async fn gather(plan: Plan, ui: Ui, depth: u32, cancel: CancellationToken) -> Vec<HostFacts> {
    let mut run_id = [0u8; 8];
    rand::fill(&mut run_id[..]);
    let hosts = plan.hosts.clone();
    let gateways = plan.gateways.clone();
    let order = plan.order.clone();
    for h in &hosts {
        ui.add_host(&h.name);
    }
    for g in &gateways {
        ui.add_host(&g.name);
        for leaf in &g.leaves {
            ui.add_host(&format!("{}/{leaf}", g.name));
        }
    }
    // Kept alive while gateways may sign with it.
    let (agent, _own_agent) = super::fanout::gateway_agent(&plan).await;
    // Nothing is tunnelled: the store end of the channel is dropped.
    let (tunnels, _) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        setup: (plan.cconns > 0).then(|| Arc::new(Semaphore::new(plan.cconns))),
        // Facts copy through `place_binary`, which does not wait.
        stagger: super::stagger::Stagger::new(0, 0),
        plan,
        run_id: hex::encode(run_id),
        flags: ChildFlags {
            depth,
            ..ChildFlags::default()
        },
        tunnels,
        ui,
        converged: Arc::new(AtomicBool::new(false)),
        agent,
        ended: Default::default(),
        rolling: None,
    });
    let mut tasks = JoinSet::new();
    for h in hosts {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move { vec![one(&shared, &h, &cancel).await] });
    }
    for g in gateways {
        let (shared, cancel) = (shared.clone(), cancel.child_token());
        tasks.spawn(async move { through(&shared, &g, &cancel).await });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(rows) = r {
            out.extend(rows);
        }
    }
    let at: std::collections::HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    out.sort_by_key(|f| at.get(f.host.as_str()).copied());
    out
}

/// The facts of the hosts behind `gw`, every one of them with a row.
async fn through(shared: &Shared, gw: &GatewayPlan, cancel: &CancellationToken) -> Vec<HostFacts> {
    let label = &gw.name;
    let got = super::gateway::facts(shared, gw, cancel).await;
    let ui = &shared.ui;
    match &got {
        Ok(_) => ui.stage(label, Stage::Done),
        Err(why) => ui.stage(label, Stage::Failed(why.clone())),
    }
    let mut rows = got.as_ref().cloned().unwrap_or_default();
    for leaf in &gw.leaves {
        if rows.iter().any(|r| &r.host == leaf) {
            continue;
        }
        let why = match &got {
            Err(why) => format!("via {label}: {why}"),
            Ok(_) => format!("via {label}: the gateway did not report this host"),
        };
        rows.push(crate::ui::inventory::OwnedAnswer {
            host: leaf.clone(),
            route: format!("{label}/{leaf}"),
            facts: Err(why),
        });
    }
    rows.into_iter()
        .map(|r| {
            match &r.facts {
                Ok(_) => ui.stage(&r.route, Stage::Done),
                Err(why) => ui.stage(&r.route, Stage::Failed(why.clone())),
            }
            HostFacts {
                host: r.host,
                route: r.route,
                facts: r.facts,
            }
        })
        .collect()
}

async fn one(shared: &Shared, h: &HostPlan, cancel: &CancellationToken) -> HostFacts {
    let facts = facts_of(shared, h, cancel).await;
    match &facts {
        Ok(_) => shared.ui.stage(&h.name, Stage::Done),
        Err(why) => shared.ui.stage(&h.name, Stage::Failed(why.clone())),
    }
    HostFacts {
        host: h.name.clone(),
        route: h.name.clone(),
        facts,
    }
}

async fn facts_of(
    shared: &Shared,
    h: &HostPlan,
    cancel: &CancellationToken,
) -> Result<serde_json::Value, String> {
    let slot = setup_permit(shared, &h.name, cancel).await?;
    let p = place_binary(shared, &slot, &h.target, cancel).await?;
    slot.free();
    p.sftp.park().await;
    shared.ui.stage(&h.name, Stage::Running);
    let got = run_facts(&p, cancel).await;
    if got.is_ok() {
        // Nothing was put in a run directory: nothing to remove there.
        p.child_cleaned.store(true, Ordering::Relaxed);
    }
    let mut row = SummaryRow::new(&h.name, &h.name);
    finish_placed(shared, p, &mut row).await;
    got
}

/// Runs `mgmt facts --json` on the placed host and parses what it printed.
async fn run_facts(
    p: &super::place::Placed,
    cancel: &CancellationToken,
) -> Result<serde_json::Value, String> {
    let mut child = p
        .cached
        .launch(&p.session, &["facts", "--json"], ExecOptions::default())
        .await
        .map_err(|e| explain(&e))?;
    let (mut out, mut last_err) = (String::new(), String::new());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err("the run was interrupted".into()),
            line = child.next_line() => match line {
                Some(OutputLine::Stdout(l)) => out.push_str(&l),
                Some(OutputLine::Stderr(l)) => last_err = l,
                None => break,
            },
        }
    }
    match child.status().await {
        ExitStatus::Exited(0) => serde_json::from_str(out.trim())
            .map_err(|e| format!("the host printed no facts as JSON ({e}): {out:.200}")),
        other => Err(format!("mgmt facts ended ({other}): {}", last_err.trim())),
    }
}
