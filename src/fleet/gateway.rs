//! One gateway of a remote run and the group behind it: the binary and the
//! group's graphs go to the gateway once, and the gateway runs `mgmt run
//! --remote` for them with the run's flags, reaching the one store through
//! the tunnel it gets from here.
//!
//! The gateway is placed like any host (set-up permit, connect, cached
//! binary). Then it gets, in its per-run directory, each graph of its group
//! with `via:` shortened by one hop (`g0.yaml`, `g1.yaml`, ...) and the
//! initiator's known_hosts lines for every target behind it; agent access is
//! forwarded so it authenticates onward with keys that stay here. What it
//! prints on stdout are route records ([`crate::ui::route`]): they become the
//! stages, output lines, converged-rule events and summary rows of the hosts
//! behind it, under `gw/host` routes. When the gateway fails, every host of
//! its group fails "via gw: reason"; the other groups go on.
//!
//! What it does not do: decide when the run ends (the caller cancels), or
//! anything at the gateway itself (that is the same `mgmt run --remote`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::place::{self, Placed};
use super::plan::GatewayPlan;
use super::shared::{HostEvent, Shared, GRACE_PER_HOST, STDIN_GRACE};
use super::source::Source;
use super::supervise::{self, common_args, words, Launch, Synced};
use crate::ssh::OutputLine;
use crate::ui::inventory::OwnedAnswer;
use crate::ui::route::Record;
use crate::ui::{RowResult, Stage, Stream, SummaryRow};

/// How long each level of a subtree may take to stop after its stdin
/// closed: its own children's stdin grace, SIGINT and SIGKILL, and a margin.
const LEVEL_GRACE: Duration = Duration::from_secs(10);

/// What came back from below while the gateway ran.
#[derive(Default)]
struct Below {
    /// Rows reported by the gateway, routes already under its name.
    rows: Vec<SummaryRow>,
    /// Hosts that started and have not ended yet.
    running: HashSet<String>,
    ended: HashSet<String>,
    /// Hosts below whose stage said they failed (a rolling run counts them
    /// for `--max-fail` when they end).
    failed: HashSet<String>,
    /// The hosts of this gateway's subtree: a record naming any other host
    /// is refused, so a gateway cannot end or report hosts outside it.
    leaves: HashSet<String>,
    /// The known_hosts entries of every target behind it: the keys it may
    /// report learning.
    behind: Vec<String>,
    /// Where a key it learned under `accept-new` is recorded: the
    /// initiator's known_hosts (a gateway above passes it on instead).
    learn_into: Option<crate::ssh::hostkey::KnownHosts>,
}

impl Below {
    /// Nothing back yet from `gw`, whose hosts and targets are known.
    fn of(shared: &Shared, gw: &GatewayPlan) -> Below {
        let known = &shared.plan.settings.known_hosts;
        Below {
            leaves: gw.leaves.iter().cloned().collect(),
            behind: gw.behind.clone(),
            learn_into: (!shared.ui.writes_records()
                && known.policy == crate::ssh::HostKeyPolicy::AcceptNew)
                .then(|| known.clone()),
            ..Below::default()
        }
    }
}

/// Runs one gateway's group to its end; never fails: failures become the
/// rows of every host of the group. Returns the gateway's own row first.
pub async fn run(
    shared: Arc<Shared>,
    gw: GatewayPlan,
    graphs: Vec<watch::Receiver<Arc<Source>>>,
    (events, turns): (
        mpsc::Sender<HostEvent>,
        Option<mpsc::UnboundedReceiver<String>>,
    ),
    cancel: CancellationToken,
) -> Vec<SummaryRow> {
    let start = Instant::now();
    let label = gw.name.clone();
    let ui = shared.ui.clone();
    ui.add_host(&label);
    for leaf in &gw.leaves {
        ui.add_host(&format!("{label}/{leaf}"));
    }
    let mut own = SummaryRow::new(&label, &label);
    let mut below = Below::of(&shared, &gw);
    match place(&shared, &gw, &graphs, &cancel).await {
        Ok(p) => {
            own.bytes_sent = p.cached.bytes_sent;
            own.cache_hit = Some(p.cached.hit);
            own.result = supervise(
                &shared,
                &gw,
                &p,
                (graphs, turns),
                &events,
                &cancel,
                &mut own,
                &mut below,
            )
            .await;
            // Rows come only once the gateway finished its run: then its
            // exit code 1 means a host below failed (that host's row says
            // so), not the gateway.
            if matches!(own.result, RowResult::Failed(_)) && !below.rows.is_empty() {
                own.result = RowResult::Gateway;
            }
            place::finish_placed(&shared, p, &mut own).await;
        }
        Err(_) if cancel.is_cancelled() => {}
        Err(why) => own.result = RowResult::Failed(why),
    }
    own.elapsed = start.elapsed();
    let mut rows = finish_group(&shared, &gw, &own, below, &events, cancel.is_cancelled()).await;
    match &own.result {
        RowResult::Failed(why) => ui.stage(&label, Stage::Failed(why.clone())),
        _ => {
            own.result = RowResult::Gateway;
            ui.stage(&label, Stage::Done);
        }
    }
    rows.insert(0, own);
    rows
}

