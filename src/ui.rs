//! What the operator sees (placeholder until the full UI lands): plain
//! prefixed lines, one lock so lines never tear, and the summary table.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub enum Stage {
    Queued,
    Connecting,
    Authenticating,
    Copying { sent: u64, total: u64 },
    Cached,
    Starting,
    Running,
    Converged,
    Stopping,
    Done,
    Failed(String),
}

pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    Converged,
    Stopped,
    Failed(String),
}

pub struct SummaryRow {
    pub host: String,
    pub route: String,
    pub result: RowResult,
    pub bytes_sent: u64,
    pub cache_hit: Option<bool>,
    pub elapsed: Duration,
}

#[derive(Clone, Default)]
pub struct Ui {
    lock: Arc<Mutex<()>>,
}

impl Ui {
    pub fn new(_tty: bool) -> Ui {
        Ui::default()
    }
    pub fn add_host(&self, _host: &str) {}
    pub fn stage(&self, host: &str, stage: Stage) {
        let word = match stage {
            Stage::Copying { .. } | Stage::Queued => return,
            Stage::Connecting => "connecting".to_string(),
            Stage::Authenticating => "authenticating".to_string(),
            Stage::Cached => "cached".to_string(),
            Stage::Starting => "starting".to_string(),
            Stage::Running => "running".to_string(),
            Stage::Converged => "converged".to_string(),
            Stage::Stopping => "stopping".to_string(),
            Stage::Done => "done".to_string(),
            Stage::Failed(r) => format!("failed: {r}"),
        };
        self.println(&format!("[{host}] {word}"));
    }
    pub fn line(&self, host: &str, _stream: Stream, text: &str) {
        self.println(&format!("[{host}] {text}"));
    }
    pub fn println(&self, text: &str) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(std::io::stderr(), "{text}");
    }
    pub fn finish(&self, rows: &[SummaryRow]) -> String {
        let mut out = String::new();
        for r in rows {
            let res = match &r.result {
                RowResult::Converged => "converged".to_string(),
                RowResult::Stopped => "stopped".to_string(),
                RowResult::Failed(w) => format!("failed: {w}"),
            };
            out.push_str(&format!(
                "{} {} {} {} {:?} {:?}\n",
                r.host, r.route, res, r.bytes_sent, r.cache_hit, r.elapsed
            ));
        }
        self.println(&out);
        out
    }
}
