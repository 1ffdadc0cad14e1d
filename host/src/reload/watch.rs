//! Watches the config file and every plugin module, and reloads after they settle.
//!
//! Watching the *folders* (not the files) catches editors and build tools that write a new
//! file and rename it into place, which replaces the inode a file watch would be on. Events
//! are debounced: the reload starts once no watched file has changed for [`SETTLE`], so a
//! file written in several steps (truncate, then write) is read once it is whole; if a
//! reload still catches it half-written, the module fails to compile, the reload is
//! refused, and the final write triggers another one.
//!
//! Only the config file and the files it names count: other files in the same folders (a
//! log written next to the config) never hold a reload off. A watched file that never goes
//! quiet holds it off for at most [`MAX_SETTLE`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Reloader;

/// How long watched files must be quiet before a reload starts.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The longest a change waits for its files to settle.
pub const MAX_SETTLE: Duration = Duration::from_secs(1);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the reloader's files. The watches are in place when this returns, so
/// no change made after it is missed.
pub fn watch(reloader: Arc<Reloader>) -> notify::Result<Watcher> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut fs = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(event.paths);
        }
    })?;
    let mut dirs = HashSet::new();
    let files = retarget(&mut fs, &mut dirs, &reloader.watched_files());
    let task = tokio::spawn(run(reloader, fs, dirs, files, rx));
    Ok(Watcher { task })
}

async fn run(
    reloader: Arc<Reloader>,
    mut fs: notify::RecommendedWatcher,
    mut dirs: HashSet<PathBuf>,
    mut files: HashSet<PathBuf>,
    mut events: mpsc::UnboundedReceiver<Vec<PathBuf>>,
) {
    while let Some(paths) = events.recv().await {
        let mut changed: Vec<PathBuf> =
            paths.into_iter().filter(|p| files.contains(&normal(p))).collect();
        if changed.is_empty() {
            continue;
        }
        // Debounce: wait until the watched files have been quiet for SETTLE (events on
        // other files do not count), but no longer than MAX_SETTLE in all.
        let give_up = Instant::now() + MAX_SETTLE;
        let mut quiet_at = Instant::now() + SETTLE;
        loop {
            match tokio::time::timeout_at(quiet_at.min(give_up), events.recv()).await {
                Ok(Some(more)) => {
                    let before = changed.len();
                    changed.extend(more.into_iter().filter(|p| files.contains(&normal(p))));
                    if changed.len() > before {
                        quiet_at = Instant::now() + SETTLE;
                    }
                }
                Ok(None) => return,
                Err(_settled) => break,
            }
        }
        changed.sort();
        changed.dedup();
        let names: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
        // A refused reload is logged by the reloader; the watch goes on either way.
        let _ = reloader.reload(&format!("file changed: {}", names.join(", "))).await;
        files = retarget(&mut fs, &mut dirs, &reloader.watched_files());
    }
}

/// Watches the folders of `wanted` (and stops watching folders no longer needed); returns
/// the normalized set of files to react to.
fn retarget(
    fs: &mut notify::RecommendedWatcher,
    dirs: &mut HashSet<PathBuf>,
    wanted: &[PathBuf],
) -> HashSet<PathBuf> {
    let files: HashSet<PathBuf> = wanted.iter().map(|f| normal(f)).collect();
    let needed: HashSet<PathBuf> =
        files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
    for gone in dirs.difference(&needed) {
        let _ = fs.unwatch(gone);
    }
    for dir in needed.difference(dirs) {
        if let Err(e) = fs.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch for changes: {e}");
        }
    }
    *dirs = needed;
    files
}

/// The file's folder resolved (symlinks, `..`), plus its name, so paths from the config and
/// paths from the OS compare equal.
fn normal(path: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).join(name)
}
