//! Terminal mode: the indicatif bars, one per host, and the many-hosts view.
//!
//! Up to [`COMPACT_AT`] hosts, every host has a bar for the whole run, so a
//! failure stays on screen next to its host. Past that, a bar per host costs
//! more than it tells: a thousand lines don't fit on a screen (indicatif
//! would cut them at its height anyway) and redrawing them all on every
//! update burns CPU. So the view switches, for good, to one summary bar
//! (`1000 hosts: 12 connecting, 3 copying, 950 running, 2 failed`) plus bars
//! for at most [`MAX_VISIBLE`] hosts in set-up (connecting to starting, and
//! stopping), the ones worth watching. A failure is then printed as a
//! `[host] failed: reason` line above the bars, so it stays in the
//! scrollback.
//!
//! Drawing is rate-limited to [`REFRESH_HZ`] by indicatif's draw target.
//! Spinners tick (one thread each, indicatif's steady tick) only on hosts in
//! set-up, at most [`COMPACT_AT`] or [`MAX_VISIBLE`] of them, and on the
//! summary bar; the ticks also redraw what the rate limiter dropped. Bars
//! without a ticker force a draw when their stage changes, so the screen
//! never keeps showing a stale stage.
//! The per-host state lives in [`super::State`], under the `Ui`'s lock.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Host, Stage, Stream, STAGES, STAGE_NAMES};

/// Most redraws per second.
pub(super) const REFRESH_HZ: u8 = 10;
/// More hosts than this: the many-hosts view (see the module doc).
const COMPACT_AT: usize = 40;
/// At most this many host bars in the many-hosts view.
pub(super) const MAX_VISIBLE: usize = 30;
/// Longer host names are cut (from the front: the end names the host).
const MAX_PREFIX: usize = 32;
const TICK: Duration = Duration::from_millis(120);

const ACTIVE: &str = "{prefix} {spinner} {wide_msg}";
const IDLE: &str = "{prefix}   {wide_msg}";
const COPYING: &str =
    "{prefix} {spinner} copying {bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes}";
const SUMMARY: &str = "{spinner} {wide_msg}";

/// The drawing side, fixed at construction.
pub(super) struct Bars {
    multi: MultiProgress,
    /// The target draws nothing (not a terminal, `TERM=dumb`): print lines
    /// to the `Ui`'s sinks instead, since `MultiProgress::println` would drop
    /// them.
    hidden: bool,
    /// stdout is the terminal the bars are on: remote stdout lines go above
    /// the bars rather than straight to stdout.
    stdout_above: bool,
    styles: [ProgressStyle; 3],
    summary_style: ProgressStyle,
}

/// Terminal-mode state, kept in the `Ui`'s [`super::State`].
#[derive(Default)]
pub(super) struct BarState {
    /// The many-hosts view is on (never turned off).
    pub(super) compact: bool,
    /// The many-hosts view's top bar.
    pub(super) summary: Option<ProgressBar>,
    /// Host bars currently shown.
    pub(super) visible: usize,
    /// Width host names are right-aligned to: the longest so far, capped.
    pub(super) prefix_width: usize,
}

/// One host's bar and which template it currently uses.
pub(super) struct HostBar {
    bar: ProgressBar,
    look: Look,
}

