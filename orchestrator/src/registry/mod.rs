//! The plugin registry: every uploaded version of every plugin, and which
//! version the fleet should run.
//!
//! Components are checked ([`check`]) before anything is stored, stored by
//! SHA-256 in the orchestrator's storage, and offered to worker hosts as a
//! desired set ([`rxon::deploy::DesiredPlugins`]) whose revision every answer
//! under `/_worker` carries. Worker hosts pull what they lack and report what
//! they run in their registration.

pub mod check;

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::Utc;
use rxon::deploy::{self, DesiredPlugin, DesiredPlugins};
use serde::Serialize;
use tokio::sync::watch;

use crate::storage::{Deploys, PluginVersionRow, RegistryRows, StorageError};

/// Default largest component accepted: 64 MiB (Python and JavaScript
/// components are 12–18 MB).
pub const DEFAULT_MAX_PLUGIN_BYTES: usize = 64 << 20;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;
/// Most versions one plugin may have.
pub const MAX_VERSIONS: usize = 1000;

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

#[derive(Debug, Default, Clone)]
struct Entry {
    /// Oldest first.
    versions: Vec<PluginVersionRow>,
    /// The version offered; `None` once deleted.
    current: Option<u32>,
}

impl Entry {
    fn version(&self, v: u32) -> Option<&PluginVersionRow> {
        self.versions.iter().find(|r| r.version == v)
    }
}

/// A plugin as `GET /api/v1/plugins` lists it (without the workers' side).
#[derive(Debug, Clone, Serialize)]
pub struct PluginListing {
    pub name: String,
    /// The version offered to workers (`null` once deleted).
    pub current_version: Option<u32>,
    pub versions: Vec<PluginVersionRow>,
}

/// The registry, shared by the API and the engine.
pub struct PluginRegistry {
    plugins: Mutex<BTreeMap<String, Entry>>,
    /// One deploy at a time (storage write, then the change in memory).
    deploys: tokio::sync::Mutex<()>,
    revision: watch::Sender<String>,
    pub max_plugin_bytes: usize,
}

impl PluginRegistry {
    /// The registry as stored.
    pub fn from_rows(rows: &RegistryRows, max_plugin_bytes: usize) -> Self {
        let mut plugins: BTreeMap<String, Entry> = BTreeMap::new();
        for row in &rows.plugins {
            plugins
                .entry(row.name.clone())
                .or_default()
                .versions
                .push(row.clone());
        }
        for (name, version) in &rows.current {
            if let Some(entry) = plugins.get_mut(name) {
                entry.current = version.filter(|v| entry.version(*v).is_some());
            }
        }
        let registry = Self {
            plugins: Mutex::new(plugins),
            deploys: tokio::sync::Mutex::new(()),
            revision: watch::Sender::new(String::new()),
            max_plugin_bytes,
        };
        registry.publish();
        registry
    }

