//! What the operator sees while a remote run goes on and when it ends: one
//! progress line per host on a terminal (plain `[host] stage` lines
//! otherwise), the remote children's output prefixed `[host]`, log events,
//! and the final summary table.
//!
//! [`Ui`] is a cheap, cloneable handle shared by every host task. Each call
//! writes whole lines in one piece under one lock, so output from different
//! hosts never tears, and nothing is queued: a slow terminal slows the
//! callers down instead of growing memory.
//!
//! Hosts' text (their output lines, the reasons they failed) is shown with
//! every control character but tab escaped ([`escape`]): a host must not be
//! able to drive the operator's terminal.
//!
//! Where things go:
//! - stage notices, [`Ui::println`], log events and the summary: stderr;
//! - a remote child's stderr lines: stderr;
//! - a remote child's stdout lines: stdout, so `mgmt run … > out.txt` keeps
//!   what the hosts printed apart from what mgmt says. When stdout is the same
//!   terminal as the bars, they are printed above the bars instead (through
//!   the bars' lock), or they would tear them. With `--events -` or
//!   `--summary json` stdout is theirs, and these lines go to stderr;
//! - `--events`: every stage, host line and final row also goes to
//!   [`events`], which writes JSON lines on a thread of its own;
//! - `--summary json`: the summary as one JSON document on stdout.
//!
//! Printing above the bars redraws them (indicatif's `println` always does),
//! so a flood of remote output costs one redraw per line; the bars are few
//! (see `bars`), which keeps that bounded.
//!
//! This module does not decide stages or results (that is `fleet` and
//! `run`), nor exit codes (`main`), nor set up `tracing` (`main` does, with
//! [`Ui::make_writer`] as the writer). It does not split a byte stream into
//! lines either: callers hand it whole lines.

mod bars;
mod escape;
pub mod events;
pub mod inventory;
mod log;
pub mod route;
mod stage;
mod summary;

pub use stage::Stage;
pub use summary::{human_bytes, HopTimes, RowResult, SummaryRow};

use escape::escape_controls;
use route::{Record, WireRow};
use stage::{percent, STAGES, STAGE_NAMES};

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use indicatif::ProgressDrawTarget;
use tracing_subscriber::fmt::MakeWriter;

/// Which of the remote child's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The handle every host task writes through. Clones share everything.
///
/// ```no_run
/// use std::io::IsTerminal;
/// use mgmt::ui::{Stage, Stream, Ui};
///
/// let ui = Ui::new(std::io::stderr().is_terminal());
/// tracing_subscriber::fmt().with_writer(ui.make_writer()).init();
/// ui.add_host("gw.dc1/web3");
/// ui.stage("gw.dc1/web3", Stage::Copying { sent: 0, total: 9_017_753 });
/// ui.line("gw.dc1/web3", Stream::Stdout, "hello from web3");
/// let table = ui.finish(&[]);
/// ```
#[derive(Clone)]
pub struct Ui {
    inner: Arc<Inner>,
}

struct Inner {
    /// Plain mode's destinations; in terminal mode only for stdout lines
    /// when stdout is not the terminal, and for everything if the draw
    /// target turned out hidden. One lock for both, so two of our writes are
    /// never in flight at once even when stdout and stderr are one file.
    sinks: Mutex<Sinks>,
    /// Per-host state. Lock order: `state`, then indicatif's own lock (bar
    /// updates); `sinks` and printing above the bars are never entered with
    /// `state` held.
    state: Mutex<State>,
    /// `None`: plain mode.
    bars: Option<bars::Bars>,
    /// A gateway's UI: stages, host lines and the summary go to stdout as
    /// route records for the parent (see [`crate::ui::route`]).
    records: bool,
    /// `--events`: set once by `main`, after the configuration is read.
    events: std::sync::OnceLock<events::Events>,
    /// `--summary json`: the summary goes to stdout as one JSON document.
    json_summary: std::sync::atomic::AtomicBool,
}

struct Sinks {
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, Host>,
    /// How many hosts are at each stage, by [`Stage::index`].
    counts: [usize; STAGES],
    /// Set by [`Ui::finish`]: bars are gone, later stages are ignored.
    finished: bool,
    bars: bars::BarState,
}

struct Host {
    stage: Stage,
    /// Plain mode: how far through the copy the last printed notice was
    /// (0 none, 1 started, 2 half, 3 done), so a copy prints at most 3 lines.
    copy_mark: u8,
    /// Terminal mode: this host's bar, if it is shown.
    bar: Option<bars::HostBar>,
}

