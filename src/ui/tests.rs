//! Tests for the `Ui` handle: plain-mode output, whole lines under
//! concurrency, the tracing writer, and terminal mode on fake targets.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use indicatif::{ProgressDrawTarget, TermLike};

use super::*;

/// A shared in-memory writer. With `chunk > 0` each `write` takes at most
/// that many bytes and yields, so unlocked writers would interleave.
#[derive(Clone, Default)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    chunk: usize,
}

impl Capture {
    fn chunked(chunk: usize) -> Capture {
        Capture {
            chunk,
            ..Capture::default()
        }
    }

    fn text(&self) -> String {
        String::from_utf8(self.buf.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Capture {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match self.chunk {
            0 => data.len(),
            c => data.len().min(c),
        };
        self.buf.lock().unwrap().extend_from_slice(&data[..n]);
        if self.chunk > 0 {
            thread::yield_now();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn plain() -> (Ui, Capture, Capture) {
    let (out, err) = (Capture::default(), Capture::default());
    let ui = Ui::with_writers(Box::new(out.clone()), Box::new(err.clone()));
    (ui, out, err)
}

/// A terminal that records everything written to it, wrapping at its width
/// as a real one does (indicatif pads each bar line to the width).
#[derive(Debug, Clone, Default)]
struct FakeTerm(Arc<Mutex<(String, usize)>>);

const FAKE_WIDTH: u16 = 100;

impl FakeTerm {
    /// The transcript, trailing blanks trimmed from each line.
    fn text(&self) -> String {
        let state = self.0.lock().unwrap();
        state
            .0
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect()
    }
}

impl TermLike for FakeTerm {
    fn width(&self) -> u16 {
        FAKE_WIDTH
    }
    fn height(&self) -> u16 {
        60
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)?;
        let mut state = self.0.lock().unwrap();
        state.0.push('\n');
        state.1 = 0;
        Ok(())
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        let mut state = self.0.lock().unwrap();
        for c in s.chars() {
            state.0.push(c);
            state.1 += 1;
            if state.1 == usize::from(FAKE_WIDTH) {
                state.0.push('\n');
                state.1 = 0;
            }
        }
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fn on_fake_term() -> (Ui, FakeTerm, Capture) {
    let term = FakeTerm::default();
    let sink = Capture::default();
    let target = ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 20);
    let ui = Ui::with_draw_target(target, Box::new(sink.clone()), Box::new(sink.clone()));
    (ui, term, sink)
}

fn row(host: &str, result: RowResult) -> SummaryRow {
    SummaryRow {
        host: host.into(),
        route: "direct".into(),
        result,
        bytes_sent: 1024,
        cache_hit: Some(false),
        elapsed: Duration::from_millis(1500),
        hop: Default::default(),
        wire_sent: 0,
    }
}

#[test]
fn ui_is_a_shareable_handle() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Ui>();
}

#[test]
fn plain_lines_go_to_their_stream() {
    let (ui, out, err) = plain();
    ui.line("web1", Stream::Stdout, "hello\n");
    ui.line("gw.dc1/web3", Stream::Stderr, "oops");
    ui.println("mgmt: note");
    assert_eq!(out.text(), "[web1] hello\n");
    assert_eq!(err.text(), "[gw.dc1/web3] oops\nmgmt: note\n");
}

#[test]
fn lines_are_split_and_carriage_returns_resolved() {
    let (ui, out, _) = plain();
    ui.line("h", Stream::Stdout, "a\nb\r\n50%\r100%\n");
    ui.line("h", Stream::Stdout, "");
    assert_eq!(out.text(), "[h] a\n[h] b\n[h] 100%\n[h]\n");
}

#[test]
fn plain_stages_print_real_transitions_only() {
    let (ui, out, err) = plain();
    ui.add_host("web1");
    ui.stage("web1", Stage::Queued);
    ui.stage("web1", Stage::Connecting);
    ui.stage("web1", Stage::Connecting);
    ui.stage("web1", Stage::Authenticating);
    let total = 9_017_753;
    for i in 0..=1000 {
        let sent = total * i / 1000;
        ui.stage("web1", Stage::Copying { sent, total });
    }
    ui.stage("web1", Stage::Starting);
    ui.stage("web1", Stage::Running);
    ui.stage("web1", Stage::Converged);
    assert_eq!(out.text(), "");
    assert_eq!(
        err.text(),
        "[web1] connecting\n[web1] authenticating\n\
         [web1] copying 0% of 8.6 MiB\n[web1] copying 50% of 8.6 MiB\n\
         [web1] copying 100% of 8.6 MiB\n\
         [web1] starting\n[web1] running\n[web1] converged\n"
    );
}

#[test]
fn a_second_copy_prints_again_and_cached_is_a_stage() {
    let (ui, _, err) = plain();
    ui.stage("a", Stage::Copying { sent: 0, total: 0 });
    ui.stage("a", Stage::Cached);
    ui.stage(
        "a",
        Stage::Copying {
            sent: 60,
            total: 100,
        },
    );
    assert_eq!(
        err.text(),
        "[a] copying 100% of 0 B\n[a] cached\n[a] copying 60% of 100 B\n"
    );
}

#[test]
fn failure_sticks_until_another_failure() {
    let (ui, _, err) = plain();
    ui.stage("db", Stage::Connecting);
    ui.stage("db", Stage::Failed("connection refused".into()));
    ui.stage("db", Stage::Stopping);
    ui.stage("db", Stage::Done);
    ui.stage("db", Stage::Failed("connection refused".into()));
    ui.stage("db", Stage::Failed("teardown failed".into()));
    assert_eq!(
        err.text(),
        "[db] connecting\n[db] failed: connection refused\n[db] failed: teardown failed\n"
    );
}

#[test]
fn stage_words() {
    assert_eq!(
        Stage::Copying {
            sent: 42,
            total: 100
        }
        .to_string(),
        "copying 42%"
    );
    assert_eq!(
        Stage::Copying { sent: 5, total: 0 }.to_string(),
        "copying 100%"
    );
    assert_eq!(Stage::Failed("x".into()).to_string(), "failed: x");
    assert_eq!(Stage::Authenticating.to_string(), "authenticating");
    assert_eq!(Stage::Done.to_string(), "done");
}

/// Checks `text` holds exactly `threads × per` lines `[tT] line N …` each
/// seen once, none torn.
fn assert_whole_lines(text: &str, threads: usize, per: usize) {
    let mut seen = HashSet::new();
    for line in text.lines() {
        let (host, rest) = line
            .split_once("] ")
            .unwrap_or_else(|| panic!("torn: {line:?}"));
        let t: usize = host
            .strip_prefix("[t")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("torn: {line:?}"));
        let n: usize = rest
            .strip_prefix("line ")
            .and_then(|r| r.strip_suffix(" of a reasonably long output line"))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("torn: {line:?}"));
        assert!(seen.insert((t, n)), "twice: {line:?}");
    }
    assert_eq!(seen.len(), threads * per);
}

#[test]
fn concurrent_lines_never_tear() {
    // stdout and stderr are one file, written 3 bytes at a time.
    let sink = Capture::chunked(3);
    let ui = Ui::with_writers(Box::new(sink.clone()), Box::new(sink.clone()));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let ui = ui.clone();
            thread::spawn(move || {
                for n in 0..1000 {
                    let stream = if n % 2 == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    ui.line(
                        &format!("t{t}"),
                        stream,
                        &format!("line {n} of a reasonably long output line"),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_whole_lines(&sink.text(), 8, 1000);
}

fn log_subscriber(ui: &Ui) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_writer(ui.make_writer())
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_level(false)
        .finish()
}

#[test]
fn log_events_go_to_stderr_whole() {
    let (ui, out, err) = plain();
    tracing::subscriber::with_default(log_subscriber(&ui), || {
        tracing::info!("first line\nsecond line");
        tracing::info!(host = "web1", "connected");
    });
    assert_eq!(out.text(), "");
    assert_eq!(
        err.text(),
        "first line\nsecond line\nconnected host=\"web1\"\n"
    );
}

#[test]
fn concurrent_log_events_keep_their_lines_together() {
    let sink = Capture::chunked(5);
    let ui = Ui::with_writers(Box::new(sink.clone()), Box::new(sink.clone()));
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let ui = ui.clone();
            thread::spawn(move || {
                tracing::subscriber::with_default(log_subscriber(&ui), || {
                    for n in 0..200 {
                        if t % 2 == 0 {
                            tracing::warn!("event {t}-{n} begins\nevent {t}-{n} ends");
                        } else {
                            ui.line(&format!("t{t}"), Stream::Stderr, &format!("plain {n}"));
                        }
                    }
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let text = sink.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3 * 200 * 2 + 3 * 200);
    for (i, line) in lines.iter().enumerate() {
        if let Some(id) = line
            .strip_prefix("event ")
            .and_then(|l| l.strip_suffix(" begins"))
        {
            assert_eq!(lines.get(i + 1), Some(&format!("event {id} ends").as_str()));
        }
    }
}

#[test]
fn a_huge_log_event_is_written_in_bounded_pieces() {
    let (ui, _, err) = plain();
    let big = "y".repeat(100 * 1024);
    tracing::subscriber::with_default(log_subscriber(&ui), || {
        tracing::info!("{big}\nafter");
    });
    let text = err.text();
    assert_eq!(text.matches('y').count(), big.len());
    assert!(text.ends_with("after\n"), "{}", &text[text.len() - 20..]);
}

#[test]
fn finish_prints_and_returns_the_summary() {
    let (ui, _, err) = plain();
    let rows = [
        row("web1", RowResult::Converged),
        row("web2", RowResult::Failed("boom".into())),
    ];
    let text = ui.finish(&rows);
    assert!(text.contains("1 converged, 1 failed, 0 stopped (2 hosts)"));
    assert!(text.ends_with("web2: boom\n"));
    assert_eq!(err.text(), text);
    ui.stage("web1", Stage::Running);
    assert_eq!(err.text(), text, "stages after finish are ignored");
}

/// Drive every stage on `hosts` hosts, with output lines in between.
fn drive(ui: &Ui, hosts: usize) {
    for h in 0..hosts {
        ui.add_host(&format!("host{h}"));
    }
    for h in 0..hosts {
        let name = format!("host{h}");
        ui.stage(&name, Stage::Connecting);
        ui.stage(&name, Stage::Authenticating);
        for sent in [0, 500, 1000] {
            ui.stage(&name, Stage::Copying { sent, total: 1000 });
        }
        ui.stage(&name, Stage::Starting);
        ui.line(&name, Stream::Stdout, "hello from the child");
        if h % 10 == 3 {
            ui.stage(&name, Stage::Failed(format!("{name} exploded")));
        } else {
            ui.stage(&name, Stage::Running);
            ui.stage(&name, Stage::Converged);
        }
    }
}

#[test]
fn terminal_mode_on_a_hidden_target_loses_no_line() {
    let sink = Capture::default();
    let ui = Ui::with_draw_target(
        ProgressDrawTarget::hidden(),
        Box::new(sink.clone()),
        Box::new(sink.clone()),
    );
    drive(&ui, 100);
    ui.println("above");
    let text = ui.finish(&[row("host0", RowResult::Converged)]);
    let all = sink.text();
    assert!(all.contains("[host99] hello from the child\n"));
    assert!(all.contains("above\n"));
    assert!(all.ends_with(&text));
}

#[test]
fn terminal_mode_draws_bars_and_prints_above_them() {
    let (ui, term, sink) = on_fake_term();
    ui.add_host("web1");
    ui.add_host("gw.dc1/web3");
    ui.stage("web1", Stage::Connecting);
    ui.line("web1", Stream::Stdout, "hello");
    ui.line("gw.dc1/web3", Stream::Stderr, "oops");
    let summary = ui.finish(&[row("web1", RowResult::Converged)]);
    let text = term.text();
    assert!(text.contains("[web1] hello\n"), "{text}");
    assert!(text.contains("[gw.dc1/web3] oops\n"), "{text}");
    assert!(
        text.contains("       web1 "),
        "bars right-align names: {text}"
    );
    assert!(text.contains("connecting"), "{text}");
    assert!(
        text.contains(summary.lines().next().unwrap_or("?")),
        "{text}"
    );
    assert_eq!(sink.text(), "", "nothing bypasses the bars");
}

#[test]
fn many_hosts_get_a_summary_bar_and_failure_lines() {
    let (ui, term, _) = on_fake_term();
    drive(&ui, 100);
    {
        let state = lock(&ui.inner.state);
        assert!(state.bars.compact);
        assert_eq!(state.bars.visible, 0, "no host is in set-up any more");
        assert_eq!(state.counts[Stage::Converged.index()], 90);
        assert_eq!(state.counts[Stage::Failed(String::new()).index()], 10);
    }
    ui.stage("host0", Stage::Stopping);
    ui.println("redraw");
    let text = term.text();
    assert!(
        text.contains("[host93] failed: host93 exploded\n"),
        "{text}"
    );
    assert!(
        text.contains("100 hosts: 89 converged, 1 stopping, 10 failed\n"),
        "{text}"
    );
    ui.finish(&[]);
    let state = lock(&ui.inner.state);
    assert_eq!(state.bars.visible, 0);
    assert!(state.bars.summary.is_none());
}

#[test]
fn many_hosts_in_set_up_show_a_bounded_number_of_bars() {
    let (ui, _, _) = on_fake_term();
    for h in 0..200 {
        ui.stage(&format!("h{h}"), Stage::Connecting);
    }
    assert_eq!(lock(&ui.inner.state).bars.visible, bars::MAX_VISIBLE);
    for h in 0..200 {
        ui.stage(&format!("h{h}"), Stage::Running);
    }
    assert_eq!(lock(&ui.inner.state).bars.visible, 0);
    ui.finish(&[]);
}

#[test]
fn with_stdout_redirected_only_stdout_lines_bypass_the_bars() {
    let term = FakeTerm::default();
    let (out, err) = (Capture::default(), Capture::default());
    let target = ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 20);
    let sinks = Sinks {
        out: Box::new(out.clone()),
        err: Box::new(err.clone()),
    };
    let ui = Ui::build(sinks, Some(bars::Bars::new(target, false)));
    ui.stage("web1", Stage::Running);
    ui.line("web1", Stream::Stdout, "to the file");
    ui.line("web1", Stream::Stderr, "to the screen");
    assert_eq!(out.text(), "[web1] to the file\n");
    assert_eq!(err.text(), "");
    let text = term.text();
    assert!(text.contains("[web1] to the screen\n"), "{text}");
    assert!(text.contains("web1   running\n"), "{text}");
    assert!(!text.contains("to the file"), "{text}");
}

#[test]
fn a_poisoned_lock_does_not_silence_the_ui() {
    let (ui, out, _) = plain();
    let poisoner = ui.clone();
    let result = thread::spawn(move || {
        let _guard = poisoner.inner.sinks.lock();
        panic!("poison the sinks");
    })
    .join();
    assert!(result.is_err());
    assert!(ui.inner.sinks.is_poisoned());
    ui.line("web1", Stream::Stdout, "still here");
    assert_eq!(out.text(), "[web1] still here\n");
    assert_eq!(format!("{ui:?}"), "Ui { terminal: false, .. }");
}

#[test]
fn concurrent_lines_and_stages_on_a_terminal_never_tear() {
    let (ui, term, sink) = on_fake_term();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let ui = ui.clone();
            thread::spawn(move || {
                let host = format!("t{t}");
                for n in 0..200u64 {
                    ui.stage(
                        &host,
                        Stage::Copying {
                            sent: n,
                            total: 200,
                        },
                    );
                    ui.line(
                        &host,
                        Stream::Stdout,
                        &format!("line {n} of a reasonably long output line"),
                    );
                }
                ui.stage(&host, Stage::Running);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ui.finish(&[]);
    let text = term.text();
    let printed: String = text
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_whole_lines(&printed, 4, 200);
    assert_eq!(sink.text(), "");
}
