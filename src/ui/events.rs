//! `--events FILE`: the run as JSON lines for machines (schema in
//! `docs/events.md`), written as it happens.
//!
//! The [`super::Ui`] is the one place every host's stage, output line and
//! final row passes through at the initiator, gateways' hosts included
//! (their route records are replayed into it), so the UI feeds this module
//! and nothing else has to. This module turns those calls into events and
//! hands each, already encoded, to a writer thread through a bounded queue
//! of [`CAPACITY`] lines; the thread writes and flushes line by line.
//!
//! A slow reader never holds the run up for long: when the queue is full,
//! `output` and `copying` events are dropped at once, and any other event
//! waits at most [`WAIT_FOR_ROOM`] before it is dropped too. Every dropped
//! event is counted in the `ended` event's `dropped`. A reader that went
//! away (a write error, e.g. `EPIPE`) turns the writer into a drain, and at
//! the end the writer gets [`WAIT_AT_CLOSE`] to finish. It does not decide
//! stages or results: it reports what the UI is told.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::stage::{percent, Stage, STAGE_NAMES};
pub use super::summary::SCHEMA_VERSION;
use super::summary::{counts, result_of, RowResult, SummaryRow};
use super::{lock, Stream};

/// Encoded events waiting for the writer thread.
pub const CAPACITY: usize = 4096;
/// How long a lifecycle event waits for room in a full queue.
pub const WAIT_FOR_ROOM: Duration = Duration::from_secs(2);
/// How long [`Events::close`] waits for the writer to write what is queued.
pub const WAIT_AT_CLOSE: Duration = Duration::from_secs(5);
/// `copying` events: one per this many percent, plus the first and last.
const COPY_STEP: u64 = 10;

/// What the run is, for the `started` event.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub run: String,
    /// `user@host` of the initiator.
    pub initiator: String,
    /// `(identity, route)` of every host, gateways' hosts included.
    pub hosts: Vec<(String, String)>,
    /// The flags that shape the run, by name.
    pub flags: Map<String, Value>,
}

/// The events writer of one run. Dropping it without [`Events::close`]
/// loses the lines still queued.
pub struct Events {
    /// `None` once closed.
    tx: Mutex<Option<SyncSender<String>>>,
    /// Disconnected when the writer thread has finished (the thread drops
    /// its sender), so that closing can wait for it with a bound.
    finished: Mutex<Option<Receiver<()>>>,
    /// The run id, known once the fleet picked it (`""` before).
    run: Mutex<String>,
    /// Per route: the last stage reported, to turn stage changes into events.
    seen: Mutex<HashMap<String, Stage>>,
    dropped: AtomicU64,
}

impl Events {
    /// Starts the writer thread on `out`.
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Events> {
        let (tx, rx) = sync_channel(CAPACITY);
        let (done_tx, done_rx) = sync_channel::<()>(0);
        // Not joined: closing waits on `finished` instead, with a bound, and
        // a writer stuck on a reader that never reads dies with the process.
        std::thread::Builder::new()
            .name("mgmt-events".into())
            .spawn(move || {
                write_lines(out, rx);
                drop(done_tx);
            })?;
        Ok(Events {
            tx: Mutex::new(Some(tx)),
            finished: Mutex::new(Some(done_rx)),
            run: Mutex::new(String::new()),
            seen: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        })
    }

    /// The `started` event.
    pub fn started(&self, info: &RunInfo) {
        *lock(&self.run) = info.run.clone();
        let hosts: Vec<Value> = info
            .hosts
            .iter()
            .map(|(h, r)| json!({"host": h, "route": r}))
            .collect();
        let fields = json!({
            "initiator": info.initiator,
            "hosts": hosts,
            "flags": info.flags,
        });
        self.send("started", None, fields, false);
    }

    /// A host moved to `stage`: zero, one or two events.
    pub fn stage(&self, route: &str, stage: &Stage) {
        let before = lock(&self.seen).insert(route.to_string(), stage.clone());
        let before = before.unwrap_or(Stage::Queued);
        for (kind, fields) in stage_events(&before, stage) {
            let droppable = kind == "copying";
            self.send(kind, Some(route), fields, droppable);
        }
    }

    /// One line of a host's output.
    pub fn output(&self, route: &str, stream: Stream, text: &str) {
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let text = text.strip_suffix('\n').unwrap_or(text);
        self.send(
            "output",
            Some(route),
            json!({"stream": stream, "text": text}),
            true,
        );
    }