/// `mgmt facts` through one gateway: placed as for a run, the gateway runs
/// `mgmt facts --json --remote ...` for its group (no tunnel: nothing
/// reaches the store) and prints its group's stages as route records, then
/// its inventory, a one-host document per line. Returns the rows of the
/// hosts behind it (routes under its name; a row for any other host is
/// refused), or why there are none. The stop is a run's: stdin closed,
/// then signals by pid.
pub(crate) async fn facts(
    shared: &Shared,
    gw: &GatewayPlan,
    cancel: &CancellationToken,
) -> Result<Vec<OwnedAnswer>, String> {
    let graphs: Vec<_> = gw
        .files
        .iter()
        .filter_map(|&f| shared.plan.files.get(f))
        .map(|f| watch::channel(Source::new(f.text.clone())).1)
        .collect();
    let p = place(shared, gw, &graphs, cancel).await?;
    let got = facts_below(shared, gw, &p, cancel).await;
    let mut row = SummaryRow::new(&gw.name, &gw.name);
    place::finish_placed(shared, p, &mut row).await;
    let below = got?;
    let leaves: HashSet<&str> = gw.leaves.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    Ok(below
        .into_iter()
        .filter(|a| {
            let ours = leaves.contains(a.host.as_str());
            if !ours {
                tracing::warn!(
                    "{}: reported facts for {:?}, which is not behind it; refused",
                    gw.name,
                    a.host
                );
            }
            ours && seen.insert(a.host.clone())
        })
        .map(|mut a| {
            a.route = format!("{}/{}", gw.name, a.route);
            a
        })
        .collect())
}

/// Runs the gateway's `mgmt facts` on the placed gateway; its inventory.
async fn facts_below(
    shared: &Shared,
    gw: &GatewayPlan,
    p: &Placed,
    cancel: &CancellationToken,
) -> Result<Vec<OwnedAnswer>, String> {
    let label = gw.name.as_str();
    let dir = format!("{}/run/{}", p.cached.prefix, shared.run_id);
    let depth = (shared.flags.depth + 1).to_string();
    let mut args = words(&["facts", "--json", "--depth", &depth]);
    args.extend(onward_args(shared, gw, &dir));
    let ui = shared.ui.clone();
    let mut below = Below::of(shared, gw);
    let mut inventory = Vec::new();
    let mut on_line = |line: OutputLine| {
        match line {
            OutputLine::Stdout(l) => match Record::decode(&l) {
                Some(r) => {
                    take_record(&ui, label, r.under(label), &mut below);
                }
                None => match crate::ui::inventory::parse_facts_json(&l) {
                    Some(rows) => inventory.extend(rows),
                    None => ui.line(label, Stream::Stdout, &l),
                },
            },
            OutputLine::Stderr(l) => ui.line(label, Stream::Stderr, &l),
        }
        None
    };
    // Nothing goes to the run loop: there is none.
    let (events, _) = mpsc::channel(1);
    let mut launch = Launch {
        label,
        speaker: crate::store::Speaker::new(label, std::iter::empty()),
        args,
        synced: Vec::new(),
        agent: true,
        stdin_grace: shared.grace(STDIN_GRACE) + GRACE_PER_HOST * gw.leaves.len() as u32,
        on_line: &mut on_line,
        events,
        stdin_lines: None,
        written: Vec::new(),
    };
    let (status, last_err) = supervise::run_plain(shared, p, &mut launch, cancel).await?;
    drop(launch);
    // Exit 1 is a host below without facts: its row says why.
    if inventory.is_empty() {
        return Err(format!("mgmt facts ended ({status}): {}", last_err.trim()));
    }
    Ok(inventory)
}

/// Set-up under a permit: the binary, the group's graphs, known_hosts.
async fn place(
    shared: &Shared,
    gw: &GatewayPlan,
    graphs: &[watch::Receiver<Arc<Source>>],
    cancel: &CancellationToken,
) -> Result<Placed, String> {
    let slot = place::setup_permit(shared, &gw.name, cancel).await?;
    let p = place::place_binary(shared, &slot, &gw.target, cancel).await?;
    for (i, source) in graphs.iter().enumerate() {
        let synced = synced_file(i, source.clone(), gw);
        let text = synced
            .text()
            .ok_or_else(|| format!("cannot rewrite {} for the gateway", synced.name))?;
        put(shared, &p, &synced.name, text.as_bytes()).await?;
    }
    put(shared, &p, "known_hosts", gw.known_hosts.as_bytes()).await?;
    p.sftp.park().await;
    Ok(p)
}

