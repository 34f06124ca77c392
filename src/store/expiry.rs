//! The lease timer: one task per `serve` call that sleeps until the earliest
//! lease deadline, revokes what has expired (deleting the attached keys, which
//! watchers see as delete events) and sleeps again. No polling: a grant that
//! brings the next deadline forward wakes it through `Shared::lease_changed`.
//! Several serve calls on one store each run one; revoking is idempotent, so
//! the extra timers only cost a wake-up.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;

pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        // Register for wake-ups before reading the deadline, so a grant that
        // lands in between is not missed.
        let changed = shared.lease_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let deadline = shared.lock().leases.next_deadline();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = &mut changed => continue,
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                shared.write(|st| st.expire(now));
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
