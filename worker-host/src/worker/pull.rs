//! Plugins deployed through the orchestrator's registry (see
//! [`rxon::deploy`]).
//!
//! Every answer of our orchestrator names the revision of the plugin set the
//! fleet should run. When it changes, the puller fetches the desired set,
//! takes each component it lacks from its disk cache or downloads it,
//! checks its SHA-256, loads it (compiled code comes from the cache when
//! this worker or an earlier run compiled it), and swaps the set in at once;
//! the registrar then re-registers with the new skills and the report of
//! what runs. A version that cannot be loaded (a compile error, grants the
//! policy refuses) is reported with the reason, and the version that ran
//! before stays in service. A plugin in service is the same as the one
//! wanted only when name, version and SHA-256 all match (a registry reset
//! can reuse a version number). A download that fails leaves that plugin's
//! previous version in service while the others are updated, and is tried
//! again later. Components no longer wanted are deleted from the disk
//! cache. Every change of the announced revision pulls (an answer sent
//! before a deploy can arrive after the next one is announced, so the last
//! value seen may be stale; the pull reads what is wanted now). Pulls are
//! at least [`MIN_PULL_INTERVAL`] apart. Against an
//! orchestrator without a registry (avtomatika) no revision is ever
//! announced and nothing happens here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rxon::deploy::{self, DesiredPlugin, PluginReport, PluginState};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Worker, read};
use crate::client::ClientError;
use crate::grants;
use crate::plugin_store::{Plugin, PluginLoader, RegistryRef};

/// The registry's plugins in service, and what this worker reports.
#[derive(Default, Clone)]
pub struct Deployed {
    pub plugins: Vec<Arc<Plugin>>,
    pub reports: Vec<PluginReport>,
}

/// How the puller works.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Where downloaded components are kept (by hash), so a restart does not
    /// download them again; `None` keeps them in memory only.
    pub components_dir: Option<PathBuf>,
    /// Largest component downloaded.
    pub max_plugin_bytes: usize,
}

/// Why a version was not put in service.
enum PullError {
    /// Worth retrying (the orchestrator is unreachable, a download broke off).
    Transient(ClientError),
    /// This version cannot run here; the reason is reported.
    Refused(String),
}

/// Least time between two pulls (however often revisions are announced).
pub const MIN_PULL_INTERVAL: Duration = Duration::from_millis(250);