/// Index into [`Bars::styles`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Spinner and stage word: set-up stages.
    Active = 0,
    /// Stage word only: queued, running, converged, done, failed.
    Idle = 1,
    /// Spinner, byte bar and percent.
    Copying = 2,
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants (a test checks them); a bad one would only
    // cost the decoration.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Bars {
    pub(super) fn new(target: ProgressDrawTarget, stdout_above: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(target);
        Bars {
            hidden: multi.is_hidden(),
            multi,
            stdout_above,
            styles: [style(ACTIVE), style(IDLE), style(COPYING)],
            summary_style: style(SUMMARY),
        }
    }

    pub(super) fn is_hidden(&self) -> bool {
        self.hidden
    }

    /// Hides the bars on stderr while a prompt is open ([`crate::term`]),
    /// and draws them again when it closes.
    pub(super) fn hide_while_prompting(&self) {
        let multi = self.multi.clone();
        crate::term::on_prompt(move |open| {
            if open {
                // Wipe what is drawn, then draw nowhere until it closes.
                let _ = multi.clear();
                multi.set_draw_target(ProgressDrawTarget::hidden());
            } else {
                multi.set_draw_target(ProgressDrawTarget::stderr_with_hz(REFRESH_HZ));
            }
        });
    }

    /// Whether a line for `stream` is printed above the bars (else: sinks).
    pub(super) fn prints_above(&self, stream: Stream) -> bool {
        !self.hidden && (stream == Stream::Stderr || self.stdout_above)
    }

    /// Print `text` (one or more lines) above the bars, in one draw.
    pub(super) fn println(&self, text: &str) {
        // An error means stderr is gone; nothing better to do than go on.
        let _ = self.multi.println(text);
    }

    /// `name` was just added, queued.
    pub(super) fn add(
        &self,
        st: &mut BarState,
        hosts: &mut HashMap<String, Host>,
        counts: &[usize; STAGES],
        name: &str,
    ) {
        let width = name.chars().count().min(MAX_PREFIX);
        if width > st.prefix_width {
            st.prefix_width = width;
            for (other, host) in hosts.iter() {
                if let Some(hb) = &host.bar {
                    hb.bar.set_prefix(prefix(other, width));
                }
            }
        }
        if !st.compact && hosts.len() > COMPACT_AT {
            self.enter_compact(st, hosts);
        }
        if st.compact {
            self.update_summary(st, counts, hosts.len());
        } else if let Some(host) = hosts.get_mut(name) {
            host.bar = Some(self.create(st, name, &host.stage));
        }
    }

    /// `host` just moved to `host.stage`; `moved`: to another kind of stage.
    /// Returns a line to print above the bars, if any.
    pub(super) fn stage(
        &self,
        st: &mut BarState,
        counts: &[usize; STAGES],
        total: usize,
        moved: bool,
        name: &str,
        host: &mut Host,
    ) -> Option<String> {
        if !st.compact {
            if let Some(hb) = &mut host.bar {
                self.show(hb, &host.stage);
            }
            return None;
        }
        if moved {
            self.update_summary(st, counts, total);
        }
        let want = host.stage.is_setup();
        if !want {
            if let Some(hb) = host.bar.take() {
                self.remove(st, hb);
            }
        } else if host.bar.is_none() && st.visible < MAX_VISIBLE {
            host.bar = Some(self.create(st, name, &host.stage));
        }
        if let Some(hb) = &mut host.bar {
            self.show(hb, &host.stage);
        }
        match &host.stage {
            Stage::Failed(_) if moved => Some(host.stage.to_string()),
            _ => None,
        }
    }

    /// Remove every bar and clear them from the screen.
    pub(super) fn clear(&self, st: &mut BarState, hosts: &mut HashMap<String, Host>) {
        for host in hosts.values_mut() {
            if let Some(hb) = host.bar.take() {
                self.remove(st, hb);
            }
        }
        if let Some(summary) = st.summary.take() {
            summary.disable_steady_tick();
            self.multi.remove(&summary);
        }
        let _ = self.multi.clear();
    }

    fn enter_compact(&self, st: &mut BarState, hosts: &mut HashMap<String, Host>) {
        st.compact = true;
        let mut kept = 0;
        for host in hosts.values_mut() {
            let keep = host.stage.is_setup() && kept < MAX_VISIBLE;
            match host.bar.take() {
                Some(hb) if keep => {
                    kept += 1;
                    host.bar = Some(hb);
                }
                Some(hb) => self.remove(st, hb),
                None => {}
            }
        }
        let summary = hidden_bar().with_style(self.summary_style.clone());
        let summary = self.multi.insert(0, summary);
        // Counts change with every host's stage; the ticker redraws what
        // the rate limiter dropped.
        summary.enable_steady_tick(TICK);
        st.summary = Some(summary);
    }

    fn update_summary(&self, st: &BarState, counts: &[usize; STAGES], total: usize) {
        if let Some(summary) = &st.summary {
            summary.set_message(summary_text(counts, total));
        }
    }

    fn create(&self, st: &mut BarState, name: &str, stage: &Stage) -> HostBar {
        // Dressed before the `MultiProgress` adopts it, so that its first
        // draw is already in the right style.
        let bar = hidden_bar().with_prefix(prefix(name, st.prefix_width));
        let look = look(stage);
        let mut hb = HostBar { bar, look };
        self.set_look(&mut hb, look);
        self.show(&mut hb, stage);
        hb.bar = self.multi.add(hb.bar);
        // A bar is on screen only once it has drawn itself.
        hb.bar.force_draw();
        st.visible += 1;
        hb
    }

    fn remove(&self, st: &mut BarState, hb: HostBar) {
        hb.bar.disable_steady_tick();
        self.multi.remove(&hb.bar);
        st.visible = st.visible.saturating_sub(1);
    }

    fn show(&self, hb: &mut HostBar, stage: &Stage) {
        let look = look(stage);
        let mut changed = look != hb.look;
        if changed {
            self.set_look(hb, look);
        }
        if let Stage::Copying { sent, total } = stage {
            if hb.bar.length() != Some(*total) {
                hb.bar.set_length(*total);
            }
            hb.bar.set_position((*sent).min(*total));
            return;
        }
        let text = stage.to_string();
        if hb.bar.message() != text {
            hb.bar.set_message(text);
            changed = true;
        }
        // The rate limiter may have dropped that draw, and with no ticker to
        // catch up an idle bar would keep showing its previous stage. Idle
        // stages are few per host.
        if changed && look == Look::Idle {
            hb.bar.force_draw();
        }
    }

    fn set_look(&self, hb: &mut HostBar, look: Look) {
        hb.bar.set_style(self.styles[look as usize].clone());
        match look {
            Look::Idle => hb.bar.disable_steady_tick(),
            Look::Active | Look::Copying => hb.bar.enable_steady_tick(TICK),
        }
        hb.look = look;
    }
}