impl fmt::Debug for Ui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ui")
            .field("terminal", &self.inner.bars.is_some())
            .finish_non_exhaustive()
    }
}

/// Recover from a poisoned lock: the data is output state, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ui {
    /// `tty`: stderr is a terminal, so draw one progress line per host;
    /// otherwise print plain lines. Falls back to plain lines when the
    /// terminal can't draw bars (`TERM=dumb`).
    pub fn new(tty: bool) -> Ui {
        Ui::new_with_stdout(tty, true)
    }

    /// [`Ui::new`], but with `stdout_free` false (stdout carries `--events`
    /// or `--summary json`) the hosts' stdout lines go to stderr instead.
    pub fn new_with_stdout(tty: bool, stdout_free: bool) -> Ui {
        let out: Box<dyn Write + Send> = match stdout_free {
            true => Box::new(io::stdout()),
            false => Box::new(io::stderr()),
        };
        let sinks = Sinks {
            out,
            err: Box::new(io::stderr()),
        };
        if !tty {
            return Ui::build(sinks, None);
        }
        let target = ProgressDrawTarget::stderr_with_hz(bars::REFRESH_HZ);
        let above = !stdout_free || io::stdout().is_terminal();
        let bars = bars::Bars::new(target, above);
        if bars.is_hidden() {
            return Ui::build(sinks, None);
        }
        bars.hide_while_prompting();
        Ui::build(sinks, Some(bars))
    }

    /// Plain mode writing to `out` (remote stdout lines) and `err`
    /// (everything else), e.g. to capture output in tests.
    pub fn with_writers(out: Box<dyn Write + Send>, err: Box<dyn Write + Send>) -> Ui {
        Ui::build(Sinks { out, err }, None)
    }

    /// Terminal mode drawing to `target`, remote stdout lines printed above
    /// the bars as when stdout is the terminal. `out` and `err` are used only
    /// if `target` is hidden, so that no line is lost.
    pub fn with_draw_target(
        target: ProgressDrawTarget,
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
    ) -> Ui {
        Ui::build(Sinks { out, err }, Some(bars::Bars::new(target, true)))
    }

    /// A gateway's UI (`mgmt run --remote` at depth 1 and more): no bars
    /// and no table, but route records on `out` for the parent to show;
    /// logs still go to `err`.
    pub fn records(out: Box<dyn Write + Send>, err: Box<dyn Write + Send>) -> Ui {
        Ui::build_as(Sinks { out, err }, None, true)
    }

    fn build(sinks: Sinks, bars: Option<bars::Bars>) -> Ui {
        Ui::build_as(sinks, bars, false)
    }

    fn build_as(sinks: Sinks, bars: Option<bars::Bars>, records: bool) -> Ui {
        Ui {
            inner: Arc::new(Inner {
                sinks: Mutex::new(sinks),
                state: Mutex::new(State::default()),
                bars,
                records,
                events: std::sync::OnceLock::new(),
                json_summary: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// A gateway passes on a host key it learned under `accept-new`, so
    /// that it reaches the initiator's known_hosts; elsewhere nothing.
    pub fn known_host(&self, host: &str, line: &str) {
        if self.inner.records {
            self.record(&Record::KnownHost {
                host: host.into(),
                line: line.into(),
            });
        }
    }

    /// Send every event of the run to `events` from now on (`--events`).
    /// A second call is ignored.
    pub fn attach_events(&self, events: events::Events) {
        let _ = self.inner.events.set(events);
    }

    /// `--summary json`: [`Ui::finish`] writes the summary as one JSON
    /// document on stdout instead of the table on stderr.
    pub fn summary_json(&self, on: bool) {
        self.inner
            .json_summary
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The run began: the `started` event, if events are on.
    pub fn run_started(&self, info: &events::RunInfo) {
        if let Some(ev) = self.inner.events.get() {
            ev.started(info);
        }
    }

    /// The run is over with `exit_code`: the `ended` event, then the events
    /// writer is flushed and closed. Nothing without `--events`.
    pub fn run_ended(&self, rows: &[SummaryRow], exit_code: u8) {
        if let Some(ev) = self.inner.events.get() {
            ev.ended(rows, exit_code);
        }
    }

    /// A resource of the host under `route` was applied, changed or failed
    /// (`what`): a gateway passes it up, the initiator makes it an event.
    pub fn resource(&self, route: &str, kind: &str, name: &str, what: &str, reason: &str) {
        if self.inner.records {
            self.record(&Record::Resource {
                route: route.into(),
                kind: kind.into(),
                name: name.into(),
                what: what.into(),
                reason: reason.into(),
            });
        } else if let Some(ev) = self.inner.events.get() {
            ev.resource(route, kind, name, what, reason);
        }
    }

    /// A remote child reports one of its own resources' outcomes to its
    /// parent: a route record on stdout, with no route (the parent knows
    /// whose stdout it reads).
    pub fn report_resource(&self, kind: &str, name: &str, what: &str, reason: &str) {
        self.record(&Record::Resource {
            route: String::new(),
            kind: kind.into(),
            name: name.into(),
            what: what.into(),
            reason: reason.into(),
        });
    }

    /// Whether this is a gateway's UI that writes route records.
    pub fn writes_records(&self) -> bool {
        self.inner.records
    }

    /// A host's child started (`running`) or the host ended. Only a
    /// gateway's UI says anything: its parent needs it for the converged
    /// rule across the whole tree.
    pub fn host_event(&self, host: &str, route: &str, running: bool) {
        if self.inner.records {
            self.record(&Record::Host {
                host: host.into(),
                route: route.into(),
                running,
            });
        }
    }

    fn record(&self, r: &Record) {
        self.emit(Stream::Stdout, &r.encode());
    }

    /// Register a host (display name, e.g. `web3` or `gw.dc1/web3`) as
    /// queued. Adding it again does nothing.
    pub fn add_host(&self, host: &str) {
        let mut state = lock(&self.inner.state);
        self.add_locked(&mut state, host);
    }

    fn add_locked(&self, state: &mut State, name: &str) {
        if state.finished || state.hosts.contains_key(name) {
            return;
        }
        let host = Host {
            stage: Stage::Queued,
            copy_mark: 0,
            bar: None,
        };
        state.hosts.insert(name.to_string(), host);
        state.counts[Stage::Queued.index()] += 1;
        if let Some(bars) = &self.inner.bars {
            let State {
                hosts,
                counts,
                bars: bar_state,
                ..
            } = state;
            bars.add(bar_state, hosts, counts, name);
        }
    }

    /// Move `host` to `stage` (adding it if unknown). On a terminal this
    /// updates its bar; in plain mode it prints `[host] stage` on a real
    /// change only: not `queued`, not a repeat, and a copy only when it
    /// starts, passes half way and completes.
    ///
    /// A failed host stays failed: later stages other than another failure
    /// are ignored, so teardown doesn't hide the reason. The summary has the
    /// final word.
    pub fn stage(&self, host: &str, stage: Stage) {
        if self.inner.records {
            return self.stage_record(host, stage);
        }
        // Outside the state lock: a full events queue may make this wait.
        if let Some(ev) = self.inner.events.get() {
            if !lock(&self.inner.state).finished {
                ev.stage(host, &stage);
            }
        }
        let notice = {
            let mut state = lock(&self.inner.state);
            self.stage_locked(&mut state, host, stage)
        };
        if let Some(text) = notice {
            self.emit(Stream::Stderr, &format!("[{host}] {text}"));
        }
    }

    /// A gateway's stage change as a record, on a real change only (a copy
    /// at most once per percent).
    fn stage_record(&self, host: &str, stage: Stage) {
        let changed = {
            let mut state = lock(&self.inner.state);
            let seen = state.hosts.entry(host.to_string()).or_insert(Host {
                stage: Stage::Done,
                copy_mark: 0,
                bar: None,
            });
            let same = match (&seen.stage, &stage) {
                (Stage::Copying { sent: a, total }, Stage::Copying { sent: b, .. }) => {
                    percent(*a, *total) == percent(*b, *total)
                }
                (a, b) => a == b,
            };
            let failed = matches!(seen.stage, Stage::Failed(_));
            let keep = !same && (!failed || matches!(stage, Stage::Failed(_)));
            if keep {
                seen.stage = stage.clone();
            }
            keep
        };
        if changed {
            self.record(&Record::Stage {
                route: host.into(),
                stage,
            });
        }
    }

    /// Update the state; return the line to print, if any.
    fn stage_locked(&self, state: &mut State, name: &str, stage: Stage) -> Option<String> {
        if state.finished {
            return None;
        }
        self.add_locked(state, name);
        let State {
            hosts,
            counts,
            bars: bar_state,
            ..
        } = state;
        let total = hosts.len();
        let host = hosts.get_mut(name)?;
        if matches!(host.stage, Stage::Failed(_)) && !matches!(stage, Stage::Failed(_)) {
            return None;
        }
        let notice = match self.inner.bars {
            None => plain_notice(host, &stage),
            Some(_) => None,
        };
        let moved = host.stage.index() != stage.index();
        counts[host.stage.index()] -= 1;
        counts[stage.index()] += 1;
        host.stage = stage;
        match &self.inner.bars {
            Some(bars) => bars.stage(bar_state, counts, total, moved, name, host),
            None => notice,
        }
    }

    /// Print one line (or several, if `text` has newlines) of a remote
    /// child's output as `[host] text`, in one piece. A trailing newline is
    /// dropped, and of a line with carriage returns only what a terminal
    /// would show (the part after the last `\r`) is kept, because a bare
    /// `\r` would tear the bars.
    pub fn line(&self, host: &str, stream: Stream, text: &str) {
        if self.inner.records {
            return self.record(&Record::Line {
                route: host.into(),
                stderr: stream == Stream::Stderr,
                text: text.into(),
            });
        }
        if let Some(ev) = self.inner.events.get() {
            ev.output(host, stream, text);
        }
        self.emit(stream, &prefixed(host, text));
    }

    /// Print any other message to stderr, above the bars.
    pub fn println(&self, text: &str) {
        self.emit(Stream::Stderr, text);
    }

    /// A `tracing` writer that prints each log event whole, above the bars.
    /// Use as `tracing_subscriber::fmt().with_writer(ui.make_writer())`.
    pub fn make_writer(&self) -> impl for<'a> MakeWriter<'a> + Send + Sync + 'static {
        log::MakeLogWriter { ui: self.clone() }
    }

    /// Print `--trace`'s per-hop timings after the summary.
    pub fn trace(&self, rows: &[SummaryRow]) {
        if !self.inner.records {
            self.emit(Stream::Stderr, summary::format_trace(rows).trim_end());
        }
    }

    /// Clear the bars and ignore later stage changes, printing nothing
    /// (`mgmt facts` prints its own table).
    pub fn close(&self) {
        let mut state = lock(&self.inner.state);
        state.finished = true;
        if let Some(bars) = &self.inner.bars {
            let State {
                hosts,
                bars: bar_state,
                ..
            } = &mut *state;
            bars.clear(bar_state, hosts);
        }
    }

    /// Clear the bars, print the summary table to stderr and return it.
    /// Later stage changes are ignored; lines still print.
    pub fn finish(&self, rows: &[SummaryRow]) -> String {
        if self.inner.records {
            lock(&self.inner.state).finished = true;
            for row in rows {
                self.record(&Record::Report(WireRow::from_row(row)));
            }
            return summary::format_summary(rows);
        }
        self.close();
        if let Some(ev) = self.inner.events.get() {
            ev.done(rows);
        }
        let text = summary::format_summary(rows);
        if self
            .inner
            .json_summary
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let doc = summary::format_json(rows);
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{doc}").and_then(|()| out.flush());
        } else {
            self.emit(Stream::Stderr, text.trim_end_matches('\n'));
        }
        text
    }

    /// Write `text` plus a newline in one piece, above the bars or to a sink.
    /// Write errors are dropped: there is nowhere left to report them
    /// (e.g. `mgmt … | head` closed stdout), and the run must go on.
    fn emit(&self, stream: Stream, text: &str) {
        if let Some(bars) = &self.inner.bars {
            if bars.prints_above(stream) {
                bars.println(text);
                return;
            }
        }
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        let mut sinks = lock(&self.inner.sinks);
        let sink = match stream {
            Stream::Stdout => &mut sinks.out,
            Stream::Stderr => &mut sinks.err,
        };
        let _ = sink.write_all(&buf).and_then(|()| sink.flush());
    }
}

/// Plain mode: the notice for moving `host` to `next`, if it is worth a line.
fn plain_notice(host: &mut Host, next: &Stage) -> Option<String> {
    match next {
        Stage::Queued => None,
        Stage::Copying { sent, total } => {
            if !matches!(host.stage, Stage::Copying { .. }) {
                host.copy_mark = 0;
            }
            let pct = percent(*sent, *total);
            let mark = match pct {
                0..50 => 1,
                50..100 => 2,
                _ => 3,
            };
            if mark <= host.copy_mark {
                return None;
            }
            host.copy_mark = mark;
            Some(format!("copying {pct}% of {}", human_bytes(*total)))
        }
        _ if *next == host.stage => None,
        _ => Some(next.to_string()),
    }
}

/// `[host] line` for each line of `text`.
fn prefixed(host: &str, text: &str) -> String {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut out = String::with_capacity(text.len() + host.len() + 3);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.rsplit('\r').next().unwrap_or(line);
        out.push('[');
        out.push_str(host);
        out.push(']');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(&escape_controls(line));
        }
    }
    out
}

#[cfg(test)]
mod tests;