async fn put(shared: &Shared, p: &Placed, name: &str, data: &[u8]) -> Result<(), String> {
    p.put_run_file(&shared.run_id, name, data)
        .await
        .map(|_| ())
        .map_err(|e| place::explain(&e))
}

fn synced_file(i: usize, source: watch::Receiver<Arc<Source>>, gw: &GatewayPlan) -> Synced {
    Synced {
        name: format!("g{i}.yaml"),
        source,
        rest: Some(gw.rest.get(i).cloned().unwrap_or_default()),
    }
}

/// Runs the gateway's `mgmt run --remote` and reads its records.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: &Shared,
    gw: &GatewayPlan,
    p: &Placed,
    (graphs, turns): (
        Vec<watch::Receiver<Arc<Source>>>,
        Option<mpsc::UnboundedReceiver<String>>,
    ),
    events: &mpsc::Sender<HostEvent>,
    cancel: &CancellationToken,
    own: &mut SummaryRow,
    below: &mut Below,
) -> RowResult {
    let dir = format!("{}/run/{}", p.cached.prefix, shared.run_id);
    let label = gw.name.as_str();
    let ui = shared.ui.clone();
    let mut on_line = |line: OutputLine| match line {
        OutputLine::Stdout(l) => match Record::decode(&l) {
            Some(r) => {
                let ev = take_record(&ui, label, r.under(label), below);
                if let Some(HostEvent::Ended(host)) = &ev {
                    // A leaf below ended: this gateway's stop is progressing.
                    shared.ended.mark();
                    if let Some(r) = &shared.rolling {
                        r.ended(host, below.failed.contains(host));
                    }
                }
                ev
            }
            None => {
                ui.line(label, Stream::Stdout, &l);
                None
            }
        },
        OutputLine::Stderr(l) => {
            ui.line(label, Stream::Stderr, &l);
            None
        }
    };
    let levels = 1 + gw.rest.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let launch = Launch {
        label,
        // The gateway's child and every host below it reach the store
        // through this tunnel, as the gateway: it speaks for them all.
        speaker: crate::store::Speaker::new(label, gw.leaves.iter().cloned()),
        args: gateway_args(shared, gw, &dir),
        synced: graphs
            .into_iter()
            .enumerate()
            .map(|(i, g)| synced_file(i, g, gw))
            .collect(),
        agent: true,
        // The gateway first stops its own hosts, with graces of its own.
        stdin_grace: shared.grace(STDIN_GRACE)
            + LEVEL_GRACE * levels
            + GRACE_PER_HOST * gw.leaves.len() as u32,
        on_line: &mut on_line,
        events: events.clone(),
        stdin_lines: turns,
        written: Vec::new(),
    };
    supervise::supervise(shared, p, launch, cancel, own).await
}

/// Shows one record from below; returns the event it means for the run.
fn take_record(ui: &crate::ui::Ui, gw: &str, r: Record, below: &mut Below) -> Option<HostEvent> {
    match r {
        Record::Stage { route, stage } => {
            if let (Stage::Failed(_), Some(host)) = (&stage, route.rsplit('/').next()) {
                if below.leaves.contains(host) {
                    below.failed.insert(host.to_owned());
                }
            }
            ui.stage(&route, stage)
        }
        Record::Line {
            route,
            stderr,
            text,
        } => {
            let stream = if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            ui.line(&route, stream, &text);
        }
        Record::Resource {
            route,
            kind,
            name,
            what,
            reason,
        } => ui.resource(&route, &kind, &name, &what, &reason),
        Record::Host { host, .. } if !below.leaves.contains(&host) => {
            tracing::warn!("{gw}: reported host {host:?}, which is not behind it; refused");
        }
        Record::Host {
            host,
            route,
            running,
        } => {
            ui.host_event(&host, &route, running);
            if running {
                below.running.insert(host.clone());
                return Some(HostEvent::Running(host));
            }
            below.running.remove(&host);
            below.ended.insert(host.clone());
            return Some(HostEvent::Ended(host));
        }
        Record::KnownHost { host, line } => take_known_host(ui, gw, &host, &line, below),
        Record::Report(w) => {
            let row = w.into_row();
            // A deeper gateway's own row names that gateway, not a host.
            if !below.leaves.contains(&row.host) && row.result != RowResult::Gateway {
                tracing::warn!(
                    "{gw}: reported a result for {:?}, which is not behind it; refused",
                    row.host
                );
                return None;
            }
            tracing::debug!("{gw}: report for {}", row.route);
            below.rows.push(row);
        }
    }
    None
}

