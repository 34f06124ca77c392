//! One task per resource: it owns the resource, runs its watcher, and runs
//! check/apply when the engine loop asks (with retries per `meta`).
//!
//! The worker never decides *when* to check: that is the engine loop's job
//! (dependencies, events, convergence). It only reports back: an outside
//! event, or the result of a check together with the values of the fields
//! its outgoing Send/Recv edges read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::graph::Meta;
use crate::resources::{Checked, Ctx, Resource, ResourceError};

/// What the engine loop asks of a worker.
pub(crate) struct Check {
    /// Only report the values of `sends`: no check, no apply. Used after a
    /// graph swap so a kept sender re-delivers to new receivers without
    /// running again (a password must not be generated twice).
    pub probe: bool,
    /// A refresh notification arrived along a `notify: true` edge.
    pub refresh: bool,
    /// Values received along Send/Recv edges: field → value.
    pub recv: Vec<(String, Value)>,
    /// Fields whose values the engine wants back after the check.
    pub sends: Vec<String>,
}

/// What a worker tells the engine loop; `id` is the worker instance.
pub(crate) enum Report {
    /// An outside change: check me again.
    Event { id: u64 },
    /// A check finished.
    Done {
        id: u64,
        /// Answers a probe: `result` is always `Ok(Checked::Ok)` and says
        /// nothing about the resource's state.
        probe: bool,
        result: Result<Checked, String>,
        fields: BTreeMap<String, Value>,
    },
    /// The watcher stopped with an error; the resource cannot follow changes.
    WatchFailed { id: u64, error: String },
}

/// Everything a worker needs; moved into its task.
pub(crate) struct Worker {
    pub id: u64,
    /// `kind[name]`, for logs.
    pub name: String,
    pub resource: Box<dyn Resource>,
    pub meta: Meta,
    /// Global `--noop` (ORed with `meta.noop`).
    pub noop: bool,
    pub root: PathBuf,
    /// Checks requested by the engine loop; closed when the resource is removed.
    pub checks: mpsc::Receiver<Check>,
    /// Reports to the engine loop (bounded: the loop drains it continuously).
    pub reports: mpsc::Sender<Report>,
    /// Cancelled at engine stop or when the resource is replaced/removed.
    pub cancel: CancellationToken,
}

/// Aborts a spawned task when dropped, so a worker never leaks its watcher.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Worker {
    pub async fn run(mut self) {
        let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
        let _watch = self.resource.watcher(&self.root, ev_tx).map(|fut| {
            let reports = self.reports.clone();
            let id = self.id;
            AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = fut.await {
                    let _ = reports
                        .send(Report::WatchFailed {
                            id,
                            error: e.to_string(),
                        })
                        .await;
                }
            }))
        });
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(()) = ev_rx.recv() => {
                    if self.reports.send(Report::Event { id: self.id }).await.is_err() {
                        break;
                    }
                }
                check = self.checks.recv() => {
                    let Some(check) = check else { break };
                    let cancel = self.cancel.clone();
                    let report = tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = self.check(check) => r,
                    };
                    if self.reports.send(report).await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    async fn check(&mut self, check: Check) -> Report {
        if check.probe {
            return Report::Done {
                id: self.id,
                probe: true,
                result: Ok(Checked::Ok),
                fields: self.fields(&check.sends),
            };
        }
        for (field, value) in check.recv {
            if let Err(e) = self.resource.set_field(&field, value) {
                return Report::Done {
                    id: self.id,
                    probe: false,
                    result: Err(format!("cannot receive {field}: {e}")),
                    fields: BTreeMap::new(),
                };
            }
        }
        let ctx = Ctx {
            id: self.name.clone(),
            noop: self.noop || self.meta.noop,
            refresh: check.refresh,
            cancel: self.cancel.clone(),
            root: self.root.clone(),
        };
        let result = self
            .check_with_retries(&ctx)
            .await
            .map_err(|e| e.to_string());
        Report::Done {
            id: self.id,
            probe: false,
            result,
            fields: self.fields(&check.sends),
        }
    }

    /// The current values of `sends` (a field without a value is left out).
    fn fields(&self, sends: &[String]) -> BTreeMap<String, Value> {
        sends
            .iter()
            .filter_map(|f| Some((f.clone(), self.resource.get_field(f)?)))
            .collect()
    }

    async fn check_with_retries(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        let mut attempt: i64 = 0;
        loop {
            match self.resource.check_apply(ctx).await {
                Ok(c) => return Ok(c),
                Err(e) if self.meta.retry >= 0 && attempt >= self.meta.retry => return Err(e),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(
                        "{}: {e}; retry {attempt} in {} ms",
                        self.name,
                        self.meta.delay_ms
                    );
                    tokio::time::sleep(Duration::from_millis(self.meta.delay_ms)).await;
                }
            }
        }
    }
}
