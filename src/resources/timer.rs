//! `timer`: an event every `interval` seconds. Each tick counts as a change,
//! so a `notify: true` edge from a timer refreshes its target periodically
//! (e.g. re-run an `exec` every minute), as in mgmt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::{
    int_field, Checked, Ctx, EventTx, FieldError, FieldSpec, FieldType, KindSpec, Resource,
    ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "timer",
    fields: &[FieldSpec {
        name: "interval",
        ty: FieldType::Int,
        required: true,
        doc: "seconds between events (at least 1)",
    }],
    sends: &[],
    receives: &[],
    build,
    group: None,
};

struct Timer {
    interval: u64,
    /// Set by the watcher on every tick, cleared by the next check.
    ticked: Arc<AtomicBool>,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    let interval = int_field(params, "interval").unwrap_or(0);
    if interval < 1 {
        return Err(FieldError::new(
            "interval",
            format!("interval must be at least 1 second, not {interval}"),
        ));
    }
    Ok(Box::new(Timer {
        interval: interval as u64,
        ticked: Arc::default(),
    }))
}

#[async_trait::async_trait]
impl Resource for Timer {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        if self.ticked.swap(false, Ordering::SeqCst) {
            tracing::debug!("{}: tick", ctx.id);
            return Ok(Checked::Changed);
        }
        Ok(Checked::Ok)
    }

    fn watcher(
        &self,
        _root: &std::path::Path,
        events: EventTx,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), ResourceError>>> {
        let period = Duration::from_secs(self.interval);
        let ticked = self.ticked.clone();
        Some(Box::pin(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticks.tick().await;
                ticked.store(true, Ordering::SeqCst);
                let _ = events.try_send(());
            }
        }))
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        (field == "interval").then(|| Value::from(self.interval))
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match (field, value.as_u64()) {
            ("interval", Some(n)) if n >= 1 => self.interval = n,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("timer cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
