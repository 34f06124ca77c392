//! A host's remote state, set up and torn down: the `--cconns` set-up
//! permit, the connection, the binary in its cache (copied or found), and
//! at the end the removal of the per-run files (and the binary with
//! `--no-caching`), in reverse order of set-up. Used for hosts and gateways
//! alike; what runs there is [`super::supervise`]'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use crate::ssh::sftp::{Sftp, SftpSlot};
use crate::ssh::{CacheOptions, CachedBinary, Session};
use crate::ui::{Stage, SummaryRow};

/// A host's set-up, kept for teardown.
pub(crate) struct Placed {
    pub session: Session,
    /// Parked once set-up is done; see [`SftpSlot`].
    pub sftp: SftpSlot,
    pub cached: CachedBinary,
    /// How long connecting (with authentication) and copying took.
    pub connect: Duration,
    pub copy: Duration,
    /// Set when the child exited 0: it removed its own run directory
    /// (`--run-dir`), so the clean-up has nothing left to do there.
    pub child_cleaned: AtomicBool,
}

impl Placed {
    /// A host set up: connected, the binary in its cache.
    pub fn new(
        session: Session,
        sftp: SftpSlot,
        cached: CachedBinary,
        connect: Duration,
        copy: Duration,
    ) -> Placed {
        Placed {
            session,
            sftp,
            cached,
            connect,
            copy,
            child_cleaned: AtomicBool::new(false),
        }
    }

    /// Writes `data` as `name` into the host's run directory (SFTP opened
    /// again if it was parked; the caller parks it when done).
    pub async fn put_run_file(
        &self,
        run_id: &str,
        name: &str,
        data: &[u8],
    ) -> Result<String, crate::ssh::HostError<crate::ssh::UploadError>> {
        let sftp = self.sftp.get(&self.session).await?;
        let prefix = Some(self.cached.prefix.as_str());
        sftp.put_run_file(&self.session, prefix, run_id, name, data)
            .await
    }
}

/// A host's `--cconns` set-up slot: held from before connect until the
/// host no longer needs the uplink (its binary's last byte arrived, or
/// it started warm, or its set-up ended), whichever comes first. The
/// copy frees it early so the next host's connect overlaps this one's
/// unpack and start; a wave of uploads that end together is then not
/// followed by a wave of set-ups on an idle link. Clones share the slot.
#[derive(Clone)]
pub(crate) struct SetupSlot(Arc<SlotInner>);

