//! Signals and the root cancellation token.
//!
//! The first SIGINT or SIGTERM cancels the root token: everything stops in
//! order and the process exits by the normal path. A second one exits at
//! once (code 130), for an operator who does not want to wait.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `root` on the first signal and exits the process on the second.
/// Runs until then; drop (abort) it once the run is over.
pub async fn on_signals(root: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => tracing::info!("interrupted; stopping (^C again exits at once)"),
        _ = term.recv() => tracing::info!("terminated; stopping (again exits at once)"),
    }
    root.cancel();
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    eprintln!("mgmt: second signal, exiting at once");
    std::process::exit(130);
}
