//! The end-of-run summary table and the small formatters it uses
//! (`human_bytes`, durations).
//!
//! Pure string building: no I/O, no locks. [`super::Ui::finish`] prints what
//! this returns; deciding each host's result is the caller's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The `v` of every `--events` line and of `--summary json`; raised only
/// when a field changes meaning or goes away (new fields and new event
/// kinds keep it).
pub const SCHEMA_VERSION: u32 = 1;

/// How long one hop's set-up steps took, for `--trace`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopTimes {
    pub connect_ms: u64,
    pub copy_ms: u64,
    pub start_ms: u64,
}

impl HopTimes {
    pub fn from_durations(connect: Duration, copy: Duration, start: Duration) -> Self {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        Self {
            connect_ms: ms(connect),
            copy_ms: ms(copy),
            start_ms: ms(start),
        }
    }
}

/// How one host's run ended, as shown in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    Converged,
    /// Stopped before converging (^C, cancelled), without an error.
    Stopped,
    /// The full reason; the table truncates it, the lines after it don't.
    Failed(String),
    /// A gateway that ran its group to the end (its hosts have rows of
    /// their own).
    Gateway,
    /// A rolling run (`--rolling`) stopped before this host's turn: nothing
    /// was applied there.
    NotStarted,
    /// `--where` or the graph's `when:` is false on this host: nothing was
    /// applied there.
    Skipped,
}

/// One line of the summary table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The host's identity (its name in the store), e.g. `web3`.
    pub host: String,
    /// How the host was reached, e.g. `direct` or `gw.dc1`; empty shows `-`.
    pub route: String,
    pub result: RowResult,
    pub bytes_sent: u64,
    /// Whether the binary was already cached on the host; `None`: never got
    /// that far.
    pub cache_hit: Option<bool>,
    pub elapsed: Duration,
    /// This hop's set-up timings (`--trace`).
    pub hop: HopTimes,
    /// Bytes the sending end wrote to this hop's SSH connection, all told.
    pub wire_sent: u64,
}

impl SummaryRow {
    /// A row for a host that has not got anywhere yet: stopped, nothing
    /// sent. The fleet fills it in as the host's run goes on.
    pub fn new(host: &str, route: &str) -> Self {
        SummaryRow {
            host: host.into(),
            route: route.into(),
            result: RowResult::Stopped,
            bytes_sent: 0,
            cache_hit: None,
            elapsed: Duration::ZERO,
            hop: HopTimes::default(),
            wire_sent: 0,
        }
    }

    /// How many hops from this machine: 1 direct, 2 behind one gateway.
    pub fn hops(&self) -> usize {
        self.route.split('/').count()
    }

    /// The route when it says more than the host name, else the host.
    fn label(&self) -> &str {
        if self.route.contains('/') {
            &self.route
        } else {
            &self.host
        }
    }
}

/// A row's result as (`converged` | `stopped` | `gateway` | `not started` |
/// `failed`, reason).
pub(crate) fn result_of(r: &RowResult) -> (&'static str, Option<&str>) {
    match r {
        RowResult::Converged => ("converged", None),
        RowResult::Stopped => ("stopped", None),
        RowResult::Gateway => ("gateway", None),
        RowResult::NotStarted => ("not started", None),
        RowResult::Skipped => ("skipped", None),
        RowResult::Failed(why) => ("failed", Some(why.as_str())),
    }
}

/// The counts of the summary's counts line, as JSON fields.
pub(crate) fn counts(rows: &[SummaryRow]) -> Value {
    let n = |f: fn(&RowResult) -> bool| rows.iter().filter(|r| f(&r.result)).count();
    let gateways = n(|r| matches!(r, RowResult::Gateway));
    let never = n(|r| matches!(r, RowResult::NotStarted));
    let skipped = n(|r| matches!(r, RowResult::Skipped));
    let mut counts = json!({
        "converged": n(|r| matches!(r, RowResult::Converged)),
        "failed": n(|r| matches!(r, RowResult::Failed(_))),
        "stopped": n(|r| matches!(r, RowResult::Stopped)),
        "gateways": gateways,
        "hosts": rows.len() - gateways,
    });
    // Only a rolling run has hosts that never started: other runs' counts
    // keep their fields as they were.
    if never > 0 {
        counts["not_started"] = json!(never);
    }
    // Likewise for hosts skipped by --where or when:.
    if skipped > 0 {
        counts["skipped"] = json!(skipped);
    }
    counts
}