struct SlotInner {
    label: String,
    permit: std::sync::Mutex<Option<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

impl SetupSlot {
    /// Gives the slot back (once; later calls do nothing).
    pub fn free(&self) {
        self.0.free();
    }
}

impl SlotInner {
    fn free(&self) {
        let taken = self.permit.lock().map(|mut p| p.take()).ok().flatten();
        if taken.is_some() {
            // Tests measure the set-up concurrency with this line.
            tracing::debug!("{}: set-up slot freed", self.label);
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.free();
    }
}

/// Waits for a `--cconns` set-up slot (a slot with no permit without a cap).
pub(crate) async fn setup_permit(
    shared: &Shared,
    label: &str,
    cancel: &CancellationToken,
) -> Result<SetupSlot, String> {
    shared.ui.stage(label, Stage::Queued);
    let permit = match &shared.setup {
        Some(s) => tokio::select! {
            _ = cancel.cancelled() => return Err(stopping()),
            p = s.clone().acquire_owned() => Some(p.map_err(|_| stopping())?),
        },
        None => None,
    };
    Ok(SetupSlot(Arc::new(SlotInner {
        label: label.to_owned(),
        permit: std::sync::Mutex::new(Some(permit)),
    })))
}

/// A `--cconns` slot for work after set-up (a replaced binary, a clean-up),
/// which must happen even when the run is stopping; none without a cap.
async fn slot(shared: &Shared) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match &shared.setup {
        Some(s) => s.clone().acquire_owned().await.ok(),
        None => None,
    }
}

fn stopping() -> String {
    "the run is stopping".to_string()
}

/// Connects to `target` and makes sure the binary is in its cache (shown
/// under `label`), in the set-up `slot` (freed at the copy's last byte).
pub(crate) async fn place_binary(
    shared: &Shared,
    slot: &SetupSlot,
    target: &crate::ssh::Target,
    cancel: &CancellationToken,
) -> Result<Placed, String> {
    let label = slot.0.label.as_str();
    let (session, connect) = connect_host(shared, label, target, cancel).await?;
    let t1 = Instant::now();
    let (sftp, cached) = copy_to(shared, slot, &session, cancel).await?;
    Ok(Placed::new(session, sftp, cached, connect, t1.elapsed()))
}

/// Connects to `target` and authenticates (shown under `label`); returns
/// the session and how long that took.
pub(crate) async fn connect_host(
    shared: &Shared,
    label: &str,
    target: &crate::ssh::Target,
    cancel: &CancellationToken,
) -> Result<(Session, Duration), String> {
    let ui = &shared.ui;
    ui.stage(label, Stage::Connecting);
    let t0 = Instant::now();
    // Dropping a connect half-way is harmless; the copy below instead
    // checks `cancel` between writes and removes its temporary file.
    let session = tokio::select! {
        _ = cancel.cancelled() => return Err(stopping()),
        r = crate::ssh::connect::connect_with(target, &shared.plan.settings, || {
            ui.stage(label, Stage::Authenticating)
        }) => r.map_err(|e| explain(&e))?,
    };
    if let Some(line) = &session.learned {
        // Learned here, behind a gateway: the initiator records it too.
        ui.known_host(label, line);
    }
    Ok((session, t0.elapsed()))
}

/// Makes sure the binary is in the cache of the host `session` reaches
/// (copied over SFTP if missing), freeing `slot` at the copy's last byte:
/// the SFTP session (to be parked) and where the binary is.
pub(crate) async fn copy_to(
    shared: &Shared,
    slot: &SetupSlot,
    session: &Session,
    cancel: &CancellationToken,
) -> Result<(SftpSlot, CachedBinary), String> {
    let ui = &shared.ui;
    let label = slot.0.label.as_str();
    // The probe (uid, codecs) goes out while SFTP starts: neither waits
    // for the other's answer (#17 item 3). Its result is kept in the
    // session; an error shows again where it is used.
    let (sftp, _) = tokio::join!(Sftp::open(session), crate::ssh::cache::probe(session));
    let sftp = sftp.map_err(|e| explain(&e))?;
    let progress_ui = ui.clone();
    let progress_name = label.to_string();
    let opts = CacheOptions {
        prefix: shared.plan.prefix.clone(),
        verify_hit: false,
        progress: Some(Arc::new(move |sent, total| {
            progress_ui.stage(&progress_name, Stage::Copying { sent, total })
        })),
        cancel: Some(cancel.clone()),
        packer: Some(shared.plan.binary.packer.clone()),
        uploaded: Some({
            let slot = slot.clone();
            Arc::new(move || slot.free())
        }),
    };
    let bin = &shared.plan.binary;
    let cached = sftp
        .ensure_binary(session, &bin.path, &bin.sha256, &opts)
        .await
        .map_err(|e| explain(&e))?;
    if cached.hit {
        ui.stage(label, Stage::Cached);
    }
    Ok((SftpSlot::new(sftp), cached))
}

/// Uploads the binary again after it failed its hash check at launch.
pub(crate) async fn replace_binary(
    shared: &Shared,
    p: &Placed,
    report: &mut SummaryRow,
) -> Result<(), String> {
    let bin = &shared.plan.binary;
    let opts = CacheOptions {
        prefix: shared.plan.prefix.clone(),
        verify_hit: true,
        packer: Some(bin.packer.clone()),
        ..CacheOptions::default()
    };
    // A replacement is a copy like any other: under a set-up permit.
    let _permit = slot(shared).await;
    let sftp = p.sftp.get(&p.session).await.map_err(|e| explain(&e))?;
    let again = sftp
        .ensure_binary(&p.session, &bin.path, &bin.sha256, &opts)
        .await
        .map_err(|e| explain(&e))?;
    drop(sftp);
    p.sftp.park().await;
    report.bytes_sent += again.bytes_sent;
    report.cache_hit = Some(false);
    Ok(())
}

/// The error and its sources on one line, then the hint.
pub(crate) fn explain<E: std::error::Error + crate::ssh::Hint>(
    e: &crate::ssh::HostError<E>,
) -> String {
    let mut msg = e.kind.to_string();
    let mut src = e.kind.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    match e.hint() {
        Some(h) => format!("{msg} (hint: {h})"),
        None => msg,
    }
}

/// Records the hop's set-up times, tears the host down, then records every
/// byte its connection carried.
pub(crate) async fn finish_placed(shared: &Shared, p: Placed, report: &mut SummaryRow) {
    report.hop.connect_ms = p.connect.as_millis() as u64;
    report.hop.copy_ms = p.copy.as_millis() as u64;
    let wire = p.session.wire_sent();
    teardown(shared, p).await;
    report.wire_sent = wire.load(Ordering::Relaxed);
}

/// Removes what the run put on the host, in reverse order of set-up.
/// Nothing to do over SFTP when the child exited 0 and the binary stays
/// cached: the child removed its run directory itself. Otherwise under a
/// `--cconns` permit like set-up: it opens SFTP again, and a stopping fleet
/// would otherwise reopen it on every host at once.
async fn teardown(shared: &Shared, p: Placed) {
    if shared.plan.caching && p.child_cleaned.load(Ordering::Relaxed) {
        p.sftp.park().await;
        p.session.close().await;
        return;
    }
    let _permit = slot(shared).await;
    match p.sftp.get(&p.session).await {
        Ok(sftp) => {
            if let Err(e) = sftp.remove_run_dir(&p.cached.prefix, &shared.run_id).await {
                tracing::warn!("{e}");
            }
            if !shared.plan.caching {
                if let Err(e) = sftp.remove_binary(&p.cached).await {
                    tracing::warn!("{e}");
                }
            }
        }
        Err(e) => tracing::warn!("cannot clean up: {e}"),
    }
    p.sftp.park().await;
    p.session.close().await;
}