fn look(stage: &Stage) -> Look {
    match stage {
        Stage::Copying { .. } => Look::Copying,
        s if s.is_setup() => Look::Active,
        _ => Look::Idle,
    }
}

/// A bar that draws nowhere until a `MultiProgress` adopts it.
fn hidden_bar() -> ProgressBar {
    ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
}

/// `name` right-aligned to `width`, cut from the front if too long.
fn prefix(name: &str, width: usize) -> String {
    let len = name.chars().count();
    let name = if len > MAX_PREFIX {
        let tail: String = name.chars().skip(len - (MAX_PREFIX - 1)).collect();
        format!("…{tail}")
    } else {
        name.to_string()
    };
    format!("{name:>width$}")
}

/// `1000 hosts: 12 connecting, 950 running, 2 failed`.
fn summary_text(counts: &[usize; STAGES], total: usize) -> String {
    let parts: Vec<String> = counts
        .iter()
        .zip(STAGE_NAMES)
        .filter(|(n, _)| **n > 0)
        .map(|(n, name)| format!("{n} {name}"))
        .collect();
    format!("{total} hosts: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [ACTIVE, IDLE, COPYING, SUMMARY] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn prefixes_align_and_cut_from_the_front() {
        assert_eq!(prefix("web3", 8), "    web3");
        let long = format!("gw.dc1/{}", "a".repeat(40));
        let p = prefix(&long, MAX_PREFIX);
        assert_eq!(p.chars().count(), MAX_PREFIX);
        assert!(p.starts_with('…') && p.ends_with("aaa"));
    }

    #[test]
    fn summary_lists_nonzero_stages_in_order() {
        let mut counts = [0; STAGES];
        counts[Stage::Running.index()] = 950;
        counts[Stage::Connecting.index()] = 12;
        counts[Stage::Waiting.index()] = 3;
        counts[Stage::Failed(String::new()).index()] = 2;
        assert_eq!(
            summary_text(&counts, 967),
            "967 hosts: 12 connecting, 3 waiting, 950 running, 2 failed"
        );
    }
}