/// Runs until `shutdown`.
pub async fn run(
    worker: Worker,
    loader: Arc<PluginLoader>,
    settings: PullSettings,
    shutdown: CancellationToken,
) {
    let mut announced = worker.inner.client.plugin_revisions();
    // The value announced before this loop began is looked at too.
    announced.mark_changed();
    let mut backoff = Backoff::between(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        // Any change pulls, whatever the value: answers sent before a
        // deploy may arrive after the announcement of the next one, so the
        // value seen last can be an older revision than the one wanted. The
        // pull reads what is wanted now.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = announced.changed() => if r.is_err() { return },
        }
        let Some(wanted) = announced.borrow_and_update().clone() else {
            continue;
        };
        tracing::info!("the orchestrator announces plugins revision {wanted}; pulling");
        let delay = match worker.pull(&loader, &settings).await {
            Ok(revision) => {
                backoff.reset();
                if revision != wanted {
                    tracing::debug!("plugins revision {revision} applied (announced: {wanted})");
                }
                MIN_PULL_INTERVAL
            }
            Err(e) => {
                let delay = backoff.next_delay().max(MIN_PULL_INTERVAL);
                tracing::warn!("pulling plugins failed: {e}; retrying in {delay:?}");
                // Tried again after the delay, announced anew or not.
                announced.mark_changed();
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

impl Worker {
    /// One pull: returns the revision now applied.
    async fn pull(
        &self,
        loader: &PluginLoader,
        settings: &PullSettings,
    ) -> Result<String, ClientError> {
        let desired = self.inner.client.desired_plugins().await?;
        if desired.plugins.len() > deploy::MAX_PLUGINS {
            return Err(ClientError::Decode(format!(
                "the orchestrator wants {} plugins; at most {} are run (MAX_PLUGINS)",
                desired.plugins.len(),
                deploy::MAX_PLUGINS
            )));
        }
        let current = read(&self.inner.remote).clone();
        let mut next = Deployed::default();
        // The first download that failed: the others are still applied.
        let mut failed: Option<ClientError> = None;
        for wanted in &desired.plugins {
            let same = |p: &&Arc<Plugin>| {
                p.registry.as_ref().is_some_and(|r| {
                    r.name == wanted.name
                        && r.version == wanted.version
                        && r.sha256 == wanted.sha256
                })
            };
            if let Some(plugin) = current.plugins.iter().find(same) {
                next.plugins.push(plugin.clone());
                next.reports
                    .push(report(wanted, PluginState::Running, None, None));
                continue;
            }
            let previous = current
                .plugins
                .iter()
                .find(|p| p.registry.as_ref().is_some_and(|r| r.name == wanted.name));
            match self.fetch_and_load(loader, settings, wanted).await {
                Ok(plugin) => {
                    tracing::info!(
                        "deployed plugin {} v{} in service{}",
                        wanted.name,
                        wanted.version,
                        match previous.and_then(|p| p.registry.as_ref()) {
                            Some(r) => format!(" (replacing v{})", r.version),
                            None => String::new(),
                        }
                    );
                    next.plugins.push(Arc::new(plugin));
                    next.reports
                        .push(report(wanted, PluginState::Running, None, None));
                }
                Err(PullError::Transient(e)) => {
                    let running = previous
                        .and_then(|p| p.registry.as_ref())
                        .map(|r| r.version);
                    tracing::warn!(
                        "plugin {} v{} could not be fetched: {e}; {} (tried again later)",
                        wanted.name,
                        wanted.version,
                        match running {
                            Some(v) => format!("v{v} stays in service"),
                            None => "it is not served here yet".into(),
                        }
                    );
                    if let Some(p) = previous {
                        next.plugins.push(p.clone());
                    }
                    next.reports.push(report(
                        wanted,
                        PluginState::Failed,
                        running,
                        Some(format!("could not be fetched: {e}; trying again")),
                    ));
                    failed.get_or_insert(e);
                }
                Err(PullError::Refused(reason)) => {
                    let running = previous
                        .and_then(|p| p.registry.as_ref())
                        .map(|r| r.version);
                    tracing::error!(
                        "cannot run plugin {} v{}: {reason}; {}",
                        wanted.name,
                        wanted.version,
                        match running {
                            Some(v) => format!("v{v} stays in service"),
                            None => "it is not served here".into(),
                        }
                    );
                    if let Some(p) = previous {
                        next.plugins.push(p.clone());
                    }
                    next.reports
                        .push(report(wanted, PluginState::Failed, running, Some(reason)));
                }
            }
        }
        for gone in current.plugins.iter().filter_map(|p| p.registry.as_ref()) {
            if !desired.plugins.iter().any(|d| d.name == gone.name) {
                tracing::info!(
                    "plugin {} v{} is no longer deployed; removing it",
                    gone.name,
                    gone.version
                );
            }
        }
        let changed = next.reports != current.reports
            || next.plugins.len() != current.plugins.len()
            || next
                .plugins
                .iter()
                .zip(&current.plugins)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            self.replace_deployed(next);
        }
        if let Some(dir) = &settings.components_dir {
            forget_components(dir, &desired.plugins).await;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(desired.revision),
        }
    }

    async fn fetch_and_load(
        &self,
        loader: &PluginLoader,
        settings: &PullSettings,
        wanted: &DesiredPlugin,
    ) -> Result<Plugin, PullError> {
        if !deploy::is_plugin_name(&wanted.name) || !deploy::is_sha256_hex(&wanted.sha256) {
            return Err(PullError::Refused(
                "the orchestrator sent a malformed plugin name or hash".into(),
            ));
        }
        if wanted.size > settings.max_plugin_bytes as u64 {
            return Err(PullError::Refused(format!(
                "it is {} bytes; this worker accepts at most {} (--max-plugin-bytes)",
                wanted.size, settings.max_plugin_bytes
            )));
        }
        let label = format!("{} v{} (deployed)", wanted.name, wanted.version);
        let manifest = wanted
            .manifest
            .as_deref()
            .map(|text| grants::parse_manifest(text, &label))
            .transpose()
            .map_err(PullError::Refused)?;
        let bytes = self.component(settings, wanted).await?;
        loader
            .load_bytes(
                Path::new(&label),
                &wanted.name,
                bytes,
                manifest.as_ref(),
                Some(RegistryRef {
                    name: wanted.name.clone(),
                    version: wanted.version,
                    sha256: wanted.sha256.clone(),
                }),
            )
            .await
            .map_err(|e| PullError::Refused(e.to_string()))
    }

    /// The component's bytes: from the disk cache when a file with its hash
    /// is there and intact, else downloaded, checked and kept.
    async fn component(
        &self,
        settings: &PullSettings,
        wanted: &DesiredPlugin,
    ) -> Result<Vec<u8>, PullError> {
        let cached = settings
            .components_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.wasm", wanted.sha256)));
        if let Some(path) = &cached
            && let Ok(bytes) = tokio::fs::read(path).await
        {
            if deploy::sha256_hex(&bytes) == wanted.sha256 {
                tracing::info!(
                    "plugin {} v{}: component found in {}",
                    wanted.name,
                    wanted.version,
                    path.display()
                );
                return Ok(bytes);
            }
            tracing::warn!("{} is damaged; downloading it again", path.display());
        }
        let bytes = self
            .inner
            .client
            .download_plugin(&wanted.sha256, wanted.size, settings.max_plugin_bytes)
            .await
            .map_err(PullError::Transient)?;
        let got = deploy::sha256_hex(&bytes);
        if got != wanted.sha256 {
            return Err(PullError::Transient(ClientError::Decode(format!(
                "plugin {} v{}: the download's sha256 is {got}, not {}",
                wanted.name, wanted.version, wanted.sha256
            ))));
        }
        tracing::info!(
            "plugin {} v{}: downloaded {} bytes, sha256 verified",
            wanted.name,
            wanted.version,
            bytes.len()
        );
        if let Some(path) = &cached
            && let Err(e) = keep(path, &bytes).await
        {
            tracing::warn!("cannot keep {}: {e}", path.display());
        }
        Ok(bytes)
    }
}

/// Deletes the components in `dir` that no wanted plugin has (and
/// temporary files left by a download that stopped half way).
async fn forget_components(dir: &Path, wanted: &[DesiredPlugin]) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kept = name
            .strip_suffix(".wasm")
            .is_some_and(|sha| wanted.iter().any(|w| w.sha256 == sha));
        if kept {
            continue;
        }
        match tokio::fs::remove_file(entry.path()).await {
            Ok(()) => tracing::info!(
                "deleted {} from the component cache (no longer deployed)",
                entry.path().display()
            ),
            Err(e) => tracing::warn!("cannot delete {}: {e}", entry.path().display()),
        }
    }
}

/// Writes `bytes` to `path` whole or not at all (a temporary file, renamed).
async fn keep(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

fn report(
    wanted: &DesiredPlugin,
    state: PluginState,
    running_version: Option<u32>,
    error: Option<String>,
) -> PluginReport {
    PluginReport {
        name: wanted.name.clone(),
        version: wanted.version,
        sha256: wanted.sha256.clone(),
        state,
        running_version,
        error: error.map(|e| crate::limits::clip(&e, deploy::MAX_REPORT_ERROR).into_owned()),
    }
}
