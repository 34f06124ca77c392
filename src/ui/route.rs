//! Route records: how a gateway tells its parent what happens below it.
//!
//! A gateway is `mgmt run --remote ...` started over SSH at depth 1 or more.
//! Instead of progress bars and a summary table, its [`super::Ui`] writes
//! one record per line on stdout: a host's stage, a line of a host's output,
//! a host starting or ending (for the cluster-wide converged rule), a
//! resource's outcome on a host (for `--events`; a leaf child writes these
//! too, without a route), and at the end one report row per host. The parent reads them off the gateway's
//! stdout, prefixes each route with the gateway's name (`web3` becomes
//! `gw.dc1/web3`, the "seen-by" route of a broker federation) and handles
//! them as if its own host tasks had produced them; a parent that is itself
//! a gateway writes them on upward, so depth is not limited.
//!
//! A record line starts with [`MARK`] (an ASCII record separator, which no
//! text line starts with) followed by JSON. Any other line the gateway
//! prints is the gateway's own output and is shown under its name.
//!
//! This module only encodes and decodes; what a record means is decided by
//! the UI (writing) and `fleet::gateway` (reading), so the fleet depends
//! on this module and this module on nothing of the fleet's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::stage::Stage;
use super::summary::{HopTimes, RowResult, SummaryRow};

/// The first bytes of every record line.
pub const MARK: &str = "\u{1e}mgmt:";

/// One thing a gateway reports about a host below it. `route` is the
/// host's route as seen from the gateway (`web3`, or `gw2/web3` below a
/// deeper gateway); `host` is its identity in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// The host moved to a stage.
    Stage { route: String, stage: Stage },
    /// One line of the host's output.
    Line {
        route: String,
        stderr: bool,
        text: String,
    },
    /// The host's child started (`running`) or the host ended.
    Host {
        host: String,
        route: String,
        running: bool,
    },
    /// The host's summary row, sent once when the gateway finishes.
    Report(WireRow),
    /// A host key learned under `accept-new` for `host` (a known_hosts
    /// line), for the initiator's known_hosts.
    KnownHost { host: String, line: String },
    /// A resource on the host was applied, changed something, or failed
    /// (`what`). A leaf child writes it with an empty route: whoever reads
    /// its stdout sets the route, so a host speaks only for itself.
    Resource {
        route: String,
        kind: String,
        name: String,
        what: String,
        #[serde(default)]
        reason: String,
    },
}

/// A [`SummaryRow`] on the wire, with the hop's timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRow {
    pub host: String,
    pub route: String,
    /// `converged`, `stopped`, `gateway` or `failed`.
    pub result: String,
    #[serde(default)]
    pub why: String,
    pub bytes_sent: u64,
    pub cache_hit: Option<bool>,
    pub elapsed_ms: u64,
    #[serde(default)]
    pub hop: HopTimes,
    #[serde(default)]
    pub wire_sent: u64,
}

impl Record {
    /// The record as one line, without the newline.
    pub fn encode(&self) -> String {
        // Serialising these plain structs cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{MARK}{json}")
    }

    /// The record in `line`, if it is one. A line that starts with [`MARK`]
    /// but does not parse is not a record (shown as output, never dropped).
    pub fn decode(line: &str) -> Option<Record> {
        serde_json::from_str(line.strip_prefix(MARK)?).ok()
    }

    /// The same record as seen one level up: `gw/` before every route.
    pub fn under(self, gw: &str) -> Record {
        let up = |r: String| format!("{gw}/{r}");
        match self {
            Record::Stage { route, stage } => Record::Stage {
                route: up(route),
                stage,
            },
            Record::Line {
                route,
                stderr,
                text,
            } => Record::Line {
                route: up(route),
                stderr,
                text,
            },
            Record::Host {
                host,
                route,
                running,
            } => Record::Host {
                host,
                route: up(route),
                running,
            },
            Record::Report(mut row) => {
                row.route = up(row.route);
                Record::Report(row)
            }
            known @ Record::KnownHost { .. } => known,
            Record::Resource {
                route,
                kind,
                name,
                what,
                reason,
            } => Record::Resource {
                route: up(route),
                kind,
                name,
                what,
                reason,
            },
        }
    }
}

