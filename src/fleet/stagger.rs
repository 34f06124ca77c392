//! Spreading the first wave of copies over time, so that later waves do
//! not arrive all at once (#17).
//!
//! When a run has more hosts than `--cconns` slots, the first `--cconns`
//! hosts connect together, and their copies share the uplink fairly and
//! so end together. Every slot then goes to its next host at the same
//! moment: a whole wave connects, authenticates and opens SFTP (about
//! twenty round trips) and the hosts just copied decompress and check
//! their binary, all while the uplink carries nothing. The same happens
//! at every wave, and the waves never drift apart, because copies that
//! run side by side progress at the same rate.
//!
//! So the first wave's copies start spread out instead: the `k`-th of the
//! first `--cconns` hosts that find no cached binary waits `k / cconns` of
//! a span before its copy begins, keeping its slot. The span is four times
//! the shortest set-up so far (connect, authenticate, the warm start's
//! miss) of the hosts that missed: on a 50 ms link about the twenty round
//! trips a slot's next host needs before its first byte, twice over, since
//! the copies still running when others end speed up and so narrow the
//! spread. The shortest, so that one slow host (a retried connect, a
//! password typed) does not make others wait for its sake. The uplink
//! stays busy meanwhile (the hosts already copying take the share), and
//! once the copies end spread out, their successors start spread out too.
//! A run with no more hosts than slots has a single wave and waits for
//! nothing; a warm host never waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How many times the set-up so far the span is.
const SPAN_FACTOR: u32 = 4;

/// The first wave's waits; shared by a run's hosts.
#[derive(Debug)]
pub struct Stagger {
    /// `--cconns` when the run has more hosts than that; 0: no waits.
    wave: usize,
    /// Copies of the first wave counted so far.
    started: AtomicUsize,
    /// The shortest set-up so far, in microseconds.
    shortest: AtomicU64,
}

impl Stagger {
    /// For a run of `hosts` hosts with `cconns` slots (0: no cap).
    pub fn new(hosts: usize, cconns: usize) -> Stagger {
        let wave = if cconns > 0 && hosts > cconns {
            cconns
        } else {
            0
        };
        Stagger {
            wave,
            started: AtomicUsize::new(0),
            shortest: AtomicU64::new(u64::MAX),
        }
    }

    /// How long a copy about to begin waits, its host's set-up so far
    /// having taken `so_far`: counts the copy.
    pub fn wait(&self, so_far: Duration) -> Duration {
        if self.wave == 0 {
            return Duration::ZERO;
        }
        let k = self.started.fetch_add(1, Ordering::Relaxed);
        if k >= self.wave {
            return Duration::ZERO;
        }
        let micros = u64::try_from(so_far.as_micros()).unwrap_or(u64::MAX);
        let shortest = self
            .shortest
            .fetch_min(micros, Ordering::Relaxed)
            .min(micros);
        let span = Duration::from_micros(shortest).saturating_mul(SPAN_FACTOR);
        span.mul_f64(k as f64 / self.wave as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_wave_spreads_over_four_set_ups_and_later_copies_wait_not() {
        let s = Stagger::new(10, 4);
        let waits: Vec<_> = (0..6).map(|_| s.wait(100 * MS)).collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                100 * MS,
                200 * MS,
                300 * MS,
                Duration::ZERO,
                Duration::ZERO
            ]
        );
    }

    #[test]
    fn a_slow_host_waits_by_the_shortest_set_up_not_its_own() {
        let s = Stagger::new(10, 4);
        assert_eq!(s.wait(100 * MS), Duration::ZERO);
        // A retried connect took ten seconds: the span stays 400 ms.
        assert_eq!(s.wait(10_000 * MS), 100 * MS);
        assert_eq!(s.wait(50 * MS), 100 * MS);
    }

    #[test]
    fn one_wave_or_no_cap_waits_for_nothing() {
        for s in [Stagger::new(4, 4), Stagger::new(3, 8), Stagger::new(100, 0)] {
            assert!((0..5).all(|_| s.wait(100 * MS).is_zero()), "{s:?}");
        }
    }
}