    /// Takes the stored state (another instance sharing the database may
    /// have deployed); publishes a new revision if the desired set changed.
    pub fn reload(&self, rows: &RegistryRows) {
        let fresh = Self::from_rows(rows, self.max_plugin_bytes);
        let plugins = std::mem::take(&mut *fresh.lock());
        *self.lock() = plugins;
        self.publish();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.plugins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of the desired set (a digest of it).
    pub fn revision(&self) -> String {
        self.revision.borrow().clone()
    }

    /// Changes when the desired set does.
    pub fn subscribe(&self) -> watch::Receiver<String> {
        self.revision.subscribe()
    }

    /// What every worker host should run.
    pub fn desired(&self) -> DesiredPlugins {
        let plugins: Vec<DesiredPlugin> = self
            .lock()
            .iter()
            .filter_map(|(name, e)| {
                let row = e.version(e.current?)?;
                Some(DesiredPlugin {
                    name: name.clone(),
                    version: row.version,
                    sha256: row.sha256.clone(),
                    size: row.size,
                    manifest: row.manifest.clone(),
                })
            })
            .collect();
        let digest = deploy::sha256_hex(&serde_json::to_vec(&plugins).unwrap_or_default());
        DesiredPlugins {
            revision: digest[..16].to_string(),
            plugins,
        }
    }

    fn publish(&self) {
        let revision = self.desired().revision;
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    /// Whether a stored version has this component (only those are served).
    pub fn knows(&self, sha256: &str) -> bool {
        self.lock()
            .values()
            .any(|e| e.versions.iter().any(|r| r.sha256 == sha256))
    }

    pub fn listing(&self) -> Vec<PluginListing> {
        self.lock()
            .iter()
            .map(|(name, e)| PluginListing {
                name: name.clone(),
                current_version: e.current,
                versions: e.versions.clone(),
            })
            .collect()
    }

    /// Checks and stores a new version of `name`, and offers it.
    pub async fn upload(
        &self,
        store: &dyn Deploys,
        name: &str,
        component: Vec<u8>,
        manifest: Option<String>,
        by: &str,
    ) -> Result<PluginVersionRow, DeployError> {
        if !deploy::is_plugin_name(name) {
            return Err(DeployError::Invalid(format!(
                "plugin name {:?} must be 1 to 64 letters, digits, `_` or `-`",
                rxon::text::clip(name, 80)
            )));
        }
        if let Some(m) = &manifest {
            check_manifest(m)?;
        }
        let max = self.max_plugin_bytes;
        // Validating a large component takes a while: off the async threads.
        let (component, sha256) = tokio::task::spawn_blocking(move || {
            check::check_plugin(&component, max)
                .map(|()| {
                    let sha = deploy::sha256_hex(&component);
                    (component, sha)
                })
                .map_err(|e| DeployError::Invalid(format!("not a plugin: {e}")))
        })
        .await
        .map_err(|e| DeployError::Invalid(format!("checking the upload failed: {e}")))??;
        let _one_at_a_time = self.deploys.lock().await;
        let version = {
            let plugins = self.lock();
            let versions = plugins.get(name).map_or(&[][..], |e| &e.versions[..]);
            if versions.len() >= MAX_VERSIONS {
                return Err(DeployError::Invalid(format!(
                    "plugin {name} already has {MAX_VERSIONS} versions (MAX_VERSIONS)"
                )));
            }
            versions.last().map_or(1, |r| r.version + 1)
        };
        let row = PluginVersionRow {
            name: name.to_string(),
            version,
            size: component.len() as u64,
            sha256,
            manifest,
            uploaded_at: Utc::now(),
            uploaded_by: by.to_string(),
        };
        // The number the database gave it (another instance sharing it may
        // have taken the one counted here).
        let version = store.put_plugin(row.clone(), component).await?;
        let row = PluginVersionRow { version, ..row };
        {
            let mut plugins = self.lock();
            let entry = plugins.entry(name.to_string()).or_default();
            entry.versions.retain(|v| v.version != version);
            entry.versions.push(row.clone());
            entry.versions.sort_by_key(|v| v.version);
            entry.current = Some(version);
        }
        self.publish();
        tracing::info!(
            "plugin {name} v{version} deployed by {by} (sha256 {}, {} bytes)",
            row.sha256,
            row.size
        );
        Ok(row)
    }

    /// Offers version `to` of `name` again, or (without `to`) the version
    /// before the one offered now. Returns the version now offered.
    pub async fn rollback(
        &self,
        store: &dyn Deploys,
        name: &str,
        to: Option<u32>,
    ) -> Result<u32, DeployError> {
        let _one_at_a_time = self.deploys.lock().await;
        let target = {
            let plugins = self.lock();
            let entry = plugins
                .get(name)
                .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name}")))?;
            match to {
                Some(v) if entry.version(v).is_some() => v,
                Some(v) => {
                    return Err(DeployError::NotFound(format!(
                        "plugin {name} has no version {v}"
                    )));
                }
                None => {
                    let current = entry.current.ok_or_else(|| {
                        DeployError::Invalid(format!(
                            "plugin {name} is not offered (deleted); name the version to offer: {{\"version\": N}}"
                        ))
                    })?;
                    entry
                        .versions
                        .iter()
                        .rev()
                        .map(|r| r.version)
                        .find(|v| *v < current)
                        .ok_or_else(|| {
                            DeployError::Invalid(format!(
                                "plugin {name} v{current} is its first version; there is nothing to roll back to"
                            ))
                        })?
                }
            }
        };
        self.set_current(store, name, Some(target)).await?;
        tracing::info!("plugin {name}: rolled back to v{target}");
        Ok(target)
    }

    /// Stops offering `name` (its versions stay stored).
    pub async fn remove(&self, store: &dyn Deploys, name: &str) -> Result<(), DeployError> {
        let _one_at_a_time = self.deploys.lock().await;
        if !self.lock().contains_key(name) {
            return Err(DeployError::NotFound(format!("no plugin named {name}")));
        }
        self.set_current(store, name, None).await?;
        tracing::info!("plugin {name}: no longer offered to workers");
        Ok(())
    }

    async fn set_current(
        &self,
        store: &dyn Deploys,
        name: &str,
        version: Option<u32>,
    ) -> Result<(), DeployError> {
        store.set_plugin_current(name, version).await?;
        if let Some(entry) = self.lock().get_mut(name) {
            entry.current = version;
        }
        self.publish();
        Ok(())
    }
}

/// A manifest is read by each worker host against its own policy; here it
/// only has to be a TOML table of bounded size.
fn check_manifest(text: &str) -> Result<(), DeployError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(DeployError::Invalid(format!(
            "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
            text.len()
        )));
    }
    toml::from_str::<toml::Table>(text)
        .map(|_| ())
        .map_err(|e| {
            DeployError::Invalid(format!("the manifest is not valid TOML: {}", e.message()))
        })
}