impl WireRow {
    pub fn from_row(row: &SummaryRow) -> Self {
        let (result, why) = match &row.result {
            RowResult::Converged => ("converged", String::new()),
            RowResult::Stopped => ("stopped", String::new()),
            RowResult::Gateway => ("gateway", String::new()),
            RowResult::NotStarted => ("not started", String::new()),
            RowResult::Skipped => ("skipped", String::new()),
            RowResult::Failed(w) => ("failed", w.clone()),
        };
        WireRow {
            host: row.host.clone(),
            route: row.route.clone(),
            result: result.into(),
            why,
            bytes_sent: row.bytes_sent,
            cache_hit: row.cache_hit,
            elapsed_ms: row.elapsed.as_millis().min(u128::from(u64::MAX)) as u64,
            hop: row.hop,
            wire_sent: row.wire_sent,
        }
    }

    pub fn into_row(self) -> SummaryRow {
        let result = match self.result.as_str() {
            "converged" => RowResult::Converged,
            "stopped" => RowResult::Stopped,
            "gateway" => RowResult::Gateway,
            "not started" => RowResult::NotStarted,
            "skipped" => RowResult::Skipped,
            _ => RowResult::Failed(self.why),
        };
        SummaryRow {
            host: self.host,
            route: self.route,
            result,
            bytes_sent: self.bytes_sent,
            cache_hit: self.cache_hit,
            elapsed: Duration::from_millis(self.elapsed_ms),
            hop: self.hop,
            wire_sent: self.wire_sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_gain_a_hop() {
        let recs = [
            Record::Stage {
                route: "web3".into(),
                stage: Stage::Copying { sent: 5, total: 10 },
            },
            Record::Line {
                route: "gw2/web3".into(),
                stderr: true,
                text: "a line with \u{1e} and \"quotes\"".into(),
            },
            Record::Host {
                host: "web3".into(),
                route: "web3".into(),
                running: true,
            },
        ];
        for r in recs {
            let line = r.encode();
            assert!(!line.contains('\n'));
            assert_eq!(Record::decode(&line), Some(r.clone()));
            let up = r.under("gw1");
            let route = match &up {
                Record::Stage { route, .. } | Record::Line { route, .. } => route.clone(),
                Record::Host { route, .. } => route.clone(),
                Record::Report(w) => w.route.clone(),
                Record::KnownHost { .. } | Record::Resource { .. } => {
                    unreachable!("not in this list")
                }
            };
            assert!(route.starts_with("gw1/"), "{route}");
        }
        // A learned key names no route: it travels up unchanged.
        let known = Record::KnownHost {
            host: "web3".into(),
            line: "[10.0.0.7]:22 ssh-ed25519 AAAAC3Nz".into(),
        };
        assert_eq!(Record::decode(&known.encode()), Some(known.clone()));
        assert_eq!(known.clone().under("gw1"), known);
    }

    #[test]
    fn rows_keep_their_result_and_bytes() {
        let row = SummaryRow {
            host: "web3".into(),
            route: "web3".into(),
            result: RowResult::Failed("auth refused".into()),
            bytes_sent: 123,
            cache_hit: Some(false),
            elapsed: Duration::from_millis(1500),
            hop: HopTimes::from_durations(
                Duration::from_millis(20),
                Duration::from_millis(30),
                Duration::from_millis(40),
            ),
            wire_sent: 4567,
        };
        let line = Record::Report(WireRow::from_row(&row)).encode();
        let Some(Record::Report(w)) = Record::decode(&line) else {
            panic!("not a report: {line}");
        };
        assert_eq!(w.into_row(), row);
    }

    #[test]
    fn ordinary_lines_are_not_records() {
        assert_eq!(Record::decode("[web3] hello"), None);
        assert_eq!(Record::decode(&format!("{MARK}not json")), None);
    }
}
