//! Hot deployment: watches the plugins directory and, when `.wasm` files are
//! added, replaced or removed, reloads it and re-registers with the new
//! skills. No rebuild, no restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::plugin_store::PluginLoader;
use crate::worker::Worker;

/// Quiet time after the last change before reloading (a copy in progress
/// produces several events).
const SETTLE: Duration = Duration::from_millis(500);

/// A plugin (`.wasm`) or its manifest (`.toml`) changed.
fn touches_wasm(paths: &[PathBuf]) -> bool {
    paths
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "wasm" || e == "toml"))
}

/// Runs until `shutdown`; logs and gives up if the directory cannot be watched.
pub async fn watch(
    worker: Worker,
    loader: Arc<PluginLoader>,
    dir: PathBuf,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
            && touches_wasm(&event.paths)
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "cannot watch {} for new plugins ({e}); restart the worker to pick up changes",
                dir.display()
            );
            return;
        }
    };
    if let Err(e) = watcher.watch(Path::new(&dir), RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch {} for new plugins ({e}); restart the worker to pick up changes",
            dir.display()
        );
        return;
    }
    tracing::info!("watching {} for plugin changes", dir.display());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = rx.recv() => if got.is_none() { return },
        }
        // Wait until the directory has been quiet for a moment.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SETTLE) => break,
                _ = rx.recv() => {}
            }
        }
        tracing::info!("plugins directory {} changed; reloading", dir.display());
        match loader.load_dir(&dir, &worker.plugins()).await {
            Ok(set) => worker.replace_plugins(set),
            Err(e) => {
                tracing::error!("reloading plugins failed: {e:#}; keeping the ones in service")
            }
        }
    }
}
