//! Watching paths for changes with inotify (the `notify` crate).
//!
//! Used by the `file` resource (correct outside edits) and by `run` (reload a
//! graph file on edit). A path is followed by watching the directory that
//! holds it, so that an editor's write-and-rename and a delete followed by a
//! re-create are both seen; while that directory does not exist, the nearest
//! existing ancestor is watched and the watch re-armed when it changes.
//!
//! One inotify instance serves the whole process (the kernel allows only 128
//! per user by default, and a graph may hold thousands of files): a hub keeps
//! one watch per directory and routes each event to the subscribers of the
//! path it names.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}{}", limit_hint(source))]
pub struct WatchError {
    pub path: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// The kernel's inotify limits are per user and low by default; say which.
fn limit_hint(e: &notify::Error) -> &'static str {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => " (raise fs.inotify.max_user_watches)",
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(24) => {
            " (raise fs.inotify.max_user_instances: one per mgmt process)"
        }
        _ => "",
    }
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<()>,
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    /// Watched directory → the name under it that leads to each target →
    /// those subscribers. An event names one entry of a directory, so it
    /// is routed without looking at the other subscribers there (10,000
    /// graph files in one directory, and a log written next to them).
    by_dir: HashMap<PathBuf, HashMap<OsString, Vec<Sub>>>,
}

/// The entry of `dir` on the way to `target` (`target` is inside `dir`).
fn entry_towards(dir: &Path, target: &Path) -> OsString {
    target
        .strip_prefix(dir)
        .ok()
        .and_then(|rest| rest.components().next())
        .map(|c| c.as_os_str().to_owned())
        .unwrap_or_default()
}

struct Hub {
    watcher: Mutex<Option<RecommendedWatcher>>,
    routes: Arc<Mutex<Routes>>,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        watcher: Mutex::new(None),
        routes: Arc::new(Mutex::new(Routes::default())),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Routes one inotify event to every subscriber whose target it may concern:
/// the path itself, or a directory on the way to it.
fn route(routes: &Mutex<Routes>, ev: notify::Event) {
    if matches!(ev.kind, EventKind::Access(_)) {
        return;
    }
    let routes = lock(routes);
    for p in &ev.paths {
        // An entry of a watched directory: its subscribers only.
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            let subs = routes.by_dir.get(dir).and_then(|d| d.get(name));
            for sub in subs.into_iter().flatten() {
                let _ = sub.tx.try_send(());
            }
        }
        // The watched directory itself (deleted, moved): all of them.
        for sub in routes
            .by_dir
            .get(p.as_path())
            .into_iter()
            .flatten()
            .flat_map(|(_, v)| v)
        {
            let _ = sub.tx.try_send(());
        }
    }
}

/// Removes its subscription (and the directory watch, if last) when dropped.
struct Subscription {
    dir: PathBuf,
    entry: OsString,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Lock order everywhere: watcher, then routes, and routes is never
        // held while calling into the watcher (its event thread takes routes).
        let h = hub();
        let mut watcher = lock(&h.watcher);
        let last = {
            let mut routes = lock(&h.routes);
            let Some(entries) = routes.by_dir.get_mut(&self.dir) else {
                return;
            };
            if let Some(subs) = entries.get_mut(&self.entry) {
                subs.retain(|s| s.id != self.id);
                if subs.is_empty() {
                    entries.remove(&self.entry);
                }
            }
            let last = entries.is_empty();
            if last {
                routes.by_dir.remove(&self.dir);
            }
            last
        };
        if let (true, Some(w)) = (last, watcher.as_mut()) {
            let _ = w.unwatch(&self.dir);
        }
    }
}

fn subscribe(dir: &Path, target: &Path, tx: mpsc::Sender<()>) -> Result<Subscription, WatchError> {
    let h = hub();
    let err = |source| WatchError {
        path: dir.to_path_buf(),
        source,
    };
    let mut watcher = lock(&h.watcher);
    if watcher.is_none() {
        let routes = h.routes.clone();
        *watcher = Some(
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    route(&routes, ev);
                }
            })
            .map_err(err)?,
        );
    }
    let watched = lock(&h.routes).by_dir.contains_key(dir);
    if !watched {
        if let Some(w) = watcher.as_mut() {
            w.watch(dir, RecursiveMode::NonRecursive).map_err(err)?;
        }
    }
    let mut routes = lock(&h.routes);
    routes.next_id += 1;
    let id = routes.next_id;
    let entry = entry_towards(dir, target);
    routes
        .by_dir
        .entry(dir.to_path_buf())
        .or_default()
        .entry(entry.clone())
        .or_default()
        .push(Sub { id, tx });
    Ok(Subscription {
        dir: dir.to_path_buf(),
        entry,
        id,
    })
}

/// A watch on one path, armed as soon as it is created (so no change made
/// after `new` returns can be missed).
pub struct PathWatch {
    target: PathBuf,
    /// The directory holding `target`.
    parent: PathBuf,
    /// The directory actually watched: `parent`, or its nearest existing ancestor.
    dir: PathBuf,
    rx: mpsc::Receiver<()>,
    _sub: Subscription,
}

impl PathWatch {
    /// Starts watching `target` (made absolute against the current directory).
    pub fn new(target: &Path) -> Result<PathWatch, WatchError> {
        let target = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let (dir, rx, sub) = arm(&parent, &target)?;
        Ok(PathWatch {
            target,
            parent,
            dir,
            rx,
            _sub: sub,
        })
    }

    /// Waits until `target` may have changed; bursts collapse into one.
    pub async fn changed(&mut self) -> Result<(), WatchError> {
        if self.rx.recv().await.is_none() {
            // The hub never drops a live subscription's sender.
            std::future::pending::<()>().await;
        }
        if self.dir != self.parent {
            // Watching an ancestor: the way to the target changed; re-arm
            // closer to it, and report (the target may exist now).
            let (dir, rx, sub) = arm(&self.parent, &self.target)?;
            (self.dir, self.rx, self._sub) = (dir, rx, sub);
        }
        Ok(())
    }
}

fn arm(
    parent: &Path,
    target: &Path,
) -> Result<(PathBuf, mpsc::Receiver<()>, Subscription), WatchError> {
    let dir = parent
        .ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let (tx, rx) = mpsc::channel::<()>(1);
    let sub = subscribe(&dir, target, tx)?;
    Ok((dir, rx, sub))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woke(w: &mut PathWatch) -> bool {
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .is_ok()
    }

    // An event reaches the watches of the entry it names, not the others in
    // that directory; a watch on a path under a missing directory wakes
    // when that directory appears.
    #[tokio::test]
    async fn events_reach_only_the_entry_they_name() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = PathWatch::new(&d.path().join("a")).expect("watch a");
        let mut b = PathWatch::new(&d.path().join("b")).expect("watch b");
        let mut deep = PathWatch::new(&d.path().join("sub/c")).expect("watch sub/c");
        std::fs::write(d.path().join("a"), "1").expect("write a");
        assert!(woke(&mut a).await, "a's watch");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        assert!(woke(&mut deep).await, "the watch under sub/");
        // b saw nothing of either.
        assert!(b.rx.try_recv().is_err(), "b woke for another entry");
        std::fs::write(d.path().join("b"), "2").expect("write b");
        assert!(woke(&mut b).await, "b's watch");
    }
}
