//! Watches the blueprints directory: a file added or changed becomes a new
//! version of its blueprint (new jobs use it; running jobs keep theirs). A
//! broken file is logged with its problem and changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::engine::Engine;

/// Quiet time after the last change before reading (an editor's save or a
/// copy produces several events).
const SETTLE: Duration = Duration::from_millis(300);

/// Runs until the process ends; logs and gives up if the directory cannot
/// be watched.
pub async fn watch(engine: Engine, dir: PathBuf) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
            && event
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch {} for blueprint changes: {e}", dir.display());
            return;
        }
    };
    if let Err(e) = watcher.watch(Path::new(&dir), RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} for blueprint changes: {e}", dir.display());
        return;
    }
    tracing::info!("watching {} for blueprint changes", dir.display());
    while rx.recv().await.is_some() {
        while tokio::time::timeout(SETTLE, rx.recv()).await.is_ok() {}
        reload(&engine, &dir).await;
    }
}

/// Deploys every file whose text is not a known version of its blueprint.
async fn reload(engine: &Engine, dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        tracing::warn!("cannot read the blueprints directory {}", dir.display());
        return;
    };
    let mut files = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let source = path.display().to_string();
        let text = match super::read_bounded(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("{e}");
                continue;
            }
        };
        let mut bp = match super::parse(&source, &text) {
            Ok(bp) => bp,
            Err(e) => {
                tracing::error!("blueprint not deployed (the running version stays): {e}");
                continue;
            }
        };
        if engine.catalog().has_text(&bp.name, &bp.text) {
            continue;
        }
        bp.origin = format!("file:{source}");
        if let Err(e) = engine.deploy_blueprint(bp).await {
            tracing::error!("blueprint not deployed (the running version stays): {e}");
        }
    }
}