/// `--summary json`: the summary as one JSON document (one line): the
/// counts, and per host its route, result, reason, bytes, cache hit and
/// times. Field names as in the `done` event of `docs/events.md`.
pub(crate) fn format_json(rows: &[SummaryRow]) -> String {
    let hosts: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (result, reason) = result_of(&r.result);
            json!({
                "host": r.host,
                "route": r.route,
                "result": result,
                "reason": reason,
                "binary_bytes": r.bytes_sent,
                "wire_bytes": r.wire_sent,
                "cache_hit": r.cache_hit,
                "elapsed_ms": r.elapsed.as_millis().min(u128::from(u64::MAX)) as u64,
                "hop": r.hop,
            })
        })
        .collect();
    let doc = json!({
        "v": SCHEMA_VERSION,
        "counts": counts(rows),
        "hosts": hosts,
    });
    doc.to_string()
}

/// The widest the result cell gets in the table (`failed: ` included);
/// longer reasons end in `…` there and are printed in full after the table.
const RESULT_WIDTH: usize = 48;

const HEADER: [&str; 6] = ["host", "route", "result", "sent", "cache", "time"];
/// Numbers are right-aligned so their units line up.
const RIGHT_ALIGNED: [bool; 6] = [false, false, false, true, false, true];

/// Bytes in binary units with one decimal: `0 B`, `512 B`, `1.5 KiB`,
/// `8.6 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 would print as "1024.0": move up a unit before rounding does.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A short duration: `0.3s`, `1.2s`, `2m05s`, `1h02m`.
pub(crate) fn human_duration(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = (d.as_millis() + 500) / 1000;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// The whole summary: table, counts line, then every failure's full reason
/// as `host: reason`. Each line ends with `\n`.
pub(crate) fn format_summary(rows: &[SummaryRow]) -> String {
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&format_table(rows));
    }
    out.push_str(&counts_line(rows));
    out.push('\n');
    if !rows.is_empty() {
        out.push_str(&bytes_per_hop(rows));
    }
    for row in rows {
        if let RowResult::Failed(reason) = &row.result {
            out.push_str(&full_reason(row.label(), reason));
        }
    }
    let never: Vec<&str> = rows
        .iter()
        .filter(|r| r.result == RowResult::NotStarted)
        .map(SummaryRow::label)
        .collect();
    if !never.is_empty() {
        out.push_str(&format!(
            "never started (the rollout stopped first): {}\n",
            never.join(", ")
        ));
    }
    out
}

/// What crossed each hop, two lines: `binary sent: 2 copies, 25.0 MiB
/// (26214400 B) from here; 20 copies, ... by gateways at depth 1` (a copy
/// is a cache miss), and `wire sent:` with every byte written to the SSH
/// connections of that hop. The exact counts are for measuring an uplink.
fn bytes_per_hop(rows: &[SummaryRow]) -> String {
    let depth = rows.iter().map(SummaryRow::hops).max().unwrap_or(1);
    let (mut binary, mut wire) = (Vec::new(), Vec::new());
    for hop in 1..=depth {
        let at: Vec<&SummaryRow> = rows.iter().filter(|r| r.hops() == hop).collect();
        let bytes: u64 = at.iter().map(|r| r.bytes_sent).sum();
        let on_wire: u64 = at.iter().map(|r| r.wire_sent).sum();
        let copies = at.iter().filter(|r| r.bytes_sent > 0).count();
        let from = if hop == 1 {
            "from here".to_string()
        } else {
            format!("by gateways at depth {}", hop - 1)
        };
        let s = if copies == 1 { "copy" } else { "copies" };
        binary.push(format!(
            "{copies} {s}, {} ({bytes} B) {from}",
            human_bytes(bytes)
        ));
        wire.push(format!("{} ({on_wire} B) {from}", human_bytes(on_wire)));
    }
    format!(
        "binary sent: {}\nwire sent: {}\n",
        binary.join("; "),
        wire.join("; ")
    )
}

