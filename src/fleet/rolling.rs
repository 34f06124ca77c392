//! Rolling runs (`--rolling N`, #20): at most N hosts of the whole tree
//! apply at once, one turn per host, in the plan's order (the `--remote`
//! files in the order given, each file's `remote:` list in its order).
//!
//! Set-up is not part of a turn: every host connects and gets its binary
//! under `--cconns` as in any run, then waits, placed, for its turn. A turn
//! starts when the initiator gives it (a permit of one semaphore for the
//! whole tree) and ends when the host has ended: its child converged and
//! exited by itself (`--exit-converged`), or failed, and its row is
//! written. Then the next host in order gets the freed permit.
//!
//! The cap is counted only at the initiator ([`RollMode::Lead`]). A gateway
//! runs in [`RollMode::Follow`]: its hosts wait for turns that come down
//! its stdin as `turn NAME` lines ([`crate::link::TURN_PREFIX`]), which it passes on to
//! the gateway below it that holds NAME, if any. Hosts behind a gateway end
//! as their route records say (`Host` ended, after a `Failed` stage if they
//! failed), so the initiator frees their permits as it does for its own.
//!
//! `--max-fail N` (or `N%` of the hosts) stops the rollout once more hosts
//! failed than that: no turn is given any more, the turns running end, and
//! the hosts that never got one are reported as `not started`.
//!
//! What it does not do: end the run. [`Rolling::done`] is cancelled when
//! no turn will be given any more and every turn given has ended; the run
//! loop then stops the fleet as usual.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ui::{RowResult, SummaryRow, Ui};

/// How many failed hosts stop a rollout: more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxFail {
    Hosts(usize),
    /// A percentage of the run's hosts, 0 to 100.
    Percent(u8),
}

impl MaxFail {
    /// `N` or `N%` (`N` at most 100).
    pub fn parse(s: &str) -> Result<MaxFail, String> {
        let bad = || format!("{s:?} is not a number of hosts (N) or a percentage of them (N%)");
        match s.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(format!(
                        "{s}: a percentage of the hosts is at most 100% (100% never stops the rollout)"
                    ));
                }
                Ok(MaxFail::Percent(p as u8))
            }
            None => s.trim().parse().map(MaxFail::Hosts).map_err(|_| bad()),
        }
    }

    /// Whether `failed` of `total` hosts is more than allowed.
    pub fn exceeded(&self, failed: usize, total: usize) -> bool {
        match *self {
            MaxFail::Hosts(n) => failed > n,
            MaxFail::Percent(p) => failed * 100 > usize::from(p) * total,
        }
    }
}

impl std::fmt::Display for MaxFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxFail::Hosts(n) => write!(f, "{n}"),
            MaxFail::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// This process's part in a rolling run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollMode {
    /// The initiator: gives the turns, at most `cap` at once.
    Lead {
        cap: usize,
        max_fail: Option<MaxFail>,
    },
    /// A gateway: turns come from its parent, on stdin.
    Follow,
}

/// What a host's turn, or the lack of one, looks like to everyone.
#[derive(Default)]
struct State {
    /// Hosts given a turn (here or forwarded to a gateway below).
    granted: HashSet<String>,
    /// Hosts that ended, and whether they failed.
    ended: HashMap<String, bool>,
    /// The lead's permit of each turn running; dropped when it ends.
    permits: HashMap<String, OwnedSemaphorePermit>,
    /// Hosts of this process waiting for their turn: told when it comes.
    waiting: HashMap<String, oneshot::Sender<()>>,
    failed: usize,
    /// Turns given that have not ended: kept as a count, not recounted on
    /// every end (thousands of hosts).
    applying: usize,
    /// No more turns will be given.
    closed: bool,
    /// `--max-fail` was exceeded.
    halted: bool,
}

/// The turns of one process's hosts; shared by its host tasks, gateway
/// tasks and (at the lead) the task that gives the turns.
pub struct Rolling {
    mode: RollMode,
    total: usize,
    state: Mutex<State>,
    /// For each host behind a gateway of this process: where that
    /// gateway's stdin lines go. Dropping them ends nothing (the gateway's
    /// stdin stays open until its stop).
    via: HashMap<String, mpsc::UnboundedSender<String>>,
    /// Cancelled when the rollout is over (lead only).
    done: CancellationToken,
    ui: Ui,
}