    /// A resource on the host was applied, changed or failed.
    pub fn resource(&self, route: &str, kind: &str, name: &str, what: &str, reason: &str) {
        let mut fields = json!({"kind": kind, "name": name, "outcome": what});
        if !reason.is_empty() {
            fields["reason"] = json!(reason);
        }
        self.send("resource", Some(route), fields, false);
    }

    /// One `done` event per host, from its summary row.
    pub fn done(&self, rows: &[SummaryRow]) {
        for row in rows {
            let route = if row.route.is_empty() {
                &row.host
            } else {
                &row.route
            };
            self.send("done", Some(route), done_fields(row), false);
        }
    }

    /// The `ended` event, then waits until every queued line is written.
    pub fn ended(&self, rows: &[SummaryRow], exit_code: u8) {
        let mut fields = counts(rows);
        fields["exit_code"] = json!(exit_code);
        fields["dropped"] = json!(self.dropped.load(Ordering::Relaxed));
        self.send("ended", None, fields, false);
        self.close();
    }

    /// Stops taking events and waits up to [`WAIT_AT_CLOSE`] for the writer
    /// to write what is queued.
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(done) = lock(&self.finished).take() {
            let _ = done.recv_timeout(WAIT_AT_CLOSE);
        }
    }

    fn send(&self, kind: &str, route: Option<&str>, fields: Value, droppable: bool) {
        let line = self.encode(kind, route, fields);
        let Some(tx) = lock(&self.tx).clone() else {
            return;
        };
        let mut line = match tx.try_send(line) {
            Ok(()) => return,
            Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(line)) => line,
        };
        let deadline = Instant::now() + WAIT_FOR_ROOM;
        while !droppable && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            line = match tx.try_send(line) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(line)) => line,
            };
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, kind: &str, route: Option<&str>, fields: Value) -> String {
        let line = Line {
            v: SCHEMA_VERSION,
            ts: rfc3339(SystemTime::now()),
            run: lock(&self.run).clone(),
            event: kind,
            host: route.map(|r| r.rsplit('/').next().unwrap_or(r)),
            route,
            fields: match fields {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        };
        // Strings, numbers and maps of them always serialise.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// One event line: the fields every event has, in this order, then the
/// event's own.
#[derive(serde::Serialize)]
struct Line<'a> {
    v: u32,
    ts: String,
    run: String,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: one line, one flush. After a write error it only
/// drains, so senders never wait on a reader that is gone.
fn write_lines(mut out: Box<dyn Write + Send>, rx: Receiver<String>) {
    let mut ok = true;
    for mut line in rx {
        if !ok {
            continue;
        }
        line.push('\n');
        ok = out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_ok();
    }
}

/// The events for moving from `before` to `now`.
fn stage_events(before: &Stage, now: &Stage) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let none = || json!({});
    if matches!(before, Stage::Failed(_)) && !matches!(now, Stage::Failed(_)) {
        return out;
    }
    if matches!(before, Stage::Authenticating)
        && matches!(
            now,
            Stage::Waiting | Stage::Copying { .. } | Stage::Cached | Stage::Starting
        )
    {
        out.push(("authenticated", none()));
    }
    match now {
        Stage::Copying { sent, total } => {
            let step = |s: u64| percent(s, *total) / COPY_STEP;
            let first = !matches!(before, Stage::Copying { .. });
            let moved = match before {
                Stage::Copying { sent: b, .. } => step(*b) != step(*sent),
                _ => true,
            };
            if first || moved || sent >= total {
                out.push(("copying", json!({"sent": sent, "total": total})));
            }
        }
        Stage::Failed(reason) => {
            let at = STAGE_NAMES[before.index()];
            out.push(("failed", json!({"stage": at, "reason": reason})));
        }
        _ if now == before => {}
        Stage::Queued | Stage::Authenticating => {}
        Stage::Connecting => out.push(("connecting", none())),
        Stage::Waiting => out.push(("waiting", none())),
        Stage::Cached => out.push(("cached", none())),
        Stage::Starting => out.push(("starting", none())),
        Stage::Running if matches!(before, Stage::Converged) => out.push(("unconverged", none())),
        Stage::Running => out.push(("running", none())),
        Stage::Converged => out.push(("converged", none())),
        Stage::Stopping => out.push(("stopping", none())),
        Stage::Done => out.push(("stopped", none())),
    }
    out
}

fn done_fields(row: &SummaryRow) -> Value {
    let (result, reason) = result_of(&row.result);
    json!({
        "result": result,
        "reason": reason,
        "exit_status": if matches!(row.result, RowResult::Failed(_)) { 1 } else { 0 },
        "binary_bytes": row.bytes_sent,
        "wire_bytes": row.wire_sent,
        "cache_hit": row.cache_hit,
        "elapsed_ms": row.elapsed.as_millis().min(u128::from(u64::MAX)) as u64,
        "hop": row.hop,
    })
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-12-03T12:06:28.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian, by
/// counting 400-year eras that start on 1 March.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn stages_become_events() {
        let kinds = |a: &Stage, b: &Stage| -> Vec<&str> {
            stage_events(a, b).into_iter().map(|(k, _)| k).collect()
        };
        let copy = |sent| Stage::Copying { sent, total: 100 };
        assert_eq!(
            kinds(&Stage::Authenticating, &copy(0)),
            ["authenticated", "copying"]
        );
        assert!(kinds(&copy(1), &copy(5)).is_empty());
        assert_eq!(kinds(&copy(5), &copy(12)), ["copying"]);
        // A copy that waits for its turn, then the start after it.
        assert_eq!(kinds(&Stage::Starting, &Stage::Waiting), ["waiting"]);
        assert_eq!(kinds(&Stage::Waiting, &copy(0)), ["copying"]);
        assert_eq!(kinds(&copy(100), &Stage::Starting), ["starting"]);
        assert_eq!(kinds(&Stage::Converged, &Stage::Running), ["unconverged"]);
        assert_eq!(kinds(&Stage::Running, &Stage::Running), Vec::<&str>::new());
        assert!(kinds(&Stage::Failed("x".into()), &Stage::Done).is_empty());
        let failed = stage_events(&Stage::Connecting, &Stage::Failed("refused".into()));
        assert_eq!(failed[0].1["stage"], "connecting");
        assert_eq!(failed[0].1["reason"], "refused");
    }

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A reader that reads nothing until it is let go.
    struct Stuck {
        go: Mutex<Receiver<()>>,
        buf: Buf,
    }
    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = lock(&self.go).recv();
            self.buf.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_costs_dropped_output_not_a_stalled_run() {
        let (go_tx, go) = sync_channel(0);
        let buf = Buf::default();
        let out = Stuck {
            go: Mutex::new(go),
            buf: buf.clone(),
        };
        let ev = Events::new(Box::new(out)).expect("thread");
        let n = CAPACITY + 500;
        let t = Instant::now();
        for i in 0..n {
            ev.output("web3", Stream::Stdout, &format!("line {i}"));
        }
        assert!(t.elapsed() < WAIT_FOR_ROOM, "{:?}", t.elapsed());
        let dropped = ev.dropped.load(Ordering::Relaxed);
        assert!(dropped >= 499, "{dropped}");
        drop(go_tx);
        ev.ended(&[], 1);
        let text = String::from_utf8(lock(&buf.0).clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len() as u64, n as u64 - dropped + 1);
        let ended = lines.last().expect("ended");
        assert_eq!(ended["event"], "ended");
        assert_eq!(ended["dropped"], dropped);
    }

    #[test]
    fn lines_are_json_and_flushed_in_order() {
        let buf = Buf::default();
        let ev = Events::new(Box::new(buf.clone())).expect("thread");
        ev.started(&RunInfo {
            run: "r1".into(),
            ..Default::default()
        });
        let garbage = String::from_utf8_lossy(b"\xff\xfe\x1b[2J\"\\ \x00").into_owned();
        ev.output("gw/web3", Stream::Stderr, &garbage);
        ev.ended(&[], 0);
        let text = String::from_utf8(lock(&buf.0).clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["event"], "started");
        assert_eq!(lines[1]["host"], "web3");
        assert_eq!(lines[1]["route"], "gw/web3");
        assert_eq!(lines[1]["text"], garbage.as_str());
        assert_eq!(lines[1]["run"], "r1");
        assert_eq!(lines[2]["exit_code"], 0);
        assert_eq!(lines[2]["v"], SCHEMA_VERSION);
    }
}
