//! What every host task of a fan-out shares: the plan, the run's secret
//! and flags, the set-up cap, the UI, and the clock that tells whether the
//! stop is still progressing; and the events a host task reports for the
//! converged rule (its result is the UI's [`SummaryRow`](crate::ui::SummaryRow),
//! which the fleet fills in).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use super::plan::Plan;
use crate::ssh::Stream;
use crate::store::Speaker;
use crate::ui::Ui;

/// How long a child may take to stop by itself once its stdin is closed,
/// before it gets SIGINT by its pid.
pub(crate) const STDIN_GRACE: Duration = Duration::from_secs(2);
/// How long a child may take to stop after SIGINT before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
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
    pub(crate) fn postpone(
        &self,
        due: tokio::time::Instant,
        grace: Duration,
    ) -> Option<tokio::time::Instant> {
        let last = (*self.0.lock().ok()?)?;
        let later = tokio::time::Instant::from_std(last + grace);
        (later > due).then_some(later)
    }
}

/// Flags passed on to every child.
#[derive(Debug, Clone, Default)]
pub struct ChildFlags {
    pub converged_timeout: Option<u64>,
    pub noop: bool,
    pub no_watch: bool,
    /// This process's depth (0: the initiator); children run at depth + 1.
    pub depth: u32,
    /// `user@host` of the run's initiator, for the hosts' audit records.
    pub initiator: String,
    /// `--where`: passed to every child; a host where it is false applies
    /// nothing.
    pub where_expr: Option<String>,
    /// This process's own route when it is a gateway (`--route`): its
    /// children's routes start with it.
    pub route: Option<String>,
    /// The run's store ends with the run (`--store-ends-with-run`).
    pub store_ends_with_run: bool,
}

impl ChildFlags {
    /// The route a child called `name` is shown under.
    pub(crate) fn route_of(&self, name: &str) -> String {
        match &self.route {
            Some(r) => format!("{r}/{name}"),
            None => name.to_owned(),
        }
    }
}

impl Shared {
    /// `base`, stretched by how many hosts and gateways this run stops.
    pub(crate) fn grace(&self, base: Duration) -> Duration {
        let n = self.plan.hosts.len() + self.plan.gateways.len();
        base + GRACE_PER_HOST * n as u32
    }
}

/// What every host task shares.
pub struct Shared {
    pub plan: Plan,
    /// Names this run's files on the hosts (`<prefix>/run/<run_id>/`).
    pub run_id: String,
    pub flags: ChildFlags,
    /// Authenticated tunnel connections, with whom each speaks for, handed
    /// to the embedded store (or relayed upstream by a gateway).
    pub tunnels: mpsc::Sender<(Stream, Arc<Speaker>)>,
    /// `--cconns`; `None` for no cap.
    pub setup: Option<Arc<Semaphore>>,
    /// The first wave's copies spread over time.
    pub stagger: super::stagger::Stagger,
    pub ui: Ui,
    /// Set when the run ends because the cluster converged.
    pub converged: Arc<AtomicBool>,
    /// The agent socket gateways get access to (forwarded agent channels
    /// are proxied to it); `None`: no agent forwarding.
    pub agent: Option<std::path::PathBuf>,
    /// Whether the stop is still progressing (see [`StopClock`]).
    pub ended: StopClock,
    /// `--rolling`'s turns (or a gateway's share of them); `None`: every
    /// host applies as soon as it is placed.
    pub rolling: Option<Arc<super::rolling::Rolling>>,
}

/// Told to the run loop as hosts come and go, for the converged rule.
#[derive(Debug)]
pub enum HostEvent {
    Running(String),
    Ended(String),
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