/// `--trace`: each hop's connect, copy and start times, by route.
pub(crate) fn format_trace(rows: &[SummaryRow]) -> String {
    let mut out = String::from("trace (per hop: connect, copy, start)\n");
    for r in rows {
        let ms = |v: u64| human_duration(Duration::from_millis(v));
        out.push_str(&format!(
            "  {}  connect {}  copy {}  start {}\n",
            r.label(),
            ms(r.hop.connect_ms),
            ms(r.hop.copy_ms),
            ms(r.hop.start_ms)
        ));
    }
    out
}

fn format_table(rows: &[SummaryRow]) -> String {
    let mut table: Vec<[String; 6]> = Vec::with_capacity(rows.len() + 1);
    table.push(HEADER.map(String::from));
    table.extend(rows.iter().map(cells));
    let mut widths = [0usize; 6];
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &table {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if RIGHT_ALIGNED[i] {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn cells(row: &SummaryRow) -> [String; 6] {
    let route = if row.route.is_empty() {
        "-"
    } else {
        &row.route
    };
    let result = match &row.result {
        RowResult::Converged => "converged".to_string(),
        RowResult::Stopped => "stopped".to_string(),
        RowResult::Gateway => "gateway".to_string(),
        RowResult::NotStarted => "not started".to_string(),
        RowResult::Skipped => "skipped".to_string(),
        RowResult::Failed(reason) => {
            truncate(&format!("failed: {}", one_line(reason)), RESULT_WIDTH)
        }
    };
    let cache = match row.cache_hit {
        Some(true) => "hit",
        Some(false) => "miss",
        None => "-",
    };
    [
        row.host.clone(),
        route.to_string(),
        result,
        human_bytes(row.bytes_sent),
        cache.to_string(),
        human_duration(row.elapsed),
    ]
}

fn counts_line(rows: &[SummaryRow]) -> String {
    let (mut converged, mut failed, mut stopped, mut gateways) = (0, 0, 0, 0);
    let (mut never, mut skipped) = (0, 0);
    for row in rows {
        match row.result {
            RowResult::Converged => converged += 1,
            RowResult::Failed(_) => failed += 1,
            RowResult::Stopped => stopped += 1,
            RowResult::Gateway => gateways += 1,
            RowResult::NotStarted => never += 1,
            RowResult::Skipped => skipped += 1,
        }
    }
    // Only rolling runs stop before a host's turn: other summaries keep
    // their line as it was.
    let mut stopped = format!("{stopped} stopped");
    if never > 0 {
        stopped.push_str(&format!(", {never} not started"));
    }
    if skipped > 0 {
        stopped.push_str(&format!(", {skipped} skipped"));
    }
    let n = rows.len() - gateways;
    let hosts = if n == 1 { "host" } else { "hosts" };
    let gws = match gateways {
        0 => String::new(),
        1 => ", 1 gateway".to_string(),
        g => format!(", {g} gateways"),
    };
    format!("{converged} converged, {failed} failed, {stopped} ({n} {hosts}{gws})")
}

/// `host: reason`, continuation lines of a multi-line reason indented.
fn full_reason(host: &str, reason: &str) -> String {
    let mut out = format!("{host}:");
    for (i, line) in reason.trim_end().lines().enumerate() {
        out.push_str(if i == 0 { " " } else { "\n  " });
        out.push_str(&super::escape::escape_controls(line));
    }
    out.push('\n');
    out
}

/// Newlines and tabs become spaces so a reason fits in one table cell.
fn one_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` chars, the last one `…` when something was cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        host: &str,
        route: &str,
        result: RowResult,
        bytes: u64,
        cache: Option<bool>,
        ms: u64,
    ) -> SummaryRow {
        SummaryRow {
            host: host.into(),
            route: route.into(),
            result,
            bytes_sent: bytes,
            cache_hit: cache,
            elapsed: Duration::from_millis(ms),
            hop: Default::default(),
            wire_sent: bytes + 100,
        }
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(9_017_753), "8.6 MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn human_duration_forms() {
        assert_eq!(human_duration(Duration::ZERO), "0.0s");
        assert_eq!(human_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(human_duration(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(human_duration(Duration::from_millis(59_960)), "1m00s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn table_is_aligned_and_counted() {
        let rows = [
            row(
                "web1",
                "direct",
                RowResult::Converged,
                9_017_753,
                Some(false),
                1234,
            ),
            row(
                "gw.dc1/web3",
                "gw.dc1",
                RowResult::Converged,
                0,
                Some(true),
                300,
            ),
            row("db", "", RowResult::Stopped, 512, None, 65_000),
        ];
        let text = format_summary(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert_eq!(
            lines[0],
            "host         route   result        sent  cache   time"
        );
        assert_eq!(
            lines[1],
            "web1         direct  converged  8.6 MiB  miss    1.2s"
        );
        assert_eq!(
            lines[2],
            "gw.dc1/web3  gw.dc1  converged      0 B  hit     0.3s"
        );
        assert_eq!(
            lines[3],
            "db           -       stopped      512 B  -      1m05s"
        );
        assert_eq!(lines[4], "2 converged, 0 failed, 1 stopped (3 hosts)");
        assert_eq!(
            lines[5],
            "binary sent: 2 copies, 8.6 MiB (9018265 B) from here"
        );
        assert_eq!(lines[6], "wire sent: 8.6 MiB (9018565 B) from here");
        // Every table line ends its time column at the same place.
        let width = lines[0].len();
        assert!(
            lines[..4].iter().all(|l| l.chars().count() == width),
            "{text}"
        );
    }

    #[test]
    fn long_reasons_are_truncated_then_printed_whole() {
        let long = format!(
            "connect to 10.0.0.7:22: {}\nhint: check the firewall",
            "x".repeat(80)
        );
        let rows = [
            row(
                "web1",
                "direct",
                RowResult::Failed(long.clone()),
                0,
                None,
                100,
            ),
            row(
                "web2",
                "direct",
                RowResult::Failed("auth refused".into()),
                0,
                None,
                100,
            ),
            row("web3", "direct", RowResult::Converged, 10, Some(true), 100),
        ];
        let text = format_summary(&rows);
        let lines: Vec<&str> = text.lines().collect();
        let cell = lines[1]
            .split("  ")
            .find(|c| c.starts_with("failed: "))
            .unwrap_or("");
        assert_eq!(cell.chars().count(), RESULT_WIDTH, "{text}");
        assert!(cell.ends_with('…'));
        assert!(lines[2].contains("failed: auth refused"));
        assert_eq!(lines[4], "1 converged, 2 failed, 0 stopped (3 hosts)");
        assert_eq!(
            lines[7],
            format!("web1: connect to 10.0.0.7:22: {}", "x".repeat(80))
        );
        assert_eq!(lines[8], "  hint: check the firewall");
        assert_eq!(lines[9], "web2: auth refused");
        assert_eq!(lines.len(), 10);
    }

    #[test]
    fn gateways_are_counted_apart_and_each_hop_has_its_bytes() {
        let rows = [
            row("gw1", "gw1", RowResult::Gateway, 1000, Some(false), 100),
            row("w1", "gw1/w1", RowResult::Converged, 1000, Some(false), 100),
            row("w2", "gw1/w2", RowResult::Converged, 0, Some(true), 100),
            row(
                "w3",
                "gw1/gw2/w3",
                RowResult::Failed("via gw2: refused".into()),
                0,
                None,
                100,
            ),
            row("d1", "d1", RowResult::Converged, 0, Some(true), 100),
        ];
        let text = format_summary(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[6], "3 converged, 1 failed, 0 stopped (4 hosts, 1 gateway)",
            "{text}"
        );
        assert_eq!(
            lines[7],
            "binary sent: 1 copy, 1000 B (1000 B) from here; 1 copy, 1000 B (1000 B) by gateways at depth 1; 0 copies, 0 B (0 B) by gateways at depth 2"
        );
        assert_eq!(
            lines[8],
            "wire sent: 1.2 KiB (1200 B) from here; 1.2 KiB (1200 B) by gateways at depth 1; 100 B (100 B) by gateways at depth 2"
        );
        // A failure behind a gateway is named by its route.
        assert_eq!(lines[9], "gw1/gw2/w3: via gw2: refused");
        assert!(lines[1].contains("gateway"), "{text}");
        let trace = format_trace(&rows);
        assert!(
            trace
                .lines()
                .any(|l| l.trim_start().starts_with("gw1/w1  connect ")),
            "{trace}"
        );
    }

    #[test]
    fn empty_summary_is_just_the_counts() {
        assert_eq!(
            format_summary(&[]),
            "0 converged, 0 failed, 0 stopped (0 hosts)\n"
        );
        let one = [row("a", "direct", RowResult::Converged, 0, None, 0)];
        assert!(format_summary(&one).contains("(1 host)"));
    }
}