impl Rolling {
    pub fn new(
        mode: RollMode,
        total: usize,
        via: HashMap<String, mpsc::UnboundedSender<String>>,
        done: CancellationToken,
        ui: Ui,
    ) -> Arc<Rolling> {
        Arc::new(Rolling {
            mode,
            total,
            state: Mutex::default(),
            via,
            done,
            ui,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lead's loop: gives turns in `order`, at most `cap` running,
    /// until every host had one or the rollout halted.
    pub async fn lead(self: Arc<Self>, order: Vec<String>, cancel: CancellationToken) {
        let RollMode::Lead { cap, .. } = self.mode else {
            return;
        };
        let permits = Arc::new(Semaphore::new(cap));
        for host in order {
            if self.lock().halted {
                break;
            }
            if self.lock().ended.contains_key(&host) {
                // Failed in set-up: it has no turn to take.
                continue;
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            {
                let mut s = self.lock();
                if s.halted {
                    break;
                }
                if s.ended.contains_key(&host) {
                    continue;
                }
                s.granted.insert(host.clone());
                s.applying += 1;
                s.permits.insert(host.clone(), permit);
            }
            tracing::debug!("rolling: {host}'s turn");
            self.deliver(&host);
        }
        self.lock().closed = true;
        self.check_done();
    }

    /// A follower's loop: the turns its parent gives, from stdin.
    pub async fn follow(self: Arc<Self>, mut turns: mpsc::UnboundedReceiver<String>) {
        while let Some(host) = turns.recv().await {
            self.lock().granted.insert(host.clone());
            self.deliver(&host);
        }
    }

    /// Tells `host` (a host of this process, or the gateway it is behind)
    /// that its turn came.
    fn deliver(&self, host: &str) {
        if let Some(gw) = self.via.get(host) {
            let prefix = String::from_utf8_lossy(crate::link::TURN_PREFIX);
            let _ = gw.send(format!("{prefix}{host}\n"));
            return;
        }
        if let Some(tx) = self.lock().waiting.remove(host) {
            let _ = tx.send(());
        }
    }

    /// Waits for `host`'s turn; false when the run stops first.
    pub async fn turn(&self, host: &str, cancel: &CancellationToken) -> bool {
        let rx = {
            let mut s = self.lock();
            if s.granted.contains(host) {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.insert(host.to_owned(), tx);
            rx
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            r = rx => r.is_ok(),
        }
    }

    /// `host` ended (its turn, if it had one, is over); `failed` counts
    /// towards `--max-fail`.
    pub fn ended(&self, host: &str, failed: bool) {
        let RollMode::Lead { max_fail, .. } = self.mode else {
            return;
        };
        let progress = {
            let mut s = self.lock();
            if s.ended.insert(host.to_owned(), failed).is_some() {
                return;
            }
            if s.granted.contains(host) {
                s.applying -= 1;
            }
            s.failed += usize::from(failed);
            s.permits.remove(host);
            if let Some(m) = max_fail {
                if !s.halted && m.exceeded(s.failed, self.total) {
                    s.halted = true;
                    let left = self.total - s.ended.len() - s.running();
                    tracing::warn!(
                        "rolling: {} host(s) failed, more than --max-fail {m}: stopping the rollout; \
                         the {} host(s) applying finish, {left} will not start",
                        s.failed,
                        s.running()
                    );
                }
            }
            format!(
                "rolling: {} of {} done, {} applying, {} failed",
                s.ended.len(),
                self.total,
                s.running(),
                s.failed
            )
        };
        self.ui.println(&progress);
        self.check_done();
    }

    fn check_done(&self) {
        let s = self.lock();
        if matches!(self.mode, RollMode::Lead { .. }) && s.closed && s.running() == 0 {
            self.done.cancel();
        }
    }

    /// At the lead, the rows of hosts that never got a turn and ended
    /// without failing become `not started`.
    pub fn mark_not_started(&self, rows: &mut [SummaryRow]) {
        if !matches!(self.mode, RollMode::Lead { .. }) {
            return;
        }
        let s = self.lock();
        for r in rows {
            if r.result == RowResult::Stopped && !s.granted.contains(&r.host) {
                r.result = RowResult::NotStarted;
            }
        }
    }
}

impl State {
    /// Turns given that have not ended.
    fn running(&self) -> usize {
        self.applying
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fail_is_a_count_or_a_percentage() {
        assert_eq!(MaxFail::parse("2"), Ok(MaxFail::Hosts(2)));
        assert_eq!(MaxFail::parse("10%"), Ok(MaxFail::Percent(10)));
        assert!(MaxFail::parse("120%").is_err());
        assert!(MaxFail::parse("x").is_err());
        assert!(MaxFail::parse("-1").is_err());
        // More than allowed stops: 2 tolerated, the third stops.
        assert!(!MaxFail::Hosts(2).exceeded(2, 10));
        assert!(MaxFail::Hosts(2).exceeded(3, 10));
        assert!(!MaxFail::Percent(10).exceeded(2, 20));
        assert!(MaxFail::Percent(10).exceeded(3, 20));
        assert!(MaxFail::Percent(0).exceeded(1, 20));
    }

    fn lead(cap: usize, max_fail: Option<MaxFail>, total: usize) -> Arc<Rolling> {
        let ui = Ui::with_writers(Box::new(std::io::sink()), Box::new(std::io::sink()));
        let mode = RollMode::Lead { cap, max_fail };
        Rolling::new(mode, total, HashMap::new(), CancellationToken::new(), ui)
    }

    #[tokio::test]
    async fn turns_go_in_order_and_never_more_than_the_cap() {
        let r = lead(2, None, 4);
        let order: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
        let cancel = CancellationToken::new();
        tokio::spawn(r.clone().lead(order, cancel.clone()));
        assert!(r.turn("h0", &cancel).await);
        assert!(r.turn("h1", &cancel).await);
        // h2 waits for a free permit: h0's end.
        let r2 = r.clone();
        let c2 = cancel.clone();
        let h2 = tokio::spawn(async move { r2.turn("h2", &c2).await });
        tokio::task::yield_now().await;
        assert!(!r.lock().granted.contains("h2"));
        r.ended("h0", false);
        assert!(h2.await.unwrap());
        assert!(!r.lock().granted.contains("h3"));
        r.ended("h1", false);
        r.ended("h2", false);
        assert!(r.turn("h3", &cancel).await);
        r.ended("h3", false);
        r.done.cancelled().await;
    }

    #[tokio::test]
    async fn too_many_failures_halt_the_rollout() {
        let r = lead(1, Some(MaxFail::Hosts(0)), 3);
        let order: Vec<String> = (0..3).map(|i| format!("h{i}")).collect();
        let cancel = CancellationToken::new();
        tokio::spawn(r.clone().lead(order, cancel.clone()));
        assert!(r.turn("h0", &cancel).await);
        r.ended("h0", true);
        r.done.cancelled().await;
        let mut rows = vec![SummaryRow::new("h1", "h1"), SummaryRow::new("h2", "h2")];
        r.mark_not_started(&mut rows);
        assert!(rows.iter().all(|r| r.result == RowResult::NotStarted));
    }
}