/// A host key the gateway learned: passed on upward, or recorded here at
/// the initiator, if it names a target behind this gateway.
fn take_known_host(ui: &crate::ui::Ui, gw: &str, host: &str, line: &str, below: &Below) {
    if !below
        .behind
        .iter()
        .any(|b| line.split(' ').next() == Some(b.as_str()))
    {
        tracing::warn!("{gw}: reported a host key for {line:?}, which is not behind it; refused");
        return;
    }
    let Some(known) = &below.learn_into else {
        return ui.known_host(host, line);
    };
    match crate::ssh::hostkey::learn_reported(known, line, &below.behind) {
        Ok(crate::ssh::hostkey::Verdict::Learned) => tracing::info!(
            "{gw}: recorded the host key of {host}, learned through the gateway, in {}",
            known.path.display()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("{gw}: {e}"),
    }
}

/// The gateway's command line: its group's graphs and the run's flags.
fn gateway_args(shared: &Shared, gw: &GatewayPlan, dir: &str) -> Vec<String> {
    let mut a = words(&["run", "--hostname", &gw.name, "--run-dir", dir]);
    a.push(format!("--route={}", shared.flags.route_of(&gw.name)));
    a.extend(onward_args(shared, gw, dir));
    if shared.plan.onward.trace {
        a.push("--trace".into());
    }
    if shared.rolling.is_some() {
        // Its hosts wait for the turns written on its stdin.
        a.push("--rolling-follow".into());
    }
    a.extend(common_args(shared));
    a
}

/// How the gateway reaches its group, as the initiator would: the graphs
/// put in its run directory `dir` (with the names the user knows them
/// by), the known_hosts put there, and the connection flags.
fn onward_args(shared: &Shared, gw: &GatewayPlan, dir: &str) -> Vec<String> {
    let plan = &shared.plan;
    let mut a = Vec::new();
    for i in 0..gw.files.len() {
        a.extend(words(&["--remote", &format!("{dir}/g{i}.yaml")]));
    }
    for &f in &gw.files {
        let label = plan.files.get(f).map_or("", |f| f.label.as_str());
        a.push(format!("--remote-label={label}"));
    }
    a.extend(words(&[
        "--known-hosts",
        &format!("{dir}/known_hosts"),
        "--host-key-check",
        &plan.onward.host_key_check,
        "--cconns",
        &plan.cconns.to_string(),
        "--connect-timeout",
        &plan.onward.connect_timeout.to_string(),
    ]));
    if let Some(prefix) = &plan.prefix {
        a.extend(words(&["--remote-prefix", prefix]));
    }
    if !plan.caching {
        a.push("--no-caching".into());
    }
    a
}

/// Rows for the hosts behind the gateway: what it reported, and for every
/// host it did not report, a failure "via gw" (or a stop, when the run was
/// stopping). Hosts that never ended are ended here, so that none holds up
/// the converged rule.
async fn finish_group(
    shared: &Shared,
    gw: &GatewayPlan,
    own: &SummaryRow,
    mut below: Below,
    events: &mpsc::Sender<HostEvent>,
    stopping: bool,
) -> Vec<SummaryRow> {
    let label = &gw.name;
    let why = match &own.result {
        RowResult::Failed(why) => format!("via {label}: {why}"),
        _ => format!("via {label}: the gateway ended without reporting this host"),
    };
    let reported: HashSet<String> = below
        .rows
        .iter()
        .filter(|r| r.result != RowResult::Gateway)
        .map(|r| r.host.clone())
        .collect();
    for leaf in &gw.leaves {
        if !below.ended.contains(leaf) {
            if let Some(r) = &shared.rolling {
                let own_failed = matches!(own.result, RowResult::Failed(_));
                r.ended(leaf, own_failed || !stopping);
            }
            let _ = events.send(HostEvent::Ended(leaf.clone())).await;
            shared
                .ui
                .host_event(leaf, &format!("{label}/{leaf}"), false);
        }
        if reported.contains(leaf) {
            continue;
        }
        let route = format!("{label}/{leaf}");
        let mut row = SummaryRow::new(leaf, &route);
        if stopping && !matches!(own.result, RowResult::Failed(_)) {
            row.result = RowResult::Stopped;
        } else {
            row.result = RowResult::Failed(why.clone());
            shared.ui.stage(&route, Stage::Failed(why.clone()));
        }
        row.elapsed = own.elapsed;
        below.rows.push(row);
    }
    below.rows
}
