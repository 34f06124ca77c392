//! The stages a host goes through, as the operator sees them, and how each
//! is named on a progress line.

use std::fmt;

/// Where a host is in its run, as shown to the operator. Serialised (for
/// a gateway's route records) as `{"s": "copying", "v": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "s", content = "v", rename_all = "snake_case")]
pub enum Stage {
    Queued,
    Connecting,
    Authenticating,
    /// The binary must be copied, and the copy waits for its turn in the
    /// first wave ([`crate::fleet::stagger`]), keeping its slot.
    Waiting,
    Copying {
        sent: u64,
        total: u64,
    },
    /// The binary was already on the host: nothing to copy.
    Cached,
    Starting,
    Running,
    Converged,
    Stopping,
    Done,
    Failed(String),
}

/// How many [`Stage`] variants there are; see [`Stage::index`].
pub(super) const STAGES: usize = 12;
pub(super) const STAGE_NAMES: [&str; STAGES] = [
    "queued",
    "connecting",
    "authenticating",
    "waiting",
    "copying",
    "cached",
    "starting",
    "running",
    "converged",
    "stopping",
    "done",
    "failed",
];

impl Stage {
    /// Position in [`STAGE_NAMES`], for counting hosts per stage.
    pub(super) fn index(&self) -> usize {
        match self {
            Stage::Queued => 0,
            Stage::Connecting => 1,
            Stage::Authenticating => 2,
            Stage::Waiting => 3,
            Stage::Copying { .. } => 4,
            Stage::Cached => 5,
            Stage::Starting => 6,
            Stage::Running => 7,
            Stage::Converged => 8,
            Stage::Stopping => 9,
            Stage::Done => 10,
            Stage::Failed(_) => 11,
        }
    }

    /// Stages that are short and worth watching: these get a spinner, and
    /// in the many-hosts view these are the hosts that keep a bar.
    pub(super) fn is_setup(&self) -> bool {
        matches!(
            self,
            Stage::Connecting
                | Stage::Authenticating
                | Stage::Waiting
                | Stage::Copying { .. }
                | Stage::Cached
                | Stage::Starting
                | Stage::Stopping
        )
    }
}

/// `queued`, `copying 42%`, `failed: reason`, …
impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Copying { sent, total } => write!(f, "copying {}%", percent(*sent, *total)),
            Stage::Failed(reason) => {
                write!(f, "failed: {}", super::escape::escape_controls(reason))
            }
            other => f.write_str(STAGE_NAMES[other.index()]),
        }
    }
}

pub(super) fn percent(sent: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(sent.min(total)) * 100 / u128::from(total)) as u64
}
