//! Watching one path for changes with inotify (the `notify` crate).
//!
//! Used by the `file` resource (correct outside edits) and by `run` (reload a
//! graph file on edit). It watches the directory that holds the path, not the
//! path itself, so that an editor's write-and-rename and a delete followed by
//! a re-create are both seen; while that directory does not exist it watches
//! the nearest existing ancestor and re-arms when it changes.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// Sends `()` on `events` (with `try_send`, so bursts collapse when the
/// channel is full) whenever `target` may have changed. Runs until dropped
/// or until `events` is closed.
pub async fn watch_path(target: PathBuf, events: mpsc::Sender<()>) -> Result<(), WatchError> {
    loop {
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let dir = parent
            .ancestors()
            .find(|a| a.is_dir())
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let want = target.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            if ev.paths.iter().any(|p| want.starts_with(p)) {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| WatchError {
            path: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.clone(),
                source,
            })?;
        let rearm = dir != parent;
        while rx.recv().await.is_some() {
            if events.is_closed() {
                return Ok(());
            }
            let _ = events.try_send(());
            if rearm {
                break;
            }
        }
    }
}
